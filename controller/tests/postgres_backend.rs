//! The PostgreSQL backend against a real server.
//!
//! Needs `DARKPORT_TEST_POSTGRES`, a server URL whose user may create
//! databases; each test makes its own fresh database. Without it the tests
//! say SKIPPED and pass, except under `CI=true`, where they fail:
//!
//! ```text
//! export DARKPORT_TEST_POSTGRES="$(scripts/postgres.sh start /tmp/pgtest)"
//! cargo test -p darkport-controller --test postgres_backend
//! scripts/postgres.sh stop /tmp/pgtest
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;

use common::{commit_two_changes, entry, n, rich_state, same_as_memory};
use darkport_controller::store::postgres::{redact, PgBackend};
use darkport_controller::store::{Backend, RouterRecord, State, Store, StoreError, TokenRecord};
use darkport_proto::msg::AuditEntry;

const ENV_TEST_POSTGRES: &str = "DARKPORT_TEST_POSTGRES";

/// The server URL, or `None` (after saying so) when the tests are skipped.
fn server() -> Option<String> {
    match std::env::var(ENV_TEST_POSTGRES) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let msg = format!(
                "SKIPPED: PostgreSQL backend tests need a server: set {ENV_TEST_POSTGRES} \
                 (scripts/postgres.sh start DIR prints one)"
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true: not skipping)");
            }
            // Straight to stderr: libtest captures eprintln! of passing
            // tests, and a skip must be seen. Once per test binary.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
            });
            None
        }
    }
}

/// Runs SQL on the server outside any test runtime (its own thread, its
/// own runtime), so it works from plain and tokio tests alike. Returns
/// the rows, each value as the server prints it.
fn admin_sql(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let url = url.to_string();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
            let conn = tokio::spawn(conn);
            let messages = client.simple_query(&sql).await.expect("admin sql");
            drop(client);
            let _ = conn.await;
            messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
    })
    .join()
    .expect("admin thread")
}

/// Every row of every state table, one line each in key order.
fn dump(url: &str) -> String {
    let mut out = String::new();
    for table in common::TABLES {
        for row in admin_sql(url, &format!("SELECT * FROM {table} ORDER BY 1")) {
            let values: Vec<String> = row
                .into_iter()
                .map(|v| v.map_or("NULL".into(), |v| format!("'{v}'")))
                .collect();
            out.push_str(&format!("{table}: {}\n", values.join(", ")));
        }
    }
    out
}

/// `url` with its database name replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A fresh, empty database on the test server: its URL.
fn fresh_db() -> Option<String> {
    let server = server()?;
    let db = format!("dp_test_{:016x}", rand::random::<u64>());
    admin_sql(&server, &format!("CREATE DATABASE {db}"));
    Some(with_db(&server, &db))
}

fn connect(url: &str) -> PgBackend {
    PgBackend::connect(url).unwrap_or_else(|e| panic!("connect {}: {e}", redact(url)))
}

#[test]
fn same_changes_give_the_same_state_and_audit_as_memory() {
    let Some(url) = fresh_db() else { return };
    let last = same_as_memory(&mut connect(&url));
    // A second backend on the same database reads the same.
    assert_eq!(connect(&url).load().expect("load"), last);
}

/// The rows as this version writes them (see the SQLite backend's test of
/// the same name).
#[test]
fn stored_rows_are_pinned() {
    let Some(url) = fresh_db() else { return };
    commit_two_changes(&mut connect(&url));
    assert_eq!(dump(&url), PINNED);
}

const PINNED: &str = r#"meta: 'generation', '2'
meta: 'snapshot_version', '4'
identities: 'app1', 'client', '["web","logs","extra"]', '900', NULL, '2100'
identities: 'router1', 'router', '[]', '950', '5000', NULL
certificates: 'bb22', 'app1', '0', '2000', '88400'
certificates: 'cc33', 'router1', '0', '1500', '87900'
certificates: 'dd44', 'app1', '1', '3000', '89400'
services: 'api', '', '[]', '"Tcp"', 'sticky'
services: 'fluentd', '127.0.0.1:24224', '["logs"]', '{"FluentForward":{"identity_key":"darkport_identity","roles_key":"roles","router_key":null,"shared_key":"k3y","service_user":null,"event_time":"Unwrap","metadata_key":null,"app_handshake":"Off"}}', 'lowest-cost'
service_policies: 'api-hosts', '[{"Name":"api"}]', '[{"Role":"hosters"}]', '[]', 'bind'
service_policies: 'logs-in', '[{"Role":"logs"}]', '[{"Name":"app1"},"All"]', '["other"]', 'dial'
router_policies: 'everywhere', '["All"]', '[{"Name":"fluentd"}]'
tokens: 'tok-free', 'router1', '9999', '3000'
tokens: 'tok-used', 'app1', '9999', '1000'
routers: 'router1', '127.0.0.1:4433', '2000'
controllers: 'ctl-a', 'ctl-a:4430', '2000'
controllers: 'ctl-b', 'ctl-b:4430', '3000'
audit: '1', '10', 'root', 'create all'
audit: '2', '11', 'root', 'and more'
audit: '3', '20', 'root', 'change'
"#;

