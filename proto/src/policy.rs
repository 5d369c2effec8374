//! Selectors, the policy snapshot, and the authorization decision.
//!
//! [`authorize`] is a pure function of (snapshot, peer identity, service
//! name): the router calls it for every new stream, and tests table-drive it
//! without sockets.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::identity::{IdentityName, Kind, NameError, PeerIdentity};

/// Picks identities or services by role or name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Selector {
    /// `#all`: everything.
    All,
    /// `#role`: everything carrying the role.
    Role(IdentityName),
    /// `@name` or a bare name: that one object.
    Name(IdentityName),
}

impl Selector {
    /// Parses `#all`, `#role`, `@name` or `name`.
    pub fn parse(s: &str) -> Result<Selector, NameError> {
        if s == "#all" {
            Ok(Selector::All)
        } else if let Some(role) = s.strip_prefix('#') {
            Ok(Selector::Role(IdentityName::new(role)?))
        } else if let Some(name) = s.strip_prefix('@') {
            Ok(Selector::Name(IdentityName::new(name)?))
        } else {
            Ok(Selector::Name(IdentityName::new(s)?))
        }
    }

    /// Whether an object with this name and these roles is selected.
    pub fn matches(&self, name: &IdentityName, roles: &[IdentityName]) -> bool {
        match self {
            Selector::All => true,
            Selector::Role(r) => roles.contains(r),
            Selector::Name(n) => n == name,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("#all"),
            Selector::Role(r) => write!(f, "#{r}"),
            Selector::Name(n) => write!(f, "@{n}"),
        }
    }
}

/// An identity as routers know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEntry {
    /// Name.
    pub name: IdentityName,
    /// Kind.
    pub kind: Kind,
    /// Roles.
    pub roles: Vec<IdentityName>,
    /// Fingerprints of the certificates currently valid for it. A
    /// certificate whose fingerprint is not here is refused even if it
    /// chains to the CA.
    pub fingerprints: Vec<String>,
}

/// A private service reachable through routers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Name clients dial.
    pub name: IdentityName,
    /// Private `host:port` the router connects to.
    pub address: String,
    /// Roles, for policy selectors.
    pub roles: Vec<IdentityName>,
}

/// A service policy: these identities may dial these services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Name.
    pub name: IdentityName,
    /// Services covered.
    pub services: Vec<Selector>,
    /// Identities allowed to dial them.
    pub identities: Vec<Selector>,
}

/// Everything a router needs to decide dials, as pushed by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    /// Increases with every change at the controller.
    pub version: u64,
    /// Known identities.
    pub identities: Vec<IdentityEntry>,
    /// Services.
    pub services: Vec<ServiceEntry>,
    /// Service policies.
    pub policies: Vec<PolicyEntry>,
}

/// An allowed dial: where to connect, and which policy allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit<'a> {
    /// The service to connect to.
    pub service: &'a ServiceEntry,
    /// The first policy that allowed the dial.
    pub policy: &'a IdentityName,
}

/// Why a dial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// Only client identities dial services.
    #[error("{0} identities cannot dial services; use a client identity")]
    WrongKind(Kind),
    /// The identity is not (or no longer) known to the controller.
    #[error("identity {0} is not known to the controller; it may have been deleted; enroll a new identity")]
    UnknownIdentity(IdentityName),
    /// The certificate is not the identity's current one.
    #[error(
        "the certificate presented for {0} is not its current certificate; re-enroll the identity"
    )]
    StaleCertificate(IdentityName),
    /// No such service.
    #[error("no service named {0:?}; list services with darkport-controller service list")]
    UnknownService(String),
    /// No policy allows it.
    #[error("identity {identity} may not dial service {service}: no service policy allows it; add one with darkport-controller policy create")]
    NotAuthorized {
        /// Who asked.
        identity: IdentityName,
        /// For what.
        service: IdentityName,
    },
}

