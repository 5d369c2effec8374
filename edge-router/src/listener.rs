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
use darkport_proto::msg::{
    DialRequest, DialResponse, DialStatus, Incoming, HOST_STREAM, OFFER_STREAM,
};
use darkport_proto::policy::{check_peer, Denied};
use darkport_proto::{PeerIdentity, ALPN_DATA, ALPN_DATA_TCP};
use darkport_transport::identity::Identity;
use darkport_transport::mux::{Conn, RecvHalf, SendHalf, TlsAcceptor};
use darkport_transport::shards::Shards;
use darkport_transport::splice::{splice_streams, splice_tcp_metered, Ending, Meter};
use darkport_transport::tls::{self, ClientAuth};
use darkport_transport::{close_code, unix_now};

use darkport_transport::admission::{HandshakeAbort, HandshakeGate, Ticket};
use darkport_transport::budgeted_info_for;
use darkport_transport::limits::{report_suppressed, CapExceeded, Caps, Slot, SourceLogBudget};

use crate::admission::{self, admit_dial, check_still_allowed, Dialed, RouterView};
use crate::fluent::FluentEnding;
use crate::hosting::{self, HostedConn};
use crate::metrics::{RouterMetrics, UNKNOWN_SERVICE};
use crate::service::ServiceConn;
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
                max_streams_per_connection = new.max_streams_per_connection,
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

    /// Streams one QUIC client connection may have open at once:
    /// `max_streams_per_connection`, within the identity's stream cap
    /// (no connection can usefully pass it) and
    /// [`MAX_STREAMS`](darkport_transport::endpoint::MAX_STREAMS). See
    /// [`crate::MAX_STREAMS_PER_CONNECTION`] for why it is small.
    fn streams_per_connection(&self) -> u32 {
        let limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let cap = limits
            .max_streams_per_connection
            .min(limits.max_streams_per_identity);
        u32::try_from(cap)
            .unwrap_or(u32::MAX)
            .min(darkport_transport::endpoint::MAX_STREAMS)
    }

    fn max_policy_age(&self) -> Option<Duration> {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .max_policy_age
    }

    /// What [`admit_dial`] needs to know of this router, for a stream of
    /// `peer` (over its stream cap if `over_cap`).
    fn view<'a>(
        &'a self,
        router: &'a IdentityName,
        peer: &'a PeerIdentity,
        over_cap: Option<CapExceeded>,
    ) -> RouterView<'a> {
        RouterView {
            router,
            peer,
            over_cap,
            draining: self.draining.load(Ordering::Acquire),
            policy: &self.policy,
            max_policy_age: self.max_policy_age(),
        }
    }

    fn revoked(&self) -> Option<String> {
        self.revoked.borrow().clone()
    }
}

pub use crate::admission::check_policy_age;

/// Accepts clients until `shutdown`.
///
/// The steps: bind (`Listening::bind`); accept QUIC
/// (`spawn_quic_handshake`) and TLS over TCP (`spawn_tcp_handshake`)
/// peers onto the connection threads, and present a renewed certificate
/// (`Listening::renew`); at `shutdown`, `drain`, then close.
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
    let ctx = ConnContext {
        router: id.name.clone(),
        snapshots,
        clients,
        guard,
    };
    let mut listening = Listening::bind(&id, socket, tcp, reset_key.as_deref(), shards)?;
    let tcp_addr = listening.tcp.as_ref().and_then(|l| l.local_addr().ok());
    info!(addr = %listening.endpoint.local_addr()?, tcp = ?tcp_addr, router = %ctx.router, threads = shards.len(), "router listening");
    tokio::pin!(shutdown);
    let mut conns = JoinSet::new();
    conns.spawn(report_suppressed(
        ctx.guard.refusals.global().clone(),
        "refusals",
    ));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = listening.endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                spawn_quic_handshake(incoming, &ctx, shards, &mut conns);
            }
            accepted = accept_tcp(listening.tcp.as_ref()) => {
                let Ok((stream, remote)) = accepted else { continue };
                let acceptor = listening.acceptor.clone();
                spawn_tcp_handshake(stream, remote, acceptor, &ctx, shards, &mut conns);
            }
            Ok(()) = identity.changed() => {
                let id = identity.borrow_and_update().clone();
                listening.renew(&id);
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let Listening { endpoint, tcp, .. } = listening;
    ctx.clients.hosting.drain();
    drain(&endpoint, tcp.as_ref(), &ctx.guard, &mut conns).await;
    endpoint.close(close_code(CloseCode::Done), b"router shutting down");
    conns.shutdown().await;
    Ok(())
}

