//! The load and fault suite: many connections through a real tunnel, each
//! checked by SHA-256 both ways; kill -9 of every component during
//! transfers; and a steady soak that watches memory and file descriptors.
//!
//! Every component runs as its own process (`darkport-test-node`), so it
//! can be killed with SIGKILL and measured from `/proc`. The
//! `darkport-soak` binary runs the full sizes and prints the figures;
//! `tests/tests/soak.rs` runs small ones as tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use darkport_controller::DataDir;
use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};

use crate::{controller_process_with_echo, enroll_at, poll_until, wait_router_online, Node};

/// How one tunneled connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEnd {
    /// Every byte came back, in order: the digests match.
    Exact,
    /// The app saw an error (a reset carried across, or a refused dial).
    /// Allowed while a component is killed; never silent.
    Reset(String),
    /// Bytes were lost, added or changed without an error: never allowed.
    Violation(String),
}

/// Totals over many connections.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Connections whose bytes all came back exactly.
    pub exact: u64,
    /// Connections that ended with an error the app saw.
    pub reset: u64,
    /// Silent truncations or corruptions, with what happened.
    pub violations: Vec<String>,
    /// Bytes sent (and so expected back) by the exact connections.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl LoadReport {
    fn add(&mut self, end: ConnEnd, len: u64) {
        match end {
            ConnEnd::Exact => {
                self.exact += 1;
                self.bytes += len;
            }
            ConnEnd::Reset(_) => self.reset += 1,
            ConnEnd::Violation(v) => self.violations.push(v),
        }
    }

    /// Goodput both ways, Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        (self.bytes * 2 * 8) as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Sends `len` pseudo-random bytes (from `seed`) through `addr`, an echo
/// service behind the tunnel, while reading the echo; compares SHA-256
/// and length of what went out and what came back.
pub async fn echo_conn(addr: SocketAddr, len: u64, seed: u64) -> ConnEnd {
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => return ConnEnd::Reset(format!("connect: {e}")),
    };
    let (mut r, mut w) = tcp.into_split();
    let write = async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut sent = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            sent.update(&buf[..n]);
            w.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(sent.finalize())
    };
    let read = async move {
        let mut got = sha2::Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = r.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got.update(&buf[..k]);
            n += k as u64;
        }
        Ok::<_, std::io::Error>((got.finalize(), n))
    };
    match tokio::join!(write, read) {
        (Ok(sent), Ok((got, n))) => {
            if n != len {
                ConnEnd::Violation(format!(
                    "seed {seed}: sent {len} bytes, got {n} back with a clean end"
                ))
            } else if sent != got {
                ConnEnd::Violation(format!("seed {seed}: {len} bytes came back changed"))
            } else {
                ConnEnd::Exact
            }
        }
        (Err(e), _) | (_, Err(e)) => ConnEnd::Reset(e.to_string()),
    }
}

