//! Accepting clients and handling dial streams.

use std::future::Future;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::{CloseCode, StreamCode};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::{DialRequest, DialResponse, DialStatus};
use darkport_proto::policy::{authorize, check_peer, Denied, ServiceProtocol};
use darkport_proto::{PeerIdentity, ALPN_DATA, ALPN_DATA_TCP, PROTOCOL_VERSION};
use darkport_transport::identity::Identity;
use darkport_transport::mux::{Conn, RecvHalf, SendHalf};
use darkport_transport::shards::Shards;
use darkport_transport::splice::{splice_tcp_metered, Ending};
use darkport_transport::tls::{self, ClientAuth};
use darkport_transport::{close_code, unix_now};

use darkport_transport::admission::{HandshakeAbort, HandshakeGate, Ticket};
use darkport_transport::budgeted_info_for;
use darkport_transport::limits::{report_suppressed, CapExceeded, Caps, Slot, SourceLogBudget};

use crate::metrics::{RouterMetrics, UNKNOWN_SERVICE};
use crate::{Clients, PolicyClock, RevokedRx, RouterError, RouterLimits, SnapshotRx};

/// Time a client has to send its dial request on a new stream.
pub const DIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to connect to the private service.
pub const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for a dial answer to be written (a client that gives no
/// stream credit has its stream reset then).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refusal log lines per interval before they are summarised.
const REFUSAL_LINES: u32 = 20;
const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);
/// Of those, lines about one client identity or source address: one noisy
/// sender cannot crowd out the refusals of others.
const REFUSAL_LINES_PER_SOURCE: u32 = 5;

/// What bounds the router: per-identity caps, the policy age limit, the
/// router's own revocation, and the budget of refusal log lines.
#[derive(Debug)]
pub struct Guard {
    /// Changeable while running (a reload).
    limits: std::sync::Mutex<RouterLimits>,
    /// How long streams may finish after shutdown begins.
    grace_period: Duration,
    /// Set at shutdown: new dials are refused with `Draining`.
    draining: AtomicBool,
    /// Connections per client identity.
    conns: Arc<Caps<IdentityName>>,
    /// Concurrent streams per client identity.
    streams: Arc<Caps<IdentityName>>,
    /// QUIC handshakes in progress, by source prefix.
    quic_handshakes: Arc<HandshakeGate>,
    /// TLS over TCP handshakes in progress, by source prefix.
    tcp_handshakes: Arc<HandshakeGate>,
    policy: Arc<PolicyClock>,
    revoked: RevokedRx,
    refusals: Arc<SourceLogBudget>,
    metrics: Arc<RouterMetrics>,
}

impl Guard {
    /// A guard enforcing `limits`.
    pub fn new(
        limits: RouterLimits,
        grace_period: Duration,
        policy: Arc<PolicyClock>,
        revoked: RevokedRx,
        metrics: Arc<RouterMetrics>,
    ) -> Arc<Guard> {
        Arc::new(Guard {
            limits: std::sync::Mutex::new(limits),
            grace_period,
            draining: AtomicBool::new(false),
            conns: Caps::new(
                limits.max_connections_per_identity,
                limits.max_connections,
                "identity",
            ),
            // The global bound on streams is per connection (quinn's
            // stream limit) times the connection cap.
            streams: Caps::new(limits.max_streams_per_identity, usize::MAX, "identity"),
            quic_handshakes: HandshakeGate::new(limits.handshakes),
            tcp_handshakes: HandshakeGate::new(limits.handshakes),
            policy,
            revoked,
            refusals: Arc::new(SourceLogBudget::new(
                REFUSAL_LINES,
                REFUSAL_LINES_PER_SOURCE,
                REFUSAL_INTERVAL,
            )),
            metrics,
        })
    }

    /// Applies new limits: new connections and streams see them; those
    /// already open stay.
    pub fn set_limits(&self, new: RouterLimits) {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if *limits != new {
            info!(
                max_connections_per_identity = new.max_connections_per_identity,
                max_streams_per_identity = new.max_streams_per_identity,
                max_policy_age_secs = new.max_policy_age.map(|d| d.as_secs()),
                "limits reloaded"
            );
        }
        self.conns.set_per_key(new.max_connections_per_identity);
        self.streams.set_per_key(new.max_streams_per_identity);
        self.quic_handshakes.set_limits(new.handshakes);
        self.tcp_handshakes.set_limits(new.handshakes);
        *limits = new;
    }

