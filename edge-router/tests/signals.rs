//! The router binary and its signals: it tells systemd when it is ready
//! and when it stops; SIGHUP never ends it; SIGTERM ends it cleanly.

use std::time::{Duration, Instant};

use darkport_controller::ca::Ca;
use darkport_proto::identity::{IdentityName, Kind};
use darkport_transport::identity::{IdentityFile, IDENTITY_FILE_VERSION};

const ROUTER: &str = env!("CARGO_BIN_EXE_darkport-edge-router");

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn sighup_does_not_end_the_router_and_sigterm_ends_it_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, _) = Ca::generate().expect("ca");
    let name = IdentityName::new("router-1").expect("name");
    let (cert_pem, key_pem, _) = ca
        .issue_local(Kind::Router, &name, Duration::from_secs(3600))
        .expect("issue");
    let path = dir.path().join("router-1.id");
    IdentityFile {
        version: IDENTITY_FILE_VERSION,
        name,
        kind: Kind::Router,
        // Nothing listens there: the router serves (with no policy yet)
        // and keeps retrying its controller.
        controller: "127.0.0.1:9".into(),
        key_pem,
        cert_pem,
        ca_pem: ca.cert_pem.clone(),
    }
    .save(&path, false)
    .expect("identity");
    // systemd's notification socket, played by the test.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut child = std::process::Command::new(ROUTER)
        .args(["run", "--identity"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--advertise", "127.0.0.1:1"])
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG") // the default level logs the reload line
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("router");
    // Its log, line by line, read on a thread (the pipe must never fill).
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = log_tx.send(line);
        }
    });
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("a readiness notification");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(child.try_wait().expect("wait").is_none(), "the router runs");
    signal(child.id(), "-HUP");
    // The reload line says the signal was handled; only then is "still
    // running" a finding.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains("SIGHUP: settings reloaded") => break,
            Ok(_) => {}
            Err(e) => panic!("no \"SIGHUP: settings reloaded\" line within 10 s: {e}"),
        }
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP must not end the router"
    );
    signal(child.id(), "-TERM");
    let n = notify.recv(&mut buf).expect("a stopping notification");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGTERM ends the router");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}
