//! fluent-forward services: the router speaks Fluentd's forward protocol
//! between the client's stream and the service.
//!
//! Client to service, every message goes through `darkport_fluent::Filter`:
//! framed, checked against the policies' tag patterns, each record stamped
//! with the verified sender, event times unwrapped (Fluent Bit 5's
//! `[EventTime, {metadata}]`, unless the service keeps them), sent on as
//! PackedForward with its `chunk` and `fluent_signal` kept. Service to
//! client, bytes are copied untouched: they are the service's
//! `{"ack": chunk}` answers, so a client is acked only by the service, only
//! for what the service stored.
//!
//! With a shared key, the router does the `<security>` handshake with the
//! service (HELO, PING, PONG) before it answers the dial: a service that
//! refuses the key makes the dial fail with `ServiceUnreachable`, naming
//! the reason (`shared_key mismatch`, `username/password mismatch`).
//! Clients never see that key.
//!
//! Apps whose own config keeps a `shared_key` wait for a HELO: with
//! `app_handshake` on, the router plays the server's part towards them
//! after the dial ([`app_handshake`]), checking the app's PING against the
//! service's app-side key, or letting any key in.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use darkport_transport::mux::{RecvHalf, SendHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::service::ServiceConn;

use darkport_fluent::handshake::{
    HandshakeError, Helo, Ping, Pong, Refusal, ServerAuth, User, MAX_HANDSHAKE,
};
use darkport_fluent::{
    scan, Denial, DenialReason, EventTime, Filter, FluentError, Limits, Stamp, StampValue, TagRules,
};
use darkport_proto::codes::StreamCode;
use darkport_proto::identity::IdentityName;
use darkport_proto::policy::{AppHandshake, EventTimeForm, FluentSettings};
use darkport_transport::splice::Meter;
use tracing::warn;

/// Time the peer has for each handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a denied chunk, how long the service has to ack what it already
/// has before the stream ends.
pub const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from either side at a time.
const READ: usize = 64 * 1024;

/// Services whose "any key" warning was logged: at most this many are
/// remembered (then the warning may repeat, never grow memory).
const WARNED_SERVICES: usize = 4096;

/// How one fluent-forward stream is handled: built at dial time from the
/// service's settings and the permit.
pub struct Plan {
    service: String,
    stamp: Stamp,
    tags: Option<TagRules>,
    shared_key: Option<String>,
    service_user: Option<User>,
    event_time: EventTime,
    app: AppHandshake,
}

/// A policy's tag patterns that do not compile.
#[derive(Debug, thiserror::Error)]
#[error("the policy's tag patterns do not compile: {0}")]
pub struct PlanError(#[from] darkport_fluent::PatternError);

impl Plan {
    /// Why some of the policy's `${identity}` patterns match nothing for
    /// this identity (a name with a `.`), if they do: for a warning.
    pub fn unsubstituted_warning(&self, identity: &IdentityName) -> Option<String> {
        let rules = self.tags.as_ref()?;
        if rules.unsubstituted() == 0 {
            return None;
        }
        darkport_proto::tags::check_identity_for_tags(identity.as_str())
            .err()
            .map(|e| e.to_string())
    }

    /// The plan for `identity` (with `roles`) through `router` to
    /// `service`, under the tag patterns of the policies that allowed it
    /// (`None`: any tag).
    pub fn new(
        service: &str,
        settings: &FluentSettings,
        identity: &IdentityName,
        roles: &[IdentityName],
        router: &IdentityName,
        tags: Option<Vec<&str>>,
    ) -> Result<Plan, PlanError> {
        let mut fields = vec![(
            settings.identity_key.clone(),
            StampValue::Str(identity.to_string()),
        )];
        if let Some(k) = &settings.roles_key {
            fields.push((
                k.clone(),
                StampValue::List(roles.iter().map(|r| r.to_string()).collect()),
            ));
        }
        if let Some(k) = &settings.router_key {
            fields.push((k.clone(), StampValue::Str(router.to_string())));
        }
        let tags = tags
            .map(|t| TagRules::new(t, identity.as_str()))
            .transpose()?;
        let event_time = match settings.event_time {
            EventTimeForm::Keep => EventTime::Keep,
            EventTimeForm::Unwrap => EventTime::Unwrap {
                metadata_key: settings.metadata_key.clone(),
            },
        };
        Ok(Plan {
            service: service.to_string(),
            stamp: Stamp::new(&fields),
            tags,
            shared_key: settings.shared_key.clone(),
            service_user: settings.service_user.clone(),
            event_time,
            app: settings.app_handshake.clone(),
        })
    }
}

/// Why a handshake (with the service, or with the app) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The peer broke the handshake's protocol, or refused us.
    #[error("{0}")]
    Protocol(#[from] FluentError),
    /// No whole handshake message in time.
    #[error("no handshake message within {} s{hint}", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout {
        /// What to check.
        hint: &'static str,
    },
    /// The peer closed the connection.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// A handshake message over [`MAX_HANDSHAKE`].
    #[error("a handshake message over {MAX_HANDSHAKE} bytes")]
    TooLarge,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
}

