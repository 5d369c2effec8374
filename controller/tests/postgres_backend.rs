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

use darkport_controller::postgres::{redact, PgBackend};
use darkport_controller::store::{
    Backend, CertRecord, ControllerRecord, IdentityRecord, MemoryBackend, RouterRecord, State,
    Store, StoreError, TokenRecord,
};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{
    FluentSettings, PolicyEntry, RouterPolicyEntry, Selector, ServiceEntry, ServiceProtocol,
};

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
/// own runtime), so it works from plain and tokio tests alike.
fn admin_sql(url: &str, sql: &str) {
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
            client.batch_execute(&sql).await.expect("admin sql");
            drop(client);
            let _ = conn.await;
        });
    })
    .join()
    .expect("admin thread");
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

fn n(s: &str) -> IdentityName {
    IdentityName::new(s).expect("name")
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("selector")
}

fn cert(fp: &str, issued: u64) -> CertRecord {
    CertRecord {
        fingerprint: fp.into(),
        issued_at: issued,
        expires_at: issued + 86_400,
    }
}

fn entry(at: u64, action: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: "root".into(),
        action: action.into(),
    }
}

/// A state with something in every table.
fn rich_state() -> State {
    let mut s = State {
        version: 3,
        generation: 1,
        ..State::default()
    };
    s.identities.insert(
        n("app1"),
        IdentityRecord {
            name: n("app1"),
            kind: Kind::Client,
            roles: vec![n("web"), n("logs")],
            certificates: vec![cert("aa11", 1_000), cert("bb22", 2_000)],
            created_at: 900,
            revoked_at: None,
            last_seen: Some(2_100),
        },
    );
    s.identities.insert(
        n("router1"),
        IdentityRecord {
            name: n("router1"),
            kind: Kind::Router,
            roles: vec![],
            certificates: vec![cert("cc33", 1_500)],
            created_at: 950,
            revoked_at: Some(5_000),
            last_seen: None,
        },
    );
    s.services.insert(
        n("fluentd"),
        ServiceEntry {
            name: n("fluentd"),
            address: "127.0.0.1:24224".into(),
            roles: vec![n("logs")],
            protocol: ServiceProtocol::FluentForward(FluentSettings {
                roles_key: Some("roles".into()),
                shared_key: Some("k3y".into()),
                ..FluentSettings::default()
            }),
        },
    );
    s.services.insert(
        n("web"),
        ServiceEntry {
            name: n("web"),
            address: "10.0.0.1:80".into(),
            roles: vec![],
            protocol: ServiceProtocol::Tcp,
        },
    );
    s.policies.insert(
        n("logs-in"),
        PolicyEntry {
            name: n("logs-in"),
            services: vec![sel("#logs")],
            identities: vec![sel("@app1"), sel("#all")],
            tags: vec!["app.**".into(), "sys.*".into()],
        },
    );
    s.router_policies.insert(
        n("everywhere"),
        RouterPolicyEntry {
            name: n("everywhere"),
            routers: vec![sel("#all")],
            services: vec![sel("fluentd")],
        },
    );
    s.tokens.insert(
        "tok-used".into(),
        TokenRecord {
            identity: n("app1"),
            expires_at: 9_999,
            consumed_at: Some(1_000),
        },
    );
    s.tokens.insert(
        "tok-free".into(),
        TokenRecord {
            identity: n("router1"),
            expires_at: 9_999,
            consumed_at: None,
        },
    );
    s.routers.insert(
        n("router1"),
        RouterRecord {
            advertise: "127.0.0.1:4433".into(),
            last_seen: 2_000,
        },
    );
    s.controllers.insert(
        n("ctl-a"),
        ControllerRecord {
            advertise: "ctl-a:4430".into(),
            last_seen: 2_000,
        },
    );
    s
}

/// The same changes, in order, as (new state, audit) pairs.
fn changes() -> Vec<(State, Vec<AuditEntry>)> {
    let s1 = rich_state();
    let mut s2 = s1.clone();
    s2.generation += 1;
    s2.version += 1;
    // A renewal, a moved token, a deleted service, a changed policy.
    if let Some(i) = s2.identities.get_mut(&n("app1")) {
        i.certificates.push(cert("dd44", 3_000));
        i.certificates.remove(0);
        i.roles.push(n("extra"));
    }
    if let Some(t) = s2.tokens.get_mut("tok-free") {
        t.consumed_at = Some(3_000);
    }
    s2.services.remove(&n("web"));
    if let Some(p) = s2.policies.get_mut(&n("logs-in")) {
        p.tags = vec!["other".into()];
    }
    s2.controllers.insert(
        n("ctl-b"),
        ControllerRecord {
            advertise: "ctl-b:4430".into(),
            last_seen: 3_000,
        },
    );
    let mut s3 = s2.clone();
    s3.generation += 1;
    // An identity deleted with its certificates, a router gone, a router
    // policy gone, nothing routers care about otherwise.
    s3.identities.remove(&n("router1"));
    s3.routers.remove(&n("router1"));
    s3.router_policies.clear();
    s3.tokens.remove("tok-used");
    vec![
        (s1, vec![entry(10, "create all"), entry(11, "and more")]),
        (s2, vec![entry(20, "change")]),
        (s3, vec![]),
        (State::default().with_generation(4), vec![entry(40, "wipe")]),
    ]
}

trait WithGeneration {
    fn with_generation(self, g: u64) -> State;
}

impl WithGeneration for State {
    fn with_generation(mut self, g: u64) -> State {
        self.generation = g;
        self
    }
}

fn connect(url: &str) -> PgBackend {
    PgBackend::connect(url).unwrap_or_else(|e| panic!("connect {}: {e}", redact(url)))
}

#[test]
fn same_changes_give_the_same_state_and_audit_as_memory() {
    let Some(url) = fresh_db() else { return };
    let mut pg = connect(&url);
    let mut mem = MemoryBackend::default();
    assert_eq!(pg.load().expect("load"), mem.load().expect("load"));
    let mut old = State::default();
    for (i, (new, audit)) in changes().into_iter().enumerate() {
        mem.commit(&old, &new, &audit).expect("memory commit");
        pg.commit(&old, &new, &audit).expect("pg commit");
        let loaded = pg.load().expect("load");
        assert_eq!(loaded, mem.load().expect("load"), "after change {i}");
        assert_eq!(loaded, new, "after change {i}");
        for limit in [0, 1, 2, 100] {
            assert_eq!(
                pg.audit(limit).expect("audit"),
                mem.audit(limit).expect("audit"),
                "audit({limit}) after change {i}"
            );
        }
        old = new;
    }
    // A second backend on the same database reads the same.
    assert_eq!(connect(&url).load().expect("load"), old);
}

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
