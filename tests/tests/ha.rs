//! High availability: several controllers on one PostgreSQL, with the
//! real binaries as an operator runs them (`init --store`, `join`, `run`,
//! `migrate`) and a real PostgreSQL (scripts/postgres.sh).
//!
//! - kill -9 one controller: enrollment, admin commands, renewal and
//!   router sync carry on through the other within 2 s;
//! - a revocation made on A cuts a live stream on a router synced to B
//!   within 1 s;
//! - one token redeemed at A and at B at the same instant: exactly one
//!   wins;
//! - with the database stopped: clear errors, the data plane carries on,
//!   and everything recovers when it returns;
//! - a SQLite deployment migrated to PostgreSQL keeps every identity,
//!   policy and consumed token.
//!
//! Without PostgreSQL (`DARKPORT_TEST_POSTGRES` unset) each test skips
//! loudly, and fails under `CI=true`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use darkport_controller::DataDir;
use darkport_proto::identity::Kind;
use darkport_proto::msg::{
    AdminRequest, AdminResponse, ControlBody, ControlErrorCode, ControlResponse, EnrollRequest,
};
use darkport_proto::policy::ServiceEntry;
use darkport_tests::ops::{workspace_bin, Proc};
use darkport_tests::{
    admin, assert_eventually, echo_server, echo_service_for_all, free_udp_addr, n, payload, pg,
    roundtrip, run_router_at, sha256, wait_admin, wait_router_online, wait_until, Busy,
};
use darkport_transport::identity::Identity;
use edge_client::{Client, ClientOptions};