impl HandshakeFailure {
    /// The failure with what the operator should do about it, for the
    /// dial error and the log.
    pub fn advice(&self, service: &str) -> String {
        let hint = match self {
            HandshakeFailure::Protocol(FluentError::Handshake(HandshakeError::Refused(r))) => {
                match r {
                    Refusal::SharedKeyMismatch => format!(
                        "; give the service's shared_key with `service update {service} --shared-key-file FILE`"
                    ),
                    Refusal::UserMismatch => format!(
                        "; give one of the service's <user> sections with `service update {service} --service-username NAME --service-password-file FILE`"
                    ),
                    _ => String::new(),
                }
            }
            HandshakeFailure::Protocol(FluentError::Handshake(HandshakeError::WrongDigest)) => {
                format!("; the service holds another shared_key than `service update {service} --shared-key-file` gave")
            }
            _ => String::new(),
        };
        format!("{self}{hint}")
    }
}

/// Where handshake messages come from.
trait Source {
    /// Appends what arrives next; false at the end of the stream.
    async fn more(&mut self, buf: &mut Vec<u8>) -> Result<bool, HandshakeFailure>;
}

impl<T: AsyncRead + Unpin> Source for T {
    async fn more(&mut self, buf: &mut Vec<u8>) -> Result<bool, HandshakeFailure> {
        let mut chunk = [0u8; 1024];
        let n = self
            .read(&mut chunk)
            .await
            .map_err(|e| HandshakeFailure::Io(e.to_string()))?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }
}

