//! IPv6 end to end: controller, router and client on [::1], with ports
//! from the OS. (Issue 9: every client-side socket used to bind 0.0.0.0,
//! so nothing could reach an IPv6 controller or router.)

use std::time::Duration;

use darkport_controller::{DataDir, InitOptions};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_tests::{admin, echo_service_for_all, enroll_at, run_router_at};
use edge_client::{Client, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether this machine has IPv6 loopback; without it the test skips
/// loudly, and fails under CI=true.
fn ipv6_loopback() -> bool {
    let ok = std::net::UdpSocket::bind("[::1]:0").is_ok();
    if !ok {
        let msg = "SKIPPED: no IPv6 loopback ([::1]) on this machine";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}, and CI=true requires it");
        }
        eprintln!("{msg}");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_works_over_ipv6() {
    if !ipv6_loopback() {
        return;
    }
    darkport_tests::init_logging();
    let dir = tempfile::tempdir().expect("dir");
    let ctl_socket = darkport_controller::server::bind("[::1]:0".parse().unwrap()).expect("bind");
    let ctl_addr = ctl_socket.local_addr().expect("addr");
    let dd = DataDir::new(dir.path().join("ctl"));
    darkport_controller::init(
        &dd,
        &InitOptions {
            advertise: ctl_addr.to_string(),
            cert_ttl: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .expect("init");
    let dd2 = dd.clone();
    let controller = tokio::spawn(async move {
        darkport_controller::run(dd2, ctl_socket, std::future::pending()).await
    });
    // The admin CLI's path: an identity list from the admin identity.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        match admin(&dd, AdminRequest::ListIdentities).await {
            Ok(AdminResponse::Identities(ids)) => break ids,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "identity list over IPv6 failed: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        listed.iter().any(|i| i.kind == Kind::Admin),
        "a new controller lists its admin: {listed:?}"
    );

    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router enrollment over IPv6");
    let (_, router) = run_router_at(
        &dd,
        &router_id,
        "[::1]:0".parse().unwrap(),
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("the router registers over IPv6");
    echo_service_for_all(&dd).await;
    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("client enrollment");
    // Routers from the controller's list (an IPv6 advertise address).
    let client = Client::from_identity_file(&app, ClientOptions::default()).expect("client");
    let mut s = client.dial("echo").await.expect("dial over IPv6");
    s.write_all(b"over six").await.expect("write");
    let mut back = [0u8; 8];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"over six");
    router.abort();
    controller.abort();
}

/// A router name that resolves to several addresses is reached on
/// whichever answers, not only the first: here the first two are bound but
/// silent (a dead host of the name), the third is the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_router_name_is_tried() {
    if !ipv6_loopback() {
        return;
    }
    let fx = darkport_tests::Fixture::start().await.expect("fixture");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("app");
    let id = darkport_transport::identity::Identity::load(&app).expect("identity");
    let config = darkport_transport::tls::client_config(
        Some(&id),
        darkport_transport::tls::Trust::Ca(id.ca.clone()),
        Kind::Router,
        darkport_proto::ALPN_DATA,
    )
    .expect("config");
    let silent_v6 = std::net::UdpSocket::bind("[::1]:0").expect("bind");
    let silent_v4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    let addrs = vec![
        silent_v6.local_addr().expect("addr"),
        silent_v4.local_addr().expect("addr"),
        fx.router_addr,
    ];
    let conn =
        darkport_transport::endpoint::connect_addrs(&endpoint, config, addrs, "darkport-router")
            .await
            .expect("the router is reached on the name's third address");
    assert_eq!(conn.remote_address().port(), fx.router_addr.port());
}
