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
//! connect) gets the full dial timeout.
//!
//! The router list comes from the controller and is cached next to the
//! identity file, so clients keep working while the controller is down.
//! With an identity file, the certificate is renewed automatically and new
//! connections use the renewed certificate.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::{CloseCode, StreamCode};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{ControlBody, ControlResponse, DialRequest, DialResponse, RouterInfo};
use darkport_proto::token::fmt_time;
use darkport_proto::{ProtoError, ALPN_DATA, ALPN_DATA_TCP};
use darkport_transport::endpoint::HANDSHAKE_TIMEOUT;
use darkport_transport::identity::Identity;
use darkport_transport::mux::{Conn, RecvHalf, RemoteEnd, SendHalf, Transport, TransportMode};
use darkport_transport::tls::{client_config, rustls_client_config, Trust};
use darkport_transport::{close_code, control, unix_now};

use crate::choice::{Memory, Plan, REMEMBER_TCP};
use crate::error::Retry;
use crate::pool::{candidates_from, Asker, ConnId, Ended, Link, PoolState, DEAD_AFTER};
use crate::{DialError, DialStream};

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

/// How long a failed dial over TCP waits for its connection's close code.
const TCP_CLOSE_GRACE: Duration = Duration::from_millis(250);

/// Time a background connect to a router may take.
const BACKGROUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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

/// A router connection.
#[derive(Debug, Clone)]
struct Live {
    router: String,
    conn: Conn,
}

/// The TLS configurations of both transports for one identity.
#[derive(Debug, Clone)]
struct Configs {
    quic: quinn::ClientConfig,
    tcp: Arc<rustls::ClientConfig>,
}

impl Configs {
    fn new(identity: &Identity) -> Result<Configs, DialError> {
        let trust = || Trust::Ca(identity.ca.clone());
        Ok(Configs {
            quic: client_config(Some(identity), trust(), Kind::Router, ALPN_DATA)?,
            tcp: Arc::new(rustls_client_config(
                Some(identity),
                trust(),
                Kind::Router,
                ALPN_DATA_TCP,
            )?),
        })
    }
}

/// Makes router connections over the transport the mode and the
/// [`Memory`] call for; shared by dials and the background maintenance.
#[derive(Debug, Clone)]
struct Connector {
    endpoint: quinn::Endpoint,
    mode: TransportMode,
    remember_tcp: Duration,
    memory: Arc<Mutex<Memory>>,
}

impl Connector {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn learned(&self, router: &str, won: Transport) {
        let hold = self.remember_tcp;
        self.memory().learned(router, won, clock(), hold);
    }

    async fn connect(&self, configs: &Configs, router: &str) -> Result<Conn, DialError> {
        let plan = self.memory().plan(self.mode, router, clock());
        match plan {
            Plan::Quic => self.quic(configs, router).await,
            Plan::Tcp => self.tcp(configs, router).await,
            Plan::Race { tcp_after } => self.race(configs, router, tcp_after).await,
        }
    }

    async fn quic(&self, configs: &Configs, router: &str) -> Result<Conn, DialError> {
        darkport_transport::endpoint::connect_any(
            &self.endpoint,
            configs.quic.clone(),
            router,
            ROUTER_NAME,
        )
        .await
        .map(Conn::from)
        .map_err(|e| router_error(router, format!("QUIC: {e}")))
    }

    async fn tcp(&self, configs: &Configs, router: &str) -> Result<Conn, DialError> {
        darkport_transport::mux::connect_tcp(configs.tcp.clone(), router, ROUTER_NAME)
            .await
            .map_err(|e| router_error(router, format!("TCP: {e}")))
    }

