//! The real binaries as an operator runs them: config files, metrics and
//! health endpoints, SIGHUP reloads, SIGTERM drains.

use std::net::SocketAddr;
use std::time::Duration;

use darkport_proto::identity::Kind;
use darkport_tests::ops::{
    free_tcp_addr, have_prometheus_parser, http_get, scrape, value, Proc, Sample,
};
use darkport_tests::{
    assert_eventually, echo_service_for_all, enroll_at, free_udp_addr, init_controller, payload,
    run_router_at, sha256, wait_admin, wait_router_online,
};
use edge_client::{Client, ClientOptions, DialError};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONTROLLER: &str = "darkport-controller";
const ROUTER: &str = "darkport-edge-router";
const CLIENT: &str = "darkport-edge-client";

fn now() -> f64 {
    darkport_transport::unix_now() as f64
}

/// A controller process with metrics on, an `echo` service open to all.
async fn controller(dir: &std::path::Path) -> (darkport_controller::DataDir, SocketAddr, Proc) {
    let addr = free_udp_addr().expect("addr");
    let dd = init_controller(dir, addr, Duration::from_secs(3600)).expect("init");
    let data_dir = dd.root().to_str().expect("utf-8").to_string();
    let ctl = Proc::start(
        CONTROLLER,
        &[
            "run",
            "--data-dir",
            &data_dir,
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &dir.join("controller.log"),
    )
    .expect("controller");
    wait_admin(&dd).await;
    echo_service_for_all(&dd).await;
    (dd, addr, ctl)
}

/// Writes the router's config file (metrics on, JSON logs, plus `extra`).
fn router_config(
    dir: &std::path::Path,
    identity: &std::path::Path,
    listen: SocketAddr,
    extra: &str,
) -> std::path::PathBuf {
    let config = dir.join(format!("router-{}.toml", listen.port()));
    std::fs::write(
        &config,
        format!(
            "identity = {:?}\nlisten = \"{listen}\"\nmetrics-listen = \"127.0.0.1:0\"\nlog-format = \"json\"\n{extra}",
            identity.to_str().expect("utf-8")
        ),
    )
    .expect("config");
    config
}

/// A router process run from a config file (with metrics on).
fn router(
    dir: &std::path::Path,
    identity: &std::path::Path,
    listen: SocketAddr,
    extra: &str,
) -> Proc {
    let config = router_config(dir, identity, listen, extra);
    Proc::start(
        ROUTER,
        &["run", "--config", config.to_str().expect("utf-8")],
        &dir.join(format!("router-{}.log", listen.port())),
    )
    .expect("router")
}

async fn ready(addr: SocketAddr) -> u16 {
    http_get(addr, "/ready").await.map(|(s, _)| s).unwrap_or(0)
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_move_with_traffic_and_readiness_follows_routers() {
    if !have_prometheus_parser() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let (dd, _, mut ctl) = controller(dir.path()).await;
    let ctl_metrics = ctl.metrics_addr().await.expect("controller metrics");
    assert_eq!(ready(ctl_metrics).await, 200, "the controller is ready");

    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router identity");
    let router_addr = free_udp_addr().expect("addr");
    let mut r = router(dir.path(), &router_id, router_addr, "");
    let r_metrics = r.metrics_addr().await.expect("router metrics");
    assert_eventually!(
        ready(r_metrics).await == 200,
        Duration::from_secs(10),
        "the router is ready once it has a snapshot"
    );

    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("client identity");
    let forward = free_tcp_addr().expect("forward");
    let client_config = dir.path().join("client.toml");
    std::fs::write(
        &client_config,
        format!(
            "identity = {:?}\nforward = [\"{forward}=echo\", \"{}=no-such-service\"]\nmetrics-listen = \"127.0.0.1:0\"\nlog-format = \"json\"\n",
            app.to_str().expect("utf-8"),
            free_tcp_addr().expect("second forward")
        ),
    )
    .expect("client config");
    let mut c = Proc::start(
        CLIENT,
        &["run", "--config", client_config.to_str().expect("utf-8")],
        &dir.path().join("client.log"),
    )
    .expect("client");
    let c_metrics = c.metrics_addr().await.expect("client metrics");
    assert_eventually!(
        ready(c_metrics).await == 200,
        Duration::from_secs(10),
        "the client is ready once it holds a router connection"
    );
    // The forward of an unknown service is named at start.
    assert_eventually!(
        c.log_text()
            .contains("no router serves service \\\"no-such-service\\\""),
        Duration::from_secs(10),
        "no warning about the unknown service:\n{}",
        c.log_text()
    );

    // 200 KiB through the forward, checked by hash.
    let data = payload(200 * 1024, 7);
    let tcp = tokio::net::TcpStream::connect(forward)
        .await
        .expect("forward");
    let back = darkport_tests::roundtrip(tcp, &data).await.expect("echo");
    assert_eq!(sha256(&back), sha256(&data));

    let len = data.len() as f64;
    assert_eventually!(
        scrape(r_metrics).await.ok().and_then(|m| value(
            &m,
            "darkport_router_stream_bytes_total",
            &[("service", "echo"), ("direction", "to_service")]
        )) == Some(len),
        Duration::from_secs(5),
        "the router counts the bytes to the service"
    );
    let m = scrape(r_metrics).await.expect("router metrics");
    assert_eq!(
        get(
            &m,
            "darkport_router_stream_bytes_total",
            &[("service", "echo"), ("direction", "to_client")]
        ),
        len
    );
    assert_eq!(
        get(
            &m,
            "darkport_router_dials_total",
            &[("service", "echo"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        get(&m, "darkport_router_dial_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        get(&m, "darkport_router_connections", &[("kind", "client")]),
        1.0
    );
    assert!(get(&m, "darkport_router_snapshot_version", &[]) >= 1.0);
    assert_eq!(get(&m, "darkport_router_controller_session_up", &[]), 1.0);
    assert_eq!(get(&m, "darkport_router_snapshot_age_seconds", &[]), 0.0);
    assert!(get(&m, "darkport_certificate_expiry_timestamp_seconds", &[]) > now());
    assert_eventually!(
        scrape(r_metrics)
            .await
            .ok()
            .and_then(|m| value(&m, "darkport_router_active_streams", &[]))
            == Some(0.0),
        Duration::from_secs(5),
        "no stream is left open"
    );

    let m = scrape(c_metrics).await.expect("client metrics");
    assert_eq!(
        get(&m, "darkport_client_dials_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(get(&m, "darkport_client_router_connections", &[]), 1.0);
    let rtt = get(
        &m,
        "darkport_client_router_rtt_seconds",
        &[("router", &router_addr.to_string())],
    );
    assert!(rtt > 0.0 && rtt < 1.0, "rtt {rtt}");
    assert!(get(&m, "darkport_certificate_expiry_timestamp_seconds", &[]) > now());

    let m = scrape(ctl_metrics).await.expect("controller metrics");
    assert_eq!(
        get(
            &m,
            "darkport_controller_enrollments_total",
            &[("result", "ok")]
        ),
        2.0
    );
    assert!(
        get(
            &m,
            "darkport_controller_admin_requests_total",
            &[("result", "ok")]
        ) >= 4.0
    );
    assert!(
        get(
            &m,
            "darkport_controller_store_duration_seconds_count",
            &[("op", "commit")]
        ) >= 1.0
    );
    assert_eq!(get(&m, "darkport_controller_routers_online", &[]), 1.0);
    assert!(get(&m, "darkport_controller_ca_expiry_timestamp_seconds", &[]) > now());

    // SIGHUP leaves every process running and serving.
    for p in [&mut ctl, &mut r, &mut c] {
        p.signal("-HUP");
    }
    for (p, addr) in [
        (&mut ctl, ctl_metrics),
        (&mut r, r_metrics),
        (&mut c, c_metrics),
    ] {
        // The reload line says the signal was handled; only then is
        // "still running" a finding.
        assert_eventually!(
            p.log_text().contains("SIGHUP: settings reloaded"),
            Duration::from_secs(5),
            "no reload line:\n{}",
            p.log_text()
        );
        assert!(p.running(), "SIGHUP ended a process:\n{}", p.log_text());
        assert_eq!(http_get(addr, "/live").await.expect("live").0, 200);
    }

    // Readiness follows the routers: none left, the client is not ready.
    r.signal("-TERM");
    assert!(r
        .wait(Duration::from_secs(10))
        .await
        .expect("router stops")
        .success());
    assert_eventually!(
        ready(c_metrics).await == 503,
        Duration::from_secs(15),
        "the client is not ready without a router"
    );
    let r = router(dir.path(), &router_id, router_addr, "");
    wait_router_online(&dd, router_addr, Duration::from_secs(10))
        .await
        .expect("router back");
    assert_eventually!(
        ready(c_metrics).await == 200,
        Duration::from_secs(15),
        "the client is ready again once a router is back"
    );
    r.signal("-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_routers_limits() {
    let dir = tempfile::tempdir().expect("dir");
    let (dd, _, _ctl) = controller(dir.path()).await;
    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router identity");
    let addr = free_udp_addr().expect("addr");
    let mut r = router(
        dir.path(),
        &router_id,
        addr,
        "max-streams-per-identity = 4096\n",
    );
    wait_router_online(&dd, addr, Duration::from_secs(10))
        .await
        .expect("online");
    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("client identity");
    let client = Client::from_identity_file(
        &app,
        ClientOptions {
            routers: vec![addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let _a = client.dial("echo").await.expect("first stream");
    let _b = client
        .dial("echo")
        .await
        .expect("a second stream, before the reload");

    // Lower the cap in the file and reload: new streams see it.
    router_config(
        dir.path(),
        &router_id,
        addr,
        "max-streams-per-identity = 2\n",
    );
    r.signal("-HUP");
    assert_eventually!(
        r.log_text().contains("limits reloaded"),
        Duration::from_secs(5),
        "no reload:\n{}",
        r.log_text()
    );
    match client.dial("echo").await {
        Err(DialError::LimitReached { message, .. }) => {
            assert!(message.contains("max-streams-per-identity"), "{message}")
        }
        other => panic!("the reloaded cap refuses a third stream, got {other:?}"),
    }
    assert!(r.running(), "the router runs on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_64_mib_transfer_finishes_it_and_moves_new_dials() {
    let dir = tempfile::tempdir().expect("dir");
    let (dd, _, _ctl) = controller(dir.path()).await;
    // Router A: the real binary, stopped with SIGTERM. Router B: in this
    // process, where new dials must go.
    let a_id = enroll_at(&dd, dir.path(), "router-a", Kind::Router, &[])
        .await
        .expect("router-a");
    let a_addr = free_udp_addr().expect("addr");
    let mut a = router(dir.path(), &a_id, a_addr, "grace-period = \"60s\"\n");
    wait_router_online(&dd, a_addr, Duration::from_secs(10))
        .await
        .expect("router-a online");
    let b_id = enroll_at(&dd, dir.path(), "router-b", Kind::Router, &[])
        .await
        .expect("router-b");
    let (b_addr, _b) = run_router_at(
        &dd,
        &b_id,
        "127.0.0.1:0".parse().expect("addr"),
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("router-b");
    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("client identity");
    let on_a = Client::from_identity_file(
        &app,
        ClientOptions {
            routers: vec![a_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client on a");
    let both = Client::from_identity_file(
        &app,
        ClientOptions {
            routers: vec![a_addr.to_string(), b_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client on both");
    assert_eventually!(
        {
            let _ = both.dial("echo").await;
            both.connections().len() == 2
        },
        Duration::from_secs(5),
        "the client connects to both routers"
    );

    const LEN: usize = 64 << 20;
    let stream = on_a.dial("echo").await.expect("dial through router-a");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let sent = tokio::spawn(async move {
        let mut h = sha2::Sha256::new();
        let chunk = payload(1 << 20, 3);
        for i in 0..(LEN >> 20) {
            let mut c = chunk.clone();
            c[0] = i as u8;
            h.update(&c);
            wr.write_all(&c).await.expect("write");
        }
        wr.shutdown().await.expect("finish");
        hex::encode(h.finalize())
    });
    let mut h = sha2::Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut signalled = false;
    loop {
        let n = rd.read(&mut buf).await.expect("the echo goes on");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
        if !signalled && got >= 8 << 20 {
            a.signal("-TERM");
            signalled = true;
            // New dials go to router-b at once (router-a answers Draining).
            for _ in 0..3 {
                let mut s = both
                    .dial("echo")
                    .await
                    .expect("a new dial goes to router-b");
                s.write_all(b"new").await.expect("write");
                s.shutdown().await.expect("finish");
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.expect("echo");
                assert_eq!(back, b"new");
            }
            assert!(a.running(), "router-a waits for its stream");
        }
    }
    assert!(signalled, "the transfer was long enough to signal");
    assert_eq!(got, LEN, "every byte came back");
    assert_eq!(
        hex::encode(h.finalize()),
        sent.await.expect("writer"),
        "byte-exact across the drain"
    );
    let status = a
        .wait(Duration::from_secs(10))
        .await
        .expect("router-a stops");
    assert!(status.success(), "a clean exit: {status}");
    assert!(
        a.log_text().contains("drained: every stream finished"),
        "{}",
        a.log_text()
    );
}

#[test]
fn config_files_unknown_keys_are_named_and_examples_load() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "identity = \"x\"\nmax-streams-per-identiy = 3\n").expect("write");
    let out = std::process::Command::new(darkport_tests::ops::workspace_bin(ROUTER))
        .args(["run", "--config", bad.to_str().expect("utf-8")])
        .output()
        .expect("router");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown key \"max-streams-per-identiy\""),
        "{err}"
    );
    assert!(err.contains(bad.to_str().expect("utf-8")), "{err}");

    // Each example config parses; the run then stops at the identity or
    // data dir given on the command line, which does not exist.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config");
    for (bin, command, file, args) in [
        (
            CONTROLLER,
            "run",
            "controller.toml",
            &["--data-dir", "/nonexistent/ctl", "--listen", "127.0.0.1:0"][..],
        ),
        (
            ROUTER,
            "run",
            "edge-router.toml",
            &[
                "--identity",
                "/nonexistent/router.id",
                "--listen",
                "127.0.0.1:0",
            ][..],
        ),
        (
            CLIENT,
            "run",
            "edge-client.toml",
            &["--identity", "/nonexistent/client.id"][..],
        ),
        (
            CLIENT,
            "host",
            "edge-client-host.toml",
            &["--identity", "/nonexistent/host.id"][..],
        ),
    ] {
        let config = examples.join(file);
        assert!(config.exists(), "{}", config.display());
        let out = std::process::Command::new(darkport_tests::ops::workspace_bin(bin))
            .args([command, "--config", config.to_str().expect("utf-8")])
            .args(args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin}: {err}");
        assert!(
            !err.contains("config file"),
            "{bin} refused its example config: {err}"
        );
        assert!(err.contains("/nonexistent/"), "{bin}: {err}");
    }
}
