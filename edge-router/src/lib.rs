//! The Darkport edge router.
//!
//! The router is the public QUIC endpoint (ALPN `darkport/1`). It requires
//! every peer to present a certificate chaining to the Darkport CA, takes the
//! peer's identity from the verified leaf alone, and refuses non-client
//! identities. For each stream it reads the dial request, asks
//! [`admission::admit_dial`] (stream cap, draining, policy age, then
//! [`darkport_proto::policy::authorize`]) against the latest policy snapshot,
//! answers with a typed status, dials the private service and splices bytes
//! both ways.
//!
//! Every connection and every stream re-checks its permission whenever a
//! new snapshot arrives, so revoking an identity or narrowing a policy cuts
//! live traffic within the time it takes the snapshot to arrive.
//!
//! The last snapshot is kept on disk (0600): a router keeps serving existing
//! and new connections while the controller is down, including across its
//! own restart.
//!
//! - [`sync`]: the control session: registration, snapshots, reports.
//! - [`admission`]: whether a dial may go ahead ([`admission::admit_dial`]):
//!   pure, fed `now`, table-tested.
//! - [`listener`]: accepting clients and handling dial streams (the I/O).
//! - [`hosting`]: hosted services: terminators on connections hosters
//!   dialed out, the choice among them, failover.
//! - [`service`]: a dial's service side (a TCP connection or a hosted
//!   stream).
//! - [`cache`]: the on-disk snapshot.
//! - [`fluent`]: fluent-forward services: stamping, tag policy, the
//!   shared-key handshake.
//! - [`metrics`]: counters and readiness for `--metrics-listen`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cache;
pub mod fluent;
pub mod hosting;
pub mod listener;
pub mod metrics;
pub mod service;
pub mod sync;

use std::future::Future;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::policy::PolicySnapshot;
use darkport_transport::identity::Identity;
use dashmap::DashMap;
use tokio::sync::watch;

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The identity is not a router identity.
    #[error("identity {name} is a {kind} identity; the router needs a router identity (create one with darkport-controller identity create NAME --kind router, then darkport-edge-router enroll)")]
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
    /// The identity file, rewritten when the certificate is renewed;
    /// `None` turns automatic renewal off.
    pub identity_path: Option<PathBuf>,
    /// Where the last policy snapshot is kept; `None` keeps none.
    pub snapshot_path: Option<PathBuf>,
    /// Where the QUIC stateless-reset key is kept across restarts; `None`
    /// uses a new key per run (clients then notice a restart only at the
    /// idle timeout).
    pub reset_key_path: Option<PathBuf>,
    /// `host:port` clients should use to reach this router.
    pub advertise: String,
    /// Threads that carry client connections (each connection and its
    /// streams stay on one of them); default: one per core.
    pub threads: usize,
    /// What one identity may hold at this router, and how old a policy it
    /// still serves with.
    pub limits: RouterLimits,
    /// On shutdown, how long streams in flight may go on while new dials
    /// are refused with `Draining`; then the rest are reset.
    pub grace_period: Duration,
    /// Counters and readiness; register them to export them.
    pub metrics: Arc<metrics::RouterMetrics>,
    /// New limits while running (a reload); `None`: fixed.
    pub limit_updates: Option<watch::Receiver<RouterLimits>>,
}

/// Default for [`RouterConfig::grace_period`].
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Per-identity caps and the policy age limit; see docs/threat-model.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterLimits {
    /// Concurrent QUIC connections one client identity may hold here.
    pub max_connections_per_identity: usize,
    /// Concurrent streams (tunneled TCP connections, each with a task and a
    /// service-side socket) one client identity may hold here, across all
    /// its connections.
    pub max_streams_per_identity: usize,
    /// Concurrent streams one QUIC client connection may have open (what
    /// quinn grants the peer; further opens wait at the client until a
    /// stream ends). Never more than `max_streams_per_identity`.
    pub max_streams_per_connection: usize,
    /// Connections of all identities together.
    pub max_connections: usize,
    /// New dials are refused once the router has not heard from the
    /// controller for this long (`None`: never). Existing streams go on.
    pub max_policy_age: Option<Duration>,
    /// Handshakes in progress (peers not yet authenticated), per source
    /// prefix and in all, on each of the QUIC and TCP listeners.
    pub handshakes: darkport_transport::admission::GateLimits,
}

