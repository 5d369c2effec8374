//! The controller's state and its persistence.
//!
//! The whole state is small (identities, services, policies, tokens) and is
//! kept in memory; every change is applied to a copy, written through a
//! [`Backend`] in one transaction, and only then swapped in, under one lock:
//! concurrent admin commands serialise, and a crash leaves either the old
//! or the new state. Every change that affects routers bumps the snapshot
//! version and is pushed through a `watch` channel.
//!
//! # Layout
//! - `mod.rs` (this module): the [`Store`] (updates under one lock, the
//!   snapshot channel, the checks on load), [`Store::open`] choosing the
//!   backend, and [`MemoryBackend`] (the reference behaviour, for tests).
//! - [`model`]: the [`State`] and its records, [`StoreError`], the
//!   [`Backend`] trait. Everything below depends on it, nothing on the
//!   [`Store`].
//! - [`rows`]: every table described once: its columns, how a record
//!   becomes a row's values and how a row becomes a record; the row
//!   differences a commit writes.
//! - [`sqlite`]: SQLite (one file in the data dir): its schema,
//!   migrations and SQL dialect.
//! - [`postgres`]: PostgreSQL (a state shared by several controllers):
//!   its schema, migrations, SQL dialect, `LISTEN`/`NOTIFY` and TLS.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{PolicyEntry, PolicyKind, PolicySnapshot};

pub mod model;
pub mod postgres;
pub mod rows;
pub mod sqlite;

pub use model::{
    Backend, CertRecord, ControllerRecord, IdentityRecord, RouterRecord, State, StoreError,
    TokenRecord,
};

/// A [`Backend`] that keeps the state and the audit log in memory and
/// loses them when the last clone is dropped.
///
/// It is the reference behaviour of the trait: unit tests run the admin
/// handlers on it (no file, no database), and another backend
/// (PostgreSQL) is checked against it by running the same changes on both
/// and comparing what `load` and `audit` return. Clones share one state,
/// like controllers sharing a database: a commit made from a stale
/// generation is refused with [`StoreError::Conflict`], and every clone's
/// [`Backend::changes`] hears of every commit.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: State,
    audit: Vec<AuditEntry>,
    listeners: Vec<tokio::sync::mpsc::Sender<()>>,
}

