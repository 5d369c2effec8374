//! `darkport-bench`: Darkport against direct TCP and stunnel4, on 127.0.0.1.
//!
//! It builds nothing: it starts the release binaries from `--bin-dir`
//! (controller, router, edge client), a services process (sink,
//! request/reply, echo and a Fluentd forward receiver) and two stunnel4
//! processes, then measures every scenario over the paths in the same
//! run, alternating them, with the same load generator:
//!
//! - direct: app → service
//! - stunnel: app → client stunnel → (mutual TLS) → server stunnel → service
//! - Darkport: app → edge client → (QUIC, mutual TLS) → router → service,
//!   and the same over TLS over TCP
//! - Darkport hosted: app → edge client → (QUIC) → router → (QUIC, dialed
//!   out by the hoster) → hoster → service
//!
//! Scenarios (see docs/benchmarks.md): bulk throughput on 1 and 8
//! connections with CPU seconds per GiB, connection setup (sequential and
//! 32 at a time), memory per open connection at 1,000 and 10,000
//! connections, Fluentd forward with acks, and bulk at 20 ms RTT through a
//! userspace delay relay. It prints a table of medians with ratios, and
//! marks rows measured while other processes were using the machine.
//!
//! Layout: `load` (the load generator), `services` (the private services,
//! run as `darkport-bench serve`), `darkport` and `stunnel` (starting the
//! paths), `relay` (delay relays), `sysinfo` (/proc), `report` (the table).

mod compare;
mod darkport;
mod load;
mod procs;
mod relay;
mod report;
mod services;
mod stunnel;
mod sysinfo;
mod topo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use darkport::{Bins, Darkport};
use report::{Better, PathKind, Report, Target};
use services::{Services, Targets};
use stunnel::Stunnel;
use sysinfo::{Interference, MachineSample};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;

/// Delay added each way in the WAN-like check (20 ms round trip).
const WAN_DELAY: Duration = Duration::from_millis(10);

/// Issue 21: a hosted service within 10 % of a router-dialed one.
const HOSTED_TARGET: Target = Target::HostedNearQuic(0.10);

/// Issue 22: bulk on 1 and on 8 connections at least 1.2× stunnel.
const BULK_TARGET: Target = Target::VsStunnelAtLeast(1.2);

/// Issue 22: a round trip (ping-pong, connection setup) within 2× of
/// direct TCP.
const ROUND_TRIP_TARGET: Target = Target::VsDirectAtMost(2.0);

/// Issue 22: a fluent-forward (stamping) service at least this fraction
/// of the passthrough one's records per second.
const STAMPED_OF_PASSTHROUGH: f64 = 0.9;

