//! SQLite persistence for [`crate::store`].
//!
//! Why SQLite (through `rusqlite` with the bundled library): one file in
//! the data dir, transactions that survive power loss (WAL, synchronous
//! FULL), an inspectable format (`sqlite3 ctl/state.db .dump`), and no
//! server to run. redb was the alternative; SQLite wins on tooling and on a
//! schema an operator can query.
//!
//! Schema versions live in `PRAGMA user_version`; `MIGRATIONS` upgrades
//! an older file in place, in one transaction per step. Changes are written
//! as row-level differences between the old and new in-memory state; what
//! a row holds is [`super::rows`]'s, this module adds SQLite's dialect
//! (`?N` placeholders, `INSERT OR REPLACE`, the `meta` rows).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use darkport_proto::msg::AuditEntry;

use super::model::{Backend, State, StoreError};
use super::rows::{self, Change, SqlValue, StoredRow, TABLES};

/// Schema migrations; entry `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('snapshot_version', 0);
CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_seen INTEGER
);
CREATE TABLE certificates (
    fingerprint TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    seq INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX certificates_identity ON certificates (identity);
CREATE TABLE services (name TEXT PRIMARY KEY, address TEXT NOT NULL, roles TEXT NOT NULL);
CREATE TABLE service_policies (name TEXT PRIMARY KEY, services TEXT NOT NULL, identities TEXT NOT NULL);
CREATE TABLE router_policies (name TEXT PRIMARY KEY, routers TEXT NOT NULL, services TEXT NOT NULL);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    consumed_at INTEGER
);
CREATE TABLE routers (name TEXT PRIMARY KEY, advertise TEXT NOT NULL, last_seen INTEGER NOT NULL);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL
);
"#,
    // Version 2: a protocol per service (fluent-forward), tag patterns
    // per service policy.
    r#"
ALTER TABLE services ADD COLUMN protocol TEXT NOT NULL DEFAULT '"Tcp"';
ALTER TABLE service_policies ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
"#,
    // Version 3: a generation bumped by every commit, and the controllers
    // sharing the state (kept here too, so `migrate` carries them).
    r#"
INSERT INTO meta (key, value) VALUES ('generation', 0);
CREATE TABLE controllers (name TEXT PRIMARY KEY, advertise TEXT NOT NULL, last_seen INTEGER NOT NULL);
"#,
    // Version 4: hosting. Bind policies beside dial policies, and how
    // routers choose among a service's terminators.
    r#"
ALTER TABLE services ADD COLUMN strategy TEXT NOT NULL DEFAULT 'lowest-cost';
ALTER TABLE service_policies ADD COLUMN kind TEXT NOT NULL DEFAULT 'dial';
"#,
];

