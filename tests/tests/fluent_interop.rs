//! Interop: Fluentd clients that no one here wrote (PyPI `fluent-logger`,
//! npm `fluent-logger` and `@fluent-org/logger`, Debian's
//! fluent-logger-golang) send records through a real controller, router
//! and edge client forwarder to a forward-protocol receiver registered as
//! the private fluent-forward service `fluentd`: every record must arrive
//! stamped with the sender's verified identity, and a tag outside the
//! policy's `interop.**` must not arrive. Plus the Rust SDK dialing
//! `fluentd` directly.
//!
//! The third-party clients must be installed:
//!
//! ```text
//! pip install fluent-logger
//! (cd tests/interop/node && npm ci)
//! ```
//!
//! Without them these tests print `SKIPPED: ...` and pass, unless `CI` is
//! set, where they fail.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use darkport_proto::identity::Kind;
use darkport_proto::policy::{AppHandshake, FluentSettings, ServiceProtocol};
use darkport_tests::fluent::{read_value, FluentReceiver, Record};
use darkport_tests::{assert_eventually, Fixture};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records each client sends.
const COUNT: usize = 200;

/// Longest a client script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long records get to arrive after the client is done.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(20);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Whether to go on: `true` if the client is installed; otherwise fails
/// under CI and skips (loudly) elsewhere.
fn client_available(available: bool, what: &str, install: &str) -> bool {
    if available {
        return true;
    }
    let msg = format!("{what} is not installed; install it with: {install}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so a missing interop client is a failure)");
    }
    // Straight to stderr: the test harness captures `eprintln!`, and a skip
    // must be seen.
    let bar = "*".repeat(72);
    let notice = format!("\n{bar}\nSKIPPED: {msg}\n{bar}\n\n");
    let _ = std::io::stderr().write_all(notice.as_bytes());
    false
}

