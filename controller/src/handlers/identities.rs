//! Identities: clients and routers, their roles and enrollment tokens.

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::{AdminResponse, ControlError, ControlErrorCode, IdentityInfo};
use darkport_proto::token::{SignedToken, TokenClaims};
use dashmap::DashMap;

use super::{bad, err, insert_new, not_found, Caller, Issuer, Presence};
use crate::bounds::MAX_TOKEN_TTL;
use crate::store::{IdentityRecord, Store, TokenRecord};

/// What `identity create` asks for.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    /// Name.
    pub name: IdentityName,
    /// Client or router.
    pub kind: Kind,
    /// Roles, for policy selectors.
    pub roles: Vec<IdentityName>,
    /// How long its enrollment token works, seconds.
    pub token_ttl_secs: u64,
}

/// Creates an identity and returns its one-time enrollment token, valid
/// until `by.now` plus the asked lifetime.
pub fn create(
    store: &Store,
    issuer: &Issuer,
    by: Caller,
    new: NewIdentity,
) -> Result<AdminResponse, ControlError> {
    let NewIdentity {
        name,
        kind,
        roles,
        token_ttl_secs,
    } = new;
    if !matches!(kind, Kind::Client | Kind::Router) {
        return Err(bad(format!(
            "identities are clients or routers, not {kind}"
        )));
    }
    if token_ttl_secs == 0 || token_ttl_secs > MAX_TOKEN_TTL.as_secs() {
        return Err(bad(format!(
            "token lifetime must be between 1 s and {} days",
            MAX_TOKEN_TTL.as_secs() / 86400
        )));
    }
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| err(ControlErrorCode::Internal, "random generator failed"))?;
    let claims = TokenClaims {
        token_id: hex::encode(id),
        identity: name.clone(),
        kind,
        controller: issuer.controller.to_owned(),
        ca_fingerprint: issuer.ca_fingerprint.to_owned(),
        expires_at: by.now + token_ttl_secs,
    };
    let token = SignedToken::sign(claims.clone(), issuer.key)
        .and_then(|t| t.encode())
        .map_err(|e| err(ControlErrorCode::Internal, e.to_string()))?;
    store.update(
        true,
        by.audit(format!("created {kind} identity {name}")),
        |s| {
            let record = IdentityRecord {
                name: name.clone(),
                kind,
                roles: roles.clone(),
                certificates: vec![],
                created_at: by.now,
                revoked_at: None,
                last_seen: None,
            };
            insert_new(&mut s.identities, "identity", name.clone(), record)?;
            s.tokens.insert(
                claims.token_id.clone(),
                TokenRecord {
                    identity: name.clone(),
                    expires_at: claims.expires_at,
                    consumed_at: None,
                },
            );
            Ok::<_, ControlError>(())
        },
    )?;
    Ok(AdminResponse::Token {
        token,
        expires_at: claims.expires_at,
    })
}

/// Every identity, as of `now`.
pub fn list(store: &Store, online: &DashMap<IdentityName, Presence>, now: u64) -> AdminResponse {
    AdminResponse::Identities(
        store
            .read()
            .identities
            .values()
            .map(|i| info(online, i, now))
            .collect(),
    )
}

/// One identity, as of `now`.
pub fn show(
    store: &Store,
    online: &DashMap<IdentityName, Presence>,
    now: u64,
    name: &IdentityName,
) -> Result<AdminResponse, ControlError> {
    let state = store.read();
    let i = state
        .identities
        .get(name)
        .ok_or_else(|| not_found("identity", name))?;
    Ok(AdminResponse::Identity(info(online, i, now)))
}

/// Removes `remove` from the identity's roles, then adds `add` (once each).
pub fn update(
    store: &Store,
    by: Caller,
    name: IdentityName,
    add: Vec<IdentityName>,
    remove: Vec<IdentityName>,
) -> Result<AdminResponse, ControlError> {
    let what = format!("updated roles of {name}: +{add:?} -{remove:?}");
    store.update(true, by.audit(what), |s| {
        let i = s
            .identities
            .get_mut(&name)
            .ok_or_else(|| not_found("identity", &name))?;
        i.roles.retain(|r| !remove.contains(r));
        for r in &add {
            if !i.roles.contains(r) {
                i.roles.push(r.clone());
            }
        }
        Ok(AdminResponse::Done)
    })
}