    /// QUIC first; TCP joins after `tcp_after` or when QUIC fails. The
    /// first handshake to finish wins; the other attempt is dropped.
    async fn race(
        &self,
        configs: &Configs,
        router: &str,
        tcp_after: Duration,
    ) -> Result<Conn, DialError> {
        let quic = self.quic(configs, router);
        let tcp = async {
            tokio::time::sleep(tcp_after).await;
            self.tcp(configs, router).await
        };
        tokio::pin!(quic, tcp);
        let (mut quic_failed, mut tcp_failed) = (None, None);
        // TCP's head-start timer is skipped once QUIC has failed.
        let tcp_now = self.tcp(configs, router);
        tokio::pin!(tcp_now);
        loop {
            tokio::select! {
                biased;
                r = &mut quic, if quic_failed.is_none() => match r {
                    Ok(c) => {
                        self.learned(router, Transport::Quic);
                        return Ok(c);
                    }
                    Err(e) => quic_failed = Some(e),
                },
                r = &mut tcp, if tcp_failed.is_none() && quic_failed.is_none() => match r {
                    Ok(c) => {
                        info!(router, "QUIC did not get through within {tcp_after:?}; using TCP");
                        self.learned(router, Transport::Tcp);
                        return Ok(c);
                    }
                    Err(e) => tcp_failed = Some(e),
                },
                r = &mut tcp_now, if tcp_failed.is_none() && quic_failed.is_some() => match r {
                    Ok(c) => {
                        info!(router, "QUIC failed; using TCP");
                        self.learned(router, Transport::Tcp);
                        return Ok(c);
                    }
                    Err(e) => tcp_failed = Some(e),
                },
            }
            if let (Some(q), Some(t)) = (&quic_failed, &tcp_failed) {
                return Err(router_error(router, format!("{q}; {t}")));
            }
        }
    }
}

/// The server name a client asks routers for (the certificate check is
/// on the identity URI, not on this name).
const ROUTER_NAME: &str = "darkport-router";

fn router_error(router: &str, reason: String) -> DialError {
    DialError::Router {
        router: router.to_string(),
        reason,
    }
}

/// The pool's decisions are made by [`PoolState`] on what it sees of a
/// connection through this; the transport stays out of it.
impl Link for Conn {
    fn id(&self) -> ConnId {
        self.stable_id()
    }

    fn rtt(&self) -> Duration {
        Conn::rtt(self)
    }

    fn heard(&self) -> u64 {
        Conn::heard(self)
    }

    fn ended(&self) -> Option<Ended> {
        let end = self.close_reason()?;
        Some(match refusal("", end) {
            Some(_) => Ended::Refused,
            None => Ended::Closed,
        })
    }
}

impl Live {
    /// The error for a dial on this connection that got no answer: the
    /// router's refusal if it closed the connection with one, else
    /// `reason`.
    fn lost(&self, reason: String) -> DialError {
        refused(&self.router, &self.conn).unwrap_or_else(|| router_error(&self.router, reason))
    }

    /// How the connection ended, or `fallback` while it has not.
    fn why_closed(&self, fallback: String) -> String {
        self.conn
            .close_reason()
            .map(|e| e.to_string())
            .unwrap_or(fallback)
    }
}

impl From<(String, Conn)> for Live {
    fn from((router, conn): (String, Conn)) -> Live {
        Live { router, conn }
    }
}

#[derive(Debug)]
struct Pool {
    /// Identity the connections below were made with.
    identity: Arc<Identity>,
    /// Data-plane TLS configurations for `identity`.
    configs: Configs,
    /// Routers, connections and the decisions about them.
    state: PoolState<Conn>,
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

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        lock(&self.pool)
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
        let mut early = Early {
            reader: local,
            chunks: Vec::new(),
            len: 0,
            ended: false,
        };
        self.dial_with(service, Some(&mut early)).await
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

