//! Unauthenticated floods (docs/threat-model.md, "Handshakes in
//! progress"): attackers on many addresses of 127/8, in /24s other than
//! the honest peers' 127.0.0.0/24, open real QUIC handshakes, answer a
//! Retry once, and never finish; others hold idle TCP sockets. Meanwhile
//! an honest client, a restarting router and the admin must get in within
//! 2 s each, and the router's memory must stay within a documented bound.
//!
//! The attacker is quinn-proto's client state machine driven by hand over
//! plain UDP sockets, so each handshake is real (a valid Initial, the
//! Retry answered with its token) and stalls exactly where a hostile peer
//! would: after the server's first flight.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_tests::{
    admin, controller_process_with_echo, enroll_at, free_udp_addr, rss_bytes, wait_router_online,
    wait_until, Node,
};
use darkport_transport::tls::{self, Trust};
use edge_client::{Client, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");

/// Attacker /24s (127.100.0.0/24 ...), addresses per /24.
const PREFIXES: u8 = 16;
const PER_PREFIX: u8 = 4;

/// New stalled handshakes per second, all attackers together.
const RATE: u64 = 400;

/// What the router may grow by while the flood is held: 512 pending
/// handshakes (the default gate) at about 90 KiB each, plus room
/// (docs/threat-model.md). Before the gate, the same flood grew it by
/// gigabytes.
const ROUTER_GROWTH_BOUND: u64 = 128 * 1024 * 1024;

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks (100 a second
    // on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn attacker_ips() -> Vec<IpAddr> {
    (0..PREFIXES)
        .flat_map(|p| {
            (0..PER_PREFIX).map(move |a| IpAddr::V4(Ipv4Addr::new(127, 100 + p, 0, 2 + a)))
        })
        .collect()
}

/// What a flood did.
#[derive(Debug, Default)]
struct FloodStats {
    initials: AtomicU64,
    retries_answered: AtomicU64,
}

/// Sends stalled QUIC handshakes at `target` from every attacker address
/// until `stop`; runs on a thread of its own (plain blocking UDP).
fn quic_flood(
    target: SocketAddr,
    client: quinn::ClientConfig,
    server_name: &'static str,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        struct Attacker {
            socket: UdpSocket,
            endpoint: quinn_proto::Endpoint,
            conns: HashMap<quinn_proto::ConnectionHandle, (quinn_proto::Connection, bool)>,
        }
        let mut attackers: Vec<Attacker> = attacker_ips()
            .into_iter()
            .map(|ip| {
                let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind attacker");
                socket.set_nonblocking(true).expect("nonblocking");
                Attacker {
                    socket,
                    endpoint: quinn_proto::Endpoint::new(
                        Arc::new(quinn_proto::EndpointConfig::default()),
                        None,
                        false,
                        None,
                    ),
                    conns: HashMap::new(),
                }
            })
            .collect();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut buf = Vec::with_capacity(1500);
        let mut rx = vec![0u8; 65536];
        let mut next = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // New handshakes at RATE, round-robin over the addresses.
            let due = start.elapsed().as_millis() as u64 * RATE / 1000;
            while sent < due {
                let count = attackers.len();
                let a = &mut attackers[next % count];
                next += 1;
                sent += 1;
                let Ok((h, mut conn)) =
                    a.endpoint.connect(now, client.clone(), target, server_name)
                else {
                    continue;
                };
                buf.clear();
                if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                    let _ = a.socket.send_to(&buf[..t.size], t.destination);
                    stats.initials.fetch_add(1, Ordering::Relaxed);
                }
                a.conns.insert(h, (conn, false));
            }
            // Answer each Retry once (its token proves the address), and
            // nothing else: the handshake stalls after the server's flight.
            for a in &mut attackers {
                while let Ok((n, from)) = a.socket.recv_from(&mut rx) {
                    let is_retry = n > 0 && rx[0] & 0xb0 == 0xb0;
                    let data = bytes::BytesMut::from(&rx[..n]);
                    buf.clear();
                    let Some(quinn_proto::DatagramEvent::ConnectionEvent(h, ev)) =
                        a.endpoint.handle(now, from, None, None, data, &mut buf)
                    else {
                        continue;
                    };
                    let Some((conn, answered)) = a.conns.get_mut(&h) else {
                        continue;
                    };
                    if !is_retry || *answered {
                        continue;
                    }
                    conn.handle_event(ev);
                    *answered = true;
                    buf.clear();
                    if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                        let _ = a.socket.send_to(&buf[..t.size], t.destination);
                        stats.retries_answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// A client configuration with no certificate and few streams: the
/// attacker's side must stay cheap.
fn attacker_config(ca_pem: &str, kind: Kind, alpn: &[u8]) -> quinn::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca");
    let mut config = tls::client_config(None, Trust::Ca(ca), kind, alpn).expect("config");
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(t));
    config
}