    fn max_policy_age(&self) -> Option<Duration> {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .max_policy_age
    }

    fn revoked(&self) -> Option<String> {
        self.revoked.borrow().clone()
    }
}

/// Whether a policy of age `age` may still authorize new dials under
/// `max`; the refusal says how old it is and why.
pub fn check_policy_age(age: Duration, max: Option<Duration>) -> Result<(), String> {
    match max {
        Some(max) if age > max => Err(format!(
            "this router has not heard from its controller for {} s (it serves new dials with a policy at most {} s old: --max-policy-age); existing streams go on; restore the router's path to the controller",
            age.as_secs(),
            max.as_secs()
        )),
        _ => Ok(()),
    }
}

/// Accepts clients until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut identity: watch::Receiver<Arc<Identity>>,
    socket: UdpSocket,
    tcp: Option<std::net::TcpListener>,
    reset_key: Option<Vec<u8>>,
    snapshots: SnapshotRx,
    clients: Clients,
    guard: Arc<Guard>,
    shards: &Shards,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let id = identity.borrow_and_update().clone();
    let router = id.name.clone();
    let config = tls::server_config(&id, ClientAuth::Required, ALPN_DATA)?;
    let endpoint = {
        // The endpoint's driver runs on the first connection thread.
        let _shard = shards.first().enter();
        darkport_transport::endpoint::server_with_reset_key(socket, config, reset_key.as_deref())?
    };
    let tcp = match tcp {
        Some(l) => {
            l.set_nonblocking(true)?;
            let _shard = shards.first().enter();
            Some(tokio::net::TcpListener::from_std(l)?)
        }
        None => None,
    };
    let tcp_config = |id: &Identity| {
        tls::rustls_server_config(id, ClientAuth::Required, ALPN_DATA_TCP)
            .map(|c| darkport_transport::mux::TlsAcceptor::from(Arc::new(c)))
    };
    let mut acceptor = tcp_config(&id)?;
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    info!(addr = %endpoint.local_addr()?, tcp = ?tcp_addr, router = %router, threads = shards.len(), "router listening");
    tokio::pin!(shutdown);
    let mut conns = JoinSet::new();
    conns.spawn(report_suppressed(
        guard.refusals.global().clone(),
        "refusals",
    ));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if guard.quic_handshakes.wants_retry(incoming.remote_address_validated()) && incoming.may_retry() {
                    // Stateless: a spoofed source never gets further.
                    let _ = incoming.retry();
                    continue;
                }
                // Admitted here, in arrival order, so the gate decides
                // which handshake makes room before any task runs.
                let ticket = guard.quic_handshakes.enter(incoming.remote_address().ip());
                // The handshake completes on the shard, so quinn's driver
                // for this connection runs there too, beside its streams.
                shards.spawn(&mut conns, handle_connection(incoming, ticket, router.clone(), snapshots.clone(), clients.clone(), guard.clone()));
            }
            accepted = accept_tcp(tcp.as_ref()) => {
                let Ok((stream, remote)) = accepted else { continue };
                let mut ticket = guard.tcp_handshakes.enter(remote.ip());
                let (acceptor, router, snapshots, clients, guard) = (acceptor.clone(), router.clone(), snapshots.clone(), clients.clone(), guard.clone());
                shards.spawn(&mut conns, async move {
                    let conn = tokio::select! {
                        c = darkport_transport::mux::accept_tcp(stream, acceptor) => c,
                        () = ticket.evicted() => {
                            budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, "dropped a TCP handshake in progress: {}", HandshakeAbort::Evicted);
                            return;
                        }
                    };
                    // Authenticated (or failed): out of the pending pool.
                    drop(ticket);
                    match conn {
                        Ok(conn) => serve_connection(conn, router, snapshots, clients, guard).await,
                        Err(e) => budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, "client handshake over TCP failed: {e}"),
                    }
                });
            }
            Ok(()) = identity.changed() => {
                // A renewed certificate: new handshakes present it.
                let id = identity.borrow_and_update().clone();
                match tls::server_config(&id, ClientAuth::Required, ALPN_DATA) {
                    Ok(c) => {
                        endpoint.set_server_config(Some(c));
                        info!("serving with the renewed certificate");
                    }
                    Err(e) => warn!("cannot use the renewed certificate: {e}"),
                }
                match tcp_config(&id) {
                    Ok(a) => acceptor = a,
                    Err(e) => warn!("cannot use the renewed certificate over TCP: {e}"),
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drain(&endpoint, tcp.as_ref(), &guard, &mut conns).await;
    endpoint.close(close_code(CloseCode::Done), b"router shutting down");
    conns.shutdown().await;
    Ok(())
}

/// Stops taking connections and dials, and lets the streams in flight
/// finish for at most the grace period.
/// The next TCP connection, if there is a TCP listener (else never).
async fn accept_tcp(
    tcp: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match tcp {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn drain(
    endpoint: &quinn::Endpoint,
    tcp: Option<&tokio::net::TcpListener>,
    guard: &Guard,
    conns: &mut JoinSet<()>,
) {
    guard.draining.store(true, Ordering::Release);
    guard.metrics.set_draining();
    // New dials on open connections are answered `Draining`, and new
    // handshakes are refused (below), so clients move to another router
    // at once.
    let in_flight = guard.streams.total();
    if in_flight == 0 {
        return;
    }
    info!(
        streams = in_flight,
        grace_secs = guard.grace_period.as_secs(),
        "draining: refusing new dials, letting the streams in flight finish"
    );
    let deadline = tokio::time::Instant::now() + guard.grace_period;
    while guard.streams.total() > 0 {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                warn!(streams = guard.streams.total(), "grace period over; resetting the streams still open");
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            Some(incoming) = endpoint.accept() => incoming.refuse(),
            // Closed at once: the client moves to another router.
            Ok(_) = accept_tcp(tcp) => {}
        }
    }
    info!("drained: every stream finished");
}

/// Whether `peer` may still use this router under the current snapshot;
/// with no snapshot yet, connections are let in and dials answer NotReady.
fn peer_allowed(snapshots: &SnapshotRx, peer: &PeerIdentity) -> Result<(), Denied> {
    match snapshots.borrow().as_ref() {
        Some(s) => check_peer(s, peer, unix_now()).map(|_| ()),
        None => Ok(()),
    }
}

/// How long a connecting peer that the current snapshot does not know may
/// wait for a newer snapshot: a client that just enrolled or renewed its
/// certificate can be a few milliseconds ahead of the router's policy.
pub const ADMISSION_GRACE: Duration = Duration::from_secs(2);

async fn admit(snapshots: &mut SnapshotRx, peer: &PeerIdentity) -> Result<(), Denied> {
    let deadline = tokio::time::Instant::now() + ADMISSION_GRACE;
    snapshots.borrow_and_update();
    loop {
        let denied = match peer_allowed(snapshots, peer) {
            Ok(()) => return Ok(()),
            Err(d) => d,
        };
        match tokio::time::timeout_at(deadline, snapshots.changed()).await {
            Ok(Ok(())) => {
                snapshots.borrow_and_update();
            }
            _ => return Err(denied),
        }
    }
}

async fn handle_connection(
    incoming: quinn::Incoming,
    mut ticket: Ticket,
    router: IdentityName,
    snapshots: SnapshotRx,
    clients: Clients,
    guard: Arc<Guard>,
) {
    let remote = incoming.remote_address();
    let conn = tokio::select! {
        c = darkport_transport::endpoint::accept(incoming, "client") => c,
        () = ticket.evicted() => {
            // Dropping the handshake closes it and frees its state.
            budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, "dropped a QUIC handshake in progress: {}", HandshakeAbort::Evicted);
            None
        }
    };
    // Authenticated (or failed): out of the pending pool.
    drop(ticket);
    let Some(conn) = conn else {
        return;
    };
    serve_connection(conn.into(), router, snapshots, clients, guard).await
}

/// Admits a client connection (either transport) and serves its streams.
async fn serve_connection(
    conn: Conn,
    router: IdentityName,
    mut snapshots: SnapshotRx,
    clients: Clients,
    guard: Arc<Guard>,
) {
    let remote = conn.remote_address();
    let transport = conn.transport();
    if let Some(reason) = guard.revoked() {
        conn.close(
            CloseCode::RouterRevoked,
            format!("this router was revoked: {reason}").as_bytes(),
        );
        return;
    }
    let peer = match conn.peer_identity() {
        Ok(p) => p,
        Err(e) => {
            info!(%remote, "refusing client: {e}");
            conn.close(CloseCode::Forbidden, e.to_string().as_bytes());
            return;
        }
    };
    if peer.kind != Kind::Client {
        let reason = format!(
            "{} identities cannot dial services; use a client identity",
            peer.kind
        );
        budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, %peer, "refusing connection: {reason}");
        conn.close(CloseCode::Forbidden, reason.as_bytes());
        return;
    }
    if let Err(d) = admit(&mut snapshots, &peer).await {
        budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, %peer, "refusing connection: {d}");
        conn.close(CloseCode::Revoked, d.to_string().as_bytes());
        return;
    }
    let _slot = match guard.conns.try_acquire(peer.name.clone()) {
        Ok(slot) => slot,
        Err(cap) => {
            let reason = format!(
                "too many connections to this router ({cap}); close unused clients of identity {}",
                peer.name
            );
            budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, %peer, "refusing connection: {reason}");
            conn.close(CloseCode::Busy, reason.as_bytes());
            return;
        }
    };
    // Admitted: from the few streams a peer gets during its handshake (a
    // pending handshake's stream state is allocated up front) to the full
    // number.
    if let Some(q) = conn.as_quic() {
        q.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(
            darkport_transport::endpoint::MAX_STREAMS,
        ));
    }
    let mut revoked = guard.revoked.clone();
    let _open = guard.metrics.connection_open(peer.kind);
    info!(%remote, %peer, %transport, "client connected");
    clients.insert(conn.stable_id(), peer.name.clone());
    let mut streams = JoinSet::new();
    // `admit` checked the snapshot it last marked seen; a newer one wakes
    // the loop below.
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    // The slot is taken here, before the stream's task, so
                    // a burst of streams cannot race past the cap.
                    match guard.streams.try_acquire(peer.name.clone()) {
                        Ok(slot) => {
                            streams.spawn(handle_stream(peer.clone(), router.clone(), snapshots.clone(), guard.clone(), slot, send, recv));
                        }
                        // Over the cap: refused at once, without waiting
                        // for (or reading) its dial request.
                        Err(cap) => {
                            streams.spawn(over_cap(peer.clone(), guard.clone(), cap, send, recv));
                        }
                    }
                }
                Err(e) => {
                    info!(%remote, %peer, "client disconnected: {e}");
                    break;
                }
            },
            Ok(()) = snapshots.changed() => {
                snapshots.borrow_and_update();
                if let Err(d) = peer_allowed(&snapshots, &peer) {
                    info!(%remote, %peer, "closing connection: {d}");
                    conn.close(CloseCode::Revoked, d.to_string().as_bytes());
                    break;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            Ok(()) = revoked.changed() => {
                if let Some(reason) = revoked.borrow_and_update().clone() {
                    conn.close(
                        CloseCode::RouterRevoked,
                        format!("this router was revoked: {reason}").as_bytes(),
                    );
                    break;
                }
            }
        }
    }
    clients.remove(conn.stable_id());
    // Streams of a closed connection end by themselves (their reads fail).
    while streams.join_next().await.is_some() {}
}