/// What every client connection is served with; cloned into each
/// connection's task.
#[derive(Clone)]
struct ConnContext {
    /// This router's name, for dial answers and logs.
    router: IdentityName,
    /// The policy snapshot: admission and each dial check against it.
    snapshots: SnapshotRx,
    /// Connected client identities, by connection.
    clients: Clients,
    /// Caps, draining, revocation, refusal log budget.
    guard: Arc<Guard>,
}

/// The router's listeners and the certificate they present.
struct Listening {
    /// QUIC.
    endpoint: quinn::Endpoint,
    /// TLS over TCP, unless `--no-tcp`.
    tcp: Option<tokio::net::TcpListener>,
    /// TLS over TCP handshakes: replaced when the certificate is renewed.
    acceptor: TlsAcceptor,
}

impl Listening {
    /// Sets up both listeners on the first connection thread, which runs
    /// the QUIC endpoint's driver.
    fn bind(
        id: &Identity,
        socket: UdpSocket,
        tcp: Option<std::net::TcpListener>,
        reset_key: Option<&[u8]>,
        shards: &Shards,
    ) -> Result<Listening, RouterError> {
        let config = tls::server_config(id, ClientAuth::Required, ALPN_DATA)?;
        let endpoint = {
            // The endpoint's driver runs on the first connection thread.
            let _shard = shards.first().enter();
            darkport_transport::endpoint::server_with_reset_key(socket, config, reset_key)?
        };
        let tcp = match tcp {
            Some(l) => {
                l.set_nonblocking(true)?;
                let _shard = shards.first().enter();
                Some(tokio::net::TcpListener::from_std(l)?)
            }
            None => None,
        };
        let acceptor = tcp_acceptor(id)?;
        Ok(Listening {
            endpoint,
            tcp,
            acceptor,
        })
    }

    /// A renewed certificate: new handshakes present it; on failure the
    /// old one stays.
    fn renew(&mut self, id: &Identity) {
        match tls::server_config(id, ClientAuth::Required, ALPN_DATA) {
            Ok(c) => {
                self.endpoint.set_server_config(Some(c));
                info!("serving with the renewed certificate");
            }
            Err(e) => warn!("cannot use the renewed certificate: {e}"),
        }
        match tcp_acceptor(id) {
            Ok(a) => self.acceptor = a,
            Err(e) => warn!("cannot use the renewed certificate over TCP: {e}"),
        }
    }
}

/// The TLS over TCP server side for `id`.
fn tcp_acceptor(id: &Identity) -> Result<TlsAcceptor, tls::TlsError> {
    tls::rustls_server_config(id, ClientAuth::Required, ALPN_DATA_TCP)
        .map(|c| TlsAcceptor::from(Arc::new(c)))
}

/// A new QUIC peer: asked to prove its address (Retry) when handshakes
/// are many, else admitted to the handshake gate and handed to a
/// connection thread.
fn spawn_quic_handshake(
    incoming: quinn::Incoming,
    ctx: &ConnContext,
    shards: &Shards,
    conns: &mut JoinSet<()>,
) {
    let gate = &ctx.guard.quic_handshakes;
    if gate.wants_retry(incoming.remote_address_validated()) && incoming.may_retry() {
        // Stateless: a spoofed source never gets further.
        let _ = incoming.retry();
        return;
    }
    // Admitted here, in arrival order, so the gate decides which handshake
    // makes room before any task runs.
    let ticket = gate.enter(incoming.remote_address().ip());
    // The handshake completes on the shard, so quinn's driver for this
    // connection runs there too, beside its streams.
    shards.spawn(conns, handle_connection(incoming, ticket, ctx.clone()));
}

