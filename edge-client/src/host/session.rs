//! One router: connect, open the host stream, register, keep idle offers,
//! and start again with a backoff whenever the connection ends, until
//! the host withdraws. This is where self-healing lives: every new
//! connection registers the current set again, so a router restart costs
//! the terminators only until the next reconnect.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::{CloseCode, StreamCode};
use darkport_proto::msg::{
    DialRequest, DialResponse, DialStatus, HostRequest, HostResponse, HostVerdict, HostedService,
    HOST_STREAM, MAX_HOST_FRAME,
};
use darkport_transport::mux::{Conn, RecvHalf, SendHalf};

use super::offer::{offer, OfferEnd};
use super::state::{answers, replace_after, wants_offers, Backoff};
use super::{Ctx, RouterState, Wanted, WITHDRAW_TIMEOUT};
use crate::client::{Configs, DIAL_TIMEOUT};
use crate::pool::DEAD_AFTER;

/// Time to connect to a router (both transports, in auto mode).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a frame on the host stream may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// While no service is registered on a router, the request is sent again
/// this often, so a bind policy created later is picked up even by a
/// router that only tells of verdicts it revokes.
const ASK_AGAIN: Duration = Duration::from_secs(30);

/// After the withdrawal is acknowledged, idle offers are kept this long
/// (at least; four round trips when that is more) before they are
/// closed: a dial the router gave an offer just before it took the
/// withdrawal may still be on its way, on another stream, and is served.
const SETTLE: Duration = Duration::from_millis(250);

/// Time the offers' tasks have to end once closed.
const OFFERS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection to a router ended.
enum Outcome {
    /// The host withdrew: this router is done.
    Withdrawn,
    /// The connection could not be made or ended; `up` is how long it was
    /// registered.
    Down { reason: String, up: Duration },
}

/// Runs one router's session until the host withdraws.
pub(super) async fn run(ctx: Arc<Ctx>, router: String) {
    let mut backoff = Backoff::default();
    let mut wanted = ctx.shared.wanted.subscribe();
    let mut failures = 0u32;
    loop {
        if wanted.borrow().withdrawn {
            ctx.shared.mark_withdrawn(&router);
            return;
        }
        ctx.shared.set_state(&router, RouterState::Connecting);
        let connected = tokio::select! {
            c = connect(&ctx, &router) => Some(c),
            _ = wanted.wait_for(|w| w.withdrawn) => None,
        };
        let outcome = match connected {
            None => Outcome::Withdrawn,
            Some(Ok(conn)) => serve(&ctx, &router, conn, &mut wanted).await,
            Some(Err(reason)) => Outcome::Down {
                reason,
                up: Duration::ZERO,
            },
        };
        let (reason, up) = match outcome {
            Outcome::Withdrawn => {
                ctx.shared.mark_withdrawn(&router);
                return;
            }
            Outcome::Down { reason, up } => (reason, up),
        };
        backoff.after_session(up);
        let wait = backoff.next(jitter());
        // A connection that ends, or the first failure in a row, is worth
        // a warning; the retries of a router that stays down are not.
        if !up.is_zero() || failures == 0 {
            warn!(
                router,
                "hosting through this router stopped: {reason}; reconnecting in {wait:?}"
            );
        } else {
            debug!(
                router,
                "still cannot host through this router: {reason}; again in {wait:?}"
            );
        }
        failures = if up.is_zero() { failures + 1 } else { 1 };
        ctx.shared.set_state(&router, RouterState::Down(reason));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wanted.wait_for(|w| w.withdrawn) => {}
        }
    }
}

/// A number in `[0, 1)` that differs between calls and processes.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

async fn connect(ctx: &Ctx, router: &str) -> Result<Conn, String> {
    let identity = ctx.identity.borrow().clone();
    let configs = Configs::new(&identity).map_err(|e| e.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT, ctx.connector.connect(&configs, router)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Opens the host stream: the request, and the router's answer.
async fn open_host_stream(conn: &Conn) -> Result<(SendHalf, RecvHalf), String> {
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &DialRequest::new(HOST_STREAM), MAX_DIAL_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        let resp: DialResponse = read_frame(&mut recv, MAX_DIAL_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv, resp))
    };
    let (send, recv, resp) = tokio::time::timeout(DIAL_TIMEOUT, opened)
        .await
        .map_err(|_| {
            format!(
                "no answer to the host stream within {} s",
                DIAL_TIMEOUT.as_secs()
            )
        })??;
    match resp.status {
        DialStatus::Ok => Ok((send, recv)),
        // A router older than hosting (protocol 5) takes "@host" for an
        // invalid service name.
        status @ (DialStatus::BadRequest | DialStatus::UnknownService) => Err(format!(
            "the router refused the host stream ({status:?}: {}); a router older than protocol version 5 does not host services",
            resp.message
        )),
        status => Err(format!(
            "the router refused the host stream: {status:?}: {}",
            resp.message
        )),
    }
}

