//! The Darkport edge client and dial SDK.
//!
//! Applications use this library through the `darkport` crate (`sdk/`),
//! which re-exports its dial API without the `cli` feature and is where
//! the SDK's guide lives.
//!
//! Load an identity, dial a service by name, and get a byte stream that
//! implements `AsyncRead + AsyncWrite`:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::AsyncWriteExt;
//! let client = edge_client::Client::from_identity_file("app-1.id".as_ref(), Default::default())?;
//! let mut stream = client.dial("fluentd").await?;
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Each dial is one stream on a long-lived, mutually authenticated
//! connection to a router (QUIC, or TLS over TCP where UDP does not get
//! through: [`choice`]), so a new dial costs one round trip and no
//! handshake. The router answers every dial with a typed status before any
//! payload flows; refusals become [`DialError`] variants that say who
//! refused (policy, unknown service, or the private service itself).
//!
//! - [`client`]: [`Client`], router discovery and the connections it keeps
//!   (a folder, one job per file: the dial, connecting, the pool glue, the
//!   router list, the background maintenance).
//! - [`choice`]: which transport reaches a router (pure, virtual time).
//! - `pool` (internal): the pool's decisions (which router, when to retry,
//!   when a connection is dead, when the router list is stale), pure and
//!   in virtual time like [`choice`].
//! - [`stream`]: [`DialStream`], the byte stream.
//! - [`error`]: [`DialError`], and [`DialError::retry`], which says where a
//!   failed dial goes next.
//! - [`forward`]: the local TCP forwarder behind `darkport-edge-client run`.
//! - [`host`]: hosting a service through routers over outbound
//!   connections only ([`Client::host`], [`Client::listen`]), behind
//!   `darkport-edge-client host`.
//! - `metrics` (with the `cli` feature): the binary's Prometheus metrics,
//!   read from the SDK's counters at each scrape.
//!
//! Not here: the CLI (`main.rs`, behind the default `cli` feature).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod choice;
pub mod client;
pub mod error;
pub mod forward;
pub mod host;
#[cfg(feature = "cli")]
pub mod metrics;
mod pool;
pub mod stream;

pub use client::{Client, ClientOptions, RouterConnection};
pub use darkport_transport::mux::{RecvHalf, SendHalf, Transport, TransportMode};
pub use error::{describe_remote_end, DialError, Retry, RouterFailure};
pub use host::{
    Accepted, Caller, Host, HostError, HostOptions, IncomingStream, ListenOptions, Listener,
    Precedence,
};
pub use stream::DialStream;

pub use darkport_transport::enroll::{enroll, read_token, EnrollError};
pub use darkport_transport::identity::Identity;
