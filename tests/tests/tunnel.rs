//! Byte-exact tunnelling through controller, router and edge client.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use darkport_proto::identity::Kind;
use darkport_tests::{assert_eventually, payload, roundtrip, sha256, Fixture};
use edge_client::DialError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_cross_byte_exact_both_ways() {
    let mut fx = Fixture::start().await.expect("fixture");
    let fwd = fx.echo_setup().await.expect("setup");
    for (i, size) in [1024usize, 1024 * 1024, 64 * 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let data = payload(size, i as u64);
        let tcp = TcpStream::connect(fwd).await.expect("connect");
        let back = roundtrip(tcp, &data).await.expect("roundtrip");
        assert_eq!(back.len(), data.len(), "size {size}");
        assert_eq!(
            sha256(&back),
            sha256(&data),
            "content differs for size {size}"
        );
    }
}

/// A service that reads until EOF and only then answers proves the FIN
/// crossed while the other direction stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_carried() {
    let mut fx = Fixture::start().await.expect("fixture");
    let svc = darkport_tests::digest_server().await.expect("service");
    fx.service("sink", svc).await.expect("service");
    fx.policy("p", &["sink"], &["#all"]).await.expect("policy");
    let id = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    let client = fx.client(&id).expect("client");
    let fwd = fx.forward(client.clone(), "sink").await.expect("forward");

    let data = payload(300_000, 9);
    let mut tcp = TcpStream::connect(fwd).await.expect("connect");
    tcp.write_all(&data).await.expect("write");
    tcp.shutdown().await.expect("half-close");
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut reply))
        .await
        .expect("reply within 10 s")
        .expect("read reply");
    assert_eq!(reply, format!("{} {}", data.len(), sha256(&data)));

    // The same through the SDK stream.
    let mut s = client.dial("sink").await.expect("dial");
    s.write_all(b"abc").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("read");
    assert_eq!(reply, format!("3 {}", sha256(b"abc")));
}