/// Reads one msgpack value (a handshake message) into the front of
/// `buf`, within [`HANDSHAKE_TIMEOUT`]; returns its length.
async fn read_message(
    from: &mut impl Source,
    buf: &mut Vec<u8>,
    hint: &'static str,
) -> Result<usize, HandshakeFailure> {
    let wait = async {
        loop {
            if let Some(n) = scan::value_len(buf)? {
                return Ok(n);
            }
            if buf.len() > MAX_HANDSHAKE {
                return Err(HandshakeFailure::TooLarge);
            }
            if !from.more(buf).await? {
                return Err(HandshakeFailure::Closed);
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
        .await
        .map_err(|_| HandshakeFailure::Timeout { hint })?
}

/// The `<security>` handshake with the service, as its client; returns
/// whatever the service sent after the PONG (normally nothing).
pub async fn handshake(
    service: &mut ServiceConn,
    plan: &Plan,
    router: &IdentityName,
) -> Result<Vec<u8>, HandshakeFailure> {
    match service {
        ServiceConn::Tcp(tcp) => {
            let (mut r, mut w) = tcp.split();
            handshake_io(&mut r, &mut w, plan, router).await
        }
        ServiceConn::Hosted(h) => handshake_io(&mut h.recv, &mut h.send, plan, router).await,
    }
}

async fn handshake_io(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    plan: &Plan,
    router: &IdentityName,
) -> Result<Vec<u8>, HandshakeFailure> {
    let Some(key) = &plan.shared_key else {
        return Ok(Vec::new());
    };
    let hint = " (is <security> with a shared_key on at the service?)";
    let mut buf = Vec::new();
    let n = read_message(r, &mut buf, hint).await?;
    let helo = Helo::parse(&buf[..n])?;
    buf.drain(..n);
    let salt: [u8; 16] = rand::random();
    let ping = Ping::new(
        &helo,
        router.as_str(),
        &salt,
        key,
        plan.service_user.as_ref(),
    );
    w.write_all(&ping.encode())
        .await
        .map_err(|e| HandshakeFailure::Io(format!("sending PING: {e}")))?;
    let n = read_message(r, &mut buf, hint).await?;
    let pong = Pong::parse(&buf[..n])?;
    buf.drain(..n);
    pong.check(&helo, &ping, key).map_err(FluentError::from)?;
    Ok(buf)
}

/// Logs once per service (per router process) that apps' keys are let in
/// unchecked.
fn warn_any_key(service: &str) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let warned = WARNED.get_or_init(Default::default);
    let mut set = warned.lock().unwrap_or_else(|p| p.into_inner());
    if set.contains(service) {
        return;
    }
    if set.len() >= WARNED_SERVICES {
        set.clear();
    }
    set.insert(service.to_string());
    warn!(
        service,
        "apps' own shared_key is not checked for this service (app handshake: any-key): their identity is their certificate; set an app-side key with `service update {service} --app-shared-key-file FILE` to check it"
    );
}

/// The server side of `<security>` towards an app that keeps its own
/// `shared_key`: HELO, the app's PING checked (or, with any-key, let in),
/// PONG. Returns what the app sent after its PING (its first events).
/// Nothing happens with the app handshake off.
pub async fn app_handshake(
    send: &mut SendHalf,
    recv: &mut RecvHalf,
    plan: &Plan,
    router: &IdentityName,
) -> Result<Vec<u8>, HandshakeFailure> {
    let key = match &plan.app {
        AppHandshake::Off => return Ok(Vec::new()),
        AppHandshake::AnyKey => None,
        AppHandshake::SharedKey(k) => Some(k.as_str()),
    };
    let helo = Helo {
        nonce: rand::random::<[u8; 16]>().to_vec(),
        auth: Vec::new(),
        keepalive: true,
    };
    let io = |e: std::io::Error| HandshakeFailure::Io(e.to_string());
    send.write_all(&helo.encode()).await.map_err(io)?;
    let mut buf = Vec::new();
    let hint =
        " (does the app's forward output have a shared_key? with the app handshake on, it must)";
    let n = read_message(recv, &mut buf, hint).await?;
    let ping = match Ping::parse(&buf[..n]) {
        Ok(p) => p,
        Err(e) => {
            let _ = send
                .write_all(&Pong::refuse(&Refusal::InvalidPing).encode())
                .await;
            return Err(e.into());
        }
    };
    buf.drain(..n);
    let pong = match key {
        Some(k) => ServerAuth {
            shared_key: k.to_string(),
            users: Vec::new(),
        }
        .answer(&helo, &ping, router.as_str()),
        None => {
            warn_any_key(&plan.service);
            // The router does not know the app's key, so this digest
            // proves nothing: apps that check it need SharedKey.
            Pong::accept(&helo, &ping, router.as_str(), "")
        }
    };
    send.write_all(&pong.encode()).await.map_err(io)?;
    if !pong.ok {
        let why = Refusal::from_reason(&pong.reason);
        return Err(FluentError::from(HandshakeError::Refused(why)).into());
    }
    Ok(buf)
}

/// How a fluent-forward stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FluentEnding {
    /// Both sides ended cleanly.
    Clean,
    /// The client's stream was reset or its connection lost.
    ClientReset,
    /// The service reset or failed.
    ServiceReset,
    /// Cut on purpose (revocation, policy change).
    Cut,
    /// The router refused the client's data.
    Rejected(Rejection),
}

/// Why the router refused a client's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// A message that asked for an ack was denied (its tag, or not logs):
    /// the service may still ack what it had before.
    #[error("tag {:?}: {}, and the message asked for an ack", .0.tag, .0.reason)]
    Denied(Denial),
    /// Data that is not the forward protocol, or over a limit.
    #[error("{0}")]
    Invalid(FluentError),
    /// The app's own `<security>` handshake failed.
    #[error("the app's <security> handshake failed: {0}")]
    AppHandshake(String),
}

