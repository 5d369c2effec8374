//! SQLite persistence for [`crate::store`].
//!
//! Why SQLite (through `rusqlite` with the bundled library): one file in
//! the data dir, transactions that survive power loss (WAL, synchronous
//! FULL), an inspectable format (`sqlite3 ctl/state.db .dump`), and no
//! server to run. redb was the alternative; SQLite wins on tooling and on a
//! schema an operator can query.
//!
//! Schema versions live in `PRAGMA user_version`; [`MIGRATIONS`] upgrades
//! an older file in place, in one transaction per step. Changes are written
//! as row-level differences between the old and new in-memory state.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{PolicyEntry, RouterPolicyEntry, ServiceEntry};

use super::model::{
    Backend, CertRecord, ControllerRecord, IdentityRecord, RouterRecord, State, StoreError,
    TokenRecord,
};
use super::rows::{certificates, sync};

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

fn name(path: &Path, s: String) -> Result<IdentityName, StoreError> {
    IdentityName::new(s).map_err(|e| corrupt(path, e.to_string()))
}

fn json<T: serde::de::DeserializeOwned>(path: &Path, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(path, e.to_string()))
}

fn to_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(path, e.to_string()))
}

/// Rows of a query returning three text columns.
fn text_rows3(
    c: &Connection,
    path: &Path,
    sql: &str,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let err = db_err(path);
    let mut q = c.prepare(sql).map_err(&err)?;
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(&err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(&err)
}

/// `name, advertise, last_seen` rows of the routers or controllers table.
fn address_rows(
    c: &Connection,
    path: &Path,
    table: &str,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let err = db_err(path);
    let mut q = c
        .prepare(&format!("SELECT name, advertise, last_seen FROM {table}"))
        .map_err(&err)?;
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(&err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(&err)
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Backend for SqliteBackend {
    fn load(&mut self) -> Result<State, StoreError> {
        let p = self.path.clone();
        let p = p.as_path();
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
        let mut q = c
            .prepare("SELECT name, kind, roles, created_at, revoked_at, last_seen FROM identities")
            .map_err(&err)?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (n, kind, roles, created, revoked, seen) = row.map_err(&err)?;
            let n = name(p, n)?;
            let kind =
                Kind::parse(&kind).ok_or_else(|| corrupt(p, format!("unknown kind {kind:?}")))?;
            state.identities.insert(
                n.clone(),
                IdentityRecord {
                    name: n,
                    kind,
                    roles: json(p, &roles)?,
                    certificates: vec![],
                    created_at: u(created),
                    revoked_at: revoked.map(u),
                    last_seen: seen.map(u),
                },
            );
        }
        let mut q = c
            .prepare("SELECT fingerprint, identity, issued_at, expires_at FROM certificates ORDER BY identity, seq")
            .map_err(&err)?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (fingerprint, identity, issued, expires) = row.map_err(&err)?;
            let identity = name(p, identity)?;
            let rec = state
                .identities
                .get_mut(&identity)
                .ok_or_else(|| corrupt(p, format!("certificate of unknown identity {identity}")))?;
            rec.certificates.push(CertRecord {
                fingerprint,
                issued_at: u(issued),
                expires_at: u(expires),
            });
        }
        for (n, address, roles) in text_rows3(c, p, "SELECT name, address, roles FROM services")? {
            let n = name(p, n)?;
            state.services.insert(
                n.clone(),
                ServiceEntry {
                    name: n,
                    address,
                    roles: json(p, &roles)?,
                    protocol: Default::default(),
                },
            );
        }
        for (n, protocol, _) in text_rows3(c, p, "SELECT name, protocol, '' FROM services")? {
            if let Some(s) = state.services.get_mut(&name(p, n)?) {
                s.protocol = json(p, &protocol)?;
            }
        }
        for (n, services, identities) in text_rows3(
            c,
            p,
            "SELECT name, services, identities FROM service_policies",
        )? {
            let n = name(p, n)?;
            state.policies.insert(
                n.clone(),
                PolicyEntry {
                    name: n,
                    services: json(p, &services)?,
                    identities: json(p, &identities)?,
                    tags: vec![],
                },
            );
        }
        for (n, tags, _) in text_rows3(c, p, "SELECT name, tags, '' FROM service_policies")? {
            if let Some(e) = state.policies.get_mut(&name(p, n)?) {
                e.tags = json(p, &tags)?;
            }
        }
        for (n, routers, services) in
            text_rows3(c, p, "SELECT name, routers, services FROM router_policies")?
        {
            let n = name(p, n)?;
            state.router_policies.insert(
                n.clone(),
                RouterPolicyEntry {
                    name: n,
                    routers: json(p, &routers)?,
                    services: json(p, &services)?,
                },
            );
        }
        let mut q = c
            .prepare("SELECT id, identity, expires_at, consumed_at FROM tokens")
            .map_err(&err)?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (id, identity, expires, consumed) = row.map_err(&err)?;
            state.tokens.insert(
                id,
                TokenRecord {
                    identity: name(p, identity)?,
                    expires_at: u(expires),
                    consumed_at: consumed.map(u),
                },
            );
        }
        for (n, advertise, seen) in address_rows(c, p, "routers")? {
            state.routers.insert(
                name(p, n)?,
                RouterRecord {
                    advertise,
                    last_seen: u(seen),
                },
            );
        }
        for (n, advertise, seen) in address_rows(c, p, "controllers")? {
            state.controllers.insert(
                name(p, n)?,
                ControllerRecord {
                    advertise,
                    last_seen: u(seen),
                },
            );
        }
        Ok(state)
    }

    fn commit(&mut self, old: &State, new: &State, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let p = self.path.clone();
        let p = p.as_path();
        let err = db_err(p);
        let tx = self.conn.transaction().map_err(&err)?;
        if old.version != new.version {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'snapshot_version'",
                params![i(new.version)],
            )
            .map_err(&err)?;
        }
        if old.generation != new.generation {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'generation'",
                params![i(new.generation)],
            )
            .map_err(&err)?;
        }
        sync(
            &old.identities,
            &new.identities,
            |k| {
                tx.execute(
                    "DELETE FROM identities WHERE name = ?1",
                    params![k.as_str()],
                )
                .map(drop)
                .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO identities (name, kind, roles, created_at, revoked_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        k.as_str(),
                        v.kind.as_str(),
                        to_json(p, &v.roles)?,
                        i(v.created_at),
                        v.revoked_at.map(i),
                        v.last_seen.map(i)
                    ],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &certificates(old),
            &certificates(new),
            |k| {
                tx.execute(
                    "DELETE FROM certificates WHERE fingerprint = ?1",
                    params![k],
                )
                .map(drop)
                .map_err(&err)
            },
            |k, (identity, seq, c)| {
                tx.execute(
                    "INSERT OR REPLACE INTO certificates (fingerprint, identity, seq, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![k, identity.as_str(), *seq as i64, i(c.issued_at), i(c.expires_at)],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &old.services,
            &new.services,
            |k| {
                tx.execute("DELETE FROM services WHERE name = ?1", params![k.as_str()])
                    .map(drop)
                    .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO services (name, address, roles, protocol) VALUES (?1, ?2, ?3, ?4)",
                    params![k.as_str(), v.address, to_json(p, &v.roles)?, to_json(p, &v.protocol)?],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &old.policies,
            &new.policies,
            |k| {
                tx.execute(
                    "DELETE FROM service_policies WHERE name = ?1",
                    params![k.as_str()],
                )
                .map(drop)
                .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO service_policies (name, services, identities, tags) VALUES (?1, ?2, ?3, ?4)",
                    params![k.as_str(), to_json(p, &v.services)?, to_json(p, &v.identities)?, to_json(p, &v.tags)?],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &old.router_policies,
            &new.router_policies,
            |k| {
                tx.execute(
                    "DELETE FROM router_policies WHERE name = ?1",
                    params![k.as_str()],
                )
                .map(drop)
                .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO router_policies (name, routers, services) VALUES (?1, ?2, ?3)",
                    params![k.as_str(), to_json(p, &v.routers)?, to_json(p, &v.services)?],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &old.tokens,
            &new.tokens,
            |k| {
                tx.execute("DELETE FROM tokens WHERE id = ?1", params![k])
                    .map(drop)
                    .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO tokens (id, identity, expires_at, consumed_at) VALUES (?1, ?2, ?3, ?4)",
                    params![k, v.identity.as_str(), i(v.expires_at), v.consumed_at.map(i)],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &old.routers,
            &new.routers,
            |k| {
                tx.execute("DELETE FROM routers WHERE name = ?1", params![k.as_str()])
                    .map(drop)
                    .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO routers (name, advertise, last_seen) VALUES (?1, ?2, ?3)",
                    params![k.as_str(), v.advertise, i(v.last_seen)],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        sync(
            &old.controllers,
            &new.controllers,
            |k| {
                tx.execute(
                    "DELETE FROM controllers WHERE name = ?1",
                    params![k.as_str()],
                )
                .map(drop)
                .map_err(&err)
            },
            |k, v| {
                tx.execute(
                    "INSERT OR REPLACE INTO controllers (name, advertise, last_seen) VALUES (?1, ?2, ?3)",
                    params![k.as_str(), v.advertise, i(v.last_seen)],
                )
                .map(drop)
                .map_err(&err)
            },
        )?;
        for a in audit {
            tx.execute(
                "INSERT INTO audit (at, actor, action) VALUES (?1, ?2, ?3)",
                params![i(a.at), a.actor, a.action],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let err = db_err(&self.path);
        let mut q = self
            .conn
            .prepare("SELECT at, actor, action FROM (SELECT id, at, actor, action FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id")
            .map_err(&err)?;
        let rows = q
            .query_map(params![limit], |r| {
                Ok(AuditEntry {
                    at: u(r.get(0)?),
                    actor: r.get(1)?,
                    action: r.get(2)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }
}
