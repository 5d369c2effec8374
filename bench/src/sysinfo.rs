//! What the bench reads from /proc: RSS and CPU time of processes, and how
//! busy the machine was apart from the bench and its children.

use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};

/// Pids of the long-running children whose CPU time counts as ours.
fn live_children() -> &'static Mutex<Vec<u32>> {
    static LIVE: OnceLock<Mutex<Vec<u32>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Records a child so that its CPU time is not taken for other load.
pub fn register_child(pid: u32) {
    live_children()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(pid);
}

/// Forgets a child that has been waited for (its time is then in our
/// cutime/cstime).
pub fn unregister_child(pid: u32) {
    live_children()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| *p != pid);
}

/// Resident set size of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// Fields of /proc/PID/stat after the command name: index 0 is the state
/// (field 3), so field N is at index N - 3.
fn stat_fields(path: &str) -> Result<Vec<u64>> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected format of {path}"))?;
    // The state is a letter; keep the numeric fields' positions by mapping
    // non-numbers to 0.
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

fn field(fields: &[u64], n: usize, path: &str) -> Result<u64> {
    fields
        .get(n - 3)
        .copied()
        .ok_or_else(|| anyhow!("{path} has no field {n}"))
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let f = stat_fields(&path)?;
    Ok(field(&f, 14, &path)? + field(&f, 15, &path)?)
}

/// Clock ticks per second for /proc CPU times.
pub fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// CPU seconds used by a set of processes since `before` (ticks).
pub fn cpu_seconds_since(pid: u32, before: u64) -> Result<f64> {
    Ok(cpu_ticks(pid)?.saturating_sub(before) as f64 / ticks_per_second())
}

/// One sample of machine-wide and own CPU time.
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    /// user + nice + system over all CPUs, in ticks.
    busy: u64,
    /// All fields over all CPUs, in ticks.
    total: u64,
    /// Time stolen by the hypervisor, in ticks.
    steal: u64,
    /// The bench, its waited-for children and its live children, in ticks.
    ours: u64,
}

/// How busy the machine was between two samples, apart from us.
#[derive(Debug, Clone, Copy, Default)]
pub struct Interference {
    /// Cores' worth of CPU used by other processes.
    pub foreign_cores: f64,
    /// Share of CPU time stolen by the hypervisor (0..1).
    pub steal: f64,
}

impl Interference {
    /// Whether a measurement taken meanwhile is suspect.
    pub fn busy(&self) -> bool {
        self.foreign_cores >= 0.2 || self.steal >= 0.05
    }

    /// The worse of two.
    pub fn max(self, o: Interference) -> Interference {
        Interference {
            foreign_cores: self.foreign_cores.max(o.foreign_cores),
            steal: self.steal.max(o.steal),
        }
    }
}

impl MachineSample {
    /// Samples /proc/stat and our own processes.
    pub fn now() -> Result<MachineSample> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| cpu.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal ...; guest time is
        // already inside user, so only the first eight are summed.
        let total = (0..8).map(get).sum();
        let path = "/proc/self/stat";
        let me = stat_fields(path)?;
        let mut ours = field(&me, 14, path)?
            + field(&me, 15, path)?
            + field(&me, 16, path)?
            + field(&me, 17, path)?;
        let pids = live_children()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for pid in pids {
            // A child that just exited is counted once it is waited for.
            ours += cpu_ticks(pid).unwrap_or(0);
        }
        Ok(MachineSample {
            busy: get(0) + get(1) + get(2),
            total,
            steal: get(7),
            ours,
        })
    }

    /// Load from other processes between `self` and `later`.
    pub fn interference(&self, later: &MachineSample) -> Interference {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let cores = num_cpus() as f64;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let ours = later.ours.saturating_sub(self.ours) as f64;
        Interference {
            foreign_cores: ((busy - ours).max(0.0) / total) * cores,
            steal: later.steal.saturating_sub(self.steal) as f64 / total,
        }
    }
}

/// Online CPUs.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Kernel release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (children inherit it)
/// and returns the limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let target = lim.maximum.unwrap_or(1 << 20);
    if lim.current.is_some_and(|c| c >= target) {
        return target;
    }
    let new = Rlimit {
        current: Some(target),
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => target,
        Err(_) => lim.current.unwrap_or(1024),
    }
}
