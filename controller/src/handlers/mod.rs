//! The admin API's handlers, one module per resource, over the [`Store`].
//!
//! They are apart from the QUIC server so they can be tested without a
//! network, a certificate or a clock: the caller passes the time in
//! ([`Caller::now`]), every timestamp they write (creation, revocation,
//! token expiry, audit entries) is that time, and a test can run them on a
//! [`crate::store::MemoryBackend`] at any virtual time.
//!
//! - [`identities`]: create (with its enrollment token), list, show,
//!   update roles, revoke, delete.
//! - [`services`]: create, list (shared keys redacted), update, show
//!   (with the terminators routers reported), delete.
//! - [`policies`]: service policies (dial and bind), router policies and
//!   `explain`.
//! - [`routers`]: registered routers and what they may serve.
//! - [`audit`]: the audit log.
//!
//! [`dispatch`] maps an [`AdminRequest`] to its handler; the server only
//! authenticates the admin and calls it.

use std::collections::BTreeMap;

use darkport_proto::identity::IdentityName;
use darkport_proto::msg::{
    AdminRequest, AdminResponse, AuditEntry, ControlError, ControlErrorCode,
};
use darkport_proto::token::TokenKey;
use dashmap::DashMap;

use crate::store::Store;

pub mod audit;
pub mod identities;
pub mod policies;
pub mod routers;
pub mod services;

pub use routers::Presence;

/// What the handlers work on: the state, the live router sessions and
/// what enrollment tokens are signed with.
pub struct Env<'a> {
    /// Persisted state.
    pub store: &'a Store,
    /// Routers with a live sync session, by name: identities show as seen
    /// now when they are online, and router listings say which are.
    pub online: &'a DashMap<IdentityName, Presence>,
    /// Signs the enrollment tokens of new identities.
    pub issuer: Issuer<'a>,
}

/// What an enrollment token needs besides its identity: the key that
/// signs it and what it pins, so the enrolling host finds and trusts this
/// controller.
pub struct Issuer<'a> {
    /// Signs tokens (the controller checks them with it at enrollment).
    pub key: &'a TokenKey,
    /// The controller's advertised `host:port`.
    pub controller: &'a str,
    /// SHA-256 of the CA certificate, hex.
    pub ca_fingerprint: &'a str,
}

/// Who asks and when: the actor named in audit entries, and the time
/// every timestamp of the request is taken from (the handlers never read
/// the clock, so tests can pass any time).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The admin identity's name.
    pub actor: &'a str,
    /// Unix seconds.
    pub now: u64,
}

impl Caller<'_> {
    /// An audit entry for `action` by this caller at its time.
    pub fn audit(&self, action: impl Into<String>) -> Option<AuditEntry> {
        Some(AuditEntry {
            at: self.now,
            actor: self.actor.into(),
            action: action.into(),
        })
    }
}

/// Runs `req` for `by`.
pub fn dispatch(env: &Env, by: Caller, req: AdminRequest) -> Result<AdminResponse, ControlError> {
    let store = env.store;
    match req {
        AdminRequest::CreateIdentity {
            name,
            kind,
            roles,
            token_ttl_secs,
        } => identities::create(
            store,
            &env.issuer,
            by,
            identities::NewIdentity {
                name,
                kind,
                roles,
                token_ttl_secs,
            },
        ),
        AdminRequest::ListIdentities => Ok(identities::list(store, env.online, by.now)),
        AdminRequest::ShowIdentity { name } => identities::show(store, env.online, by.now, &name),
        AdminRequest::UpdateIdentity {
            name,
            add_roles,
            remove_roles,
        } => identities::update(store, by, name, add_roles, remove_roles),
        AdminRequest::RevokeIdentity { name } => identities::revoke(store, by, name),
        AdminRequest::DeleteIdentity { name } => identities::delete(store, by, name),
        AdminRequest::CreateService(svc) => services::create(store, by, svc),
        AdminRequest::ListServices => Ok(services::list(store)),
        AdminRequest::UpdateService {
            name,
            address,
            protocol,
            strategy,
        } => services::update(
            store,
            by,
            name,
            services::ServiceUpdate {
                address,
                protocol,
                strategy,
            },
        ),
        AdminRequest::ShowService { name } => services::show(store, env.online, &name),
        AdminRequest::DeleteService { name } => services::delete(store, by, name),
        AdminRequest::CreatePolicy {
            name,
            services,
            identities,
            tags,
            kind,
        } => policies::create(
            store,
            by,
            darkport_proto::policy::PolicyEntry {
                name,
                services,
                identities,
                tags,
                kind,
            },
        ),
        AdminRequest::ListPolicies => Ok(policies::list(store)),
        AdminRequest::DeletePolicy { name } => policies::delete(store, by, name),
        AdminRequest::CreateRouterPolicy(p) => policies::create_router_policy(store, by, p),
        AdminRequest::ListRouterPolicies => Ok(policies::list_router_policies(store)),
        AdminRequest::DeleteRouterPolicy { name } => {
            policies::delete_router_policy(store, by, name)
        }
        AdminRequest::Explain {
            identity,
            service,
            tag,
        } => Ok(policies::explain(
            store,
            by.now,
            &identity,
            &service,
            tag.as_deref(),
        )),
        AdminRequest::ListRouters => Ok(AdminResponse::Routers(routers::list(
            store, env.online, None, by.now,
        ))),
        AdminRequest::Audit { limit } => audit::list(store, limit),
    }
}