    async fn dial_inner(
        &self,
        service: &str,
        mut early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        self.check_certificate()?;
        let mut last = None;
        for _round in 0..3 {
            let mut candidates = self.candidates(service, &mut last, clock());
            if candidates.is_empty() {
                // Nothing to use now: connect, and wait for it.
                if let Err(e) = self.fill().await {
                    // A router's refusal says more than "no router".
                    if !matches!(
                        last,
                        Some(DialError::IdentityRefused { .. } | DialError::RouterRevoked { .. })
                    ) {
                        last = Some(e);
                    }
                }
                candidates = self.candidates(service, &mut last, clock());
                if candidates.is_empty() {
                    continue;
                }
            }
            let e = match self
                .dial_any(service, candidates, &mut last, early.as_deref_mut())
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            match e.retry() {
                Retry::Elsewhere => last = Some(e),
                Retry::RefreshList => {
                    // Our router list is out of date: ask the controller
                    // now and connect to the routers that may serve it.
                    last = Some(e);
                    self.refresh_routers_now().await;
                    let _ = self.fill().await;
                }
                Retry::ElsewhereThenFinal | Retry::Final => return Err(e),
            }
        }
        Err(last.unwrap_or(DialError::NoRouters))
    }

    async fn dial_any(
        &self,
        service: &str,
        candidates: Vec<Live>,
        last: &mut Option<DialError>,
        mut early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        for live in candidates {
            match self.dial_on(&live, service, early.as_deref_mut()).await {
                Ok(s) => return Ok(s),
                Err(e) if e.retry() == Retry::Final => return Err(e),
                Err(e) => {
                    // Another router's view may differ (one cut off from
                    // the controller may not know a renewed certificate).
                    warn!("{e}; trying another router");
                    // Out of the pool for new dials; streams already on it
                    // carry on (a router that is merely slow, or may not
                    // serve this service, is still fine for them).
                    self.set_aside(&live);
                    keep_telling(last, e);
                }
            }
        }
        Err(last.take().unwrap_or(DialError::NoRouters))
    }

    /// An expired certificate gets a clear error before any connection.
    fn check_certificate(&self) -> Result<(), DialError> {
        let identity = self.identity();
        if let Some((_, expires)) = darkport_transport::renew::schedule(&identity) {
            if unix_now() >= expires {
                return Err(DialError::CertificateExpired {
                    identity: identity.name.to_string(),
                    at: fmt_time(expires),
                });
            }
        }
        Ok(())
    }

    /// Live connections that may serve `service` at `now`, lowest RTT first.
    /// Connections a router closed because it refuses this identity are
    /// dropped, and the refusal is put in `refusal`: a router may close
    /// such a connection before any dial was tried on it.
    fn candidates(
        &self,
        service: &str,
        refusal: &mut Option<DialError>,
        now: std::time::Instant,
    ) -> Vec<Live> {
        let current = self.identity();
        let mut pool = self.pool();
        if !Arc::ptr_eq(&pool.identity, &current) {
            // A renewed certificate: new connections present it. Existing
            // streams keep their connections until they end.
            match Configs::new(&current) {
                Ok(c) => {
                    pool.configs = c;
                    pool.identity = current;
                    pool.state.take_all();
                }
                Err(e) => warn!("cannot use the renewed certificate: {e}"),
            }
        }
        for (router, conn) in pool.state.sweep(now) {
            if let Some(e) = refused(&router, &conn) {
                *refusal = Some(e);
            } else if let (None, Some(end)) = (&*refusal, conn.close_reason()) {
                // A connection that ended before a dial could use it (a
                // router refusing our certificate ends it right after the
                // handshake): how it ended is the dial's answer, not
                // "no router".
                *refusal = Some(router_error(&router, end.to_string()));
            }
        }
        pool.state
            .candidates_for(service)
            .into_iter()
            .map(Live::from)
            .collect()
    }

    fn set_aside(&self, live: &Live) {
        self.pool().state.set_aside(live.conn.stable_id());
    }

