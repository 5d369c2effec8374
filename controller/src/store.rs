//! The controller's state and its persistence.
//!
//! State is one JSON document (`state.json`, mode 0600) rewritten
//! atomically (temporary file, fsync, rename) on every change, under one
//! lock, so concurrent admin commands serialise and a crash leaves either
//! the old or the new state. Only the running controller writes it; admin
//! commands go through its API. Every change that affects routers bumps the
//! snapshot version and is pushed through a `watch` channel.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::policy::{IdentityEntry, PolicyEntry, PolicySnapshot, ServiceEntry};

/// Current state file format.
pub const STATE_VERSION: u32 = 1;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing the state file failed.
    #[error("state file {path}: {reason}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The state file is not valid.
    #[error("state file {path} is corrupt: {reason}; restore it from a backup")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
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
    /// Fingerprint of the current certificate, once enrolled.
    pub fingerprint: Option<String>,
    /// Expiry of the current certificate, Unix seconds.
    pub cert_expires_at: Option<u64>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
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

/// Everything the controller persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version.
    pub format: u32,
    /// Snapshot version; bumped on every change routers care about.
    pub version: u64,
    /// Identities by name.
    pub identities: BTreeMap<IdentityName, IdentityRecord>,
    /// Services by name.
    pub services: BTreeMap<IdentityName, ServiceEntry>,
    /// Service policies by name.
    pub policies: BTreeMap<IdentityName, PolicyEntry>,
    /// Issued tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Registered routers by name.
    pub routers: BTreeMap<IdentityName, RouterRecord>,
}

impl State {
    /// The policy snapshot routers receive.
    pub fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            version: self.version,
            identities: self
                .identities
                .values()
                .filter(|i| matches!(i.kind, Kind::Client | Kind::Router))
                .map(|i| IdentityEntry {
                    name: i.name.clone(),
                    kind: i.kind,
                    roles: i.roles.clone(),
                    fingerprints: i.fingerprint.iter().cloned().collect(),
                })
                .collect(),
            services: self.services.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        }
    }
}

/// The state plus its file and the snapshot channel.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    state: Mutex<State>,
    snapshots: watch::Sender<Arc<PolicySnapshot>>,
}

impl Store {
    /// Opens the state file, creating an empty state if it is absent.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let state = match std::fs::read_to_string(path) {
            Ok(text) => {
                let state: State =
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                if state.format != STATE_VERSION {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("format {} is not supported", state.format),
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                format: STATE_VERSION,
                ..State::default()
            },
            Err(e) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        let (snapshots, _) = watch::channel(Arc::new(state.snapshot()));
        Ok(Store {
            path: path.to_path_buf(),
            state: Mutex::new(state),
            snapshots,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change:
        // changes are applied to a copy and swapped in after they persist.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current state.
    pub fn read(&self) -> State {
        self.lock().clone()
    }

    /// Applies `change` to a copy of the state; if it returns `Ok`, the copy
    /// is persisted and becomes the state (and, with `bump`, a new snapshot
    /// is published). The lock is held throughout, so changes serialise.
    pub fn update<T, E>(
        &self,
        bump: bool,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let out = change(&mut next)?;
        if bump {
            next.version += 1;
        }
        self.persist(&next)?;
        *guard = next;
        if bump {
            self.snapshots.send_replace(Arc::new(guard.snapshot()));
        }
        Ok(out)
    }

    fn persist(&self, state: &State) -> Result<(), StoreError> {
        let text = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        darkport_transport::identity::write_private_file(&self.path, &text, true).map_err(|e| {
            StoreError::Io {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// Subscribes to policy snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.snapshots.subscribe()
    }
}
