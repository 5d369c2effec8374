//! The control API.
//!
//! One QUIC endpoint (ALPN `darkport-ctl/1`). Client certificates are
//! optional at the TLS layer so that enrolling hosts, which have none yet,
//! can connect; every request other than enrollment then requires a
//! certificate of the right kind whose fingerprint is the identity's
//! current one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use darkport_proto::codec::{
    read_frame, write_frame, MAX_CONTROL_FRAME, MAX_UNAUTHENTICATED_FRAME,
};
use darkport_proto::codes::{CloseCode, StreamCode};
use darkport_proto::identity::{IdentityName, Kind, PeerIdentity};
use darkport_proto::msg::{
    AdminRequest, AdminResponse, ControlError, ControlErrorCode, ControlRequest, ControlResponse,
    EnrollRequest, RouterReport,
};
use darkport_proto::token::{SignedToken, TokenKey};
use darkport_proto::{ProtoError, ALPN_CONTROL};
use darkport_transport::admission::{GateLimits, HandshakeAbort, HandshakeGate, Ticket};
use darkport_transport::budgeted_info;
use darkport_transport::identity::Identity;
use darkport_transport::limits::{report_suppressed, Caps, LogBudget, Rate, RateLimit, Slot};
use darkport_transport::tls::{self, ClientAuth};
use darkport_transport::{close_code, stream_code, unix_now};

use crate::ca::Ca;
use crate::datadir::{Config, DataDir, DataDirError};
use crate::decide::{
    check_current, check_rate, check_token, consume_token, renew_certificate, route, Route,
};
use crate::handlers::{self, err, Caller, Env, Issuer, Presence};
use crate::metrics::{result_label, Metrics};
use crate::store::{audit, RouterRecord, State, Store, StoreError};

/// Time allowed for a request to arrive once a stream is open.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to deliver an answer (written, and acknowledged by the
/// peer); a peer that gives no receive credit has its stream reset then.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to deliver one snapshot to a syncing router; a router that
/// does not read loses its session.
pub const SNAPSHOT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// QUIC handshakes in progress: 32 per source prefix (/24, /64), 512 in
/// all; when full, the oldest handshake of the busiest prefix makes room
/// (`darkport_transport::admission`), so a flood from many addresses
/// cannot keep an admin out. Above 64 in progress, a new peer must first
/// prove its address with a QUIC Retry (spoofed floods then cost one
/// packet).
pub const HANDSHAKES: GateLimits = GateLimits {
    total: 512,
    per_prefix: 32,
    retry_above: 64,
    v4_prefix: 24,
    v6_prefix: 64,
};

/// Connections without a certificate (enrolling hosts) from one source
/// prefix (as [`HANDSHAKES`] counts them).
pub const MAX_UNAUTHENTICATED_PER_PREFIX: usize = 16;

/// Connections without a certificate in all.
pub const MAX_UNAUTHENTICATED: usize = 512;

/// Longest life of a connection without a certificate: enrollment takes
/// one request.
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(30);

/// Enrollment attempts per source address: a burst, then five a second.
pub const ENROLL_RATE: Rate = Rate {
    burst: 20,
    every: Duration::from_millis(200),
};

/// Renewals per identity at once; they are earned back at a third of the
/// certificate lifetime (clamped to 1 s ..= 1 h), the renewal schedule.
pub const RENEW_BURST: u32 = 3;

/// At most one `last_seen` commit per router per this interval; reports in
/// between update only memory.
pub const REPORT_PERSIST_EVERY: Duration = Duration::from_secs(5);

/// Keys tracked by each rate limit (source addresses, identities).
const RATE_LIMIT_KEYS: usize = 65_536;

/// Refusal log lines per interval before they are summarised.
const REFUSAL_LINES: u32 = 20;
const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);

pub use crate::decide::MAX_LIVE_CERTIFICATES;