#[test]
fn concurrent_commits_from_one_generation_one_wins() {
    let Some(url) = fresh_db() else { return };
    let mut a = connect(&url);
    let mut b = connect(&url);
    let old = a.load().expect("load");
    assert_eq!(old, b.load().expect("load"));
    let mut na = rich_state();
    na.generation = old.generation + 1;
    let mut nb = State {
        generation: old.generation + 1,
        ..State::default()
    };
    nb.routers.insert(
        n("loser"),
        RouterRecord {
            advertise: "x:1".into(),
            last_seen: 1,
        },
    );
    let barrier = Arc::new(Barrier::new(2));
    let (ba, bb) = (barrier.clone(), barrier);
    let (oa, ob) = (old.clone(), old.clone());
    let (na2, nb2) = (na.clone(), nb.clone());
    let ta = std::thread::spawn(move || {
        ba.wait();
        let r = a.commit(&oa, &na2, &[entry(1, "a")]);
        (r, a)
    });
    let tb = std::thread::spawn(move || {
        bb.wait();
        let r = b.commit(&ob, &nb2, &[entry(1, "b")]);
        (r, b)
    });
    let (ra, mut a) = ta.join().expect("thread a");
    let (rb, _b) = tb.join().expect("thread b");
    let (winner, winner_action) = match (&ra, &rb) {
        (Ok(()), Err(StoreError::Conflict { seen, found, .. })) => {
            assert_eq!((*seen, *found), (0, 1));
            (na, "a")
        }
        (Err(StoreError::Conflict { seen, found, .. }), Ok(())) => {
            assert_eq!((*seen, *found), (0, 1));
            (nb, "b")
        }
        other => panic!("expected one Ok and one Conflict, got {other:?}"),
    };
    assert_eq!(a.load().expect("load"), winner);
    let actions: Vec<String> = a
        .audit(10)
        .expect("audit")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, [winner_action]);
}

#[test]
fn another_backend_hears_of_a_commit_within_a_second() {
    let Some(url) = fresh_db() else { return };
    let mut a = connect(&url);
    let mut b = connect(&url);
    let mut rx = b.changes().expect("changes");
    assert!(b.changes().is_none(), "changes() is handed out once");
    // The first message says the listener is up (commits before it were
    // not heard).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("listener up within 5 s")
            .expect("channel open");
    });
    let old = a.load().expect("load");
    let new = State {
        generation: old.generation + 1,
        version: 1,
        ..old.clone()
    };
    let start = Instant::now();
    a.commit(&old, &new, &[]).expect("commit");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .expect("a change message within 1 s of the commit")
            .expect("channel open");
    });
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(b.load().expect("load").generation, new.generation);
}

