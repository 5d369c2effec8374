//! Reach a private TCP service by name through Darkport, from inside your
//! program: no local port, no sidecar. Or host one, with no open port.
//!
//! Darkport is a zero-trust overlay: private services sit behind edge
//! routers, and a program reaches one only with an identity (a
//! certificate from the Darkport controller) that a policy allows to dial
//! it. A [`Client`] holds that identity and a few long-lived, mutually
//! authenticated connections to routers. [`Client::dial`] names a service;
//! the router checks its policy, connects to the service and answers
//! before any byte flows, and you get a [`DialStream`], an ordinary
//! `AsyncRead + AsyncWrite`. Each dial is one stream on a connection that
//! is already up, so it costs one round trip and no handshake.
//!
//! This crate is the library face of Darkport's edge client: it re-exports
//! the dial API of the workspace's `edge-client` crate, built without its
//! CLI (no clap, no Prometheus, no `tracing-subscriber`). It needs a Tokio
//! runtime. Not here: running a controller or a router (the
//! `darkport-controller` and `darkport-edge-router` binaries), and policy
//! (the operator's, on the controller).
//!
//! # Getting an identity
//!
//! An operator creates the identity on the controller and hands you a
//! one-time token (`darkport-controller identity create app-1 --role
//! log-writers --token-out app-1.token`). Redeem it once with [`enroll`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), darkport::EnrollError> {
//! // The token's text (`dpt1.…`), or a file holding it.
//! let token = darkport::read_token("app-1.token")?;
//! darkport::enroll(&token, "app-1.id".as_ref()).await?;
//! # Ok(()) }
//! ```
//!
//! The key pair is made on this host and never leaves it: the controller
//! sees only a certificate request, and is trusted only if its CA has the
//! fingerprint pinned in the token. The identity file (mode 0600; an
//! existing file is never overwritten) holds the key, the certificate, the
//! CA and the controller's address; `darkport-edge-client enroll --token
//! app-1.token --identity app-1.id` writes the same file.
//!
//! From then on, [`Client::from_identity_file`] loads it, renews the
//! certificate in place (with a fresh key, at two thirds of its lifetime)
//! and caches the controller's router list beside it (`app-1.id.routers`),
//! so the client keeps working while the controller is down.
//! [`Client::new`] takes an [`Identity`] loaded some other way
//! ([`Identity::load`], [`Identity::from_file`]); it then renews nothing.
//!
//! # Dialing a service
//!
//! ```no_run
//! use darkport::{Client, ClientOptions};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::from_identity_file("app-1.id".as_ref(), ClientOptions::default())?;
//!     let mut stream = client.dial("echo").await?;
//!     stream.write_all(b"ping\n").await?;
//!     // A half-close: the service reads end of stream and can still answer.
//!     stream.shutdown().await?;
//!     let mut answer = Vec::new();
//!     stream.read_to_end(&mut answer).await?;
//!     client.close().await;
//!     Ok(())
//! }
//! ```
//!
//! Make one client and share it (it is `Send + Sync`; [`SharedClient`] is
//! an `Arc<Client>`): it dials any number of services, concurrently. By
//! default it asks the controller named in the identity for the routers
//! online and keeps connections to two of them
//! ([`ClientOptions::pool_size`]), sending each dial to the one with the
//! lowest round-trip time; [`ClientOptions::routers`] names routers
//! instead. [`Client::warm_up`] connects before the first dial and says
//! which services the routers may serve this identity;
//! [`Client::connections`] lists the router connections with their
//! round-trip time, path MTU and transport.
//!
//! A [`DialStream`] dropped before `shutdown` is reset, and the router
//! resets the service's TCP connection: a truncated stream never looks
//! complete to the service. [`DialStream::into_split`] gives a
//! [`SendHalf`] and a [`RecvHalf`] for use from two tasks.
//!
//! [`Client::dial_from`] dials and, while the router decides, already
//! sends what a local reader has to say (up to [`MAX_EARLY_DATA`] bytes),
//! so a short request reaches the service without waiting a round trip;
//! nothing reaches the service unless the dial is authorized.
//! [`forward()`] serves a local TCP listener that way, one dial per
//! accepted connection (what `darkport-edge-client run --forward` does).
//!
//! # Hosting a service
//!
//! A program can also *be* the service, with no listening socket at all:
//! [`Client::listen`] keeps outbound connections to every router that may
//! serve the service, registers it there (a terminator per router), and
//! routers hand it each caller's dial over those connections. A bind
//! policy on the controller must let the identity host the service.
//!
//! ```no_run
//! use darkport::{Client, ClientOptions, ListenOptions, Precedence};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::from_identity_file("echo-1.id".as_ref(), ClientOptions::default())?;
//!     // Returns once a router registered it; heals by itself from then on.
//!     let listener = client.listen("echo", ListenOptions::default()).await?;
//!     while let Ok(accepted) = listener.accept().await {
//!         // Who is calling, as the router verified it.
//!         let who = accepted.caller.identity.clone();
//!         let mut stream = accepted.stream;
//!         tokio::spawn(async move {
//!             let mut buf = Vec::new();
//!             if stream.read_to_end(&mut buf).await.is_ok() {
//!                 let _ = stream.write_all(&buf).await;
//!                 let _ = stream.shutdown().await;
//!             }
//!             println!("echoed {} bytes for {who}", buf.len());
//!         });
//!         # break;
//!     }
//!     // Health: routers prefer other terminators while this one is failed.
//!     listener.set_precedence(Precedence::Failed)?;
//!     // Drain: withdraw from every router first, then stop accepting.
//!     listener.close().await;
//!     Ok(())
//! }
//! ```
//!
//! [`Listener::accept`] yields an [`Accepted`]: the byte stream (a
//! [`DialStream`], the same type a dial returns) and the [`Caller`]
//! (identity, roles, address and router, from the router's verified view,
//! never from the caller's claim). [`ListenOptions`] sets the cost and
//! [`Precedence`] routers weigh, how many routers to host through and how
//! many idle streams to keep on each; [`Listener::set_cost`] and
//! [`Listener::set_precedence`] change them on every router at once, and
//! [`HealthState`] turns health check results into the precedence. A
//! router that restarts gets the terminator back as soon as it listens
//! again (reconnects back off from 250 ms to at most 5 s). [`Client::host`]
//! hosts several services over the same connections and hands each
//! stream over unanswered ([`IncomingStream`]), so the program can
//! connect to a backend first and refuse with a reason if it cannot;
//! `darkport-edge-client host` is built on it.
//!
//! # Errors and retries
//!
//! A refusal is an error from [`Client::dial`], typed by who refused: a
//! [`DialError`] variant. The dial has already done what can be done with
//! it: each variant's [`DialError::retry`] says where the dial went next
//! before it gave up.
//!
//! | [`DialError`] | [`DialError::retry`] | What the dial did; what you can do |
//! |---|---|---|
//! | `Router`, `NotReady`, `Draining` | [`Retry::Elsewhere`] | Tried the next router; when all failed, connected again, for up to three rounds. Every router is down, starting or draining: try again later, with a backoff. |
//! | `WrongRouter`, `RouterRevoked` | [`Retry::RefreshList`] | Tried the next router, then fetched the router list again. No reachable router may serve the service: an operator's router policy. |
//! | `IdentityRefused` | [`Retry::ElsewhereThenFinal`] | Tried the other routers of the round, which refused too: this identity is revoked, deleted or replaced. Enroll again. |
//! | `UnknownService`, `NotAuthorized`, `ServiceUnreachable`, `LimitReached`, `BadRequest`, `ServiceReset`, `CertificateExpired`, `NoRouters`, `Controller`, `Identity`, `Tls`, `Io` | [`Retry::Final`] | Returned at once: the answer holds for every router. Fix the name, the policy, the service or the identity; `ServiceUnreachable` and `LimitReached` may pass by themselves. |
//!
//! [`DialError::kind_str`] names the kind for logs and metric labels, and
//! `From<DialError> for std::io::Error` maps refusals to
//! [`std::io::ErrorKind`]s (`NotFound`, `PermissionDenied`,
//! `ConnectionRefused`, …) for code that speaks `io::Result`. When a
//! stream that was open ends badly, [`describe_remote_end`] says who ended
//! it ([`RemoteEnd`]): a policy change that cut it, the service, or the
//! router.
//!
//! # Transports
//!
//! [`ClientOptions::transport`] is a [`TransportMode`]:
//!
//! - [`TransportMode::Auto`] (the default) races QUIC against TLS over TCP:
//!   QUIC starts at once, TCP joins after [`FALLBACK_AFTER`], and the
//!   first handshake to finish wins (QUIC wins a tie). A router reached
//!   over TCP is remembered for [`ClientOptions::remember_tcp`]
//!   ([`REMEMBER_TCP`] by default), then QUIC is tried again.
//! - [`TransportMode::Quic`]: QUIC only (one UDP flow, streams without
//!   head-of-line blocking).
//! - [`TransportMode::Tcp`]: TLS 1.3 over TCP only, with the streams
//!   multiplexed by HTTP/2 framing, for networks that block UDP.
//!
//! Both carry the same mutual TLS and the same dial protocol; a
//! [`DialStream`] behaves the same over either, and
//! [`RouterConnection::transport`] says which one ([`Transport`]) a
//! connection uses.
//!
//! # An example to run
//!
//! `examples/dial.rs` connects stdin and stdout to a service, like `nc`:
//!
//! ```text
//! cargo run -p darkport --example dial -- --identity app-1.id --service echo \
//!     [--router HOST:PORT]... [--transport auto|quic|tcp]
//! ```
//!
//! `examples/http_hosted.rs` serves an HTTP app (hyper) straight over
//! Darkport, with no local port: each caller's stream is an HTTP/1.1
//! connection, and the answer names the caller as the router verified it.
//!
//! ```text
//! cargo run -p darkport --example http_hosted -- --identity web-1.id --service web
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;