pub use crate::bounds::{check_advertise, CONTROLLER_LIVE, MAX_ADVERTISE_LEN, MAX_TOKEN_TTL};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data dir is missing or broken.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The controller identity is unusable.
    #[error(transparent)]
    Identity(#[from] darkport_transport::identity::IdentityError),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The socket failed.
    #[error("control endpoint: {0}")]
    Io(#[from] std::io::Error),
}

struct Ctx {
    /// This controller's identity name (its row in `State::controllers`).
    name: IdentityName,
    store: Store,
    ca: Ca,
    ca_fingerprint: String,
    token_key: TokenKey,
    config: Config,
    /// Routers with a live sync session, by name.
    online: DashMap<IdentityName, Presence>,
    /// Handshakes in progress, per source address.
    handshakes: Arc<HandshakeGate>,
    /// Connections without a certificate, per source address.
    unauthenticated: Arc<Caps<IpAddr>>,
    /// Enrollment attempts per source address.
    enroll_rate: RateLimit<IpAddr>,
    /// Renewals per identity.
    renew_rate: RateLimit<IdentityName>,
    /// `last_seen` commits per router.
    report_persist: RateLimit<IdentityName>,
    /// Lines about refused peers and bad requests.
    refusals: Arc<LogBudget>,
    metrics: Metrics,
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        warn!("state update failed: {e}");
        err(
            ControlErrorCode::Internal,
            format!("controller storage failed: {e}"),
        )
    }
}

/// Runs the controller on an already-bound UDP socket until `shutdown`
/// completes.
pub async fn run(
    dir: DataDir,
    socket: UdpSocket,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_metrics(dir, socket, shutdown, Metrics::default()).await
}

/// [`run`], counting into `metrics` (and telling its readiness).
pub async fn run_with_metrics(
    dir: DataDir,
    socket: UdpSocket,
    shutdown: impl Future<Output = ()>,
    metrics: Metrics,
) -> Result<(), ServerError> {
    run_with_store(dir, socket, shutdown, metrics, None).await
}

/// [`run_with_metrics`] with the state in `store` (a `postgres://` URL)
/// instead of where the data dir's config says.
pub async fn run_with_store(
    dir: DataDir,
    socket: UdpSocket,
    shutdown: impl Future<Output = ()>,
    metrics: Metrics,
    store: Option<String>,
) -> Result<(), ServerError> {
    let mut config = dir.load_config()?;
    if store.is_some() {
        config.store = store;
    }
    let ca = dir.load_ca()?;
    let ca_fingerprint = crate::datadir::pem_fingerprint(&ca.cert_pem)?;
    let identity = Identity::load(&dir.controller_identity())?;
    check_not_legacy(&dir, &config)?;
    let store = dir.open_store(&config)?;
    {
        let m = metrics.clone();
        store.observe(Box::new(move |op, took| m.store_op(op, took)));
    }
    set_expiries(&metrics, &identity);
    let ctx = Arc::new(Ctx {
        name: identity.name.clone(),
        metrics: metrics.clone(),
        store,
        ca,
        ca_fingerprint,
        token_key: dir.load_token_key()?,
        online: DashMap::new(),
        handshakes: HandshakeGate::new(HANDSHAKES),
        unauthenticated: Caps::new(
            MAX_UNAUTHENTICATED_PER_PREFIX,
            MAX_UNAUTHENTICATED,
            "source prefix",
        ),
        enroll_rate: RateLimit::new(ENROLL_RATE, RATE_LIMIT_KEYS),
        renew_rate: RateLimit::new(renew_rate(config.cert_ttl_secs), RATE_LIMIT_KEYS),
        report_persist: RateLimit::new(
            Rate {
                burst: 1,
                every: REPORT_PERSIST_EVERY,
            },
            RATE_LIMIT_KEYS,
        ),
        refusals: Arc::new(LogBudget::new(REFUSAL_LINES, REFUSAL_INTERVAL)),
        config,
    });
    let endpoint = control_endpoint(&dir, &identity, socket)?;
    info!(
        addr = %endpoint.local_addr()?,
        advertise = %ctx.config.advertise,
        "controller listening"
    );
    let mut tasks = start_background(&ctx)?;
    metrics.set_ready(true);
    accept_until(&endpoint, &ctx, &mut tasks, shutdown).await;
    metrics.set_ready(false);
    endpoint.close(close_code(CloseCode::Done), b"controller shutting down");
    tasks.shutdown().await;
    Ok(())
}

/// Refuses a data dir an older Darkport made (state in `state.json`),
/// rather than starting over with an empty store beside it.
fn check_not_legacy(dir: &DataDir, config: &Config) -> Result<(), DataDirError> {
    if config.store.is_none() && !dir.state().exists() && dir.root().join("state.json").exists() {
        return Err(DataDirError::Invalid(format!(
            "{} was created by an older Darkport (state.json); this version keeps state in state.db and does not import it; run init in a new data dir",
            dir.root().display()
        )));
    }
    Ok(())
}

