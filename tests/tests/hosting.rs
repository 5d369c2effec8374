//! Hosting through the SDK: `Client::listen` and `Client::host` against a
//! real controller and router (the wire rules themselves are
//! hosting_wire.rs's).

use std::net::SocketAddr;
use std::time::Duration;

use darkport_tests::{echo_through, hosting_setup, n, payload, sha256};
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