    async fn dial_on(
        &self,
        live: &Live,
        service: &str,
        early: Option<&mut Early<'_>>,
    ) -> Result<DialStream, DialError> {
        let resend = early.as_deref().map(|e| e.chunks.as_slice());
        let result = match send_request(live, service, resend.unwrap_or_default()).await {
            Ok(sent) => await_answer(live, service, sent, early).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e @ DialError::Router { .. })
                if live.conn.transport() == Transport::Tcp
                    && live.conn.close_reason().is_none() =>
            {
                // Over TCP a stream can fail a moment before the end of its
                // connection (and the router's close code) is known.
                let _ = tokio::time::timeout(TCP_CLOSE_GRACE, live.conn.closed()).await;
                Err(refused(&live.router, &live.conn).unwrap_or(e))
            }
            other => other,
        }
    }

    /// Makes sure there are up to `pool_size` router connections; returns
    /// an error only if there are none.
    async fn fill(&self) -> Result<(), DialError> {
        let _gate = self.refill.lock().await;
        self.refresh_routers().await;
        let (configs, targets) = {
            let pool = self.pool();
            let targets = pool
                .state
                .to_connect(clock(), self.options.pool_size, Asker::Dial);
            (pool.configs.clone(), targets)
        };
        if targets.is_empty() {
            return Ok(());
        }
        // Connect to every candidate at once and return as soon as one is
        // up: a dead router in the list costs nothing while a live one
        // answers. Later successes join the pool in the background.
        let (tx, mut rx) = tokio::sync::mpsc::channel(targets.len().max(1));
        for addr in targets {
            let (connector, configs, tx, pool) = (
                self.connector.clone(),
                configs.clone(),
                tx.clone(),
                self.pool.clone(),
            );
            let size = self.options.pool_size;
            tokio::spawn(async move {
                let result = connector.connect(&configs, &addr).await;
                if let Ok(conn) = &result {
                    info!(router = %addr, rtt = ?conn.rtt(), transport = %conn.transport(), "connected to router");
                    admit(&pool, addr, conn.clone(), size);
                }
                let _ = tx.send(result.map(|_| ())).await;
            });
        }
        drop(tx);
        let mut last = None;
        while let Some(result) = rx.recv().await {
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!("{e}");
                    last = Some(e);
                }
            }
        }
        if self.pool().state.is_empty() {
            return Err(last.unwrap_or(DialError::NoRouters));
        }
        Ok(())
    }

    /// Refreshes the router list from the controller when it is stale;
    /// keeps the last list (in memory, else on disk) if the controller is
    /// unreachable.
    async fn refresh_routers(&self) {
        let now = clock();
        if self.router_list.fixed || !self.pool().state.list_stale(now) {
            return;
        }
        // A cached list is used at once and refreshed in the background: a
        // controller that is down costs a new client nothing.
        if !self.pool().state.has_routers() {
            if let Some(list) = self.router_list.cached() {
                self.pool().state.on_cached_list(&list);
            }
        }
        let (list, identity, pool) = (self.router_list.clone(), self.identity(), self.pool.clone());
        let refresh = async move { list.refresh(&pool, &identity).await };
        if !self.pool().state.has_routers() {
            refresh.await;
        } else {
            // Not again until this one is done or has failed.
            self.pool().state.defer_list(now);
            tokio::spawn(refresh);
        }
    }

    /// Asks the controller for the router list now, waiting for the answer.
    async fn refresh_routers_now(&self) {
        if !self.router_list.fixed {
            self.router_list.refresh(&self.pool, &self.identity()).await;
        }
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

/// A dial request on its way: the stream it went out on, and what the
/// router had heard before it, to tell a dead router from a slow one.
struct Sent {
    send: SendHalf,
    recv: RecvHalf,
    /// False once the router stopped our sending (it refuses and sends
    /// STOP_SENDING right after its answer): no more early data then.
    sending: bool,
    /// [`Conn::heard`] before the request went out.
    heard_before: u64,
}

/// Opens a stream on `live` and sends the dial request for `service`,
/// then `resend`: the early bytes read from the app before a previous
/// router failed.
async fn send_request(live: &Live, service: &str, resend: &[Bytes]) -> Result<Sent, DialError> {
    let heard_before = live.conn.heard();
    let (mut send, recv) = live
        .conn
        .open_bi()
        .await
        .map_err(|e| live.lost(e.to_string()))?;
    write_frame(&mut send, &DialRequest::new(service), MAX_DIAL_FRAME)
        .await
        .map_err(|e| live.lost(live.why_closed(e.to_string())))?;
    let mut sending = true;
    for c in resend {
        if send.write_chunk(c.clone()).await.is_err() {
            sending = false;
            break;
        }
    }
    Ok(Sent {
        send,
        recv,
        sending,
        heard_before,
    })
}

/// Waits for the router's answer to a [`Sent`] request, sending more early
/// bytes meanwhile. A router that sends nothing at all within the liveness
/// window is taken for dead and its connection closed; one that is alive
/// gets [`DIAL_TIMEOUT`].
async fn await_answer(
    live: &Live,
    service: &str,
    sent: Sent,
    mut early: Option<&mut Early<'_>>,
) -> Result<DialStream, DialError> {
    let Sent {
        mut send,
        mut recv,
        mut sending,
        heard_before,
    } = sent;
    let window = LIVENESS_WINDOW + live.conn.rtt() * 4;
    let started = Instant::now();
    let mut check_at = started + window;
    let resp = {
        let response = read_frame::<_, DialResponse>(&mut recv, MAX_DIAL_FRAME);
        tokio::pin!(response);
        loop {
            let reading = sending && early.as_ref().is_some_and(|e| e.wants_more());
            tokio::select! {
                r = &mut response => break r,
                got = read_early(&mut early), if reading => match got {
                    Ok(Some(chunk)) => {
                        // Kept in `early` even if this fails (see Sent).
                        if send.write_chunk(chunk).await.is_err() {
                            sending = false;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        send.reset(StreamCode::Refused);
                        return Err(DialError::Io(e));
                    }
                },
                _ = tokio::time::sleep_until(check_at) => {
                    if live.conn.heard() == heard_before {
                        send.reset(StreamCode::Refused);
                        live.conn.close(CloseCode::Done, b"router not answering");
                        return Err(live.lost(format!("no answer at all within {window:?}; taking it for dead")));
                    }
                    if started.elapsed() >= DIAL_TIMEOUT {
                        return Err(live.lost(format!("no answer to the dial within {} s", DIAL_TIMEOUT.as_secs())));
                    }
                    check_at += window;
                }
            }
        }
    };
    let resp = answer(live, service, resp)?;
    if let Some(e) = DialError::from_status(resp.status, service, resp.message) {
        return Err(e);
    }
    debug!(service, router = %live.router, "dialed");
    Ok(DialStream::new(send, recv))
}

/// The router's answer as read, or why there is none.
fn answer(
    live: &Live,
    service: &str,
    read: Result<DialResponse, ProtoError>,
) -> Result<DialResponse, DialError> {
    match read {
        // Reset with the splice's code: the router had connected (its
        // answer was Ok) and the service reset the connection before that
        // answer got out. With early data the service may have seen bytes:
        // this is the end of the connection, not a reason to try another
        // router.
        Err(ProtoError::Io(e)) if is_splice_reset(&e) => Err(DialError::ServiceReset {
            service: service.to_string(),
        }),
        Err(ProtoError::Io(e)) => Err(live.lost(live.why_closed(e.to_string()))),
        Err(e @ (ProtoError::Closed | ProtoError::UnexpectedEof)) => {
            Err(live.lost(live.why_closed(e.to_string())))
        }
        Err(e) => Err(live.lost(format!("bad answer: {e}"))),
        Ok(r) => Ok(r),
    }
}

/// Application bytes read while a dial is pending, kept until the dial
/// succeeds so that they can be sent again to another router.
struct Early<'a> {
    reader: &'a mut (dyn AsyncRead + Unpin + Send),
    chunks: Vec<Bytes>,
    len: usize,
    ended: bool,
}

impl Early<'_> {
    fn wants_more(&self) -> bool {
        !self.ended && self.len < MAX_EARLY_DATA
    }
}

