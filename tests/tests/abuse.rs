//! Hostile peers without certificates against a controller in its own
//! process: its memory stays bounded, their streams are reset in time, and
//! real work goes on meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use darkport_controller::server::{
    MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_PREFIX, REQUEST_TIMEOUT, RESPONSE_TIMEOUT,
};
use darkport_proto::codec::{encode_frame, MAX_UNAUTHENTICATED_FRAME};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{
    AdminRequest, AdminResponse, ControlBody, ControlRequest, EnrollRequest,
};
use darkport_tests::{
    admin, free_udp_addr, init_controller, n, poll_until, rss_bytes, wait_admin, wait_until, Node,
};
use darkport_transport::tls::{self, Trust};
use quinn::VarInt;

const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");

/// Hostile connections, spread over this many source addresses (10 in the
/// test; `DARKPORT_HOSTILE_ADDRESSES=50` makes the 1,000 connections the
/// threat model quotes).
fn addresses() -> u8 {
    std::env::var("DARKPORT_HOSTILE_ADDRESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 250)
}
const PER_ADDRESS: usize = 20;

/// The documented bound (docs/threat-model.md): at most 256 KiB of
/// receive window and 16 streams per connection without a certificate,
/// and answers reset after 10 s. 160 admitted connections stay far below
/// this; the bound is what the threat model promises for 1,000.
const RSS_BOUND: u64 = 256 * 1024 * 1024;

/// A client configuration with no certificate that gives the server no
/// receive credit at all: nothing the controller answers can arrive.
fn hostile_config(ca_pem: &str) -> quinn::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca");
    let mut config = tls::client_config(
        None,
        Trust::Ca(ca),
        Kind::Controller,
        darkport_proto::ALPN_CONTROL,
    )
    .expect("config");
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(0))
        .receive_window(VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(2)));
    config.transport_config(Arc::new(t));
    config
}