/// Tells `metrics` when this controller's certificate and the CA expire
/// (0 where a certificate cannot be read).
fn set_expiries(metrics: &Metrics, identity: &Identity) {
    let expiry = |der: &rustls::pki_types::CertificateDer<'_>| {
        tls::cert_validity(der).map_or(0, |(_, not_after)| not_after)
    };
    metrics.set_expiries(
        identity.chain.first().map_or(0, expiry),
        expiry(&identity.ca),
    );
}

/// The QUIC endpoint on `socket`, with this controller's identity and the
/// data dir's stateless-reset key (so a restarted controller can reset
/// its old connections).
fn control_endpoint(
    dir: &DataDir,
    identity: &Identity,
    socket: UdpSocket,
) -> Result<quinn::Endpoint, ServerError> {
    let mut server_config = tls::server_config(identity, ClientAuth::Optional, ALPN_CONTROL)?;
    server_config.transport_config(darkport_transport::endpoint::control_transport_config());
    let reset_key =
        darkport_transport::endpoint::load_or_create_reset_key(&dir.root().join("reset.key"))?;
    Ok(darkport_transport::endpoint::server_with_reset_key(
        socket,
        server_config,
        Some(&reset_key),
    )?)
}

/// Writes the first heartbeat, then starts what runs beside the
/// connections: refusal summaries, heartbeats and following other
/// controllers' changes; warns of identities tag patterns cannot match.
fn start_background(ctx: &Arc<Ctx>) -> Result<JoinSet<()>, ServerError> {
    let mut tasks = JoinSet::new();
    tasks.spawn(report_suppressed(ctx.refusals.clone(), "refusals"));
    heartbeat(ctx).map_err(DataDirError::from)?;
    tasks.spawn(heartbeats(ctx.clone()));
    if let Some(changes) = ctx.store.changes() {
        tasks.spawn(follow_changes(ctx.clone(), changes));
    }
    for why in untaggable_identities(&ctx.store.read()) {
        warn!("{why}");
    }
    Ok(tasks)
}

