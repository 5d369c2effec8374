//! The host's decisions as plain functions of what it knows, with no
//! sockets and no clock of their own: when to reconnect to a router,
//! which routers to host through, whether a service is registered, what
//! a router's answer acknowledges, and when a spent offer is replaced.
//! The async shell (`session`, `supervise`) carries them out.

use std::time::Duration;

use darkport_proto::msg::{DialStatus, HostResponse, HostedService, RouterInfo};

/// First wait before reconnecting to a router that went away.
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);

/// Longest wait between reconnects: a router that restarts has its
/// terminators back within about this long after it listens again.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A connection that stayed up this long was a good one: the next
/// reconnect starts again from [`RECONNECT_MIN`].
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// An offer stream that ended (without a dial) sooner than this after it
/// was opened is replaced only after [`OFFER_RETRY`]: a router refusing
/// offers (at its limit, or with no host stream) is not asked again in a
/// tight loop.
pub const OFFER_MIN_LIFE: Duration = Duration::from_secs(1);

/// See [`OFFER_MIN_LIFE`].
pub const OFFER_RETRY: Duration = Duration::from_secs(1);

/// Reconnect delays: doubling from [`RECONNECT_MIN`] to [`RECONNECT_MAX`],
/// each spread over its upper half by a jitter in `[0, 1)` that the caller
/// draws, so hosters that lost the same router do not all come back in
/// the same millisecond (the terminator-creation storm of issue 21).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed attempts since the last good connection.
    attempt: u32,
}

impl Backoff {
    /// The wait before the next attempt; counts one more failure.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let base = RECONNECT_MIN
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(RECONNECT_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base / 2 + base.mul_f64(jitter / 2.0)
    }

    /// A connection ended after being up for `lasted`: a long one resets
    /// the backoff, a short one (a router that accepts and then drops us)
    /// keeps it growing.
    pub fn after_session(&mut self, lasted: Duration) {
        if lasted >= STABLE_AFTER {
            self.attempt = 0;
        }
    }
}

/// The routers a host keeps a connection to, in order, at most `max`.
/// The controller lists, for each router, the services this identity may
/// host there (a bind policy and a router policy): when any router lists
/// one of `services`, only those routers are taken (the others would
/// refuse every terminator). When none does (a controller older than
/// hosting, or no policy yet), every router is taken, so each says why it
/// refuses. Online routers come before offline ones (the controller may
/// be the one that is down, so offline ones are still tried).
pub fn hosting_routers(
    list: &[RouterInfo],
    services: &[String],
    max: Option<usize>,
) -> Vec<String> {
    let listed = |r: &RouterInfo| {
        r.services
            .iter()
            .any(|s| services.iter().any(|x| x == s.as_str()))
    };
    let mut list: Vec<&RouterInfo> = list.iter().collect();
    if list.iter().any(|r| listed(r)) {
        list.retain(|r| listed(r));
    }
    // Stable: the controller's order stands among equals.
    list.sort_by_key(|r| !r.online);
    let mut out: Vec<String> = vec![];
    for r in list {
        if !out.contains(&r.advertise) {
            out.push(r.advertise.clone());
        }
    }
    out.truncate(max.unwrap_or(usize::MAX));
    out
}

/// Where one service stands across routers, by [`check_registered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// At least one router holds a terminator for it: these.
    Registered(Vec<String>),
    /// Every router answered, and each refused: (router, status, message).
    Refused(Vec<(String, DialStatus, String)>),
    /// Neither yet: some router has not answered (connecting, down).
    Waiting,
}

