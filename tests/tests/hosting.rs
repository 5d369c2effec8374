//! Hosting through the SDK: `Client::listen` and `Client::host` against a
//! real controller and router (the wire rules themselves are
//! hosting_wire.rs's).

use std::net::SocketAddr;
use std::time::Duration;

use darkport_proto::identity::Kind;
use darkport_tests::{echo_through, hosting_setup, n, payload, poll_until, run_router_at, sha256};
use edge_client::host::{HostError, ListenOptions, RouterState};
use edge_client::Precedence;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_serves_byte_exact_with_the_callers_identity_then_close_drains() {
    let (fx, app, hoster) = hosting_setup().await;
    let host_client = fx.client(&hoster).expect("hoster client");
    let listener = std::sync::Arc::new(
        tokio::time::timeout(
            Duration::from_secs(20),
            host_client.listen("echo-h", ListenOptions::default()),
        )
        .await
        .expect("registered in time")
        .expect("listen"),
    );
    let (tx, mut callers) = tokio::sync::mpsc::unbounded_channel();
    let serving = {
        let listener = listener.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                match listener.accept().await {
                    Ok(a) => {
                        let _ = tx.send(a.caller.clone());
                        let mut s = a.stream;
                        tokio::spawn(async move {
                            let mut buf = Vec::new();
                            s.read_to_end(&mut buf).await.expect("read");
                            s.write_all(&buf).await.expect("write");
                            s.shutdown().await.expect("shutdown");
                        });
                        n += 1;
                    }
                    Err(HostError::Closed) => return n,
                    Err(e) => panic!("accept: {e}"),
                }
            }
        })
    };

    let client = fx.client(&app).expect("client");
    let data = payload(2 << 20, 7);
    assert_eq!(
        sha256(&echo_through(&client, "echo-h", &data).await),
        sha256(&data)
    );
    let caller = callers.recv().await.expect("caller");
    assert_eq!(caller.identity, n("app-1"));
    assert_eq!(caller.roles, vec![n("writers")]);
    assert_eq!(caller.router, n("router-1"));
    assert!(caller.address.parse::<SocketAddr>().is_ok(), "{caller:?}");

    // Health reaches the router without losing the terminator.
    listener
        .set_precedence(Precedence::Failed)
        .expect("precedence");
    listener.set_cost(7).expect("cost");
    let small = payload(1000, 8);
    assert_eq!(echo_through(&client, "echo-h", &small).await, small);

    // Drain: once close() returns, a new dial finds no terminator (the
    // service's address is dead) and accept() has ended.
    listener.close().await;
    assert!(listener
        .routers()
        .iter()
        .all(|r| r.state == RouterState::Withdrawn { acknowledged: true }));
    let err = client.dial("echo-h").await.expect_err("withdrawn");
    assert!(err.to_string().contains("echo-h"), "{err}");
    let served = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("accept ends after close")
        .expect("task");
    assert_eq!(served, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_without_a_bind_policy_is_refused_with_the_routers_reason() {
    let (fx, app, _hoster) = hosting_setup().await;
    // app-1 may dial echo-h but not host it.
    let client = fx.client(&app).expect("client");
    let e = client
        .listen("echo-h", ListenOptions::default())
        .await
        .expect_err("no bind policy");
    match &e {
        HostError::Refused { service, refusals } => {
            assert_eq!(service, "echo-h");
            assert_eq!(refusals.len(), 1, "{refusals:?}");
            assert_eq!(
                refusals[0].1,
                darkport_proto::msg::DialStatus::NotAuthorized,
                "{refusals:?}"
            );
        }
        other => panic!("expected Refused, got {other}"),
    }
}

/// Self-healing: a router that stops and starts again on the same address
/// gets the terminator back with no action from the hoster, within a few
/// seconds of listening again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restart_gets_the_terminator_back_by_itself() {
    let (mut fx, app, hoster) = hosting_setup().await;
    let router_2 = fx
        .enroll("router-2", Kind::Router, &[])
        .await
        .expect("router-2");
    let quick =
        |c: &mut darkport_edge_router::RouterConfig| c.grace_period = Duration::from_secs(1);
    let (addr, stop, handle) = fx
        .start_router_stoppable(&router_2, quick)
        .await
        .expect("router-2 up");
    let only = |id: &std::path::Path| {
        std::sync::Arc::new(
            edge_client::Client::from_identity_file(
                id,
                edge_client::ClientOptions {
                    routers: vec![addr.to_string()],
                    ..darkport_tests::client_options()
                },
            )
            .expect("client"),
        )
    };
    let host_client = only(&hoster);
    let listener = std::sync::Arc::new(
        host_client
            .listen("echo-h", ListenOptions::default())
            .await
            .expect("listen"),
    );
    let serving = {
        let listener = listener.clone();
        tokio::spawn(async move {
            while let Ok(a) = listener.accept().await {
                let mut s = a.stream;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        })
    };
    let data = payload(10_000, 3);
    let client = only(&app);
    assert_eq!(echo_through(&client, "echo-h", &data).await, data);

    // Stop router-2 (it drains: the host stream ends) and start it again.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("router-2 stops")
        .expect("router task");
    // Its QUIC endpoint lets go of the UDP port once its last connection
    // has closed, which may take a moment after the task ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (_again, _h) = loop {
        match run_router_at(&fx.data_dir, &router_2, addr, quick, std::future::pending()).await {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("router-2 again: {e}"),
        }
    };
    let back = std::time::Instant::now();
    poll_until(
        "the terminator on the restarted router",
        Duration::from_secs(10),
        || {
            let listener = listener.clone();
            async move {
                listener.routers().iter().any(|r| {
                    r.verdicts
                        .iter()
                        .any(|v| v.status == darkport_proto::msg::DialStatus::Ok)
                })
            }
        },
    )
    .await
    .expect("re-registered");
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "re-registered after {took:?}"
    );
    let client = only(&app);
    assert_eq!(echo_through(&client, "echo-h", &data).await, data);
    serving.abort();
}