/// What one stream did.
#[derive(Debug, Clone)]
pub struct FluentStats {
    /// Bytes from the client.
    pub from_client: u64,
    /// Bytes to the client (acks).
    pub to_client: u64,
    /// Filter counts.
    pub counts: darkport_fluent::Counts,
    /// How it ended.
    pub ending: FluentEnding,
}

/// Bytes read past a handshake, to be handled first.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// From the service, after its PONG (to the client).
    pub from_service: Vec<u8>,
    /// From the app, after its PING (through the filter).
    pub from_client: Vec<u8>,
}

/// Who hears of a stream's records as they go (logs, live metrics).
pub struct Hooks<'a> {
    /// Each denied message.
    pub on_denial: &'a (dyn Fn(&Denial) + Sync),
    /// Records forwarded and keys overwritten.
    pub on_forward: &'a (dyn Fn(u64, u64) + Sync),
}

/// Runs a fluent-forward stream until both sides end, one fails, the
/// client's data is refused, or `cancel`.
///
/// The steps: `upstream` (client to service, through the filter) and
/// `downstream` (service to client, untouched) run side by side under
/// `race`; then both ends are closed as the ending says.
#[allow(clippy::too_many_arguments)]
pub async fn splice(
    service: ServiceConn,
    send: SendHalf,
    recv: RecvHalf,
    leftovers: Leftovers,
    plan: Plan,
    cancel: impl std::future::Future<Output = ()>,
    meter: &Meter<'_>,
    hooks: &Hooks<'_>,
) -> FluentStats {
    let client = (send, recv);
    match service {
        ServiceConn::Tcp(tcp) => {
            let _ = tcp.set_nodelay(true);
            darkport_transport::splice::abort_on_drop(&tcp);
            let (mut r, mut w) = tcp.into_split();
            let stats = splice_io(
                (&mut r, &mut w),
                client,
                leftovers,
                plan,
                cancel,
                meter,
                hooks,
            )
            .await;
            if let Ok(tcp) = r.reunite(w) {
                if stats.ending == FluentEnding::Clean {
                    let _ = socket2::SockRef::from(&tcp).set_linger(None);
                } else {
                    darkport_transport::splice::reset_tcp(tcp);
                }
            }
            stats
        }
        ServiceConn::Hosted(mut h) => {
            let (r, w) = (&mut h.recv, &mut h.send);
            let stats = splice_io((r, w), client, leftovers, plan, cancel, meter, hooks).await;
            if stats.ending != FluentEnding::Clean {
                h.send.reset(StreamCode::Reset);
                h.recv.stop(StreamCode::Reset);
            }
            stats
        }
    }
}

/// [`splice`] over any service side: the filter between the client's
/// stream and `(r, w)`.
#[allow(clippy::too_many_arguments)]
async fn splice_io<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    (r, w): (&mut R, &mut W),
    (mut send, mut recv): (SendHalf, RecvHalf),
    leftovers: Leftovers,
    plan: Plan,
    cancel: impl std::future::Future<Output = ()>,
    meter: &Meter<'_>,
    hooks: &Hooks<'_>,
) -> FluentStats {
    let mut filter =
        Filter::new(plan.stamp, plan.tags, Limits::default()).with_event_time(plan.event_time);
    let mut from_client = 0u64;
    let mut to_client = 0u64;
    let Leftovers {
        from_service,
        from_client: first,
    } = leftovers;
    let ending = {
        let client = Upstream {
            recv: &mut recv,
            filter: &mut filter,
            w,
            meter,
            hooks,
        };
        let up = upstream(client, first, &mut from_client);
        let down = downstream(r, &mut send, from_service, meter, &mut to_client);
        race(up, down, cancel).await
    };
    close(&ending, &mut send, &mut recv);
    FluentStats {
        from_client,
        to_client,
        counts: filter.counts(),
        ending,
    }
}