async fn reset_listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_carried_both_ways() {
    let mut fx = Fixture::start().await.expect("fixture");
    let (listener, svc) = reset_listener().await;
    fx.service("svc", svc).await.expect("service");
    fx.policy("p", &["svc"], &["#all"]).await.expect("policy");
    let id = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    let client = fx.client(&id).expect("client");
    let fwd = fx.forward(client.clone(), "svc").await.expect("forward");

    // App resets: the service must see a reset, not a clean EOF.
    let app = TcpStream::connect(fwd).await.expect("connect");
    let (mut service_side, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("service accepts")
        .expect("accept");
    let mut app = app;
    app.write_all(b"partial").await.expect("write");
    let mut buf = [0u8; 7];
    service_side.read_exact(&mut buf).await.expect("data first");
    app.set_zero_linger().expect("linger");
    drop(app);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), service_side.read_to_end(&mut rest))
        .await
        .expect("service sees the end within 10 s");
    let err = r.expect_err("service must see a reset, not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    // Service resets: the app must see a reset.
    let mut app = TcpStream::connect(fwd).await.expect("connect");
    app.write_all(b"x").await.expect("write");
    let (mut service_side, _) = listener.accept().await.expect("accept");
    let mut one = [0u8; 1];
    service_side.read_exact(&mut one).await.expect("read");
    service_side.set_zero_linger().expect("linger");
    drop(service_side);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), app.read_to_end(&mut rest))
        .await
        .expect("app sees the end within 10 s");
    let err = r.expect_err("app must see a reset, not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    // An SDK stream dropped without shutdown resets the service side.
    let mut s = client.dial("svc").await.expect("dial");
    s.write_all(b"y").await.expect("write");
    let (mut service_side, _) = listener.accept().await.expect("accept");
    service_side.read_exact(&mut one).await.expect("read");
    drop(s);
    let r = tokio::time::timeout(Duration::from_secs(10), service_side.read_to_end(&mut rest))
        .await
        .expect("service sees the end within 10 s");
    assert!(r.is_err(), "dropped stream must reset, got clean EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections() {
    let mut fx = Fixture::start().await.expect("fixture");
    let fwd = fx.echo_setup().await.expect("setup");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100u64 {
        tasks.spawn(async move {
            let data = payload(64 * 1024 + i as usize, 1000 + i);
            let tcp = TcpStream::connect(fwd).await.expect("connect");
            let back = roundtrip(tcp, &data).await.expect("roundtrip");
            assert_eq!(sha256(&back), sha256(&data), "connection {i}");
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.expect("connection task");
        done += 1;
    }
    assert_eq!(done, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_reach_the_router_within_a_second() {
    let fx = Fixture::start().await.expect("fixture");
    let echo = darkport_tests::echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    let id = fx
        .enroll("app-2", Kind::Client, &["late"])
        .await
        .expect("enroll");
    let client = fx.client(&id).expect("client");
    assert!(matches!(
        client.dial("echo").await,
        Err(DialError::NotAuthorized { .. })
    ));

    let start = Instant::now();
    fx.policy("late-policy", &["echo"], &["#late"])
        .await
        .expect("policy");
    assert_eventually!(
        client.dial("echo").await.is_ok(),
        Duration::from_secs(1),
        "policy not in force within 1 s"
    );
    eprintln!("policy create -> in force: {:?}", start.elapsed());

    let start = Instant::now();
    fx.admin(darkport_proto::msg::AdminRequest::DeletePolicy {
        name: darkport_tests::n("late-policy"),
    })
    .await
    .expect("delete");
    assert_eventually!(
        matches!(
            client.dial("echo").await,
            Err(DialError::NotAuthorized { .. })
        ),
        Duration::from_secs(1),
        "policy deletion not in force within 1 s"
    );
    eprintln!("policy delete -> in force: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_finds_routers_through_the_controller() {
    let mut fx = Fixture::start().await.expect("fixture");
    let echo = darkport_tests::echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("p", &["echo"], &["#all"]).await.expect("policy");
    let id = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    // No router override: the client asks the controller.
    let client = edge_client::Client::from_identity_file(&id, darkport_tests::client_options())
        .expect("client");
    assert_eq!(
        client.routers().await.expect("routers"),
        vec![fx.router_addr.to_string()]
    );
    let mut s = client.dial("echo").await.expect("dial");
    s.write_all(b"ping").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"ping");
    let _ = &mut fx;
}

/// Path MTU discovery finds loopback's large MTU: bulk data then moves in
/// packets of up to MAX_UDP_PAYLOAD bytes rather than 1,452 (quinn's
/// default bound), which is what makes bulk transfer cheap. The content
/// still crosses byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mtu_grows_to_the_bound_on_loopback() {
    use darkport_transport::endpoint::MAX_UDP_PAYLOAD;
    let mut fx = Fixture::start().await.expect("fixture");
    let echo_addr = darkport_tests::echo_server().await.expect("echo");
    fx.service("echo", echo_addr).await.expect("service");
    fx.policy("p", &["echo"], &["#all"]).await.expect("policy");
    let id = fx
        .enroll("app-mtu", Kind::Client, &[])
        .await
        .expect("enroll");
    // A QUIC matter, whatever transport the other tests run on.
    let client = std::sync::Arc::new(
        edge_client::Client::from_identity_file(
            &id,
            edge_client::ClientOptions {
                routers: vec![fx.router_addr.to_string()],
                transport: edge_client::TransportMode::Quic,
                ..Default::default()
            },
        )
        .expect("client"),
    );
    let fwd = fx.forward(client.clone(), "echo").await.expect("forward");
    let data = payload(4 * 1024 * 1024, 77);
    let back = roundtrip(TcpStream::connect(fwd).await.expect("connect"), &data)
        .await
        .expect("roundtrip");
    assert_eq!(sha256(&back), sha256(&data));
    assert_eventually!(
        client
            .connections()
            .first()
            .is_some_and(|c| c.path_mtu == MAX_UDP_PAYLOAD),
        Duration::from_secs(5),
        "path MTU did not reach {MAX_UDP_PAYLOAD}: {:?}",
        client.connections()
    );
}

/// Bytes sent behind the dial request (dial_from) reach the service exactly
/// once and in order, also when the first router refuses the dial and the
/// client moves to another: the refused router drops them, the next one
/// gets them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_cross_once_also_after_a_refusing_router() {
    let mut fx = Fixture::start().await.expect("fixture");
    fx.service(
        "digest",
        darkport_tests::digest_server().await.expect("digest"),
    )
    .await
    .expect("service");
    fx.policy("p", &["digest"], &["#all"])
        .await
        .expect("policy");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    // Only router 2 may serve: router 1 refuses with WrongRouter.
    let r2_addr = fx.only_second_router_serves().await.expect("router-2");
    let r1_only = fx.client(&app).expect("client");
    assert_eventually!(
        matches!(
            r1_only.dial("digest").await,
            Err(DialError::WrongRouter { .. })
        ),
        Duration::from_secs(2),
        "router-1 still serves"
    );
    // A refused dial with early bytes fails with the router's reason.
    let mut early = &b"sent before the answer"[..];
    let err = r1_only
        .dial_from("digest", &mut early)
        .await
        .expect_err("router-1 refuses");
    assert!(matches!(err, DialError::WrongRouter { .. }), "{err}");

    let client = std::sync::Arc::new(
        edge_client::Client::from_identity_file(
            &app,
            edge_client::ClientOptions {
                routers: vec![fx.router_addr.to_string(), r2_addr.to_string()],
                ..darkport_tests::client_options()
            },
        )
        .expect("client"),
    );
    // Whichever router the client tries first, every dial's bytes arrive
    // once: 20 dials, each with early data larger than one packet.
    for i in 0..20u64 {
        let data = payload(20_000 + i as usize, 100 + i);
        let mut reader = &data[..];
        let mut s = client.dial_from("digest", &mut reader).await.expect("dial");
        // What the dial did not take (the answer came first) follows.
        s.write_all(reader).await.expect("rest");
        s.shutdown().await.expect("fin");
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
            .await
            .expect("reply within 10 s")
            .expect("read");
        assert_eq!(
            reply,
            format!("{} {}", data.len(), sha256(&data)),
            "dial {i}"
        );
    }
}
