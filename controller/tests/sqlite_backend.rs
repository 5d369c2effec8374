//! The SQLite backend: the same changes give the same state and audit log
//! as [`MemoryBackend`], the rows it stores are pinned (so a refactoring
//! of how rows are written cannot change the file format unnoticed), and
//! a file at an older schema version loads.

mod common;

use common::{changes, rich_state};
use darkport_controller::store::sqlite::SqliteBackend;
use darkport_controller::store::{Backend, MemoryBackend, State};

/// Every row of every table, one line each, in key order, with the SQLite
/// storage class of each value.
fn dump(path: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut out = String::new();
    for table in [
        "meta",
        "identities",
        "certificates",
        "services",
        "service_policies",
        "router_policies",
        "tokens",
        "routers",
        "controllers",
        "audit",
    ] {
        let mut q = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .expect("prepare");
        let columns = q.column_count();
        let mut rows = q.query([]).expect("query");
        while let Some(row) = rows.next().expect("row") {
            let values: Vec<String> = (0..columns)
                .map(|i| match row.get_ref(i).expect("value") {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("'{}'", String::from_utf8_lossy(t))
                    }
                    other => format!("{other:?}"),
                })
                .collect();
            out.push_str(&format!("{table}: {}\n", values.join(", ")));
        }
    }
    out
}

#[test]
fn same_changes_give_the_same_state_and_audit_as_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    let mut db = SqliteBackend::open(&path).expect("open");
    let mut mem = MemoryBackend::default();
    assert_eq!(db.load().expect("load"), mem.load().expect("load"));
    let mut old = State::default();
    for (i, (new, audit)) in changes().into_iter().enumerate() {
        mem.commit(&old, &new, &audit).expect("memory commit");
        db.commit(&old, &new, &audit).expect("sqlite commit");
        let loaded = db.load().expect("load");
        assert_eq!(loaded, mem.load().expect("load"), "after change {i}");
        assert_eq!(loaded, new, "after change {i}");
        for limit in [0, 1, 2, 100, u32::MAX] {
            assert_eq!(
                db.audit(limit).expect("audit"),
                mem.audit(limit).expect("audit"),
                "audit({limit}) after change {i}"
            );
        }
        old = new;
    }
    drop(db);
    assert_eq!(
        SqliteBackend::open(&path)
            .expect("reopen")
            .load()
            .expect("load"),
        old
    );
}

/// The rows as this version writes them: what older and newer controllers
/// read from the same file.
#[test]
fn stored_rows_are_pinned() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    let mut db = SqliteBackend::open(&path).expect("open");
    let changes = changes();
    db.commit(&State::default(), &changes[0].0, &changes[0].1)
        .expect("commit");
    db.commit(&changes[0].0, &changes[1].0, &changes[1].1)
        .expect("commit");
    drop(db);
    assert_eq!(dump(&path), PINNED);
}

const PINNED: &str = r#"meta: 'generation', 2
meta: 'snapshot_version', 4
identities: 'app1', 'client', '["web","logs","extra"]', 900, NULL, 2100
identities: 'router1', 'router', '[]', 950, 5000, NULL
certificates: 'bb22', 'app1', 0, 2000, 88400
certificates: 'cc33', 'router1', 0, 1500, 87900
certificates: 'dd44', 'app1', 1, 3000, 89400
services: 'fluentd', '127.0.0.1:24224', '["logs"]', '{"FluentForward":{"identity_key":"darkport_identity","roles_key":"roles","router_key":null,"shared_key":"k3y","service_user":null,"event_time":"Unwrap","metadata_key":null,"app_handshake":"Off"}}'
service_policies: 'logs-in', '[{"Role":"logs"}]', '[{"Name":"app1"},"All"]', '["other"]'
router_policies: 'everywhere', '["All"]', '[{"Name":"fluentd"}]'
tokens: 'tok-free', 'router1', 9999, 3000
tokens: 'tok-used', 'app1', 9999, 1000
routers: 'router1', '127.0.0.1:4433', 2000
controllers: 'ctl-a', 'ctl-a:4430', 2000
controllers: 'ctl-b', 'ctl-b:4430', 3000
audit: 1, 10, 'root', 'create all'
audit: 2, 11, 'root', 'and more'
audit: 3, 20, 'root', 'change'
"#;

/// A file at schema version 1 (before protocols, tags, the generation and
/// controllers) loads with the defaults of the later migrations.
#[test]
fn a_version_1_file_loads() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(VERSION_1)
            .expect("version 1 schema and rows");
    }
    let state = SqliteBackend::open(&path)
        .expect("open and migrate")
        .load()
        .expect("load");
    let rich = rich_state();
    let app1 = &rich.identities[&common::n("app1")];
    assert_eq!(state.version, 3);
    assert_eq!(state.generation, 0);
    assert_eq!(state.identities[&common::n("app1")], *app1);
    let web = &state.services[&common::n("web")];
    assert_eq!(web, &rich.services[&common::n("web")]);
    let policy = &state.policies[&common::n("logs-in")];
    assert!(policy.tags.is_empty());
    assert_eq!(
        policy.services,
        rich.policies[&common::n("logs-in")].services
    );
    assert_eq!(state.tokens, rich.tokens);
    assert_eq!(state.routers, rich.routers);
    assert!(state.controllers.is_empty());
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 3);
}

/// Schema version 1 as `MIGRATIONS[0]` made it, with rows.
const VERSION_1: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('snapshot_version', 3);
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
INSERT INTO identities VALUES ('app1', 'client', '["web","logs"]', 900, NULL, 2100);
INSERT INTO certificates VALUES ('bb22', 'app1', 1, 2000, 88400);
INSERT INTO certificates VALUES ('aa11', 'app1', 0, 1000, 87400);
INSERT INTO services VALUES ('web', '10.0.0.1:80', '[]');
INSERT INTO service_policies VALUES ('logs-in', '[{"Role":"logs"}]', '["All"]');
INSERT INTO tokens VALUES ('tok-used', 'app1', 9999, 1000);
INSERT INTO tokens VALUES ('tok-free', 'router1', 9999, NULL);
INSERT INTO routers VALUES ('router1', '127.0.0.1:4433', 2000);
PRAGMA user_version = 1;
"#;
