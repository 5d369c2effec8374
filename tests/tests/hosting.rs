//! Hosting through the SDK: `Client::listen` and `Client::host` against a
//! real controller and router (the wire rules themselves are
//! hosting_wire.rs's).

use std::net::SocketAddr;
use std::time::Duration;

use darkport_proto::identity::Kind;
use darkport_tests::{n, payload, sha256, Fixture};
use edge_client::host::{HostError, ListenOptions, RouterState};
use edge_client::Precedence;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A service with a dead address (only a terminator can carry a dial), a
/// dial policy for `#writers` and a bind policy for `#hosters`.
async fn setup() -> (Fixture, std::path::PathBuf, std::path::PathBuf) {
    let fx = Fixture::start().await.expect("fixture");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    fx.service("echo-h", dead).await.expect("service");
    fx.policy("dialers", &["echo-h"], &["#writers"])
        .await
        .expect("dial policy");
    fx.bind_policy("hosts", &["echo-h"], &["#hosters"])
        .await
        .expect("bind policy");
    let app = fx
        .enroll("app-1", Kind::Client, &["writers"])
        .await
        .expect("app");
    let hoster = fx
        .enroll("host-1", Kind::Client, &["hosters"])
        .await
        .expect("hoster");
    (fx, app, hoster)
}

async fn echo_through(client: &edge_client::Client, service: &str, data: &[u8]) -> Vec<u8> {
    let mut s = client.dial(service).await.expect("dial");
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let recv = async {
        r.read_to_end(&mut back).await.expect("read");
    };
    tokio::join!(send, recv);
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_serves_byte_exact_with_the_callers_identity_then_close_drains() {
    let (fx, app, hoster) = setup().await;
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
    let (fx, app, _hoster) = setup().await;
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
