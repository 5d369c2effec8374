//! Hosted services: terminators on connections that hosters dialed out.
//!
//! A hoster (a client identity that a bind policy lets host a service)
//! opens a host stream on its connection to this router and names the
//! services it serves ([`HostRequest`]); each one a bind policy allows
//! becomes a [`Terminator`] here. It also keeps idle offer streams open
//! ([`Offer`]); a dial of a hosted service takes one, writes the
//! [`Incoming`] caller on it, waits for the hoster's answer, and splices
//! the client's stream with it. Nothing connects to the hoster: its
//! network needs no inbound rule at all.
//!
//! The layout: [`choose`] is the pure choice among terminators (table
//! tested); [`Hosting`] is the registry (by connection and by service);
//! [`Hosting::connect`] is a dial's walk through the terminators, with
//! failover; [`serve_host_stream`] is the I/O of one host stream.
//!
//! What wins when a service has an address as well: its terminators, while
//! at least one is registered on this router; the address is the fallback.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{watch, Notify};
use tracing::debug;

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::StreamCode;
use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{
    DialResponse, DialStatus, HostRequest, HostResponse, HostVerdict, HostedService, Incoming,
    Precedence, TerminatorInfo, HOSTER_ANSWER_TIMEOUT, MAX_HOSTED_SERVICES, MAX_HOST_FRAME,
    MAX_IDLE_OFFERS, MAX_INSTANCE,
};
use darkport_proto::policy::{authorize_bind, Denied, PolicySnapshot, TerminatorStrategy};
use darkport_proto::PeerIdentity;
use darkport_transport::budgeted_info_for;
use darkport_transport::limits::{Slot, SourceLogBudget};
use darkport_transport::mux::{Conn, RecvHalf, SendHalf};
use darkport_transport::unix_now;

use crate::SnapshotRx;

/// How long a dial waits for a hoster's idle offer stream (a burst of dials
/// past its idle offers waits for it to open more).
pub const OFFER_WAIT: Duration = Duration::from_secs(5);

/// Time to write an [`Incoming`] on an offer.
const INCOMING_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most terminators a dial tries before it fails.
pub const FAILOVER_ATTEMPTS: usize = 3;

/// One terminator as [`choose`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its precedence (a suspect terminator counts as failed).
    pub precedence: Precedence,
    /// The hoster's static cost.
    pub cost: u16,
    /// Round trip to the hoster, in milliseconds.
    pub rtt_ms: u32,
    /// Streams open through it.
    pub streams: u32,
    /// Stable key of (hoster, instance), for sticky choice.
    pub key: u64,
}

/// The cost the lowest-cost and weighted strategies compare: the hoster's
/// own cost, plus its round trip in milliseconds, plus two per open
/// stream (so load spreads before latency differences matter).
pub fn effective_cost(c: &Candidate) -> u64 {
    u64::from(c.cost) + u64::from(c.rtt_ms) + 2 * u64::from(c.streams)
}

/// Which of `candidates` a dial by `caller` takes under `strategy`;
/// `random` is a fresh random number. Precedence first (required, then
/// default, then failed), then the strategy among the best class.
pub fn choose(
    candidates: &[Candidate],
    strategy: TerminatorStrategy,
    caller: &str,
    random: u64,
) -> Option<usize> {
    let best = candidates.iter().map(|c| c.precedence).min()?;
    let class: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].precedence == best)
        .collect();
    let pick = match strategy {
        TerminatorStrategy::LowestCost => {
            let low = class
                .iter()
                .map(|&i| effective_cost(&candidates[i]))
                .min()?;
            let ties: Vec<usize> = class
                .into_iter()
                .filter(|&i| effective_cost(&candidates[i]) == low)
                .collect();
            ties[(random % ties.len() as u64) as usize]
        }
        TerminatorStrategy::Random => class[(random % class.len() as u64) as usize],
        TerminatorStrategy::Weighted => {
            // Weight 1,000,000 / (1 + cost): a terminator of half the cost
            // gets about twice the dials.
            let weights: Vec<u64> = class
                .iter()
                .map(|&i| 1_000_000 / (1 + effective_cost(&candidates[i])))
                .map(|w| w.max(1))
                .collect();
            let total: u64 = weights.iter().sum();
            let mut at = random % total;
            let mut pick = class[class.len() - 1];
            for (&i, &w) in class.iter().zip(&weights) {
                if at < w {
                    pick = i;
                    break;
                }
                at -= w;
            }
            pick
        }
        TerminatorStrategy::Sticky => {
            // Rendezvous hashing: each caller keeps its terminator while it
            // is up, and only callers of one that left move.
            *class
                .iter()
                .max_by_key(|&&i| stable_hash(&(caller, candidates[i].key)))?
        }
    };
    Some(pick)
}