/// Accepts connections until `shutdown` completes or the endpoint closes,
/// asking unvalidated sources to retry when the handshake gate says so.
async fn accept_until(
    endpoint: &quinn::Endpoint,
    ctx: &Arc<Ctx>,
    tasks: &mut JoinSet<()>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if ctx.handshakes.wants_retry(incoming.remote_address_validated())
                    && incoming.may_retry()
                {
                    let _ = incoming.retry();
                    continue;
                }
                let ticket = ctx.handshakes.enter(incoming.remote_address().ip());
                tasks.spawn(handle_connection(ctx.clone(), incoming, ticket));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Why `${identity}` tag patterns never match some client identities (a
/// name with a `.`, since tag namespaces are per tag part): one line per
/// identity, if any policy uses `${identity}`. Said at start, so data from
/// before the rule gets a clear migration message.
pub fn untaggable_identities(state: &State) -> Vec<String> {
    let uses_placeholder = state.policies.values().any(|p| {
        p.tags
            .iter()
            .any(|t| t.contains(darkport_proto::tags::IDENTITY_PLACEHOLDER))
    });
    if !uses_placeholder {
        return Vec::new();
    }
    state
        .identities
        .values()
        .filter(|i| i.kind == Kind::Client)
        .filter_map(|i| darkport_proto::tags::check_identity_for_tags(i.name.as_str()).err())
        .map(|e| e.to_string())
        .collect()
}

/// How often a controller records that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Records this controller (and its advertised address) as alive; an
/// audit entry when it is new or moved.
fn heartbeat(ctx: &Ctx) -> Result<(), StoreError> {
    let now = unix_now();
    let advertise = &ctx.config.advertise;
    let moved = ctx
        .store
        .read()
        .controllers
        .get(&ctx.name)
        .is_none_or(|c| &c.advertise != advertise);
    let what = moved
        .then(|| {
            crate::store::audit(
                ctx.name.as_str(),
                format!("controller {} serves at {advertise}", ctx.name),
            )
        })
        .flatten();
    ctx.store.update(false, what, |s| {
        s.controllers.insert(
            ctx.name.clone(),
            crate::store::ControllerRecord {
                advertise: advertise.clone(),
                last_seen: now,
            },
        );
        Ok::<_, StoreError>(())
    })
}

async fn heartbeats(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = ctx.clone();
        match tokio::task::spawn_blocking(move || heartbeat(&c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("controller heartbeat not recorded: {e}"),
            Err(e) => warn!("controller heartbeat task failed: {e}"),
        }
    }
}

/// Reloads the state whenever the backend says another controller
/// committed, so that routers synced to this controller get every change
/// made through any other.
async fn follow_changes(ctx: Arc<Ctx>, mut changes: tokio::sync::mpsc::Receiver<()>) {
    while changes.recv().await.is_some() {
        // Many notifications make one reload: what arrived meanwhile is
        // covered by it.
        while changes.try_recv().is_ok() {}
        let c = ctx.clone();
        match tokio::task::spawn_blocking(move || c.store.refresh()).await {
            Ok(Ok(true)) => debug!("state changed by another controller: reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!("reloading state changed by another controller failed: {e}; retrying on the next change"),
            Err(e) => warn!("state reload task failed: {e}"),
        }
    }
}

/// The controllers routers and clients should know, as advertised
/// addresses: `me` first, then every other heard from within
/// [`CONTROLLER_LIVE`], by name.
pub fn live_controllers(state: &State, me: &IdentityName, now: u64) -> Vec<String> {
    let mine = state.controllers.get(me).map(|c| c.advertise.clone());
    let others = state
        .controllers
        .iter()
        .filter(|(name, c)| {
            *name != me && c.last_seen.saturating_add(CONTROLLER_LIVE.as_secs()) >= now
        })
        .map(|(_, c)| c.advertise.clone());
    mine.into_iter().chain(others).collect()
}

/// Binds the control socket for `run` (UDP, large buffers).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    darkport_transport::endpoint::bind_udp(addr)
}

/// The renewal rate for a certificate lifetime: [`RENEW_BURST`] at once,
/// then one per third of the lifetime, clamped to 1 s ..= 1 h.
pub fn renew_rate(cert_ttl_secs: u64) -> Rate {
    Rate {
        burst: RENEW_BURST,
        every: Duration::from_secs((cert_ttl_secs / 3).clamp(1, 3600)),
    }
}

async fn handle_connection(ctx: Arc<Ctx>, incoming: quinn::Incoming, handshake: Ticket) {
    let remote = incoming.remote_address();
    let Some(conn) = accept_within(&ctx, incoming, handshake).await else {
        return;
    };
    let Ok(peer) = admit_peer(&ctx, &conn, remote) else {
        return;
    };
    // A peer without a certificate holds a slot for its address, and has
    // UNAUTHENTICATED_LIFETIME to enroll.
    let _unauthenticated = match &peer {
        Some(_) => None,
        None => match hold_unauthenticated(&ctx, &conn, remote) {
            Ok(slot) => Some(slot),
            Err(Refused) => return,
        },
    };
    debug!(%remote, peer = ?peer, "control connection");
    serve_streams(ctx, conn, peer).await;
}

/// The handshake, unless it fails or the handshake gate evicts it first.
async fn accept_within(
    ctx: &Ctx,
    incoming: quinn::Incoming,
    mut handshake: Ticket,
) -> Option<quinn::Connection> {
    let remote = incoming.remote_address();
    let accepted = tokio::select! {
        c = darkport_transport::endpoint::accept(incoming, "control") => c,
        () = handshake.evicted() => {
            budgeted_info!(ctx.refusals, %remote, "dropped a control handshake in progress: {}", HandshakeAbort::Evicted);
            None
        }
    };
    // Done (or failed): out of the pending pool.
    drop(handshake);
    accepted
}

/// A control connection was refused, and closed saying why.
struct Refused;

/// Who is on `conn`: `None` for a peer without a certificate, the peer
/// for a current identity; [`Refused`] for an unreadable, revoked or
/// replaced certificate.
fn admit_peer(
    ctx: &Ctx,
    conn: &quinn::Connection,
    remote: SocketAddr,
) -> Result<Option<PeerIdentity>, Refused> {
    if conn.peer_identity().is_none() {
        return Ok(None);
    }
    match tls::peer_identity(conn) {
        Ok(p) => match check_current(&ctx.store.read(), &p, unix_now()) {
            Ok(()) => Ok(Some(p)),
            Err(refusal) => {
                budgeted_info!(ctx.refusals, %remote, peer = %p, "refusing control connection: {}", refusal.reason);
                conn.close(close_code(refusal.close_code()), refusal.reason.as_bytes());
                Err(Refused)
            }
        },
        Err(e) => {
            info!(%remote, "refusing control connection: {e}");
            conn.close(
                close_code(CloseCode::ControlRefused),
                e.to_string().as_bytes(),
            );
            Err(Refused)
        }
    }
}

/// A slot among the connections without a certificate from `remote`'s
/// prefix, or [`Refused`] for want of one.
fn hold_unauthenticated(
    ctx: &Ctx,
    conn: &quinn::Connection,
    remote: SocketAddr,
) -> Result<Slot<IpAddr>, Refused> {
    match ctx
        .unauthenticated
        .try_acquire(HANDSHAKES.prefix_of(remote.ip()))
    {
        Ok(slot) => Ok(slot),
        Err(cap) => {
            let reason =
                format!("too many connections without a certificate ({cap}); try again later");
            budgeted_info!(ctx.refusals, %remote, "refusing control connection: {reason}");
            conn.close(close_code(CloseCode::Busy), reason.as_bytes());
            Err(Refused)
        }
    }
}

/// Serves each request stream on `conn` until the peer goes, or, for a
/// peer without a certificate, until its UNAUTHENTICATED_LIFETIME ends.
async fn serve_streams(ctx: Arc<Ctx>, conn: quinn::Connection, peer: Option<PeerIdentity>) {
    let lifetime = async {
        match peer {
            Some(_) => std::future::pending().await,
            None => tokio::time::sleep(UNAUTHENTICATED_LIFETIME).await,
        }
    };
    tokio::pin!(lifetime);
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(handle_stream(ctx.clone(), conn.clone(), peer.clone(), send, recv));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = &mut lifetime => {
                conn.close(
                    close_code(CloseCode::Busy),
                    b"connections without a certificate last at most 30 s; enroll in one request",
                );
                break;
            }
        }
    }
}

