//! The client's router pool as plain state: which routers to connect to,
//! which connection a dial tries first, when the router list is stale and
//! when a silent connection is taken for dead.
//!
//! Every decision here is a function of the state, the time (passed in,
//! never read from the clock) and what happened, in the manner of
//! quinn-proto: no sockets, no runtime, no transport types. Connections are
//! held as an opaque [`Link`], so the failover rules can be tested in
//! virtual time with fake links, and the async shell in [`crate::client`]
//! only carries out what this module decides.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use darkport_proto::msg::RouterInfo;

/// How long a router list from the controller is used before asking again.
pub const ROUTER_LIST_TTL: Duration = Duration::from_secs(30);

/// After a failed refresh (or while one is under way), ask the controller
/// again this soon.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// An empty router list from the controller is asked for again this soon:
/// the client may have started before its routers.
pub const EMPTY_LIST_RETRY: Duration = Duration::from_secs(1);

/// A connection that receives nothing for this long (two and a half
/// keep-alive intervals) is taken for dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// A router that refused this identity is not tried again for this long
/// by the background maintenance (a dial may still try it).
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// A router that could not be reached is retried after this long.
pub const UNREACHABLE_RETRY: Duration = Duration::from_secs(2);

/// An id unique among live connections.
pub type ConnId = usize;

/// What the pool needs to see of a router connection; the transport's
/// connection implements it in the shell, tests use a fake.
pub trait Link: Clone {
    /// The connection's id, unique among live connections.
    fn id(&self) -> ConnId;
    /// Current round-trip time estimate: dials go to the lowest first.
    fn rtt(&self) -> Duration;
    /// A count that moves whenever anything arrives from the router.
    fn heard(&self) -> u64;
    /// How the connection ended; `None` while it is open.
    fn ended(&self) -> Option<Ended>;
}

/// How a connection ended, as far as the pool cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The router closed it because it will not serve this identity (now):
    /// forbidden, revoked, itself revoked, or at a limit.
    Refused,
    /// Any other end (lost, closed by us, closed by the router).
    Closed,
}

/// A router the client may use, and which of its services it serves
/// (`None`: unknown, try it for anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `host:port`.
    pub addr: String,
    /// Services it serves this identity, when the controller said.
    pub services: Option<Vec<String>>,
}

/// The controller's router list in the order routers are tried: online
/// routers first, and among those the ones serving more services; offline
/// ones stay as a last resort (the controller may be the one that is down).
pub fn candidates_from(list: &[RouterInfo]) -> Vec<Candidate> {
    let mut list: Vec<&RouterInfo> = list.iter().collect();
    list.sort_by_key(|r| (!r.online, std::cmp::Reverse(r.services.len())));
    list.into_iter()
        .map(|r| Candidate {
            addr: r.advertise.clone(),
            services: Some(r.services.iter().map(|s| s.to_string()).collect()),
        })
        .collect()
}

/// Who asks which routers to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// A dial waiting for a connection: it tries every router, even one
    /// that refused lately, since a refusal it can report beats "no router".
    Dial,
    /// The background maintenance: it leaves alone routers that refused or
    /// could not be reached until their retry time.
    Background,
}

/// One connection in the pool.
#[derive(Debug)]
struct Slot<L> {
    router: String,
    link: L,
    /// The last [`Link::heard`] count seen and when it was first seen;
    /// `None` until the maintenance has looked at the connection once.
    heard: Option<(u64, Instant)>,
}

/// The pool's state: known routers, when their list was fetched, routers
/// not to retry yet, and the connections with their liveness records.
#[derive(Debug)]
pub struct PoolState<L> {
    /// The routers were configured by address: the list is never fetched.
    fixed: bool,
    /// Known routers, in order of preference.
    routers: Vec<Candidate>,
    /// When `routers` came from the controller (or a time set so that it
    /// is asked again soon).
    fetched: Option<Instant>,
    /// Routers the maintenance does not try again before the given time.
    retry_after: HashMap<String, Instant>,
    /// Connections, in the order they joined.
    conns: Vec<Slot<L>>,
}

impl<L: Link> PoolState<L> {
    /// A pool for the routers given by address, or (none given) for the
    /// controller's list, fetched when first needed.
    pub fn new(configured: &[String]) -> Self {
        PoolState {
            fixed: !configured.is_empty(),
            routers: configured
                .iter()
                .map(|a| Candidate {
                    addr: a.clone(),
                    services: None,
                })
                .collect(),
            fetched: None,
            retry_after: HashMap::new(),
            conns: vec![],
        }
    }