/// What one hostile stream saw: reset by the controller (and when).
/// Counts in `requests_sent` once its request frame is handed to QUIC.
async fn hostile_stream(
    conn: quinn::Connection,
    requests_sent: Arc<AtomicUsize>,
) -> Option<Duration> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let started = Instant::now();
    // A valid-looking enrollment request, as large as allowed, then junk.
    let request = ControlRequest::new(ControlBody::Enroll(EnrollRequest {
        token: "dpt1.junk".into(),
        csr_der: vec![0x30; MAX_UNAUTHENTICATED_FRAME - 1024],
    }));
    let frame = encode_frame(&request, MAX_UNAUTHENTICATED_FRAME).expect("frame");
    let junk = vec![0xee; 64 * 1024];
    let writing = async {
        send.write_all(&frame).await?;
        requests_sent.fetch_add(1, Ordering::Relaxed);
        loop {
            send.write_all(&junk).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), quinn::WriteError>(())
    };
    let reading = async {
        let mut buf = [0u8; 64];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(quinn::ReadError::Reset(_)) => return Some(started.elapsed()),
                Err(_) => return None,
            }
        }
    };
    tokio::select! {
        r = reading => r,
        _ = writing => {
            // The controller stopped our sending; wait for the reset of
            // its side.
            let mut buf = [0u8; 64];
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(_)) => {}
                    Err(quinn::ReadError::Reset(_)) => return Some(started.elapsed()),
                    _ => return None,
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_without_certificates_cannot_pin_controller_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let ctl_addr = free_udp_addr().expect("addr");
    let dd = init_controller(dir.path(), ctl_addr, Duration::from_secs(3600)).expect("init");
    let node = Node::spawn(NODE, "controller", dd.root(), ctl_addr).expect("controller");
    wait_admin(&dd).await;
    let pid = node.pid();
    // Warm up what normal work allocates, then take the baseline.
    for i in 0..5 {
        let token = match admin(
            &dd,
            AdminRequest::CreateIdentity {
                name: n(&format!("warm-{i}")),
                kind: Kind::Client,
                roles: vec![],
                token_ttl_secs: 600,
            },
        )
        .await
        .expect("create")
        {
            AdminResponse::Token { token, .. } => token,
            other => panic!("{other:?}"),
        };
        edge_client::enroll(
            &token,
            Kind::Client,
            &dir.path().join(format!("warm-{i}.id")),
        )
        .await
        .expect("enroll");
    }
    let baseline = rss_bytes(pid);
    assert!(baseline > 0, "RSS of the controller is readable");

    let ca_pem = std::fs::read_to_string(dd.ca_cert()).expect("ca");
    let config = hostile_config(&ca_pem);
    let mut endpoints = Vec::new();
    let mut connecting = tokio::task::JoinSet::new();
    let addresses = addresses();
    for a in 0..addresses {
        // Each attacker address in a /24 of its own, none the honest
        // peers' 127.0.0.0/24 (slots are counted per source prefix).
        let ip = IpAddr::V4(Ipv4Addr::new(127, 30, a, 2));
        let socket = darkport_transport::endpoint::bind_udp(SocketAddr::new(ip, 0)).expect("bind");
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        for _ in 0..PER_ADDRESS {
            let connect = endpoint
                .connect_with(config.clone(), ctl_addr, "darkport-controller")
                .expect("connect");
            connecting.spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), connect)
                    .await
                    .ok()?
                    .ok()
            });
        }
        endpoints.push(endpoint);
    }
    let mut handshaken = Vec::new();
    while let Some(r) = connecting.join_next().await {
        if let Some(c) = r.expect("task") {
            handshaken.push(c);
        }
    }
    // The controller refuses right after the handshake and closes the
    // connection at once. Wait for as many refusals as its caps demand; if
    // they never come, the assertion below says how many were admitted.
    let caps = (usize::from(addresses) * MAX_UNAUTHENTICATED_PER_PREFIX).min(MAX_UNAUTHENTICATED);
    let must_refuse = handshaken.len().saturating_sub(caps);
    let _ = poll_until(
        &format!("{must_refuse} refused connections to be closed"),
        Duration::from_secs(10),
        || async {
            handshaken
                .iter()
                .filter(|c| c.close_reason().is_some())
                .count()
                >= must_refuse
        },
    )
    .await;
    let conns: Vec<_> = handshaken
        .into_iter()
        .filter(|c| c.close_reason().is_none())
        .collect();
    let admitted = conns.len();
    assert!(
        admitted <= usize::from(addresses) * MAX_UNAUTHENTICATED_PER_PREFIX,
        "{admitted} connections admitted; at most {MAX_UNAUTHENTICATED_PER_PREFIX} per source prefix"
    );
    assert!(admitted > 0, "some hostile connections are admitted");

    let attack_started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    let requests_sent = Arc::new(AtomicUsize::new(0));
    for conn in &conns {
        for _ in 0..darkport_transport::endpoint::MAX_CONTROL_STREAMS {
            streams.spawn(hostile_stream(conn.clone(), requests_sent.clone()));
        }
    }

    // Real work during the attack, from another address, once the attack
    // is under way: a request frame out on as many streams as there are
    // connections.
    wait_until(
        "hostile request frames sent",
        Duration::from_secs(10),
        || async { requests_sent.load(Ordering::Relaxed) >= admitted },
    )
    .await;
    let token = match admin(
        &dd,
        AdminRequest::CreateIdentity {
            name: n("app-1"),
            kind: Kind::Client,
            roles: vec![],
            token_ttl_secs: 600,
        },
    )
    .await
    .expect("the admin API answers during the attack")
    {
        AdminResponse::Token { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let enrolled = edge_client::enroll(&token, Kind::Client, &dir.path().join("app-1.id")).await;
    if admitted < MAX_UNAUTHENTICATED {
        enrolled.expect("a real enrollment succeeds during the attack");
    } else {
        // Every slot for peers without a certificate is taken: the known
        // gap (docs/threat-model.md). The refusal must say so.
        let e = enrolled.expect_err("all unauthenticated slots are taken");
        assert!(
            e.to_string()
                .contains("too many connections without a certificate"),
            "{e}"
        );
        eprintln!("enrollment refused while the attacker holds every slot: {e}");
    }
    match admin(&dd, AdminRequest::ListIdentities)
        .await
        .expect("identity list")
    {
        AdminResponse::Identities(ids) => assert!(ids.iter().any(|i| i.name == n("app-1"))),
        other => panic!("{other:?}"),
    }

    // Peak RSS while the hostile streams are held.
    let mut peak = rss_bytes(pid);
    // The controller's timeouts, plus scheduling slack on a 2-core machine
    // that also runs every hostile peer: 5 s, and 1 s per 100 connections.
    let slack = Duration::from_secs(5 + (usize::from(addresses) * PER_ADDRESS / 100) as u64);
    let bound = REQUEST_TIMEOUT + RESPONSE_TIMEOUT + slack;
    let mut reset = Vec::new();
    let mut sampling = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = sampling.tick() => peak = peak.max(rss_bytes(pid)),
            r = streams.join_next() => match r {
                Some(r) => reset.push(r.expect("task")),
                None => break,
            },
        }
        assert!(
            attack_started.elapsed() < bound + Duration::from_secs(10),
            "hostile streams still open after {:?}",
            attack_started.elapsed()
        );
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "hostile peers: {admitted} of {} connections admitted, {} streams; controller RSS {} MiB baseline, {} MiB peak (+{} MiB)",
        usize::from(addresses) * PER_ADDRESS,
        reset.len(),
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(
        growth < RSS_BOUND,
        "controller RSS grew by {} MiB (bound {} MiB)",
        growth >> 20,
        RSS_BOUND >> 20
    );
    let resets: Vec<Duration> = reset.iter().flatten().copied().collect();
    assert!(
        resets.len() * 10 >= reset.len() * 9,
        "at least 90% of the hostile streams are reset by the controller ({} of {})",
        resets.len(),
        reset.len()
    );
    assert!(
        resets.iter().all(|d| *d <= bound),
        "every reset comes within {bound:?}: slowest {:?}",
        resets.iter().max()
    );
    drop(endpoints);
}