async fn handle_stream(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    peer: Option<PeerIdentity>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = if peer.is_some() {
        MAX_CONTROL_FRAME
    } else {
        MAX_UNAUTHENTICATED_FRAME
    };
    let remote = conn.remote_address();
    let req: Result<ControlRequest, ProtoError> = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame(&mut recv, max),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => {
            budgeted_info!(ctx.refusals, %remote, "no control request within {} s; resetting the stream", REQUEST_TIMEOUT.as_secs());
            let _ = send.reset(stream_code(StreamCode::Refused));
            let _ = recv.stop(stream_code(StreamCode::Refused));
            return;
        }
    };
    // One request per stream: whatever follows it is dropped unread, and
    // the peer is told to stop sending.
    let _ = recv.stop(stream_code(StreamCode::Refused));
    drop(recv);
    // Every request is checked against the state in force now, not only
    // at the handshake: a revoked identity's open connection stops working.
    if let Some(p) = &peer {
        if let Err(refusal) = check_current(&ctx.store.read(), p, unix_now()) {
            budgeted_info!(ctx.refusals, %remote, peer = %p, "refusing control request: {}", refusal.reason);
            deliver(&mut send, &ControlResponse::Error(refusal.error())).await;
            conn.close(close_code(refusal.close_code()), refusal.reason.as_bytes());
            return;
        }
    }
    let response = match req {
        Err(e) => {
            budgeted_info!(ctx.refusals, %remote, "bad control request: {e}");
            ControlResponse::Error(err(ControlErrorCode::BadRequest, e.to_string()))
        }
        Ok(req) => match route(req, peer.as_ref()) {
            Err(e) => ControlResponse::Error(e),
            Ok(route) => match serve(&ctx, remote.ip(), route, &mut send).await {
                Some(r) => r,
                // The route answered on the stream itself.
                None => return,
            },
        },
    };
    deliver(&mut send, &response).await;
}