/// Reads the router's [`HostResponse`]s into `tx` until the host stream
/// ends; says how it ended.
async fn read_responses(mut recv: RecvHalf, tx: mpsc::Sender<HostResponse>) -> String {
    loop {
        match read_frame::<_, HostResponse>(&mut recv, MAX_HOST_FRAME).await {
            Ok(r) => {
                if tx.send(r).await.is_err() {
                    return "closed here".into();
                }
            }
            Err(e) => return format!("host stream ended: {e}"),
        }
    }
}

async fn send_request(
    send: &mut SendHalf,
    instance: &str,
    services: &[HostedService],
) -> Result<(), String> {
    let req = HostRequest {
        instance: instance.to_string(),
        services: services.to_vec(),
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write_frame(send, &req, MAX_HOST_FRAME)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot send the host request: {e}")),
        Err(_) => Err(format!(
            "cannot send the host request within {} s",
            WRITE_TIMEOUT.as_secs()
        )),
    }
}

/// The idle offers of one connection.
struct Offers {
    tasks: JoinSet<(OfferEnd, Instant)>,
    /// Turns true to close the idle ones.
    close: watch::Sender<bool>,
    /// No new offer before this (a router that refused them lately).
    hold_until: Instant,
}

impl Offers {
    fn new() -> Offers {
        Offers {
            tasks: JoinSet::new(),
            close: watch::Sender::new(false),
            hold_until: Instant::now(),
        }
    }

    /// Opens offers up to `target`, unless held back.
    fn fill(&mut self, conn: &Conn, router: &str, target: usize) {
        if Instant::now() < self.hold_until {
            return;
        }
        while self.tasks.len() < target {
            let (conn, router, close) = (conn.clone(), router.to_string(), self.close.subscribe());
            self.tasks.spawn(async move {
                let opened = Instant::now();
                (offer(conn, router, close).await, opened)
            });
        }
    }
}

/// Serves one connection until it ends (`Down`) or the host withdrew and
/// the router acknowledged it (`Withdrawn`).
async fn serve(
    ctx: &Ctx,
    router: &str,
    conn: Conn,
    wanted: &mut watch::Receiver<Wanted>,
) -> Outcome {
    let down = |reason: String, up: Duration| Outcome::Down { reason, up };
    if wanted.borrow().withdrawn {
        return Outcome::Withdrawn;
    }
    let (mut send, recv) = match open_host_stream(&conn).await {
        Ok(h) => h,
        Err(e) => {
            conn.close(CloseCode::Done, b"no host stream");
            return down(e, Duration::ZERO);
        }
    };
    let up_since = Instant::now();
    let (tx, mut responses) = mpsc::channel(8);
    let mut reader = JoinSet::new();
    reader.spawn(read_responses(recv, tx));
    let mut requested = wanted.borrow_and_update().request();
    if wanted.borrow().withdrawn {
        // Withdrawn while the host stream was opening: nothing to register,
        // and nothing to take back.
        return Outcome::Withdrawn;
    }
    if let Err(e) = send_request(&mut send, &ctx.shared.instance, &requested).await {
        return down(e, Duration::ZERO);
    }
    info!(router, transport = %conn.transport(), "host stream up; registering {} service(s)", requested.len());
    ctx.shared.set_up(router, conn.transport());
    let mut verdicts: Vec<HostVerdict> = vec![];
    let mut offers = Offers::new();
    let mut withdraw_sent: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut heard = (conn.heard(), Instant::now());
    let mut asked = Instant::now();
    loop {
        let withdrawn = wanted.borrow().withdrawn;
        let target = if wants_offers(withdrawn, &verdicts) {
            ctx.shared.offers
        } else {
            0
        };
        offers.fill(&conn, router, target);
        ctx.shared.set_idle(router, offers.tasks.len());
        tokio::select! {
            r = wanted.changed() => {
                if r.is_err() {
                    // The host is gone.
                    return Outcome::Withdrawn;
                }
                let now = wanted.borrow_and_update().request();
                if now != requested || (wanted.borrow().withdrawn && withdraw_sent.is_none()) {
                    if wanted.borrow().withdrawn {
                        withdraw_sent = Some(Instant::now());
                        info!(router, "withdrawing every terminator");
                    }
                    requested = now;
                    if let Err(e) = send_request(&mut send, &ctx.shared.instance, &requested).await {
                        return down(e, up_since.elapsed());
                    }
                }
            }
            r = responses.recv() => {
                let Some(resp) = r else {
                    let why = match reader.join_next().await {
                        Some(Ok(why)) => why,
                        _ => "host stream ended".into(),
                    };
                    return down(why, up_since.elapsed());
                };
                let acknowledges = answers(&requested, &resp);
                verdicts = apply(router, std::mem::take(&mut verdicts), resp, acknowledges);
                ctx.shared.set_verdicts(router, &verdicts);
                if acknowledges && withdraw_sent.is_some() && requested.is_empty() {
                    info!(router, "withdrawal acknowledged");
                    ctx.shared.set_state(router, RouterState::Withdrawn { acknowledged: true });
                    close_offers(ctx, router, &conn, offers).await;
                    // A clean end: nothing is left to remove.
                    send.finish();
                    return Outcome::Withdrawn;
                }
            }
            Some(done) = offers.tasks.join_next(), if !offers.tasks.is_empty() => {
                if let Ok((end, opened)) = done {
                    offer_ended(ctx, router, end, opened, &mut offers);
                }
            }
            _ = tokio::time::sleep_until(offers.hold_until), if offers.tasks.len() < target => {}
            _ = tick.tick() => {
                let now = Instant::now();
                let rx = conn.heard();
                if rx != heard.0 {
                    heard = (rx, now);
                } else if now - heard.1 >= DEAD_AFTER {
                    conn.close(CloseCode::Done, b"router silent");
                    return down(format!("nothing heard from the router for {DEAD_AFTER:?}"), up_since.elapsed());
                }
                if let Some(end) = conn.close_reason() {
                    return down(format!("connection ended: {end}"), up_since.elapsed());
                }
                if let Some(t) = withdraw_sent {
                    if now - t >= WITHDRAW_TIMEOUT {
                        warn!(router, "the router did not acknowledge the withdrawal within {WITHDRAW_TIMEOUT:?}; closing the host stream, which removes the terminators too");
                        send.reset(StreamCode::Refused);
                        close_offers(ctx, router, &conn, offers).await;
                        ctx.shared.set_state(router, RouterState::Withdrawn { acknowledged: false });
                        return Outcome::Withdrawn;
                    }
                } else if !wants_offers(false, &verdicts) && now - asked >= ASK_AGAIN {
                    asked = now;
                    if let Err(e) = send_request(&mut send, &ctx.shared.instance, &requested).await {
                        return down(e, up_since.elapsed());
                    }
                }
            }
        }
    }
}