#[derive(Parser)]
#[command(
    name = "darkport-bench",
    version,
    about = "Benchmark Darkport against direct TCP and stunnel4 on 127.0.0.1 (build first: cargo build --release --workspace)"
)]
struct Cli {
    /// Directory with darkport-controller, darkport-edge-router and
    /// darkport-edge-client.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Small sizes and one run: a smoke test that finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// Runs per scenario and path (default 3, or 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// The stunnel binary (default: stunnel4 or stunnel on PATH; without
    /// one the stunnel column is empty).
    #[arg(long)]
    stunnel: Option<PathBuf>,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Extra environment for the edge client and router (repeatable), e.g.
    /// `--darkport-env TOKIO_WORKER_THREADS=1` to try a runtime setting.
    #[arg(long = "darkport-env", value_name = "KEY=VALUE")]
    darkport_env: Vec<String>,
    /// Only these paths (comma-separated), e.g. to profile one of them.
    #[arg(long, value_enum, value_delimiter = ',')]
    paths: Vec<PathArg>,
    /// Keep the working directory (configs, identities, logs).
    #[arg(long)]
    keep: bool,
    /// Measure across a veth pair at MTU 1500 into a network namespace of
    /// the bench's own (router, services and server stunnel inside; load,
    /// edge clients and client stunnel outside), not on loopback, whose
    /// 65,536-byte MTU flatters QUIC. Needs root, iproute2 and nftables.
    #[arg(long)]
    netns: bool,
    /// Write every run's values to FILE (JSON), for `--compare` later.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Run the scenarios of a results file again (unless `--only` says
    /// otherwise) and print every Darkport path's ratio to stunnel beside
    /// the saved one. Exits with status 3 when a ratio fell by more than
    /// the run-to-run spread (docs/benchmarks.md, "Keeping the ratios").
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: run the private services (started by the bench itself).
    #[command(hide = true)]
    Serve {
        /// Address to listen on (port 0 each).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PathArg {
    Direct,
    Stunnel,
    /// Darkport over QUIC.
    Darkport,
    /// Darkport over TLS over TCP.
    DarkportTcp,
    /// A hosted service: Darkport over QUIC to the router, which reaches
    /// the service through a hoster that dialed out (QUIC).
    DarkportHosted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Bulk throughput on 1 and 8 connections, and CPU per GiB.
    Bulk,
    /// Connection setup, sequential and 32 at a time.
    Setup,
    /// Round trips of one small message on a kept connection (issue 22).
    Pingpong,
    /// Memory per open connection.
    Memory,
    /// Fluentd forward with acks.
    Fluent,
    /// Bulk at 20 ms RTT.
    Wan,
}

/// Sizes for a full or a quick run.
#[derive(Debug, Clone)]
struct Params {
    runs: usize,
    bulk_bytes: u64,
    setup_conns: usize,
    setup_parallel: usize,
    pingpong_rounds: usize,
    open_conns: Vec<usize>,
    fluent_records: usize,
    wan_bytes: u64,
    deadline: Duration,
}

impl Params {
    fn new(quick: bool, runs: Option<usize>) -> Params {
        if quick {
            Params {
                runs: runs.unwrap_or(1).max(1),
                bulk_bytes: 128 * MIB,
                setup_conns: 1_000,
                setup_parallel: 32,
                pingpong_rounds: 2_000,
                open_conns: vec![100, 1_000],
                fluent_records: 50_000,
                wan_bytes: 64 * MIB,
                deadline: Duration::from_secs(150),
            }
        } else {
            Params {
                runs: runs.unwrap_or(3).max(1),
                bulk_bytes: 2 << 30,
                setup_conns: 10_000,
                setup_parallel: 32,
                pingpong_rounds: 20_000,
                open_conns: vec![1_000, 10_000],
                // About a second per measurement at ~2M records/s: shorter runs
                // were dominated by noise.
                fluent_records: 2_000_000,
                wan_bytes: 1 << 30,
                deadline: Duration::from_secs(3600),
            }
        }
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 && b & ((1 << 30) - 1) == 0 {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b >> 20)
    }
}

fn thousands(n: usize) -> String {
    report::group_thousands(&n.to_string())
}

/// The paths `--paths` selects (all when it is empty).
fn enabled_paths(selected: &[PathArg]) -> Vec<PathKind> {
    let arg = |p: PathKind| match p {
        PathKind::Direct => PathArg::Direct,
        PathKind::Stunnel => PathArg::Stunnel,
        PathKind::Darkport => PathArg::Darkport,
        PathKind::DarkportTcp => PathArg::DarkportTcp,
        PathKind::DarkportHosted => PathArg::DarkportHosted,
    };
    PathKind::ALL
        .into_iter()
        .filter(|p| selected.is_empty() || selected.contains(&arg(*p)))
        .collect()
}

/// The order of the paths in run `run`: rotated, so that no path is always
/// first (cold) or last.
fn order(run: usize) -> [PathKind; PathKind::ALL.len()] {
    let mut a = PathKind::ALL;
    let n = a.len();
    a.rotate_left(run % n);
    a
}

/// Runs `f` and reports how busy the rest of the machine was meanwhile.
async fn measured<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<(T, Interference)> {
    let a = MachineSample::now()?;
    let v = f.await?;
    let b = MachineSample::now()?;
    Ok((v, a.interference(&b)))
}

/// The running paths.
struct Paths {
    services: Services,
    darkport: Darkport,
    stunnel: Option<Stunnel>,
    /// Paths selected with --paths (all by default).
    enabled: Vec<PathKind>,
}

impl Paths {
    fn targets(&self, p: PathKind) -> Option<Targets> {
        if !self.enabled.contains(&p) {
            return None;
        }
        match p {
            PathKind::Direct => Some(self.services.targets),
            PathKind::Stunnel => self.stunnel.as_ref().map(|s| s.forwards),
            PathKind::Darkport | PathKind::DarkportTcp | PathKind::DarkportHosted => {
                self.darkport.forwards(p)
            }
        }
    }

    /// ("client" | "router" | "server" | "hoster", pid) of the tunnel's
    /// processes.
    fn pids(&self, p: PathKind) -> Vec<(&'static str, u32)> {
        match p {
            PathKind::Direct => Vec::new(),
            PathKind::Stunnel => self
                .stunnel
                .as_ref()
                .map(|s| s.data_path_pids())
                .unwrap_or_default(),
            PathKind::Darkport | PathKind::DarkportTcp | PathKind::DarkportHosted => {
                self.darkport.data_path_pids(p)
            }
        }
    }

