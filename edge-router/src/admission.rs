//! Whether a dial may go ahead: the router's decisions, with no sockets
//! and no clock.
//!
//! [`admit_dial`] folds, in order, the per-identity stream cap, draining,
//! the policy age limit and the snapshot's authorization into one answer:
//! a [`Dialed`] plan or the [`DialResponse`] that refuses the dial. The
//! caller (`listener.rs`) reads the clock once and passes `now`; it does
//! the I/O (reading the request, connecting to the service, splicing).
//! [`check_still_allowed`] is the same authorization for a stream already
//! open, asked again at every new snapshot.

use std::time::Duration;

use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{dial_version_supported, DialRequest, DialResponse, DialStatus};
use darkport_proto::policy::{authorize, Denied, PolicySnapshot, ServiceProtocol};
use darkport_proto::{PeerIdentity, PROTOCOL_VERSION};
use darkport_transport::limits::CapExceeded;

use crate::PolicyClock;

/// What the router knows of itself and of the dialing peer when a dial
/// request arrives.
#[derive(Debug, Clone, Copy)]
pub struct RouterView<'a> {
    /// This router, for router policies and fluent stamps.
    pub router: &'a IdentityName,
    /// The verified client.
    pub peer: &'a PeerIdentity,
    /// The cap the stream's identity was over when the stream opened, if
    /// it was: such a stream holds no slot.
    pub over_cap: Option<CapExceeded>,
    /// Whether shutdown has begun: new dials go to another router.
    pub draining: bool,
    /// When the policy was last known to be current.
    pub policy: &'a PolicyClock,
    /// `--max-policy-age`: how old a policy may serve new dials.
    pub max_policy_age: Option<Duration>,
}

/// An authorized dial: where to, and how to speak with the service (no
/// `Debug`: a fluent plan holds shared keys).
pub struct Dialed {
    /// The private service's `host:port`; empty for a service reached
    /// through terminators only.
    pub address: String,
    /// How to choose among its terminators.
    pub strategy: darkport_proto::policy::TerminatorStrategy,
    /// The caller's roles (for a hoster's [`darkport_proto::msg::Incoming`]).
    pub caller_roles: Vec<IdentityName>,
    /// `Some` for a fluent-forward service.
    pub fluent: Option<crate::fluent::Plan>,
}

/// The decision for one dial request at `now` (Unix seconds), before any
/// network I/O to the service: cap, then draining, then policy age, then
/// the request itself against `snapshot` (`None`: none received yet).
pub fn admit_dial(
    now: u64,
    view: &RouterView<'_>,
    snapshot: Option<&PolicySnapshot>,
    req: &DialRequest,
) -> Result<Dialed, DialResponse> {
    if let Some(cap) = &view.over_cap {
        return Err(over_cap(view.peer, cap));
    }
    if view.draining {
        return Err(refusal(
            DialStatus::Draining,
            format!(
                "router {} is shutting down; dial through another router",
                view.router
            ),
        ));
    }
    check_policy_age(view.policy.age(now), view.max_policy_age)
        .map_err(|message| refusal(DialStatus::NotReady, message))?;
    decide(now, view, snapshot, req)
}

