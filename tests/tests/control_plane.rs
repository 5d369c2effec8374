//! The live control plane: revocation and policy changes cutting live
//! traffic, persistence across controller restarts, routers and clients
//! working while the controller is down, failover between routers,
//! certificate renewal, roles and router policies, and admin visibility.
//!
//! Timing bounds are asserted with bounded waits and the measured delays
//! are printed (`cargo test -- --nocapture` shows them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{Selector, ServiceEntry};
use darkport_tests::{
    admin, assert_eventually, controller_process_with_echo, echo_server, enroll_at, free_udp_addr,
    init_controller, n, payload, roundtrip, sha256, wait_admin, wait_router_online, Busy, Fixture,
    Node,
};
use darkport_transport::identity::Identity;
use edge_client::{Client, ClientOptions, DialError};

const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");

async fn cut_within(busy: Busy, start: Instant, what: &str) -> Duration {
    let (err, at) = tokio::time::timeout(Duration::from_secs(5), busy.task)
        .await
        .unwrap_or_else(|_| panic!("{what}: live stream not cut within 5 s"))
        .expect("busy task");
    let delay = at.duration_since(start);
    eprintln!("{what}: live stream cut after {delay:?} ({err})");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        ),
        "{what}: {err}"
    );
    assert!(
        delay < Duration::from_secs(1),
        "{what}: cut took {delay:?}, more than 1 s"
    );
    delay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cuts_a_live_busy_stream_within_a_second() {
    let mut fx = Fixture::start().await.expect("fixture");
    let fwd = fx.echo_setup().await.expect("setup");
    let tcp = TcpStream::connect(fwd).await.expect("connect");
    let task = Busy::start(tcp);
    task.carrying(3).await;

    let start = Instant::now();
    fx.admin(AdminRequest::RevokeIdentity { name: n("app-1") })
        .await
        .expect("revoke");
    cut_within(task, start, "revoke").await;

    // New connections are refused, with the reason.
    let id = fx.dir.path().join("app-1.id");
    let client = fx.client(&id).expect("client");
    let err = client
        .dial("echo")
        .await
        .expect_err("revoked identity dials");
    assert!(matches!(err, DialError::IdentityRefused { .. }), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    // The controller refuses its certificate too, and shows it revoked.
    let plain = Client::from_identity_file(&id, ClientOptions::default()).expect("client");
    let err = plain.routers().await.expect_err("revoked at controller");
    assert!(err.to_string().contains("was revoked"), "{err}");
    let AdminResponse::Identity(info) = fx
        .admin(AdminRequest::ShowIdentity { name: n("app-1") })
        .await
        .expect("show")
    else {
        panic!("not an identity");
    };
    assert!(info.revoked_at.is_some());
    // The name cannot be enrolled again behind the admin's back.
    let again = fx.token("app-1", Kind::Client, &[], 60).await;
    assert!(again.is_err(), "a revoked name must stay taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_delete_and_role_removal_cut_live_streams() {
    let mut fx = Fixture::start().await.expect("fixture");
    let fwd = fx.echo_setup().await.expect("setup");

    let task = Busy::start(TcpStream::connect(fwd).await.expect("connect"));
    task.carrying(3).await;
    let start = Instant::now();
    fx.admin(AdminRequest::DeletePolicy {
        name: n("echo-writers"),
    })
    .await
    .expect("delete policy");
    cut_within(task, start, "policy delete").await;
    // The connection itself stays: the identity is still valid.
    let client = fx.client(&fx.dir.path().join("app-1.id")).expect("client");
    assert!(matches!(
        client.dial("echo").await,
        Err(DialError::NotAuthorized { .. })
    ));

    // Creating a policy allows new streams within 1 s.
    let start = Instant::now();
    fx.policy("echo-writers", &["echo"], &["#writers"])
        .await
        .expect("policy");
    assert_eventually!(
        client.dial("echo").await.is_ok(),
        Duration::from_secs(1),
        "policy create not in force"
    );
    eprintln!("policy create: in force after {:?}", start.elapsed());

    // Removing the role that the policy selects narrows it: cut again.
    let task = Busy::start(TcpStream::connect(fwd).await.expect("connect"));
    task.carrying(3).await;
    let start = Instant::now();
    fx.admin(AdminRequest::UpdateIdentity {
        name: n("app-1"),
        add_roles: vec![],
        remove_roles: vec![n("writers")],
    })
    .await
    .expect("update");
    cut_within(task, start, "role removal").await;
    // And adding it back allows again.
    fx.admin(AdminRequest::UpdateIdentity {
        name: n("app-1"),
        add_roles: vec![n("writers")],
        remove_roles: vec![],
    })
    .await
    .expect("update");
    assert_eventually!(
        client.dial("echo").await.is_ok(),
        Duration::from_secs(1),
        "role add not in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_keeps_state_and_consumed_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let addr = free_udp_addr().expect("addr");
    let dd = init_controller(dir.path(), addr, Duration::from_secs(3600)).expect("init");
    let mut ctl = Node::spawn(NODE, "controller", dd.root(), addr).expect("controller");
    wait_admin(&dd).await;

    let token = |name: &str| AdminRequest::CreateIdentity {
        name: n(name),
        kind: Kind::Client,
        roles: vec![n("w")],
        token_ttl_secs: 3600,
    };
    let AdminResponse::Token { token: used, .. } = admin(&dd, token("app-1")).await.expect("token")
    else {
        panic!()
    };
    edge_client::enroll(&used, Kind::Client, &dir.path().join("app-1.id"))
        .await
        .expect("enroll");
    let AdminResponse::Token { token: unused, .. } =
        admin(&dd, token("app-2")).await.expect("token")
    else {
        panic!()
    };
    admin(
        &dd,
        AdminRequest::CreateService(ServiceEntry {
            name: n("svc"),
            address: "127.0.0.1:9".into(),
            roles: vec![],
            protocol: Default::default(),
            strategy: Default::default(),
        }),
    )
    .await
    .expect("service");
    admin(
        &dd,
        AdminRequest::CreatePolicy {
            name: n("p"),
            services: vec![Selector::All],
            identities: vec![Selector::Role(n("w"))],
            tags: vec![],
            kind: Default::default(),
        },
    )
    .await
    .expect("policy");
    let before = admin(&dd, AdminRequest::ListIdentities)
        .await
        .expect("list");

    ctl.kill9();
    let _ctl = Node::spawn(NODE, "controller", dd.root(), addr).expect("restart");
    wait_admin(&dd).await;

    assert_eq!(
        admin(&dd, AdminRequest::ListIdentities)
            .await
            .expect("list"),
        before,
        "identities survive"
    );
    let AdminResponse::Policies(p) = admin(&dd, AdminRequest::ListPolicies)
        .await
        .expect("policies")
    else {
        panic!()
    };
    assert_eq!(p.len(), 1);
    let err = edge_client::enroll(&used, Kind::Client, &dir.path().join("again.id"))
        .await
        .expect_err("reuse after restart");
    assert!(err.to_string().contains("already used"), "{err}");
    edge_client::enroll(&unused, Kind::Client, &dir.path().join("app-2.id"))
        .await
        .expect("unused token still valid");
    let AdminResponse::Audit(log) = admin(&dd, AdminRequest::Audit { limit: 100 })
        .await
        .expect("audit")
    else {
        panic!()
    };
    let text: Vec<_> = log.iter().map(|a| a.action.as_str()).collect();
    assert!(
        text.iter()
            .any(|a| a.contains("created client identity app-1")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|a| a.contains("enrolled client app-1")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|a| a.contains("enrolled client app-2")),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_down_router_restarted_new_connections_still_work() {
    let (dir, dd, ctl_addr, mut ctl) = controller_process_with_echo(NODE).await;
    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router");
    let app_id = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("app");
    let r_addr = free_udp_addr().expect("addr");
    let mut router = Node::spawn(NODE, "router", &router_id, r_addr).expect("router");
    wait_router_online(&dd, r_addr, Duration::from_secs(10))
        .await
        .expect("online");

    // The client learns the routers from the controller (and caches them).
    let client = Client::from_identity_file(&app_id, ClientOptions::default()).expect("client");
    echo_once(&client).await;

    ctl.kill9();
    router.kill9();
    let _router = Node::spawn(NODE, "router", &router_id, r_addr).expect("router restart");

    // The same client, and a brand-new one (as after an app restart), get
    // through the restarted router with the controller still down.
    let start = Instant::now();
    assert_eventually!(
        try_echo(&client).await,
        Duration::from_secs(10),
        "no new connection through the restarted router"
    );
    eprintln!(
        "controller down, router restarted: new connection after {:?}",
        start.elapsed()
    );
    let fresh = Client::from_identity_file(&app_id, ClientOptions::default()).expect("client");
    let start = Instant::now();
    echo_once(&fresh).await;
    eprintln!(
        "controller down: a new client's first dial took {:?}",
        start.elapsed()
    );

    // The controller returns: the router resynchronises (well within the
    // 30 s backoff cap) and changes made now reach it.
    let start = Instant::now();
    let _ctl = Node::spawn(NODE, "controller", dd.root(), ctl_addr).expect("controller restart");
    wait_router_online(&dd, r_addr, Duration::from_secs(30))
        .await
        .expect("router back online");
    eprintln!(
        "controller back: router resynchronised after {:?}",
        start.elapsed()
    );
    admin(&dd, AdminRequest::DeletePolicy { name: n("p") })
        .await
        .expect("delete policy");
    assert_eventually!(
        matches!(
            fresh.dial("echo").await,
            Err(DialError::NotAuthorized { .. })
        ),
        Duration::from_secs(1),
        "a change after the controller returned did not reach the router"
    );
}

async fn try_echo(client: &Client) -> bool {
    let Ok(mut s) = client.dial("echo").await else {
        return false;
    };
    let data = payload(4096, 5);
    if s.write_all(&data).await.is_err() || s.shutdown().await.is_err() {
        return false;
    }
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.is_ok() && back == data
}

async fn echo_once(client: &Client) {
    let mut s = client.dial("echo").await.expect("dial");
    let data = payload(64 * 1024, 7);
    s.write_all(&data).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(sha256(&back), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_of_two_routers_fails_over_within_two_seconds() {
    let (dir, dd, _, _ctl) = controller_process_with_echo(NODE).await;
    let mut routers = vec![];
    for name in ["router-1", "router-2"] {
        let id = enroll_at(&dd, dir.path(), name, Kind::Router, &[])
            .await
            .expect("router");
        let addr = free_udp_addr().expect("addr");
        let node = Node::spawn(NODE, "router", &id, addr).expect("router");
        wait_router_online(&dd, addr, Duration::from_secs(10))
            .await
            .expect("online");
        routers.push((node, id, addr));
    }
    let app_id = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("app");
    let client = std::sync::Arc::new(
        Client::from_identity_file(&app_id, ClientOptions::default()).expect("client"),
    );
    echo_once(&client).await;
    // Both routers connected (the pool fills in the background).
    assert_eventually!(
        matches!(admin(&dd, AdminRequest::ShowIdentity { name: n("app-1") }).await, Ok(AdminResponse::Identity(ref i)) if i.connected_to.len() == 2),
        Duration::from_secs(5),
        "client not connected to both routers"
    );

    for victim in 0..2 {
        // A client that uses only the victim: its existing streams must end
        // with a reset once the router is gone, not hang and not look clean.
        let solo = std::sync::Arc::new(
            Client::new(
                Identity::load(&app_id).expect("load"),
                ClientOptions {
                    routers: vec![routers[victim].2.to_string()],
                    ..darkport_tests::client_options()
                },
            )
            .expect("client"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fwd = listener.local_addr().expect("addr");
        tokio::spawn(edge_client::forward::forward(
            solo.clone(),
            listener,
            "echo".into(),
            std::future::pending(),
        ));
        let mut app = TcpStream::connect(fwd).await.expect("connect");
        app.write_all(b"ping").await.expect("write");
        let mut pong = [0u8; 4];
        app.read_exact(&mut pong)
            .await
            .expect("echo before the kill");

        let (node, id, addr) = &mut routers[victim];
        node.kill9();
        let start = Instant::now();
        // Every new connection after the kill must succeed, the first
        // within 2 s.
        echo_once(&client).await;
        let first = start.elapsed();
        eprintln!(
            "kill -9 {}: first new connection after {first:?}",
            id.display()
        );
        assert!(first < Duration::from_secs(2), "failover took {first:?}");
        for _ in 0..20 {
            echo_once(&client).await;
        }
        // The stream on the dead router ends with a reset.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), app.read_to_end(&mut rest))
            .await
            .expect("stream on the dead router still hangs after 10 s");
        let err = ended.expect_err("stream on the dead router ended cleanly");
        eprintln!(
            "stream on the dead router ended after {:?}: {err}",
            start.elapsed()
        );
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        // Restart it; the next round kills the other one.
        *node = Node::spawn(NODE, "router", id, *addr).expect("restart");
        wait_router_online(&dd, *addr, Duration::from_secs(10))
            .await
            .expect("online");
        let other = routers[1 - victim].2;
        let _ = other;
        assert_eventually!(
            matches!(admin(&dd, AdminRequest::ShowIdentity { name: n("app-1") }).await, Ok(AdminResponse::Identity(ref i)) if i.connected_to.len() == 2),
            Duration::from_secs(10),
            "client did not reconnect to the restarted router"
        );
        // Make the restarted router the preferred one if it is faster: the
        // next kill then hits whichever the client uses.
        echo_once(&client).await;
        let _ = &routers;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_load_and_expired_ones_are_refused() {
    let mut fx = Fixture::start_with_cert_ttl(Duration::from_secs(6))
        .await
        .expect("fixture");
    let fwd = fx.echo_setup().await.expect("setup");
    let app_id = fx.dir.path().join("app-1.id");
    let router_id = fx.dir.path().join("router-1.id");
    let fp = |p: &std::path::Path| {
        darkport_proto::identity::fingerprint(&Identity::load(p).expect("load").chain[0])
    };
    let (app0, router0) = (fp(&app_id), fp(&router_id));
    let mut app_seen = vec![app0.clone()];
    let mut router_seen = vec![router0.clone()];

    // Traffic through the forwarder for 14 s: more than two lifetimes.
    let start = Instant::now();
    let mut n_ok = 0;
    while start.elapsed() < Duration::from_secs(14) {
        let data = payload(8 * 1024, n_ok);
        let tcp = TcpStream::connect(fwd).await.expect("connect");
        let back = roundtrip(tcp, &data).await.unwrap_or_else(|e| {
            panic!("connection {n_ok} failed after {:?}: {e}", start.elapsed())
        });
        assert_eq!(sha256(&back), sha256(&data), "connection {n_ok}");
        n_ok += 1;
        for (path, seen) in [(&app_id, &mut app_seen), (&router_id, &mut router_seen)] {
            let f = fp(path);
            if seen.last() != Some(&f) {
                seen.push(f);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{n_ok} connections, client certificates {}, router certificates {}",
        app_seen.len(),
        router_seen.len()
    );
    assert!(
        app_seen.len() >= 3,
        "client renewed {} times",
        app_seen.len() - 1
    );
    assert!(
        router_seen.len() >= 3,
        "router renewed {} times",
        router_seen.len() - 1
    );

    // A certificate that is not renewed expires and is refused clearly.
    let stale_id = fx
        .enroll("app-old", Kind::Client, &["writers"])
        .await
        .expect("enroll");
    let stale = Identity::load(&stale_id).expect("load");
    let no_renewal = Client::new(
        stale.clone(),
        ClientOptions {
            routers: vec![fx.router_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    no_renewal.dial("echo").await.expect("valid at first");
    let expires = darkport_transport::renew::schedule(&stale)
        .expect("schedule")
        .1;
    while darkport_transport::unix_now() < expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = no_renewal.dial("echo").await.expect_err("expired");
    assert!(matches!(err, DialError::CertificateExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired at"), "{err}");
    // The router refuses it at the handshake, even if the client tries.
    let config = darkport_transport::tls::client_config(
        Some(&stale),
        darkport_transport::tls::Trust::Ca(stale.ca.clone()),
        Kind::Router,
        darkport_proto::ALPN_DATA,
    )
    .expect("config");
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    let result = async {
        let conn = endpoint
            .connect_with(config, fx.router_addr, "router")?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"\0\0\0\x01x").await?;
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let err = result.expect_err("router accepts an expired certificate");
    eprintln!("expired certificate at the router: {err:#}");
    let _ = &mut fx;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_policies_roles_explain_and_visibility() {
    let mut fx = Fixture::start().await.expect("fixture");
    let echo = echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("p", &["echo"], &["#writers"])
        .await
        .expect("policy");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    let client = Client::from_identity_file(&app, ClientOptions::default()).expect("client");

    // No role: denied, and explain says why.
    assert!(matches!(
        client.dial("echo").await,
        Err(DialError::NotAuthorized { .. })
    ));
    let AdminResponse::Explanation(e) = fx
        .admin(AdminRequest::Explain {
            identity: n("app-1"),
            service: "echo".into(),
            tag: None,
        })
        .await
        .expect("explain")
    else {
        panic!()
    };
    assert!(
        !e.allowed && e.reasons.iter().any(|r| r.contains("no service policy")),
        "{e:?}"
    );
    // Role added: allowed within 1 s; explain names the policies.
    fx.admin(AdminRequest::UpdateIdentity {
        name: n("app-1"),
        add_roles: vec![n("writers")],
        remove_roles: vec![],
    })
    .await
    .expect("update");
    assert_eventually!(
        client.dial("echo").await.is_ok(),
        Duration::from_secs(1),
        "role not in force"
    );
    let AdminResponse::Explanation(e) = fx
        .admin(AdminRequest::Explain {
            identity: n("app-1"),
            service: "echo".into(),
            tag: None,
        })
        .await
        .expect("explain")
    else {
        panic!()
    };
    assert!(e.allowed, "{e:?}");
    assert_eq!(e.dial_policies, vec![n("p")]);

    // A second router; then only it may serve the service.
    let r2_addr = fx.only_second_router_serves().await.expect("router-2");
    // Router 1 refuses now, naming the router policy.
    let via_r1 = fx.client(&app).expect("client");
    assert_eventually!(
        matches!(via_r1.dial("echo").await, Err(DialError::WrongRouter { ref message, .. }) if message.contains("router policy")),
        Duration::from_secs(1),
        "router-1 still serves"
    );
    // The controller tells clients only about router 2 for this service.
    let fresh = Client::from_identity_file(&app, ClientOptions::default()).expect("client");
    // The controller tells clients which routers serve their services:
    // router 2 first.
    assert_eq!(
        fresh.routers().await.expect("routers").first(),
        Some(&r2_addr.to_string())
    );
    fresh.dial("echo").await.expect("via router-2");
    let AdminResponse::Explanation(e) = fx
        .admin(AdminRequest::Explain {
            identity: n("app-1"),
            service: "echo".into(),
            tag: None,
        })
        .await
        .expect("explain")
    else {
        panic!()
    };
    assert_eq!(e.routers, vec![(n("router-2"), vec![n("b-only")])]);

    // Visibility: which router the client is on, last seen, router state.
    assert_eventually!(
        matches!(fx.admin(AdminRequest::ShowIdentity { name: n("app-1") }).await, Ok(AdminResponse::Identity(ref i)) if i.connected_to.contains(&n("router-2")) && i.last_seen.is_some()),
        Duration::from_secs(3),
        "identity show does not say where app-1 is connected"
    );
    let AdminResponse::Routers(rs) = fx.admin(AdminRequest::ListRouters).await.expect("routers")
    else {
        panic!()
    };
    let version = {
        let AdminResponse::Identities(_) =
            fx.admin(AdminRequest::ListIdentities).await.expect("ids")
        else {
            panic!()
        };
        rs.iter().filter_map(|r| r.snapshot_version).max()
    };
    assert!(rs.iter().all(|r| r.online), "{rs:?}");
    assert!(
        version.is_some(),
        "routers report their snapshot version: {rs:?}"
    );
    let r2_info = rs
        .iter()
        .find(|r| r.name == n("router-2"))
        .expect("router-2 listed");
    assert_eq!(r2_info.services, vec![n("echo")]);
    let r1_info = rs
        .iter()
        .find(|r| r.name == n("router-1"))
        .expect("router-1 listed");
    assert!(r1_info.services.is_empty());
    let _: SocketAddr = r2_addr;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_commands_and_enrollments_are_safe() {
    let fx = std::sync::Arc::new(Fixture::start().await.expect("fixture"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let fx = fx.clone();
        tasks.spawn(async move {
            let addr: SocketAddr = format!("127.0.0.1:{}", 10_000 + i).parse().expect("addr");
            fx.service(&format!("svc-{i}"), addr).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("create service");
    }
    let AdminResponse::Services(list) = fx.admin(AdminRequest::ListServices).await.expect("list")
    else {
        panic!()
    };
    assert_eq!(list.len(), 20);

    // One token, five hosts racing to redeem it: exactly one wins.
    let token = fx
        .token("app-race", Kind::Client, &[], 3600)
        .await
        .expect("token");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (token, path) = (token.clone(), fx.dir.path().join(format!("race-{i}.id")));
        tasks.spawn(async move { edge_client::enroll(&token, Kind::Client, &path).await });
    }
    let mut wins = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(_) => wins += 1,
            Err(e) => assert!(e.to_string().contains("already used"), "{e}"),
        }
    }
    assert_eq!(wins, 1, "a token must be redeemed exactly once");
}
