//! The SQLite backend: the same changes give the same state and audit log
//! as [`MemoryBackend`](darkport_controller::store::MemoryBackend), and the
//! rows it stores are pinned (so a refactoring of how rows are written
//! cannot change the file format unnoticed). Loading older schema
//! versions is a unit test of `store::sqlite`.

mod common;

use common::{commit_two_changes, same_as_memory};
use darkport_controller::store::sqlite::SqliteBackend;
use darkport_controller::store::Backend;

/// Every row of every table, one line each, in key order, with the SQLite
/// storage class of each value.
fn dump(path: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut out = String::new();
    for table in common::TABLES {
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

fn open(path: &std::path::Path) -> SqliteBackend {
    SqliteBackend::open(path).expect("open")
}

#[test]
fn same_changes_give_the_same_state_and_audit_as_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    let last = same_as_memory(&mut open(&path));
    assert_eq!(open(&path).load().expect("load"), last);
}

/// The rows as this version writes them: what older and newer controllers
/// read from the same file.
#[test]
fn stored_rows_are_pinned() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    commit_two_changes(&mut open(&path));
    assert_eq!(dump(&path), PINNED);
}

const PINNED: &str = r#"meta: 'generation', 2
meta: 'snapshot_version', 4
identities: 'app1', 'client', '["web","logs","extra"]', 900, NULL, 2100
identities: 'router1', 'router', '[]', 950, 5000, NULL
certificates: 'bb22', 'app1', 0, 2000, 88400
certificates: 'cc33', 'router1', 0, 1500, 87900
certificates: 'dd44', 'app1', 1, 3000, 89400
services: 'api', '', '[]', '"Tcp"', 'sticky'
services: 'fluentd', '127.0.0.1:24224', '["logs"]', '{"FluentForward":{"identity_key":"darkport_identity","roles_key":"roles","router_key":null,"shared_key":"k3y","service_user":null,"event_time":"Unwrap","metadata_key":null,"app_handshake":"Off"}}', 'lowest-cost'
service_policies: 'api-hosts', '[{"Name":"api"}]', '[{"Role":"hosters"}]', '[]', 'bind'
service_policies: 'logs-in', '[{"Role":"logs"}]', '[{"Name":"app1"},"All"]', '["other"]', 'dial'
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