/// Reads the next early chunk: `Some` bytes (also kept in `early`), `None`
/// at EOF (or with nothing to read from).
async fn read_early(early: &mut Option<&mut Early<'_>>) -> std::io::Result<Option<Bytes>> {
    let Some(e) = early.as_deref_mut() else {
        return Ok(None);
    };
    let mut buf = Vec::with_capacity((MAX_EARLY_DATA - e.len).min(16 * 1024));
    if e.reader.read_buf(&mut buf).await? == 0 {
        e.ended = true;
        return Ok(None);
    }
    let chunk = Bytes::from(buf);
    e.len += chunk.len();
    e.chunks.push(chunk.clone());
    Ok(Some(chunk))
}

/// Whether a read failed because the peer reset the stream with
/// [`StreamCode::Reset`], which only a splice sends (a TCP reset carried
/// across).
fn is_splice_reset(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<RemoteEnd>()),
        Some(RemoteEnd::Reset(code)) if *code == u64::from(StreamCode::Reset.code())
    )
}

/// The router's refusal of this identity, if it closed the connection with
/// one of the codes that mean "this identity may not use the data plane"
/// (see the router's listener).
/// Records `new` as the error a failed dial reports, unless it is a bare
/// router error and `last` already says why a router refused (revoked,
/// refused identity, draining...): a stream cut while a refusing router
/// closes says less than the refusal heard a moment before.
fn keep_telling(last: &mut Option<DialError>, new: DialError) {
    let vague = matches!(new, DialError::Router { .. });
    let telling = matches!(last, Some(e) if !matches!(e, DialError::Router { .. }));
    if !(vague && telling) {
        *last = Some(new);
    }
}

