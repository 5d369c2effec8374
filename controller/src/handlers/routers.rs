//! Registered routers, whether they are online, and what they may serve.

use darkport_proto::identity::{IdentityName, Kind, PeerIdentity};
use darkport_proto::msg::{RouterInfo, RouterReport, TerminatorInfo};
use darkport_proto::policy::{IdentityEntry, PolicySnapshot};
use dashmap::DashMap;

use crate::store::Store;

/// What the controller knows of a connected router.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Distinguishes sessions, so an old session ending does not mark a
    /// newer one offline.
    pub session: u64,
    /// Snapshot version the router last reported.
    pub snapshot_version: Option<u64>,
    /// Clients connected to it, as last reported.
    pub clients: Vec<IdentityName>,
    /// Terminators registered with it, as last reported (each report
    /// replaces them; they go with the session). `router` is this
    /// router's name, whatever the report said.
    pub terminators: Vec<TerminatorInfo>,
}

impl Presence {
    /// Takes in a report from `router`: its snapshot version, clients and
    /// terminators replace what the previous report said.
    pub fn record(&mut self, router: &IdentityName, report: &RouterReport) {
        self.snapshot_version = Some(report.snapshot_version);
        self.clients = report.clients.clone();
        self.terminators = report
            .terminators
            .iter()
            .map(|t| TerminatorInfo {
                router: router.clone(),
                ..t.clone()
            })
            .collect();
    }
}

/// A router synced to another controller (high availability) counts as
/// online while its `last_seen` (written at most every 5 s) is this
/// recent.
pub const ELSEWHERE_ONLINE_SECS: u64 = 15;

/// Routers with what they may serve. For a client, only the services it
/// may dial or host are listed (a router serving none of them is still
/// listed, so the client gets the router's precise refusal rather than
/// no router): a hoster finds every router that may serve its services.
/// Routers revoked or deleted since they registered are left out. A
/// router is online when it has a session with this controller, or was
/// seen by another within [`ELSEWHERE_ONLINE_SECS`] of `now` (when more
/// than one controller is alive).
pub fn list(
    store: &Store,
    online: &DashMap<IdentityName, Presence>,
    asker: Option<&PeerIdentity>,
    now: u64,
) -> Vec<RouterInfo> {
    let state = store.read();
    let snapshot = store.snapshot();
    // Other controllers serve routers only when more than one is alive.
    let live = crate::bounds::CONTROLLER_LIVE.as_secs();
    let shared = state
        .controllers
        .values()
        .filter(|c| c.last_seen.saturating_add(live) >= now)
        .count()
        > 1;
    let client = asker
        .filter(|p| p.kind == Kind::Client)
        .and_then(|p| snapshot.identity(Kind::Client, &p.name));
    state
        .routers
        .iter()
        .filter_map(|(name, r)| {
            let router = snapshot.identity(Kind::Router, name)?;
            let services = served(&snapshot, router, client);
            let presence = online.get(name);
            Some(RouterInfo {
                name: name.clone(),
                advertise: r.advertise.clone(),
                online: presence.is_some()
                    || (shared && r.last_seen.saturating_add(ELSEWHERE_ONLINE_SECS) >= now),
                snapshot_version: presence.and_then(|p| p.snapshot_version),
                services,
            })
        })
        .collect()
}