    /// Restarts a path's processes so memory is measured from fresh ones.
    async fn restart(&mut self, p: PathKind) -> Result<()> {
        match p {
            PathKind::Direct => Ok(()),
            PathKind::Stunnel => match &mut self.stunnel {
                Some(s) => s.restart().await,
                None => Ok(()),
            },
            PathKind::Darkport | PathKind::DarkportTcp | PathKind::DarkportHosted => {
                self.darkport.restart_edges().await
            }
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        self.services.proc.check_alive()?;
        self.darkport.check_alive()?;
        if let Some(s) = &mut self.stunnel {
            s.check_alive()?;
        }
        Ok(())
    }
}

fn progress(what: &str, p: PathKind, run: usize, runs: usize, value: String) {
    eprintln!(
        "  {what:<34} {:<8} run {}/{runs}: {value}",
        p.name(),
        run + 1
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Cmd::Serve { bind }) = cli.cmd {
        return match rt.block_on(services::serve(bind)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let params = Params::new(cli.quick, cli.runs);
    let deadline = params.deadline;
    let result = rt.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(deadline, bench(cli, params)) => match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("the benchmark did not finish within {deadline:?}; stopped")),
            },
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Every child process is killed by now (dropped with the bench future).
    match result {
        Ok(Verdict::Kept) => ExitCode::SUCCESS,
        Ok(Verdict::Fell) => ExitCode::from(EXIT_FELL),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status when `--compare` finds a ratio that fell (1 is an error).
const EXIT_FELL: u8 = 3;

/// Whether `--compare` found a ratio that fell.
enum Verdict {
    /// None fell, or there was nothing to compare.
    Kept,
    /// At least one fell by more than the run-to-run spread.
    Fell,
}

/// Runs everything in a fresh working directory, kept on failure (its
/// logs say why) or with --keep.
async fn bench(cli: Cli, params: Params) -> Result<Verdict> {
    // Missing binaries and a bad results file are reported before
    // anything starts.
    Bins::in_dir(&cli.bin_dir)?;
    let saved = match &cli.compare {
        Some(f) => Some(compare::Results::load(f)?),
        None => None,
    };
    let work = tempfile::Builder::new()
        .prefix("darkport-bench.")
        .tempdir()
        .context("creating a working directory")?;
    let result = measure(&cli, &params, saved.as_ref(), work.path()).await;
    if result.is_err() || cli.keep {
        let kept = work.keep();
        eprintln!(
            "working directory (configs, identities, logs) kept: {}",
            kept.display()
        );
    }
    let now = result?;
    if let Some(f) = &cli.save {
        now.save(f)?;
        eprintln!("results saved to {}", f.display());
    }
    let Some(saved) = saved else {
        return Ok(Verdict::Kept);
    };
    let findings = compare::compare(&saved, &now);
    println!("{}", compare::render(&saved, &now, &findings));
    Ok(if findings.iter().any(|f| f.fell) {
        Verdict::Fell
    } else {
        Verdict::Kept
    })
}

/// `--only`, else the saved run's scenarios, else all of them.
fn scenarios(cli: &Cli, saved: Option<&compare::Results>) -> Result<Vec<Scenario>> {
    if !cli.only.is_empty() {
        return Ok(cli.only.clone());
    }
    if let Some(saved) = saved {
        return saved
            .scenarios
            .iter()
            .map(|s| {
                Scenario::from_str(s, true).map_err(|_| {
                    anyhow::anyhow!("the results file names an unknown scenario {s:?}")
                })
            })
            .collect();
    }
    Ok(vec![
        Scenario::Bulk,
        Scenario::Setup,
        Scenario::Pingpong,
        Scenario::Memory,
        Scenario::Fluent,
        Scenario::Wan,
    ])
}

/// A scenario's `--only` name.
fn scenario_name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

async fn measure(
    cli: &Cli,
    params: &Params,
    saved: Option<&compare::Results>,
    dir: &std::path::Path,
) -> Result<compare::Results> {
    let started = Instant::now();
    let load_before = sysinfo::loadavg();
    let nofile = sysinfo::raise_nofile();
    let bins = Bins::in_dir(&cli.bin_dir)?;
    let stunnel_bin = stunnel::find(cli.stunnel.as_deref());
    let scenarios = scenarios(cli, saved)?;

    let stunnel_version = match &stunnel_bin {
        Some(b) => {
            let out = std::process::Command::new(b).arg("-version").output();
            out.ok()
                .map(|o| {
                    let text = String::from_utf8_lossy(&o.stderr).into_owned()
                        + &String::from_utf8_lossy(&o.stdout);
                    text.lines()
                        .find(|l| l.starts_with("stunnel "))
                        .unwrap_or("stunnel (version unknown)")
                        .to_string()
                })
                .unwrap_or_else(|| "stunnel (version unknown)".into())
        }
        None => "not found (stunnel column empty; apt-get install stunnel4)".into(),
    };
    println!(
        "# darkport-bench{}",
        if cli.quick { " --quick" } else { "" }
    );
    println!();
    println!(
        "- machine: {} CPUs, {}, kernel {}",
        sysinfo::num_cpus(),
        sysinfo::cpu_model(),
        sysinfo::kernel()
    );
    println!(
        "- load average before the run: {}",
        load_before.map_or("unknown".into(), |l| format!("{l:.2}"))
    );
    println!("- RLIMIT_NOFILE: {nofile} (raised to the hard limit; children inherit it)");
    println!("- stunnel: {stunnel_version}");
    println!("- binaries: {}", cli.bin_dir.display());
    println!(
        "- runs per scenario and path: {}; working directory {}",
        params.runs,
        dir.display()
    );
    println!();

    eprintln!("starting services, Darkport and stunnel ...");
    let topo = if cli.netns {
        topo::Topology::netns()?
    } else {
        topo::Topology::loopback()
    };
    println!("- network: {}", topo.describe());
    println!();
    let services = Services::start(dir, &topo).await?;
    let dp_dir = dir.join("darkport");
    std::fs::create_dir_all(&dp_dir)?;
    let mut edge_env = Vec::new();
    for kv in &cli.darkport_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--darkport-env {kv:?} must be KEY=VALUE"))?;
        edge_env.push((k.to_string(), v.to_string()));
    }
    if !edge_env.is_empty() {
        println!(
            "- extra environment of edge client and router: {}",
            cli.darkport_env.join(" ")
        );
        println!();
    }
    let enabled = enabled_paths(&cli.paths);
    // Without the hosted path, no hoster either: `--paths darkport` stays
    // a run of router-dialed services only.
    let hosted = enabled.contains(&PathKind::DarkportHosted);
    let darkport =
        Darkport::start(&bins, &dp_dir, &services.targets, edge_env, &topo, hosted).await?;
    let stunnel = match &stunnel_bin {
        Some(b) => {
            let st_dir = dir.join("stunnel");
            std::fs::create_dir_all(&st_dir)?;
            Some(Stunnel::start(b, &st_dir, &services.targets, &topo).await?)
        }
        None => None,
    };
    let mut paths = Paths {
        services,
        darkport,
        stunnel,
        enabled,
    };
    let mut report = Report::default();
    if let Some(l) = load_before.filter(|l| *l > 0.5) {
        report.notes.push(format!(
            "the machine was busy before the run (1-minute load average {l:.2} > 0.5)"
        ));
    }

    // Warm up every path: connections, TLS session caches, allocator.
    for p in PathKind::ALL {
        if let Some(t) = paths.targets(p) {
            for _ in 0..100 {
                load::one_rr(t.rr).await?;
            }
            load::bulk(t.sink, 16 * MIB, 1).await?;
        }
    }

    for s in &scenarios {
        let t = Instant::now();
        match s {
            Scenario::Bulk => bulk(&mut paths, params, &mut report).await?,
            Scenario::Setup => setup(&mut paths, params, &mut report).await?,
            Scenario::Pingpong => pingpong(&mut paths, params, &mut report).await?,
            Scenario::Memory => memory(&mut paths, params, &mut report, nofile).await?,
            Scenario::Fluent => fluent(&mut paths, params, &mut report).await?,
            Scenario::Wan if topo.is_netns() => report.notes.push(
                "the WAN-like check runs on loopback only (its relays sit on 127.0.0.1)".into(),
            ),
            Scenario::Wan => wan(&mut paths, params, &mut report).await?,
        }
        eprintln!("  ({s:?} took {:.0} s)", t.elapsed().as_secs_f64());
    }
    paths.check_alive()?;

    if paths.stunnel.is_none() {
        report
            .notes
            .push("stunnel was not found: its column is empty (apt-get install stunnel4)".into());
    }
    println!("{}", report.render());
    println!(
        "Total time {:.0} s; load average after: {}",
        started.elapsed().as_secs_f64(),
        sysinfo::loadavg().map_or("unknown".into(), |l| format!("{l:.2}"))
    );
    Ok(compare::Results::new(
        cli.netns,
        cli.quick,
        scenarios.into_iter().map(scenario_name).collect(),
        format!(
            "{} CPUs, {}, kernel {}; {}",
            sysinfo::num_cpus(),
            sysinfo::cpu_model(),
            sysinfo::kernel(),
            stunnel_version
        ),
        report.saved_rows(),
    ))
}

async fn bulk(paths: &mut Paths, params: &Params, report: &mut Report) -> Result<()> {
    let size = human_bytes(params.bulk_bytes);
    report.row(
        "bulk1",
        format!("bulk, 1 connection, {size}"),
        "Gbit/s",
        Better::Higher,
        vec![BULK_TARGET, HOSTED_TARGET],
    );
    report.row(
        "bulk8",
        format!("bulk, 8 connections, {size} in all"),
        "Gbit/s",
        Better::Higher,
        vec![BULK_TARGET, HOSTED_TARGET],
    );
    report.row(
        "cpu_client",
        "CPU per GiB (1 conn), client side",
        "s/GiB",
        Better::Lower,
        vec![],
    );
    report.row(
        "cpu_server",
        "CPU per GiB (1 conn), router / server side",
        "s/GiB",
        Better::Lower,
        vec![],
    );
    report.row(
        "cpu_hoster",
        "CPU per GiB (1 conn), hoster",
        "s/GiB",
        Better::Lower,
        vec![],
    );
    for key in ["cpu_client", "cpu_server", "cpu_hoster"] {
        report.missing(
            key,
            PathKind::Direct,
            "no tunnel process on the direct path",
        );
    }
    missing_hoster(report, "cpu_hoster");
    eprintln!("bulk: {size} one way to a sink");
    for run in 0..params.runs {
        for p in order(run) {
            let Some(t) = paths.targets(p) else { continue };
            paths.check_alive()?;
            let cpu = CpuWatch::start(paths.pids(p))?;
            let (b, during) = measured(load::bulk(t.sink, params.bulk_bytes, 1)).await?;
            report.push("bulk1", p, b.gbps(), during);
            progress(
                "bulk, 1 connection",
                p,
                run,
                params.runs,
                format!("{:.2} Gbit/s", b.gbps()),
            );
            for (label, secs) in cpu.each()? {
                let per_gib = secs / (b.bytes as f64 / GIB);
                report.push(&format!("cpu_{}", side(label)), p, per_gib, during);
            }
            let (b, during) = measured(load::bulk(t.sink, params.bulk_bytes, 8)).await?;
            report.push("bulk8", p, b.gbps(), during);
            progress(
                "bulk, 8 connections",
                p,
                run,
                params.runs,
                format!("{:.2} Gbit/s", b.gbps()),
            );
        }
    }
    Ok(())
}

/// CPU time of a path's tunnel processes from a start.
struct CpuWatch {
    /// (label, pid, clock ticks at the start).
    start: Vec<(&'static str, u32, u64)>,
}

impl CpuWatch {
    fn start(pids: Vec<(&'static str, u32)>) -> Result<CpuWatch> {
        let start = pids
            .into_iter()
            .map(|(label, pid)| Ok((label, pid, sysinfo::cpu_ticks(pid)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuWatch { start })
    }

    /// Seconds of CPU each process used since the start, by label.
    fn each(&self) -> Result<Vec<(&'static str, f64)>> {
        self.start
            .iter()
            .map(|&(label, pid, t)| Ok((label, sysinfo::cpu_seconds_since(pid, t)?)))
            .collect()
    }

    /// Their sum; `None` on a path with no tunnel process.
    fn total(&self) -> Result<Option<f64>> {
        let each = self.each()?;
        Ok((!each.is_empty()).then(|| each.iter().map(|(_, s)| s).sum()))
    }
}

/// The side of a tunnel process (its label in `Paths::pids`), in the keys
/// of the CPU and memory rows: `client`, `hoster`, or `server` (router or
/// server stunnel).
fn side(label: &str) -> &'static str {
    match label {
        "client" => "client",
        "hoster" => "hoster",
        _ => "server",
    }
}

/// Marks a hoster row n/a on every path but the hosted one.
fn missing_hoster(report: &mut Report, key: &str) {
    for p in [PathKind::Stunnel, PathKind::Darkport, PathKind::DarkportTcp] {
        report.missing(key, p, "no hoster on this path");
    }
}

/// Ping-pong: one 64-byte message each way on a kept connection, the
/// round trip an acked Fluentd batch pays (issue 22); its latency and the
/// tunnel processes' CPU per round trip.
async fn pingpong(paths: &mut Paths, params: &Params, report: &mut Report) -> Result<()> {
    let n = params.pingpong_rounds;
    let what = format!("ping-pong, {} round trips of 64 B", thousands(n));
    report.row(
        "pp_p50",
        format!("{what}, p50"),
        "µs",
        Better::Lower,
        vec![ROUND_TRIP_TARGET],
    );
    report.row(
        "pp_p99",
        format!("{what}, p99"),
        "µs",
        Better::Lower,
        vec![],
    );
    report.row(
        "pp_cpu",
        "CPU per round trip, tunnel processes",
        "µs",
        Better::Lower,
        vec![],
    );
    report.missing(
        "pp_cpu",
        PathKind::Direct,
        "no tunnel process on the direct path",
    );
    eprintln!("ping-pong: {what} on one kept connection to the echo service");
    for run in 0..params.runs {
        for p in order(run) {
            let Some(t) = paths.targets(p) else { continue };
            paths.check_alive()?;
            let cpu = CpuWatch::start(paths.pids(p))?;
            let (r, during) = measured(load::ping_pong(t.echo, n)).await?;
            report.push("pp_p50", p, r.p50_us, during);
            report.push("pp_p99", p, r.p99_us, during);
            if let Some(total) = cpu.total()? {
                report.push("pp_cpu", p, total / r.rounds as f64 * 1e6, during);
            }
            progress(
                "ping-pong",
                p,
                run,
                params.runs,
                format!("p50 {:.1} µs, p99 {:.1} µs", r.p50_us, r.p99_us),
            );
        }
    }
    Ok(())
}

async fn setup(paths: &mut Paths, params: &Params, report: &mut Report) -> Result<()> {
    let n = params.setup_conns;
    let par = params.setup_parallel;
    let seq = format!("setup, {} sequential", thousands(n));
    let con = format!("setup, {} {par} at a time", thousands(n));
    report.row("setup_seq_rate", &seq, "conn/s", Better::Higher, vec![]);
    report.row(
        "setup_seq_p50",
        format!("{seq}, p50"),
        "ms",
        Better::Lower,
        vec![
            Target::AtMost(0.5),
            Target::VsStunnelAtMost(0.25),
            ROUND_TRIP_TARGET,
            HOSTED_TARGET,
        ],
    );
    report.row(
        "setup_seq_p99",
        format!("{seq}, p99"),
        "ms",
        Better::Lower,
        vec![],
    );
    report.row("setup_par_rate", &con, "conn/s", Better::Higher, vec![]);
    report.row(
        "setup_par_p50",
        format!("{con}, p50"),
        "ms",
        Better::Lower,
        vec![],
    );
    report.row(
        "setup_par_p99",
        format!("{con}, p99"),
        "ms",
        Better::Lower,
        vec![],
    );
    eprintln!(
        "connection setup: connect, {} B request, {} B reply, close",
        services::RR_SIZE,
        services::RR_SIZE
    );
    for run in 0..params.runs {
        for p in order(run) {
            let Some(t) = paths.targets(p) else { continue };
            paths.check_alive()?;
            for (parallel, prefix) in [(1, "setup_seq"), (par, "setup_par")] {
                let (s, during) = measured(load::setup(t.rr, n, parallel)).await?;
                report.push(&format!("{prefix}_rate"), p, s.per_sec, during);
                report.push(&format!("{prefix}_p50"), p, s.p50_ms, during);
                report.push(&format!("{prefix}_p99"), p, s.p99_ms, during);
                progress(
                    &format!("setup, {parallel} at a time"),
                    p,
                    run,
                    params.runs,
                    format!(
                        "{:.0} conn/s, p50 {:.3} ms, p99 {:.3} ms",
                        s.per_sec, s.p50_ms, s.p99_ms
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Waits until the tunnel processes have closed their connections.
async fn wait_closed(pids: &[(&'static str, u32)], base_fds: &[usize]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = false;
        for ((_, pid), base) in pids.iter().zip(base_fds) {
            if sysinfo::fd_count(*pid)? > base + 32 {
                open = true;
            }
        }
        if !open {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("tunnel processes still hold the closed connections after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn memory(
    paths: &mut Paths,
    params: &Params,
    report: &mut Report,
    nofile: u64,
) -> Result<()> {
    let largest = params.open_conns.iter().copied().max().unwrap_or(0);
    for &n in &params.open_conns {
        let key = mem_key(n, "total");
        let targets = if n == largest {
            vec![Target::AtMost(64.0)]
        } else {
            vec![]
        };
        report.row(
            &key,
            format!(
                "{} open connections, RSS per connection, all tunnel processes",
                thousands(n)
            ),
            "KiB",
            Better::Lower,
            targets,
        );
        if n == largest {
            report.row(
                &mem_key(n, "client"),
                format!("{} open, RSS per connection, client side", thousands(n)),
                "KiB",
                Better::Lower,
                vec![],
            );
            report.row(
                &mem_key(n, "server"),
                format!(
                    "{} open, RSS per connection, router / server side",
                    thousands(n)
                ),
                "KiB",
                Better::Lower,
                vec![],
            );
            report.row(
                &mem_key(n, "hoster"),
                format!("{} open, RSS per connection, hoster", thousands(n)),
                "KiB",
                Better::Lower,
                vec![],
            );
            missing_hoster(report, &mem_key(n, "hoster"));
        }
    }
    for &n in &params.open_conns {
        for side in ["total", "client", "server", "hoster"] {
            report.missing(
                &mem_key(n, side),
                PathKind::Direct,
                "no tunnel process on the direct path",
            );
        }
    }
    eprintln!("memory: RSS of fresh tunnel processes with many echo connections open");
    for run in 0..params.runs {
        for p in order(run) {
            if p == PathKind::Direct {
                continue;
            }
            let Some(t) = paths.targets(p) else { continue };
            paths.restart(p).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let pids = paths.pids(p);
            let base_rss = pids
                .iter()
                .map(|(_, pid)| sysinfo::rss_kib(*pid))
                .collect::<Result<Vec<_>>>()?;
            let base_fds = pids
                .iter()
                .map(|(_, pid)| sysinfo::fd_count(*pid))
                .collect::<Result<Vec<_>>>()?;
            for &n in &params.open_conns {
                let fds_per_conn = if p == PathKind::Stunnel { 2 } else { 1 };
                if fds_per_conn * n as u64 + 128 > nofile {
                    for side in ["total", "client", "server", "hoster"] {
                        report.missing(
                            &mem_key(n, side),
                            p,
                            format!(
                                "{n} connections need {fds_per_conn} descriptors each in a tunnel process and RLIMIT_NOFILE is {nofile} here"
                            ),
                        );
                    }
                    continue;
                }
                let (open, during) = measured(load::open_many(t.echo, n, 128)).await?;
                let mut total = 0.0;
                for ((label, pid), base) in pids.iter().zip(&base_rss) {
                    let per = sysinfo::rss_kib(*pid)?.saturating_sub(*base) as f64 / n as f64;
                    total += per;
                    report.push(&mem_key(n, side(label)), p, per, during);
                }
                report.push(&mem_key(n, "total"), p, total, during);
                progress(
                    &format!("{} open connections", thousands(n)),
                    p,
                    run,
                    params.runs,
                    format!("{total:.1} KiB per connection (both sides)"),
                );
                drop(open);
                wait_closed(&pids, &base_fds).await?;
            }
        }
    }
    Ok(())
}

fn mem_key(n: usize, side: &str) -> String {
    format!("mem_{n}_{side}")
}

async fn fluent(paths: &mut Paths, params: &Params, report: &mut Report) -> Result<()> {
    let in_flight = 4;
    // (row, batch, fluent-forward?)
    let rows = [
        ("fluent100", 100usize, false),
        ("fluent1000", 1000, false),
        ("fluentfw100", 100, true),
        ("fluentfw1000", 1000, true),
    ];
    for (key, batch, stamped) in rows {
        // Issue 22: acked batches of 100 at 1.2× stunnel, of 1,000 at 1.1×.
        let target = if batch == 100 { 1.2 } else { 1.1 };
        let what = if stamped {
            format!("Fluentd forward through a fluent-forward service (every record stamped), batches of {batch}, {in_flight} in flight, acked; stunnel and direct: plain")
        } else {
            format!("Fluentd forward, batches of {batch}, {in_flight} in flight, acked")
        };
        report.row(
            key,
            what,
            "records/s",
            Better::Higher,
            vec![Target::VsStunnelAtLeast(target)],
        );
    }
    for (key, what) in [
        (
            "fluent100_cpu",
            "CPU per million records (batches of 100), all tunnel processes",
        ),
        (
            "fluentfw100_cpu",
            "CPU per million records, fluent-forward service (batches of 100), all tunnel processes",
        ),
    ] {
        // Issue 22: no more CPU per record than stunnel.
        report.row(
            key,
            what,
            "s",
            Better::Lower,
            vec![Target::VsStunnelAtMost(1.0)],
        );
        report.missing(
            key,
            PathKind::Direct,
            "no tunnel process on the direct path",
        );
    }
    eprintln!(
        "Fluentd forward: PackedForward, {} B records, {} records per measurement",
        load::record_size(),
        thousands(params.fluent_records)
    );
    for run in 0..params.runs {
        for p in order(run) {
            let Some(t) = paths.targets(p) else { continue };
            paths.check_alive()?;
            for (key, batch, stamped) in rows {
                let target = if stamped { t.fluentfw } else { t.fluent };
                let cpu = CpuWatch::start(paths.pids(p))?;
                let (f, during) = measured(load::fluent(
                    target,
                    batch,
                    params.fluent_records,
                    in_flight,
                ))
                .await?;
                report.push(key, p, f.records_per_sec, during);
                if let (100, Some(total)) = (batch, cpu.total()?) {
                    let per_million = total / (params.fluent_records as f64 / 1e6);
                    let cpu_key = if stamped {
                        "fluentfw100_cpu"
                    } else {
                        "fluent100_cpu"
                    };
                    report.push(cpu_key, p, per_million, during);
                }
                progress(
                    &format!("Fluentd ({key})"),
                    p,
                    run,
                    params.runs,
                    format!("{:.0} records/s", f.records_per_sec),
                );
            }
        }
    }
    stamped_note(report);
    Ok(())
}

/// The issue-22 target across two rows: a fluent-forward service at
/// [`STAMPED_OF_PASSTHROUGH`] of the passthrough one, per batch size and
/// Darkport path.
fn stamped_note(report: &mut Report) {
    let mut cells = Vec::new();
    for (plain, stamped, batch) in [
        ("fluent100", "fluentfw100", 100),
        ("fluent1000", "fluentfw1000", 1000),
    ] {
        for p in [
            PathKind::Darkport,
            PathKind::DarkportTcp,
            PathKind::DarkportHosted,
        ] {
            let (Some(a), Some(b)) = (report.median_of(plain, p), report.median_of(stamped, p))
            else {
                continue;
            };
            let met = if b / a >= STAMPED_OF_PASSTHROUGH {
                "yes"
            } else {
                "**no**"
            };
            cells.push(format!(
                "{} batches of {batch} {:.2}× ({met})",
                p.name(),
                b / a
            ));
        }
    }
    if !cells.is_empty() {
        report.notes.push(format!(
            "fluent-forward service / passthrough, records/s (target ≥ {STAMPED_OF_PASSTHROUGH}×): {}",
            cells.join(", ")
        ));
    }
}

/// Tries to add `tc netem` in a throwaway network namespace; says what
/// happened.
async fn probe_netem() -> String {
    let ns = format!("darkport-bench-{}", std::process::id());
    let cwd = std::env::temp_dir();
    let ip = std::path::Path::new("ip");
    if let Err(e) = procs::run(ip, &["netns", "add", &ns], &cwd).await {
        return format!("network namespaces unavailable ({e:#})");
    }
    let netem = procs::run(
        ip,
        &[
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
            "10ms",
        ],
        &cwd,
    )
    .await;
    let _ = procs::run(ip, &["netns", "del", &ns], &cwd).await;
    match netem {
        Ok(_) => "tc netem works here, but the bench uses its userspace relays everywhere so that figures compare across machines".into(),
        Err(e) => format!("tc netem is not available ({})", e.to_string().lines().last().unwrap_or("").trim()),
    }
}

async fn wan(paths: &mut Paths, params: &Params, report: &mut Report) -> Result<()> {
    let rtt = WAN_DELAY * 2;
    report.row(
        "wan",
        format!(
            "bulk, 1 connection, {}, {} ms RTT †",
            human_bytes(params.wan_bytes),
            rtt.as_millis()
        ),
        "Gbit/s",
        Better::Higher,
        vec![Target::AtLeast(1.0)],
    );
    report.missing(
        "wan",
        PathKind::DarkportHosted,
        "the delay relay sits between edge client and router, where the hosted path is the QUIC path; its extra hop (router to hoster) stays local",
    );
    let netem = probe_netem().await;
    eprintln!(
        "WAN-like: {netem}; using userspace relays adding {} ms each way",
        WAN_DELAY.as_millis()
    );
    report.notes.push(format!(
        "† WAN-like check: {netem}. Delay added by userspace relays, {} ms each way: a UDP relay (GRO/GSO) between edge client and router, so QUIC sees the full RTT end to end; a TCP relay in front of the sink (direct) or between the two stunnels. The TCP relay terminates TCP, so direct and stunnel figures there show the relay's queue, not TCP windows over a real {} ms path.",
        WAN_DELAY.as_millis(),
        rtt.as_millis()
    ));
    // Darkport: a second edge client whose router address is the relay.
    let udp = relay::UdpDelay::start(paths.darkport.router_addr, WAN_DELAY)?;
    let wan_fwd = Targets {
        sink: procs::free_tcp_port()?,
        rr: procs::free_tcp_port()?,
        echo: procs::free_tcp_port()?,
        fluent: procs::free_tcp_port()?,
        fluentfw: procs::free_tcp_port()?,
    };
    let mut wan_client = paths.darkport.spawn_client(
        "edge client (WAN)",
        &wan_fwd,
        udp.addr,
        "quic",
        false,
        "client-wan.log",
    )?;
    procs::wait_until(
        "a request over the delayed path",
        Duration::from_secs(30),
        || load::one_rr(wan_fwd.rr),
    )
    .await?;
    // Direct: a TCP relay in front of the sink.
    let direct = relay::TcpDelay::start(paths.services.targets.sink, WAN_DELAY)?;
    // stunnel: a second client stunnel connecting through a TCP relay.
    let mut st = None;
    if let Some(s) = &paths.stunnel {
        let tcp = relay::TcpDelay::start(s.server_sink, WAN_DELAY)?;
        let local = procs::free_tcp_port()?;
        let proc = s.spawn_extra_client(local, tcp.addr)?;
        procs::wait_until(
            "stunnel over the delayed path",
            Duration::from_secs(30),
            || load::bulk(local, 1024, 1),
        )
        .await?;
        st = Some((tcp, proc, local));
    }
    eprintln!("bulk at {} ms RTT", rtt.as_millis());
    for run in 0..params.runs {
        for p in order(run) {
            if !paths.enabled.contains(&p) {
                continue;
            }
            let addr = match p {
                PathKind::Direct => direct.addr,
                PathKind::Stunnel => match &st {
                    Some((_, _, local)) => *local,
                    None => continue,
                },
                PathKind::Darkport => wan_fwd.sink,
                // Its relay is UDP: QUIC only.
                PathKind::DarkportTcp => continue,
                // See the note above.
                PathKind::DarkportHosted => continue,
            };
            paths.check_alive()?;
            wan_client.check_alive()?;
            let (b, during) = measured(load::bulk(addr, params.wan_bytes, 1)).await?;
            report.push("wan", p, b.gbps(), during);
            progress(
                "bulk at 20 ms RTT",
                p,
                run,
                params.runs,
                format!("{:.2} Gbit/s", b.gbps()),
            );
        }
    }
    Ok(())
}
