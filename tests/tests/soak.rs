//! The load and fault suite, small: 100 connections × 1 MiB through a real
//! tunnel with every component in its own process, then kill -9 of a
//! router, the controller and the edge client during transfers. The full
//! sizes run in `darkport-soak` (docs/benchmarks.md).

use std::time::Duration;

use darkport_tests::soak::{fault_matrix, load, soak, Cluster};

const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_of_a_mebibyte_lose_nothing() {
    darkport_tests::init_logging();
    let cluster = Cluster::start(NODE).await.expect("cluster");
    let r = load(cluster.forward, 100, 1024 * 1024, 100, 1).await;
    assert!(
        r.violations.is_empty(),
        "lost or corrupted: {:?}",
        r.violations
    );
    assert_eq!(r.reset, 0, "no connection fails without a fault");
    assert_eq!(r.exact, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_component_never_truncates_silently_and_new_connections_work_within_2_s() {
    darkport_tests::init_logging();
    let mut cluster = Cluster::start(NODE).await.expect("cluster");
    let steps = fault_matrix(&mut cluster, 256 * 1024, 8, Duration::from_millis(500))
        .await
        .expect("matrix");
    for s in &steps {
        eprintln!(
            "kill -9 {}: {} exact, {} reset, after kill {:?}, after restart {:?}",
            s.what, s.load.exact, s.load.reset, s.recovered_after_kill, s.recovered_after_restart
        );
        assert!(
            s.load.violations.is_empty(),
            "kill -9 {}: {:?}",
            s.what,
            s.load.violations
        );
        assert!(s.load.exact > 0, "kill -9 {}: transfers went on", s.what);
        if s.what != "edge client" {
            let after = s.recovered_after_kill.expect("recovered after the kill");
            assert!(
                after <= Duration::from_secs(2),
                "kill -9 {}: {after:?}",
                s.what
            );
        }
        let after = s
            .recovered_after_restart
            .expect("recovered after the restart");
        assert!(
            after <= Duration::from_secs(2),
            "restart of {}: {after:?}",
            s.what
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_keeps_every_byte() {
    darkport_tests::init_logging();
    let cluster = Cluster::start(NODE).await.expect("cluster");
    let (r, routers, client) = soak(
        &cluster,
        Duration::from_secs(6),
        Duration::from_millis(500),
        256 * 1024,
        8,
    )
    .await;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.reset, 0);
    assert!(r.exact > 0);
    assert_eq!(routers.len(), 2, "both routers sampled");
    assert!(
        routers
            .iter()
            .all(|r| !r.points.is_empty() && r.points.iter().all(|p| p.1 > 0 && p.2 > 0)),
        "router samples"
    );
    assert!(
        client.points.iter().all(|p| p.1 > 0 && p.2 > 0),
        "client samples"
    );
}
