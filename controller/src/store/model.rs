//! What the store keeps ([`State`] and its records), how it fails
//! ([`StoreError`]) and what a persistence backend does ([`Backend`]).
//!
//! The backends depend on this module and on [`super::rows`], never on
//! the [`Store`](super::Store) that opens them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{
    CertEntry, IdentityEntry, PolicyEntry, PolicySnapshot, RouterPolicyEntry, ServiceEntry,
};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("state database {path}: {reason}")]
    Db {
        /// File, or the database URL without its password.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The database holds something this version cannot read.
    #[error("state database {path} is not usable: {reason}")]
    Corrupt {
        /// File, or the database URL without its password.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// Another controller changed the state since it was loaded (the
    /// stored generation is not the one the change was made from). The
    /// store reloads and applies the change again.
    #[error("state database {path}: another controller changed the state first (generation {seen} expected, {found} found)")]
    Conflict {
        /// File, or the database URL without its password.
        path: PathBuf,
        /// The generation the change was made from.
        seen: u64,
        /// The generation the database holds.
        found: u64,
    },
    /// The database cannot be reached (down, refused, timed out). Nothing
    /// was changed; the request can be retried.
    #[error("state database {path} is unavailable: {reason}; nothing was changed; the controller keeps retrying, try again when the database is back")]
    Unavailable {
        /// The database URL without its password.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

/// One certificate issued to an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// An identity as the controller keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// Name.
    pub name: IdentityName,
    /// Kind.
    pub kind: Kind,
    /// Roles.
    pub roles: Vec<IdentityName>,
    /// Certificates issued, oldest first.
    pub certificates: Vec<CertRecord>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<u64>,
    /// Last time it was seen by a router or the controller.
    pub last_seen: Option<u64>,
}

impl IdentityRecord {
    /// The newest certificate.
    pub fn current(&self) -> Option<&CertRecord> {
        self.certificates.last()
    }

    /// Whether `fingerprint` is an unexpired certificate of this unrevoked
    /// identity at `now`.
    pub fn holds(&self, fingerprint: &str, now: u64) -> bool {
        self.revoked_at.is_none()
            && self
                .certificates
                .iter()
                .any(|c| c.fingerprint == fingerprint && now < c.expires_at)
    }
}

/// An issued enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Identity it enrolls.
    pub identity: IdentityName,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// When it was used, if it was.
    pub consumed_at: Option<u64>,
}

/// A router that registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterRecord {
    /// Advertised address.
    pub advertise: String,
    /// Last time its control session was seen, Unix seconds.
    pub last_seen: u64,
}

/// A controller sharing the store (high availability): what routers and
/// clients are told to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// Advertised `host:port`.
    pub advertise: String,
    /// Last heartbeat, Unix seconds.
    pub last_seen: u64,
}

/// Everything the controller persists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Snapshot version; bumped on every change routers care about.
    pub version: u64,
    /// Bumped by every commit, whatever it changes. A backend shared by
    /// several controllers refuses a commit made from another generation
    /// than the stored one ([`StoreError::Conflict`]): optimistic
    /// concurrency over the whole state.
    pub generation: u64,
    /// Controllers sharing this state, by name.
    pub controllers: BTreeMap<IdentityName, ControllerRecord>,
    /// Identities by name.
    pub identities: BTreeMap<IdentityName, IdentityRecord>,
    /// Services by name.
    pub services: BTreeMap<IdentityName, ServiceEntry>,
    /// Service policies by name.
    pub policies: BTreeMap<IdentityName, PolicyEntry>,
    /// Router policies by name.
    pub router_policies: BTreeMap<IdentityName, RouterPolicyEntry>,
    /// Issued tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Registered routers by name.
    pub routers: BTreeMap<IdentityName, RouterRecord>,
}

impl State {
    /// The policy snapshot routers receive at `now`: unrevoked clients and
    /// routers with their unexpired certificates, services and policies.
    pub fn snapshot(&self, now: u64) -> PolicySnapshot {
        PolicySnapshot {
            version: self.version,
            identities: self
                .identities
                .values()
                .filter(|i| matches!(i.kind, Kind::Client | Kind::Router) && i.revoked_at.is_none())
                .map(|i| IdentityEntry {
                    name: i.name.clone(),
                    kind: i.kind,
                    roles: i.roles.clone(),
                    certificates: i
                        .certificates
                        .iter()
                        .filter(|c| c.expires_at > now)
                        .map(|c| CertEntry {
                            fingerprint: c.fingerprint.clone(),
                            expires_at: c.expires_at,
                        })
                        .collect(),
                })
                .collect(),
            services: self.services.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            router_policies: self.router_policies.values().cloned().collect(),
        }
    }
}

/// Where state is persisted.
///
/// The methods block (a short database round trip); the [`Store`](super::Store) calls
/// them under its lock.
pub trait Backend: Send {
    /// Reads the whole state.
    fn load(&mut self) -> Result<State, StoreError>;
    /// Persists the change from `old` to `new`, plus audit entries, in one
    /// transaction. `new.generation` is `old.generation + 1`; a backend
    /// shared by several controllers fails with [`StoreError::Conflict`]
    /// (changing nothing) when the stored generation is not
    /// `old.generation`.
    fn commit(&mut self, old: &State, new: &State, audit: &[AuditEntry]) -> Result<(), StoreError>;
    /// The newest `limit` audit entries, oldest first.
    fn audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
    /// Tells of commits made by other controllers: a message on the
    /// returned channel whenever the stored state may have changed (the
    /// store then reloads it). `None` for a backend only this process
    /// writes. Called once.
    fn changes(&mut self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        None
    }
    /// Where the state is, for messages (no password).
    fn describe(&self) -> String;
}