    /// Whether the router list should be fetched (again) at `now`: never
    /// for configured routers; soon ([`EMPTY_LIST_RETRY`]) for an empty
    /// list, else after [`ROUTER_LIST_TTL`].
    pub fn list_stale(&self, now: Instant) -> bool {
        if self.fixed {
            return false;
        }
        let ttl = if self.routers.is_empty() {
            EMPTY_LIST_RETRY
        } else {
            ROUTER_LIST_TTL
        };
        self.fetched
            .is_none_or(|t| now.saturating_duration_since(t) >= ttl)
    }

    /// Whether the maintenance has nothing to do at `now`: no routers yet,
    /// and either no dial has asked for them or the empty answer is too
    /// recent to ask again.
    pub fn idle(&self, now: Instant) -> bool {
        self.routers.is_empty() && !(self.fetched.is_some() && self.list_stale(now))
    }

    /// Whether any router is known.
    pub fn has_routers(&self) -> bool {
        !self.routers.is_empty()
    }

    /// Takes the controller's router list, fetched at `now`. Connections to
    /// routers it no longer lists (deleted, revoked) leave the pool and are
    /// returned, to be closed.
    pub fn on_router_list(&mut self, list: &[RouterInfo], now: Instant) -> Vec<L> {
        self.routers = candidates_from(list);
        self.fetched = Some(now);
        let routers = &self.routers;
        let (keep, gone) = std::mem::take(&mut self.conns)
            .into_iter()
            .partition(|s| routers.iter().any(|r| r.addr == s.router));
        self.conns = keep;
        gone.into_iter().map(|s: Slot<L>| s.link).collect()
    }

    /// A router list read from the cache file: used only while nothing
    /// better is known, and not counted as fetched (the controller is still
    /// asked).
    pub fn on_cached_list(&mut self, list: &[RouterInfo]) {
        if self.routers.is_empty() {
            self.routers = candidates_from(list);
        }
    }

    /// Not to ask the controller again until [`RETRY_AFTER_FAILURE`] after
    /// `now`: a fetch failed (try again soon, not on every dial), or one is
    /// under way.
    pub fn defer_list(&mut self, now: Instant) {
        self.fetched = now.checked_sub(ROUTER_LIST_TTL - RETRY_AFTER_FAILURE);
    }

    /// The services the known routers may serve this identity, sorted;
    /// `None` when a router's are unknown (routers given by address).
    pub fn services(&self) -> Option<Vec<String>> {
        let mut v = vec![];
        for r in &self.routers {
            v.extend(r.services.clone()?);
        }
        v.sort();
        v.dedup();
        Some(v)
    }

    /// Drops the connections that have ended and returns them with their
    /// routers. A router that refused this identity is left alone by the
    /// maintenance for [`REFUSED_RETRY`].
    pub fn sweep(&mut self, now: Instant) -> Vec<(String, L)> {
        let mut gone = vec![];
        let mut keep = vec![];
        for s in std::mem::take(&mut self.conns) {
            match s.link.ended() {
                None => keep.push(s),
                Some(end) => {
                    if end == Ended::Refused {
                        self.retry_after
                            .insert(s.router.clone(), now + REFUSED_RETRY);
                    }
                    gone.push((s.router, s.link));
                }
            }
        }
        self.conns = keep;
        gone
    }

    /// Notes what each open connection has heard by `now` and returns those
    /// silent for [`DEAD_AFTER`]: a live router sends keep-alives, so such
    /// a router died without a word. They stay in the pool until closed
    /// and swept.
    pub fn dead(&mut self, now: Instant) -> Vec<(String, L)> {
        let mut dead = vec![];
        for s in &mut self.conns {
            let rx = s.link.heard();
            match s.heard {
                Some((seen, _)) if seen != rx => s.heard = Some((rx, now)),
                Some((_, since)) => {
                    if now.saturating_duration_since(since) >= DEAD_AFTER {
                        dead.push((s.router.clone(), s.link.clone()));
                    }
                }
                None => s.heard = Some((rx, now)),
            }
        }
        dead
    }

