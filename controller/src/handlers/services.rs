//! Services: the private `host:port` endpoints routers connect to, or
//! hosted services (no address) that routers reach through the
//! terminators of hosters, and `service show` with those terminators.

use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{AdminResponse, ControlError, ServiceDetail};
use darkport_proto::policy::{
    AppHandshake, EventTimeForm, ServiceEntry, ServiceProtocol, TerminatorStrategy,
};
use dashmap::DashMap;

use super::{bad, insert_new, not_found, remove_named, Caller, Presence};
use crate::store::Store;

/// Creates a service.
pub fn create(store: &Store, by: Caller, svc: ServiceEntry) -> Result<AdminResponse, ControlError> {
    check_address(&svc.address)?;
    check_protocol(&svc.protocol)?;
    let mut what = format!("created service {} {}", svc.name, reached(&svc.address));
    if svc.strategy != TerminatorStrategy::default() {
        what.push_str(&format!(" strategy {}", svc.strategy.name()));
    }
    store.update(true, by.audit(what), |s| {
        insert_new(&mut s.services, "service", svc.name.clone(), svc.clone())?;
        Ok(AdminResponse::Done)
    })
}

/// How a service is reached, for audit entries: `at ADDRESS`, or
/// `hosted`.
fn reached(address: &str) -> String {
    if address.is_empty() {
        "hosted".into()
    } else {
        format!("at {address}")
    }
}

/// Every service, shared keys redacted.
pub fn list(store: &Store) -> AdminResponse {
    AdminResponse::Services(
        store
            .read()
            .services
            .values()
            .cloned()
            .map(redact_shared_key)
            .collect(),
    )
}

/// What `service update` changes; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct ServiceUpdate {
    /// A new address (`HOST:PORT`), or empty: hosted.
    pub address: Option<String>,
    /// A new protocol.
    pub protocol: Option<ServiceProtocol>,
    /// A new terminator strategy.
    pub strategy: Option<TerminatorStrategy>,
}

/// Changes what `change` gives of a service.
pub fn update(
    store: &Store,
    by: Caller,
    name: IdentityName,
    change: ServiceUpdate,
) -> Result<AdminResponse, ControlError> {
    let ServiceUpdate {
        address,
        protocol,
        strategy,
    } = change;
    if let Some(a) = &address {
        check_address(a)?;
    }
    if let Some(p) = &protocol {
        check_protocol(p)?;
    }
    let mut what = format!("updated service {name}");
    if let Some(a) = &address {
        if a.is_empty() {
            what.push_str(" hosted");
        } else {
            what.push_str(&format!(" address {a}"));
        }
    }
    if let Some(p) = &protocol {
        what.push_str(&format!(" protocol {}", p.name()));
    }
    if let Some(t) = strategy {
        what.push_str(&format!(" strategy {}", t.name()));
    }
    store.update(true, by.audit(what), |s| {
        let svc = s
            .services
            .get_mut(&name)
            .ok_or_else(|| not_found("service", &name))?;
        if let Some(a) = &address {
            svc.address = a.clone();
        }
        if let Some(p) = &protocol {
            svc.protocol = keep_redacted(&svc.protocol, p.clone());
        }
        if let Some(t) = strategy {
            svc.strategy = t;
        }
        Ok(AdminResponse::Done)
    })
}

