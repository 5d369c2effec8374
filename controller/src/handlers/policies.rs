//! Service policies (who may dial what, and, bind policies, who may host
//! what), router policies (which router may serve what) and `explain`,
//! which evaluates them.

use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{AdminResponse, ControlError};
use darkport_proto::policy::{PolicyEntry, PolicyKind, RouterPolicyEntry};

use super::{bad, insert_new, remove_named, Caller};
use crate::store::Store;

/// Creates a service policy, dial or bind.
pub fn create(store: &Store, by: Caller, p: PolicyEntry) -> Result<AdminResponse, ControlError> {
    if p.services.is_empty() || p.identities.is_empty() {
        return Err(bad(
            "a policy needs at least one --service-roles and one --identity-roles selector",
        ));
    }
    if p.kind == PolicyKind::Bind && !p.tags.is_empty() {
        return Err(bad(
            "a bind policy has no tag patterns: --tags limits what dialing identities may write to a fluent-forward service; give it to a dial policy",
        ));
    }
    if p.tags.len() > darkport_proto::tags::MAX_PATTERNS {
        return Err(bad(format!(
            "at most {} tag patterns per policy",
            darkport_proto::tags::MAX_PATTERNS
        )));
    }
    for t in &p.tags {
        darkport_proto::tags::check(t).map_err(|e| bad(e.to_string()))?;
    }
    let what = match p.kind {
        PolicyKind::Dial => "service policy",
        PolicyKind::Bind => "bind policy",
    };
    store.update(true, by.audit(format!("created {what} {}", p.name)), |s| {
        insert_new(&mut s.policies, "policy", p.name.clone(), p.clone())?;
        Ok(AdminResponse::Done)
    })
}

/// Every service policy.
pub fn list(store: &Store) -> AdminResponse {
    AdminResponse::Policies(store.read().policies.values().cloned().collect())
}

/// Deletes a service policy.
pub fn delete(
    store: &Store,
    by: Caller,
    name: IdentityName,
) -> Result<AdminResponse, ControlError> {
    store.update(
        true,
        by.audit(format!("deleted service policy {name}")),
        |s| remove_named(&mut s.policies, "policy", &name),
    )
}

/// Creates a router policy.
pub fn create_router_policy(
    store: &Store,
    by: Caller,
    p: RouterPolicyEntry,
) -> Result<AdminResponse, ControlError> {
    if p.routers.is_empty() || p.services.is_empty() {
        return Err(bad(
            "a router policy needs at least one --router and one --service selector",
        ));
    }
    store.update(
        true,
        by.audit(format!("created router policy {}", p.name)),
        |s| {
            insert_new(
                &mut s.router_policies,
                "router policy",
                p.name.clone(),
                p.clone(),
            )?;
            Ok(AdminResponse::Done)
        },
    )
}

/// Every router policy.
pub fn list_router_policies(store: &Store) -> AdminResponse {
    AdminResponse::RouterPolicies(store.read().router_policies.values().cloned().collect())
}

/// Deletes a router policy.
pub fn delete_router_policy(
    store: &Store,
    by: Caller,
    name: IdentityName,
) -> Result<AdminResponse, ControlError> {
    store.update(
        true,
        by.audit(format!("deleted router policy {name}")),
        |s| remove_named(&mut s.router_policies, "router policy", &name),
    )
}