    /// Open connections a dial for `service` tries, lowest RTT first: those
    /// to routers that serve it (or whose services are unknown). When no
    /// router is known to serve it, all of them, to get a router's precise
    /// answer (unknown service, not authorized, ...).
    pub fn candidates_for(&self, service: &str) -> Vec<(String, L)> {
        let serves = |addr: &str| {
            self.routers
                .iter()
                .find(|r| r.addr == addr)
                .and_then(|r| r.services.as_ref())
                .is_none_or(|s| s.iter().any(|x| x == service))
        };
        let mut v: Vec<&Slot<L>> = self.conns.iter().filter(|s| serves(&s.router)).collect();
        if v.is_empty() {
            v = self.conns.iter().collect();
        }
        v.sort_by_key(|s| s.link.rtt());
        v.into_iter()
            .map(|s| (s.router.clone(), s.link.clone()))
            .collect()
    }

    /// Takes a connection out of the pool for new dials after a dial on it
    /// failed; streams already on it carry on.
    pub fn set_aside(&mut self, id: ConnId) {
        self.conns.retain(|s| s.link.id() != id);
    }

    /// Routers to connect to at `now` to bring the pool to `pool_size`
    /// open connections: none if it is there; else every known router
    /// without an open connection (all at once, so a dead one costs nothing
    /// while a live one answers), less, for the maintenance, those whose
    /// retry time has not come.
    pub fn to_connect(&self, now: Instant, pool_size: usize, asker: Asker) -> Vec<String> {
        let open: Vec<&str> = self
            .conns
            .iter()
            .filter(|s| s.link.ended().is_none())
            .map(|s| s.router.as_str())
            .collect();
        if open.len() >= pool_size {
            return vec![];
        }
        self.routers
            .iter()
            .map(|r| r.addr.clone())
            .filter(|a| !open.contains(&a.as_str()))
            .filter(|a| asker == Asker::Dial || self.retry_after.get(a).is_none_or(|t| *t <= now))
            .collect()
    }

    /// A connection to `router` is up: it joins the pool unless the pool
    /// already has `pool_size` connections or an open one to that router,
    /// in which case it is handed back, to be closed.
    pub fn on_connected(&mut self, router: String, link: L, pool_size: usize) -> Result<(), L> {
        let dup = self
            .conns
            .iter()
            .any(|s| s.router == router && s.link.ended().is_none());
        if self.conns.len() >= pool_size || dup {
            return Err(link);
        }
        self.conns.push(Slot {
            router,
            link,
            heard: None,
        });
        Ok(())
    }

    /// `router` could not be reached at `now`: the maintenance tries it
    /// again after [`UNREACHABLE_RETRY`].
    pub fn on_unreachable(&mut self, router: &str, now: Instant) {
        self.retry_after
            .insert(router.to_string(), now + UNREACHABLE_RETRY);
        // Bounded by the routers the client knows of; expired entries go.
        self.retry_after.retain(|_, t| *t > now);
    }

    /// `link` takes the place of connection `old` for new dials (QUIC got
    /// through again where TCP was used); handed back if `old` has left
    /// the pool meanwhile.
    pub fn replace(&mut self, old: ConnId, link: L) -> Result<(), L> {
        match self.conns.iter_mut().find(|s| s.link.id() == old) {
            Some(slot) => {
                slot.link = link;
                slot.heard = None;
                Ok(())
            }
            None => Err(link),
        }
    }

    /// Empties the pool (a renewed certificate, or the client closing).
    pub fn take_all(&mut self) -> Vec<L> {
        self.conns.drain(..).map(|s| s.link).collect()
    }

    /// The connections in the pool, with their routers, in joining order.
    pub fn links(&self) -> impl Iterator<Item = (&str, &L)> {
        self.conns.iter().map(|s| (s.router.as_str(), &s.link))
    }

    /// Whether the pool has no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use darkport_proto::identity::IdentityName;

    /// A connection whose observables the test sets.
    #[derive(Debug, Clone)]
    struct Fake(Rc<FakeState>);

    #[derive(Debug)]
    struct FakeState {
        id: ConnId,
        rtt: Duration,
        heard: Cell<u64>,
        ended: Cell<Option<Ended>>,
    }