/// What [`upstream`] works with: the client's stream, the filter, the
/// service's socket, and who hears of the bytes and records.
struct Upstream<'s, 'm, W> {
    recv: &'s mut RecvHalf,
    filter: &'s mut Filter,
    w: &'s mut W,
    meter: &'s Meter<'m>,
    hooks: &'s Hooks<'m>,
}

/// Chunks taken from the client's stream per read (about one datagram
/// each on QUIC): their output goes to the service in one write.
const CHUNKS: usize = 32;

/// Client to service: `first` (read past the app's handshake), then the
/// client's chunks, through the filter, counted in `from_client`. Every
/// chunk that has arrived is filtered before the output is written, so a
/// batch of many datagrams costs a few writes, not one per datagram; the
/// output is written whenever it reaches [`READ`], which bounds it.
/// Ends when the client ends, either side fails, or the filter stops.
async fn upstream<W: AsyncWrite + Unpin>(
    s: Upstream<'_, '_, W>,
    mut first: Vec<u8>,
    from_client: &mut u64,
) -> FluentEnding {
    // One output buffer for the stream: the filter appends to it, it is
    // written and cleared, so forwarding allocates nothing per record.
    let mut out = Vec::with_capacity(READ);
    let mut chunks: [bytes::Bytes; CHUNKS] = Default::default();
    loop {
        let n = if !first.is_empty() {
            chunks[0] = bytes::Bytes::from(std::mem::take(&mut first));
            1
        } else {
            match s.recv.read_chunks(&mut chunks).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    if let Err(e) = s.filter.finish() {
                        return FluentEnding::Rejected(Rejection::Invalid(e));
                    }
                    let _ = s.w.shutdown().await;
                    return FluentEnding::Clean;
                }
                Err(_) => return FluentEnding::ClientReset,
            }
        };
        *from_client += chunks.iter().take(n).map(|c| c.len() as u64).sum::<u64>();
        let mut denials = Vec::new();
        'chunks: for chunk in chunks.iter_mut().take(n) {
            let mut chunk = std::mem::take(chunk);
            // quinn may hand over reassembled data in one large chunk:
            // slices of at most READ keep the output bounded.
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(READ));
                let kept = out.len();
                match filter_chunk(s.filter, &piece, &mut out, s.hooks) {
                    Ok(d) => denials.extend(d),
                    Err(e) => {
                        // As when each piece was written on its own: what
                        // came before this piece goes out, this piece's
                        // partial output does not.
                        out.truncate(kept);
                        let _ = write_out(s.w, &mut out, s.meter).await;
                        return FluentEnding::Rejected(Rejection::Invalid(e));
                    }
                }
                if s.filter.stopped() {
                    break 'chunks;
                }
                if out.len() >= READ && !write_out(s.w, &mut out, s.meter).await {
                    return FluentEnding::ServiceReset;
                }
            }
        }
        if !write_out(s.w, &mut out, s.meter).await {
            return FluentEnding::ServiceReset;
        }
        if s.filter.stopped() {
            // Let the service ack what it has: end what it receives.
            let _ = s.w.shutdown().await;
            return FluentEnding::Rejected(Rejection::Denied(stopping_denial(denials)));
        }
    }
}

/// Writes the filter's output to the service and empties it; false if
/// the service's side failed.
async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, out: &mut Vec<u8>, meter: &Meter<'_>) -> bool {
    if out.is_empty() {
        return true;
    }
    if w.write_all(out).await.is_err() {
        return false;
    }
    (meter.received)(out.len() as u64);
    out.clear();
    // A large message's buffer is not kept for the stream's life.
    darkport_fluent::shrink_buffer(out);
    true
}