/// Revokes an identity at `by.now` (a second revocation keeps the first
/// time) and voids its unused tokens. The admin identity cannot be revoked:
/// nothing could administer the controller afterwards.
pub fn revoke(
    store: &Store,
    by: Caller,
    name: IdentityName,
) -> Result<AdminResponse, ControlError> {
    store.update(true, by.audit(format!("revoked identity {name}")), |s| {
        let i = s
            .identities
            .get_mut(&name)
            .ok_or_else(|| not_found("identity", &name))?;
        if i.kind == Kind::Admin {
            return Err(bad("the admin identity cannot be revoked"));
        }
        if i.revoked_at.is_none() {
            i.revoked_at = Some(by.now);
        }
        s.tokens.retain(|_, t| t.identity != name);
        Ok(AdminResponse::Done)
    })
}

/// Deletes an identity, its router registration and its unused tokens.
pub fn delete(
    store: &Store,
    by: Caller,
    name: IdentityName,
) -> Result<AdminResponse, ControlError> {
    store.update(true, by.audit(format!("deleted identity {name}")), |s| {
        match s.identities.get(&name) {
            None => return Err(not_found("identity", &name)),
            Some(i) if i.kind == Kind::Admin => {
                return Err(bad("the admin identity cannot be deleted"))
            }
            Some(_) => {}
        }
        s.identities.remove(&name);
        s.routers.remove(&name);
        // Unused tokens must not enroll a later identity of the same name.
        s.tokens.retain(|_, t| t.identity != name);
        Ok(AdminResponse::Done)
    })
}