#[test]
fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
    let Some(url) = fresh_db() else { return };
    let first = connect(&url);
    drop(first);
    // Two at once, then once more: no error, nothing changes.
    let (u1, u2) = (url.clone(), url.clone());
    let t1 = std::thread::spawn(move || PgBackend::connect(&u1).map(drop));
    let t2 = std::thread::spawn(move || PgBackend::connect(&u2).map(drop));
    t1.join().expect("t1").expect("concurrent connect 1");
    t2.join().expect("t2").expect("concurrent connect 2");
    let mut again = connect(&url);
    assert_eq!(again.load().expect("load"), State::default());

    admin_sql(
        &url,
        "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
    );
    match PgBackend::connect(&url) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("newer than this controller knows") && msg.contains("999"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[test]
fn no_server_is_unavailable_quickly() {
    // No need for the test server, but keep the skip/CI rule uniform.
    if server().is_none() {
        return;
    }
    // A port nothing listens on: bind one, note it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("postgres://dp:hunter2@127.0.0.1:{port}/darkport");
    let start = Instant::now();
    match PgBackend::connect(&url) {
        Err(StoreError::Unavailable { path, reason }) => {
            let path = path.display().to_string();
            assert!(!path.contains("hunter2"), "{path}");
            assert!(path.contains("***"), "{path}");
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_commit_while_the_database_is_gone_is_unavailable() {
    let Some(url) = fresh_db() else { return };
    let mut a = connect(&url);
    assert_eq!(a.describe(), redact(&url));
    let old = a.load().expect("load");
    // Throw this backend's connections out; the pool replaces them.
    let db = url.rsplit('/').next().unwrap_or_default().to_string();
    let server = server().expect("server");
    admin_sql(
        &server,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ),
    );
    let new = State {
        generation: old.generation + 1,
        ..old.clone()
    };
    // The first try may meet the dead connection; the pool then makes a
    // new one, and the store's retry (or this loop) gets through.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.commit(&old, &new, &[]) {
            Ok(()) => break,
            Err(StoreError::Unavailable { .. } | StoreError::Db { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("commit after the connections were killed: {e:?}"),
        }
    }
    assert_eq!(a.load().expect("load").generation, new.generation);
}

fn store_on(url: &str) -> Store {
    Store::new(Box::new(connect(url))).expect("store")
}

fn consume(store: &Store, token: &str, at: u64) -> Result<(), StoreError> {
    store.update(false, None, |s| {
        let t = s.tokens.get_mut(token).ok_or_else(|| StoreError::Corrupt {
            path: "test".into(),
            reason: "no such token".into(),
        })?;
        if t.consumed_at.is_some() {
            return Err(StoreError::Corrupt {
                path: "test".into(),
                reason: "already consumed".into(),
            });
        }
        t.consumed_at = Some(at);
        Ok(())
    })
}

fn add_token(store: &Store, id: &str) {
    store
        .update(false, None, |s| -> Result<(), StoreError> {
            s.tokens.insert(
                id.into(),
                TokenRecord {
                    identity: n("app1"),
                    expires_at: u64::MAX / 4,
                    consumed_at: None,
                },
            );
            Ok(())
        })
        .expect("add token");
}

#[test]
fn store_retries_on_conflict_and_sees_the_other_controllers_change() {
    let Some(url) = fresh_db() else { return };
    let a = store_on(&url);
    let b = store_on(&url);
    add_token(&a, "t1");
    // B loaded before A's change; its closure must see A's token after the
    // conflict and reload.
    let mut seen: Vec<Option<u64>> = Vec::new();
    let r: Result<(), StoreError> = b.update(false, None, |s| {
        seen.push(s.tokens.get("t1").and_then(|t| t.consumed_at.or(Some(0))));
        Ok(())
    });
    r.expect("b update");
    assert_eq!(seen, [None, Some(0)], "first try on stale state, then A's");
    consume(&a, "t1", 7).expect("a consumes");
    let err = consume(&b, "t1", 8).expect_err("b must see it consumed");
    assert!(err.to_string().contains("already consumed"), "{err}");
    assert_eq!(b.read().tokens["t1"].consumed_at, Some(7));
}

#[test]
fn a_token_consumed_by_two_controllers_at_once_is_consumed_once() {
    let Some(url) = fresh_db() else { return };
    let a = Arc::new(store_on(&url));
    let b = Arc::new(store_on(&url));
    for round in 0..5u64 {
        let id = format!("race{round}");
        add_token(&a, &id);
        b.refresh().expect("refresh");
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [(a.clone(), 1u64), (b.clone(), 2u64)]
            .into_iter()
            .map(|(store, who)| {
                let (barrier, id) = (barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (who, consume(&store, &id, who))
                })
            })
            .collect();
        let results: BTreeMap<u64, Result<(), StoreError>> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let oks: Vec<u64> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(w, _)| *w)
            .collect();
        assert_eq!(oks.len(), 1, "round {round}: {results:?}");
        a.refresh().expect("refresh");
        b.refresh().expect("refresh");
        assert_eq!(a.read().tokens[&id].consumed_at, Some(oks[0]));
        assert_eq!(b.read().tokens[&id].consumed_at, Some(oks[0]));
    }
}

/// The controller calls the backend from tokio worker threads (under the
/// store's std mutex): the backend must not need, or disturb, the
/// caller's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_inside_a_tokio_runtime() {
    let Some(url) = fresh_db() else { return };
    let a = Arc::new(store_on(&url));
    let b = store_on(&url);
    let mut changes = b.changes().expect("changes");
    tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("listener up")
        .expect("open");
    let a2 = a.clone();
    tokio::spawn(async move { add_token(&a2, "in-tokio") })
        .await
        .expect("task");
    tokio::time::timeout(Duration::from_secs(1), changes.recv())
        .await
        .expect("change heard within 1 s")
        .expect("open");
    assert!(b.refresh().expect("refresh"));
    assert!(b.read().tokens.contains_key("in-tokio"));
    assert_eq!(a.audit(10).expect("audit"), Vec::<AuditEntry>::new());
    // Dropping a store (and its backend thread) inside the runtime is fine.
    drop(b);
}