/// An authorized dial: where to, and how to speak with the service.
struct Dialed {
    address: String,
    /// `Some` for a fluent-forward service.
    fluent: Option<crate::fluent::Plan>,
}

/// The decision for one dial request, before any network I/O to the
/// service: pure apart from reading the snapshot.
fn decide(
    router: &IdentityName,
    peer: &PeerIdentity,
    snapshots: &SnapshotRx,
    req: &DialRequest,
) -> Result<Dialed, DialResponse> {
    let refuse = |status, message: String| DialResponse { status, message };
    if !darkport_proto::msg::dial_version_supported(req.version) {
        return Err(refuse(
            DialStatus::BadRequest,
            format!(
                "protocol version {} is not supported (router speaks {PROTOCOL_VERSION})",
                req.version
            ),
        ));
    }
    if darkport_proto::IdentityName::new(req.service.as_str()).is_err() {
        return Err(refuse(
            DialStatus::BadRequest,
            "the service name is not valid (1 to 64 characters from a-z, A-Z, 0-9, '.', '_', '-')"
                .into(),
        ));
    }
    let snapshot = snapshots.borrow().clone();
    let Some(snapshot) = snapshot else {
        return Err(refuse(
            DialStatus::NotReady,
            "the router has not received policy from the controller yet; try again shortly".into(),
        ));
    };
    match authorize(&snapshot, router, peer, &req.service, unix_now()) {
        Ok(permit) => {
            let fluent = match &permit.service.protocol {
                ServiceProtocol::Tcp => None,
                ServiceProtocol::FluentForward(settings) => Some(
                    crate::fluent::Plan::new(
                        &req.service,
                        settings,
                        &peer.name,
                        &permit.identity.roles,
                        router,
                        permit.tags.clone(),
                    )
                    .map_err(|e| refuse(DialStatus::NotAuthorized, e.to_string()))?,
                ),
            };
            Ok(Dialed {
                address: permit.service.address.clone(),
                fluent,
            })
        }
        Err(d @ Denied::UnknownService(_)) => {
            Err(refuse(DialStatus::UnknownService, d.to_string()))
        }
        Err(d @ Denied::RouterNotAllowed { .. }) => {
            Err(refuse(DialStatus::WrongRouter, d.to_string()))
        }
        Err(d) => Err(refuse(DialStatus::NotAuthorized, d.to_string())),
    }
}