/// One echo round trip through a brand-new client (a new connection),
/// within `within`.
async fn new_client_echo(
    id: &std::path::Path,
    router: SocketAddr,
    within: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let attempt = async {
        let client = Client::from_identity_file(
            id,
            ClientOptions {
                routers: vec![router.to_string()],
                ..darkport_tests::client_options()
            },
        )
        .map_err(|e| e.to_string())?;
        let mut s = client.dial("echo").await.map_err(|e| e.to_string())?;
        s.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
        (back == *b"ping")
            .then_some(client)
            .ok_or("wrong echo".to_string())
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Ok(client)) => {
            let took = start.elapsed();
            client.close().await;
            Ok(took)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no echo within {within:?}")),
    }
}

/// A controller and a router, each a process of its own, an echo service
/// and a client identity `app-1`.
struct Setup {
    _dir: tempfile::TempDir,
    dd: darkport_controller::DataDir,
    ctl_addr: SocketAddr,
    _ctl: Node,
    router_id: std::path::PathBuf,
    app_id: std::path::PathBuf,
    r_addr: SocketAddr,
    router: Node,
}

async fn setup() -> Setup {
    let (dir, dd, ctl_addr, ctl) = controller_process_with_echo(NODE).await;
    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router");
    let app_id = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("app");
    let r_addr = free_udp_addr().expect("addr");
    let router = Node::spawn(NODE, "router", &router_id, r_addr).expect("router");
    wait_router_online(&dd, r_addr, Duration::from_secs(10))
        .await
        .expect("online");
    Setup {
        _dir: dir,
        dd,
        ctl_addr,
        _ctl: ctl,
        router_id,
        app_id,
        r_addr,
        router,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_peers_get_in_during_a_handshake_flood_and_the_router_stays_small() {
    // Every field bound: the temporary directory and the controller
    // process live until the end of the test.
    let Setup {
        _dir,
        dd,
        ctl_addr,
        _ctl,
        router_id,
        app_id,
        r_addr,
        mut router,
    } = setup().await;
    new_client_echo(&app_id, r_addr, Duration::from_secs(5))
        .await
        .expect("echo before the flood");
    let baseline = rss_bytes(router.pid());
    assert!(baseline > 0);
    let cpu_before = cpu_secs(router.pid());
    let flood_start = Instant::now();

    let ca_pem = std::fs::read_to_string(dd.ca_cert()).expect("ca");
    let stop = Arc::new(AtomicBool::new(false));
    let router_stats = Arc::new(FloodStats::default());
    let ctl_stats = Arc::new(FloodStats::default());
    let flood_router = quic_flood(
        r_addr,
        attacker_config(&ca_pem, Kind::Router, darkport_proto::ALPN_DATA),
        "darkport-router",
        stop.clone(),
        router_stats.clone(),
    );
    let flood_ctl = quic_flood(
        ctl_addr,
        attacker_config(&ca_pem, Kind::Controller, darkport_proto::ALPN_CONTROL),
        "darkport-controller",
        stop.clone(),
        ctl_stats.clone(),
    );
    // Until the flood fills every gate: a whole gate's worth of
    // handshakes past Retry at the router and at the controller, each a
    // real handshake in progress there (none completes, none is 10 s old).
    let gate = darkport_transport::admission::GateLimits::default().total as u64;
    for (stats, whom) in [(&router_stats, "router"), (&ctl_stats, "controller")] {
        wait_until(
            &format!("the flood to fill the {whom}'s handshake gate"),
            Duration::from_secs(10),
            || async { stats.retries_answered.load(Ordering::Relaxed) >= gate },
        )
        .await;
    }

    let mut peak = 0u64;
    for i in 0..5 {
        let took = new_client_echo(&app_id, r_addr, Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("honest client {i} during the flood: {e}"));
        eprintln!("honest client {i}: new connection and echo in {took:?}");
        let start = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            admin(&dd, AdminRequest::ListIdentities),
        )
        .await
        .unwrap_or_else(|_| panic!("admin {i}: no answer within 2 s during the flood"));
        assert!(matches!(r, Ok(AdminResponse::Identities(_))), "{r:?}");
        eprintln!("admin {i}: identity list in {:?}", start.elapsed());
        peak = peak.max(rss_bytes(router.pid()));
    }

    let cpu = cpu_secs(router.pid()) - cpu_before;
    eprintln!(
        "router CPU during the flood: {cpu:.2} s over {:.1} s ({:.0} % of one core)",
        flood_start.elapsed().as_secs_f64(),
        100.0 * cpu / flood_start.elapsed().as_secs_f64()
    );
    // A router restarting during the flood gets back in.
    router.kill9();
    let start = Instant::now();
    let router = Node::spawn(NODE, "router", &router_id, r_addr).expect("router restart");
    wait_router_online(&dd, r_addr, Duration::from_secs(5))
        .await
        .expect("the restarted router syncs during the flood");
    eprintln!("restarted router online after {:?}", start.elapsed());
    // The flood goes on against the restarted router: wait until it has
    // filled its gate, then a gate's worth more (the gate turned over once)
    // between the two memory samples.
    let flooded = |more: u64| {
        let want = router_stats.retries_answered.load(Ordering::Relaxed) + more;
        let stats = router_stats.clone();
        async move {
            wait_until(
                &format!("{more} more flood handshakes past Retry at the restarted router"),
                Duration::from_secs(10),
                || async { stats.retries_answered.load(Ordering::Relaxed) >= want },
            )
            .await
        }
    };
    flooded(gate).await;
    new_client_echo(&app_id, r_addr, Duration::from_secs(2))
        .await
        .expect("a client through the restarted router, during the flood");
    let restarted_baseline = rss_bytes(router.pid());
    flooded(gate).await;
    let restarted_peak = rss_bytes(router.pid());

    stop.store(true, Ordering::Relaxed);
    let _ = flood_router.join();
    let _ = flood_ctl.join();
    eprintln!(
        "router flood: {} Initials, {} Retries answered; controller flood: {} Initials, {} Retries answered",
        router_stats.initials.load(Ordering::Relaxed),
        router_stats.retries_answered.load(Ordering::Relaxed),
        ctl_stats.initials.load(Ordering::Relaxed),
        ctl_stats.retries_answered.load(Ordering::Relaxed),
    );
    eprintln!(
        "router RSS: {} MiB before, {} MiB peak during the flood; restarted router {} -> {} MiB",
        baseline >> 20,
        peak >> 20,
        restarted_baseline >> 20,
        restarted_peak >> 20
    );
    assert!(
        router_stats.retries_answered.load(Ordering::Relaxed) > 0,
        "the flood got past Retry (address validation), as a real attacker's does"
    );
    assert!(
        peak.saturating_sub(baseline) < ROUTER_GROWTH_BOUND,
        "router grew from {} to {} MiB during the flood",
        baseline >> 20,
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_sockets_from_one_prefix_do_not_lock_tcp_clients_out() {
    let s = setup().await;
    let (app_id, r_addr) = (s.app_id.clone(), s.r_addr);
    // 2,000 idle sockets from one /24 (127.200.0.0/24): four times the
    // whole gate (512), sixty times the per-prefix cap.
    let mut idle = Vec::new();
    for i in 0..2000u32 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 200, 0, 2 + (i % 200) as u8));
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.bind(&SocketAddr::new(ip, 0).into()).expect("bind");
        if socket.connect(&r_addr.into()).is_ok() {
            idle.push(socket);
        }
    }
    assert!(
        idle.len() > 1500,
        "only {} idle sockets connected",
        idle.len()
    );
    let options = ClientOptions {
        routers: vec![r_addr.to_string()],
        transport: "tcp".parse().expect("transport"),
        ..ClientOptions::default()
    };
    for i in 0..5 {
        let start = Instant::now();
        let attempt = async {
            let client = Client::from_identity_file(&app_id, options.clone()).expect("client");
            let mut s = client.dial("echo").await.map_err(|e| e.to_string())?;
            s.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut back = [0u8; 4];
            s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((back, client))
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok((b, client))) => {
                assert_eq!(&b, b"ping");
                eprintln!("TCP client {i}: in after {:?}", start.elapsed());
                // Not timed: closing waits for the TLS close to be sent.
                client.close().await;
            }
            Ok(Err(e)) => panic!("TCP client {i} with {} idle sockets held: {e}", idle.len()),
            Err(_) => panic!(
                "TCP client {i}: no echo within 2 s with {} idle sockets held",
                idle.len()
            ),
        }
    }
}

