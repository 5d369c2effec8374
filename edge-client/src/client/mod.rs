//! The client: router discovery, a small pool of router connections, and
//! failover.
//!
//! A client keeps connections to up to [`ClientOptions::pool_size`] routers
//! that may serve its services and sends each new dial to the one with the
//! lowest round-trip time. A dial watches the router's liveness: if nothing
//! at all comes back from the router within a short window (a router that
//! was killed sends nothing), the connection is dropped and the dial moves
//! to the next router, so one dead router costs a new connection well under
//! two seconds. A router that is alive but slow (its service is slow to
//! connect) gets the full dial timeout. Where a failed dial goes next is
//! [`DialError::retry`]'s decision.
//!
//! The router list comes from the controller and is cached next to the
//! identity file, so clients keep working while the controller is down.
//! With an identity file, the certificate is renewed automatically and new
//! connections use the renewed certificate.
//!
//! Layout, one job per file:
//! - this file: [`Client`], its options and what it tells about itself;
//! - `dial`: one dial, from picking routers to the router's answer, with
//!   the early bytes sent before it;
//! - `connect`: making one router connection (QUIC, TCP, or a race);
//! - `pooled`: the glue between live connections and the pure
//!   `PoolState` (candidates, filling the pool);
//! - `router_list`: fetching and caching the controller's router list;
//! - `maintain`: the background task that keeps the pool and list fresh.

mod connect;
mod dial;
mod maintain;
mod pooled;
mod router_list;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use darkport_proto::codes::CloseCode;
use darkport_proto::identity::Kind;
use darkport_transport::close_code;
use darkport_transport::identity::Identity;
use darkport_transport::mux::{Transport, TransportMode};

use crate::choice::REMEMBER_TCP;
use crate::pool::{candidates_from, PoolState};
use crate::{DialError, DialStream};

pub(crate) use connect::{Configs, Connector};
use dial::Early;
use maintain::maintain;
use pooled::Pool;
pub(crate) use router_list::RouterList;

/// Most application bytes [`Client::dial_from`] sends behind a dial
/// request before the router has answered.
pub const MAX_EARLY_DATA: usize = 64 * 1024;

/// Time the router has to answer a dial.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// If nothing arrives from a router this long after a dial request was
/// sent (plus a few round trips), it is taken for dead.
pub const LIVENESS_WINDOW: Duration = Duration::from_millis(400);

pub use crate::pool::ROUTER_LIST_TTL;

/// The client's clock: tokio's, so tests can pause and advance it
/// (`tokio::time::pause`). The pure decisions in `pool` and
/// [`crate::choice`] take it as a plain `std` instant.
fn clock() -> std::time::Instant {
    Instant::now().into_std()
}

/// Options for [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Routers to use (`host:port`), in order of preference. Empty: ask the
    /// controller.
    pub routers: Vec<String>,
    /// The identity file. When set, the certificate is renewed in it
    /// automatically and the router list is cached beside it
    /// (`<file>.routers`).
    pub identity_path: Option<PathBuf>,
    /// How many routers to keep connections to (when that many exist).
    pub pool_size: usize,
    /// Which transport reaches routers: QUIC, TCP, or `Auto` (race them,
    /// prefer QUIC; see [`crate::choice`]).
    pub transport: TransportMode,
    /// In `Auto`, how long a router where only TCP got through is reached
    /// over TCP before QUIC is tried again.
    pub remember_tcp: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            routers: vec![],
            identity_path: None,
            pool_size: 2,
            transport: TransportMode::Auto,
            remember_tcp: REMEMBER_TCP,
        }
    }
}

/// What [`Client::connections`] tells about one router connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConnection {
    /// The router's address as the client knows it (`host:port`).
    pub router: String,
    /// Current round-trip time estimate.
    pub rtt: Duration,
    /// Largest UDP payload the path is known to carry (path MTU discovery
    /// starts at 1,200 bytes and probes up to
    /// [`darkport_transport::endpoint::MAX_UDP_PAYLOAD`]); 0 over TCP.
    pub path_mtu: u16,
    /// QUIC or TCP.
    pub transport: Transport,
}

/// Dials services through routers; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    identity: watch::Receiver<Arc<Identity>>,
    options: ClientOptions,
    connector: Connector,
    /// Where the router list comes from and is cached.
    router_list: RouterList,
    /// Held only to read or swap, never across an await.
    pool: Arc<Mutex<Pool>>,
    /// Single-flight gate for (re)connecting, so a burst of dials opens one
    /// set of connections. Held across connects on purpose; never on the
    /// data path.
    refill: tokio::sync::Mutex<()>,
    /// Background work (renewal), stopped when the client is dropped.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Dials so far, by result ([`DialError::kind_str`] or "ok").
    dials: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(mut t) = self.tasks.lock() {
            t.abort_all();
        }
    }
}
impl Client {
    /// A client for `identity`. Must be called inside a Tokio runtime.
    pub fn new(identity: Identity, options: ClientOptions) -> Result<Client, DialError> {
        if identity.kind != Kind::Client {
            warn!(identity = %identity.name, kind = %identity.kind, "dialing with a non-client identity; routers will refuse it");
        }
        let identity = Arc::new(identity);
        let configs = Configs::new(&identity)?;
        let connector = Connector {
            endpoint: darkport_transport::endpoint::client(None)?,
            mode: options.transport,
            remember_tcp: options.remember_tcp,
            memory: Arc::default(),
        };
        let (id_tx, id_rx) = watch::channel(identity.clone());
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(path) = options.identity_path.clone() {
            tasks.spawn(darkport_transport::renew::run(path, id_tx));
        }
        let pool = Arc::new(Mutex::new(Pool {
            identity,
            configs,
            state: PoolState::new(&options.routers),
        }));
        let router_list = RouterList::new(&options);
        tasks.spawn(maintain(
            pool.clone(),
            connector.clone(),
            router_list.clone(),
            options.pool_size,
            id_rx.clone(),
        ));
        Ok(Client {
            identity: id_rx,
            options,
            connector,
            router_list,
            pool,
            refill: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(tasks),
            dials: Mutex::default(),
        })
    }