/// The SQLite backend.
pub struct SqliteBackend {
    path: PathBuf,
    conn: Connection,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl SqliteBackend {
    /// Opens (creating with mode 0600 if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        if !path.exists() {
            darkport_transport::identity::write_private_file(path, b"", false).map_err(|e| {
                StoreError::Db {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        }
        let err = db_err(path);
        let mut conn = Connection::open(path).map_err(&err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(&err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(&err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(corrupt(
                path,
                format!("schema version {version} is newer than this controller knows ({known}); upgrade darkport-controller"),
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = conn.transaction().map_err(&err)?;
            tx.execute_batch(sql).map_err(&err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(&err)?;
            tx.commit().map_err(&err)?;
        }
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            conn,
        })
    }
}

/// Unix seconds (or a count) as read: a negative value, which this
/// controller never writes, reads as 0.
fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// Unix seconds (or a count) as the meta table stores it.
fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// A row of a query, for [`rows`].
struct SqliteRow<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    path: &'a Path,
}

impl StoredRow for SqliteRow<'_, '_> {
    fn text(&self, col: usize) -> Result<String, StoreError> {
        self.row.get(col).map_err(db_err(self.path))
    }

    fn u64(&self, col: usize) -> Result<u64, StoreError> {
        self.row.get(col).map(u).map_err(db_err(self.path))
    }

    fn opt_u64(&self, col: usize) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = self.row.get(col).map_err(db_err(self.path))?;
        Ok(v.map(u))
    }

    fn corrupt(&self, _col: Option<usize>, reason: String) -> StoreError {
        corrupt(self.path, reason)
    }
}

/// A parameter as rusqlite binds it.
fn param(v: &SqlValue) -> &dyn rusqlite::ToSql {
    match v {
        SqlValue::Text(s) => s,
        SqlValue::Int(i) => i,
    }
}

/// SQLite's statement for a change.
fn statement(change: &Change) -> String {
    match change {
        Change::Delete(t, _) => t.delete('?'),
        Change::Upsert(t, _) => t.insert("INSERT OR REPLACE", '?'),
        Change::Insert(t, _) => t.insert("INSERT", '?'),
    }
}

impl Backend for SqliteBackend {
    fn load(&mut self) -> Result<State, StoreError> {
        let p = self.path.as_path();
        let err = db_err(p);
        let c = &self.conn;
        let meta = |key: &str| -> Result<u64, StoreError> {
            Ok(u(c
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(&err)?
                .unwrap_or(0)))
        };
        let mut state = State {
            version: meta("snapshot_version")?,
            generation: meta("generation")?,
            ..State::default()
        };
        for table in TABLES {
            let mut q = c.prepare(&table.select()).map_err(&err)?;
            let mut rows = q.query([]).map_err(&err)?;
            while let Some(row) = rows.next().map_err(&err)? {
                table.load(&mut state, &SqliteRow { row, path: p })?;
            }
        }
        Ok(state)
    }

    fn commit(&mut self, old: &State, new: &State, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let p = self.path.as_path();
        let err = db_err(p);
        let changes = rows::changes(old, new, audit).map_err(|e| corrupt(p, e.to_string()))?;
        let tx = self.conn.transaction().map_err(&err)?;
        for (key, old, new) in [
            ("snapshot_version", old.version, new.version),
            ("generation", old.generation, new.generation),
        ] {
            if old != new {
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = ?2",
                    params![i(new), key],
                )
                .map_err(&err)?;
            }
        }
        for change in &changes {
            let values = change.values().iter().map(param);
            tx.prepare_cached(&statement(change))
                .and_then(|mut q| q.execute(rusqlite::params_from_iter(values)))
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let p = self.path.as_path();
        let err = db_err(p);
        let mut q = self.conn.prepare(&rows::audit_query('?')).map_err(&err)?;
        let mut rows = q.query(params![limit]).map_err(&err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(&err)? {
            out.push(rows::audit_entry(&SqliteRow { row, path: p })?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::identity::{IdentityName, Kind};
    use darkport_proto::policy::{PolicyKind, Selector, ServiceProtocol, TerminatorStrategy};

    fn n(s: &str) -> IdentityName {
        IdentityName::new(s).expect("name")
    }

    /// A file at schema version 1 (before protocols, tags, the generation,
    /// controllers, policy kinds and strategies), with rows, loads with
    /// the defaults of the later migrations and is upgraded to the
    /// current version.
    #[test]
    fn a_version_1_file_loads() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(MIGRATIONS[0]).expect("version 1 schema");
            conn.execute_batch(
                r#"
UPDATE meta SET value = 3 WHERE key = 'snapshot_version';
INSERT INTO identities VALUES ('app1', 'client', '["web","logs"]', 900, NULL, 2100);
INSERT INTO certificates VALUES ('bb22', 'app1', 1, 2000, 88400);
INSERT INTO certificates VALUES ('aa11', 'app1', 0, 1000, 87400);
INSERT INTO services VALUES ('web', '10.0.0.1:80', '[]');
INSERT INTO service_policies VALUES ('logs-in', '[{"Role":"logs"}]', '["All"]');
INSERT INTO tokens VALUES ('tok-free', 'app1', 9999, NULL);
INSERT INTO routers VALUES ('router1', '127.0.0.1:4433', 2000);
PRAGMA user_version = 1;
"#,
            )
            .expect("version 1 rows");
        }
        let state = SqliteBackend::open(&path)
            .expect("open and migrate")
            .load()
            .expect("load");
        assert_eq!((state.version, state.generation), (3, 0));
        let app1 = &state.identities[&n("app1")];
        assert_eq!(app1.kind, Kind::Client);
        assert_eq!(app1.roles, [n("web"), n("logs")]);
        let certs: Vec<_> = app1
            .certificates
            .iter()
            .map(|c| c.fingerprint.as_str())
            .collect();
        assert_eq!(certs, ["aa11", "bb22"]);
        assert_eq!((app1.revoked_at, app1.last_seen), (None, Some(2100)));
        let web = &state.services[&n("web")];
        assert_eq!(web.protocol, ServiceProtocol::Tcp);
        assert_eq!(web.strategy, TerminatorStrategy::LowestCost);
        let policy = &state.policies[&n("logs-in")];
        assert_eq!(policy.identities, [Selector::All]);
        assert!(policy.tags.is_empty());
        assert_eq!(policy.kind, PolicyKind::Dial, "policies before bind dial");
        assert_eq!(state.tokens["tok-free"].consumed_at, None);
        assert_eq!(state.routers[&n("router1")].advertise, "127.0.0.1:4433");
        assert!(state.controllers.is_empty());
        let conn = Connection::open(&path).expect("open");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    /// A policy kind or strategy this version does not know (a newer
    /// controller wrote it) fails the load, naming the value: read as a
    /// default, a bind policy could become a dial policy.
    #[test]
    fn unknown_kinds_and_strategies_are_refused_by_name() {
        for (row, want) in [
            (
                "INSERT INTO service_policies VALUES ('p', '[\"All\"]', '[\"All\"]', '[]', 'forward')",
                "unknown policy kind \"forward\"",
            ),
            (
                "INSERT INTO services VALUES ('s', '', '[]', '\"Tcp\"', 'round-robin')",
                "unknown terminator strategy \"round-robin\"",
            ),
        ] {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state.db");
            drop(SqliteBackend::open(&path).expect("create"));
            Connection::open(&path)
                .expect("open")
                .execute_batch(row)
                .expect("insert");
            let err = SqliteBackend::open(&path)
                .expect("open")
                .load()
                .expect_err("an unknown name is refused");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }
}