fn refused(router: &str, conn: &Conn) -> Option<DialError> {
    refusal(router, conn.close_reason()?)
}

/// [`refused`], from how the connection ended.
fn refusal(router: &str, end: RemoteEnd) -> Option<DialError> {
    let RemoteEnd::Closed { code, reason } = end else {
        return None;
    };
    match (CloseCode::from_code(code)?, reason) {
        (CloseCode::Forbidden | CloseCode::Revoked, reason) => Some(DialError::IdentityRefused {
            router: router.to_string(),
            reason,
        }),
        (CloseCode::RouterRevoked, reason) => Some(DialError::RouterRevoked {
            router: router.to_string(),
            reason,
        }),
        (CloseCode::Busy, reason) => Some(DialError::Router {
            router: router.to_string(),
            reason: format!("the router is at a limit: {reason}"),
        }),
        _ => None,
    }
}

/// The pool, also after a panic elsewhere while it was held (its state is
/// kept consistent between statements).
fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a new connection to `router` to the pool, or closes it when the
/// pool has no place for it; says whether it joined.
fn admit(pool: &Mutex<Pool>, router: String, conn: Conn, size: usize) -> bool {
    let joined = lock(pool).state.on_connected(router, conn, size);
    match joined {
        Ok(()) => true,
        Err(conn) => {
            conn.close(CloseCode::Done, b"enough routers");
            false
        }
    }
}

/// The controller's router list: fetching it, caching it beside the
/// identity file, and handing it to the pool. When to fetch is the pool's
/// decision ([`PoolState::list_stale`]); this carries it out, for the dial
/// path and the background maintenance alike.
#[derive(Debug, Clone)]
struct RouterList {
    /// The routers were given by address: nothing is fetched.
    fixed: bool,
    /// `<identity file>.routers`, when there is an identity file, so a
    /// client started while the controller is down still finds routers.
    cache: Option<PathBuf>,
}