/// Runs a routed request; `None` when it answered on `send` itself (a
/// router's sync session).
async fn serve(
    ctx: &Arc<Ctx>,
    from: IpAddr,
    route: Route,
    send: &mut quinn::SendStream,
) -> Option<ControlResponse> {
    let enrolled = |(cert_pem, ca_pem)| ControlResponse::Enrolled { cert_pem, ca_pem };
    Some(match route {
        Route::Enroll(e) => {
            let r = off_workers(ctx, move |c| enroll(c, from, e)).await;
            ctx.metrics.enrollment(result_label(&r));
            respond(r, enrolled)
        }
        Route::Admin { actor, request } => {
            info!(admin = %actor, request = ?request, "admin request");
            let r = off_workers(ctx, move |c| admin(c, &actor, *request)).await;
            ctx.metrics.admin(result_label(&r));
            respond(r, ControlResponse::Admin)
        }
        Route::RouterSync { router, advertise } => {
            router_sync(ctx, &router, advertise, send).await;
            return None;
        }
        Route::ListRouters { peer } => ControlResponse::Routers(handlers::routers::list(
            &ctx.store,
            &ctx.online,
            Some(&peer),
            unix_now(),
        )),
        Route::Renew { peer, csr_der } => {
            let r = off_workers(ctx, move |c| renew(c, &peer, &csr_der)).await;
            ctx.metrics.renewal(result_label(&r));
            respond(r, enrolled)
        }
        Route::ListControllers => {
            ControlResponse::Controllers(live_controllers(&ctx.store.read(), &ctx.name, unix_now()))
        }
        Route::RouterReport { router, report } => {
            let r = off_workers(ctx, move |c| router_report(c, &router, report)).await;
            respond(r, |()| ControlResponse::Ack)
        }
    })
}

/// Runs a request that may commit to the state (a database round trip,
/// up to the backend's timeouts; a std mutex serialises commits) on the
/// blocking pool, so QUIC endpoints, router sync sessions and reads keep
/// running on the runtime's workers meanwhile.
async fn off_workers<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .unwrap_or_else(|e| {
            Err(err(
                ControlErrorCode::Internal,
                format!("the request's task failed: {e}"),
            ))
        })
}

/// Writes one answer and waits until the peer has it, for at most
/// [`RESPONSE_TIMEOUT`]; a peer that gives no credit has the stream reset.
async fn deliver(send: &mut quinn::SendStream, response: &ControlResponse) {
    let delivered = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        write_frame(send, response, MAX_CONTROL_FRAME).await?;
        let _ = send.finish();
        let _ = send.stopped().await;
        Ok::<_, ProtoError>(())
    })
    .await;
    match delivered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("control response not delivered: {e}"),
        Err(_) => {
            debug!(
                "control response not taken within {} s; resetting the stream",
                RESPONSE_TIMEOUT.as_secs()
            );
            let _ = send.reset(stream_code(StreamCode::Refused));
        }
    }
}

fn respond<T>(
    r: Result<T, ControlError>,
    ok: impl FnOnce(T) -> ControlResponse,
) -> ControlResponse {
    match r {
        Ok(v) => ok(v),
        Err(e) => ControlResponse::Error(e),
    }
}

fn enroll(ctx: &Ctx, from: IpAddr, req: EnrollRequest) -> Result<(String, String), ControlError> {
    check_rate(
        &ctx.enroll_rate,
        &from,
        Instant::now(),
        &format!("enrollment attempts from {from}"),
    )?;
    let rejected = |m: String| err(ControlErrorCode::TokenRejected, m);
    let token = SignedToken::parse(&req.token).map_err(|e| rejected(e.to_string()))?;
    let claims = token
        .verify(&ctx.token_key, unix_now())
        .map_err(|e| rejected(e.to_string()))?
        .clone();
    if claims.ca_fingerprint != ctx.ca_fingerprint {
        return Err(rejected(
            "the token pins another CA; it was issued by another controller".into(),
        ));
    }
    // A used, unknown or voided token costs no signature: check it first
    // (and again, atomically, in the update that consumes it).
    check_token(&ctx.store.read(), &claims)?;
    let ttl = Duration::from_secs(ctx.config.cert_ttl_secs);
    let (cert_pem, der) = ctx
        .ca
        .sign_csr(&req.csr_der, claims.kind, &claims.identity, ttl)
        .map_err(|e| err(ControlErrorCode::BadRequest, e.to_string()))?;
    let fingerprint = darkport_proto::identity::fingerprint(&der);
    let now = unix_now();
    // Consumes the token in the state update that records the
    // certificate (`consume_token` says why).
    let what = audit(
        "enroll",
        format!(
            "enrolled {} {} ({fingerprint})",
            claims.kind, claims.identity
        ),
    );
    ctx.store.update(true, what, |s| {
        consume_token(s, &claims, &fingerprint, now, ttl)
    })?;
    info!(identity = %claims.identity, kind = %claims.kind, %fingerprint, "enrolled");
    Ok((cert_pem, ctx.ca.cert_pem.clone()))
}