/// An error with `code` and `message`.
pub(crate) fn err(code: ControlErrorCode, message: impl Into<String>) -> ControlError {
    ControlError {
        code,
        message: message.into(),
    }
}

/// A malformed request.
pub(crate) fn bad(message: impl Into<String>) -> ControlError {
    err(ControlErrorCode::BadRequest, message)
}

/// No `what` named `name`.
pub(crate) fn not_found(what: &str, name: &IdentityName) -> ControlError {
    err(
        ControlErrorCode::NotFound,
        format!("no {what} named {name}"),
    )
}

/// A `what` named `name` exists.
pub(crate) fn exists(what: &str, name: &IdentityName) -> ControlError {
    err(
        ControlErrorCode::AlreadyExists,
        format!("a {what} named {name} exists already"),
    )
}

/// Inserts `value` as `name` unless a `what` of that name exists: every
/// create refuses to overwrite.
fn insert_new<V>(
    map: &mut BTreeMap<IdentityName, V>,
    what: &str,
    name: IdentityName,
    value: V,
) -> Result<(), ControlError> {
    if map.contains_key(&name) {
        return Err(exists(what, &name));
    }
    map.insert(name, value);
    Ok(())
}

/// Removes the `what` named `name`, or says there is none.
fn remove_named<V>(
    map: &mut BTreeMap<IdentityName, V>,
    what: &str,
    name: &IdentityName,
) -> Result<AdminResponse, ControlError> {
    map.remove(name).ok_or_else(|| not_found(what, name))?;
    Ok(AdminResponse::Done)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A store on the in-memory backend and an environment around it.

    use super::*;
    use crate::store::{MemoryBackend, State};

    /// Virtual time the tests start at.
    pub const T0: u64 = 1_800_000_000;

    /// What [`Env`] borrows.
    pub struct Fixture {
        pub store: Store,
        pub online: DashMap<IdentityName, Presence>,
        pub key: TokenKey,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            Fixture::with(State::default())
        }

        pub fn with(state: State) -> Fixture {
            Fixture {
                store: Store::new(Box::new(MemoryBackend::with_state(state)))
                    .expect("the memory backend loads"),
                online: DashMap::new(),
                key: TokenKey::new(b"test token key, 32 bytes long...."),
            }
        }

        pub fn env(&self) -> Env<'_> {
            Env {
                store: &self.store,
                online: &self.online,
                issuer: Issuer {
                    key: &self.key,
                    controller: "controller.test:7000",
                    ca_fingerprint: "ab12",
                },
            }
        }

        /// Runs `req` as admin `root` at `now`.
        pub fn run(&self, now: u64, req: AdminRequest) -> Result<AdminResponse, ControlError> {
            dispatch(&self.env(), Caller { actor: "root", now }, req)
        }

        /// The audit log, oldest first.
        pub fn audit(&self) -> Vec<AuditEntry> {
            self.store.audit(1000).expect("memory audit")
        }
    }

    pub fn name(s: &str) -> IdentityName {
        IdentityName::new(s).expect("valid test name")
    }

    /// Asserts `r` failed with `code`, and returns its message.
    #[track_caller]
    pub fn fails(r: Result<AdminResponse, ControlError>, code: ControlErrorCode) -> String {
        match r {
            Err(e) if e.code == code => e.message,
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }

    /// Asserts `r` is `Done`.
    #[track_caller]
    pub fn done(r: Result<AdminResponse, ControlError>) {
        match r {
            Ok(AdminResponse::Done) => {}
            other => panic!("expected Done, got {other:?}"),
        }
    }
}