/// Time one fetch of the router list may take. The control connection
/// gives up its handshake after [`HANDSHAKE_TIMEOUT`] with an error that
/// says what to do ("is it running?"); the extra second lets that error,
/// rather than this timeout, reach the log, and covers the one request and
/// its answer that follow the handshake.
const LIST_FETCH_TIMEOUT: Duration = HANDSHAKE_TIMEOUT.saturating_add(Duration::from_secs(1));

impl RouterList {
    fn new(options: &ClientOptions) -> RouterList {
        let cache = options.identity_path.clone().map(|p| {
            let mut p = p.into_os_string();
            p.push(".routers");
            PathBuf::from(p)
        });
        RouterList {
            fixed: !options.routers.is_empty(),
            cache,
        }
    }

    /// Asks the controller for its router list, within
    /// [`LIST_FETCH_TIMEOUT`].
    async fn fetch(identity: &Identity) -> Result<Vec<RouterInfo>, DialError> {
        let ask = async {
            let config = darkport_transport::tls::controller_client_config(identity)?;
            let resp =
                control::one_shot(&identity.controller, config, ControlBody::ListRouters).await?;
            let ControlResponse::Routers(list) = resp else {
                return Err(DialError::NoRouters);
            };
            Ok(list)
        };
        tokio::time::timeout(LIST_FETCH_TIMEOUT, ask)
            .await
            .unwrap_or(Err(DialError::NoRouters))
    }