/// The services `router` may serve (and, with `client`, that it may dial
/// or host).
fn served(
    snapshot: &PolicySnapshot,
    router: &IdentityEntry,
    client: Option<&IdentityEntry>,
) -> Vec<IdentityName> {
    snapshot
        .services
        .iter()
        .filter(|svc| snapshot.serve_policies(router, svc).next().is_some())
        .filter(|svc| {
            client.is_none_or(|c| {
                snapshot.dial_policies(c, svc).next().is_some()
                    || snapshot.bind_policies(c, svc).next().is_some()
            })
        })
        .map(|svc| svc.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{name, Fixture, T0};
    use crate::store::{CertRecord, IdentityRecord, RouterRecord, State};
    use darkport_proto::msg::{AdminRequest, AdminResponse};
    use darkport_proto::policy::{
        PolicyEntry, PolicyKind, RouterPolicyEntry, Selector, ServiceEntry, ServiceProtocol,
    };

    fn identity(n: &str, kind: Kind, revoked: bool) -> IdentityRecord {
        IdentityRecord {
            name: name(n),
            kind,
            roles: vec![],
            certificates: vec![CertRecord {
                fingerprint: format!("fp-{n}"),
                issued_at: T0,
                expires_at: u64::MAX,
            }],
            created_at: T0,
            revoked_at: revoked.then_some(T0),
            last_seen: None,
        }
    }

    /// Routers r1 (online) and r2 (offline) serve everything; r3 is
    /// revoked. Client alice may dial db only.
    fn fixture() -> Fixture {
        with_presence(state())
    }

    /// [`fixture`]'s state.
    fn state() -> State {
        let mut s = State::default();
        for (n, kind, revoked) in [
            ("r1", Kind::Router, false),
            ("r2", Kind::Router, false),
            ("r3", Kind::Router, true),
            ("alice", Kind::Client, false),
        ] {
            s.identities.insert(name(n), identity(n, kind, revoked));
            if kind == Kind::Router {
                s.routers.insert(
                    name(n),
                    RouterRecord {
                        advertise: format!("{n}.test:443"),
                        last_seen: T0,
                    },
                );
            }
        }
        for svc in ["db", "web"] {
            s.services.insert(
                name(svc),
                ServiceEntry {
                    name: name(svc),
                    address: format!("{svc}:1"),
                    roles: vec![],
                    protocol: ServiceProtocol::Tcp,
                    strategy: Default::default(),
                },
            );
        }
        s.router_policies.insert(
            name("all"),
            RouterPolicyEntry {
                name: name("all"),
                routers: vec![Selector::All],
                services: vec![Selector::All],
            },
        );
        s.policies.insert(
            name("p"),
            PolicyEntry {
                name: name("p"),
                services: vec![Selector::Name(name("db"))],
                identities: vec![Selector::Name(name("alice"))],
                tags: vec![],
                kind: Default::default(),
            },
        );
        s
    }

    /// A fixture on `s` with r1 online.
    fn with_presence(s: State) -> Fixture {
        let f = Fixture::with(s);
        f.online.insert(
            name("r1"),
            Presence {
                session: 1,
                snapshot_version: Some(4),
                ..Presence::default()
            },
        );
        f
    }

    #[test]
    fn admin_sees_every_unrevoked_router_and_all_it_serves() {
        let f = fixture();
        let Ok(AdminResponse::Routers(list)) = f.run(T0, AdminRequest::ListRouters) else {
            panic!("expected routers");
        };
        assert_eq!(
            list,
            vec![
                RouterInfo {
                    name: name("r1"),
                    advertise: "r1.test:443".into(),
                    online: true,
                    snapshot_version: Some(4),
                    services: vec![name("db"), name("web")],
                },
                RouterInfo {
                    name: name("r2"),
                    advertise: "r2.test:443".into(),
                    online: false,
                    snapshot_version: None,
                    services: vec![name("db"), name("web")],
                },
            ]
        );
    }

    #[test]
    fn a_client_sees_only_the_services_it_may_dial() {
        let f = fixture();
        let list = list(&f.store, &f.online, Some(&peer("alice")), T0);
        assert_eq!(list.len(), 2);
        for r in list {
            assert_eq!(r.services, vec![name("db")], "{}", r.name);
        }
    }

    fn peer(n: &str) -> PeerIdentity {
        PeerIdentity {
            kind: Kind::Client,
            name: name(n),
            fingerprint: format!("fp-{n}"),
        }
    }

    /// A hoster is told the routers that may serve the services it may
    /// host (bind policies), with those services; a client that dials one
    /// service and hosts another gets both; a router no router policy
    /// lets serve a service is listed without it.
    #[test]
    fn a_hoster_sees_the_services_it_may_host() {
        let mut s = state();
        s.identities
            .insert(name("hank"), identity("hank", Kind::Client, false));
        for (p, who) in [("hank-hosts-web", "hank"), ("alice-hosts-web", "alice")] {
            s.policies.insert(
                name(p),
                PolicyEntry {
                    name: name(p),
                    services: vec![Selector::Name(name("web"))],
                    identities: vec![Selector::Name(name(who))],
                    tags: vec![],
                    kind: PolicyKind::Bind,
                },
            );
        }
        let f = with_presence(s.clone());
        for (who, want) in [
            ("hank", vec![name("web")]),
            ("alice", vec![name("db"), name("web")]),
        ] {
            let routers = list(&f.store, &f.online, Some(&peer(who)), T0);
            assert_eq!(routers.len(), 2, "{who}");
            for r in routers {
                assert_eq!(r.services, want, "{who} on {}", r.name);
            }
        }
        // Only r1 may serve web.
        s.router_policies.insert(
            name("all"),
            RouterPolicyEntry {
                name: name("all"),
                routers: vec![Selector::Name(name("r1"))],
                services: vec![Selector::All],
            },
        );
        let f = with_presence(s);
        let served: Vec<(String, Vec<IdentityName>)> =
            list(&f.store, &f.online, Some(&peer("hank")), T0)
                .into_iter()
                .map(|r| (r.name.to_string(), r.services))
                .collect();
        assert_eq!(
            served,
            [
                ("r1".to_string(), vec![name("web")]),
                ("r2".to_string(), vec![])
            ]
        );
    }
}