/// A new TCP peer: admitted to the handshake gate, then its TLS handshake
/// and connection run on a connection thread.
fn spawn_tcp_handshake(
    stream: TcpStream,
    remote: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    ctx: &ConnContext,
    shards: &Shards,
    conns: &mut JoinSet<()>,
) {
    let mut ticket = ctx.guard.tcp_handshakes.enter(remote.ip());
    let ctx = ctx.clone();
    shards.spawn(conns, async move {
        let guard = &ctx.guard;
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
            Ok(conn) => serve_connection(conn, ctx).await,
            Err(e) => budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, "client handshake over TCP failed: {e}"),
        }
    });
}

/// The next TCP connection, if there is a TCP listener (else never).
async fn accept_tcp(
    tcp: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match tcp {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Stops taking connections and dials, and lets the streams in flight
/// finish for at most the grace period.
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

/// A QUIC peer's handshake, until it completes or the gate evicts it to
/// make room; then its connection.
async fn handle_connection(incoming: quinn::Incoming, mut ticket: Ticket, ctx: ConnContext) {
    let remote = incoming.remote_address();
    let conn = tokio::select! {
        c = darkport_transport::endpoint::accept(incoming, "client") => c,
        () = ticket.evicted() => {
            // Dropping the handshake closes it and frees its state.
            budgeted_info_for!(ctx.guard.refusals, &remote.ip().to_string(), %remote, "dropped a QUIC handshake in progress: {}", HandshakeAbort::Evicted);
            None
        }
    };
    // Authenticated (or failed): out of the pending pool.
    drop(ticket);
    let Some(conn) = conn else {
        return;
    };
    serve_connection(conn.into(), ctx).await
}

/// Admits a client connection (either transport) and serves its streams.
async fn serve_connection(conn: Conn, ctx: ConnContext) {
    let ConnContext {
        router,
        mut snapshots,
        clients,
        guard,
    } = ctx;
    let remote = conn.remote_address();
    let transport = conn.transport();
    let Some((peer, _slot)) = admit_connection(&conn, &mut snapshots, &guard).await else {
        return;
    };
    // Admitted: from the few streams a peer gets during its handshake (a
    // pending handshake's stream state is allocated up front) to its
    // identity's stream cap.
    if let Some(q) = conn.as_quic() {
        q.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(guard.streams_per_connection()));
    }
    let _open = guard.metrics.connection_open(peer.kind);
    info!(%remote, %peer, %transport, "client connected");
    clients.insert(conn.stable_id(), peer.name.clone());
    let mut streams = JoinSet::new();
    let ctx = StreamCtx {
        peer,
        router,
        snapshots,
        guard,
        clients: clients.clone(),
        conn: conn.clone(),
    };
    serve_streams(&ctx, &mut streams).await;
    clients.remove(conn.stable_id());
    clients.hosting.close_link(conn.stable_id());
    // Streams of a closed connection end by themselves (their reads fail).
    while streams.join_next().await.is_some() {}
}

/// Admission of a connected peer: the router not revoked, a client
/// identity, known to the policy ([`admit`]), within its identity's
/// connection cap. A refused peer's connection is closed with the reason.
async fn admit_connection(
    conn: &Conn,
    snapshots: &mut SnapshotRx,
    guard: &Guard,
) -> Option<(PeerIdentity, Slot<IdentityName>)> {
    let remote = conn.remote_address();
    if let Some(reason) = guard.revoked() {
        close_revoked(conn, &reason);
        return None;
    }
    let peer = match conn.peer_identity() {
        Ok(p) => p,
        Err(e) => {
            info!(%remote, "refusing client: {e}");
            conn.close(CloseCode::Forbidden, e.to_string().as_bytes());
            return None;
        }
    };
    let refuse = |code: CloseCode, reason: &str| {
        budgeted_info_for!(guard.refusals, &remote.ip().to_string(), %remote, %peer, "refusing connection: {reason}");
        conn.close(code, reason.as_bytes());
    };
    if peer.kind != Kind::Client {
        let reason = format!(
            "{} identities cannot dial services; use a client identity",
            peer.kind
        );
        refuse(CloseCode::Forbidden, &reason);
        return None;
    }
    if let Err(d) = admit(snapshots, &peer).await {
        refuse(CloseCode::Revoked, &d.to_string());
        return None;
    }
    match guard.conns.try_acquire(peer.name.clone()) {
        Ok(slot) => Some((peer, slot)),
        Err(cap) => {
            let reason = format!(
                "too many connections to this router ({cap}); close unused clients of identity {}",
                peer.name
            );
            refuse(CloseCode::Busy, &reason);
            None
        }
    }
}

/// Closes `conn` because this router was revoked.
fn close_revoked(conn: &Conn, reason: &str) {
    conn.close(
        CloseCode::RouterRevoked,
        format!("this router was revoked: {reason}").as_bytes(),
    );
}

/// The stream accept loop of an admitted connection: each new stream
/// gets a task, until the connection ends, the peer is no longer allowed
/// by a new snapshot, or the router is revoked (the connection is closed
/// then). `admit` checked the snapshot it last marked seen; a newer one
/// wakes the loop.
async fn serve_streams(ctx: &StreamCtx, streams: &mut JoinSet<()>) {
    let (conn, peer, guard) = (&ctx.conn, &ctx.peer, &ctx.guard);
    let mut snapshots = ctx.snapshots.clone();
    let remote = conn.remote_address();
    let mut revoked = guard.revoked.clone();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    // The slot is taken here, before the stream's task, so
                    // a burst of streams cannot race past the cap.
                    match guard.streams.try_acquire(peer.name.clone()) {
                        Ok(slot) => {
                            streams.spawn(handle_stream(ctx.clone(), slot, send, recv));
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
                if let Err(d) = peer_allowed(&snapshots, peer) {
                    info!(%remote, %peer, "closing connection: {d}");
                    conn.close(CloseCode::Revoked, d.to_string().as_bytes());
                    break;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            Ok(()) = revoked.changed() => {
                if let Some(reason) = revoked.borrow_and_update().clone() {
                    close_revoked(conn, &reason);
                    break;
                }
            }
        }
    }
}

/// What each stream of an admitted connection is served with.
#[derive(Clone)]
struct StreamCtx {
    /// The connection's verified identity.
    peer: PeerIdentity,
    /// This router's name.
    router: IdentityName,
    snapshots: SnapshotRx,
    guard: Arc<Guard>,
    /// Connected clients and the terminators of hosted services.
    clients: Clients,
    /// The connection (its address, and the link of a hoster).
    conn: Conn,
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
async fn refuse(send: &mut SendHalf, recv: &mut RecvHalf, resp: DialResponse) {
    let _ = respond(send, &resp).await;
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
            if let Err(d) = check_still_allowed(unix_now(), &router, &peer, &service, &s) {
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
    let resp = admission::over_cap(&peer, &cap);
    budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, "refused a stream: {}", resp.message);
    guard
        .metrics
        .dial(UNKNOWN_SERVICE.into(), DialStatus::LimitReached);
    recv.stop(StreamCode::Refused);
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

/// One dial stream, from its request to its access line. The decision is
/// [`admit_dial`]; the steps here are I/O. A hoster's host and offer
/// streams start the same way, and go to [`host_stream`] and
/// [`offer_stream`].
async fn handle_stream(
    ctx: StreamCtx,
    slot: Slot<IdentityName>,
    mut send: SendHalf,
    mut recv: RecvHalf,
) {
    let started = tokio::time::Instant::now();
    let StreamCtx {
        peer,
        router,
        snapshots,
        guard,
        ..
    } = &ctx;
    let Some(req) = read_request(peer, guard, &mut send, &mut recv).await else {
        return;
    };
    match req.service.as_str() {
        HOST_STREAM => return host_stream(&ctx, slot, send, recv).await,
        OFFER_STREAM => return offer_stream(&ctx, slot, send, recv).await,
        _ => {}
    }
    let label = RouterMetrics::service_label(snapshots, &req.service);
    let _slot = slot;
    let snapshot = snapshots.borrow().clone();
    let view = guard.view(router, peer, None);
    let dialed = match admit_dial(unix_now(), &view, snapshot.as_deref(), &req) {
        Ok(d) => d,
        Err(resp) => {
            // Every dial of a draining router is refused: not logged.
            if resp.status != DialStatus::Draining {
                budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, service = ?req.service, status = ?resp.status, "refused dial: {}", resp.message);
            }
            guard.metrics.dial(label, resp.status);
            return refuse(&mut send, &mut recv, resp).await;
        }
    };
    let (service, leftover) = match connect_service(&ctx, &req.service, &dialed).await {
        Ok(c) => c,
        Err(resp) => {
            guard.metrics.dial(label, DialStatus::ServiceUnreachable);
            warn!(%peer, "refused dial: {}", resp.message);
            return refuse(&mut send, &mut recv, resp).await;
        }
    };
    let ok = DialResponse {
        status: DialStatus::Ok,
        message: String::new(),
    };
    if !respond(&mut send, &ok).await {
        debug!(%peer, service = ?req.service, "client went away before the dial completed");
        service.reset();
        return;
    }
    debug!(%peer, service = ?req.service, terminator = ?service.terminator(), address = %dialed.address, "dial accepted");
    let fluent = dialed.fluent;
    guard.metrics.dial_ok(&label, started.elapsed());
    let stream = OpenStream {
        peer: peer.clone(),
        router: router.clone(),
        service: req.service,
        terminator: service.terminator().unwrap_or_default(),
        label,
        started,
        guard: guard.clone(),
    };
    stream
        .splice(service, leftover, fluent, snapshots.clone(), send, recv)
        .await;
}

/// A hoster's host stream: answered `Ok` (unless the router is draining
/// or the connection has one already), then [`hosting::serve_host_stream`]
/// for as long as it lasts. It holds one of the hoster's stream slots.
async fn host_stream(
    ctx: &StreamCtx,
    _slot: Slot<IdentityName>,
    mut send: SendHalf,
    mut recv: RecvHalf,
) {
    let (peer, guard) = (&ctx.peer, &ctx.guard);
    if guard.draining.load(Ordering::Relaxed) {
        let resp = DialResponse {
            status: DialStatus::Draining,
            message: format!(
                "router {} is shutting down; host through another router",
                ctx.router
            ),
        };
        return refuse(&mut send, &mut recv, resp).await;
    }
    let Some(link) = ctx.clients.hosting.open_link(&ctx.conn, peer) else {
        let resp = DialResponse {
            status: DialStatus::BadRequest,
            message:
                "this connection has a host stream already; send a new host request on it instead"
                    .into(),
        };
        return refuse(&mut send, &mut recv, resp).await;
    };
    let ok = DialResponse {
        status: DialStatus::Ok,
        message: String::new(),
    };
    if !respond(&mut send, &ok).await {
        ctx.clients.hosting.close_link(ctx.conn.stable_id());
        return;
    }
    info!(%peer, remote = %ctx.conn.remote_address(), "hoster connected");
    let hosting = &ctx.clients.hosting;
    hosting::serve_host_stream(
        hosting,
        &ctx.guard.refusals,
        link,
        &ctx.router,
        ctx.snapshots.clone(),
        (send, recv),
    )
    .await;
    info!(%peer, "hoster's host stream ended");
}

/// A hoster's idle offer stream: kept (with its slot) until a dial of one
/// of its services takes it; refused without a host stream first, or
/// past [`darkport_proto::msg::MAX_IDLE_OFFERS`].
async fn offer_stream(ctx: &StreamCtx, slot: Slot<IdentityName>, send: SendHalf, recv: RecvHalf) {
    if let Err(refused) = ctx
        .clients
        .hosting
        .add_offer(ctx.conn.stable_id(), send, recv, slot)
    {
        let (mut send, mut recv, resp) = *refused;
        budgeted_info_for!(ctx.guard.refusals, ctx.peer.name.as_str(), peer = %ctx.peer, "refused an offer stream: {}", resp.message);
        refuse(&mut send, &mut recv, resp).await;
    }
}

/// Reads the dial request within [`DIAL_REQUEST_TIMEOUT`]; `None` when
/// there is none (the stream was answered or reset).
async fn read_request(
    peer: &PeerIdentity,
    guard: &Guard,
    send: &mut SendHalf,
    recv: &mut RecvHalf,
) -> Option<DialRequest> {
    match tokio::time::timeout(DIAL_REQUEST_TIMEOUT, read_frame(recv, MAX_DIAL_FRAME)).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, "refused dial: bad request: {e}");
            guard
                .metrics
                .dial(UNKNOWN_SERVICE.into(), DialStatus::BadRequest);
            let resp = DialResponse {
                status: DialStatus::BadRequest,
                message: e.to_string(),
            };
            refuse(send, recv, resp).await;
            None
        }
        Err(_) => {
            budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, "dial request timed out");
            send.reset(StreamCode::Refused);
            None
        }
    }
}