    /// The list cached by the last successful fetch, if any.
    fn cached(&self) -> Option<Vec<RouterInfo>> {
        let bytes = std::fs::read(self.cache.as_ref()?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Fetches the list and hands it to the pool.
    async fn refresh(&self, pool: &Mutex<Pool>, identity: &Identity) {
        let result = RouterList::fetch(identity).await;
        self.apply(pool, result, clock());
    }

    /// Takes a router list fetched at `now` (and caches it), or notes the
    /// failure.
    fn apply(
        &self,
        pool: &Mutex<Pool>,
        result: Result<Vec<RouterInfo>, DialError>,
        now: std::time::Instant,
    ) {
        match result {
            Ok(list) => {
                if let Some(path) = &self.cache {
                    if let Ok(text) = serde_json::to_vec_pretty(&list) {
                        let _ = darkport_transport::identity::write_private_file(path, &text, true);
                    }
                }
                let unlisted = lock(pool).state.on_router_list(&list, now);
                for conn in unlisted {
                    conn.close(CloseCode::Done, b"router no longer listed");
                }
            }
            Err(e) => {
                let mut pool = lock(pool);
                pool.state.defer_list(now);
                if pool.state.has_routers() {
                    warn!("cannot refresh routers from the controller ({e}); using the known ones");
                } else {
                    warn!("cannot get routers from the controller: {e}");
                }
            }
        }
    }
}

/// How often the pool is checked: dead connections dropped, missing ones
/// made, a stale router list refreshed.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// Keeps the pool at `pool_size` live connections and the router list
/// fresh, for as long as the client lives. Does nothing until the first
/// dial has loaded a router list. What to do is [`PoolState`]'s decision;
/// this carries it out.
async fn maintain(
    pool: Arc<Mutex<Pool>>,
    connector: Connector,
    router_list: RouterList,
    pool_size: usize,
    identity: watch::Receiver<Arc<Identity>>,
) {
    loop {
        tokio::time::sleep(MAINTAIN_EVERY).await;
        let dead = {
            let mut p = lock(&pool);
            let now = clock();
            p.state.sweep(now);
            p.state.dead(now)
        };
        for (router, conn) in dead {
            warn!(router = %router, "router silent for {DEAD_AFTER:?}; dropping the connection");
            conn.close(CloseCode::Done, b"router silent");
        }
        let (configs, live, idle, stale) = {
            let mut p = lock(&pool);
            let now = clock();
            p.state.sweep(now);
            let live: Vec<Live> = p
                .state
                .links()
                .map(|(router, conn)| Live::from((router.to_string(), conn.clone())))
                .collect();
            let (idle, stale) = (p.state.idle(now), p.state.list_stale(now));
            (p.configs.clone(), live, idle, stale)
        };
        // Nothing to do until a dial (or warm_up) asked for routers; an
        // empty list is asked for again soon (routers may start later).
        if idle {
            continue;
        }
        if stale {
            let id = identity.borrow().clone();
            router_list.refresh(&pool, &id).await;
        }
        retry_quic(&pool, &connector, &configs, &live).await;
        let missing = lock(&pool)
            .state
            .to_connect(clock(), pool_size, Asker::Background);
        let attempts = missing.into_iter().map(|addr| {
            let (connector, configs) = (connector.clone(), configs.clone());
            async move {
                let r = tokio::time::timeout(
                    BACKGROUND_CONNECT_TIMEOUT,
                    connector.connect(&configs, &addr),
                )
                .await;
                (addr, r)
            }
        });
        for (addr, result) in futures_join_all(attempts).await {
            match result {
                Ok(Ok(conn)) => {
                    let rtt = conn.rtt();
                    if admit(&pool, addr.clone(), conn, pool_size) {
                        info!(router = %addr, ?rtt, "connected to router");
                    }
                }
                _ => lock(&pool).state.on_unreachable(&addr, clock()),
            }
        }
    }
}

/// For each live TCP connection whose router's TCP memory has expired
/// (auto mode), tries QUIC again; if it gets through, the QUIC
/// connection takes the TCP one's place for new dials (streams on the TCP
/// connection carry on to their end), else TCP is remembered again.
async fn retry_quic(pool: &Mutex<Pool>, connector: &Connector, configs: &Configs, live: &[Live]) {
    let now = clock();
    let due: Vec<&Live> = live
        .iter()
        .filter(|l| l.conn.transport() == Transport::Tcp)
        .filter(|l| {
            connector
                .memory()
                .retry_quic(connector.mode, &l.router, now)
        })
        .collect();
    for old in due {
        let attempt = tokio::time::timeout(
            BACKGROUND_CONNECT_TIMEOUT,
            connector.quic(configs, &old.router),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                connector.learned(&old.router, Transport::Quic);
                info!(router = %old.router, "QUIC gets through again; new dials use it instead of TCP");
                let replaced = lock(pool).state.replace(old.conn.stable_id(), conn);
                if let Err(conn) = replaced {
                    conn.close(CloseCode::Done, b"enough routers");
                }
            }
            _ => {
                debug!(router = %old.router, "QUIC still does not get through; staying on TCP");
                connector.learned(&old.router, Transport::Tcp);
            }
        }
    }
}

/// Runs futures concurrently and collects their outputs.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    let mut out = vec![];
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            out.push(v);
        }
    }
    out
}

/// Shares a client between tasks.
pub type SharedClient = Arc<Client>;

#[cfg(test)]
mod tests {
    use super::*;

    fn vague() -> DialError {
        DialError::Router {
            router: "r:1".into(),
            reason: "stream error received: stream no longer needed".into(),
        }
    }

    fn revoked() -> DialError {
        DialError::RouterRevoked {
            router: "r:1".into(),
            reason: "this router was revoked".into(),
        }
    }

    #[test]
    fn a_refusal_is_not_replaced_by_a_vaguer_router_error() {
        let mut last = None;
        keep_telling(&mut last, vague());
        assert!(matches!(last, Some(DialError::Router { .. })));
        keep_telling(&mut last, revoked());
        assert!(matches!(last, Some(DialError::RouterRevoked { .. })));
        keep_telling(&mut last, vague());
        assert!(matches!(last, Some(DialError::RouterRevoked { .. })));
    }
}
