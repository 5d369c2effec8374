//! The Darkport edge router.
//!
//! The router is the public QUIC endpoint (ALPN `darkport/1`). It requires
//! every peer to present a certificate chaining to the Darkport CA, takes the
//! peer's identity from the verified leaf alone, and refuses non-client
//! identities. For each stream it reads the dial request, asks
//! [`darkport_proto::policy::authorize`] against the latest policy snapshot,
//! answers with a typed status, dials the private service and splices bytes
//! both ways.
//!
//! - [`sync`]: keeps a control session to the controller, registers the
//!   advertise address and receives policy snapshots as they change.
//! - [`listener`]: accepts client connections and handles dial streams.
#![forbid(unsafe_code)]

pub mod listener;
pub mod sync;

use std::future::Future;
use std::net::UdpSocket;
use std::sync::Arc;

use darkport_proto::identity::Kind;
use darkport_proto::policy::PolicySnapshot;
use darkport_transport::identity::Identity;
use tokio::sync::watch;

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The identity is not a router identity.
    #[error("identity {name} is a {kind} identity; the router needs a router identity (create one with darkport-controller identity create NAME --router, then darkport-edge-router enroll)")]
    NotRouter {
        /// Identity name.
        name: String,
        /// Its kind.
        kind: Kind,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] darkport_transport::tls::TlsError),
    /// The socket failed.
    #[error("router endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// What the router runs with.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The router's identity.
    pub identity: Identity,
    /// `host:port` clients should use to reach this router.
    pub advertise: String,
}

/// The latest policy snapshot, `None` until the controller sent one.
pub type SnapshotRx = watch::Receiver<Option<Arc<PolicySnapshot>>>;

/// Runs the router on an already-bound UDP socket until `shutdown`.
pub async fn run(
    config: RouterConfig,
    socket: UdpSocket,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    if config.identity.kind != Kind::Router {
        return Err(RouterError::NotRouter {
            name: config.identity.name.to_string(),
            kind: config.identity.kind,
        });
    }
    let (tx, rx) = watch::channel(None);
    let sync = tokio::spawn(sync::run(
        config.identity.clone(),
        config.advertise.clone(),
        tx,
    ));
    let result = listener::run(&config.identity, socket, rx, shutdown).await;
    sync.abort();
    result
}