/// Runs an admin request of `actor` at the current time.
fn admin(
    ctx: &Ctx,
    actor: &IdentityName,
    req: AdminRequest,
) -> Result<AdminResponse, ControlError> {
    // Tokens name every live controller: any of them redeems it.
    let controllers = live_controllers(&ctx.store.read(), &ctx.name, unix_now());
    let controllers = if controllers.is_empty() {
        ctx.config.advertise.clone()
    } else {
        controllers.join(",")
    };
    let env = Env {
        store: &ctx.store,
        online: &ctx.online,
        issuer: Issuer {
            key: &ctx.token_key,
            controller: &controllers,
            ca_fingerprint: &ctx.ca_fingerprint,
        },
    };
    let by = Caller {
        actor: actor.as_str(),
        now: unix_now(),
    };
    handlers::dispatch(&env, by, req)
}

fn renew(ctx: &Ctx, peer: &PeerIdentity, csr_der: &[u8]) -> Result<(String, String), ControlError> {
    check_rate(
        &ctx.renew_rate,
        &peer.name,
        Instant::now(),
        &format!("renewals of {peer}"),
    )?;
    let ttl = Duration::from_secs(ctx.config.cert_ttl_secs);
    let (cert_pem, der) = ctx
        .ca
        .sign_csr(csr_der, peer.kind, &peer.name, ttl)
        .map_err(|e| err(ControlErrorCode::BadRequest, e.to_string()))?;
    let fingerprint = darkport_proto::identity::fingerprint(&der);
    let now = unix_now();
    let what = audit(
        peer.name.as_str(),
        format!("renewed certificate of {peer} ({fingerprint})"),
    );
    ctx.store.update(true, what, |s| {
        renew_certificate(s, peer, &fingerprint, now, ttl)
    })?;
    info!(identity = %peer, %fingerprint, "renewed certificate");
    Ok((cert_pem, ctx.ca.cert_pem.clone()))
}

fn router_report(ctx: &Ctx, peer: &PeerIdentity, report: RouterReport) -> Result<(), ControlError> {
    if let Some(mut p) = ctx.online.get_mut(&peer.name) {
        p.record(&peer.name, &report);
    }
    // Presence is live in memory; the commit of last_seen is rate-limited.
    if ctx
        .report_persist
        .check(&peer.name, Instant::now())
        .is_err()
    {
        return Ok(());
    }
    let now = unix_now();
    ctx.store.update(false, None, |s| {
        if let Some(r) = s.routers.get_mut(&peer.name) {
            r.last_seen = now;
        }
        for name in report.clients.iter().chain(std::iter::once(&peer.name)) {
            if let Some(i) = s.identities.get_mut(name) {
                i.last_seen = Some(now);
            }
        }
        Ok::<_, ControlError>(())
    })
}

async fn router_sync(
    ctx: &Arc<Ctx>,
    peer: &PeerIdentity,
    advertise: String,
    send: &mut quinn::SendStream,
) {
    if let Err(reason) = check_advertise(&advertise) {
        budgeted_info!(ctx.refusals, router = %peer.name, "refusing router sync: {reason}");
        deliver(
            send,
            &ControlResponse::Error(err(ControlErrorCode::BadRequest, reason)),
        )
        .await;
        return;
    }
    if record_router(ctx, peer, &advertise).await.is_err() {
        return;
    }
    let session = go_online(ctx, peer);
    info!(router = %peer.name, %advertise, "router connected");
    send_snapshots(ctx, peer, send).await;
    ctx.online
        .remove_if(&peer.name, |_, p| p.session == session);
    ctx.metrics.set_routers_online(ctx.online.len());
    info!(router = %peer.name, "router disconnected");
}

/// Stores the router's advertise address, and that it was seen now.
async fn record_router(
    ctx: &Arc<Ctx>,
    peer: &PeerIdentity,
    advertise: &str,
) -> Result<(), ControlError> {
    let (name, advertise) = (peer.name.clone(), advertise.to_string());
    off_workers(ctx, move |c| {
        c.store.update(false, None, |s| {
            s.routers.insert(
                name.clone(),
                RouterRecord {
                    advertise: advertise.clone(),
                    last_seen: unix_now(),
                },
            );
            Ok::<_, ControlError>(())
        })
    })
    .await
}

