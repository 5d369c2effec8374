//! `darkport-soak`: the load and fault suite at full size; prints the
//! figures recorded in docs/benchmarks.md.
//!
//! ```text
//! cargo build --release -p darkport-tests --bins
//! target/release/darkport-soak                       # everything, ~17 min
//! target/release/darkport-soak --skip load,faults    # the soak: 2 + 10 min
//! target/release/darkport-soak --soak 60s --warmup 20s --connections 100
//! ```

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use darkport_tests::soak::{fault_matrix, load, soak, Cluster, Samples};

#[derive(Parser)]
#[command(name = "darkport-soak", about = "Darkport load and fault suite")]
struct Args {
    /// Connections in the load run, each `--bytes` both ways.
    #[arg(long, default_value_t = 1000)]
    connections: u64,
    /// Bytes per connection in the load run.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    bytes: u64,
    /// Connections at once, in every part.
    #[arg(long, default_value_t = 1000)]
    parallel: usize,
    /// Bytes per connection while components are killed.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    fault_bytes: u64,
    /// How long a killed component stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    down: Duration,
    /// Length of the soak, after the warm-up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    soak: Duration,
    /// Load before the soak's measured part: buffers and allocator arenas
    /// reach their working size.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    warmup: Duration,
    /// Most growth of RSS and fds allowed over the soak's measured part,
    /// in percent (the median of its last quarter of samples against the
    /// median of its first quarter).
    #[arg(long, default_value_t = 10.0)]
    max_growth: f64,
    /// Routers in the soak. One (the default) carries the whole load, so
    /// its memory is measured under a steady share; with two, the client
    /// spreads its streams and each router's share moves.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    soak_routers: u8,
    /// Skip parts: load, faults, soak.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Print every soak sample (seconds, RSS KiB, fds) of router and client.
    #[arg(long)]
    print_samples: bool,
    /// The darkport-test-node binary (default: next to this one).
    #[arg(long)]
    node: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let node = match args.node {
        Some(n) => n,
        None => std::env::current_exe()?.with_file_name("darkport-test-node"),
    };
    let node = node.to_str().context("node path")?.to_string();
    let mut failed = false;
    let skip = |part: &str| args.skip.iter().any(|s| s == part);

    if !skip("load") {
        let cluster = Cluster::start(&node).await?;
        let r = load(
            cluster.forward,
            args.connections,
            args.bytes,
            args.parallel,
            1,
        )
        .await;
        println!(
            "load: {} connections x {} MiB both ways, {} at once: {} exact, {} reset, {} lost or corrupted; {:.1} s, {:.2} Gbit/s",
            args.connections,
            args.bytes >> 20,
            args.parallel,
            r.exact,
            r.reset,
            r.violations.len(),
            r.elapsed.as_secs_f64(),
            r.gbit_per_s()
        );
        for v in &r.violations {
            println!("  violation: {v}");
        }
        failed |= !r.violations.is_empty() || r.reset > 0;
    }

    if !skip("faults") {
        let mut cluster = Cluster::start(&node).await?;
        let parallel = args.parallel.min(64);
        for step in fault_matrix(&mut cluster, args.fault_bytes, parallel, args.down).await? {
            let ms = |d: Option<Duration>| {
                d.map_or("-".to_string(), |d| format!("{} ms", d.as_millis()))
            };
            println!(
                "kill -9 {}: {} exact, {} reset (seen by the app), {} lost or corrupted; new connection works {} after the kill, {} after the restart",
                step.what,
                step.load.exact,
                step.load.reset,
                step.load.violations.len(),
                ms(step.recovered_after_kill),
                ms(step.recovered_after_restart)
            );
            for v in &step.load.violations {
                println!("  violation: {v}");
            }
            failed |= !step.load.violations.is_empty();
            let late = |d: Option<Duration>| d.is_none_or(|d| d > Duration::from_secs(2));
            if step.what != "edge client" && late(step.recovered_after_kill) {
                println!("  new connections took longer than 2 s after the kill");
                failed = true;
            }
            if late(step.recovered_after_restart) {
                println!("  new connections took longer than 2 s after the restart");
                failed = true;
            }
        }
    }

    if !skip("soak") {
        let cluster = Cluster::start_with_routers(&node, usize::from(args.soak_routers)).await?;
        let total = args.warmup + args.soak;
        let every = (total / 72).max(Duration::from_secs(1));
        let (r, routers, client) = soak(&cluster, total, every, 1024 * 1024, 32).await;
        let warmup = args.warmup.as_secs_f64();
        println!(
            "soak: {} s after {} s of warm-up, {} connections exact, {} reset, {} lost or corrupted",
            args.soak.as_secs(),
            args.warmup.as_secs(),
            r.exact,
            r.reset,
            r.violations.len()
        );
        let mut named: Vec<(String, &Samples)> = routers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("router-{}", i + 1), s))
            .collect();
        named.push(("client".into(), &client));
        if args.print_samples {
            for (i, (t, ..)) in client.points.iter().enumerate() {
                let row: Vec<String> = named
                    .iter()
                    .filter_map(|(n, s)| {
                        s.points
                            .get(i)
                            .map(|p| format!("{n} {} KiB {} fds", p.1, p.2))
                    })
                    .collect();
                println!("  t={t:.0}s {}", row.join(", "));
            }
        }
        for (name, s) in named {
            let (rss, fd) = s.growth_after(warmup);
            let first = s
                .points
                .iter()
                .find(|p| p.0 >= warmup)
                .copied()
                .unwrap_or_default();
            let last = s.points.last().copied().unwrap_or_default();
            let peak = s
                .points
                .iter()
                .filter(|p| p.0 >= warmup)
                .map(|p| p.1)
                .max()
                .unwrap_or(0);
            println!(
                "  {name}: RSS {} -> {} KiB (peak {peak} KiB; {:+.1} % after warm-up, median of the last quarter against the first), fds {} -> {} ({:+.1} %)",
                first.1,
                last.1,
                rss * 100.0,
                first.2,
                last.2,
                fd * 100.0
            );
            let limit = args.max_growth / 100.0;
            if rss > limit || fd > limit {
                println!(
                    "  {name} grew by more than {} % after warm-up",
                    args.max_growth
                );
                failed = true;
            }
        }
        failed |= !r.violations.is_empty() || r.reset > 0;
    }
    if failed {
        bail!("the load and fault suite found a problem (see above)");
    }
    Ok(())
}