/// One small compressed Fluentd message that inflates to millions of
/// empty entries, from several streams at once: each is refused whole
/// (nothing of it reaches the service), the router's memory stays within
/// the documented bound, and another stream is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_amplification_is_refused_within_bounded_memory() {
    use darkport_tests::fluent::{read_value, FluentReceiver};
    use rmpv::Value;
    use std::io::Write;
    let s = setup().await;
    let receiver = FluentReceiver::start().await.expect("receiver");
    admin(
        &s.dd,
        AdminRequest::CreateService(darkport_proto::policy::ServiceEntry {
            name: darkport_tests::n("fluentd"),
            address: receiver.addr.to_string(),
            roles: vec![],
            protocol: darkport_proto::policy::ServiceProtocol::FluentForward(Default::default()),
            strategy: Default::default(),
        }),
    )
    .await
    .expect("service");
    // 15 MiB of `[0, {}]` (3 bytes each, 5.2 M entries), gzipped to
    // about 15 KB: stamped, it would be about 190 MB.
    let entries = [0x92u8, 0x00, 0x80].repeat(15 * 1024 * 1024 / 3);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&entries).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let bomb = |chunk: &str| {
        let mut out = Vec::new();
        rmpv::encode::write_value(
            &mut out,
            &Value::Array(vec![
                Value::from("bomb"),
                Value::Binary(gz.clone()),
                Value::Map(vec![
                    (Value::from("compressed"), Value::from("gzip")),
                    (Value::from("chunk"), Value::from(chunk)),
                ]),
            ]),
        )
        .expect("encode");
        out
    };
    eprintln!(
        "bomb: {} bytes on the wire, {} decompressed",
        bomb("x").len(),
        entries.len()
    );
    let client = Arc::new(
        Client::from_identity_file(
            &s.app_id,
            ClientOptions {
                routers: vec![s.r_addr.to_string()],
                ..darkport_tests::client_options()
            },
        )
        .expect("client"),
    );
    let baseline = rss_bytes(s.router.pid());
    // The router's RSS, sampled while the bombs go off.
    let pid = s.router.pid();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = rss_bytes(pid).max(peak);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let mut bombs = tokio::task::JoinSet::new();
    for i in 0..4 {
        let (client, wire) = (client.clone(), bomb(&format!("b{i}")));
        bombs.spawn(async move {
            let mut st = client.dial("fluentd").await.expect("dial");
            let _ = st.write_all(&wire).await;
            read_value(&mut st, Duration::from_secs(20)).await
        });
    }
    // Meanwhile an ordinary record is acked.
    let mut ok = client.dial("fluentd").await.expect("dial");
    let mut wire = Vec::new();
    rmpv::encode::write_value(
        &mut wire,
        &Value::Array(vec![
            Value::from("app.ok"),
            Value::from(1_700_000_000u64),
            Value::Map(vec![(Value::from("msg"), Value::from("hi"))]),
            Value::Map(vec![(Value::from("chunk"), Value::from("ok-1"))]),
        ]),
    )
    .expect("encode");
    ok.write_all(&wire).await.expect("write");
    let ack = read_value(&mut ok, Duration::from_secs(10)).await;
    assert_eq!(
        ack,
        Some(Ok(Value::Map(vec![(
            Value::from("ack"),
            Value::from("ok-1")
        )]))),
        "the other stream is served during the bombs"
    );
    while let Some(r) = bombs.join_next().await {
        match r.expect("task") {
            Some(Ok(v)) => panic!("a bomb was acked: {v:?}"),
            other => eprintln!("bomb sender sees: {other:?}"),
        }
    }
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    // Every bomb sender has seen its stream end (joined above): the router
    // is done with them, so this sample is "after".
    let after = rss_bytes(s.router.pid());
    eprintln!(
        "router RSS: {} MiB before, {} MiB peak, {} MiB after the bombs",
        baseline >> 20,
        peak >> 20,
        after >> 20
    );
    let records = receiver.records();
    assert!(
        records.iter().all(|r| r.tag != "bomb"),
        "nothing of a refused message reaches the service"
    );
    assert_eq!(records.len(), 1);
    // 4 streams × (16 MiB decompressed + 32 MiB output), and room.
    assert!(
        peak.saturating_sub(baseline) < 256 * 1024 * 1024,
        "router grew from {} to {} MiB",
        baseline >> 20,
        peak >> 20
    );
}