/// What an admin sees of `i` at `now`.
pub fn info(
    online: &DashMap<IdentityName, Presence>,
    i: &IdentityRecord,
    now: u64,
) -> IdentityInfo {
    let connected_to: Vec<IdentityName> = online
        .iter()
        .filter(|p| p.clients.contains(&i.name))
        .map(|p| p.key().clone())
        .collect();
    // Seen now if online (a router) or connected to an online router (a
    // client); the stored time is written at most every few seconds.
    let live = online.contains_key(&i.name) || !connected_to.is_empty();
    IdentityInfo {
        name: i.name.clone(),
        kind: i.kind,
        roles: i.roles.clone(),
        fingerprint: i.current().map(|c| c.fingerprint.clone()),
        cert_expires_at: i.current().map(|c| c.expires_at),
        revoked_at: i.revoked_at,
        last_seen: if live { Some(now) } else { i.last_seen },
        connected_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{done, fails, name, Fixture, T0};
    use crate::store::{CertRecord, RouterRecord, State};
    use darkport_proto::msg::AdminRequest;

    fn create_req(n: &str, kind: Kind, ttl: u64) -> AdminRequest {
        AdminRequest::CreateIdentity {
            name: name(n),
            kind,
            roles: vec![name("web")],
            token_ttl_secs: ttl,
        }
    }

    fn record(n: &str, kind: Kind) -> IdentityRecord {
        IdentityRecord {
            name: name(n),
            kind,
            roles: vec![],
            certificates: vec![CertRecord {
                fingerprint: format!("fp-{n}"),
                issued_at: T0 - 100,
                expires_at: T0 + 100,
            }],
            created_at: T0 - 100,
            revoked_at: None,
            last_seen: Some(T0 - 50),
        }
    }

    /// A state with admin `root`, client `alice` (with an unused token)
    /// and router `r1` (registered).
    fn populated() -> Fixture {
        let mut s = State::default();
        for (n, k) in [
            ("root", Kind::Admin),
            ("alice", Kind::Client),
            ("r1", Kind::Router),
        ] {
            s.identities.insert(name(n), record(n, k));
        }
        s.tokens.insert(
            "t-alice".into(),
            TokenRecord {
                identity: name("alice"),
                expires_at: T0 + 600,
                consumed_at: None,
            },
        );
        s.routers.insert(
            name("r1"),
            RouterRecord {
                advertise: "r1.test:443".into(),
                last_seen: T0 - 10,
            },
        );
        Fixture::with(s)
    }

    #[test]
    fn create_signs_a_token_that_expires_after_the_ttl_from_now() {
        let f = Fixture::new();
        let Ok(AdminResponse::Token { token, expires_at }) =
            f.run(T0, create_req("alice", Kind::Client, 600))
        else {
            panic!("expected a token");
        };
        assert_eq!(expires_at, T0 + 600);
        let signed = SignedToken::parse(&token).expect("token parses");
        let claims = signed.verify(&f.key, T0).expect("token verifies at T0");
        assert_eq!(claims.identity, name("alice"));
        assert_eq!(claims.kind, Kind::Client);
        assert_eq!(claims.controller, "controller.test:7000");
        assert_eq!(claims.ca_fingerprint, "ab12");
        assert!(
            signed.verify(&f.key, T0 + 600).is_err(),
            "expired at T0+ttl"
        );

        let s = f.store.read();
        let i = &s.identities[&name("alice")];
        assert_eq!((i.created_at, i.kind), (T0, Kind::Client));
        assert_eq!(i.roles, vec![name("web")]);
        assert_eq!(
            s.tokens[&claims.token_id],
            TokenRecord {
                identity: name("alice"),
                expires_at: T0 + 600,
                consumed_at: None
            }
        );
        assert_eq!(s.version, 1, "routers get a new snapshot");
        let audit = f.audit();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (
                audit[0].at,
                audit[0].actor.as_str(),
                audit[0].action.as_str()
            ),
            (T0, "root", "created client identity alice")
        );
    }

    #[test]
    fn create_refuses_other_kinds_and_bad_lifetimes() {
        let f = Fixture::new();
        for kind in [Kind::Admin, Kind::Controller] {
            let m = fails(
                f.run(T0, create_req("x", kind, 60)),
                ControlErrorCode::BadRequest,
            );
            assert_eq!(m, format!("identities are clients or routers, not {kind}"));
        }
        for ttl in [0, MAX_TOKEN_TTL.as_secs() + 1] {
            let m = fails(
                f.run(T0, create_req("x", Kind::Client, ttl)),
                ControlErrorCode::BadRequest,
            );
            assert_eq!(m, "token lifetime must be between 1 s and 30 days");
        }
        // The longest lifetime is allowed.
        f.run(T0, create_req("x", Kind::Router, MAX_TOKEN_TTL.as_secs()))
            .expect("30 days is allowed");
        assert_eq!(f.audit().len(), 1, "refusals are not audited");
    }

    #[test]
    fn create_refuses_a_duplicate_and_changes_nothing() {
        let f = populated();
        let before = f.store.read();
        let m = fails(
            f.run(T0, create_req("alice", Kind::Router, 60)),
            ControlErrorCode::AlreadyExists,
        );
        assert_eq!(m, "a identity named alice exists already");
        assert_eq!(*f.store.read(), *before, "no token, no version bump");
        assert!(f.audit().is_empty());
    }

    #[test]
    fn list_and_show_take_last_seen_from_presence_at_now() {
        let f = populated();
        f.online.insert(
            name("r1"),
            Presence {
                session: 1,
                snapshot_version: Some(3),
                clients: vec![name("alice")],
                ..Presence::default()
            },
        );
        let Ok(AdminResponse::Identities(all)) = f.run(T0, AdminRequest::ListIdentities) else {
            panic!("expected identities");
        };
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["alice", "r1", "root"]);
        let alice = &all[0];
        assert_eq!(alice.last_seen, Some(T0), "connected to an online router");
        assert_eq!(alice.connected_to, vec![name("r1")]);
        assert_eq!(alice.fingerprint.as_deref(), Some("fp-alice"));
        assert_eq!(alice.cert_expires_at, Some(T0 + 100));
        assert_eq!(all[1].last_seen, Some(T0), "an online router");
        assert_eq!(all[2].last_seen, Some(T0 - 50), "offline: the stored time");

        let Ok(AdminResponse::Identity(r1)) =
            f.run(T0 + 7, AdminRequest::ShowIdentity { name: name("r1") })
        else {
            panic!("expected an identity");
        };
        assert_eq!((r1.kind, r1.last_seen), (Kind::Router, Some(T0 + 7)));
    }

    #[test]
    fn show_of_an_unknown_identity_is_not_found() {
        let f = populated();
        let m = fails(
            f.run(T0, AdminRequest::ShowIdentity { name: name("bob") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no identity named bob");
    }

    #[test]
    fn update_removes_then_adds_roles_once() {
        let f = populated();
        let update = |add: &[&str], remove: &[&str]| AdminRequest::UpdateIdentity {
            name: name("alice"),
            add_roles: add.iter().map(|r| name(r)).collect(),
            remove_roles: remove.iter().map(|r| name(r)).collect(),
        };
        done(f.run(T0, update(&["a", "b", "a"], &[])));
        done(f.run(T0 + 1, update(&["c", "b"], &["a"])));
        assert_eq!(
            f.store.read().identities[&name("alice")].roles,
            vec![name("b"), name("c")]
        );
        let audit = f.audit();
        assert_eq!(audit[1].at, T0 + 1);
        assert_eq!(
            audit[1].action,
            "updated roles of alice: +[IdentityName(\"c\"), IdentityName(\"b\")] -[IdentityName(\"a\")]"
        );
        let m = fails(
            f.run(
                T0,
                AdminRequest::UpdateIdentity {
                    name: name("bob"),
                    add_roles: vec![],
                    remove_roles: vec![],
                },
            ),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no identity named bob");
    }

    #[test]
    fn revoke_stamps_now_once_and_voids_tokens() {
        let f = populated();
        done(f.run(
            T0,
            AdminRequest::RevokeIdentity {
                name: name("alice"),
            },
        ));
        done(f.run(
            T0 + 50,
            AdminRequest::RevokeIdentity {
                name: name("alice"),
            },
        ));
        let s = f.store.read();
        assert_eq!(s.identities[&name("alice")].revoked_at, Some(T0));
        assert!(s.tokens.is_empty(), "the unused token is void");
        assert_eq!(f.audit()[0].action, "revoked identity alice");
        assert!(
            !s.snapshot(T0)
                .identities
                .iter()
                .any(|i| i.name == name("alice")),
            "routers no longer get it"
        );
    }

    #[test]
    fn revoke_refuses_the_admin_and_unknown_names() {
        let f = populated();
        let m = fails(
            f.run(T0, AdminRequest::RevokeIdentity { name: name("root") }),
            ControlErrorCode::BadRequest,
        );
        assert_eq!(m, "the admin identity cannot be revoked");
        assert_eq!(f.store.read().identities[&name("root")].revoked_at, None);
        let m = fails(
            f.run(T0, AdminRequest::RevokeIdentity { name: name("bob") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no identity named bob");
        assert!(f.audit().is_empty());
    }

    #[test]
    fn delete_removes_the_identity_its_router_record_and_tokens() {
        let f = populated();
        done(f.run(T0, AdminRequest::DeleteIdentity { name: name("r1") }));
        done(f.run(
            T0,
            AdminRequest::DeleteIdentity {
                name: name("alice"),
            },
        ));
        let s = f.store.read();
        assert!(!s.identities.contains_key(&name("r1")));
        assert!(!s.identities.contains_key(&name("alice")));
        assert!(s.routers.is_empty());
        assert!(s.tokens.is_empty());
        let actions: Vec<String> = f.audit().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["deleted identity r1", "deleted identity alice"]);
    }

    #[test]
    fn delete_refuses_the_admin_and_unknown_names() {
        let f = populated();
        let m = fails(
            f.run(T0, AdminRequest::DeleteIdentity { name: name("root") }),
            ControlErrorCode::BadRequest,
        );
        assert_eq!(m, "the admin identity cannot be deleted");
        let m = fails(
            f.run(T0, AdminRequest::DeleteIdentity { name: name("bob") }),
            ControlErrorCode::NotFound,
        );
        assert_eq!(m, "no identity named bob");
        assert_eq!(f.store.read().identities.len(), 3);
    }
}