fn stable_hash(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Verdicts on a [`HostRequest`] under `snapshot`: one per service, in
/// order. Pure; the host stream calls it on every request and snapshot.
pub fn verdicts(
    now: u64,
    snapshot: Option<&PolicySnapshot>,
    router: &IdentityName,
    peer: &PeerIdentity,
    req: &HostRequest,
) -> Vec<HostVerdict> {
    let verdict = |service: &str, status, message: String| HostVerdict {
        service: service.to_string(),
        status,
        message,
    };
    if req.services.len() > MAX_HOSTED_SERVICES
        || req.instance.len() > MAX_INSTANCE
        || req.instance.chars().any(char::is_control)
    {
        let why = format!(
            "a host request may name at most {MAX_HOSTED_SERVICES} services and an instance of at most {MAX_INSTANCE} bytes without control characters"
        );
        return req
            .services
            .iter()
            .take(MAX_HOSTED_SERVICES)
            .map(|s| verdict(&s.name, DialStatus::BadRequest, why.clone()))
            .collect();
    }
    let Some(snapshot) = snapshot else {
        let why = "the router has not received policy from the controller yet; it will answer again when it has";
        return req
            .services
            .iter()
            .map(|s| verdict(&s.name, DialStatus::NotReady, why.into()))
            .collect();
    };
    req.services
        .iter()
        .map(
            |s| match authorize_bind(snapshot, router, peer, &s.name, now) {
                Ok(_) => verdict(&s.name, DialStatus::Ok, String::new()),
                Err(d) => {
                    let status = match d {
                        Denied::UnknownService(_) => DialStatus::UnknownService,
                        Denied::RouterNotAllowed { .. } => DialStatus::WrongRouter,
                        _ => DialStatus::NotAuthorized,
                    };
                    verdict(&s.name, status, d.to_string())
                }
            },
        )
        .collect()
}

/// An idle offer stream of a hoster, with the stream slot it holds.
pub struct Offer {
    send: SendHalf,
    recv: RecvHalf,
    slot: Slot<IdentityName>,
}

/// One hoster connection.
pub struct Link {
    conn: Conn,
    /// The hoster, from its verified certificate.
    pub hoster: PeerIdentity,
    instance: Mutex<String>,
    /// Hash of (hoster, instance), kept with the instance: the sticky
    /// strategy's key, not recomputed per dial.
    key: std::sync::atomic::AtomicU64,
    offers: Mutex<VecDeque<Offer>>,
    offer_added: Notify,
    /// Set when it failed to answer in time; cleared by its next answer or
    /// request. A suspect link's terminators count as failed.
    suspect: AtomicBool,
    terminators: Mutex<Vec<Arc<Terminator>>>,
}

impl Link {
    fn instance(&self) -> String {
        lock(&self.instance).clone()
    }

    /// Takes an idle offer, waiting at most [`OFFER_WAIT`] for one.
    async fn take_offer(&self) -> Option<Offer> {
        let deadline = tokio::time::Instant::now() + OFFER_WAIT;
        loop {
            let added = self.offer_added.notified();
            if let Some(o) = lock(&self.offers).pop_front() {
                return Some(o);
            }
            if self.conn.close_reason().is_some() {
                return None;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return None;
            }
        }
    }
}

/// A terminator: (service, hoster identity, this router, instance).
pub struct Terminator {
    /// The hosted service.
    pub service: String,
    /// Its hoster's connection.
    pub link: Arc<Link>,
    cost: AtomicU16,
    precedence: AtomicU8,
    streams: AtomicU32,
    /// Set (with why) when a policy no longer lets the hoster host the
    /// service: its open streams are cut.
    cut: watch::Sender<Option<String>>,
}

impl Terminator {
    fn precedence(&self) -> Precedence {
        match self.precedence.load(Ordering::Relaxed) {
            0 => Precedence::Required,
            1 => Precedence::Default,
            _ => Precedence::Failed,
        }
    }

    fn set(&self, s: &HostedService) {
        self.cost.store(s.cost, Ordering::Relaxed);
        self.precedence.store(s.precedence as u8, Ordering::Relaxed);
    }

    /// `hoster/instance`, for log lines.
    pub fn label(&self) -> String {
        format!("{}/{}", self.link.hoster.name, self.link.instance())
    }

    /// Completes with why, once a policy no longer allows it.
    pub fn cut(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.cut.subscribe();
        async move {
            loop {
                if let Some(why) = rx.borrow_and_update().clone() {
                    return why;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    fn candidate(&self) -> Candidate {
        let precedence = if self.link.suspect.load(Ordering::Relaxed) {
            Precedence::Failed
        } else {
            self.precedence()
        };
        Candidate {
            precedence,
            cost: self.cost.load(Ordering::Relaxed),
            rtt_ms: u32::try_from(self.link.conn.rtt().as_millis()).unwrap_or(u32::MAX),
            streams: self.streams.load(Ordering::Relaxed),
            key: self.link.key.load(Ordering::Relaxed),
        }
    }
}

/// A dial's stream through a terminator: the hoster answered `Ok`.
pub struct HostedConn {
    /// To the hoster.
    pub send: SendHalf,
    /// From the hoster.
    pub recv: RecvHalf,
    /// Which terminator.
    pub terminator: Arc<Terminator>,
    /// Counts the stream on its terminator, and holds the hoster's stream
    /// slot, until dropped.
    pub held: Held,
}

/// A stream's hold on its terminator's count and its hoster's slot.
pub struct Held {
    terminator: Arc<Terminator>,
    _slot: Slot<IdentityName>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.terminator.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every terminator of this router.
#[derive(Default)]
pub struct Hosting {
    /// Hoster connections with a host stream, by connection id.
    links: DashMap<usize, Arc<Link>>,
    /// Terminators by service.
    services: DashMap<String, Vec<Arc<Terminator>>>,
    /// Woken on every change: the control session reports at once.
    changed: Notify,
    /// This router's name, for reports.
    router: std::sync::OnceLock<IdentityName>,
    /// Set when the router drains: host streams end, offers go.
    draining: watch::Sender<bool>,
}

impl std::fmt::Debug for Hosting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosting")
            .field("links", &self.links.len())
            .field("services", &self.services.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hosting {
    /// A new link for a host stream on `conn`; `None` if the connection
    /// has one already.
    pub fn open_link(&self, conn: &Conn, hoster: &PeerIdentity) -> Option<Arc<Link>> {
        let link = Arc::new(Link {
            conn: conn.clone(),
            hoster: hoster.clone(),
            instance: Mutex::new(String::new()),
            key: std::sync::atomic::AtomicU64::new(stable_hash(&(hoster.name.as_str(), ""))),
            offers: Mutex::new(VecDeque::new()),
            offer_added: Notify::new(),
            suspect: AtomicBool::new(false),
            terminators: Mutex::new(Vec::new()),
        });
        match self.links.entry(conn.stable_id()) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(v) => {
                v.insert(link.clone());
                Some(link)
            }
        }
    }

    /// Keeps an idle offer stream of connection `conn_id`; refuses it (with
    /// the answer to write) if the connection has no host stream or holds
    /// [`MAX_IDLE_OFFERS`] already.
    pub fn add_offer(
        &self,
        conn_id: usize,
        send: SendHalf,
        recv: RecvHalf,
        slot: Slot<IdentityName>,
    ) -> Result<(), Box<(SendHalf, RecvHalf, DialResponse)>> {
        let Some(link) = self.links.get(&conn_id).map(|l| l.clone()) else {
            let resp = DialResponse {
                status: DialStatus::BadRequest,
                message: "an offer stream needs a host stream on the same connection first".into(),
            };
            return Err(Box::new((send, recv, resp)));
        };
        let mut offers = lock(&link.offers);
        if *self.draining.borrow() {
            let resp = DialResponse {
                status: DialStatus::Draining,
                message: "this router is shutting down; host through another router".into(),
            };
            return Err(Box::new((send, recv, resp)));
        }
        if offers.len() >= MAX_IDLE_OFFERS {
            let resp = DialResponse {
                status: DialStatus::LimitReached,
                message: format!(
                    "at most {MAX_IDLE_OFFERS} idle offer streams per connection; open fewer"
                ),
            };
            return Err(Box::new((send, recv, resp)));
        }
        offers.push_back(Offer { send, recv, slot });
        drop(offers);
        link.offer_added.notify_one();
        Ok(())
    }

    /// Makes `allowed` the link's terminators: new ones registered, kept
    /// ones updated (their streams untouched), the rest removed; removed
    /// ones are cut with `cut_why` when it is set (a policy change), left
    /// to finish when not (the hoster withdrew them).
    fn register(&self, link: &Arc<Link>, allowed: &[HostedService], cut_why: Option<&str>) {
        let mut mine = lock(&link.terminators);
        let (keep, gone): (Vec<_>, Vec<_>) = mine
            .drain(..)
            .partition(|t| allowed.iter().any(|s| s.name == t.service));
        for t in &gone {
            self.unindex(t);
            if let Some(why) = cut_why {
                t.cut.send_replace(Some(why.to_string()));
            }
        }
        *mine = keep;
        for s in allowed {
            if let Some(t) = mine.iter().find(|t| t.service == s.name) {
                t.set(s);
                continue;
            }
            let t = Arc::new(Terminator {
                service: s.name.clone(),
                link: link.clone(),
                cost: AtomicU16::new(s.cost),
                precedence: AtomicU8::new(s.precedence as u8),
                streams: AtomicU32::new(0),
                cut: watch::channel(None).0,
            });
            self.services
                .entry(s.name.clone())
                .or_default()
                .push(t.clone());
            mine.push(t);
        }
        self.changed.notify_one();
    }

    /// Completes at the next change of the terminators.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn unindex(&self, t: &Arc<Terminator>) {
        if let dashmap::Entry::Occupied(mut e) = self.services.entry(t.service.clone()) {
            e.get_mut().retain(|x| !Arc::ptr_eq(x, t));
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Forgets connection `conn_id`'s link: its terminators go, its idle
    /// offers are dropped (reset).
    pub fn close_link(&self, conn_id: usize) {
        if let Some((_, link)) = self.links.remove(&conn_id) {
            self.register(&link, &[], None);
            lock(&link.offers).clear();
        }
    }

    /// Whether any terminator serves `service` here.
    pub fn serves(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// Terminators of `service` not yet `tried`, with their standing.
    fn candidates(&self, service: &str, tried: &[Arc<Terminator>]) -> Vec<Arc<Terminator>> {
        self.services
            .get(service)
            .map(|ts| {
                ts.iter()
                    .filter(|t| !tried.iter().any(|x| Arc::ptr_eq(x, t)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Connects a dial of `incoming.service` through a terminator, trying
    /// up to [`FAILOVER_ATTEMPTS`] of them: `Ok(None)` when the service
    /// has none here (the caller may use its address), an error saying
    /// what each tried one did when none answered `Ok`.
    pub async fn connect(
        &self,
        strategy: TerminatorStrategy,
        incoming: &Incoming,
    ) -> Result<Option<HostedConn>, String> {
        let mut tried: Vec<Arc<Terminator>> = Vec::new();
        let mut why = Vec::new();
        while tried.len() < FAILOVER_ATTEMPTS {
            let ts = self.candidates(&incoming.service, &tried);
            let cands: Vec<Candidate> = ts.iter().map(|t| t.candidate()).collect();
            let Some(i) = choose(&cands, strategy, incoming.caller.as_str(), rand::random()) else {
                break;
            };
            let t = ts[i].clone();
            tried.push(t.clone());
            match open_through(&t, incoming).await {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    debug!(terminator = %t.label(), service = %incoming.service, "terminator failed: {e}");
                    why.push(format!("{}: {e}", t.label()));
                }
            }
        }
        if tried.is_empty() {
            return Ok(None);
        }
        Err(format!("no terminator answered ({})", why.join("; ")))
    }

    /// The router is shutting down: every host stream ends (its hoster
    /// registers elsewhere), idle offers are dropped, new ones refused.
    /// Streams in flight go on.
    pub fn drain(&self) {
        self.draining.send_replace(true);
        for l in self.links.iter() {
            lock(&l.offers).clear();
        }
    }

    /// Names the router the terminators are on (once, at start).
    pub fn set_router(&self, router: IdentityName) {
        let _ = self.router.set(router);
    }

    /// The terminators, as the controller's `service show` lists them.
    pub fn report(&self) -> Vec<TerminatorInfo> {
        let mut out = Vec::new();
        let Some(router) = self.router.get() else {
            return out;
        };
        for e in self.services.iter() {
            for t in e.value() {
                out.push(TerminatorInfo {
                    service: t.service.clone(),
                    hoster: t.link.hoster.name.clone(),
                    instance: t.link.instance(),
                    router: router.clone(),
                    cost: t.cost.load(Ordering::Relaxed),
                    precedence: t.candidate().precedence,
                    streams: t.streams.load(Ordering::Relaxed),
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.service, &a.hoster, &a.instance).cmp(&(&b.service, &b.hoster, &b.instance))
        });
        out
    }

    /// Terminators per service, for the gauge.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.services
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .collect()
    }
}

/// One attempt through terminator `t`: an offer, the [`Incoming`], the
/// hoster's answer.
async fn open_through(t: &Arc<Terminator>, incoming: &Incoming) -> Result<HostedConn, String> {
    let link = &t.link;
    // Offers the hoster reset while idle fail at the write: take the next.
    for _ in 0..=MAX_IDLE_OFFERS {
        let Some(mut offer) = link.take_offer().await else {
            link.suspect.store(true, Ordering::Relaxed);
            return Err(format!("no offer stream within {} s", OFFER_WAIT.as_secs()));
        };
        let write = write_frame(&mut offer.send, incoming, MAX_DIAL_FRAME);
        match tokio::time::timeout(INCOMING_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            _ => continue,
        }
        t.streams.fetch_add(1, Ordering::Relaxed);
        let conn = HostedConn {
            send: offer.send,
            recv: offer.recv,
            terminator: t.clone(),
            held: Held {
                terminator: t.clone(),
                _slot: offer.slot,
            },
        };
        return answer(conn).await;
    }
    Err("every offer stream was gone".into())
}

/// Waits for the hoster's answer to an [`Incoming`].
async fn answer(mut conn: HostedConn) -> Result<HostedConn, String> {
    let link = conn.terminator.link.clone();
    let read = read_frame::<_, DialResponse>(&mut conn.recv, MAX_DIAL_FRAME);
    match tokio::time::timeout(HOSTER_ANSWER_TIMEOUT, read).await {
        Ok(Ok(r)) => {
            link.suspect.store(false, Ordering::Relaxed);
            if r.status == DialStatus::Ok {
                Ok(conn)
            } else {
                conn.send.reset(StreamCode::Refused);
                Err(format!("{}: {}", r.status.as_str(), r.message))
            }
        }
        Ok(Err(e)) => Err(format!("the offer stream failed: {e}")),
        Err(_) => {
            link.suspect.store(true, Ordering::Relaxed);
            conn.send.reset(StreamCode::Refused);
            Err(format!(
                "no answer within {} s",
                HOSTER_ANSWER_TIMEOUT.as_secs()
            ))
        }
    }
}

/// The services of `req` whose verdict is `Ok`: what becomes terminators.
fn allowed_services(req: &HostRequest, verdicts: &[HostVerdict]) -> Vec<HostedService> {
    req.services
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| v.status == DialStatus::Ok)
        .map(|(s, _)| s.clone())
        .collect()
}

/// The I/O of one host stream (its dial request read and answered `Ok`):
/// each [`HostRequest`] is checked against the policy, registered and
/// answered; each new snapshot re-checks the registered set, cutting the
/// streams of terminators no longer allowed and telling the hoster. Ends
/// (removing the link) when the stream or its connection ends.
pub async fn serve_host_stream(
    hosting: &Hosting,
    log: &SourceLogBudget,
    link: Arc<Link>,
    router: &IdentityName,
    mut snapshots: SnapshotRx,
    (mut send, mut recv): (SendHalf, RecvHalf),
) {
    let peer = link.hoster.clone();
    let mut draining = hosting.draining.subscribe();
    let mut current: Option<HostRequest> = None;
    let mut last: Vec<HostVerdict> = Vec::new();
    loop {
        let policy_changed = tokio::select! {
            r = read_frame::<_, HostRequest>(&mut recv, MAX_HOST_FRAME) => match r {
                Ok(req) => {
                    *lock(&link.instance) = req.instance.clone();
                    let key = stable_hash(&(peer.name.as_str(), req.instance.as_str()));
                    link.key.store(key, Ordering::Relaxed);
                    link.suspect.store(false, Ordering::Relaxed);
                    current = Some(req);
                    false
                }
                Err(e) => {
                    debug!(%peer, "host stream ended: {e}");
                    break;
                }
            },
            Ok(()) = snapshots.changed() => true,
            Ok(()) = draining.changed() => {
                debug!(%peer, "router draining: ending the host stream");
                break;
            }
        };
        let Some(req) = &current else { continue };
        let snapshot = snapshots.borrow_and_update().clone();
        let now = verdicts(unix_now(), snapshot.as_deref(), router, &peer, req);
        if policy_changed && now == last {
            continue;
        }
        let allowed = allowed_services(req, &now);
        let cut =
            policy_changed.then_some("a new policy no longer lets the hoster host the service");
        hosting.register(&link, &allowed, cut);
        // One line per request the hoster sends: within its log budget.
        budgeted_info_for!(log, peer.name.as_str(), %peer, instance = ?req.instance, services = ?allowed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), "terminators registered");
        let resp = HostResponse {
            verdicts: now.clone(),
        };
        last = now;
        let write = write_frame(&mut send, &resp, MAX_HOST_FRAME);
        if tokio::time::timeout(INCOMING_WRITE_TIMEOUT * 5, write)
            .await
            .map_or(true, |r| r.is_err())
        {
            break;
        }
    }
    hosting.close_link(link.conn.stable_id());
    send.reset(StreamCode::Reset);
    recv.stop(StreamCode::Reset);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(precedence: Precedence, cost: u16, rtt_ms: u32, streams: u32, key: u64) -> Candidate {
        Candidate {
            precedence,
            cost,
            rtt_ms,
            streams,
            key,
        }
    }

    const D: Precedence = Precedence::Default;
    const R: Precedence = Precedence::Required;
    const F: Precedence = Precedence::Failed;

    fn request(instance: &str, services: usize) -> HostRequest {
        HostRequest {
            instance: instance.into(),
            services: (0..services)
                .map(|i| HostedService {
                    name: format!("s{i}"),
                    cost: 0,
                    precedence: D,
                })
                .collect(),
        }
    }

    #[test]
    fn host_requests_past_the_bounds_or_before_a_policy_register_nothing() {
        let n = |s: &str| IdentityName::new(s).expect("name");
        let peer = PeerIdentity {
            kind: darkport_proto::identity::Kind::Client,
            name: n("host-1"),
            fingerprint: "aa".into(),
        };
        let router = n("router-1");
        let snapshot = PolicySnapshot::default();
        let statuses = |snap: Option<&PolicySnapshot>, req: &HostRequest| {
            verdicts(1, snap, &router, &peer, req)
                .into_iter()
                .map(|v| v.status)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            statuses(None, &request("a", 2)),
            vec![DialStatus::NotReady; 2]
        );
        // A peer unknown to the policy is refused; nothing is Ok.
        assert_eq!(
            statuses(Some(&snapshot), &request("a", 1)),
            vec![DialStatus::NotAuthorized]
        );
        for bad in [
            request("a\nforged log line", 1),
            request(&"i".repeat(MAX_INSTANCE + 1), 1),
        ] {
            assert_eq!(
                statuses(Some(&snapshot), &bad),
                vec![DialStatus::BadRequest]
            );
        }
        let many = statuses(Some(&snapshot), &request("a", MAX_HOSTED_SERVICES + 1));
        assert_eq!(many.len(), MAX_HOSTED_SERVICES);
        assert!(many.iter().all(|s| *s == DialStatus::BadRequest));
        let ok = |name: &str| HostVerdict {
            service: name.into(),
            status: DialStatus::Ok,
            message: String::new(),
        };
        let mut no = ok("s1");
        no.status = DialStatus::NotAuthorized;
        let allowed = allowed_services(&request("a", 3), &[ok("s0"), no, ok("s2")]);
        let names: Vec<_> = allowed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s0", "s2"]);
    }

    #[test]
    fn precedence_comes_before_cost() {
        let cands = [c(D, 0, 0, 0, 1), c(R, 1000, 50, 9, 2), c(F, 0, 0, 0, 3)];
        for s in TerminatorStrategy::ALL {
            for r in 0..20 {
                assert_eq!(choose(&cands, s, "a", r), Some(1), "{s:?}");
            }
        }
        // Failed ones only when nothing else is left.
        let cands = [c(F, 0, 0, 0, 1), c(D, 500, 0, 0, 2)];
        assert_eq!(
            choose(&cands, TerminatorStrategy::LowestCost, "a", 0),
            Some(1)
        );
        assert_eq!(
            choose(&[c(F, 0, 0, 0, 1)], TerminatorStrategy::Random, "a", 7),
            Some(0)
        );
        assert_eq!(choose(&[], TerminatorStrategy::LowestCost, "a", 0), None);
    }

    #[test]
    fn lowest_cost_counts_latency_and_load() {
        let cands = [c(D, 10, 30, 0, 1), c(D, 10, 5, 0, 2)];
        assert_eq!(
            choose(&cands, TerminatorStrategy::LowestCost, "a", 0),
            Some(1)
        );
        // Twenty open streams outweigh 25 ms.
        let cands = [c(D, 10, 30, 0, 1), c(D, 10, 5, 20, 2)];
        assert_eq!(
            choose(&cands, TerminatorStrategy::LowestCost, "a", 0),
            Some(0)
        );
        // Ties go either way with the random number.
        let cands = [c(D, 1, 0, 0, 1), c(D, 1, 0, 0, 2)];
        let picks: Vec<_> = (0..4)
            .map(|r| choose(&cands, TerminatorStrategy::LowestCost, "a", r))
            .collect();
        assert!(picks.contains(&Some(0)) && picks.contains(&Some(1)));
    }

    #[test]
    fn weighted_follows_inverse_cost() {
        let cands = [c(D, 99, 0, 0, 1), c(D, 199, 0, 0, 2)];
        let mut hits = [0u32; 2];
        for r in 0..30_000u64 {
            let i = choose(
                &cands,
                TerminatorStrategy::Weighted,
                "a",
                r.wrapping_mul(2_654_435_761),
            )
            .expect("a pick");
            hits[i] += 1;
        }
        let ratio = f64::from(hits[0]) / f64::from(hits[1]);
        assert!((1.8..2.2).contains(&ratio), "{hits:?}");
    }

    #[test]
    fn random_spreads_over_the_class() {
        let cands = [c(D, 1, 0, 0, 1), c(D, 900, 0, 0, 2), c(D, 5, 0, 0, 3)];
        let mut seen = [false; 3];
        for r in 0..30 {
            seen[choose(&cands, TerminatorStrategy::Random, "a", r).expect("pick")] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn sticky_keeps_a_caller_on_its_terminator_until_it_leaves() {
        let cands = [c(D, 1, 0, 0, 11), c(D, 1, 0, 0, 22), c(D, 1, 0, 0, 33)];
        let callers: Vec<String> = (0..60).map(|i| format!("app-{i}")).collect();
        let first: Vec<usize> = callers
            .iter()
            .map(|a| choose(&cands, TerminatorStrategy::Sticky, a, 1).expect("pick"))
            .collect();
        // Stable whatever the random number and load.
        for (a, &f) in callers.iter().zip(&first) {
            let busy = [c(D, 1, 9, 40, 11), c(D, 1, 0, 0, 22), c(D, 1, 3, 1, 33)];
            assert_eq!(choose(&busy, TerminatorStrategy::Sticky, a, 99), Some(f));
        }
        // Spread over all three.
        assert!((0..3).all(|i| first.contains(&i)));
        // Terminator 22 leaves: only its callers move.
        let left = [c(D, 1, 0, 0, 11), c(D, 1, 0, 0, 33)];
        for (a, &f) in callers.iter().zip(&first) {
            let now = choose(&left, TerminatorStrategy::Sticky, a, 1).expect("pick");
            let was = [11, 22, 33][f];
            let is = [11, 33][now];
            if was != 22 {
                assert_eq!(was, is, "{a} moved");
            }
        }
    }
}
