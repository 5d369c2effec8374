//! One router: connect, open the host stream, register, keep idle offers,
//! and start again with a backoff whenever the connection ends, until
//! the host withdraws. This is where self-healing lives: every new
//! connection registers the current set again, so a router restart costs
//! the terminators only until the next reconnect.

use std::ops::ControlFlow;
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
    let (tx, responses) = mpsc::channel(8);
    let mut reader = JoinSet::new();
    reader.spawn(read_responses(recv, tx));
    let requested = wanted.borrow_and_update().request();
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
    let stream = HostStream {
        ctx,
        router,
        offers: Offers::new(),
        verdicts: vec![],
        requested,
        withdraw_sent: None,
        heard: (conn.heard(), Instant::now()),
        asked: Instant::now(),
        reader,
        responses,
        up_since,
        send,
        conn,
    };
    stream.drive(wanted).await
}

/// How a host stream that is up ends.
enum End {
    /// With this outcome, and nothing more to do: dropping the
    /// [`HostStream`] resets the host stream.
    Over(Outcome),
    /// The router acknowledged the withdrawal.
    Acknowledged,
    /// The router did not acknowledge the withdrawal within
    /// [`WITHDRAW_TIMEOUT`].
    Unacknowledged,
}

/// A connection whose host stream is up: what was asked and answered on
/// it, and the connection's idle offers. Its fields drop in the order
/// written: the offers first, then the host stream (a drop resets it,
/// which removes the terminators), and the connection last.
struct HostStream<'a> {
    ctx: &'a Ctx,
    router: &'a str,
    offers: Offers,
    /// The router's latest verdict per service.
    verdicts: Vec<HostVerdict>,
    /// What the last request sent asked for.
    requested: Vec<HostedService>,
    /// When the withdrawal (an empty request) was sent.
    withdraw_sent: Option<Instant>,
    /// The connection's receive count, and when it last moved.
    heard: (u64, Instant),
    /// When the request was last sent again for lack of a registration.
    asked: Instant,
    /// Reads the host stream into `responses`, and says how it ended.
    reader: JoinSet<String>,
    responses: mpsc::Receiver<HostResponse>,
    up_since: Instant,
    send: SendHalf,
    conn: Conn,
}