/// One service (secrets redacted, as listed) with the terminators that
/// the routers in session with this controller last reported for it.
pub fn show(
    store: &Store,
    online: &DashMap<IdentityName, Presence>,
    name: &IdentityName,
) -> Result<AdminResponse, ControlError> {
    let entry = store
        .read()
        .services
        .get(name)
        .cloned()
        .ok_or_else(|| not_found("service", name))?;
    let mut terminators: Vec<_> = online
        .iter()
        .flat_map(|p| {
            p.terminators
                .iter()
                .filter(|t| t.service == name.as_str())
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    terminators.sort_by(|a, b| {
        (&a.router, &a.hoster, &a.instance).cmp(&(&b.router, &b.hoster, &b.instance))
    });
    Ok(AdminResponse::Service(ServiceDetail {
        entry: redact_shared_key(entry),
        terminators,
    }))
}

/// Deletes a service.
pub fn delete(
    store: &Store,
    by: Caller,
    name: IdentityName,
) -> Result<AdminResponse, ControlError> {
    store.update(true, by.audit(format!("deleted service {name}")), |s| {
        remove_named(&mut s.services, "service", &name)
    })
}

/// Routers dial the address as given: it must be `HOST:PORT`, or empty
/// for a hosted service.
fn check_address(address: &str) -> Result<(), ControlError> {
    if !address.is_empty() && darkport_transport::endpoint::parse_host_port(address).is_none() {
        return Err(bad(format!("service address {address:?} is not HOST:PORT")));
    }
    Ok(())
}

/// A listed service says whether it has a shared key, a password or an
/// app-side key, never which.
fn redact_shared_key(mut s: ServiceEntry) -> ServiceEntry {
    if let ServiceProtocol::FluentForward(f) = &mut s.protocol {
        if f.shared_key.is_some() {
            f.shared_key = Some(REDACTED.into());
        }
        if let Some(u) = &mut f.service_user {
            u.password = REDACTED.into();
        }
        if let AppHandshake::SharedKey(k) = &mut f.app_handshake {
            *k = REDACTED.into();
        }
    }
    s
}

/// `new` with each secret given as listed (`(set)`) replaced by the one
/// the service has: `service update` sends back what `service list`
/// showed for settings it does not change.
fn keep_redacted(old: &ServiceProtocol, mut new: ServiceProtocol) -> ServiceProtocol {
    let (ServiceProtocol::FluentForward(old), ServiceProtocol::FluentForward(f)) = (old, &mut new)
    else {
        return new;
    };
    if f.shared_key.as_deref() == Some(REDACTED) {
        f.shared_key = old.shared_key.clone();
    }
    if let (Some(u), Some(o)) = (&mut f.service_user, &old.service_user) {
        if u.password == REDACTED && u.username == o.username {
            u.password = o.password.clone();
        }
    }
    if f.app_handshake == AppHandshake::SharedKey(REDACTED.into()) {
        if let AppHandshake::SharedKey(_) = &old.app_handshake {
            f.app_handshake = old.app_handshake.clone();
        }
    }
    new
}

/// What a listed secret shows.
const REDACTED: &str = "(set)";

/// A secret (shared key, password) is 1 to 1024 bytes.
fn check_secret(what: &str, secret: &str) -> Result<(), ControlError> {
    if secret.is_empty() || secret.len() > 1024 {
        return Err(bad(format!("{what} is 1 to 1024 bytes")));
    }
    Ok(())
}

/// Stamp keys (and the metadata key) are record keys: 1 to 128 printable
/// characters, no two the same; secrets are 1 to 1024 bytes; a service
/// user goes with a shared key; a metadata key with unwrapped times.
fn check_protocol(p: &ServiceProtocol) -> Result<(), ControlError> {
    let ServiceProtocol::FluentForward(f) = p else {
        return Ok(());
    };
    let keys: Vec<&String> = std::iter::once(&f.identity_key)
        .chain(f.roles_key.iter())
        .chain(f.router_key.iter())
        .chain(f.metadata_key.iter())
        .collect();
    for k in &keys {
        if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_control()) {
            return Err(bad(format!(
                "stamp key {k:?} must be 1 to 128 printable characters"
            )));
        }
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].contains(k) {
            return Err(bad(format!("stamp key {k:?} is used twice")));
        }
    }
    if let Some(k) = &f.shared_key {
        check_secret("a shared key", k)?;
    }
    if let Some(u) = &f.service_user {
        if f.shared_key.is_none() {
            return Err(bad(
                "a service user needs the service's shared key too (--shared-key-file): Fluentd checks users only inside <security>",
            ));
        }
        if u.username.is_empty() || u.username.len() > 128 {
            return Err(bad("a service user name is 1 to 128 bytes"));
        }
        check_secret("a service password", &u.password)?;
    }
    if let AppHandshake::SharedKey(k) = &f.app_handshake {
        check_secret("an app-side shared key", k)?;
    }
    if f.metadata_key.is_some() && f.event_time == EventTimeForm::Keep {
        return Err(bad(
            "--metadata-key applies to --event-time unwrap only (with keep, the metadata stays in the time)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{done, fails, name, Fixture, T0};
    use darkport_proto::msg::{
        AdminRequest, ControlErrorCode, Precedence, RouterReport, TerminatorInfo,
    };
    use darkport_proto::policy::FluentSettings;

    fn svc(n: &str, address: &str, protocol: ServiceProtocol) -> ServiceEntry {
        ServiceEntry {
            name: name(n),
            address: address.into(),
            roles: vec![name("logs")],
            protocol,
            strategy: Default::default(),
        }
    }

    fn fluent(f: impl FnOnce(&mut FluentSettings)) -> ServiceProtocol {
        let mut s = FluentSettings::default();
        f(&mut s);
        ServiceProtocol::FluentForward(s)
    }

    fn user(name: &str, password: &str) -> darkport_proto::policy::FluentUser {
        darkport_proto::policy::FluentUser {
            username: name.into(),
            password: password.into(),
        }
    }

    #[test]
    fn an_update_that_sends_back_listed_secrets_keeps_them() {
        let f = Fixture::new();
        let p = fluent(|s| {
            s.shared_key = Some("secret".into());
            s.service_user = Some(user("alice", "pw"));
            s.app_handshake = AppHandshake::SharedKey("app-secret".into());
        });
        done(f.run(T0, AdminRequest::CreateService(svc("logs", "h:1", p))));
        let Ok(AdminResponse::Services(list)) = f.run(T0, AdminRequest::ListServices) else {
            panic!("expected services");
        };
        let ServiceProtocol::FluentForward(mut listed) = list[0].protocol.clone() else {
            panic!("fluent-forward");
        };
        listed.event_time = EventTimeForm::Keep;
        done(f.run(
            T0,
            AdminRequest::UpdateService {
                name: name("logs"),
                address: None,
                protocol: Some(ServiceProtocol::FluentForward(listed)),
                strategy: None,
            },
        ));
        let ServiceProtocol::FluentForward(stored) =
            f.store.read().services[&name("logs")].protocol.clone()
        else {
            panic!("fluent-forward");
        };
        assert_eq!(stored.event_time, EventTimeForm::Keep, "the change");
        assert_eq!(stored.shared_key.as_deref(), Some("secret"), "kept");
        assert_eq!(stored.service_user, Some(user("alice", "pw")));
        assert_eq!(
            stored.app_handshake,
            AppHandshake::SharedKey("app-secret".into())
        );
    }

    #[test]
    fn list_redacts_the_password_and_the_app_side_key() {
        let f = Fixture::new();
        let p = fluent(|s| {
            s.shared_key = Some("secret".into());
            s.service_user = Some(user("alice", "pw"));
            s.app_handshake = AppHandshake::SharedKey("app-secret".into());
        });
        done(f.run(
            T0,
            AdminRequest::CreateService(svc("logs", "10.0.0.1:24224", p)),
        ));
        let Ok(AdminResponse::Services(list)) = f.run(T0, AdminRequest::ListServices) else {
            panic!("expected services");
        };
        let ServiceProtocol::FluentForward(got) = &list[0].protocol else {
            panic!("fluent-forward");
        };
        assert_eq!(got.service_user, Some(user("alice", "(set)")));
        assert_eq!(got.app_handshake, AppHandshake::SharedKey("(set)".into()));
        assert_eq!(got.shared_key.as_deref(), Some("(set)"));
    }

    #[test]
    fn create_then_list_redacts_the_shared_key() {
        let f = Fixture::new();
        let p = fluent(|s| s.shared_key = Some("secret".into()));
        done(f.run(
            T0,
            AdminRequest::CreateService(svc("logs", "10.0.0.1:24224", p.clone())),
        ));
        assert_eq!(
            f.store.read().services[&name("logs")].protocol,
            p,
            "the key is stored"
        );
        let Ok(AdminResponse::Services(list)) = f.run(T0, AdminRequest::ListServices) else {
            panic!("expected services");
        };
        assert_eq!(
            list,
            vec![svc(
                "logs",
                "10.0.0.1:24224",
                fluent(|s| s.shared_key = Some("(set)".into()))
            )]
        );
        let a = &f.audit()[0];
        assert_eq!(
            (a.at, a.action.as_str()),
            (T0, "created service logs at 10.0.0.1:24224")
        );
    }

    #[test]
    fn create_refuses_duplicates() {
        let f = Fixture::new();
        done(f.run(
            T0,
            AdminRequest::CreateService(svc("db", "db:5432", ServiceProtocol::Tcp)),
        ));
        let m = fails(
            f.run(
                T0,
                AdminRequest::CreateService(svc("db", "db2:5432", ServiceProtocol::Tcp)),
            ),
            ControlErrorCode::AlreadyExists,
        );
        assert_eq!(m, "a service named db exists already");
        assert_eq!(f.store.read().services[&name("db")].address, "db:5432");
        assert_eq!(f.audit().len(), 1);
    }

    #[test]
    fn create_refuses_bad_addresses_and_protocols() {
        let f = Fixture::new();
        let cases = [
            (
                svc("a", "no-port", ServiceProtocol::Tcp),
                "service address \"no-port\" is not HOST:PORT",
            ),
            (
                svc("a", "h:1", fluent(|s| s.identity_key = String::new())),
                "stamp key \"\" must be 1 to 128 printable characters",
            ),
            (
                svc("a", "h:1", fluent(|s| s.roles_key = Some("x\ny".into()))),
                "stamp key \"x\\ny\" must be 1 to 128 printable characters",
            ),
            (
                svc("a", "h:1", fluent(|s| s.router_key = Some("k".repeat(129)))),
                &format!(
                    "stamp key {:?} must be 1 to 128 printable characters",
                    "k".repeat(129)
                ),
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| s.router_key = Some(s.identity_key.clone())),
                ),
                "stamp key \"darkport_identity\" is used twice",
            ),
            (
                svc("a", "h:1", fluent(|s| s.shared_key = Some(String::new()))),
                "a shared key is 1 to 1024 bytes",
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| s.shared_key = Some("k".repeat(1025))),
                ),
                "a shared key is 1 to 1024 bytes",
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| s.service_user = Some(user("u", "p"))),
                ),
                "a service user needs the service's shared key too (--shared-key-file): Fluentd checks users only inside <security>",
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| {
                        s.shared_key = Some("k".into());
                        s.service_user = Some(user("u", ""));
                    }),
                ),
                "a service password is 1 to 1024 bytes",
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| s.app_handshake = AppHandshake::SharedKey(String::new())),
                ),
                "an app-side shared key is 1 to 1024 bytes",
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| s.metadata_key = Some(s.identity_key.clone())),
                ),
                "stamp key \"darkport_identity\" is used twice",
            ),
            (
                svc(
                    "a",
                    "h:1",
                    fluent(|s| {
                        s.metadata_key = Some("fb_meta".into());
                        s.event_time = EventTimeForm::Keep;
                    }),
                ),
                "--metadata-key applies to --event-time unwrap only (with keep, the metadata stays in the time)",
            ),
        ];
        for (s, want) in cases {
            let m = fails(
                f.run(T0, AdminRequest::CreateService(s)),
                ControlErrorCode::BadRequest,
            );
            assert_eq!(m, want);
        }
        assert!(f.store.read().services.is_empty());
        // The limits themselves are allowed.
        done(f.run(
            T0,
            AdminRequest::CreateService(svc(
                "a",
                "h:1",
                fluent(|s| {
                    s.router_key = Some("k".repeat(128));
                    s.shared_key = Some("k".repeat(1024));
                }),
            )),
        ));
    }

    #[test]
    fn update_changes_what_is_given_and_audits_it() {
        let f = Fixture::new();
        done(f.run(
            T0,
            AdminRequest::CreateService(svc("db", "db:5432", ServiceProtocol::Tcp)),
        ));
        let update = |address: Option<&str>, protocol| AdminRequest::UpdateService {
            name: name("db"),
            address: address.map(String::from),
            protocol,
            strategy: None,
        };
        done(f.run(T0 + 1, update(Some("db2:5432"), None)));
        done(f.run(T0 + 2, update(None, Some(fluent(|_| {})))));
        let s = f.store.read();
        assert_eq!(
            s.services[&name("db")],
            svc("db", "db2:5432", fluent(|_| {}))
        );
        let actions: Vec<(u64, String)> = f.audit().into_iter().map(|a| (a.at, a.action)).collect();
        assert_eq!(
            actions[1..],
            [
                (T0 + 1, "updated service db address db2:5432".to_string()),
                (
                    T0 + 2,
                    "updated service db protocol fluent-forward".to_string()
                )
            ]
        );
        let m = fails(
            f.run(T0, update(Some("nope"), None)),
            ControlErrorCode::BadRequest,
        );
        assert_eq!(m, "service address \"nope\" is not HOST:PORT");
        let m = fails(
            f.run(
                T0,
                update(None, Some(fluent(|s| s.shared_key = Some(String::new())))),
            ),
            ControlErrorCode::BadRequest,
        );
        assert_eq!(m, "a shared key is 1 to 1024 bytes");
        let m = fails(
            f.run(
                T0,
                AdminRequest::UpdateService {
                    name: name("web"),
                    address: None,
                    protocol: None,
                    strategy: None,
                },
            ),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no service named web");
        assert_eq!(f.audit().len(), 3);
    }

    /// A service with no address is hosted; `update` moves a service
    /// between an address and hosting, and changes its strategy.
    #[test]
    fn hosted_services_and_strategies() {
        let f = Fixture::new();
        let mut api = svc("api", "", ServiceProtocol::Tcp);
        api.strategy = TerminatorStrategy::Sticky;
        done(f.run(T0, AdminRequest::CreateService(api.clone())));
        assert_eq!(f.store.read().services[&name("api")], api);
        let update = |address: Option<&str>, strategy| AdminRequest::UpdateService {
            name: name("api"),
            address: address.map(String::from),
            protocol: None,
            strategy,
        };
        done(f.run(T0 + 1, update(Some("api:443"), None)));
        done(f.run(T0 + 2, update(Some(""), Some(TerminatorStrategy::Random))));
        let stored = f.store.read().services[&name("api")].clone();
        assert!(!stored.has_address());
        assert_eq!(stored.strategy, TerminatorStrategy::Random);
        let actions: Vec<String> = f.audit().into_iter().map(|a| a.action).collect();
        assert_eq!(
            actions,
            [
                "created service api hosted strategy sticky",
                "updated service api address api:443",
                "updated service api hosted strategy random",
            ]
        );
    }

    fn terminator(service: &str, hoster: &str, router: &str) -> TerminatorInfo {
        TerminatorInfo {
            service: service.into(),
            hoster: name(hoster),
            instance: "i-1".into(),
            router: name(router),
            cost: 10,
            precedence: Precedence::Default,
            streams: 2,
        }
    }

    fn report(terminators: Vec<TerminatorInfo>) -> RouterReport {
        RouterReport {
            snapshot_version: 1,
            clients: vec![],
            terminators,
        }
    }

    fn show(f: &Fixture, n: &str) -> ServiceDetail {
        match f.run(T0, AdminRequest::ShowService { name: name(n) }) {
            Ok(AdminResponse::Service(d)) => d,
            other => panic!("expected a service, got {other:?}"),
        }
    }

    /// `service show` lists the terminators of the service from every
    /// router's latest report, named by the router that reported them
    /// (whatever the report said), sorted; a report replaces the
    /// router's previous one, and a router whose session ended has none.
    #[test]
    fn show_lists_the_terminators_routers_reported() {
        let f = Fixture::new();
        let p = fluent(|s| s.shared_key = Some("secret".into()));
        done(f.run(T0, AdminRequest::CreateService(svc("logs", "", p))));
        for (router, session) in [("r2", 2), ("r1", 1)] {
            f.online.insert(
                name(router),
                Presence {
                    session,
                    ..Presence::default()
                },
            );
        }
        let record = |router: &str, r: RouterReport| {
            f.online
                .get_mut(&name(router))
                .expect("online")
                .record(&name(router), &r);
        };
        record(
            "r2",
            report(vec![
                terminator("logs", "h-b", "lies"),
                terminator("other", "h-b", "r2"),
            ]),
        );
        record("r1", report(vec![terminator("logs", "h-a", "r1")]));
        let d = show(&f, "logs");
        assert_eq!(d.entry.name, name("logs"));
        let ServiceProtocol::FluentForward(listed) = &d.entry.protocol else {
            panic!("fluent-forward");
        };
        assert_eq!(listed.shared_key.as_deref(), Some(REDACTED), "redacted");
        assert_eq!(
            d.terminators,
            vec![
                terminator("logs", "h-a", "r1"),
                terminator("logs", "h-b", "r2")
            ]
        );
        // The next report replaces the last: r1's hoster withdrew.
        record("r1", report(vec![]));
        assert_eq!(d_hosters(&show(&f, "logs")), ["h-b"]);
        // r2's session ended.
        f.online.remove(&name("r2"));
        assert!(show(&f, "logs").terminators.is_empty());
        let m = fails(
            f.run(T0, AdminRequest::ShowService { name: name("nope") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no service named nope");
    }

    fn d_hosters(d: &ServiceDetail) -> Vec<&str> {
        d.terminators.iter().map(|t| t.hoster.as_str()).collect()
    }

    #[test]
    fn delete_removes_and_refuses_unknown_names() {
        let f = Fixture::new();
        done(f.run(
            T0,
            AdminRequest::CreateService(svc("db", "db:5432", ServiceProtocol::Tcp)),
        ));
        done(f.run(T0, AdminRequest::DeleteService { name: name("db") }));
        assert!(f.store.read().services.is_empty());
        assert_eq!(f.audit()[1].action, "deleted service db");
        let m = fails(
            f.run(T0, AdminRequest::DeleteService { name: name("db") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no service named db");
    }
}
