//! The transport fallback across a real firewall: the router runs in a
//! network namespace of the test's own (veth pair, MTU 1500), and
//! nftables inside it drops UDP to the router's port.
//!
//! Needs root, iproute2 and nftables: skipped loudly without them, and a
//! failure under `CI=true` (CI runs as root and installs both).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use darkport_proto::identity::Kind;
use darkport_tests::netns::{create_or_skip, NetNs};
use darkport_tests::ops::Proc;
use darkport_tests::{assert_eventually, echo_server_at, payload, sha256, Fixture};
use edge_client::{Client, ClientOptions, Transport, TransportMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The router binary inside `ns` with `extra` flags, on port 0 of the
/// namespace's address, enrolled with the fixture's controller (which
/// listens on this side of the veth pair) as `id`; its address.
async fn router_in(
    ns: &NetNs,
    fx: &Fixture,
    id: &std::path::Path,
    extra: &[&str],
) -> (Proc, std::net::SocketAddr) {
    let listen = format!("{}:0", ns.inner);
    let log = fx.dir.path().join(format!("router-{}.log", extra.len()));
    let mut args = vec![
        "run",
        "--identity",
        id.to_str().expect("path"),
        "--listen",
        &listen,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let router = Proc::start_in(&ns.name, "darkport-edge-router", &args, &log)
        .expect("start the router in the namespace");
    let addr = router
        .logged_addr("router listening", "addr")
        .await
        .expect("router address");
    (router, addr)
}

/// A fixture on this side of the veth pair with an echo service anyone may
/// dial, a router in the namespace, and an enrolled client `app`.
async fn setup(ns: &NetNs, app: &str) -> (Fixture, PathBuf, Proc, std::net::SocketAddr, PathBuf) {
    let outer = IpAddr::V4(ns.outer);
    let fx = Fixture::start_at(outer).await.expect("fixture");
    let echo = echo_server_at(outer).await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("p", &["echo"], &["#all"]).await.expect("policy");
    let router_id = fx
        .enroll("router-ns", Kind::Router, &[])
        .await
        .expect("enroll router");
    let (router, addr) = router_in(ns, &fx, &router_id, &[]).await;
    let app = fx.enroll(app, Kind::Client, &[]).await.expect("enroll");
    (fx, router_id, router, addr, app)
}

async fn echo_through(client: &Client, data: &[u8]) -> Result<Vec<u8>, edge_client::DialError> {
    let mut s = client.dial("echo").await?;
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
    sent?;
    got?;
    Ok(back)
}

fn client_to(
    router: std::net::SocketAddr,
    id: &std::path::Path,
    transport: TransportMode,
) -> Client {
    Client::from_identity_file(
        id,
        ClientOptions {
            routers: vec![router.to_string()],
            transport,
            // Short, so the test sees QUIC come back.
            remember_tcp: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_udp_falls_back_to_tcp_within_3_s_and_returns_to_quic() {
    let Some(ns) = create_or_skip("blocked_udp_falls_back_to_tcp_within_3_s_and_returns_to_quic")
    else {
        return;
    };
    let (_fx, _router_id, _router, router_addr, app) = setup(&ns, "app-ns").await;

    // The router has its policy once a QUIC dial goes through.
    let probe = client_to(router_addr, &app, TransportMode::Quic);
    let data = payload(256 * 1024, 11);
    assert_eventually!(
        echo_through(&probe, b"ready").await.is_ok(),
        Duration::from_secs(10),
        "the router in the namespace serves over QUIC"
    );
    drop(probe);

    ns.block_udp(router_addr.port()).expect("block UDP");
    // Negative: QUIC alone no longer gets through.
    let quic_only = client_to(router_addr, &app, TransportMode::Quic);
    let refused = tokio::time::timeout(Duration::from_secs(3), quic_only.dial("echo")).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a QUIC-only client must not get through with UDP blocked"
    );

    // Auto: through TCP, byte-exact, within 3 s of starting.
    let client = Arc::new(client_to(router_addr, &app, TransportMode::Auto));
    let started = Instant::now();
    let back = echo_through(&client, &data).await.expect("dial over TCP");
    let took = started.elapsed();
    assert_eq!(sha256(&back), sha256(&data));
    assert!(took < Duration::from_secs(3), "fallback took {took:?}");
    let conns = client.connections();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].transport, Transport::Tcp, "{conns:?}");

    // UDP back: the client tries QUIC again once its memory of TCP
    // expires (2 s here), and new dials use it.
    ns.unblock_udp().expect("unblock UDP");
    assert_eventually!(
        client
            .connections()
            .first()
            .is_some_and(|c| c.transport == Transport::Quic),
        Duration::from_secs(10),
        "the client returns to QUIC: {:?}",
        client.connections()
    );
    let back = echo_through(&client, &data).await.expect("dial over QUIC");
    assert_eq!(sha256(&back), sha256(&data));

    // A new client after the block: straight to QUIC.
    let fresh = client_to(router_addr, &app, TransportMode::Auto);
    echo_through(&fresh, b"x").await.expect("fresh dial");
    assert_eq!(fresh.connections()[0].transport, Transport::Quic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_clients_work_at_mtu_1500_and_a_router_without_tcp_refuses_them() {
    let Some(ns) = create_or_skip("tcp_only_clients_work_at_mtu_1500") else {
        return;
    };
    let (fx, router_id, router, router_addr, app) = setup(&ns, "app-tcp").await;
    let client = client_to(router_addr, &app, TransportMode::Tcp);
    // Several MB across the 1,500-byte path, both ways, byte-exact.
    let data = payload(4 * 1024 * 1024, 5);
    assert_eventually!(
        echo_through(&client, b"ready").await.is_ok(),
        Duration::from_secs(10),
        "the router serves over TCP"
    );
    let back = echo_through(&client, &data).await.expect("dial over TCP");
    assert_eq!(sha256(&back), sha256(&data));
    assert_eq!(client.connections()[0].transport, Transport::Tcp);
    drop(router);

    // The same router with --no-tcp: a TCP-only client is refused, with
    // an error that names TCP.
    let (_udp_only, addr) = router_in(&ns, &fx, &router_id, &["--no-tcp"]).await;
    let client = client_to(addr, &app, TransportMode::Tcp);
    let err = client.dial("echo").await.expect_err("no TCP listener");
    assert!(err.to_string().contains("TCP"), "{err}");
}