/// Hands a dial to the host, or notes why an idle offer ended.
fn offer_ended(ctx: &Ctx, router: &str, end: OfferEnd, opened: Instant, offers: &mut Offers) {
    match end {
        OfferEnd::Incoming(stream) => {
            debug!(router, service = stream.service(), caller = %stream.caller().identity, "incoming stream");
            if let Err(stream) = ctx.shared.inbox.push(*stream) {
                // Full (the app does not accept fast enough) or closed:
                // the caller is told at once rather than after the
                // router's timeout.
                let backlog = ctx.shared.inbox.len();
                tokio::spawn(async move {
                    let _ = stream
                        .refuse(&format!(
                            "the hoster has {backlog} streams waiting to be accepted"
                        ))
                        .await;
                });
            }
        }
        OfferEnd::Refused(status, message) => {
            warn!(router, "the router refused an offer: {status:?}: {message}");
            offers.hold_until = Instant::now() + replace_after(opened.elapsed());
        }
        OfferEnd::Ended(why) => {
            if let Some(why) = why {
                debug!(router, "an idle offer ended: {why}");
            }
            offers.hold_until = offers
                .hold_until
                .max(Instant::now() + replace_after(opened.elapsed()));
        }
    }
}

/// After the withdrawal: waits [`SETTLE`] for dials already on their way
/// (served as usual), then closes the idle offers.
async fn close_offers(ctx: &Ctx, router: &str, conn: &Conn, mut offers: Offers) {
    let settle = SETTLE.max(conn.rtt() * 4);
    let until = Instant::now() + settle;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            Some(done) = offers.tasks.join_next(), if !offers.tasks.is_empty() => {
                if let Ok((end, opened)) = done {
                    offer_ended(ctx, router, end, opened, &mut offers);
                }
            }
        }
    }
    offers.close.send_replace(true);
    let closing = async {
        while let Some(done) = offers.tasks.join_next().await {
            if let Ok((end, opened)) = done {
                offer_ended(ctx, router, end, opened, &mut offers);
            }
        }
    };
    let _ = tokio::time::timeout(OFFERS_CLOSE_TIMEOUT, closing).await;
    ctx.shared.set_idle(router, 0);
}

/// The verdicts after `resp`: its own when it answers the request in
/// full, else the previous ones updated by service name. Each change is
/// logged.
fn apply(
    router: &str,
    before: Vec<HostVerdict>,
    resp: HostResponse,
    whole: bool,
) -> Vec<HostVerdict> {
    for v in &resp.verdicts {
        let old = before.iter().find(|b| b.service == v.service);
        if old.map(|o| o.status) == Some(v.status) {
            continue;
        }
        if v.status == DialStatus::Ok {
            info!(router, service = %v.service, "terminator registered");
        } else {
            warn!(router, service = %v.service, status = ?v.status, "the router does not take this terminator: {}", v.message);
        }
    }
    if whole {
        return resp.verdicts;
    }
    let mut out = before;
    for v in resp.verdicts {
        match out.iter_mut().find(|o| o.service == v.service) {
            Some(o) => *o = v,
            None => out.push(v),
        }
    }
    out
}