/// Writes a dial answer within [`RESPONSE_TIMEOUT`]; resets the stream
/// if the client gives no credit for it.
async fn respond(send: &mut SendHalf, resp: &DialResponse) -> bool {
    match tokio::time::timeout(RESPONSE_TIMEOUT, write_frame(send, resp, MAX_DIAL_FRAME)).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            send.reset(StreamCode::Refused);
            false
        }
    }
}

/// Answers a dial with a refusal, and stops reading the stream.
async fn refuse(send: &mut SendHalf, recv: &mut RecvHalf, status: DialStatus, message: String) {
    let _ = respond(send, &DialResponse { status, message }).await;
    send.finish();
    recv.stop(StreamCode::Refused);
}

/// Completes when a new snapshot no longer allows this dial; says why.
async fn revoked(
    router: IdentityName,
    peer: PeerIdentity,
    service: String,
    mut snapshots: SnapshotRx,
) -> String {
    loop {
        // Check the snapshot in force now first: one may have arrived
        // while the service was being dialed.
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(s) = snapshot {
            if let Err(d) = authorize(&s, &router, &peer, &service, unix_now()) {
                return d.to_string();
            }
        }
        if snapshots.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Time a refusal over the stream cap has to be written: the stream holds
/// no slot, so it must not linger.
const OVER_CAP_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream over its identity's cap: answered `LimitReached` at once, its
/// dial request never read, and dropped within [`OVER_CAP_TIMEOUT`].
async fn over_cap(
    peer: PeerIdentity,
    guard: Arc<Guard>,
    cap: CapExceeded,
    mut send: SendHalf,
    mut recv: RecvHalf,
) {
    let message = format!(
        "identity {} has too many streams open at this router ({cap}); close some, or raise --max-streams-per-identity",
        peer.name
    );
    budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, "refused a stream: {message}");
    guard
        .metrics
        .dial(UNKNOWN_SERVICE.into(), DialStatus::LimitReached);
    recv.stop(StreamCode::Refused);
    let resp = DialResponse {
        status: DialStatus::LimitReached,
        message,
    };
    match tokio::time::timeout(
        OVER_CAP_TIMEOUT,
        write_frame(&mut send, &resp, MAX_DIAL_FRAME),
    )
    .await
    {
        Ok(Ok(())) => send.finish(),
        _ => send.reset(StreamCode::Refused),
    }
}

async fn handle_stream(
    peer: PeerIdentity,
    router: IdentityName,
    snapshots: SnapshotRx,
    guard: Arc<Guard>,
    slot: Slot<IdentityName>,
    mut send: SendHalf,
    mut recv: RecvHalf,
) {
    let started = tokio::time::Instant::now();
    let req: DialRequest = match tokio::time::timeout(
        DIAL_REQUEST_TIMEOUT,
        read_frame(&mut recv, MAX_DIAL_FRAME),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, "refused dial: bad request: {e}");
            guard
                .metrics
                .dial(UNKNOWN_SERVICE.into(), DialStatus::BadRequest);
            refuse(&mut send, &mut recv, DialStatus::BadRequest, e.to_string()).await;
            return;
        }
        Err(_) => {
            budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, "dial request timed out");
            send.reset(StreamCode::Refused);
            return;
        }
    };
    let label = RouterMetrics::service_label(&snapshots, &req.service);
    let _slot = slot;
    if guard.draining.load(Ordering::Acquire) {
        let message = format!("router {router} is shutting down; dial through another router");
        guard.metrics.dial(label, DialStatus::Draining);
        refuse(&mut send, &mut recv, DialStatus::Draining, message).await;
        return;
    }
    let decision = check_policy_age(guard.policy.age(unix_now()), guard.max_policy_age())
        .map_err(|message| DialResponse {
            status: DialStatus::NotReady,
            message,
        })
        .and_then(|()| decide(&router, &peer, &snapshots, &req));
    let Dialed { address, fluent } = match decision {
        Ok(d) => d,
        Err(resp) => {
            budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, service = ?req.service, status = ?resp.status, "refused dial: {}", resp.message);
            guard.metrics.dial(label, resp.status);
            refuse(&mut send, &mut recv, resp.status, resp.message).await;
            return;
        }
    };
    let tcp =
        match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, TcpStream::connect(&address)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                guard.metrics.dial(label, DialStatus::ServiceUnreachable);
                return unreachable(&peer, &req, &address, &e.to_string(), send, recv).await;
            }
            Err(_) => {
                guard.metrics.dial(label, DialStatus::ServiceUnreachable);
                let why = format!("no answer within {} s", SERVICE_CONNECT_TIMEOUT.as_secs());
                return unreachable(&peer, &req, &address, &why, send, recv).await;
            }
        };
    // If the router dies from here on, the service sees a reset.
    darkport_transport::splice::abort_on_drop(&tcp);
    let mut tcp = tcp;
    let leftover = match &fluent {
        Some(plan) => match crate::fluent::handshake(&mut tcp, plan, &router).await {
            Ok(rest) => rest,
            Err(why) => {
                guard.metrics.dial(label, DialStatus::ServiceUnreachable);
                darkport_transport::splice::reset_tcp(tcp);
                let why = format!("Fluentd handshake failed: {}", why.advice(&req.service));
                return unreachable(&peer, &req, &address, &why, send, recv).await;
            }
        },
        None => Vec::new(),
    };
    let ok = DialResponse {
        status: DialStatus::Ok,
        message: String::new(),
    };
    if !respond(&mut send, &ok).await {
        debug!(%peer, service = ?req.service, "client went away before the dial completed");
        darkport_transport::splice::reset_tcp(tcp);
        return;
    }
    debug!(%peer, service = ?req.service, %address, "dial accepted");
    guard.metrics.dial_ok(&label, started.elapsed());
    let _active = guard.metrics.stream_open();
    let (to_service, to_client) = guard.metrics.byte_counters(&label);
    // The splice's local side is the service: what it sends goes to the
    // client.
    let meter = darkport_transport::splice::Meter {
        sent: &move |n| {
            to_client.inc_by(n);
        },
        received: &move |n| {
            to_service.inc_by(n);
        },
    };
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
    let watch_policy = {
        let (router, peer, service) = (router.clone(), peer.clone(), req.service.clone());
        async move {
            let reason = revoked(router, peer, service, snapshots).await;
            let _ = cut_tx.send(reason);
        }
    };
    if let Some(why) = fluent
        .as_ref()
        .and_then(|p| p.unsubstituted_warning(&peer.name))
    {
        budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, service = %req.service, "{why}");
    }
    let Some(plan) = fluent else {
        let stats = splice_tcp_metered(tcp, send, recv, watch_policy, &meter).await;
        let (ended, reason) = match stats.ending {
            Ending::Clean => ("clean", String::new()),
            Ending::LocalReset => ("service_reset", String::new()),
            Ending::RemoteReset => ("client_reset", String::new()),
            Ending::Cancelled => ("cut", cut_rx.await.unwrap_or_default()),
        };
        // The access line: one per stream that reached its service.
        info!(
            identity = %peer.name,
            service = %req.service,
            %router,
            bytes_to_service = stats.received,
            bytes_to_client = stats.sent,
            duration_ms = started.elapsed().as_millis() as u64,
            ended,
            reason,
            "stream"
        );
        return;
    };
    let on_denial = |d: &darkport_fluent::Denial| {
        guard.metrics.fluent_denied(&label, d.records, d.reason);
        budgeted_info_for!(
            guard.refusals,
            peer.name.as_str(),
            %peer,
            service = %req.service,
            tag = ?d.tag,
            records = d.records,
            acked = d.chunked,
            reason = d.reason.as_str(),
            "dropped a Fluentd message from {} with tag {:?}: {}",
            peer.name,
            d.tag,
            d.reason
        );
    };
    let on_forward = |records, overwritten| {
        guard.metrics.fluent_records(&label, records, overwritten);
        if overwritten > 0 {
            // As it happens, not at the end of a stream that may last days.
            budgeted_info_for!(
                guard.refusals,
                peer.name.as_str(),
                %peer,
                service = %req.service,
                keys = overwritten,
                "records carried their own stamp keys (a forged sender?); overwritten with the verified identity"
            );
        }
    };
    let hooks = crate::fluent::Hooks {
        on_denial: &on_denial,
        on_forward: &on_forward,
    };
    let leftovers = crate::fluent::Leftovers {
        from_service: leftover,
        from_client: match crate::fluent::app_handshake(&mut send, &mut recv, &plan, &router).await
        {
            Ok(first) => first,
            Err(why) => {
                guard.metrics.fluent_app_handshake_failed(&label);
                darkport_transport::splice::reset_tcp(tcp);
                // The PONG that says why goes out before the end: a FIN,
                // not a reset, which would drop it.
                send.finish();
                recv.stop(StreamCode::Rejected);
                let _ = tokio::time::timeout(RESPONSE_TIMEOUT, send.stopped()).await;
                budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, service = %req.service, "refused an app: its <security> handshake failed: {why}");
                info!(
                    identity = %peer.name,
                    service = %req.service,
                    %router,
                    ended = "rejected",
                    reason = %why,
                    "stream"
                );
                return;
            }
        },
    };
    let stats = crate::fluent::splice(
        tcp,
        send,
        recv,
        leftovers,
        plan,
        watch_policy,
        &meter,
        &hooks,
    )
    .await;
    use crate::fluent::FluentEnding;
    if let FluentEnding::Rejected(crate::fluent::Rejection::Invalid(e)) = &stats.ending {
        guard.metrics.fluent_refused_stream(&label, e.as_str());
    }
    let (ended, reason) = match stats.ending {
        FluentEnding::Clean => ("clean", String::new()),
        FluentEnding::ServiceReset => ("service_reset", String::new()),
        FluentEnding::ClientReset => ("client_reset", String::new()),
        FluentEnding::Cut => ("cut", cut_rx.await.unwrap_or_default()),
        FluentEnding::Rejected(why) => ("rejected", why.to_string()),
    };
    info!(
        identity = %peer.name,
        service = %req.service,
        %router,
        bytes_to_service = stats.from_client,
        bytes_to_client = stats.to_client,
        records = stats.counts.records,
        denied_records = stats.counts.denied_records,
        overwritten_keys = stats.counts.overwritten,
        duration_ms = started.elapsed().as_millis() as u64,
        ended,
        reason,
        "stream"
    );
}

