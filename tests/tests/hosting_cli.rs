//! `darkport-edge-client host`, the binary, as an operator runs it: it
//! listens on nothing, carries a real Fluentd client's records, survives
//! `kill -9` of one of two hosters without a failed dial, drains on
//! SIGTERM, and hands the caller's identity to a PROXY protocol v2 parser.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{FluentSettings, ServiceEntry, ServiceProtocol};
use darkport_tests::fluent::FluentReceiver;
use darkport_tests::ops::Proc;
use darkport_tests::{
    echo_through, hosting_setup, n, payload, poll_until, sha256, wait_until, Fixture,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts `darkport-edge-client host` for `services` (`NAME=ADDR`) with
/// `extra` flags, logging to `name`.log.
fn hoster(fx: &Fixture, id: &Path, name: &str, services: &[String], extra: &[&str]) -> Proc {
    let mut args = vec![
        "host".to_string(),
        "--identity".into(),
        id.display().to_string(),
        "--router".into(),
        fx.router_addr.to_string(),
        "--instance".into(),
        name.into(),
    ];
    for s in services {
        args.extend(["--service".into(), s.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(
        "darkport-edge-client",
        &args,
        &fx.dir.path().join(format!("{name}.log")),
    )
    .expect("start the hoster")
}

/// Waits until exactly `instances` host `service` (the controller hears
/// of it from the router's reports).
async fn wait_terminators(fx: &Fixture, service: &str, instances: &[&str], hosters: &[&Proc]) {
    let want: Vec<String> = instances.iter().map(|s| s.to_string()).collect();
    let r = poll_until(
        &format!("terminators {want:?} of {service}"),
        Duration::from_secs(20),
        || async { fx.terminators(service).await == want },
    )
    .await;
    if let Err(e) = r {
        let logs: Vec<String> = hosters.iter().map(|p| p.log_text()).collect();
        panic!("{e}; hoster logs:\n{}", logs.join("\n---\n"));
    }
}

/// A hosted-only fluent-forward service `logs` (no address: only a hoster
/// reaches Fluentd), `app-1` allowed to write `tags` to it, `host-1` to
/// host it; their identity files.
async fn hosted_fluent(fx: &Fixture, tags: &[&str]) -> (PathBuf, PathBuf) {
    fx.admin(AdminRequest::CreateService(ServiceEntry {
        name: n("logs"),
        address: String::new(),
        roles: vec![],
        protocol: ServiceProtocol::FluentForward(FluentSettings::default()),
        strategy: Default::default(),
    }))
    .await
    .expect("service");
    fx.policy_with_tags("writers", &["logs"], &["#writers"], tags)
        .await
        .expect("dial policy");
    fx.bind_policy("hosts", &["logs"], &["#hosters"])
        .await
        .expect("bind policy");
    fx.enroll_caller_and_hoster().await
}

/// Lines of `ss` (listening sockets with their process) that belong to `pid`.
fn listening_sockets(pid: u32, flags: &str) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args([flags, "-H", "-p"])
        .output()
        .expect("ss (iproute2) runs");
    assert!(out.status.success(), "ss {flags} failed");
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .map(String::from)
        .collect()
}

/// A QUIC handshake to `addr` (with a valid client certificate) does not
/// complete.
async fn assert_handshake_refused(identity: &Path, addr: SocketAddr) {
    let id = darkport_transport::identity::Identity::load(identity).expect("load");
    let config = darkport_transport::tls::client_config(
        Some(&id),
        darkport_transport::tls::Trust::Ca(id.ca.clone()),
        Kind::Client,
        darkport_proto::ALPN_DATA,
    )
    .expect("config");
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    let connecting = endpoint
        .connect_with(config, addr, "hoster")
        .expect("connect");
    let r = tokio::time::timeout(Duration::from_secs(3), connecting).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a QUIC handshake to the hoster's UDP socket {addr} completed"
    );
}

/// Whether npm fluent-logger is installed for tests/interop/node (it acks
/// every chunk); skips loudly without it, fails under CI=true.
fn node_client() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node");
    let ok = dir.join("node_modules/fluent-logger").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        let msg =
            "SKIPPED: npm fluent-logger (and node) missing: (cd tests/interop/node && npm ci)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
        return None;
    }
    Some(dir.join("send.js"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hoster_listens_on_nothing_and_carries_a_real_fluent_clients_records() {
    let Some(send_js) = node_client() else { return };
    let receiver = FluentReceiver::start().await.expect("receiver");
    let mut fx = Fixture::start().await.expect("fixture");
    let (app, host_id) = hosted_fluent(&fx, &["app.**"]).await;
    let service = format!("logs={}", receiver.addr);
    let over_tcp = hoster(
        &fx,
        &host_id,
        "tcp",
        std::slice::from_ref(&service),
        &["--transport", "tcp"],
    );
    let over_quic = hoster(&fx, &host_id, "quic", &[service], &["--transport", "quic"]);
    wait_terminators(&fx, "logs", &["quic", "tcp"], &[&over_tcp, &over_quic]).await;

    // No listening socket. No TCP one at all; one UDP socket, the QUIC
    // client endpoint (the control plane to the controller is QUIC on
    // either transport), which has no server configuration: a handshake
    // to it gets nowhere.
    for h in [&over_tcp, &over_quic] {
        assert_eq!(listening_sockets(h.pid(), "-ltn"), Vec::<String>::new());
        let udp = listening_sockets(h.pid(), "-lun");
        assert_eq!(udp.len(), 1, "{udp:?}");
        let port = udp[0]
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("a port in {udp:?}"));
        assert_handshake_refused(&app, SocketAddr::from(([127, 0, 0, 1], port))).await;
    }

    // A real client with acks, through a forwarder, to the hosted service.
    let forward = fx
        .forward(fx.client(&app).expect("client"), "logs")
        .await
        .expect("forwarder");
    const COUNT: usize = 200;
    let out = tokio::process::Command::new("node")
        .args([
            send_js.display().to_string(),
            "127.0.0.1".into(),
            forward.port().to_string(),
            "app.hosted".into(),
            COUNT.to_string(),
            "PackedForward".into(),
        ])
        .output()
        .await
        .expect("node");
    assert!(
        out.status.success(),
        "send.js: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every record acked (the script checks), each once, stamped by the
    // router with the caller's verified identity.
    let records = receiver.records();
    let ours: Vec<_> = records.iter().filter(|r| r.tag == "app.hosted").collect();
    assert_eq!(ours.len(), COUNT, "records through the hoster");
    for r in &ours {
        let stamped = r
            .record
            .as_map()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_str() == Some("darkport_identity"))
            })
            .and_then(|(_, v)| v.as_str());
        assert_eq!(stamped, Some("app-1"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_one_of_two_hosters_during_a_dial_loop_fails_no_dial() {
    let (fx, app, host_id) = hosting_setup().await;
    let echo = darkport_tests::echo_server().await.expect("echo");
    let service = format!("echo-h={echo}");
    let mut a = hoster(&fx, &host_id, "a", std::slice::from_ref(&service), &[]);
    let b = hoster(&fx, &host_id, "b", &[service], &[]);
    wait_terminators(&fx, "echo-h", &["a", "b"], &[&a, &b]).await;
    let client = fx.client(&app).expect("client");
    // Four dials a second for 15 s (past the QUIC idle timeout of the
    // killed hoster's connection); kill -9 after the 20th.
    const DIALS: u64 = 60;
    let mut ok = 0u64;
    let mut slowest = Duration::ZERO;
    for i in 0..DIALS {
        if i == 20 {
            a.kill9();
        }
        let started = Instant::now();
        let data = payload(20_000, i);
        let back = tokio::time::timeout(
            Duration::from_secs(20),
            echo_through(&client, "echo-h", &data),
        )
        .await
        .expect("dial within 20 s");
        if sha256(&back) == sha256(&data) {
            ok += 1;
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{ok} of {DIALS} dials byte-exact; slowest {slowest:?}");
    assert!(
        ok * 1000 >= DIALS * 999,
        "{ok} of {DIALS} dials succeeded (at least 99.9 % must)"
    );
    // The dead hoster's terminator is gone once its connection timed out.
    wait_terminators(&fx, "echo-h", &["b"], &[&b]).await;
}

/// An echo server that first writes `tag`, counting the connections it
/// took.
async fn tagged_echo(tag: u8) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = tcp.write_all(&[tag]).await;
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_withdraws_first_and_lets_the_open_stream_finish() {
    let (fx, app, host_id) = hosting_setup().await;
    let (a_addr, a_count) = tagged_echo(b'A').await;
    let (b_addr, _) = tagged_echo(b'B').await;
    // a is preferred (cost 0); b costs more.
    let mut a = hoster(
        &fx,
        &host_id,
        "a",
        &[format!("echo-h={a_addr}")],
        &["--grace-period", "20s"],
    );
    let b = hoster(
        &fx,
        &host_id,
        "b",
        &[format!("echo-h={b_addr}")],
        &["--cost", "5000"],
    );
    wait_terminators(&fx, "echo-h", &["a", "b"], &[&a, &b]).await;
    let client = fx.client(&app).expect("client");
    let mut open = client.dial("echo-h").await.expect("dial");
    let mut tag = [0u8; 1];
    open.read_exact(&mut tag).await.expect("tag");
    assert_eq!(&tag, b"A", "the open stream goes through a");

    a.signal("-TERM");
    wait_terminators(&fx, "echo-h", &["b"], &[&a, &b]).await;
    let reached_a = a_count.load(Ordering::SeqCst);
    // New dials go to b only.
    for i in 0..10 {
        let mut s = client.dial("echo-h").await.expect("dial while a drains");
        s.read_exact(&mut tag).await.expect("tag");
        assert_eq!(&tag, b"B", "dial {i} after the withdrawal");
    }
    assert_eq!(
        a_count.load(Ordering::SeqCst),
        reached_a,
        "a took a new stream"
    );
    // The open stream still carries bytes both ways, then ends cleanly.
    let data = payload(500_000, 3);
    let (mut r, mut w) = tokio::io::split(open);
    let send = async {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let (_, got) = tokio::join!(send, r.read_to_end(&mut back));
    got.expect("the open stream finishes");
    assert_eq!(sha256(&back), sha256(&data));
    let status = a.wait(Duration::from_secs(15)).await.expect("a exits");
    assert!(status.success(), "a exits 0 after draining: {status:?}");
}

/// A service that parses a PROXY protocol v2 header with the `ppp` crate
/// and answers with what it found: `source identity roles`.
async fn proxy_v2_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(answer_proxy_header(tcp));
        }
    });
    addr
}

async fn answer_proxy_header(mut tcp: TcpStream) {
    let mut head = vec![0u8; 16];
    if tcp.read_exact(&mut head).await.is_err() {
        return;
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    head.resize(16 + len, 0);
    if tcp.read_exact(&mut head[16..]).await.is_err() {
        return;
    }
    let answer = match ppp::v2::Header::try_from(head.as_slice()) {
        Ok(h) => {
            let source = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => format!("{}:{}", a.source_address, a.source_port),
                ppp::v2::Addresses::IPv6(a) => format!("{}:{}", a.source_address, a.source_port),
                other => format!("{other:?}"),
            };
            let tlv = |kind: u8| {
                h.tlvs()
                    .filter_map(Result::ok)
                    .find(|t| t.kind == kind)
                    .map(|t| String::from_utf8_lossy(&t.value).into_owned())
                    .unwrap_or_default()
            };
            format!("{source} {} {}", tlv(0xE0), tlv(0xE1))
        }
        Err(e) => format!("not a PROXY v2 header: {e}"),
    };
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_carries_the_callers_identity_to_a_real_parser() {
    let (fx, app, host_id) = hosting_setup().await;
    let service = proxy_v2_service().await;
    let h = hoster(
        &fx,
        &host_id,
        "pp",
        &[format!("echo-h={service}")],
        &["--proxy-protocol"],
    );
    wait_terminators(&fx, "echo-h", &["pp"], &[&h]).await;
    let client = fx.client(&app).expect("client");
    let mut s = client.dial("echo-h").await.expect("dial");
    s.shutdown().await.expect("shutdown");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("answer");
    let parts: Vec<&str> = answer.split(' ').collect();
    assert_eq!(parts.len(), 3, "{answer:?}");
    let source: SocketAddr = parts[0].parse().unwrap_or_else(|_| panic!("{answer:?}"));
    assert!(source.ip().is_loopback(), "{answer:?}");
    assert_eq!(parts[1], "app-1", "TLV 0xE0 is the caller's identity");
    assert_eq!(parts[2], "writers", "TLV 0xE1 its roles");
    wait_until(
        "the hoster logged the caller",
        Duration::from_secs(5),
        || async { h.log_text().contains("app-1") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_from_a_hoster_whose_network_refuses_every_inbound_syn_and_datagram() {
    let Some(ns) = darkport_tests::netns::create_or_skip("hosting in a closed namespace") else {
        return;
    };
    let Some(send_js) = node_client() else { return };
    ns.refuse_inbound().expect("nftables rules");
    // Fluentd beside the hoster, on the namespace's own loopback (a fresh
    // namespace: its default port is free).
    let records = tempfile::NamedTempFile::new().expect("records file");
    let mut sink = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(darkport_tests::ops::workspace_bin("darkport-fluent-sink"))
        .args(["--listen", "127.0.0.1:24224"])
        .stdout(records.reopen().expect("records"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fluent sink in the namespace");
    let outer = std::net::IpAddr::V4(ns.outer);
    let mut fx = Fixture::start_at(outer).await.expect("fixture");
    let (app, host_id) = hosted_fluent(&fx, &[]).await;
    // Nothing from outside gets in: a TCP connection to the namespace times
    // out (its SYN is dropped; a closed port would answer with a reset).
    let knock = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect((ns.inner, 24224)),
    )
    .await;
    assert!(knock.is_err(), "a SYN got into the namespace: {knock:?}");
    // UDP is dropped too, so the hoster dials out over TLS over TCP.
    let router = fx.router_addr.to_string();
    let host = Proc::start_in(
        &ns.name,
        "darkport-edge-client",
        &[
            "host",
            "--identity",
            host_id.to_str().expect("path"),
            "--router",
            &router,
            "--transport",
            "tcp",
            "--instance",
            "closed",
            "--service",
            "logs=127.0.0.1:24224",
        ],
        &fx.dir.path().join("closed.log"),
    )
    .expect("hoster in the namespace");
    wait_terminators(&fx, "logs", &["closed"], &[&host]).await;
    let forward = fx
        .forward(fx.client(&app).expect("client"), "logs")
        .await
        .expect("forwarder");
    const COUNT: usize = 100;
    let out = tokio::process::Command::new("node")
        .args([
            send_js.display().to_string(),
            "127.0.0.1".into(),
            forward.port().to_string(),
            "app.closed".into(),
            COUNT.to_string(),
        ])
        .output()
        .await
        .expect("node");
    assert!(
        out.status.success(),
        "send.js (every record acked): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(records.path()).expect("records");
    let ours = text
        .lines()
        .filter(|l| l.contains("\"app.closed\""))
        .count();
    assert_eq!(ours, COUNT, "records at the sink:\n{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains("\"app.closed\""))
            .all(|l| l.contains("\"darkport_identity\":\"app-1\"")),
        "every record stamped app-1"
    );
    let _ = sink.kill();
    let _ = sink.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_marks_the_terminator_failed_within_interval_times_count() {
    let (fx, app, host_id) = hosting_setup().await;
    let (b_addr, _) = tagged_echo(b'B').await;
    // a's service: a listener the test closes later.
    let a_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a_addr = a_listener.local_addr().expect("addr");
    let a_service = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = a_listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(b"A").await;
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let health = [
        "--health-check",
        "tcp",
        "--health-interval",
        "500ms",
        "--health-count",
        "2",
    ];
    let a = hoster(&fx, &host_id, "a", &[format!("echo-h={a_addr}")], &health);
    let mut b_flags = vec!["--cost", "5000"];
    b_flags.extend_from_slice(&health);
    let b = hoster(&fx, &host_id, "b", &[format!("echo-h={b_addr}")], &b_flags);
    wait_terminators(&fx, "echo-h", &["a", "b"], &[&a, &b]).await;
    let client = fx.client(&app).expect("client");
    let first = |client: Arc<edge_client::Client>| async move {
        let mut s = client.dial("echo-h").await.ok()?;
        let mut tag = [0u8; 1];
        s.read_exact(&mut tag).await.ok()?;
        Some(tag[0])
    };
    assert_eq!(first(client.clone()).await, Some(b'A'), "a is preferred");

    // a's service goes away. A dial in between fails over to b at once
    // (a answers ServiceUnreachable); after two failed checks (1 s) a's
    // terminator is failed on the router, which the controller shows.
    a_service.abort();
    let _ = a_service.await;
    let started = Instant::now();
    wait_until(
        "service show says a failed",
        Duration::from_secs(10),
        || async {
            fx.terminator_infos("echo-h").await.iter().any(|t| {
                t.instance == "a" && t.precedence == darkport_proto::msg::Precedence::Failed
            })
        },
    )
    .await;
    let failed = started.elapsed();
    eprintln!("a failed after {failed:?}");
    assert!(
        failed < Duration::from_secs(3),
        "interval x count is 1 s; failed after {failed:?}"
    );
    for _ in 0..5 {
        assert_eq!(first(client.clone()).await, Some(b'B'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_loses_no_terminator() {
    use darkport_proto::policy::{PolicyKind, Selector};
    use darkport_tests::{admin, enroll_at, init_controller, run_router_at, wait_admin, Node};
    const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");
    let dir = tempfile::tempdir().expect("dir");
    let ctl_addr = darkport_tests::free_udp_addr().expect("addr");
    let dd = init_controller(dir.path(), ctl_addr, Duration::from_secs(3600)).expect("init");
    let mut ctl = Node::spawn(NODE, "controller", dd.root(), ctl_addr).expect("controller");
    wait_admin(&dd).await;
    let echo = darkport_tests::echo_server().await.expect("echo");
    admin(
        &dd,
        AdminRequest::CreateService(ServiceEntry {
            name: n("echo-h"),
            address: String::new(),
            roles: vec![],
            protocol: Default::default(),
            strategy: Default::default(),
        }),
    )
    .await
    .expect("service");
    for (name, kind, role) in [
        ("dialers", PolicyKind::Dial, "writers"),
        ("hosts", PolicyKind::Bind, "hosters"),
    ] {
        admin(
            &dd,
            AdminRequest::CreatePolicy {
                name: n(name),
                services: vec![Selector::All],
                identities: vec![Selector::Role(n(role))],
                tags: vec![],
                kind,
            },
        )
        .await
        .expect("policy");
    }
    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router");
    let (router_addr, _router) = run_router_at(
        &dd,
        &router_id,
        "127.0.0.1:0".parse().expect("addr"),
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("router");
    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &["writers"])
        .await
        .expect("app");
    let host_id = enroll_at(&dd, dir.path(), "host-1", Kind::Client, &["hosters"])
        .await
        .expect("hoster");
    // The hoster finds the router through the controller's list.
    let host = Proc::start(
        "darkport-edge-client",
        &[
            "host",
            "--identity",
            host_id.to_str().expect("path"),
            "--instance",
            "h",
            "--service",
            &format!("echo-h={echo}"),
        ],
        &dir.path().join("hoster.log"),
    )
    .expect("hoster");
    let listed = || async {
        match admin(&dd, AdminRequest::ShowService { name: n("echo-h") }).await {
            Ok(AdminResponse::Service(d)) => d.terminators.len() == 1,
            _ => false,
        }
    };
    if let Err(e) = poll_until("the terminator", Duration::from_secs(20), listed).await {
        panic!("{e}; hoster log:\n{}", host.log_text());
    }
    let client = edge_client::Client::from_identity_file(
        &app,
        edge_client::ClientOptions {
            routers: vec![router_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let check = |i: u64| {
        let client = &client;
        async move {
            let data = payload(50_000, i);
            assert_eq!(
                sha256(&echo_through(client, "echo-h", &data).await),
                sha256(&data),
                "dial {i}"
            );
        }
    };
    check(0).await;

    // The controller dies: the terminator lives at the router, so hosted
    // dials go on.
    ctl.kill9();
    for i in 1..=5 {
        check(i).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // It comes back: the router reports the terminator again, with no
    // action from the hoster.
    let _ctl = Node::spawn(NODE, "controller", dd.root(), ctl_addr).expect("restart");
    wait_admin(&dd).await;
    let started = Instant::now();
    poll_until(
        "the terminator listed again",
        Duration::from_secs(15),
        listed,
    )
    .await
    .expect("listed again");
    eprintln!(
        "listed again {:?} after the controller answered",
        started.elapsed()
    );
    check(6).await;
    let log = host.log_text();
    assert_eq!(
        log.matches("host stream up").count(),
        1,
        "the hoster never had to register again:\n{log}"
    );
}