/// Default for [`RouterLimits::max_connections_per_identity`]: a client
/// keeps one connection per router (two across a restart or renewal).
/// Each connection may buffer up to its windows (docs/threat-model.md).
pub const MAX_CONNECTIONS_PER_IDENTITY: usize = 8;

/// Default for [`RouterLimits::max_streams_per_identity`]: far above what
/// a log shipper opens (a few), far below what pins a router.
pub const MAX_STREAMS_PER_IDENTITY: usize = 4096;

/// Default for [`RouterLimits::max_streams_per_connection`]. quinn keeps
/// the state of one finished stream, with its reassembly index at the
/// largest it ever grew, for every stream a peer may have open
/// (quinn-proto 0.11, `Assembler::reinit`), so this number, not the
/// traffic, sets what an idle connection keeps: at 20,000 a soaked router
/// grew for minutes (docs/benchmarks.md, "Soak"). 1,024 app connections
/// at once through one client to one router is far above what log
/// shippers open.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// Default for [`RouterLimits::max_connections`].
pub const MAX_CONNECTIONS: usize = 65_536;

impl RouterLimits {
    /// The defaults, with the policy age limit set to the lifetime of the
    /// router's certificate: the data plane survives a controller outage
    /// for as long as the identities it serves could anyway.
    pub fn for_identity(identity: &Identity) -> RouterLimits {
        let lifetime = identity
            .chain
            .first()
            .and_then(|leaf| darkport_transport::tls::cert_validity(leaf).ok())
            .map(|(from, to)| {
                Duration::from_secs(
                    to.saturating_sub(from)
                        .saturating_sub(darkport_proto::CERT_BACKDATE_SECS),
                )
            });
        RouterLimits {
            max_connections_per_identity: MAX_CONNECTIONS_PER_IDENTITY,
            max_streams_per_identity: MAX_STREAMS_PER_IDENTITY,
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
            max_connections: MAX_CONNECTIONS,
            max_policy_age: lifetime.filter(|d| !d.is_zero()),
            handshakes: darkport_transport::admission::GateLimits::default(),
        }
    }
}

/// When the router last knew its policy to be current: while the control
/// session is up, now; after it drops, the last time it was confirmed (a
/// snapshot or a report answered); after a start from the cache, the time
/// the cache was written.
#[derive(Debug, Default)]
pub struct PolicyClock {
    confirmed_at: AtomicU64,
    live: AtomicBool,
}

impl PolicyClock {
    /// The control session confirmed the policy at `now` (Unix seconds).
    pub fn confirm(&self, now: u64) {
        self.confirmed_at.fetch_max(now, Ordering::AcqRel);
    }

    /// Whether the control session is up.
    pub fn set_live(&self, live: bool, now: u64) {
        self.confirm(now);
        self.live.store(live, Ordering::Release);
    }

    /// Whether the control session is up now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// How old the policy is at `now` (Unix seconds).
    pub fn age(&self, now: u64) -> Duration {
        if self.live.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        Duration::from_secs(now.saturating_sub(self.confirmed_at.load(Ordering::Acquire)))
    }
}

/// The router's own revocation, once it learns of it: the reason.
pub type RevokedRx = watch::Receiver<Option<String>>;

/// One connection thread per core (1 if that cannot be told).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl RouterConfig {
    /// The usual layout: the snapshot next to the identity file
    /// (`router-1.id` → `router-1.id.snapshot`), renewal on.
    pub fn from_identity_file(
        path: PathBuf,
        advertise: String,
    ) -> Result<RouterConfig, darkport_transport::identity::IdentityError> {
        let identity = Identity::load(&path)?;
        let beside = |suffix: &str| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        Ok(RouterConfig {
            snapshot_path: Some(beside(".snapshot")),
            reset_key_path: Some(beside(".reset-key")),
            identity_path: Some(path),
            advertise,
            threads: default_threads(),
            limits: RouterLimits::for_identity(&identity),
            grace_period: GRACE_PERIOD,
            metrics: Arc::default(),
            limit_updates: None,
            identity,
        })
    }
}

/// The latest policy snapshot, `None` until one arrived or was loaded.
pub type SnapshotRx = watch::Receiver<Option<Arc<PolicySnapshot>>>;

/// Clients connected now, by QUIC connection id; changes wake the control
/// session so the controller learns of them at once.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    map: DashMap<usize, IdentityName>,
    changed: tokio::sync::Notify,
    /// Terminators of hosted services, on hoster connections.
    pub hosting: hosting::Hosting,
}