async fn unreachable(
    peer: &PeerIdentity,
    req: &DialRequest,
    address: &str,
    why: &str,
    mut send: SendHalf,
    mut recv: RecvHalf,
) {
    let message = format!("cannot reach service {} at {address}: {why}", req.service);
    warn!(%peer, "refused dial: {message}");
    refuse(
        &mut send,
        &mut recv,
        DialStatus::ServiceUnreachable,
        message,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_age_limit() {
        let hour = Duration::from_secs(3600);
        assert!(check_policy_age(Duration::ZERO, Some(hour)).is_ok());
        assert!(check_policy_age(hour, Some(hour)).is_ok());
        let e = check_policy_age(hour + Duration::from_secs(1), Some(hour))
            .expect_err("older than the limit");
        assert!(e.contains("3601 s"), "{e}");
        assert!(e.contains("--max-policy-age"), "{e}");
        assert!(check_policy_age(Duration::from_secs(u64::MAX), None).is_ok());
    }

    #[test]
    fn policy_clock_counts_only_while_cut_off() {
        let clock = PolicyClock::default();
        clock.confirm(1_000);
        assert_eq!(clock.age(1_010), Duration::from_secs(10));
        clock.set_live(true, 1_010);
        assert_eq!(
            clock.age(5_000),
            Duration::ZERO,
            "a live session is current"
        );
        clock.set_live(false, 5_000);
        assert_eq!(clock.age(5_030), Duration::from_secs(30));
        // Confirmations never move the clock back.
        clock.confirm(10);
        assert_eq!(clock.age(5_030), Duration::from_secs(30));
    }
}