/// Reaches the private service: through one of its terminators when this
/// router has any (they win over the address), else at its address within
/// [`SERVICE_CONNECT_TIMEOUT`]; then its Fluentd handshake if it has one.
/// Returns the service side and what the service sent after its
/// handshake, or the refusal to answer.
async fn connect_service(
    ctx: &StreamCtx,
    service: &str,
    dialed: &Dialed,
) -> Result<(ServiceConn, Vec<u8>), DialResponse> {
    let incoming = Incoming {
        service: service.to_string(),
        caller: ctx.peer.name.clone(),
        caller_roles: dialed.caller_roles.clone(),
        caller_address: ctx.conn.remote_address().to_string(),
        router: ctx.router.clone(),
    };
    let address = dialed.address.as_str();
    let hosted = ctx
        .clients
        .hosting
        .connect(dialed.strategy, &incoming)
        .await;
    let mut conn = match hosted {
        Ok(Some(h)) => ServiceConn::Hosted(h),
        Ok(None) if address.is_empty() => {
            return Err(admission::refusal(
                DialStatus::ServiceUnreachable,
                format!(
                    "no hoster serves service {service} on router {}; start `darkport-edge-client host` for it, or dial through another router",
                    ctx.router
                ),
            ))
        }
        Err(why) if address.is_empty() => {
            return Err(admission::refusal(
                DialStatus::ServiceUnreachable,
                format!("cannot reach hosted service {service}: {why}"),
            ))
        }
        // No terminator answered: the address is the fallback.
        Ok(None) | Err(_) => ServiceConn::Tcp(
            connect_tcp(address)
                .await
                .map_err(|why| admission::unreachable(service, address, &why))?,
        ),
    };
    let Some(plan) = dialed.fluent.as_ref() else {
        return Ok((conn, Vec::new()));
    };
    match crate::fluent::handshake(&mut conn, plan, &ctx.router).await {
        Ok(rest) => Ok((conn, rest)),
        Err(why) => {
            conn.reset();
            let why = format!("Fluentd handshake failed: {}", why.advice(service));
            Err(admission::unreachable(service, address, &why))
        }
    }
}