/// Marks the router online with a new session, which only this sync
/// session may end (a newer one replaces it).
fn go_online(ctx: &Ctx, peer: &PeerIdentity) -> u64 {
    let session = rand_session();
    ctx.online.insert(
        peer.name.clone(),
        Presence {
            session,
            ..Presence::default()
        },
    );
    ctx.metrics.set_routers_online(ctx.online.len());
    session
}

/// Sends the router its snapshot, then a new one at each change, until
/// it goes, stops taking them, or is no longer a current identity.
async fn send_snapshots(ctx: &Ctx, peer: &PeerIdentity, send: &mut quinn::SendStream) {
    let mut rx = ctx.store.subscribe();
    loop {
        let snapshot = rx.borrow_and_update().clone();
        // A router deleted, revoked or re-enrolled meanwhile loses its session.
        // It is told why, so that a revoked router stops serving.
        if let Err(refusal) = check_current(&ctx.store.read(), peer, unix_now()) {
            info!(router = %peer.name, "ending router session: {}", refusal.reason);
            deliver(send, &ControlResponse::Error(refusal.error())).await;
            break;
        }
        // Shared keys only for the services this router may serve.
        let frame =
            ControlResponse::Snapshot(darkport_proto::policy::for_router(&snapshot, &peer.name));
        match tokio::time::timeout(
            SNAPSHOT_WRITE_TIMEOUT,
            write_frame(send, &frame, MAX_CONTROL_FRAME),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(router = %peer.name, "snapshot not delivered: {e}");
                break;
            }
            Err(_) => {
                info!(router = %peer.name, "snapshot not taken within {} s; ending the session", SNAPSHOT_WRITE_TIMEOUT.as_secs());
                let _ = send.reset(stream_code(StreamCode::Refused));
                break;
            }
        }
        debug!(router = %peer.name, version = snapshot.version, "snapshot sent");
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = send.stopped() => break,
        }
    }
}

fn rand_session() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ControllerRecord, IdentityRecord};

    fn n(s: &str) -> IdentityName {
        IdentityName::new(s).expect("name")
    }

    /// The answering controller first, then the others heard from
    /// recently; one silent longer than CONTROLLER_LIVE is left out.
    #[test]
    fn live_controllers_name_me_first_and_drop_the_silent() {
        let live = CONTROLLER_LIVE.as_secs();
        let mut state = State::default();
        for (name, addr, seen) in [
            ("a", "a:1", 1000),
            ("b", "b:1", 1000 - live),
            ("c", "c:1", 1000 - live - 1),
            ("me", "me:1", 10),
        ] {
            state.controllers.insert(
                n(name),
                ControllerRecord {
                    advertise: addr.into(),
                    last_seen: seen,
                },
            );
        }
        assert_eq!(
            live_controllers(&state, &n("me"), 1000),
            ["me:1", "a:1", "b:1"]
        );
        assert_eq!(live_controllers(&state, &n("x"), 1000), ["a:1", "b:1"]);
    }

    #[test]
    fn dotted_client_names_are_named_at_start_when_a_policy_uses_the_identity_placeholder() {
        use darkport_proto::policy::{PolicyEntry, Selector};
        let mut state = State::default();
        for (name, kind) in [
            ("web", Kind::Client),
            ("web.prod", Kind::Client),
            ("router.eu", Kind::Router),
        ] {
            state.identities.insert(
                n(name),
                IdentityRecord {
                    name: n(name),
                    kind,
                    roles: vec![],
                    certificates: vec![],
                    created_at: 0,
                    revoked_at: None,
                    last_seen: None,
                },
            );
        }
        let policy = |tags: &[&str]| PolicyEntry {
            name: n("p"),
            services: vec![Selector::All],
            identities: vec![Selector::All],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kind: Default::default(),
        };
        state.policies.insert(n("p"), policy(&["app.web.**"]));
        assert!(
            untaggable_identities(&state).is_empty(),
            "no ${{identity}} used"
        );
        state
            .policies
            .insert(n("p"), policy(&["app.${identity}.**"]));
        let lines = untaggable_identities(&state);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("web.prod") && lines[0].contains("web-prod"));
    }
}