/// Runs a CLI command; its stdout, or a panic with its stderr.
fn ok(args: &[&str]) -> String {
    let out = std::process::Command::new(workspace_bin("darkport-controller"))
        .args(args)
        .output()
        .expect("run darkport-controller");
    assert!(
        out.status.success(),
        "darkport-controller {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Two controllers, A (`init --store`) and B (`join`), on one database,
/// both running (`darkport-controller run`).
struct Pair {
    dir: tempfile::TempDir,
    a: DataDir,
    b: DataDir,
    a_proc: Proc,
    _b_proc: Proc,
}

impl Pair {
    async fn start(url: &str) -> Pair {
        let dir = tempfile::tempdir().expect("dir");
        let (a_addr, b_addr) = (free_udp_addr().expect("a"), free_udp_addr().expect("b"));
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        ok(&[
            "init",
            "--data-dir",
            s(&a),
            "--advertise",
            &a_addr.to_string(),
            "--store",
            url,
        ]);
        // What the operator copies from A to B's host (scp -p): the CA
        // certificate and key, and the token secret.
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).expect("bundle dir");
        for f in ["ca.pem", "ca.key", "token.key"] {
            std::fs::copy(a.join(f), bundle.join(f)).expect("copy");
        }
        ok(&[
            "join",
            "--data-dir",
            s(&b),
            "--advertise",
            &b_addr.to_string(),
            "--name",
            "controller-b",
            "--store",
            url,
            "--from",
            s(&bundle),
        ]);
        let run = |d: &Path, log: &str| {
            Proc::start(
                "darkport-controller",
                &["run", "--data-dir", s(d)],
                &dir.path().join(log),
            )
            .expect("controller")
        };
        let a_proc = run(&a, "a.log");
        let b_proc = run(&b, "b.log");
        let (a, b) = (DataDir::new(a), DataDir::new(b));
        wait_admin(&a).await;
        wait_admin(&b).await;
        Pair {
            dir,
            a,
            b,
            a_proc,
            _b_proc: b_proc,
        }
    }

    /// Creates and enrolls an identity through controller `via`.
    async fn enroll(&self, via: &DataDir, name: &str, kind: Kind) -> PathBuf {
        let token = token(via, name, kind).await;
        let path = self.dir.path().join(format!("{name}.id"));
        edge_client::enroll(&token, kind, &path)
            .await
            .unwrap_or_else(|e| panic!("enrolling {name}: {e}"));
        path
    }

    /// A router enrolled through `via` (so it syncs with `via` first),
    /// running in this process until the test ends.
    async fn router(&self, via: &DataDir, name: &str) -> SocketAddr {
        let id = self.enroll(via, name, Kind::Router).await;
        let (addr, _task) = run_router_at(
            via,
            &id,
            "127.0.0.1:0".parse().expect("addr"),
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("router");
        addr
    }
}

/// What the tests run traffic through: an `echo` service every identity
/// may dial (made through A), a router enrolled through `router_via` (so
/// it syncs with that controller), a client `app` enrolled through A, and
/// a forwarder to `echo` that works.
struct Traffic {
    router: SocketAddr,
    app: PathBuf,
    fwd: SocketAddr,
}

impl Pair {
    async fn traffic(&self, router_via: &DataDir, router_name: &str) -> Traffic {
        echo_service_for_all(&self.a).await;
        let router = self.router(router_via, router_name).await;
        let app = self.enroll(&self.a, "app", Kind::Client).await;
        let fwd = forward(client(&app, router), "echo").await;
        echo_ok(fwd).await;
        Traffic { router, app, fwd }
    }
}

async fn token(via: &DataDir, name: &str, kind: Kind) -> String {
    let req = AdminRequest::CreateIdentity {
        name: n(name),
        kind,
        roles: vec![],
        token_ttl_secs: 3600,
    };
    match admin(via, req).await.expect("create identity") {
        AdminResponse::Token { token, .. } => token,
        other => panic!("no token: {other:?}"),
    }
}

fn client(id: &Path, router: SocketAddr) -> Arc<Client> {
    Arc::new(
        Client::from_identity_file(
            id,
            ClientOptions {
                routers: vec![router.to_string()],
                ..darkport_tests::client_options()
            },
        )
        .expect("client"),
    )
}

async fn forward(client: Arc<Client>, service: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("addr");
    let service = service.to_string();
    tokio::spawn(async move {
        let _ =
            edge_client::forward::forward(client, listener, service, std::future::pending()).await;
    });
    addr
}

async fn echo_ok(fwd: SocketAddr) {
    let data = payload(64 * 1024, 7);
    let tcp = TcpStream::connect(fwd).await.expect("connect");
    let back = roundtrip(tcp, &data).await.expect("roundtrip");
    assert_eq!(sha256(&back), sha256(&data));
}

/// Whether a byte goes through the forwarder at `fwd` and comes back.
async fn serves(fwd: SocketAddr) -> bool {
    match TcpStream::connect(fwd).await {
        Ok(t) => roundtrip(t, b"x").await.is_ok_and(|b| b == b"x"),
        Err(e) => {
            eprintln!("forwarder {fwd}: {e}");
            false
        }
    }
}

async fn create_service(via: &DataDir, name: &str, address: SocketAddr) {
    admin(
        via,
        AdminRequest::CreateService(ServiceEntry {
            name: n(name),
            address: address.to_string(),
            roles: vec![],
            protocol: Default::default(),
            strategy: Default::default(),
        }),
    )
    .await
    .expect("create service");
}

/// Redeems `token` at the controller at `addr` (not the ones the token
/// names), with a fresh key: the raw enrollment request.
async fn redeem_at(addr: &str, token: &str) -> ControlResponse {
    let claims = darkport_proto::token::SignedToken::parse(token)
        .expect("token")
        .claims;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr");
    let config = darkport_transport::tls::client_config(
        None,
        darkport_transport::tls::Trust::Pinned(claims.ca_fingerprint),
        Kind::Controller,
        darkport_proto::ALPN_CONTROL,
    )
    .expect("config");
    let body = ControlBody::Enroll(EnrollRequest {
        token: token.to_string(),
        csr_der: csr.der().to_vec(),
    });
    match darkport_transport::control::one_shot(addr, config, body).await {
        Ok(r) => r,
        Err(darkport_transport::control::ControlClientError::Refused(e)) => {
            ControlResponse::Error(e)
        }
        Err(e) => panic!("enrollment at {addr} failed to run: {e}"),
    }
}

fn advertise(dd: &DataDir) -> String {
    dd.load_config().expect("config").advertise
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_controller_and_the_other_carries_on_within_2s() {
    let Some(url) = pg::test_database("ha::kill9") else {
        return;
    };
    let pair = Pair::start(&url).await;
    // The router syncs with A (enrolled there, A is first in its list).
    let Traffic { router, app, fwd } = pair.traffic(&pair.a, "router-1").await;
    // Minted by A before it dies: redeemable at B.
    let early = token(&pair.a, "early", Kind::Client).await;
    let identity = Identity::load(&app).expect("identity");
    assert!(
        identity.controller.contains(&advertise(&pair.b)),
        "the identity file lists both controllers: {}",
        identity.controller
    );

    pair.a_proc.signal("-KILL");
    let killed = Instant::now();

    // Admin commands through B at once; the change reaches the router
    // (which has to notice A is gone and sync with B) within 2 s.
    let echo = echo_server().await.expect("echo");
    create_service(&pair.b, "late", echo).await;
    let late = forward(client(&app, router), "late").await;
    assert_eventually!(
        serves(late).await,
        Duration::from_secs(2).saturating_sub(killed.elapsed()),
        "a service created through B was not served by the router (synced to the dead A) within 2 s of the kill"
    );
    eprintln!(
        "router synced with B, change enforced {:?} after kill -9 of A",
        killed.elapsed()
    );

    // Enrollment with A's token, through B.
    let start = Instant::now();
    edge_client::enroll(&early, Kind::Client, &pair.dir.path().join("early.id"))
        .await
        .expect("A's token redeemed through B");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // A new identity through B.
    pair.enroll(&pair.b, "late-app", Kind::Client).await;
    // Renewal through B; the file's controller list is refreshed, B first.
    let start = Instant::now();
    let renewed = darkport_transport::renew::renew(&identity, &app)
        .await
        .expect("renewed through B");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_ne!(renewed.chain, identity.chain);
    assert!(
        renewed.controller.starts_with(&advertise(&pair.b)),
        "{}",
        renewed.controller
    );
    echo_ok(fwd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_a_cuts_a_stream_on_a_router_synced_to_b_within_1s() {
    let Some(url) = pg::test_database("ha::revocation") else {
        return;
    };
    let pair = Pair::start(&url).await;
    let Traffic { fwd, .. } = pair.traffic(&pair.b, "router-b").await;
    let delay = revocation_cut(&pair.a, fwd).await;
    eprintln!("revocation on A cut the stream on B's router after {delay:?}");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
}

/// Keeps a stream through `fwd` busy, revokes `app` through `via`, and
/// says how long until the stream was cut (at most 5 s).
async fn revocation_cut(via: &DataDir, fwd: SocketAddr) -> Duration {
    let busy = Busy::start(TcpStream::connect(fwd).await.expect("connect"));
    busy.carrying(3).await;
    let start = Instant::now();
    admin(via, AdminRequest::RevokeIdentity { name: n("app") })
        .await
        .expect("revoke");
    let (_, cut) = tokio::time::timeout(Duration::from_secs(5), busy.task)
        .await
        .expect("stream not cut within 5 s")
        .expect("task");
    cut.duration_since(start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_at_a_and_b_at_once_exactly_one_wins() {
    let Some(url) = pg::test_database("ha::token_race") else {
        return;
    };
    let pair = Pair::start(&url).await;
    let (a, b) = (advertise(&pair.a), advertise(&pair.b));
    for i in 0..8 {
        let token = token(&pair.a, &format!("raced-{i}"), Kind::Client).await;
        let (at_a, at_b) = tokio::join!(redeem_at(&a, &token), redeem_at(&b, &token));
        let won = [&at_a, &at_b]
            .iter()
            .filter(|r| matches!(r, ControlResponse::Enrolled { .. }))
            .count();
        assert_eq!(won, 1, "round {i}: A {at_a:?}, B {at_b:?}");
        let lost = if matches!(at_a, ControlResponse::Enrolled { .. }) {
            at_b
        } else {
            at_a
        };
        assert!(
            matches!(&lost, ControlResponse::Error(e) if e.code == ControlErrorCode::TokenRejected && e.message.contains("already used")),
            "round {i}: the loser must be told the token was used: {lost:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_clear_errors_data_plane_on_and_recovery() {
    let Some(db) = pg::Server::start("ha::database_down").expect("postgres") else {
        return;
    };
    let url = pg::fresh_database(&db.url).expect("database");
    let pair = Pair::start(&url).await;
    let Traffic { router, app, fwd } = pair.traffic(&pair.b, "router-b").await;

    db.stop().expect("stop postgres");
    // Admin commands fail, saying why and that nothing changed.
    let echo = echo_server().await.expect("echo");
    let err = admin(
        &pair.a,
        AdminRequest::CreateService(ServiceEntry {
            name: n("during"),
            address: echo.to_string(),
            roles: vec![],
            protocol: Default::default(),
            strategy: Default::default(),
        }),
    )
    .await
    .expect_err("no database, no change");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("unavailable") && msg.contains("nothing was changed"),
        "{msg}"
    );
    // The data plane carries on: new streams on the cached policy.
    for _ in 0..3 {
        echo_ok(fwd).await;
    }

    db.restart().expect("restart postgres");
    let start = Instant::now();
    let svc = |name: &'static str| ServiceEntry {
        name: n(name),
        address: echo.to_string(),
        roles: vec![],
        protocol: Default::default(),
        strategy: Default::default(),
    };
    // A change through A (retried: each failure changes nothing).
    assert_eventually!(
        admin(&pair.a, AdminRequest::CreateService(svc("after")))
            .await
            .is_ok(),
        Duration::from_secs(20),
        "controller A did not recover when the database returned"
    );
    eprintln!(
        "a change through A landed {:?} after the database returned",
        start.elapsed()
    );
    // It reaches the router synced to B: B's listener reconnected.
    let after = forward(client(&app, router), "after").await;
    assert_eventually!(
        serves(after).await,
        Duration::from_secs(20),
        "a change through A did not reach B's router after the database returned"
    );
    echo_ok(fwd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_migration_keeps_everything() {
    let Some(url) = pg::test_database("ha::migrate") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let ctl = dir.path().join("ctl");
    let addr = free_udp_addr().expect("addr");
    ok(&[
        "init",
        "--data-dir",
        s(&ctl),
        "--advertise",
        &addr.to_string(),
    ]);
    let run = |log: &str| {
        Proc::start(
            "darkport-controller",
            &["run", "--data-dir", s(&ctl)],
            &dir.path().join(log),
        )
        .expect("controller")
    };
    let dd = DataDir::new(&ctl);
    let proc = run("before.log");
    wait_admin(&dd).await;
    echo_service_for_all(&dd).await;
    let used = token(&dd, "app", Kind::Client).await;
    let app = dir.path().join("app.id");
    edge_client::enroll(&used, Kind::Client, &app)
        .await
        .expect("enroll");
    let unused = token(&dd, "later", Kind::Client).await;
    let _ = token(&dd, "gone", Kind::Client).await;
    admin(&dd, AdminRequest::RevokeIdentity { name: n("gone") })
        .await
        .expect("revoke");
    let _ = token(&dd, "router-1", Kind::Router).await;
    let listing = |r: AdminResponse| format!("{r:?}");
    let before = (
        listing(admin(&dd, AdminRequest::ListIdentities).await.expect("ids")),
        listing(admin(&dd, AdminRequest::ListServices).await.expect("svcs")),
        listing(admin(&dd, AdminRequest::ListPolicies).await.expect("pols")),
        listing(
            admin(&dd, AdminRequest::ListRouterPolicies)
                .await
                .expect("rps"),
        ),
    );
    drop(proc);

    let out = ok(&["migrate", "--data-dir", s(&ctl), "--to", &url]);
    eprintln!("{out}");
    assert!(!ctl.join("state.db").exists(), "state.db is set aside");
    assert!(ctl.join("state.db.migrated").exists());
    let _proc = run("after.log");
    wait_admin(&dd).await;
    let after = (
        listing(admin(&dd, AdminRequest::ListIdentities).await.expect("ids")),
        listing(admin(&dd, AdminRequest::ListServices).await.expect("svcs")),
        listing(admin(&dd, AdminRequest::ListPolicies).await.expect("pols")),
        listing(
            admin(&dd, AdminRequest::ListRouterPolicies)
                .await
                .expect("rps"),
        ),
    );
    assert_eq!(before, after, "the same identities, services and policies");
    // The consumed token stays consumed; the unused one still works.
    let again = redeem_at(&addr.to_string(), &used).await;
    assert!(
        matches!(&again, ControlResponse::Error(e) if e.code == ControlErrorCode::TokenRejected),
        "{again:?}"
    );
    edge_client::enroll(&unused, Kind::Client, &dir.path().join("later.id"))
        .await
        .expect("the unused token still enrolls");
    // The certificate issued before the migration is still current.
    Client::from_identity_file(&app, ClientOptions::default())
        .expect("client")
        .routers()
        .await
        .expect("the enrolled client's certificate is still current");
    // A second migration is refused with a reason.
    let out = std::process::Command::new(workspace_bin("darkport-controller"))
        .args(["migrate", "--data-dir", s(&ctl), "--to", &url])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already keeps its state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a CLI command that must fail; its stderr.
fn refused(args: &[&str]) -> String {
    let out = std::process::Command::new(workspace_bin("darkport-controller"))
        .args(args)
        .output()
        .expect("run darkport-controller");
    assert!(
        !out.status.success(),
        "darkport-controller {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `init --store`, `join` and `migrate` refuse what would mix or lose
/// deployments, each with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_join_and_migrate_refuse_what_they_must() {
    let Some(url) = pg::test_database("ha::refusals") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path();
    let addr = free_udp_addr().expect("addr").to_string();
    let p = |name: &str| dir.join(name).to_str().expect("utf-8").to_string();
    let join = |data: &str, name: &str, url: &str, from: &str| {
        vec![
            "join".to_string(),
            "--data-dir".into(),
            p(data),
            "--advertise".into(),
            addr.clone(),
            "--name".into(),
            name.into(),
            "--store".into(),
            url.into(),
            "--from".into(),
            p(from),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // Joining an empty database: nothing to join.
    let fresh = pg::test_database("ha::refusals").expect("a second database");
    ok(&[
        "init",
        "--data-dir",
        &p("a"),
        "--advertise",
        &addr,
        "--store",
        &url,
    ]);
    let bundle = dir.join("bundle");
    std::fs::create_dir(&bundle).expect("bundle");
    for f in ["ca.pem", "ca.key", "token.key"] {
        std::fs::copy(dir.join("a").join(f), bundle.join(f)).expect("copy");
    }
    let err = refused(&args(&join("b0", "ctl-b", &fresh, "bundle")));
    assert!(err.contains("holds no deployment yet"), "{err}");
    // A second init on the same database.
    let err = refused(&[
        "init",
        "--data-dir",
        &p("a2"),
        "--advertise",
        &addr,
        "--store",
        &url,
    ]);
    assert!(err.contains("already holds a deployment"), "{err}");
    // A name already taken (the first controller is "controller").
    let err = refused(&args(&join("b1", "controller", &url, "bundle")));
    assert!(err.contains("already in the store"), "{err}");
    // A CA key others may read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = bundle.join("ca.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = refused(&args(&join("b2", "ctl-b", &url, "bundle")));
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    // Not a PostgreSQL URL.
    let err = refused(&args(&join("b3", "ctl-b", "mysql://x/y", "bundle")));
    assert!(err.contains("not a postgres://"), "{err}");
    // None of the refused joins left a data dir half made.
    for d in ["b0", "b1", "b2", "b3"] {
        assert!(!dir.join(d).join("ca.key").exists(), "{d} was half made");
    }
    // And the right one works.
    ok(&args(&join("b", "ctl-b", &url, "bundle")));
    assert!(dir.join("b").join("controller.id").exists());

    // Migrating a SQLite deployment into a database that holds one.
    ok(&["init", "--data-dir", &p("lite"), "--advertise", &addr]);
    let err = refused(&["migrate", "--data-dir", &p("lite"), "--to", &url]);
    assert!(err.contains("already holds a deployment"), "{err}");
    assert!(
        dir.join("lite").join("state.db").exists(),
        "state.db untouched"
    );
}

/// Runs `sql` with psql on a thread of its own (it may take seconds).
fn psql_in_background(
    url: &str,
    sql: &'static str,
) -> std::thread::JoinHandle<std::process::Output> {
    let url = url.to_string();
    std::thread::spawn(move || {
        std::process::Command::new("psql")
            .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .expect("psql")
    })
}

/// An admin client of controller A alone (an admin otherwise tries B too).
fn admin_at(dd: &DataDir) -> darkport_controller::admin::Admin {
    darkport_controller::admin::Admin::from_data_dir(dd, Some(advertise(dd))).expect("admin")
}

/// Five reads at `dd`'s controller, each answered within 500 ms, each
/// followed by an echo through `fwd`.
async fn reads_answer_at_once(dd: &DataDir, fwd: SocketAddr, during: &str) {
    for i in 0..5 {
        let start = Instant::now();
        let r = admin_at(dd).call(AdminRequest::ListIdentities).await;
        let took = start.elapsed();
        assert!(matches!(r, Ok(AdminResponse::Identities(_))), "{r:?}");
        eprintln!("identity list {i} during {during}: {took:?}");
        assert!(
            took < Duration::from_millis(500),
            "a read during {during} took {took:?}"
        );
        echo_ok(fwd).await;
    }
}

/// A database that holds a commit (the generation row locked by another
/// session for 5 s): reads at the controller whose commit waits still
/// answer at once, new streams go through its router, the router keeps its
/// sync session, and a revocation made once the lock is gone still cuts a
/// live stream within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_commit_stalls_no_reads_and_no_router_session() {
    let Some(url) = pg::test_database("ha::stuck_commit") else {
        return;
    };
    let pair = Pair::start(&url).await;
    let Traffic { fwd, router, .. } = pair.traffic(&pair.a, "router-a").await;
    // Another session takes the generation row for 5 s.
    let locker = psql_in_background(
        &url,
        "BEGIN; SELECT value FROM meta WHERE key = 'generation' FOR UPDATE; SELECT pg_sleep(5); COMMIT;",
    );
    wait_until(
        "the locking session to hold the row (sleeping in pg_sleep)",
        Duration::from_secs(5),
        || async { pg::sessions_waiting(&url, "PgSleep") == 1 },
    )
    .await;
    // A commit at A now waits for the row (holding A's commit lock). Both
    // it and the reads go to A alone (an admin otherwise tries B too).
    let stuck = {
        let admin = admin_at(&pair.a);
        tokio::spawn(async move {
            let started = Instant::now();
            let r = admin
                .call(AdminRequest::CreateService(ServiceEntry {
                    name: n("late"),
                    address: "127.0.0.1:9".into(),
                    roles: vec![],
                    protocol: Default::default(),
                    strategy: Default::default(),
                }))
                .await;
            (started.elapsed(), r)
        })
    };
    wait_until(
        "A's commit to wait for the row lock",
        Duration::from_secs(3),
        || async { pg::sessions_waiting(&url, "Lock") >= 1 },
    )
    .await;
    assert!(
        !stuck.is_finished(),
        "the commit should be waiting for the row"
    );
    reads_answer_at_once(&pair.a, fwd, "the stuck commit").await;
    let (waited, r) = stuck.await.expect("task");
    eprintln!("the stuck commit ended after {waited:?}: {r:?}");
    let out = locker.join().expect("locker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The router never lost its session: it is online at A throughout.
    wait_router_online(&pair.a, router, Duration::from_millis(500))
        .await
        .expect("the router's session held");
    let delay = revocation_cut(&pair.a, fwd).await;
    eprintln!("revocation after the stuck commit cut the stream after {delay:?}");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
}

/// Any role that can connect to the database can flood the controllers'
/// change feed: 1,000 `NOTIFY darkport_state` a second for 5 s. Reads at
/// the controller still answer at once, the router keeps its session, new
/// streams go through, and a revocation made during the flood cuts a live
/// stream within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_flood_stalls_nothing() {
    let Some(url) = pg::test_database("ha::notify_flood") else {
        return;
    };
    let pair = Pair::start(&url).await;
    let Traffic { fwd, router, .. } = pair.traffic(&pair.a, "router-a").await;
    pg::query(&url, "CREATE SEQUENCE notified").expect("sequence");
    let flood = psql_in_background(
        &url,
        "DO $$ BEGIN FOR i IN 1..5000 LOOP PERFORM pg_notify('darkport_state', i::text); PERFORM nextval('notified'); COMMIT; PERFORM pg_sleep(0.001); END LOOP; END $$;",
    );
    // A sequence counts the flood's NOTIFYs (nextval is seen at once by
    // every session): the reads below run once 300 are out, mid-flood.
    wait_until(
        "300 NOTIFYs of the flood",
        Duration::from_secs(5),
        || async {
            pg::query(&url, "SELECT last_value FROM notified")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v >= 300)
        },
    )
    .await;
    reads_answer_at_once(&pair.a, fwd, "the NOTIFY flood").await;
    wait_router_online(&pair.a, router, Duration::from_millis(500))
        .await
        .expect("the router's session held");
    let delay = revocation_cut(&pair.a, fwd).await;
    eprintln!("revocation during the NOTIFY flood cut the stream after {delay:?}");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
    let out = flood.join().expect("flood");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