/// What one router last said about one service, for [`check_registered`]:
/// `None` while it has not answered (not connected yet, or down).
pub type Said<'a> = (&'a str, Option<(DialStatus, &'a str)>);

/// Whether `service` is registered, from what each router last said
/// about it. A router that has not answered keeps the answer open, unless
/// another already registered it.
pub fn check_registered(said: &[Said<'_>]) -> Registration {
    let ok: Vec<String> = said
        .iter()
        .filter(|(_, s)| matches!(s, Some((DialStatus::Ok, _))))
        .map(|(r, _)| r.to_string())
        .collect();
    if !ok.is_empty() {
        return Registration::Registered(ok);
    }
    if said.is_empty() || said.iter().any(|(_, s)| s.is_none()) {
        return Registration::Waiting;
    }
    Registration::Refused(
        said.iter()
            .filter_map(|(r, s)| s.map(|(st, m)| (r.to_string(), st, m.to_string())))
            .collect(),
    )
}

/// Whether `response` is the router's answer to a request for
/// `requested`: one verdict per service, in the request's order. A
/// response that does not match is an unsolicited one (a policy changed
/// a verdict) or answers an older request; its verdicts are applied all
/// the same.
pub fn answers(requested: &[HostedService], response: &HostResponse) -> bool {
    requested.len() == response.verdicts.len()
        && requested
            .iter()
            .zip(&response.verdicts)
            .all(|(s, v)| s.name == v.service)
}

/// How long to wait before replacing an offer stream that ended without
/// a dial after `lived`.
pub fn replace_after(lived: Duration) -> Duration {
    if lived < OFFER_MIN_LIFE {
        OFFER_RETRY
    } else {
        Duration::ZERO
    }
}

/// Whether a router connection should hold idle offers: while hosting
/// (not withdrawn) and once the router registered at least one service
/// (an offer is useless to a router that holds no terminator of ours, and
/// refused before the host stream is up).
pub fn wants_offers(withdrawn: bool, verdicts: &[darkport_proto::msg::HostVerdict]) -> bool {
    !withdrawn && verdicts.iter().any(|v| v.status == DialStatus::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::msg::{HostVerdict, Precedence};

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_stable_connection() {
        let mut b = Backoff::default();
        // jitter 1.0 gives the base itself; 0.0 gives half of it.
        let waits: Vec<Duration> = (0..8).map(|_| b.next(1.0)).collect();
        assert_eq!(waits[0], RECONNECT_MIN);
        assert_eq!(waits[1], RECONNECT_MIN * 2);
        assert_eq!(waits[2], RECONNECT_MIN * 4);
        assert!(waits.iter().all(|w| *w <= RECONNECT_MAX), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), RECONNECT_MAX);
        assert_eq!(b.next(0.0), RECONNECT_MAX / 2);
        b.after_session(Duration::from_secs(1));
        assert_eq!(
            b.next(1.0),
            RECONNECT_MAX,
            "a short session keeps the backoff"
        );
        b.after_session(STABLE_AFTER);
        assert_eq!(b.next(1.0), RECONNECT_MIN);
        // Junk jitter is not trusted.
        let mut b = Backoff::default();
        assert_eq!(b.next(f64::NAN), RECONNECT_MIN / 2);
        assert_eq!(b.next(7.0), RECONNECT_MIN * 2);
    }

    #[test]
    fn a_router_restart_costs_a_few_seconds_at_most() {
        // Ten failed attempts in a row (a router down for a while): no wait
        // exceeds the cap, so once it is back the terminator is back within
        // RECONNECT_MAX.
        let mut b = Backoff::default();
        for _ in 0..10 {
            assert!(b.next(0.99) <= RECONNECT_MAX);
        }
    }

    fn router(addr: &str, online: bool, services: &[&str]) -> RouterInfo {
        RouterInfo {
            name: addr
                .split(':')
                .next()
                .unwrap()
                .to_string()
                .try_into()
                .unwrap(),
            advertise: addr.into(),
            online,
            snapshot_version: None,
            services: services
                .iter()
                .map(|s| s.to_string().try_into().unwrap())
                .collect(),
        }
    }

    #[test]
    fn hosting_routers_are_those_listing_a_service_online_first() {
        let list = [
            router("a:1", false, &["logs"]),
            router("b:1", true, &[]),
            router("c:1", true, &["logs"]),
            router("d:1", true, &["other"]),
            router("c:1", true, &["logs"]),
            router("e:1", true, &["metrics", "logs"]),
        ];
        let svc = vec!["logs".to_string()];
        let table: [(Option<usize>, &[&str]); 4] = [
            (None, &["c:1", "e:1", "a:1"]),
            (Some(2), &["c:1", "e:1"]),
            (Some(0), &[]),
            (Some(10), &["c:1", "e:1", "a:1"]),
        ];
        for (max, want) in table {
            assert_eq!(hosting_routers(&list, &svc, max), want, "max {max:?}");
        }
        // No router lists it: every router, to hear each one's refusal.
        let none = vec!["nowhere".to_string()];
        assert_eq!(
            hosting_routers(&list, &none, None),
            ["b:1", "c:1", "d:1", "e:1", "a:1"]
        );
        assert!(hosting_routers(&[], &svc, None).is_empty());
    }

    #[test]
    fn registration_is_decided_by_the_first_ok_or_by_every_refusal() {
        use DialStatus::*;
        let table: Vec<(Vec<Said<'_>>, Registration)> = vec![
            (vec![], Registration::Waiting),
            (vec![("a", None)], Registration::Waiting),
            (
                vec![("a", None), ("b", Some((Ok, "")))],
                Registration::Registered(vec!["b".into()]),
            ),
            (
                vec![("a", Some((NotAuthorized, "no bind policy"))), ("b", None)],
                Registration::Waiting,
            ),
            (
                vec![
                    ("a", Some((NotAuthorized, "no bind policy"))),
                    ("b", Some((WrongRouter, "not here"))),
                ],
                Registration::Refused(vec![
                    ("a".into(), NotAuthorized, "no bind policy".into()),
                    ("b".into(), WrongRouter, "not here".into()),
                ]),
            ),
            (
                vec![("a", Some((Ok, ""))), ("b", Some((Ok, "")))],
                Registration::Registered(vec!["a".into(), "b".into()]),
            ),
        ];
        for (said, want) in table {
            assert_eq!(check_registered(&said), want, "{said:?}");
        }
    }

    fn svc(name: &str) -> HostedService {
        HostedService {
            name: name.into(),
            cost: 0,
            precedence: Precedence::Default,
        }
    }

    fn verdict(name: &str, status: DialStatus) -> HostVerdict {
        HostVerdict {
            service: name.into(),
            status,
            message: String::new(),
        }
    }

    #[test]
    fn an_answer_has_one_verdict_per_service_in_order() {
        let req = [svc("a"), svc("b")];
        let resp = |names: &[&str]| HostResponse {
            verdicts: names.iter().map(|n| verdict(n, DialStatus::Ok)).collect(),
        };
        assert!(answers(&req, &resp(&["a", "b"])));
        assert!(!answers(&req, &resp(&["b", "a"])));
        assert!(!answers(&req, &resp(&["a"])));
        // The withdrawal's answer is the empty one.
        assert!(answers(&[], &resp(&[])));
        assert!(!answers(&[], &resp(&["a"])));
    }

    #[test]
    fn offers_are_kept_only_while_a_service_is_registered() {
        use DialStatus::*;
        assert!(!wants_offers(false, &[]));
        assert!(!wants_offers(false, &[verdict("a", NotAuthorized)]));
        assert!(wants_offers(
            false,
            &[verdict("a", NotAuthorized), verdict("b", Ok)]
        ));
        assert!(!wants_offers(true, &[verdict("b", Ok)]));
    }

    #[test]
    fn an_offer_refused_at_once_is_replaced_after_a_pause() {
        assert_eq!(replace_after(Duration::ZERO), OFFER_RETRY);
        assert_eq!(replace_after(Duration::from_millis(999)), OFFER_RETRY);
        assert_eq!(replace_after(OFFER_MIN_LIFE), Duration::ZERO);
        assert_eq!(replace_after(Duration::from_secs(600)), Duration::ZERO);
    }
}