/// The listener's connection dies (here: terminated by the server); it
/// reconnects, says so with a message (commits may have been missed) and
/// hears the next commit.
#[test]
fn the_change_feed_survives_a_lost_connection() {
    let Some(url) = fresh_db() else { return };
    let server = server().expect("server");
    let db = url.rsplit('/').next().unwrap_or_default().to_string();
    let mut a = connect(&url);
    let mut b = connect(&url);
    let mut rx = b.changes().expect("changes");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let recv_within = |rx: &mut tokio::sync::mpsc::Receiver<()>, secs: u64, what: &str| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(secs), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{what} within {secs} s"))
                .expect("channel open");
        })
    };
    recv_within(&mut rx, 5, "listener up");
    admin_sql(
        &server,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db}' AND query LIKE 'LISTEN%'"
        ),
    );
    recv_within(&mut rx, 5, "a message after the listener reconnected");
    let old = a.load().expect("load");
    let new = State {
        generation: old.generation + 1,
        ..old.clone()
    };
    a.commit(&old, &new, &[]).expect("commit");
    recv_within(&mut rx, 1, "the next commit heard");
}

/// Rows written to the database behind the controllers' back (another
/// database writer, a bug) that the checks on write would refuse are left
/// out when the state is loaded: they cannot crash a controller or reach
/// routers' snapshots and clients' identity files.
#[test]
fn rows_that_fail_the_write_checks_are_ignored_on_load() {
    let Some(url) = fresh_db() else { return };
    drop(store_on(&url));
    admin_sql(
        &url,
        "INSERT INTO routers (name, advertise, last_seen) VALUES \
           ('good', 'router.example:4433', 1), ('evil', E'a\\nb:1', 1), ('noport', 'x', 1); \
         INSERT INTO controllers (name, advertise, last_seen) VALUES ('c-evil', 'has space:1', 1); \
         INSERT INTO service_policies (name, services, identities, tags) VALUES \
           ('odd', '[\"All\"]', '[\"All\"]', '[\"app.{a\"]'); \
         UPDATE meta SET value = value + 1 WHERE key = 'generation';",
    );
    let store = store_on(&url);
    let state = store.read();
    assert_eq!(
        state.routers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert!(state.controllers.keys().all(|k| k.as_str() != "c-evil"));
    assert!(!state.policies.contains_key(&n("odd")));
    // The controller goes on working on what is left.
    store
        .update(true, None, |s| {
            s.routers.insert(
                n("new"),
                RouterRecord {
                    advertise: "new.example:4433".into(),
                    last_seen: 2,
                },
            );
            Ok::<_, StoreError>(())
        })
        .expect("commit after bad rows");
    assert!(store_on(&url).read().routers.contains_key(&n("new")));
}

/// A database at schema version 1 (before bind policies and strategies),
/// with rows, is upgraded in place: its policies dial, its services pick
/// terminators by lowest cost. A name this version does not know fails
/// the load, naming it (read as a default, a bind policy could become a
/// dial policy).
#[test]
fn version_1_rows_get_the_defaults_and_unknown_names_are_refused() {
    use darkport_proto::policy::{PolicyKind, TerminatorStrategy};
    let Some(url) = fresh_db() else { return };
    drop(connect(&url));
    admin_sql(
        &url,
        "ALTER TABLE services DROP COLUMN strategy; \
         ALTER TABLE service_policies DROP COLUMN kind; \
         DELETE FROM schema_migrations WHERE version > 1; \
         INSERT INTO services (name, address, roles) VALUES ('web', '10.0.0.1:80', '[]'); \
         INSERT INTO service_policies (name, services, identities) VALUES ('p', '[\"All\"]', '[\"All\"]');",
    );
    let state = connect(&url).load().expect("load after the upgrade");
    assert_eq!(
        state.services[&n("web")].strategy,
        TerminatorStrategy::LowestCost
    );
    assert_eq!(state.policies[&n("p")].kind, PolicyKind::Dial);
    for (sql, want) in [
        (
            "UPDATE service_policies SET kind = 'forward'",
            "unknown policy kind \"forward\"",
        ),
        (
            "UPDATE service_policies SET kind = 'bind'; UPDATE services SET strategy = 'round-robin'",
            "unknown terminator strategy \"round-robin\"",
        ),
    ] {
        admin_sql(&url, sql);
        match connect(&url).load() {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(e.to_string().contains(want), "{e}")
            }
            other => panic!("expected Corrupt naming {want}, got {other:?}"),
        }
    }
}