impl ClientRegistry {
    /// Records a connected client.
    pub fn insert(&self, conn: usize, name: IdentityName) {
        self.map.insert(conn, name);
        self.changed.notify_one();
    }

    /// Forgets a client connection.
    pub fn remove(&self, conn: usize) {
        self.map.remove(&conn);
        self.changed.notify_one();
    }

    /// Names of connected clients, sorted, without repeats.
    pub fn names(&self) -> Vec<IdentityName> {
        let mut v: Vec<_> = self.map.iter().map(|c| c.value().clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Completes at the next change of the clients or the terminators.
    pub async fn changed(&self) {
        tokio::select! {
            () = self.changed.notified() => {}
            () = self.hosting.changed() => {}
        }
    }
}

/// The shared registry.
pub type Clients = Arc<ClientRegistry>;

/// The sockets a router listens on: UDP for QUIC and, unless turned off,
/// TCP for TLS over TCP (by default on the same port).
#[derive(Debug)]
pub struct Listeners {
    /// QUIC.
    pub udp: UdpSocket,
    /// TLS over TCP; `None`: QUIC only.
    pub tcp: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds UDP on `addr` and, with `tcp`, TCP on the same address and port.
    pub fn bind(addr: std::net::SocketAddr, tcp: bool) -> std::io::Result<Listeners> {
        if tcp {
            let (udp, tcp) = darkport_transport::endpoint::bind_udp_and_tcp(addr)?;
            Ok(Listeners {
                udp,
                tcp: Some(tcp),
            })
        } else {
            Ok(Listeners {
                udp: darkport_transport::endpoint::bind_udp(addr)?,
                tcp: None,
            })
        }
    }
}

impl From<UdpSocket> for Listeners {
    /// QUIC only.
    fn from(udp: UdpSocket) -> Listeners {
        Listeners { udp, tcp: None }
    }
}

/// Runs the router on already-bound sockets until `shutdown`.
pub async fn run(
    config: RouterConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let Listeners { udp: socket, tcp } = listeners.into();
    if config.identity.kind != Kind::Router {
        return Err(RouterError::NotRouter {
            name: config.identity.name.to_string(),
            kind: config.identity.kind,
        });
    }
    let policy_clock = config.metrics.policy_clock.clone();
    let cached = config.snapshot_path.as_deref().and_then(cache::load);
    if let Some((s, written)) = &cached {
        policy_clock.confirm(*written);
        tracing::info!(
            version = s.version,
            age_secs = policy_clock.age(darkport_transport::unix_now()).as_secs(),
            "serving with the cached policy snapshot until the controller answers"
        );
    }
    let (snap_tx, snap_rx) = watch::channel(cached.map(|(s, _)| s));
    let (revoked_tx, revoked_rx) = watch::channel(None);
    let (id_tx, id_rx) = watch::channel(Arc::new(config.identity.clone()));
    let clients: Clients = Arc::new(ClientRegistry::default());
    clients.hosting.set_router(config.identity.name.clone());
    let mut background = tokio::task::JoinSet::new();
    background.spawn(sync::run(
        id_rx.clone(),
        config.advertise.clone(),
        snap_tx,
        config.snapshot_path.clone(),
        clients.clone(),
        sync::Status {
            policy: policy_clock.clone(),
            revoked: revoked_tx,
        },
    ));
    if let Some(path) = config.identity_path.clone() {
        background.spawn(darkport_transport::renew::run(path, id_tx));
    }
    let reset_key = match &config.reset_key_path {
        Some(p) => Some(darkport_transport::endpoint::load_or_create_reset_key(p)?),
        None => None,
    };
    let shards = darkport_transport::shards::Shards::new(config.threads, "router-conn")?;
    config.metrics.attach(
        snap_rx.clone(),
        revoked_rx.clone(),
        id_rx.clone(),
        clients.clone(),
    );
    let guard = listener::Guard::new(
        config.limits,
        config.grace_period,
        policy_clock,
        revoked_rx,
        config.metrics.clone(),
    );
    if let Some(mut updates) = config.limit_updates.clone() {
        let guard = guard.clone();
        background.spawn(async move {
            while updates.changed().await.is_ok() {
                let limits = *updates.borrow_and_update();
                guard.set_limits(limits);
            }
        });
    }
    let result = listener::run(
        id_rx, socket, tcp, reset_key, snap_rx, clients, guard, &shards, shutdown,
    )
    .await;
    background.shutdown().await;
    result
}