    /// Loads an identity file and makes a client that renews it.
    pub fn from_identity_file(
        path: &std::path::Path,
        mut options: ClientOptions,
    ) -> Result<Client, DialError> {
        options
            .identity_path
            .get_or_insert_with(|| path.to_path_buf());
        Client::new(Identity::load(path)?, options)
    }

    /// The identity in use (the renewed one, after a renewal).
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.borrow().clone()
    }

    /// Dials `service` through the best live router, failing over to the
    /// next when one is dead.
    pub async fn dial(&self, service: &str) -> Result<DialStream, DialError> {
        self.dial_with(service, None).await
    }

    /// Dials `service` like [`Client::dial`] and, while the router decides,
    /// already sends what `local` has to say (up to [`MAX_EARLY_DATA`]
    /// bytes) behind the dial request. A short request then reaches the
    /// service without waiting a round trip for the router's answer.
    ///
    /// Nothing reaches a service without authorization: the router
    /// forwards those bytes only once it has authorized the dial and
    /// connected to the service, and discards them if it refuses. If the
    /// dial moves to another router, they are sent again there; if it fails
    /// in the end, what was read from `local` is gone with it (the
    /// forwarder then resets the app's connection). If `local`
    /// ended (EOF) meanwhile, its next read returns EOF again; if it
    /// failed, the dial fails with [`DialError::Io`].
    ///
    /// A read of `local` that is still pending when the answer arrives is
    /// dropped, so `local` must not lose data when a read is cancelled
    /// (true of tokio's sockets, pipes and in-memory readers).
    pub async fn dial_from<R>(&self, service: &str, local: &mut R) -> Result<DialStream, DialError>
    where
        R: AsyncRead + Unpin + Send,
    {
        self.dial_with(service, Some(&mut Early::new(local))).await
    }

    async fn dial_with(
        &self,
        service: &str,
        early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        let result = self.dial_inner(service, early).await;
        let kind = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind_str(),
        };
        *self
            .dials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        result
    }

    /// Dials made so far by this client, by result: "ok" or a
    /// [`DialError::kind_str`].
    pub fn dial_counts(&self) -> Vec<(&'static str, u64)> {
        let d = self.dials.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Connects to routers now instead of at the first dial, and says which
    /// services the routers may serve this identity (`None` when routers
    /// were given by address, so that is not known).
    pub async fn warm_up(&self) -> Result<Option<Vec<String>>, DialError> {
        self.fill().await?;
        Ok(self.pool().state.services())
    }

    /// Router addresses: the configured ones, or the controller's list
    /// (online routers first).
    pub async fn routers(&self) -> Result<Vec<String>, DialError> {
        if !self.options.routers.is_empty() {
            return Ok(self.options.routers.clone());
        }
        Ok(candidates_from(&RouterList::fetch(&self.identity()).await?)
            .into_iter()
            .map(|c| c.addr)
            .collect())
    }

    /// The router connections in the pool now, best (lowest RTT) first.
    pub fn connections(&self) -> Vec<RouterConnection> {
        let mut v: Vec<RouterConnection> = self
            .pool()
            .state
            .links()
            .filter(|(_, conn)| conn.close_reason().is_none())
            .map(|(router, conn)| RouterConnection {
                router: router.to_string(),
                rtt: conn.rtt(),
                path_mtu: conn.path_mtu().unwrap_or(0),
                transport: conn.transport(),
            })
            .collect();
        v.sort_by_key(|c| c.rtt);
        v
    }

    /// Closes router connections and waits briefly for the close to be sent.
    pub async fn close(&self) {
        let conns = self.pool().state.take_all();
        for c in &conns {
            c.close(CloseCode::Done, b"client closing");
        }
        self.connector
            .endpoint
            .close(close_code(CloseCode::Done), b"client closing");
        let flushed: Vec<_> = conns
            .iter()
            .map(|c| c.flushed(Duration::from_secs(2)))
            .collect();
        drop(conns);
        let tcp_flushed = async {
            for f in flushed {
                f.await;
            }
        };
        let quic_idle = self.connector.endpoint.wait_idle();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::join!(tcp_flushed, quic_idle)
        })
        .await;
    }
}

/// What a [`Host`](crate::host::Host) takes from its client: the same
/// connector (endpoint, transport mode and memory), identity (renewed in
/// place) and router list as the client's dials.
pub(crate) struct HostingParts {
    pub(crate) connector: Connector,
    pub(crate) identity: watch::Receiver<Arc<Identity>>,
    pub(crate) router_list: RouterList,
    /// Routers given by address, else empty.
    pub(crate) routers: Vec<String>,
}

impl Client {
    pub(crate) fn hosting_parts(&self) -> HostingParts {
        HostingParts {
            connector: self.connector.clone(),
            identity: self.identity.clone(),
            router_list: self.router_list.clone(),
            routers: self.options.routers.clone(),
        }
    }
}

/// Shares a client between tasks.
pub type SharedClient = Arc<Client>;
