//! The README flow with the real binaries, as an operator types it, on
//! IPv6 loopback: init, run, identities, enrollment, service, policy,
//! forward, explain, revoke. (Issue 9: `identity list` against an
//! `[::1]` controller used to fail with "invalid remote address".)

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use darkport_tests::ops::{free_tcp_addr, workspace_bin, Proc};
use darkport_tests::{assert_eventually, echo_server, payload, roundtrip, sha256};

fn free_udp6() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("[::1]:0")
        .and_then(|s| s.local_addr())
        .expect("a [::1] port")
}

/// Runs a CLI command in `dir`; its output.
fn cli(dir: &std::path::Path, bin: &str, args: &[&str]) -> Output {
    Command::new(workspace_bin(bin))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run")
}

fn ok(dir: &std::path::Path, bin: &str, args: &[&str]) -> String {
    let out = cli(dir, bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_flow_with_the_binaries_on_ipv6() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        let msg = "SKIPPED: no IPv6 loopback ([::1]) on this machine";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
        return;
    }
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path();
    let ctl_addr = free_udp6().to_string();
    ok(
        dir,
        "darkport-controller",
        &["init", "--data-dir", "./ctl", "--advertise", &ctl_addr],
    );
    let _controller = Proc::start(
        "darkport-controller",
        &[
            "run",
            "--data-dir",
            dir.join("ctl").to_str().expect("utf-8"),
        ],
        &dir.join("controller.log"),
    )
    .expect("controller");
    // The reproduction: an identity list against [::1].
    assert_eventually!(
        cli(
            dir,
            "darkport-controller",
            &["identity", "list", "--data-dir", "./ctl"]
        )
        .status
        .success(),
        Duration::from_secs(10),
        "identity list over IPv6"
    );
    let listed = ok(
        dir,
        "darkport-controller",
        &["identity", "list", "--json", "--data-dir", "./ctl"],
    );
    let v: serde_json::Value = serde_json::from_str(&listed).expect("--json is JSON");
    assert!(v.as_array().is_some_and(|a| !a.is_empty()), "{listed}");

    let echo = echo_server().await.expect("echo");
    fn with_ctl<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [args, &["--data-dir", "./ctl"][..]].concat()
    }
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&[
            "identity",
            "create",
            "router-1",
            "--kind",
            "router",
            "--token-out",
            "router-1.token",
        ]),
    );
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&[
            "identity",
            "create",
            "app-1",
            "--role",
            "log-writers",
            "--token-out",
            "app-1.token",
        ]),
    );
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&["service", "create", "echo", "--address", &echo.to_string()]),
    );

    // A fluent-forward service: a shared key readable by others is refused;
    // a 0600 one is taken and never listed back; `service update` switches
    // the protocol; bad tag patterns are refused, naming the pattern.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("fluentd.key");
    std::fs::write(&key, "s3cret\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let args = with_ctl(&[
        "service",
        "create",
        "logs",
        "--address",
        "127.0.0.1:24224",
        "--protocol",
        "fluent-forward",
        "--shared-key-file",
        "fluentd.key",
    ]);
    let refused = cli(dir, "darkport-controller", &args);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("chmod 600"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ok(dir, "darkport-controller", &args);
    let listed = ok(dir, "darkport-controller", &with_ctl(&["service", "list"]));
    assert!(listed.contains("fluent-forward"), "{listed}");
    let json = ok(
        dir,
        "darkport-controller",
        &with_ctl(&["service", "list", "--json"]),
    );
    assert!(!json.contains("s3cret") && json.contains("(set)"), "{json}");
    // One fluent-forward flag changes that setting and keeps the others,
    // the shared key included.
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&["service", "update", "logs", "--event-time", "keep"]),
    );
    let json = ok(
        dir,
        "darkport-controller",
        &with_ctl(&["service", "list", "--json"]),
    );
    assert!(
        json.contains("\"Keep\"") && json.contains("\"shared_key\": \"(set)\""),
        "{json}"
    );
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&["service", "update", "logs", "--protocol", "tcp"]),
    );
    let listed = ok(dir, "darkport-controller", &with_ctl(&["service", "list"]));
    assert!(!listed.contains("fluent-forward"), "{listed}");
    let bad = cli(
        dir,
        "darkport-controller",
        &with_ctl(&[
            "policy",
            "create",
            "bad",
            "--service-roles",
            "logs",
            "--identity-roles",
            "#all",
            "--tags",
            "app.{web",
        ]),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("app.{web"));
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&[
            "policy",
            "create",
            "writers",
            "--service-roles",
            "echo",
            "--identity-roles",
            "#log-writers",
        ]),
    );
    ok(
        dir,
        "darkport-edge-router",
        &[
            "enroll",
            "--token",
            "router-1.token",
            "--identity",
            "router-1.id",
        ],
    );
    ok(
        dir,
        "darkport-edge-client",
        &["enroll", "--token", "app-1.token", "--identity", "app-1.id"],
    );

    // Explain: ALLOWED exits 0, DENIED exits 1.
    let allowed = ok(
        dir,
        "darkport-controller",
        &with_ctl(&[
            "policy",
            "explain",
            "--client",
            "app-1",
            "--service",
            "echo",
        ]),
    );
    assert!(allowed.starts_with("ALLOWED"), "{allowed}");
    let denied = cli(
        dir,
        "darkport-controller",
        &with_ctl(&[
            "policy",
            "explain",
            "--client",
            "app-1",
            "--service",
            "nope",
        ]),
    );
    assert_eq!(denied.status.code(), Some(1), "DENIED exits 1");
    assert!(String::from_utf8_lossy(&denied.stdout).starts_with("DENIED"));

    let router_addr = free_udp6().to_string();
    let router = Proc::start(
        "darkport-edge-router",
        &[
            "run",
            "--identity",
            dir.join("router-1.id").to_str().expect("utf-8"),
            "--listen",
            &router_addr,
        ],
        &dir.join("router.log"),
    )
    .expect("router");
    let forward = free_tcp_addr().expect("forward");
    let client = Proc::start(
        "darkport-edge-client",
        &[
            "run",
            "--identity",
            dir.join("app-1.id").to_str().expect("utf-8"),
            "--forward",
            &format!("{forward}=echo"),
        ],
        &dir.join("client.log"),
    )
    .expect("client");
    let data = payload(256 * 1024, 11);
    let mut back = None;
    for _ in 0..100 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(forward).await {
            if let Ok(b) = roundtrip(tcp, &data).await {
                if b.len() == data.len() {
                    back = Some(b);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = back.unwrap_or_else(|| {
        panic!(
            "the forward carries no bytes over IPv6; router log:\n{}\nclient log:\n{}",
            router.log_text(),
            client.log_text()
        )
    });
    assert_eq!(sha256(&back), sha256(&data));

    // A live `dial` cut by a revocation says who cut it and why.
    let mut dial = Command::new(workspace_bin("darkport-edge-client"))
        .args([
            "dial",
            "echo",
            "--identity",
            "app-1.id",
            "--router",
            &router_addr,
        ])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dial");
    let mut stdin = dial.stdin.take().expect("stdin");
    {
        use std::io::{Read, Write};
        stdin.write_all(b"ping\n").expect("write");
        let mut stdout = dial.stdout.take().expect("stdout");
        let mut got = [0u8; 5];
        stdout.read_exact(&mut got).expect("echo through dial");
        assert_eq!(&got, b"ping\n");
    }
    ok(
        dir,
        "darkport-controller",
        &with_ctl(&["identity", "revoke", "app-1"]),
    );
    // It ends by itself, with stdin still open.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dial.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = dial.kill();
            panic!("dial did not end after its stream was cut");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(stdin);
    let mut err = String::new();
    {
        use std::io::Read;
        dial.stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
    }
    assert!(!status.success(), "a cut dial fails");
    // The connection close ("the router closed the connection: identity
    // app-1 ...") or the stream cut may arrive first; both name the router
    // and the identity.
    assert!(
        err.contains("the router closed the connection")
            || err.contains("the router cut the stream"),
        "{err}"
    );
    assert!(err.contains("app-1"), "{err}");
    assert!(!err.contains("service side reset"), "{err}");
}