impl MemoryBackend {
    /// Starts from `state` with an empty audit log.
    pub fn with_state(state: State) -> MemoryBackend {
        MemoryBackend {
            shared: Arc::new(Mutex::new(Shared {
                state,
                ..Shared::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn load(&mut self) -> Result<State, StoreError> {
        Ok(self.lock().state.clone())
    }

    fn commit(&mut self, old: &State, new: &State, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let mut shared = self.lock();
        if shared.state.generation != old.generation {
            return Err(StoreError::Conflict {
                path: PathBuf::from("memory"),
                seen: old.generation,
                found: shared.state.generation,
            });
        }
        shared.state = new.clone();
        shared.audit.extend_from_slice(audit);
        shared.listeners.retain(|l| !l.is_closed());
        for l in &shared.listeners {
            let _ = l.try_send(());
        }
        Ok(())
    }

    fn audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let shared = self.lock();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let from = shared.audit.len().saturating_sub(limit);
        Ok(shared.audit[from..].to_vec())
    }

    fn changes(&mut self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        self.lock().listeners.push(tx);
        Some(rx)
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// How many times a change is applied again after another controller
/// committed first, before the caller gets [`StoreError::Conflict`].
pub const CONFLICT_RETRIES: u32 = 8;

struct Inner {
    backend: Box<dyn Backend>,
    /// Shared with readers: a read is a reference count, never a copy of
    /// the whole state under the lock.
    state: Arc<State>,
}

/// The state, its backend and the snapshot channel.
pub struct Store {
    inner: Mutex<Inner>,
    /// The state readers see: a copy of `Inner::state`'s `Arc`, behind a
    /// lock held only to clone or swap it, so a read never waits for a
    /// commit (which holds `inner` for a database round trip, up to the
    /// backend's timeouts).
    current: std::sync::RwLock<Arc<State>>,
    snapshots: watch::Sender<Arc<PolicySnapshot>>,
    /// Told how long each database operation took ("commit", "audit").
    observer: std::sync::OnceLock<Observer>,
}

/// Receives the duration of each database operation.
pub type Observer = Box<dyn Fn(&'static str, std::time::Duration) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store(..)")
    }
}

/// Takes out of a state loaded from a database the rows that the checks on
/// write would have refused (someone with write access to the database
/// wrote them, or a bug did): routers and controllers whose advertised
/// address is not `HOST:PORT`, services whose address is neither that
/// nor empty (hosted), policies whose tag patterns do not compile, bind
/// policies with tag patterns. What is taken out fails closed: a
/// policy less grants less, a router or controller not listed is not
/// dialed. Returns a line per row, to log.
pub fn sanitize(state: &mut State) -> Vec<String> {
    let mut dropped = Vec::new();
    state.routers.retain(|name, r| {
        let ok = crate::bounds::check_advertise(&r.advertise);
        if let Err(why) = &ok {
            dropped.push(format!("router {name}: {why}"));
        }
        ok.is_ok()
    });
    state.controllers.retain(|name, c| {
        let ok = crate::bounds::check_advertise(&c.advertise);
        if let Err(why) = &ok {
            dropped.push(format!("controller {name}: {why}"));
        }
        ok.is_ok()
    });
    state.services.retain(|name, svc| {
        let ok = !svc.has_address()
            || (svc.address.len() <= 1024
                && darkport_transport::endpoint::parse_host_port(&svc.address).is_some());
        if !ok {
            dropped.push(format!(
                "service {name}: address {:?} is not HOST:PORT",
                svc.address.chars().take(100).collect::<String>()
            ));
        }
        ok
    });
    state.policies.retain(|name, p| {
        let bad = policy_fault(p);
        if let Some(why) = &bad {
            dropped.push(format!("policy {name}: {why}"));
        }
        bad.is_none()
    });
    dropped
}

/// Why the checks on write would refuse `p`, if they would.
fn policy_fault(p: &PolicyEntry) -> Option<String> {
    use darkport_proto::tags;
    if p.kind == PolicyKind::Bind && !p.tags.is_empty() {
        return Some("a bind policy with tag patterns".into());
    }
    if p.tags.len() > tags::MAX_PATTERNS {
        return Some(format!("more than {} tag patterns", tags::MAX_PATTERNS));
    }
    p.tags
        .iter()
        .find_map(|t| tags::check(t).err().map(|e| e.to_string()))
}

/// Loads the state from `backend`, without the rows [`sanitize`] refuses
/// (each logged).
fn load_checked(backend: &mut dyn Backend) -> Result<State, StoreError> {
    let mut state = backend.load()?;
    for why in sanitize(&mut state) {
        tracing::warn!(
            "ignoring a row of the state database that fails the checks made on write: {why}; fix or delete it with the admin commands"
        );
    }
    Ok(state)
}

impl Store {
    /// Loads the state from `backend`.
    pub fn new(mut backend: Box<dyn Backend>) -> Result<Store, StoreError> {
        let state = load_checked(backend.as_mut())?;
        let (snapshots, _) =
            watch::channel(Arc::new(state.snapshot(darkport_transport::unix_now())));
        let state = Arc::new(state);
        Ok(Store {
            current: std::sync::RwLock::new(state.clone()),
            inner: Mutex::new(Inner { backend, state }),
            snapshots,
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Reports the time of each database operation to `observer` (once;
    /// later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn timed<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        if let Some(o) = self.observer.get() {
            o(op, start.elapsed());
        }
        out
    }

    /// Opens the SQLite state database at `path` (created 0600 if absent).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Store::new(Box::new(sqlite::SqliteBackend::open(path)?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Changes are applied to a copy and swapped in after they persist,
        // so a panic elsewhere cannot leave a half-applied state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (shared, immutable; changes make a new one).
    /// Never waits for a commit or reload in progress: it sees the state
    /// as of the last one done.
    pub fn read(&self) -> Arc<State> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `state` what readers see.
    fn set_current(&self, state: &Arc<State>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
    }

    /// Applies `change` to a copy of the state; if it returns `Ok`, the copy
    /// is persisted with `audit` and becomes the state (and, with `bump`, a
    /// new snapshot is published). The lock is held throughout, so changes
    /// of this controller serialise. The lock is a std mutex held for a
    /// short synchronous database write, never across an await.
    ///
    /// When another controller committed first ([`StoreError::Conflict`]),
    /// the state is reloaded and `change` runs again on it (so a check
    /// inside `change`, such as "this token is unused", sees the other
    /// controller's commit), up to [`CONFLICT_RETRIES`] times.
    pub fn update<T, E>(
        &self,
        bump: bool,
        audit: Option<AuditEntry>,
        mut change: impl FnMut(&mut State) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut guard = self.lock();
        let mut tries = 0;
        loop {
            let mut next = State::clone(&guard.state);
            let out = change(&mut next)?;
            if bump {
                next.version += 1;
            }
            next.generation += 1;
            let inner = &mut *guard;
            match self.timed("commit", || {
                inner.backend.commit(&inner.state, &next, audit.as_slice())
            }) {
                Ok(()) => {
                    inner.state = Arc::new(next);
                    self.set_current(&inner.state);
                    if bump {
                        self.publish(&inner.state);
                    }
                    return Ok(out);
                }
                Err(StoreError::Conflict { .. }) if tries < CONFLICT_RETRIES => {
                    tries += 1;
                    self.reload_locked(inner)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn publish(&self, state: &State) {
        self.snapshots
            .send_replace(Arc::new(state.snapshot(darkport_transport::unix_now())));
    }

    fn reload_locked(&self, inner: &mut Inner) -> Result<bool, StoreError> {
        let fresh = self.timed("load", || load_checked(inner.backend.as_mut()))?;
        if fresh.generation == inner.state.generation {
            return Ok(false);
        }
        let republish = fresh.version != inner.state.version;
        inner.state = Arc::new(fresh);
        self.set_current(&inner.state);
        if republish {
            self.publish(&inner.state);
        }
        Ok(true)
    }

    /// Reloads the state from the backend if another controller changed
    /// it, publishing a snapshot if routers care. Returns whether anything
    /// changed.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        let mut guard = self.lock();
        self.reload_locked(&mut guard)
    }

    /// The backend's feed of other controllers' commits (see
    /// [`Backend::changes`]); `None` after the first call or for a backend
    /// only this process writes.
    pub fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        self.lock().backend.changes()
    }

    /// Where the state is, for messages.
    pub fn describe(&self) -> String {
        self.lock().backend.describe()
    }

    /// The newest audit entries.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.timed("audit", || self.lock().backend.audit(limit))
    }

    /// Subscribes to policy snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.snapshots.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.snapshots.borrow().clone()
    }
}

/// An audit entry for now.
pub fn audit(actor: impl Into<String>, action: impl Into<String>) -> Option<AuditEntry> {
    Some(AuditEntry {
        at: darkport_transport::unix_now(),
        actor: actor.into(),
        action: action.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::identity::IdentityName;

    fn entry(at: u64) -> AuditEntry {
        AuditEntry {
            at,
            actor: "root".into(),
            action: format!("change {at}"),
        }
    }

    #[test]
    fn rows_that_fail_the_write_checks_are_left_out_of_a_loaded_state() {
        use darkport_proto::policy::{PolicyEntry, Selector, ServiceEntry};
        let n = |s: &str| IdentityName::new(s).expect("name");
        let mut state = State::default();
        for (name, advertise) in [
            ("good", "r.example:4433"),
            ("bad", "x y"),
            ("no-port", "r.example"),
        ] {
            state.routers.insert(
                n(name),
                RouterRecord {
                    advertise: advertise.into(),
                    last_seen: 0,
                },
            );
        }
        state.controllers.insert(
            n("c-bad"),
            ControllerRecord {
                advertise: "a\nb:1".into(),
                last_seen: 0,
            },
        );
        for (name, address) in [
            ("ok", "10.0.0.5:24224"),
            ("broken", "nowhere"),
            ("hosted", ""),
        ] {
            state.services.insert(
                n(name),
                ServiceEntry {
                    name: n(name),
                    address: address.into(),
                    roles: vec![],
                    protocol: Default::default(),
                    strategy: Default::default(),
                },
            );
        }
        for (name, tags, kind) in [
            ("fine", vec!["app.**"], PolicyKind::Dial),
            ("odd", vec!["app.{a"], PolicyKind::Dial),
            ("host", vec![], PolicyKind::Bind),
            ("host-tags", vec!["app.**"], PolicyKind::Bind),
        ] {
            state.policies.insert(
                n(name),
                PolicyEntry {
                    name: n(name),
                    services: vec![Selector::All],
                    identities: vec![Selector::All],
                    tags: tags.into_iter().map(String::from).collect(),
                    kind,
                },
            );
        }
        let dropped = sanitize(&mut state);
        assert_eq!(dropped.len(), 6, "{dropped:?}");
        fn names<V>(m: &std::collections::BTreeMap<IdentityName, V>) -> Vec<&str> {
            m.keys().map(|k| k.as_str()).collect()
        }
        assert_eq!(names(&state.routers), ["good"]);
        assert!(state.controllers.is_empty());
        assert_eq!(
            names(&state.services),
            ["hosted", "ok"],
            "a service without an address is hosted, not broken"
        );
        assert_eq!(names(&state.policies), ["fine", "host"]);
        for d in [
            "policy odd",
            "policy host-tags: a bind policy with tag patterns",
        ] {
            assert!(dropped.iter().any(|x| x.starts_with(d)), "{dropped:?}");
        }
    }

    #[test]
    fn memory_backend_loads_what_was_committed() {
        let mut b = MemoryBackend::default();
        let old = b.load().expect("load");
        assert_eq!(old, State::default());
        let new = State {
            version: 7,
            ..State::default()
        };
        b.commit(&old, &new, &[entry(1)]).expect("commit");
        assert_eq!(b.load().expect("load"), new);
    }

    #[test]
    fn memory_backend_audit_is_the_newest_oldest_first() {
        let mut b = MemoryBackend::default();
        let s = State::default();
        b.commit(&s, &s, &[entry(1), entry(2)]).expect("commit");
        b.commit(&s, &s, &[entry(3)]).expect("commit");
        assert_eq!(b.audit(2).expect("audit"), vec![entry(2), entry(3)]);
        assert_eq!(b.audit(10).expect("audit").len(), 3);
        assert!(b.audit(0).expect("audit").is_empty());
    }

    fn token(id: &str) -> (String, TokenRecord) {
        (
            id.to_string(),
            TokenRecord {
                identity: IdentityName::new("app").expect("name"),
                expires_at: 100,
                consumed_at: None,
            },
        )
    }

    /// Two stores on one backend (two controllers on one database): a
    /// change on the second made after the first consumed a token sees the
    /// consumption (conflict, reload, retry) and is refused.
    #[test]
    fn a_stale_store_reloads_and_reapplies_its_change() {
        let shared = MemoryBackend::with_state(State {
            tokens: [token("t1")].into(),
            ..State::default()
        });
        let a = Store::new(Box::new(shared.clone())).expect("store a");
        let b = Store::new(Box::new(shared.clone())).expect("store b");
        let consume = |s: &mut State| -> Result<(), StoreError> {
            let t = s.tokens.get_mut("t1").expect("token");
            if t.consumed_at.is_some() {
                return Err(StoreError::Corrupt {
                    path: PathBuf::from("test"),
                    reason: "token already used".into(),
                });
            }
            t.consumed_at = Some(5);
            Ok(())
        };
        a.update(true, audit("a", "consume"), consume)
            .expect("a wins");
        let lost = b.update(true, audit("b", "consume"), consume);
        assert!(
            matches!(&lost, Err(StoreError::Corrupt { reason, .. }) if reason == "token already used"),
            "{lost:?}"
        );
        // B now holds A's state, and its snapshot followed.
        assert_eq!(b.read().generation, a.read().generation);
        assert_eq!(b.snapshot().version, 1);
        // A change on B that does not conflict lands after A's.
        b.update(true, audit("b", "other"), |s| {
            s.tokens.extend([token("t2")]);
            Ok::<_, StoreError>(())
        })
        .expect("b");
        assert!(a.refresh().expect("refresh"));
        assert_eq!(a.read().tokens.len(), 2);
        assert_eq!(a.snapshot().version, 2);
        assert!(!a.refresh().expect("refresh again"));
    }

    /// A store hears of the other's commits through `changes`.
    #[tokio::test]
    async fn changes_tell_of_other_commits() {
        let shared = MemoryBackend::default();
        let a = Store::new(Box::new(shared.clone())).expect("store a");
        let b = Store::new(Box::new(shared.clone())).expect("store b");
        let mut heard = b.changes().expect("memory tells of changes");
        a.update(false, None, |s| {
            s.tokens.extend([token("t1")]);
            Ok::<_, StoreError>(())
        })
        .expect("a");
        tokio::time::timeout(std::time::Duration::from_secs(1), heard.recv())
            .await
            .expect("told within 1 s")
            .expect("open");
        assert!(b.refresh().expect("refresh"));
        assert!(b.read().tokens.contains_key("t1"));
    }

    /// A change that fails is neither persisted nor audited, and the
    /// version does not move.
    #[test]
    fn store_on_memory_backend_drops_failed_changes() {
        let store = Store::new(Box::new(MemoryBackend::default())).expect("store");
        let r: Result<(), StoreError> = store.update(true, audit("root", "bump"), |s| {
            s.version += 10;
            Ok(())
        });
        r.expect("update");
        let failed: Result<(), StoreError> = store.update(true, audit("root", "fail"), |s| {
            s.version += 100;
            Err(StoreError::Corrupt {
                path: PathBuf::from("test"),
                reason: "refused".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.read().version, 11);
        assert_eq!(store.snapshot().version, 11);
        let actions: Vec<String> = store
            .audit(10)
            .expect("audit")
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["bump"]);
    }
}