use darkport_proto::identity::Kind;

pub use edge_client::choice::{FALLBACK_AFTER, REMEMBER_TCP};
pub use edge_client::client::{
    SharedClient, DIAL_TIMEOUT, LIVENESS_WINDOW, MAX_EARLY_DATA, ROUTER_LIST_TTL,
};
pub use edge_client::forward::{forward, forward_draining};
pub use edge_client::host::{
    Accepted, AnswerFailure, Caller, HealthState, HealthVerdict, Host, HostError, HostOptions,
    HostVerdict, HostedService, IncomingStream, ListenOptions, Listener, Precedence, RouterState,
    RouterStatus, ANSWER_TIMEOUT, DEFAULT_OFFERS, LISTEN_TIMEOUT, WITHDRAW_TIMEOUT,
};
pub use edge_client::{
    describe_remote_end, read_token, Client, ClientOptions, DialError, DialStream, EnrollError,
    Identity, RecvHalf, Retry, RouterConnection, RouterFailure, SendHalf, Transport, TransportMode,
};

pub use darkport_proto::codes::StreamCode;
pub use darkport_transport::connect::ConnectError;
pub use darkport_transport::identity::{IdentityError, IdentityFile};
pub use darkport_transport::mux::RemoteEnd;

/// Redeems a one-time enrollment `token` (its text: [`read_token`] reads
/// it from a file) for a client identity, and writes the identity file to
/// `out`.
///
/// The token is spent once the controller answers, so `out` is checked
/// first: an existing file is an error ([`IdentityError::Exists`]), never
/// overwritten, and a path that cannot be written fails before the token
/// is used. A token for a router identity is refused
/// ([`EnrollError::WrongKind`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let token = darkport::read_token("app-1.token")?;
/// let file = darkport::enroll(&token, "app-1.id".as_ref()).await?;
/// println!("enrolled as {}", file.name);
/// let _client = darkport::Client::from_identity_file("app-1.id".as_ref(), Default::default())?;
/// # Ok(()) }
/// ```
pub async fn enroll(token: &str, out: &Path) -> Result<IdentityFile, EnrollError> {
    edge_client::enroll(token, Kind::Client, out).await
}