/// Whether `identity` may dial `service` (and write `tag`), and why, on
/// the snapshot routers would get at `now` (certificates expired by then
/// do not count).
pub fn explain(
    store: &Store,
    now: u64,
    identity: &IdentityName,
    service: &str,
    tag: Option<&str>,
) -> AdminResponse {
    AdminResponse::Explanation(darkport_proto::policy::explain(
        &store.read().snapshot(now),
        identity,
        service,
        tag,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{done, fails, name, Fixture, T0};
    use crate::store::{CertRecord, IdentityRecord, State};
    use darkport_proto::identity::Kind;
    use darkport_proto::msg::{AdminRequest, ControlErrorCode};
    use darkport_proto::policy::{Selector, ServiceEntry, ServiceProtocol};

    fn policy(n: &str, tags: &[&str]) -> AdminRequest {
        policy_of(PolicyKind::Dial, n, tags)
    }

    fn policy_of(kind: PolicyKind, n: &str, tags: &[&str]) -> AdminRequest {
        AdminRequest::CreatePolicy {
            name: name(n),
            services: vec![Selector::Name(name("db"))],
            identities: vec![Selector::Role(name("app"))],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kind,
        }
    }

    fn router_policy(n: &str) -> RouterPolicyEntry {
        RouterPolicyEntry {
            name: name(n),
            routers: vec![Selector::All],
            services: vec![Selector::All],
        }
    }

    #[test]
    fn create_list_delete_policy() {
        let f = Fixture::new();
        done(f.run(T0, policy("p1", &["app.${identity}.*"])));
        let Ok(AdminResponse::Policies(list)) = f.run(T0, AdminRequest::ListPolicies) else {
            panic!("expected policies");
        };
        assert_eq!(
            list,
            vec![PolicyEntry {
                name: name("p1"),
                services: vec![Selector::Name(name("db"))],
                identities: vec![Selector::Role(name("app"))],
                tags: vec!["app.${identity}.*".into()],
                kind: Default::default(),
            }]
        );
        assert_eq!(f.store.read().version, 1);
        done(f.run(T0 + 1, AdminRequest::DeletePolicy { name: name("p1") }));
        assert!(f.store.read().policies.is_empty());
        let actions: Vec<(u64, String)> = f.audit().into_iter().map(|a| (a.at, a.action)).collect();
        assert_eq!(
            actions,
            [
                (T0, "created service policy p1".to_string()),
                (T0 + 1, "deleted service policy p1".to_string())
            ]
        );
    }

    /// A bind policy is stored as one, audited as one, and has no tags.
    #[test]
    fn create_bind_policy() {
        let f = Fixture::new();
        done(f.run(T0, policy_of(PolicyKind::Bind, "hosts", &[])));
        assert_eq!(
            f.store.read().policies[&name("hosts")].kind,
            PolicyKind::Bind
        );
        assert_eq!(f.audit()[0].action, "created bind policy hosts");
        let m = fails(
            f.run(T0, policy_of(PolicyKind::Bind, "tagged", &["app.**"])),
            ControlErrorCode::BadRequest,
        );
        assert!(m.starts_with("a bind policy has no tag patterns"), "{m}");
        assert!(!f.store.read().policies.contains_key(&name("tagged")));
        assert_eq!(f.audit().len(), 1);
    }

    #[test]
    fn create_policy_refusals() {
        let f = Fixture::new();
        done(f.run(T0, policy("p1", &[])));
        let m = fails(
            f.run(T0, policy("p1", &[])),
            ControlErrorCode::AlreadyExists,
        );
        assert_eq!(m, "a policy named p1 exists already");
        let empty = AdminRequest::CreatePolicy {
            name: name("p2"),
            services: vec![],
            identities: vec![Selector::All],
            tags: vec![],
            kind: PolicyKind::Bind,
        };
        let m = fails(f.run(T0, empty), ControlErrorCode::BadRequest);
        assert_eq!(
            m,
            "a policy needs at least one --service-roles and one --identity-roles selector"
        );
        let too_many: Vec<String> = (0..=darkport_proto::tags::MAX_PATTERNS)
            .map(|i| format!("t{i}"))
            .collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let m = fails(
            f.run(T0, policy("p2", &too_many)),
            ControlErrorCode::BadRequest,
        );
        assert_eq!(
            m,
            format!(
                "at most {} tag patterns per policy",
                darkport_proto::tags::MAX_PATTERNS
            )
        );
        let bad_tag = "a b";
        let m = fails(
            f.run(T0, policy("p2", &[bad_tag])),
            ControlErrorCode::BadRequest,
        );
        let want = darkport_proto::tags::check(bad_tag).expect_err("a space is not a tag");
        assert_eq!(m, want.to_string());
        assert_eq!(f.store.read().policies.len(), 1);
        assert_eq!(f.audit().len(), 1);
        let m = fails(
            f.run(T0, AdminRequest::DeletePolicy { name: name("p9") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no policy named p9");
    }

    #[test]
    fn create_list_delete_router_policy() {
        let f = Fixture::new();
        done(f.run(T0, AdminRequest::CreateRouterPolicy(router_policy("rp"))));
        let Ok(AdminResponse::RouterPolicies(list)) = f.run(T0, AdminRequest::ListRouterPolicies)
        else {
            panic!("expected router policies");
        };
        assert_eq!(list, vec![router_policy("rp")]);
        let m = fails(
            f.run(T0, AdminRequest::CreateRouterPolicy(router_policy("rp"))),
            ControlErrorCode::AlreadyExists,
        );
        assert_eq!(m, "a router policy named rp exists already");
        let mut empty = router_policy("rp2");
        empty.routers.clear();
        let m = fails(
            f.run(T0, AdminRequest::CreateRouterPolicy(empty)),
            ControlErrorCode::BadRequest,
        );
        assert_eq!(
            m,
            "a router policy needs at least one --router and one --service selector"
        );
        done(f.run(T0, AdminRequest::DeleteRouterPolicy { name: name("rp") }));
        let m = fails(
            f.run(T0, AdminRequest::DeleteRouterPolicy { name: name("rp") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no router policy named rp");
        let actions: Vec<String> = f.audit().into_iter().map(|a| a.action).collect();
        assert_eq!(
            actions,
            ["created router policy rp", "deleted router policy rp"]
        );
    }

    /// Explain judges certificates at the time it is given, not the clock.
    #[test]
    fn explain_uses_the_given_time() {
        let mut s = State::default();
        s.identities.insert(
            name("alice"),
            IdentityRecord {
                name: name("alice"),
                kind: Kind::Client,
                roles: vec![name("app")],
                certificates: vec![CertRecord {
                    fingerprint: "fp".into(),
                    issued_at: T0 - 10,
                    expires_at: T0 + 100,
                }],
                created_at: T0 - 10,
                revoked_at: None,
                last_seen: None,
            },
        );
        s.services.insert(
            name("db"),
            ServiceEntry {
                name: name("db"),
                address: "db:5432".into(),
                roles: vec![],
                protocol: ServiceProtocol::Tcp,
                strategy: Default::default(),
            },
        );
        let f = Fixture::with(s);
        done(f.run(T0, policy("p1", &[])));
        let explain = |now| {
            let Ok(AdminResponse::Explanation(e)) = f.run(
                now,
                AdminRequest::Explain {
                    identity: name("alice"),
                    service: "db".into(),
                    tag: None,
                },
            ) else {
                panic!("expected an explanation");
            };
            e
        };
        let no_cert = |e: &darkport_proto::policy::Explanation| {
            e.reasons.iter().any(|r| r.contains("no valid certificate"))
        };
        let before = explain(T0 + 99);
        assert_eq!(before.dial_policies, vec![name("p1")]);
        assert!(!no_cert(&before), "{:?}", before.reasons);
        let after = explain(T0 + 100);
        assert!(no_cert(&after), "{:?}", after.reasons);
        assert!(!after.allowed);
    }
}