impl HostStream<'_> {
    /// Keeps the idle offers and answers the host, the router, the offers
    /// and the clock until the connection ends.
    async fn drive(mut self, wanted: &mut watch::Receiver<Wanted>) -> Outcome {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let target = self.offer_target(wanted.borrow().withdrawn);
            self.offers.fill(&self.conn, self.router, target);
            self.ctx
                .shared
                .set_idle(self.router, self.offers.tasks.len());
            let step = tokio::select! {
                r = wanted.changed() => match r {
                    // The host is gone.
                    Err(_) => ControlFlow::Break(End::Over(Outcome::Withdrawn)),
                    Ok(()) => self.on_wanted(wanted).await,
                },
                r = self.responses.recv() => self.on_response(r).await,
                Some(done) = self.offers.tasks.join_next(), if !self.offers.tasks.is_empty() => {
                    if let Ok((end, opened)) = done {
                        offer_ended(self.ctx, self.router, end, opened, &mut self.offers);
                    }
                    ControlFlow::Continue(())
                }
                _ = tokio::time::sleep_until(self.offers.hold_until), if self.offers.tasks.len() < target => {
                    ControlFlow::Continue(())
                }
                _ = tick.tick() => self.on_tick().await,
            };
            if let ControlFlow::Break(end) = step {
                return self.end(end).await;
            }
        }
    }

    /// How many idle offers to keep.
    fn offer_target(&self, withdrawn: bool) -> usize {
        if wants_offers(withdrawn, &self.verdicts) {
            self.ctx.shared.offers
        } else {
            0
        }
    }

    /// The host's wanted set changed: sends it when the request differs,
    /// and the withdrawal once.
    async fn on_wanted(&mut self, wanted: &mut watch::Receiver<Wanted>) -> ControlFlow<End> {
        let now = wanted.borrow_and_update().request();
        if now != self.requested || (wanted.borrow().withdrawn && self.withdraw_sent.is_none()) {
            if wanted.borrow().withdrawn {
                self.withdraw_sent = Some(Instant::now());
                info!(router = self.router, "withdrawing every terminator");
            }
            self.requested = now;
            return self.send_requested().await;
        }
        ControlFlow::Continue(())
    }

    /// A response from the router (`None`: the host stream ended): its
    /// verdicts, and whether it acknowledges the withdrawal.
    async fn on_response(&mut self, resp: Option<HostResponse>) -> ControlFlow<End> {
        let Some(resp) = resp else {
            let why = match self.reader.join_next().await {
                Some(Ok(why)) => why,
                _ => "host stream ended".into(),
            };
            return self.down(why);
        };
        let acknowledges = answers(&self.requested, &resp);
        self.verdicts = apply(
            self.router,
            std::mem::take(&mut self.verdicts),
            resp,
            acknowledges,
        );
        self.ctx.shared.set_verdicts(self.router, &self.verdicts);
        if acknowledges && self.withdraw_sent.is_some() && self.requested.is_empty() {
            return ControlFlow::Break(End::Acknowledged);
        }
        ControlFlow::Continue(())
    }

    /// Every second: the connection's liveness, the withdrawal's timeout,
    /// and asking again while nothing is registered.
    async fn on_tick(&mut self) -> ControlFlow<End> {
        let now = Instant::now();
        self.check_alive(now)?;
        if let Some(t) = self.withdraw_sent {
            if now - t >= WITHDRAW_TIMEOUT {
                return ControlFlow::Break(End::Unacknowledged);
            }
        } else if !wants_offers(false, &self.verdicts) && now - self.asked >= ASK_AGAIN {
            self.asked = now;
            return self.send_requested().await;
        }
        ControlFlow::Continue(())
    }

    /// Ends a connection that heard nothing for [`DEAD_AFTER`], or that
    /// ended.
    fn check_alive(&mut self, now: Instant) -> ControlFlow<End> {
        let rx = self.conn.heard();
        if rx != self.heard.0 {
            self.heard = (rx, now);
        } else if now - self.heard.1 >= DEAD_AFTER {
            self.conn.close(CloseCode::Done, b"router silent");
            return self.down(format!("nothing heard from the router for {DEAD_AFTER:?}"));
        }
        if let Some(end) = self.conn.close_reason() {
            return self.down(format!("connection ended: {end}"));
        }
        ControlFlow::Continue(())
    }

    /// Sends `requested`; the connection is down when that fails.
    async fn send_requested(&mut self) -> ControlFlow<End> {
        match send_request(&mut self.send, &self.ctx.shared.instance, &self.requested).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => self.down(e),
        }
    }

    /// The connection is down for `reason`.
    fn down(&self, reason: String) -> ControlFlow<End> {
        ControlFlow::Break(End::Over(Outcome::Down {
            reason,
            up: self.up_since.elapsed(),
        }))
    }

    /// The last steps of the host stream.
    async fn end(mut self, end: End) -> Outcome {
        let (ctx, router) = (self.ctx, self.router);
        match end {
            End::Over(outcome) => return outcome,
            End::Acknowledged => {
                info!(router, "withdrawal acknowledged");
                ctx.shared
                    .set_state(router, RouterState::Withdrawn { acknowledged: true });
                close_offers(ctx, router, &self.conn, self.offers).await;
                // A clean end: nothing is left to remove.
                self.send.finish();
            }
            End::Unacknowledged => {
                warn!(router, "the router did not acknowledge the withdrawal within {WITHDRAW_TIMEOUT:?}; closing the host stream, which removes the terminators too");
                self.send.reset(StreamCode::Refused);
                close_offers(ctx, router, &self.conn, self.offers).await;
                ctx.shared.set_state(
                    router,
                    RouterState::Withdrawn {
                        acknowledged: false,
                    },
                );
            }
        }
        Outcome::Withdrawn
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