async fn succeeds(program: &str, args: &[&str]) -> bool {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

async fn python_available() -> bool {
    let ok = succeeds("python3", &["-c", "import fluent.sender"]).await;
    client_available(
        ok,
        "PyPI fluent-logger (for python3)",
        "pip install fluent-logger",
    )
}

async fn node_available() -> bool {
    let dir = interop_dir().join("node");
    let ok =
        dir.join("node_modules/fluent-logger").is_dir() && succeeds("node", &["--version"]).await;
    client_available(
        ok,
        "npm fluent-logger (and node)",
        &format!("cd {} && npm ci", dir.display()),
    )
}

async fn fluent_org_available() -> bool {
    let dir = interop_dir().join("node");
    let ok = dir.join("node_modules/@fluent-org/logger").is_dir()
        && succeeds("node", &["--version"]).await;
    client_available(
        ok,
        "npm @fluent-org/logger (and node)",
        &format!("cd {} && npm ci", dir.display()),
    )
}

/// Debian's fluent-logger-golang source, built in GOPATH mode (offline).
const GO_FLUENT: &str = "/usr/share/gocode/src/github.com/fluent/fluent-logger-golang";

/// Builds tests/interop/go into `dir`; `None` (after a loud skip) if Go or
/// the library is missing.
async fn go_client(dir: &Path) -> Option<PathBuf> {
    let ok = Path::new(GO_FLUENT).is_dir() && succeeds("go", &["version"]).await;
    if !client_available(
        ok,
        "Go with fluent-logger-golang",
        "apt-get install golang-go golang-github-fluent-fluent-logger-golang-dev",
    ) {
        return None;
    }
    let out = dir.join("send-go");
    let status = tokio::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(interop_dir().join("go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOPROXY", "off")
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .await
        .expect("go build");
    assert!(status.success(), "building tests/interop/go failed");
    Some(out)
}

/// Runs a client script that must fail; returns its stderr.
async fn run_failing_script(program: &str, args: &[String]) -> String {
    run_failing_script_with(program, args, &[]).await
}

/// [`run_failing_script`] with environment variables.
async fn run_failing_script_with(program: &str, args: &[String], env: &[(&str, &str)]) -> String {
    let out = tokio::time::timeout(
        SCRIPT_TIMEOUT,
        tokio::process::Command::new(program)
            .envs(env.iter().copied())
            .args(args)
            .current_dir(interop_dir())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client gave up in time")
    .expect("run");
    assert!(
        !out.status.success(),
        "`{program}` succeeded, but it must be refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A receiver registered as service `fluentd`, a client `app-1` with role
/// `log-writers` allowed to dial it, and a forwarder to it.
struct Setup {
    fx: Fixture,
    receiver: FluentReceiver,
    identity: PathBuf,
    forward: SocketAddr,
}

async fn setup() -> Setup {
    setup_with(FluentSettings::default()).await
}

async fn setup_with(settings: FluentSettings) -> Setup {
    let receiver = FluentReceiver::start().await.expect("fluent receiver");
    let mut fx = Fixture::start().await.expect("fixture");
    fx.service_with(
        "fluentd",
        receiver.addr,
        ServiceProtocol::FluentForward(settings),
    )
    .await
    .expect("service");
    fx.policy_with_tags(
        "fluentd-writers",
        &["fluentd"],
        &["#log-writers"],
        &["interop.**"],
    )
    .await
    .expect("policy");
    let identity = fx
        .enroll("app-1", Kind::Client, &["log-writers"])
        .await
        .expect("enroll");
    let client = fx.client(&identity).expect("client");
    let forward = fx.forward(client, "fluentd").await.expect("forwarder");
    Setup {
        fx,
        receiver,
        identity,
        forward,
    }
}

/// Runs a client script to completion; panics with its output if it fails
/// or runs too long.
async fn run_script(program: &str, args: &[String]) {
    run_script_with(program, args, &[]).await
}

/// [`run_script`] with environment variables.
async fn run_script_with(program: &str, args: &[String], env: &[(&str, &str)]) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.envs(env.iter().copied());
    cmd.args(args)
        .current_dir(interop_dir())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`{shown}` still running after {SCRIPT_TIMEOUT:?}; killed"))
        .unwrap_or_else(|e| panic!("cannot run `{shown}`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{shown}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{}", stdout.trim_end());
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn field<'a>(record: &'a Value, key: &str) -> Option<&'a Value> {
    record
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Compares what arrived under `tag` with `seq` 0..COUNT, each exactly
/// once, with a `msg` and a plausible time. `Err` says what is off.
fn check_arrivals(records: &[Record], tag: &str) -> Result<(), String> {
    let ours: Vec<&Record> = records.iter().filter(|r| r.tag == tag).collect();
    let mut seqs = BTreeSet::new();
    let now = now();
    for r in &ours {
        let seq = field(&r.record, "seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("record without a numeric seq: {r:?}"))?;
        if !seqs.insert(seq) {
            return Err(format!("seq {seq} arrived twice"));
        }
        if field(&r.record, "msg").and_then(Value::as_str).is_none() {
            return Err(format!("record without a msg: {r:?}"));
        }
        if field(&r.record, "darkport_identity").and_then(Value::as_str) != Some("app-1") {
            return Err(format!("record not stamped darkport_identity=app-1: {r:?}"));
        }
        if r.time.abs_diff(now) > 600 {
            return Err(format!("time {} is not near now ({now}): {r:?}", r.time));
        }
    }
    let expected: BTreeSet<u64> = (0..COUNT as u64).collect();
    if seqs != expected {
        let missing: Vec<_> = expected.difference(&seqs).take(10).collect();
        return Err(format!(
            "{} of {COUNT} records with tag {tag} arrived (out of {} in total); first missing seqs: {missing:?}",
            ours.len(),
            records.len()
        ));
    }
    Ok(())
}

async fn expect_all_records(receiver: &FluentReceiver, tag: &str) {
    assert_eventually!(
        check_arrivals(&receiver.records(), tag).is_ok(),
        ARRIVAL_TIMEOUT,
        "records missing after {ARRIVAL_TIMEOUT:?}: {}",
        check_arrivals(&receiver.records(), tag)
            .err()
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fluent_logger_through_darkport() {
    if !python_available().await {
        return;
    }
    let s = setup().await;
    let script = interop_dir().join("python/send.py");
    run_script(
        "python3",
        &[
            script.display().to_string(),
            "127.0.0.1".into(),
            s.forward.port().to_string(),
            "interop.python".into(),
            COUNT.to_string(),
        ],
    )
    .await;
    expect_all_records(&s.receiver, "interop.python").await;
    // fluent-logger for Python never asks for acks.
    assert_eq!(s.receiver.acks_sent(), 0);
}

async fn node_through_darkport(mode: &str, tag: &str) -> Setup {
    let s = setup().await;
    let script = interop_dir().join("node/send.js");
    run_script(
        "node",
        &[
            script.display().to_string(),
            "127.0.0.1".into(),
            s.forward.port().to_string(),
            tag.into(),
            COUNT.to_string(),
            mode.into(),
        ],
    )
    .await;
    // The script only succeeds once every record was acked, and the
    // receiver acks only after taking the records, so they are all in.
    if let Err(e) = check_arrivals(&s.receiver.records(), tag) {
        panic!("the client saw every ack, but: {e}");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fluent_logger_with_acks_through_darkport() {
    if !node_available().await {
        return;
    }
    let s = node_through_darkport("Message", "interop.node").await;
    // Message mode: one chunk, and so one ack, per record.
    assert_eq!(s.receiver.acks_sent(), COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fluent_logger_compressed_packed_forward_through_darkport() {
    if !node_available().await {
        return;
    }
    let s = node_through_darkport("CompressedPackedForward", "interop.node.gzip").await;
    // Records are batched into gzip chunks; each chunk is acked.
    let acks = s.receiver.acks_sent();
    assert!(
        (1..=COUNT).contains(&acks),
        "expected between 1 and {COUNT} acks, got {acks}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_dial_gets_fluentd_ack() {
    let s = setup().await;
    let client = s.fx.client(&s.identity).expect("client");
    let mut stream = client.dial("fluentd").await.expect("dial fluentd");

    let chunk = Value::from("ZGFya3BvcnQtc2RrLXRlc3Q=");
    let record = Value::Map(vec![
        (Value::from("seq"), Value::from(0)),
        (Value::from("msg"), Value::from("hello from the Rust SDK")),
    ]);
    let message = Value::Array(vec![
        Value::from("interop.sdk"),
        Value::from(now()),
        record.clone(),
        Value::Map(vec![(Value::from("chunk"), chunk.clone())]),
    ]);
    let mut wire = Vec::new();
    rmpv::encode::write_value(&mut wire, &message).expect("encode");
    stream.write_all(&wire).await.expect("write");

    let ack = read_value(&mut stream, Duration::from_secs(10))
        .await
        .expect("ack within 10 s")
        .expect("an ack");
    assert_eq!(ack, Value::Map(vec![(Value::from("ack"), chunk)]));
    assert_eq!(s.receiver.acks_sent(), 1);

    stream.shutdown().await.expect("half-close");
    // The receiver answers the half-close by closing its side.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("service closed within 10 s")
        .expect("clean end of stream");
    assert!(rest.is_empty(), "unexpected bytes after the ack: {rest:?}");

    let got: Vec<Record> = s
        .receiver
        .records()
        .into_iter()
        .filter(|r| r.tag == "interop.sdk")
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let Value::Map(mut stamped) = record else {
        panic!("a map")
    };
    stamped.push((Value::from("darkport_identity"), Value::from("app-1")));
    assert_eq!(got[0].record, Value::Map(stamped));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluent_org_logger_with_acks_through_darkport() {
    if !fluent_org_available().await {
        return;
    }
    let s = setup().await;
    let script = interop_dir().join("node/send-org.js");
    run_script(
        "node",
        &[
            script.display().to_string(),
            "127.0.0.1".into(),
            s.forward.port().to_string(),
            "interop.fluent-org".into(),
            COUNT.to_string(),
        ],
    )
    .await;
    if let Err(e) = check_arrivals(&s.receiver.records(), "interop.fluent-org") {
        panic!("the client saw every ack, but: {e}");
    }
    assert!(s.receiver.acks_sent() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_fluent_logger_with_acks_through_darkport() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(go) = go_client(dir.path()).await else {
        return;
    };
    let s = setup().await;
    run_script(
        go.to_str().expect("utf-8"),
        &[
            "127.0.0.1".into(),
            s.forward.port().to_string(),
            "interop.go".into(),
            COUNT.to_string(),
        ],
    )
    .await;
    if let Err(e) = check_arrivals(&s.receiver.records(), "interop.go") {
        panic!("the client saw every ack, but: {e}");
    }
    // Message mode with RequestAck: one ack per record.
    assert_eq!(s.receiver.acks_sent(), COUNT);
}

/// Tags outside the policy: clients that ask for acks fail (their
/// connection is closed, the denied chunk never acked); Python's, which
/// does not, keeps writing; nothing under the tag arrives either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_tags_never_arrive_and_ack_clients_fail() {
    let dir = tempfile::tempdir().expect("dir");
    let s = setup().await;
    let port = s.forward.port().to_string();
    if python_available().await {
        let script = interop_dir().join("python/send.py");
        run_script(
            "python3",
            &[
                script.display().to_string(),
                "127.0.0.1".into(),
                port.clone(),
                "audit.python".into(),
                "20".into(),
            ],
        )
        .await;
    }
    if node_available().await {
        let script = interop_dir().join("node/send.js");
        let err = run_failing_script(
            "node",
            &[
                script.display().to_string(),
                "127.0.0.1".into(),
                port.clone(),
                "audit.node".into(),
                "5".into(),
            ],
        )
        .await;
        eprintln!("node, denied: {err}");
    }
    if let Some(go) = go_client(dir.path()).await {
        let err = run_failing_script(
            go.to_str().expect("utf-8"),
            &[
                "127.0.0.1".into(),
                port.clone(),
                "audit.go".into(),
                "5".into(),
            ],
        )
        .await;
        eprintln!("go, denied: {err}");
    }
    // Allowed records still flow afterwards, on new connections.
    let client = s.fx.client(&s.identity).expect("client");
    let mut stream = client.dial("fluentd").await.expect("dial");
    let mut wire = Vec::new();
    let msg = Value::Array(vec![
        Value::from("interop.after"),
        Value::from(now()),
        Value::Map(vec![(Value::from("msg"), Value::from("allowed"))]),
    ]);
    rmpv::encode::write_value(&mut wire, &msg).expect("encode");
    stream.write_all(&wire).await.expect("write");
    stream.shutdown().await.expect("finish");
    assert_eventually!(
        s.receiver
            .records()
            .iter()
            .any(|r| r.tag == "interop.after"),
        ARRIVAL_TIMEOUT,
        "the allowed record did not arrive"
    );
    let denied: Vec<_> = s
        .receiver
        .records()
        .into_iter()
        .filter(|r| r.tag.starts_with("audit."))
        .collect();
    assert!(denied.is_empty(), "denied tags arrived: {denied:?}");
}

/// An app that keeps its own shared_key (npm fluent-logger with
/// `security`, which checks the server's PONG digest): the router answers
/// its handshake with the service's app-side key; a wrong key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fluent_logger_with_its_own_shared_key_through_darkport() {
    if !node_available().await {
        return;
    }
    let s = setup_with(FluentSettings {
        app_handshake: AppHandshake::SharedKey("app-k3y".into()),
        ..FluentSettings::default()
    })
    .await;
    let script = interop_dir().join("node/send.js");
    let args = |tag: &str, count: usize| {
        vec![
            script.display().to_string(),
            "127.0.0.1".into(),
            s.forward.port().to_string(),
            tag.to_string(),
            count.to_string(),
        ]
    };
    run_script_with(
        "node",
        &args("interop.node.secure", COUNT),
        &[("FLUENT_SHARED_KEY", "app-k3y")],
    )
    .await;
    if let Err(e) = check_arrivals(&s.receiver.records(), "interop.node.secure") {
        panic!("the client saw every ack, but: {e}");
    }
    let err = run_failing_script_with(
        "node",
        &args("interop.node.wrong-key", 5),
        &[("FLUENT_SHARED_KEY", "not-the-key")],
    )
    .await;
    eprintln!("node, wrong key: {err}");
    assert!(
        s.receiver
            .records()
            .iter()
            .all(|r| r.tag != "interop.node.wrong-key"),
        "a wrong key let records in"
    );
}
