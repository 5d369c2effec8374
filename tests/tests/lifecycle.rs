//! Lifecycle: a router that is told to stop drains. New dials are refused
//! with `Draining` and go to another router at once; streams in flight go
//! on until they end or the grace period is over.

use std::time::Duration;

use darkport_proto::identity::Kind;
use darkport_tests::{assert_eventually, echo_server, Fixture};
use edge_client::{Client, ClientOptions, DialError, DialStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo(s: &mut DialStream, what: &[u8]) -> std::io::Result<()> {
    s.write_all(what).await?;
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back).await?;
    assert_eq!(back, what);
    Ok(())
}

fn pinned(app: &std::path::Path, router: std::net::SocketAddr) -> Client {
    Client::from_identity_file(
        app,
        ClientOptions {
            routers: vec![router.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client")
}

/// A fixture with an echo service open to all, a second router that stops
/// on demand with grace period `grace`, and a client identity.
async fn setup(
    grace: Duration,
) -> (
    Fixture,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    std::path::PathBuf,
) {
    let mut fx = Fixture::start().await.expect("fixture");
    let echo_addr = echo_server().await.expect("echo");
    fx.service("echo", echo_addr).await.expect("service");
    fx.policy("all", &["#all"], &["#all"])
        .await
        .expect("policy");
    let r2 = fx
        .enroll("router-2", Kind::Router, &[])
        .await
        .expect("enroll");
    let (r2_addr, stop, stopped) = fx
        .start_router_stoppable(&r2, |c| c.grace_period = grace)
        .await
        .expect("router-2");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    (fx, r2_addr, stop, stopped, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_router_drains_new_dials_away_and_lets_streams_finish() {
    let (fx, r2_addr, stop, stopped, app) = setup(Duration::from_secs(20)).await;
    let on_r2 = pinned(&app, r2_addr);
    let both = Client::from_identity_file(
        &app,
        ClientOptions {
            routers: vec![r2_addr.to_string(), fx.router_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let mut live = on_r2.dial("echo").await.expect("a stream through router-2");
    echo(&mut live, b"before").await.expect("echo");
    assert_eventually!(
        {
            let _ = both.dial("echo").await;
            both.connections().len() == 2
        },
        Duration::from_secs(5),
        "the client connects to both routers"
    );

    let _ = stop.send(());
    // New dials: answered Draining by router-2, carried by router-1.
    for _ in 0..5 {
        let mut s = both.dial("echo").await.expect("a new dial goes elsewhere");
        echo(&mut s, b"new").await.expect("echo");
    }
    match on_r2.dial("echo").await {
        Err(DialError::Draining(m)) => assert!(m.contains("shutting down"), "{m}"),
        Err(DialError::Router { .. }) => {} // the connection may already be gone
        other => panic!("a dial to a draining router is refused, got {other:?}"),
    }
    // The stream in flight goes on.
    for _ in 0..5 {
        echo(&mut live, b"during")
            .await
            .expect("the old stream still carries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!stopped.is_finished(), "the router waits for its stream");
    live.shutdown().await.expect("finish");
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await.expect("clean end");
    drop(live);
    // With no stream left, it stops long before the 20 s grace period.
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("the router stops once its streams are done")
        .expect("router task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_still_open_after_the_grace_period_are_reset() {
    let (_fx, r2_addr, stop, stopped, app) = setup(Duration::from_secs(1)).await;
    let client = pinned(&app, r2_addr);
    let mut live = client.dial("echo").await.expect("dial");
    echo(&mut live, b"x").await.expect("echo");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the router stops after its grace period")
        .expect("router task");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), live.read_to_end(&mut rest))
        .await
        .expect("the stream ends");
    assert!(
        ended.is_err(),
        "the app sees a reset, not a clean end: {ended:?}"
    );
}
