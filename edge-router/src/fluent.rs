//! fluent-forward services: the router speaks Fluentd's forward protocol
//! between the client's stream and the service.
//!
//! Client to service, every message goes through `darkport_fluent::Filter`:
//! framed, checked against the policies' tag patterns, each record stamped
//! with the verified sender, sent on as PackedForward with its `chunk`
//! kept. Service to client, bytes are copied untouched: they are the
//! service's `{"ack": chunk}` answers, so a client is acked only by the
//! service, only for what the service stored.
//!
//! With a shared key, the router does the `<security>` handshake with the
//! service (HELO, PING, PONG) before it answers the dial: a service that
//! refuses the key makes the dial fail with `ServiceUnreachable`. Clients
//! never see the key and speak the protocol without security: their
//! identity is the verified certificate.

use std::time::Duration;

use darkport_transport::mux::{RecvHalf, SendHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use darkport_fluent::handshake::{Helo, Ping, Pong, MAX_HANDSHAKE};
use darkport_fluent::{scan, Filter, Limits, Stamp, StampValue, TagRules};
use darkport_proto::codes::StreamCode;
use darkport_proto::identity::IdentityName;
use darkport_proto::policy::FluentSettings;
use darkport_transport::splice::Meter;

/// Time the service has for each handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a denied chunk, how long the service has to ack what it already
/// has before the stream ends.
pub const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from either side at a time.
const READ: usize = 64 * 1024;

/// How one fluent-forward stream is handled: built at dial time from the
/// service's settings and the permit.
pub struct Plan {
    stamp: Stamp,
    tags: Option<TagRules>,
    shared_key: Option<String>,
}

impl Plan {
    /// The plan for `identity` (with `roles`) through `router`, under the
    /// tag patterns of the policies that allowed it (`None`: any tag).
    pub fn new(
        settings: &FluentSettings,
        identity: &IdentityName,
        roles: &[IdentityName],
        router: &IdentityName,
        tags: Option<Vec<&str>>,
    ) -> Result<Plan, String> {
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
            .transpose()
            .map_err(|e| format!("the policy's tag patterns do not compile: {e}"))?;
        Ok(Plan {
            stamp: Stamp::new(&fields),
            tags,
            shared_key: settings.shared_key.clone(),
        })
    }
}

/// Reads one msgpack value (a handshake message) from `tcp`.
async fn read_message(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    loop {
        if let Some(n) = scan::value_len(buf).map_err(|e| e.to_string())? {
            let msg = buf[..n].to_vec();
            buf.drain(..n);
            return Ok(msg);
        }
        if buf.len() > MAX_HANDSHAKE {
            return Err(format!("handshake message over {MAX_HANDSHAKE} bytes"));
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.read(&mut chunk))
            .await
            .map_err(|_| {
                format!(
                    "no handshake message within {} s (is <security> with a shared_key on at the service?)",
                    HANDSHAKE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the service closed the connection during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The `<security>` handshake with the service, as its client; returns
/// whatever the service sent after the PONG (normally nothing).
pub async fn handshake(
    tcp: &mut TcpStream,
    plan: &Plan,
    router: &IdentityName,
) -> Result<Vec<u8>, String> {
    let Some(key) = &plan.shared_key else {
        return Ok(Vec::new());
    };
    let mut buf = Vec::new();
    let helo = Helo::parse(&read_message(tcp, &mut buf).await?).map_err(|e| e.to_string())?;
    if !helo.auth.is_empty() {
        return Err("the service asks for user authentication (<user> in <security>), which Darkport does not support; use the shared key alone".into());
    }
    let salt: [u8; 16] = rand::random();
    let ping = Ping::new(&helo, router.as_str(), &salt, key);
    tcp.write_all(&ping.encode())
        .await
        .map_err(|e| format!("sending PING: {e}"))?;
    let pong = Pong::parse(&read_message(tcp, &mut buf).await?).map_err(|e| e.to_string())?;
    pong.check(&helo, &ping, key).map_err(|e| e.to_string())?;
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
    /// The router refused the client's data; why.
    Rejected(String),
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

/// Runs a fluent-forward stream until both sides end, one fails, the
/// client's data is refused, or `cancel`. `on_denial` hears of each denied
/// message, `on_forward` of records forwarded and keys overwritten as they
/// go (for logs and live metrics).
#[allow(clippy::too_many_arguments)]
pub async fn splice(
    tcp: TcpStream,
    mut send: SendHalf,
    mut recv: RecvHalf,
    leftover: Vec<u8>,
    plan: Plan,
    cancel: impl std::future::Future<Output = ()>,
    meter: &Meter<'_>,
    on_denial: &(dyn Fn(&darkport_fluent::Denial) + Sync),
    on_forward: &(dyn Fn(u64, u64) + Sync),
) -> FluentStats {
    let _ = tcp.set_nodelay(true);
    darkport_transport::splice::abort_on_drop(&tcp);
    let (mut r, mut w) = tcp.into_split();
    let mut filter = Filter::new(plan.stamp, plan.tags, Limits::default());
    let mut from_client = 0u64;
    let mut to_client = 0u64;
    let ending = {
        let up = async {
            let mut out = Vec::with_capacity(READ);
            loop {
                let chunk = match recv.read_chunk(READ).await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        if let Err(e) = filter.finish() {
                            return FluentEnding::Rejected(e.to_string());
                        }
                        let _ = w.shutdown().await;
                        return FluentEnding::Clean;
                    }
                    Err(_) => return FluentEnding::ClientReset,
                };
                from_client += chunk.len() as u64;
                filter.push(&chunk);
                let before = filter.counts();
                let denials = match filter.process(&mut out) {
                    Ok(d) => d,
                    Err(e) => return FluentEnding::Rejected(e.to_string()),
                };
                let after = filter.counts();
                if after.records > before.records {
                    on_forward(
                        after.records - before.records,
                        after.overwritten - before.overwritten,
                    );
                }
                for d in &denials {
                    on_denial(d);
                }
                if !out.is_empty() {
                    if w.write_all(&out).await.is_err() {
                        return FluentEnding::ServiceReset;
                    }
                    (meter.received)(out.len() as u64);
                    out.clear();
                }
                if filter.stopped() {
                    let tag = denials
                        .iter()
                        .rev()
                        .find(|d| d.chunked)
                        .map(|d| d.tag.clone())
                        .unwrap_or_default();
                    // Let the service ack what it has: end what it receives.
                    let _ = w.shutdown().await;
                    return FluentEnding::Rejected(format!(
                    "tag {tag:?} is not allowed for this identity, and the message asked for an ack"
                ));
                }
            }
        };
        let down = async {
            if !leftover.is_empty() {
                if send.write_all(&leftover).await.is_err() {
                    return FluentEnding::ClientReset;
                }
                to_client += leftover.len() as u64;
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
                        to_client += n as u64;
                        (meter.sent)(n as u64);
                    }
                    Err(_) => return FluentEnding::ServiceReset,
                }
            }
        };
        tokio::pin!(up, down, cancel);
        let (mut up_end, mut down_end) = (None, None);
        loop {
            tokio::select! {
                e = &mut up, if up_end.is_none() => {
                    if let FluentEnding::Rejected(_) = &e {
                        if filter_stopped_gracefully(&e) {
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
    };
    match &ending {
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
    if let Ok(tcp) = r.reunite(w) {
        if ending == FluentEnding::Clean {
            let _ = socket2::SockRef::from(&tcp).set_linger(None);
        } else {
            darkport_transport::splice::reset_tcp(tcp);
        }
    }
    FluentStats {
        from_client,
        to_client,
        counts: filter.counts(),
        ending,
    }
}

/// Whether the data was refused because of a denied chunk (the service
/// may still ack earlier chunks) rather than bad data.
fn filter_stopped_gracefully(e: &FluentEnding) -> bool {
    matches!(e, FluentEnding::Rejected(why) if why.starts_with("tag "))
}