/// Feeds one chunk to the filter (output appended to `out`) and tells
/// `hooks` of the records it forwarded and the messages it denied.
fn filter_chunk(
    filter: &mut Filter,
    chunk: &[u8],
    out: &mut Vec<u8>,
    hooks: &Hooks<'_>,
) -> Result<Vec<Denial>, FluentError> {
    let before = filter.counts();
    let denials = filter.feed(chunk, out)?;
    let after = filter.counts();
    if after.records > before.records {
        (hooks.on_forward)(
            after.records - before.records,
            after.overwritten - before.overwritten,
        );
    }
    for d in &denials {
        (hooks.on_denial)(d);
    }
    Ok(denials)
}

/// The denial that stopped the filter: the last one that asked for an
/// ack, or a bare tag denial if the chunk's did not say.
fn stopping_denial(denials: Vec<Denial>) -> Denial {
    let denial = denials.into_iter().rev().find(|d| d.chunked);
    denial.unwrap_or(Denial {
        tag: String::new(),
        records: 0,
        chunked: true,
        reason: DenialReason::Tag,
    })
}

/// Service to client, untouched (the service's acks): `leftover` (read
/// past the service's PONG) first, counted in `to_client`.
async fn downstream<R: AsyncRead + Unpin>(
    r: &mut R,
    send: &mut SendHalf,
    leftover: Vec<u8>,
    meter: &Meter<'_>,
    to_client: &mut u64,
) -> FluentEnding {
    if !leftover.is_empty() {
        if send.write_all(&leftover).await.is_err() {
            return FluentEnding::ClientReset;
        }
        *to_client += leftover.len() as u64;
    }
    let mut buf = vec![0u8; READ];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                send.finish();
                return FluentEnding::Clean;
            }
            Ok(n) => {
                if send.write_all(&buf[..n]).await.is_err() {
                    return FluentEnding::ClientReset;
                }
                *to_client += n as u64;
                (meter.sent)(n as u64);
            }
            Err(_) => return FluentEnding::ServiceReset,
        }
    }
}

/// Runs both directions until both end cleanly, one fails, or `cancel`.
/// After a denied chunk, the service has [`ACK_DRAIN_TIMEOUT`] to send
/// the acks of what was forwarded before it.
async fn race(
    up: impl std::future::Future<Output = FluentEnding>,
    down: impl std::future::Future<Output = FluentEnding>,
    cancel: impl std::future::Future<Output = ()>,
) -> FluentEnding {
    tokio::pin!(up, down, cancel);
    let (mut up_end, mut down_end) = (None, None);
    loop {
        tokio::select! {
            e = &mut up, if up_end.is_none() => {
                if let FluentEnding::Rejected(why) = &e {
                    if matches!(why, Rejection::Denied(_)) {
                        // Acks of what was forwarded may still come.
                        let _ = tokio::time::timeout(ACK_DRAIN_TIMEOUT, &mut down).await;
                    }
                    break e;
                }
                if e != FluentEnding::Clean { break e; }
                up_end = Some(e);
            }
            e = &mut down, if down_end.is_none() => {
                if e != FluentEnding::Clean { break e; }
                down_end = Some(e);
            }
            _ = &mut cancel => break FluentEnding::Cut,
        }
        if up_end.is_some() && down_end.is_some() {
            break FluentEnding::Clean;
        }
    }
}

/// Ends the client's stream as `ending` says.
pub fn close(ending: &FluentEnding, send: &mut SendHalf, recv: &mut RecvHalf) {
    match ending {
        FluentEnding::Clean => {}
        FluentEnding::Rejected(_) => {
            let code = StreamCode::Rejected;
            send.finish();
            recv.stop(code);
            send.reset(code);
        }
        other => {
            let code = if *other == FluentEnding::Cut {
                StreamCode::Cut
            } else {
                StreamCode::Reset
            };
            send.reset(code);
            recv.stop(code);
        }
    }
}