/// The refusal of a stream over its identity's cap; it is answered at
/// once, its dial request never read (see [`admit_dial`] for the rest).
pub fn over_cap(peer: &PeerIdentity, cap: &CapExceeded) -> DialResponse {
    refusal(
        DialStatus::LimitReached,
        format!(
            "identity {} has too many streams open at this router ({cap}); close some, or raise --max-streams-per-identity",
            peer.name
        ),
    )
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

/// The refusal of a dial whose service could not be reached at `address`
/// (connect failed or timed out, or its Fluentd handshake failed: `why`).
pub fn unreachable(service: &str, address: &str, why: &str) -> DialResponse {
    refusal(
        DialStatus::ServiceUnreachable,
        format!("cannot reach service {service} at {address}: {why}"),
    )
}

/// Whether a stream to `service` open for `peer` is still allowed by
/// `snapshot` at `now`; the error says why not.
pub fn check_still_allowed(
    now: u64,
    router: &IdentityName,
    peer: &PeerIdentity,
    service: &str,
    snapshot: &PolicySnapshot,
) -> Result<(), Denied> {
    authorize(snapshot, router, peer, service, now).map(|_| ())
}

/// A refusal with `status`, saying `message`.
pub fn refusal(status: DialStatus, message: String) -> DialResponse {
    DialResponse { status, message }
}

/// The request itself: its version and service name, then the snapshot.
fn decide(
    now: u64,
    view: &RouterView<'_>,
    snapshot: Option<&PolicySnapshot>,
    req: &DialRequest,
) -> Result<Dialed, DialResponse> {
    if !dial_version_supported(req.version) {
        return Err(refusal(
            DialStatus::BadRequest,
            format!(
                "protocol version {} is not supported (router speaks {PROTOCOL_VERSION})",
                req.version
            ),
        ));
    }
    if IdentityName::new(req.service.as_str()).is_err() {
        return Err(refusal(
            DialStatus::BadRequest,
            "the service name is not valid (1 to 64 characters from a-z, A-Z, 0-9, '.', '_', '-')"
                .into(),
        ));
    }
    let Some(snapshot) = snapshot else {
        return Err(refusal(
            DialStatus::NotReady,
            "the router has not received policy from the controller yet; try again shortly".into(),
        ));
    };
    let (router, peer) = (view.router, view.peer);
    let permit = authorize(snapshot, router, peer, &req.service, now).map_err(|d| {
        let status = match d {
            Denied::UnknownService(_) => DialStatus::UnknownService,
            Denied::RouterNotAllowed { .. } => DialStatus::WrongRouter,
            _ => DialStatus::NotAuthorized,
        };
        refusal(status, d.to_string())
    })?;
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
            .map_err(|e| refusal(DialStatus::NotAuthorized, e.to_string()))?,
        ),
    };
    Ok(Dialed {
        address: permit.service.address.clone(),
        strategy: permit.service.strategy,
        caller_roles: permit.identity.roles.clone(),
        fluent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::identity::Kind;
    use darkport_proto::policy::{
        CertEntry, IdentityEntry, PolicyEntry, RouterPolicyEntry, Selector, ServiceEntry,
    };

    const NOW: u64 = 10_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn n(s: &str) -> IdentityName {
        IdentityName::new(s).expect("name")
    }

    fn client(name: &str) -> PeerIdentity {
        PeerIdentity {
            kind: Kind::Client,
            name: n(name),
            fingerprint: "aa".into(),
        }
    }

    /// `app` may dial `db` and `logs`; `other` is known but allowed
    /// nothing; router `r1` may serve `db` only.
    fn snapshot() -> PolicySnapshot {
        let identity = |name: &str, kind| IdentityEntry {
            name: n(name),
            kind,
            roles: vec![],
            certificates: vec![CertEntry {
                fingerprint: "aa".into(),
                expires_at: NOW + 3600,
            }],
        };
        let service = |name: &str, address: &str| ServiceEntry {
            name: n(name),
            address: address.into(),
            roles: vec![],
            protocol: ServiceProtocol::Tcp,
            strategy: Default::default(),
        };
        PolicySnapshot {
            version: 1,
            identities: vec![
                identity("app", Kind::Client),
                identity("other", Kind::Client),
                identity("r1", Kind::Router),
            ],
            services: vec![
                service("db", "10.0.0.1:5432"),
                service("logs", "10.0.0.2:24224"),
            ],
            policies: vec![PolicyEntry {
                name: n("app-all"),
                services: vec![Selector::All],
                identities: vec![Selector::Name(n("app"))],
                tags: vec![],
                kind: Default::default(),
            }],
            router_policies: vec![RouterPolicyEntry {
                name: n("r1-db"),
                routers: vec![Selector::Name(n("r1"))],
                services: vec![Selector::Name(n("db"))],
            }],
        }
    }

    /// One row: what differs from a healthy router and a good request.
    struct Row {
        name: &'static str,
        peer: &'static str,
        over_cap: bool,
        draining: bool,
        /// Seconds since the policy was confirmed (the session is down).
        policy_age: u64,
        snapshot: bool,
        version: u16,
        service: &'static str,
        /// `Ok`: admitted.
        want: DialStatus,
    }

    const GOOD: Row = Row {
        name: "",
        peer: "app",
        over_cap: false,
        draining: false,
        policy_age: 0,
        snapshot: true,
        version: PROTOCOL_VERSION,
        service: "db",
        want: DialStatus::Ok,
    };

    fn run(row: &Row) -> Result<Dialed, DialResponse> {
        let router = n("r1");
        let peer = client(row.peer);
        let policy = PolicyClock::default();
        policy.confirm(NOW - row.policy_age);
        let view = RouterView {
            router: &router,
            peer: &peer,
            over_cap: row.over_cap.then_some(CapExceeded::PerKey {
                limit: 2,
                what: "identity",
            }),
            draining: row.draining,
            policy: &policy,
            max_policy_age: Some(HOUR),
        };
        let snapshot = snapshot();
        let req = DialRequest {
            version: row.version,
            service: row.service.into(),
        };
        admit_dial(NOW, &view, row.snapshot.then_some(&snapshot), &req)
    }

    /// Every [`DialStatus`] but `ServiceUnreachable` (an I/O outcome, see
    /// `unreachable_names_the_service_and_address`) is reached here, one
    /// row each, and the order of the checks is pinned by rows where
    /// several would refuse.
    #[test]
    fn admission_table() {
        let rows = [
            Row {
                name: "admitted",
                ..GOOD
            },
            Row {
                name: "over the stream cap, before draining",
                over_cap: true,
                draining: true,
                want: DialStatus::LimitReached,
                ..GOOD
            },
            Row {
                name: "draining, before policy age",
                draining: true,
                policy_age: 2 * 3600,
                want: DialStatus::Draining,
                ..GOOD
            },
            Row {
                name: "policy too old, before the request",
                policy_age: 3601,
                version: 0,
                want: DialStatus::NotReady,
                ..GOOD
            },
            Row {
                name: "policy exactly at the limit",
                policy_age: 3600,
                ..GOOD
            },
            Row {
                name: "no snapshot yet",
                snapshot: false,
                want: DialStatus::NotReady,
                ..GOOD
            },
            Row {
                name: "unsupported version, before the snapshot",
                version: PROTOCOL_VERSION + 1,
                snapshot: false,
                want: DialStatus::BadRequest,
                ..GOOD
            },
            Row {
                name: "invalid service name",
                service: "no spaces",
                want: DialStatus::BadRequest,
                ..GOOD
            },
            Row {
                name: "unknown service",
                service: "nope",
                want: DialStatus::UnknownService,
                ..GOOD
            },
            Row {
                name: "service this router may not serve",
                service: "logs",
                want: DialStatus::WrongRouter,
                ..GOOD
            },
            Row {
                name: "identity without a policy",
                peer: "other",
                want: DialStatus::NotAuthorized,
                ..GOOD
            },
            Row {
                name: "identity unknown to the snapshot",
                peer: "ghost",
                want: DialStatus::NotAuthorized,
                ..GOOD
            },
        ];
        for row in &rows {
            let got = run(row).map_or_else(|r| r.status, |_| DialStatus::Ok);
            assert_eq!(got, row.want, "{}", row.name);
        }
        let reached: Vec<DialStatus> = rows.iter().map(|r| r.want).collect();
        for status in all_statuses() {
            assert!(
                reached.contains(&status) || status == DialStatus::ServiceUnreachable,
                "no row reaches {status:?}"
            );
        }
    }

    /// Every status; the match fails to compile when one is added, so the
    /// table above must be looked at again.
    fn all_statuses() -> [DialStatus; 9] {
        let all = [
            DialStatus::Ok,
            DialStatus::UnknownService,
            DialStatus::NotAuthorized,
            DialStatus::ServiceUnreachable,
            DialStatus::BadRequest,
            DialStatus::NotReady,
            DialStatus::WrongRouter,
            DialStatus::LimitReached,
            DialStatus::Draining,
        ];
        for s in all {
            match s {
                DialStatus::Ok
                | DialStatus::UnknownService
                | DialStatus::NotAuthorized
                | DialStatus::ServiceUnreachable
                | DialStatus::BadRequest
                | DialStatus::NotReady
                | DialStatus::WrongRouter
                | DialStatus::LimitReached
                | DialStatus::Draining => {}
            }
        }
        all
    }

    #[test]
    fn admitted_dials_go_to_the_service_address() {
        let d = run(&GOOD).expect("admitted");
        assert_eq!(d.address, "10.0.0.1:5432");
        assert!(d.fluent.is_none());
    }

    #[test]
    fn refusals_say_what_to_do() {
        let cases = [
            (
                Row {
                    over_cap: true,
                    ..GOOD
                },
                "--max-streams-per-identity",
            ),
            (
                Row {
                    draining: true,
                    ..GOOD
                },
                "router r1 is shutting down",
            ),
            (
                Row {
                    policy_age: 3601,
                    ..GOOD
                },
                "3601 s",
            ),
            (
                Row {
                    snapshot: false,
                    ..GOOD
                },
                "try again shortly",
            ),
        ];
        for (row, says) in cases {
            let Err(e) = run(&row) else {
                panic!("admitted; expected a refusal saying {says}")
            };
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn unreachable_names_the_service_and_address() {
        let r = unreachable("db", "10.0.0.1:5432", "connection refused");
        assert_eq!(r.status, DialStatus::ServiceUnreachable);
        assert_eq!(
            r.message,
            "cannot reach service db at 10.0.0.1:5432: connection refused"
        );
    }

    #[test]
    fn open_streams_are_checked_again_at_now() {
        let s = snapshot();
        let router = n("r1");
        assert!(check_still_allowed(NOW, &router, &client("app"), "db", &s).is_ok());
        assert!(check_still_allowed(NOW, &router, &client("other"), "db", &s).is_err());
        // The certificate expires at NOW + 3600.
        assert!(check_still_allowed(NOW + 3600, &router, &client("app"), "db", &s).is_err());
    }

    #[test]
    fn policy_age_limit() {
        assert!(check_policy_age(Duration::ZERO, Some(HOUR)).is_ok());
        assert!(check_policy_age(HOUR, Some(HOUR)).is_ok());
        let e = check_policy_age(HOUR + Duration::from_secs(1), Some(HOUR))
            .expect_err("older than the limit");
        assert!(e.contains("3601 s"), "{e}");
        assert!(e.contains("--max-policy-age"), "{e}");
        assert!(check_policy_age(Duration::from_secs(u64::MAX), None).is_ok());
    }
}