/// Connects to a service's address within [`SERVICE_CONNECT_TIMEOUT`].
async fn connect_tcp(address: &str) -> Result<TcpStream, String> {
    let tcp = match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, TcpStream::connect(address)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            return Err(format!(
                "no answer within {} s",
                SERVICE_CONNECT_TIMEOUT.as_secs()
            ))
        }
    };
    // If the router dies from here on, the service sees a reset.
    darkport_transport::splice::abort_on_drop(&tcp);
    Ok(tcp)
}

/// An accepted dial, between its service and its client: what its log
/// lines and metrics are about.
struct OpenStream {
    peer: PeerIdentity,
    router: IdentityName,
    service: String,
    /// `hoster/instance` of a hosted service's terminator; empty when the
    /// router dialed the address.
    terminator: String,
    /// The service's metric label.
    label: String,
    started: tokio::time::Instant,
    guard: Arc<Guard>,
}

/// What cuts an open stream: a snapshot that no longer allows it
/// (`watch` completes), and then why (`reason`).
struct Cut<F> {
    watch: F,
    reason: tokio::sync::oneshot::Receiver<String>,
}

impl OpenStream {
    /// Carries the stream's bytes until either side ends it or the policy
    /// no longer allows it, then writes its access line.
    async fn splice(
        self,
        tcp: ServiceConn,
        leftover: Vec<u8>,
        fluent: Option<crate::fluent::Plan>,
        snapshots: SnapshotRx,
        send: SendHalf,
        recv: RecvHalf,
    ) {
        let _active = self.guard.metrics.stream_open();
        let (to_service, to_client) = self.guard.metrics.byte_counters(&self.label);
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
        let (cut_tx, reason) = tokio::sync::oneshot::channel();
        let (router, peer) = (self.router.clone(), self.peer.clone());
        let service = self.service.clone();
        // A hosted stream is also cut when its hoster may no longer host.
        let unbound = match &tcp {
            ServiceConn::Hosted(h) => Some(h.terminator.cut()),
            ServiceConn::Tcp(_) => None,
        };
        let watch = async move {
            let unbound = async {
                match unbound {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            let reason = tokio::select! {
                r = revoked(router, peer, service, snapshots) => r,
                r = unbound => r,
            };
            let _ = cut_tx.send(reason);
        };
        let cut = Cut { watch, reason };
        match fluent {
            None => self.splice_tcp(tcp, send, recv, cut, &meter).await,
            Some(plan) => {
                let fluent = (plan, leftover);
                self.splice_fluent(tcp, fluent, send, recv, cut, &meter)
                    .await
            }
        }
    }

    async fn splice_tcp(
        &self,
        service: ServiceConn,
        send: SendHalf,
        recv: RecvHalf,
        cut: Cut<impl Future<Output = ()>>,
        meter: &Meter<'_>,
    ) {
        let stats = match service {
            ServiceConn::Tcp(tcp) => splice_tcp_metered(tcp, send, recv, cut.watch, meter).await,
            ServiceConn::Hosted(h) => {
                let HostedConn {
                    send: to_hoster,
                    recv: from_hoster,
                    held: _held,
                    ..
                } = h;
                splice_streams((to_hoster, from_hoster), send, recv, cut.watch, meter).await
            }
        };
        let (ended, reason) = match stats.ending {
            Ending::Clean => ("clean", String::new()),
            Ending::LocalReset => ("service_reset", String::new()),
            Ending::RemoteReset => ("client_reset", String::new()),
            Ending::Cancelled => ("cut", cut.reason.await.unwrap_or_default()),
        };
        // The access line: one per stream that reached its service.
        info!(
            identity = %self.peer.name,
            service = %self.service,
            router = %self.router,
            terminator = %self.terminator,
            bytes_to_service = stats.received,
            bytes_to_client = stats.sent,
            duration_ms = self.started.elapsed().as_millis() as u64,
            ended,
            reason,
            "stream"
        );
    }

    /// A fluent-forward stream: the app's handshake, then messages through
    /// the filter that stamps and checks them.
    async fn splice_fluent(
        &self,
        tcp: ServiceConn,
        (plan, from_service): (crate::fluent::Plan, Vec<u8>),
        mut send: SendHalf,
        mut recv: RecvHalf,
        cut: Cut<impl Future<Output = ()>>,
        meter: &Meter<'_>,
    ) {
        let (guard, peer, label) = (&self.guard, &self.peer, &self.label);
        if let Some(why) = plan.unsubstituted_warning(&peer.name) {
            budgeted_info_for!(guard.refusals, peer.name.as_str(), %peer, service = %self.service, "{why}");
        }
        let from_client =
            match crate::fluent::app_handshake(&mut send, &mut recv, &plan, &self.router).await {
                Ok(first) => first,
                Err(why) => return self.reject_app(&why, tcp, send, recv).await,
            };
        let on_denial = |d: &darkport_fluent::Denial| self.on_denial(d);
        let on_forward = |records, overwritten| self.on_forward(records, overwritten);
        let hooks = crate::fluent::Hooks {
            on_denial: &on_denial,
            on_forward: &on_forward,
        };
        let leftovers = crate::fluent::Leftovers {
            from_service,
            from_client,
        };
        let stats =
            crate::fluent::splice(tcp, send, recv, leftovers, plan, cut.watch, meter, &hooks).await;
        if let FluentEnding::Rejected(crate::fluent::Rejection::Invalid(e)) = &stats.ending {
            guard.metrics.fluent_refused_stream(label, e.as_str());
        }
        let (ended, reason) = match stats.ending {
            FluentEnding::Clean => ("clean", String::new()),
            FluentEnding::ServiceReset => ("service_reset", String::new()),
            FluentEnding::ClientReset => ("client_reset", String::new()),
            FluentEnding::Cut => ("cut", cut.reason.await.unwrap_or_default()),
            FluentEnding::Rejected(why) => ("rejected", why.to_string()),
        };
        info!(
            identity = %peer.name,
            service = %self.service,
            router = %self.router,
            terminator = %self.terminator,
            bytes_to_service = stats.from_client,
            bytes_to_client = stats.to_client,
            records = stats.counts.records,
            denied_records = stats.counts.denied_records,
            overwritten_keys = stats.counts.overwritten,
            duration_ms = self.started.elapsed().as_millis() as u64,
            ended,
            reason,
            "stream"
        );
    }

    /// A Fluentd message the filter dropped (a tag no policy allows).
    fn on_denial(&self, d: &darkport_fluent::Denial) {
        let (guard, peer) = (&self.guard, &self.peer);
        guard
            .metrics
            .fluent_denied(&self.label, d.records, d.reason);
        budgeted_info_for!(
            guard.refusals,
            peer.name.as_str(),
            %peer,
            service = %self.service,
            tag = ?d.tag,
            records = d.records,
            acked = d.chunked,
            reason = d.reason.as_str(),
            "dropped a Fluentd message from {} with tag {:?}: {}",
            peer.name,
            d.tag,
            d.reason
        );
    }

    /// Records forwarded, `overwritten` of their stamp keys replaced.
    fn on_forward(&self, records: u64, overwritten: u64) {
        let (guard, peer) = (&self.guard, &self.peer);
        guard
            .metrics
            .fluent_records(&self.label, records, overwritten);
        if overwritten > 0 {
            // As it happens, not at the end of a stream that may last days.
            budgeted_info_for!(
                guard.refusals,
                peer.name.as_str(),
                %peer,
                service = %self.service,
                keys = overwritten,
                "records carried their own stamp keys (a forged sender?); overwritten with the verified identity"
            );
        }
    }

    /// Ends a fluent-forward stream whose app failed its `<security>`
    /// handshake: the PONG that says why goes out before the end.
    async fn reject_app(
        &self,
        why: &crate::fluent::HandshakeFailure,
        tcp: ServiceConn,
        mut send: SendHalf,
        mut recv: RecvHalf,
    ) {
        let peer = &self.peer;
        self.guard.metrics.fluent_app_handshake_failed(&self.label);
        tcp.reset();
        // A FIN, not a reset, which would drop the PONG.
        send.finish();
        recv.stop(StreamCode::Rejected);
        let _ = tokio::time::timeout(RESPONSE_TIMEOUT, send.stopped()).await;
        budgeted_info_for!(self.guard.refusals, peer.name.as_str(), %peer, service = %self.service, "refused an app: its <security> handshake failed: {why}");
        info!(
            identity = %peer.name,
            service = %self.service,
            router = %self.router,
            ended = "rejected",
            reason = %why,
            "stream"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
