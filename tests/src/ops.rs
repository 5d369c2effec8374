//! Helpers for tests of the real binaries as an operator runs them:
//! processes with logs, their metrics endpoints, and a real Prometheus
//! text-format parser (the Prometheus project's Python client).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A binary of this workspace, beside the test executable's directory.
/// `cargo test` does not build other packages' binaries; scripts/test.sh
/// runs `cargo build --workspace --bins` first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/debug/deps/TEST -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A real binary running with its stderr in a log file; SIGKILLed when
/// dropped, unless it ended.
pub struct Proc {
    child: std::process::Child,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin` with `args`, its stderr in `log`.
    pub fn start(bin: &str, args: &[&str], log: &Path) -> Result<Proc> {
        Proc::spawn(
            std::process::Command::new(workspace_bin(bin)),
            bin,
            args,
            log,
        )
    }

    /// Starts `bin` with `args` inside network namespace `netns` (`ip
    /// netns exec` execs it, so the process is the binary itself).
    pub fn start_in(netns: &str, bin: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(workspace_bin(bin));
        Proc::spawn(cmd, bin, args, log)
    }

    fn spawn(mut cmd: std::process::Command, bin: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let child = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Sends a signal (`"-HUP"`, `"-TERM"`).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {}", self.child.id());
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no clean-up of any kind) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for it to end; its exit status.
    pub async fn wait(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("still running after {within:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of its metrics endpoint, from its JSON log (it listens
    /// on port 0).
    pub async fn metrics_addr(&self) -> Result<SocketAddr> {
        self.logged_addr("serving /metrics, /ready and /live", "addr")
            .await
    }

    /// An address its JSON log gave in `field` of the line saying
    /// `message` (waits up to 15 s for it).
    pub async fn logged_addr(&self, message: &str, field: &str) -> Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            for line in self.log_text().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["fields"]["message"] == message {
                    if let Some(a) = v["fields"][field].as_str() {
                        return Ok(a.parse()?);
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no {field} of {message:?} in the log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_string()))
}

/// One sample: metric name (as exposed), labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Name, with its `_total`/`_bucket`/... suffix.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses an OpenMetrics exposition with the Prometheus project's own
/// parser (PyPI `prometheus-client`, installed by scripts/test.sh). Fails
/// on anything that parser refuses.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>> {
    const PARSE: &str = "import sys, json\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
print(json.dumps([[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]))";
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("python3")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Prometheus parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: Vec<(String, BTreeMap<String, String>, f64)> = serde_json::from_slice(&out.stdout)?;
    Ok(rows
        .into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect())
}

/// Whether the Python Prometheus parser is installed; if not, says so
/// loudly, and fails under CI=true.
pub fn have_prometheus_parser() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let msg = "SKIPPED: python3 prometheus_client is not installed (pip install -r tests/interop/python/requirements.txt)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
    }
    ok
}

/// Scrapes and parses `/metrics` at `addr`.
pub async fn scrape(addr: SocketAddr) -> Result<Vec<Sample>> {
    let (status, body) = http_get(addr, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    parse_metrics(&body)
}

/// The value of the sample `name` whose labels include `labels`; the sum
/// if several match, `None` if none does.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// A free TCP port on 127.0.0.1, chosen by the OS (bound, then released).
pub fn free_tcp_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