/// Decides whether `peer` may dial `service` under `snapshot`.
pub fn authorize<'a>(
    snapshot: &'a PolicySnapshot,
    peer: &PeerIdentity,
    service: &str,
) -> Result<Permit<'a>, Denied> {
    if peer.kind != Kind::Client {
        return Err(Denied::WrongKind(peer.kind));
    }
    let identity = snapshot
        .identities
        .iter()
        .find(|i| i.name == peer.name && i.kind == Kind::Client)
        .ok_or_else(|| Denied::UnknownIdentity(peer.name.clone()))?;
    if !identity.fingerprints.contains(&peer.fingerprint) {
        return Err(Denied::StaleCertificate(peer.name.clone()));
    }
    let svc = snapshot
        .services
        .iter()
        .find(|s| s.name.as_str() == service)
        .ok_or_else(|| Denied::UnknownService(service.to_string()))?;
    snapshot
        .policies
        .iter()
        .find(|p| {
            p.services.iter().any(|s| s.matches(&svc.name, &svc.roles))
                && p.identities
                    .iter()
                    .any(|s| s.matches(&identity.name, &identity.roles))
        })
        .map(|p| Permit {
            service: svc,
            policy: &p.name,
        })
        .ok_or_else(|| Denied::NotAuthorized {
            identity: identity.name.clone(),
            service: svc.name.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IdentityName {
        IdentityName::new(s).expect("name")
    }

    fn snapshot() -> PolicySnapshot {
        PolicySnapshot {
            version: 7,
            identities: vec![
                IdentityEntry {
                    name: n("app-1"),
                    kind: Kind::Client,
                    roles: vec![n("log-writers")],
                    fingerprints: vec!["aa".into()],
                },
                IdentityEntry {
                    name: n("app-2"),
                    kind: Kind::Client,
                    roles: vec![],
                    fingerprints: vec!["bb".into()],
                },
                IdentityEntry {
                    name: n("router-1"),
                    kind: Kind::Router,
                    roles: vec![],
                    fingerprints: vec!["cc".into()],
                },
            ],
            services: vec![
                ServiceEntry {
                    name: n("fluentd"),
                    address: "127.0.0.1:24224".into(),
                    roles: vec![n("logs")],
                },
                ServiceEntry {
                    name: n("db"),
                    address: "127.0.0.1:5432".into(),
                    roles: vec![],
                },
            ],
            policies: vec![
                PolicyEntry {
                    name: n("writers"),
                    services: vec![Selector::Role(n("logs"))],
                    identities: vec![Selector::Role(n("log-writers"))],
                },
                PolicyEntry {
                    name: n("app2-db"),
                    services: vec![Selector::Name(n("db"))],
                    identities: vec![Selector::Name(n("app-2"))],
                },
            ],
        }
    }

    fn peer(kind: Kind, name: &str, fp: &str) -> PeerIdentity {
        PeerIdentity {
            kind,
            name: n(name),
            fingerprint: fp.into(),
        }
    }

    #[test]
    fn table() {
        let s = snapshot();
        let cases: Vec<(PeerIdentity, &str, Result<&str, Denied>)> = vec![
            (peer(Kind::Client, "app-1", "aa"), "fluentd", Ok("writers")),
            (peer(Kind::Client, "app-2", "bb"), "db", Ok("app2-db")),
            (
                peer(Kind::Client, "app-1", "aa"),
                "db",
                Err(Denied::NotAuthorized {
                    identity: n("app-1"),
                    service: n("db"),
                }),
            ),
            (
                peer(Kind::Client, "app-2", "bb"),
                "fluentd",
                Err(Denied::NotAuthorized {
                    identity: n("app-2"),
                    service: n("fluentd"),
                }),
            ),
            (
                peer(Kind::Client, "app-1", "aa"),
                "nope",
                Err(Denied::UnknownService("nope".into())),
            ),
            (
                peer(Kind::Client, "app-1", "zz"),
                "fluentd",
                Err(Denied::StaleCertificate(n("app-1"))),
            ),
            (
                peer(Kind::Client, "ghost", "aa"),
                "fluentd",
                Err(Denied::UnknownIdentity(n("ghost"))),
            ),
            (
                peer(Kind::Router, "router-1", "cc"),
                "fluentd",
                Err(Denied::WrongKind(Kind::Router)),
            ),
            // A client certificate naming a router identity's name is not that router.
            (
                peer(Kind::Client, "router-1", "cc"),
                "fluentd",
                Err(Denied::UnknownIdentity(n("router-1"))),
            ),
        ];
        for (p, svc, want) in cases {
            let got = authorize(&s, &p, svc).map(|permit| permit.policy.as_str());
            assert_eq!(got, want, "{p} -> {svc}");
        }
    }

    #[test]
    fn all_selector_and_empty_snapshot() {
        let mut s = snapshot();
        s.policies = vec![PolicyEntry {
            name: n("open"),
            services: vec![Selector::All],
            identities: vec![Selector::All],
        }];
        assert!(authorize(&s, &peer(Kind::Client, "app-2", "bb"), "fluentd").is_ok());
        let empty = PolicySnapshot::default();
        assert!(authorize(&empty, &peer(Kind::Client, "app-1", "aa"), "fluentd").is_err());
    }

    #[test]
    fn selector_parse() {
        assert_eq!(Selector::parse("#all"), Ok(Selector::All));
        assert_eq!(Selector::parse("#x"), Ok(Selector::Role(n("x"))));
        assert_eq!(Selector::parse("@x"), Ok(Selector::Name(n("x"))));
        assert_eq!(Selector::parse("x"), Ok(Selector::Name(n("x"))));
        assert!(Selector::parse("#").is_err());
        assert!(Selector::parse("@").is_err());
        assert!(Selector::parse("a b").is_err());
        for s in ["#all", "#x", "@x"] {
            assert_eq!(Selector::parse(s).expect("parse").to_string(), s);
        }
    }
}
