//! Operational logs: JSON lines, and the router's access line per stream.

use std::time::Duration;

use darkport_proto::identity::Kind;
use darkport_tests::{
    assert_eventually, controller_process_with_echo, enroll_at, free_udp_addr, wait_router_online,
    Node,
};
use edge_client::{Client, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_writes_one_json_access_line_per_stream() {
    let (dir, dd, _, _ctl) = controller_process_with_echo(NODE).await;
    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router");
    let addr = free_udp_addr().expect("addr");
    let log = dir.path().join("router.log");
    let _router = Node::spawn_logged(
        NODE,
        "router",
        &router_id,
        addr,
        &[
            ("DARKPORT_LOG_FORMAT", "json"),
            ("DARKPORT_LOG_LEVEL", "info"),
        ],
        &log,
    )
    .expect("router");
    wait_router_online(&dd, addr, Duration::from_secs(10))
        .await
        .expect("online");
    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("app");
    let client = Client::from_identity_file(
        &app,
        ClientOptions {
            routers: vec![addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let mut s = client.dial("echo").await.expect("dial");
    s.write_all(b"twelve bytes").await.expect("write");
    s.shutdown().await.expect("finish");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("echo");
    assert_eq!(back, b"twelve bytes");

    let access = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "stream")
            .cloned()
    };
    assert_eventually!(
        access(&json_lines(&log)).is_some(),
        Duration::from_secs(5),
        "no access line in {}",
        log.display()
    );
    let lines = json_lines(&log);
    let line = access(&lines).expect("access line");
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO");
    assert_eq!(f["identity"], "app-1");
    assert_eq!(f["service"], "echo");
    assert_eq!(f["router"], "router-1");
    assert_eq!(f["bytes_to_service"], 12);
    assert_eq!(f["bytes_to_client"], 12);
    assert_eq!(f["ended"], "clean");
    assert!(f["duration_ms"].is_u64(), "{line}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == "stream")
            .count(),
        1,
        "one access line per stream"
    );
    // No terminal colour codes in a file.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a non-terminal log"
    );
}