/// `conns` connections of `len` bytes each through `addr`, `parallel` at a
/// time.
pub async fn load(
    addr: SocketAddr,
    conns: u64,
    len: u64,
    parallel: usize,
    seed: u64,
) -> LoadReport {
    let started = Instant::now();
    let mut report = LoadReport::default();
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0u64;
    while next < conns || !running.is_empty() {
        while next < conns && running.len() < parallel {
            running.spawn(echo_conn(addr, len, seed.wrapping_add(next)));
            next += 1;
        }
        if let Some(r) = running.join_next().await {
            match r {
                Ok(end) => report.add(end, len),
                Err(e) => report.violations.push(format!("task failed: {e}")),
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Connections of `len` bytes, `parallel` at a time, through `addr`, until
/// `stop` completes; returns what they saw.
pub async fn steady_load(
    addr: SocketAddr,
    len: u64,
    parallel: usize,
    seed: u64,
    stop: impl std::future::Future<Output = ()>,
) -> LoadReport {
    steady_load_counting(addr, len, parallel, seed, stop, &AtomicU64::new(0)).await
}

/// [`steady_load`], counting in `exact` each connection whose bytes all
/// came back, as it ends: for a caller to wait on the load's progress.
async fn steady_load_counting(
    addr: SocketAddr,
    len: u64,
    parallel: usize,
    seed: u64,
    stop: impl std::future::Future<Output = ()>,
    exact: &AtomicU64,
) -> LoadReport {
    let started = Instant::now();
    let mut report = LoadReport::default();
    let mut running = tokio::task::JoinSet::new();
    let mut next = seed;
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        while !stopping && running.len() < parallel {
            running.spawn(echo_conn(addr, len, next));
            next = next.wrapping_add(1);
        }
        tokio::select! {
            _ = &mut stop, if !stopping => stopping = true,
            r = running.join_next() => match r {
                Some(Ok(end)) => {
                    if end == ConnEnd::Exact {
                        exact.fetch_add(1, Ordering::Relaxed);
                    }
                    report.add(end, len);
                }
                Some(Err(e)) => report.violations.push(format!("task failed: {e}")),
                None => break,
            },
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// How long until a new connection through `addr` works (a small echo),
/// trying every 50 ms for at most `within`.
pub async fn recovery(addr: SocketAddr, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut seed = 1u64 << 40;
    while started.elapsed() < within {
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), echo_conn(addr, 4096, seed)).await;
        if matches!(attempt, Ok(ConnEnd::Exact)) {
            return Some(started.elapsed());
        }
        seed += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_tcp_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Controller, two routers and an edge client, each its own process, with
/// an echo service; the client forwards `forward` to it.
pub struct Cluster {
    node: String,
    _dir: tempfile::TempDir,
    /// The controller's data dir.
    pub data_dir: DataDir,
    /// The controller.
    pub controller: Node,
    controller_addr: SocketAddr,
    /// The routers, with their identity files.
    pub routers: Vec<(Node, PathBuf)>,
    /// The edge client.
    pub client: Node,
    client_identity: PathBuf,
    /// The client's local forward port (to the `echo` service).
    pub forward: SocketAddr,
}

impl Cluster {
    /// Starts everything with the `darkport-test-node` binary at `node`;
    /// returns once a connection through the tunnel works.
    pub async fn start(node: &str) -> Result<Cluster> {
        Cluster::start_with_routers(node, 2).await
    }

    /// [`Cluster::start`] with `routers` routers (`router-1`, …): one for
    /// a soak that measures a router under the whole load, two for
    /// failover.
    pub async fn start_with_routers(node: &str, routers: usize) -> Result<Cluster> {
        let names: Vec<String> = (1..=routers).map(|i| format!("router-{i}")).collect();
        let (dir, data_dir, controller_addr, controller) = controller_process_with_echo(node).await;
        let mut routers = Vec::new();
        for name in &names {
            let id = enroll_at(&data_dir, dir.path(), name, Kind::Router, &[]).await?;
            let addr = crate::free_udp_addr()?;
            let router = Node::spawn(node, "router", &id, addr)?;
            wait_router_online(&data_dir, addr, Duration::from_secs(10)).await?;
            routers.push((router, id));
        }
        let client_identity = enroll_at(&data_dir, dir.path(), "app-1", Kind::Client, &[]).await?;
        let forward = free_tcp_addr()?;
        let client = Node::spawn(node, "client", &client_identity, forward)?;
        let cluster = Cluster {
            node: node.to_string(),
            _dir: dir,
            data_dir,
            controller,
            controller_addr,
            routers,
            client,
            client_identity,
            forward,
        };
        if recovery(cluster.forward, Duration::from_secs(15))
            .await
            .is_none()
        {
            bail!("no connection through the tunnel within 15 s of start");
        }
        cluster.wait_all_routers().await?;
        Ok(cluster)
    }

    /// The client connects to both routers in the background: waits until
    /// both report it connected.
    async fn wait_all_routers(&self) -> Result<()> {
        let routers = self.routers.len();
        poll_until(
            &format!("the edge client to be connected to {routers} routers"),
            Duration::from_secs(15),
            || async {
                let show = AdminRequest::ShowIdentity {
                    name: crate::n("app-1"),
                };
                matches!(
                    crate::admin(&self.data_dir, show).await,
                    Ok(AdminResponse::Identity(i)) if i.connected_to.len() == routers
                )
            },
        )
        .await
    }

    /// kill -9 router `i`.
    pub fn kill_router(&mut self, i: usize) {
        self.routers[i].0.kill9();
    }

    /// Starts router `i` again on the same address and identity.
    pub fn restart_router(&mut self, i: usize) -> Result<()> {
        let (old, id) = &self.routers[i];
        let node = Node::spawn(&self.node, "router", id, old.addr)?;
        self.routers[i].0 = node;
        Ok(())
    }

    /// kill -9 the controller.
    pub fn kill_controller(&mut self) {
        self.controller.kill9();
    }

    /// Starts the controller again.
    pub fn restart_controller(&mut self) -> Result<()> {
        self.controller = Node::spawn(
            &self.node,
            "controller",
            self.data_dir.root(),
            self.controller_addr,
        )
        .context("controller")?;
        Ok(())
    }

    /// kill -9 the edge client.
    pub fn kill_client(&mut self) {
        self.client.kill9();
    }

    /// Starts the edge client again on the same forward port.
    pub fn restart_client(&mut self) -> Result<()> {
        self.client = Node::spawn(&self.node, "client", &self.client_identity, self.forward)?;
        Ok(())
    }
}

/// One step of the kill -9 matrix and what it showed.
#[derive(Debug, Clone)]
pub struct FaultStep {
    /// What was killed.
    pub what: String,
    /// Transfers during the kill and restart.
    pub load: LoadReport,
    /// Time from the kill until a new connection worked.
    pub recovered_after_kill: Option<Duration>,
    /// Time from the restart until a new connection worked.
    pub recovered_after_restart: Option<Duration>,
}

/// Kills each component in turn (router-1, the controller, the edge
/// client) while `parallel` connections of `len` bytes run, restarts it
/// after `down`, and records what the connections saw and how soon new
/// ones worked.
pub async fn fault_matrix(
    cluster: &mut Cluster,
    len: u64,
    parallel: usize,
    down: Duration,
) -> Result<Vec<FaultStep>> {
    let mut steps = Vec::new();
    for what in ["router-1", "controller", "edge client"] {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let forward = cluster.forward;
        let exact = Arc::new(AtomicU64::new(0));
        let load = {
            let exact = exact.clone();
            tokio::spawn(async move {
                let stop = async {
                    let _ = stop_rx.await;
                };
                steady_load_counting(forward, len, parallel, 7_000_000, stop, &exact).await
            })
        };
        // The kill lands during transfers: once a round of connections has
        // come back whole, the next round is in flight.
        let transfers = |more: u64| {
            let want = exact.load(Ordering::Relaxed) + more;
            let exact = exact.clone();
            async move {
                poll_until(
                    &format!("{more} more whole transfers through the tunnel (kill -9 of {what})"),
                    Duration::from_secs(10),
                    || async { exact.load(Ordering::Relaxed) >= want },
                )
                .await
            }
        };
        transfers(parallel as u64).await?;
        match what {
            "router-1" => cluster.kill_router(0),
            "controller" => cluster.kill_controller(),
            _ => cluster.kill_client(),
        }
        // A killed edge client cannot recover until it is restarted.
        let recovered_after_kill = if what == "edge client" {
            None
        } else {
            recovery(forward, Duration::from_secs(5)).await
        };
        tokio::time::sleep(down).await;
        match what {
            "router-1" => cluster.restart_router(0)?,
            "controller" => cluster.restart_controller()?,
            _ => cluster.restart_client()?,
        }
        let recovered_after_restart = recovery(forward, Duration::from_secs(10)).await;
        // And transfers go on after the restart: another round comes back
        // whole before the load stops.
        transfers(parallel as u64).await?;
        let _ = stop_tx.send(());
        let load = load.await.context("load task")?;
        steps.push(FaultStep {
            what: what.to_string(),
            load,
            recovered_after_kill,
            recovered_after_restart,
        });
    }
    Ok(steps)
}

/// Memory and descriptors of one process over a soak.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// (seconds since start, RSS KiB, open fds).
    pub points: Vec<(f64, u64, u64)>,
}

impl Samples {
    /// Growth after `warmup`, as a fraction: for RSS, the median of the
    /// last quarter of the samples against the median of the first
    /// quarter (RSS moves with the data in flight at the moment of a
    /// sample); for fds, the highest of the last quarter against the
    /// highest of the first (a sample between two batches of connections
    /// sees none of them open, the next one all).
    pub fn growth_after(&self, warmup: f64) -> (f64, f64) {
        let after: Vec<_> = self.points.iter().filter(|p| p.0 >= warmup).collect();
        if after.len() < 4 {
            return (0.0, 0.0);
        }
        let quarter = after.len() / 4;
        let median = |s: &[&(f64, u64, u64)], f: fn(&(f64, u64, u64)) -> u64| {
            let mut v: Vec<u64> = s.iter().map(|p| f(p)).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let highest = |s: &[&(f64, u64, u64)]| s.iter().map(|p| p.2).max().unwrap_or(0);
        let (head, tail) = (&after[..quarter], &after[after.len() - quarter..]);
        let frac = |a: u64, b: u64| (b as f64 - a as f64) / (a.max(1) as f64);
        (
            frac(median(head, |p| p.1), median(tail, |p| p.1)),
            frac(highest(head), highest(tail)),
        )
    }
}

/// Steady load for `duration`, sampling the RSS and fds of every router
/// (the client spreads its streams over both) and of the client every
/// `every`.
pub async fn soak(
    cluster: &Cluster,
    duration: Duration,
    every: Duration,
    len: u64,
    parallel: usize,
) -> (LoadReport, Vec<Samples>, Samples) {
    let started = Instant::now();
    let router_pids: Vec<u32> = cluster.routers.iter().map(|r| r.0.pid()).collect();
    let client_pid = cluster.client.pid();
    let mut routers = vec![Samples::default(); router_pids.len()];
    let mut client = Samples::default();
    let sampling = async {
        while started.elapsed() < duration {
            let t = started.elapsed().as_secs_f64();
            for (samples, &pid) in routers.iter_mut().zip(&router_pids) {
                samples.points.push((t, rss_kib(pid), fd_count(pid)));
            }
            client
                .points
                .push((t, rss_kib(client_pid), fd_count(client_pid)));
            tokio::time::sleep(every).await;
        }
    };
    let report = steady_load(cluster.forward, len, parallel, 9_000_000, sampling).await;
    (report, routers, client)
}