    impl Fake {
        fn new(id: ConnId, rtt_ms: u64) -> Fake {
            Fake(Rc::new(FakeState {
                id,
                rtt: Duration::from_millis(rtt_ms),
                heard: Cell::new(0),
                ended: Cell::new(None),
            }))
        }
        fn hear(&self, n: u64) {
            self.0.heard.set(n);
        }
        fn end(&self, how: Ended) {
            self.0.ended.set(Some(how));
        }
    }

    impl Link for Fake {
        fn id(&self) -> ConnId {
            self.0.id
        }
        fn rtt(&self) -> Duration {
            self.0.rtt
        }
        fn heard(&self) -> u64 {
            self.0.heard.get()
        }
        fn ended(&self) -> Option<Ended> {
            self.0.ended.get()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// A virtual time base, far enough from the clock's origin that
    /// [`PoolState::defer_list`] can go back from it.
    fn t0() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn router(addr: &str, online: bool, services: &[&str]) -> RouterInfo {
        RouterInfo {
            name: IdentityName::new(format!("r-{}", addr.replace(':', "-"))).unwrap(),
            advertise: addr.to_string(),
            online,
            snapshot_version: None,
            services: services
                .iter()
                .map(|s| IdentityName::new(*s).unwrap())
                .collect(),
        }
    }

    /// A pool on the controller's `list`, fetched at `t`.
    fn listed(list: &[RouterInfo], t: Instant) -> PoolState<Fake> {
        let mut p = PoolState::new(&[]);
        p.on_router_list(list, t);
        p
    }

    fn configured(addrs: &[&str]) -> PoolState<Fake> {
        PoolState::new(&addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    fn ids(v: &[(String, Fake)]) -> Vec<ConnId> {
        v.iter().map(|(_, l)| l.id()).collect()
    }

    fn addrs(v: &[(String, Fake)]) -> Vec<&str> {
        v.iter().map(|(a, _)| a.as_str()).collect()
    }

    #[test]
    fn refused_router_is_left_alone_until_its_retry_time() {
        let t = t0();
        let mut p = configured(&["a:1", "b:1"]);
        let (a, b) = (Fake::new(1, 10), Fake::new(2, 20));
        p.on_connected("a:1".into(), a.clone(), 2).unwrap();
        p.on_connected("b:1".into(), b, 2).unwrap();
        a.end(Ended::Refused);
        assert_eq!(ids(&p.sweep(t)), vec![1]);
        // (time after t, asker, routers to connect to)
        let table = [
            (Duration::ZERO, Asker::Background, vec![]),
            (REFUSED_RETRY - MS, Asker::Background, vec![]),
            (REFUSED_RETRY, Asker::Background, vec!["a:1"]),
            // A waiting dial tries it anyway: its refusal says more.
            (Duration::ZERO, Asker::Dial, vec!["a:1"]),
        ];
        for (after, asker, want) in table {
            assert_eq!(
                p.to_connect(t + after, 2, asker),
                want,
                "{after:?} {asker:?}"
            );
        }
    }

    #[test]
    fn closed_router_is_retried_at_once_unreachable_after_a_while() {
        let t = t0();
        let mut p = configured(&["a:1", "b:1"]);
        let a = Fake::new(1, 10);
        p.on_connected("a:1".into(), a.clone(), 2).unwrap();
        a.end(Ended::Closed);
        assert_eq!(ids(&p.sweep(t)), vec![1]);
        p.on_unreachable("b:1", t);
        let table = [
            (Duration::ZERO, vec!["a:1"]),
            (UNREACHABLE_RETRY - MS, vec!["a:1"]),
            (UNREACHABLE_RETRY, vec!["a:1", "b:1"]),
        ];
        for (after, want) in table {
            assert_eq!(
                p.to_connect(t + after, 2, Asker::Background),
                want,
                "{after:?}"
            );
        }
    }

    #[test]
    fn silent_connection_is_dead_and_dials_move_to_another_router() {
        let t = t0();
        let routers = ["a:1", "b:1", "c:1"].map(|a| router(a, true, &["web"]));
        let mut p = listed(&routers, t);
        let (a, b) = (Fake::new(1, 5), Fake::new(2, 50));
        p.on_connected("a:1".into(), a.clone(), 2).unwrap();
        p.on_connected("b:1".into(), b.clone(), 2).unwrap();
        assert_eq!(ids(&p.candidates_for("web")), vec![1, 2]);
        // (time after t, a's count, b's count, dead connections)
        let table: [(u64, u64, u64, Vec<ConnId>); 5] = [
            (0, 7, 7, vec![]),
            (1_000, 7, 8, vec![]),
            (4_999, 7, 8, vec![]),
            (5_000, 7, 8, vec![1]),
            // b heard its last at 1 s: dead at 6 s, not before.
            (5_999, 7, 8, vec![1]),
        ];
        for (ms, ha, hb, want) in table {
            a.hear(ha);
            b.hear(hb);
            let now = t + Duration::from_millis(ms);
            assert_eq!(ids(&p.dead(now)), want, "at {ms} ms");
        }
        assert_eq!(ids(&p.dead(t + Duration::from_secs(6))), vec![1, 2]);
        // The shell closes a; b speaks up again just in time.
        a.end(Ended::Closed);
        b.hear(9);
        assert_eq!(ids(&p.sweep(t + Duration::from_secs(6))), vec![1]);
        assert_eq!(
            ids(&p.dead(t + Duration::from_secs(6))),
            Vec::<ConnId>::new()
        );
        assert_eq!(ids(&p.candidates_for("web")), vec![2]);
        // Closed locally is no refusal: a may be tried again at once, and c
        // fills the free place.
        assert_eq!(
            p.to_connect(t + Duration::from_secs(6), 2, Asker::Background),
            vec!["a:1", "c:1"]
        );
    }

    #[test]
    fn list_goes_stale_after_its_ttl_sooner_when_empty_or_failed() {
        let t = t0();
        let full = [router("a:1", true, &["web"])];
        // (list fetched at t or None, then deferred at t, time after t, stale)
        let table: [(Option<&[RouterInfo]>, bool, Duration, bool); 8] = [
            (None, false, Duration::ZERO, true),
            (Some(&full), false, ROUTER_LIST_TTL - MS, false),
            (Some(&full), false, ROUTER_LIST_TTL, true),
            (Some(&[]), false, EMPTY_LIST_RETRY - MS, false),
            (Some(&[]), false, EMPTY_LIST_RETRY, true),
            (Some(&full), true, Duration::ZERO, false),
            (Some(&full), true, RETRY_AFTER_FAILURE - MS, false),
            (Some(&full), true, RETRY_AFTER_FAILURE, true),
        ];
        for (list, deferred, after, stale) in table {
            let mut p = match list {
                Some(list) => listed(list, t),
                None => PoolState::new(&[]),
            };
            if deferred {
                p.defer_list(t);
            }
            assert_eq!(
                p.list_stale(t + after),
                stale,
                "{list:?} {deferred} {after:?}"
            );
        }
        // Routers given by address: never fetched.
        let p = configured(&["a:1"]);
        assert!(!p.list_stale(t));
        assert!(!p.idle(t));
    }

    #[test]
    fn maintenance_waits_for_a_first_dial_then_asks_again_for_an_empty_list() {
        let t = t0();
        assert!(configured(&[]).idle(t), "no dial has asked for routers yet");
        let mut p = listed(&[], t);
        assert!(p.idle(t + EMPTY_LIST_RETRY - MS));
        assert!(!p.idle(t + EMPTY_LIST_RETRY));
        // A cached list is used, but the controller is still asked.
        p.on_cached_list(&[router("a:1", true, &["web"])]);
        assert!(p.has_routers());
        assert!(!p.idle(t));
        // Only while nothing better is known.
        p.on_cached_list(&[router("z:1", true, &["web"])]);
        assert_eq!(p.to_connect(t, 2, Asker::Dial), vec!["a:1"]);
    }

    #[test]
    fn dials_go_to_routers_serving_the_service_lowest_rtt_first() {
        let t = t0();
        let routers = [
            router("web:1", true, &["web"]),
            router("db:1", true, &["db"]),
            router("both:1", true, &["db", "web"]),
        ];
        let mut p = listed(&routers, t);
        p.on_connected("web:1".into(), Fake::new(1, 30), 3).unwrap();
        p.on_connected("db:1".into(), Fake::new(2, 10), 3).unwrap();
        p.on_connected("both:1".into(), Fake::new(3, 20), 3)
            .unwrap();
        let table = [
            ("web", vec![3, 1]),
            ("db", vec![2, 3]),
            // Served by none that is known: ask them all.
            ("other", vec![2, 3, 1]),
        ];
        for (service, want) in table {
            assert_eq!(ids(&p.candidates_for(service)), want, "{service}");
        }
        // Routers given by address: services unknown, any may serve.
        let mut p = configured(&["x:1", "y:1"]);
        p.on_connected("x:1".into(), Fake::new(1, 30), 2).unwrap();
        p.on_connected("y:1".into(), Fake::new(2, 10), 2).unwrap();
        assert_eq!(addrs(&p.candidates_for("web")), vec!["y:1", "x:1"]);
        assert_eq!(p.services(), None);
    }

    #[test]
    fn router_list_order_and_services() {
        let t = t0();
        let list = [
            router("off:1", false, &["a", "b", "c"]),
            router("one:1", true, &["a"]),
            router("two:1", true, &["b", "a"]),
        ];
        let order: Vec<String> = candidates_from(&list).into_iter().map(|c| c.addr).collect();
        assert_eq!(order, vec!["two:1", "one:1", "off:1"]);
        let p = listed(&list, t);
        assert_eq!(p.services(), Some(vec!["a".into(), "b".into(), "c".into()]));
    }

    #[test]
    fn unlisted_router_leaves_the_pool() {
        let t = t0();
        let mut p = listed(&["a:1", "b:1"].map(|a| router(a, true, &["web"])), t);
        p.on_connected("a:1".into(), Fake::new(1, 10), 2).unwrap();
        p.on_connected("b:1".into(), Fake::new(2, 10), 2).unwrap();
        let gone = p.on_router_list(&[router("b:1", true, &["web"])], t + ROUTER_LIST_TTL);
        assert_eq!(gone.iter().map(Link::id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(ids(&p.candidates_for("web")), vec![2]);
        assert_eq!(
            p.to_connect(t + ROUTER_LIST_TTL, 2, Asker::Background),
            Vec::<String>::new()
        );
    }

    #[test]
    fn pool_is_refilled_to_its_size_and_no_further() {
        let t = t0();
        let mut p = configured(&["a:1", "b:1", "c:1"]);
        let (a, b, c) = (Fake::new(1, 10), Fake::new(2, 10), Fake::new(3, 10));
        // Empty: connect to all at once; the first ones up join.
        assert_eq!(p.to_connect(t, 2, Asker::Dial), vec!["a:1", "b:1", "c:1"]);
        p.on_connected("b:1".into(), b.clone(), 2).unwrap();
        assert_eq!(p.to_connect(t, 2, Asker::Dial), vec!["a:1", "c:1"]);
        // A second connection to the same router is not kept.
        assert!(p.on_connected("b:1".into(), Fake::new(9, 1), 2).is_err());
        p.on_connected("a:1".into(), a, 2).unwrap();
        assert!(p.to_connect(t, 2, Asker::Dial).is_empty());
        assert!(p.on_connected("c:1".into(), c.clone(), 2).is_err(), "full");
        // An ended connection no longer counts, swept or not.
        b.end(Ended::Closed);
        assert_eq!(p.to_connect(t, 2, Asker::Dial), vec!["b:1", "c:1"]);
        assert_eq!(ids(&p.sweep(t)), vec![2]);
        p.on_connected("c:1".into(), c, 2).unwrap();
        assert!(p.to_connect(t, 2, Asker::Background).is_empty());
        // Set aside after a failed dial: out of the pool, to be replaced.
        p.set_aside(3);
        assert_eq!(p.to_connect(t, 2, Asker::Background), vec!["b:1", "c:1"]);
        assert_eq!(p.take_all().len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn replaced_connection_keeps_its_place_and_starts_a_new_liveness_record() {
        let t = t0();
        let mut p = configured(&["a:1"]);
        let old = Fake::new(1, 10);
        p.on_connected("a:1".into(), old, 1).unwrap();
        assert!(p.dead(t).is_empty());
        let new = Fake::new(2, 10);
        p.replace(1, new).unwrap();
        // Silent since t, but its record starts at its first look.
        assert!(p.dead(t + DEAD_AFTER).is_empty());
        assert_eq!(ids(&p.dead(t + DEAD_AFTER * 2)), vec![2]);
        assert!(p.replace(1, Fake::new(3, 10)).is_err(), "gone meanwhile");
        assert_eq!(
            p.links().map(|(r, l)| (r, l.id())).collect::<Vec<_>>(),
            vec![("a:1", 2)]
        );
    }
}
