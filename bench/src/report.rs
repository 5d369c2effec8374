//! Collected measurements and the table printed at the end.

use std::fmt::Write as _;

use crate::sysinfo::Interference;

/// The paths, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// App straight to the service.
    Direct,
    /// App → client stunnel → server stunnel → service.
    Stunnel,
    /// App → edge client → (QUIC) → router → service.
    Darkport,
    /// App → edge client → (TLS over TCP) → router → service.
    DarkportTcp,
}

/// How many paths there are.
const PATHS: usize = 4;

impl PathKind {
    /// All paths.
    pub const ALL: [PathKind; PATHS] = [
        PathKind::Direct,
        PathKind::Stunnel,
        PathKind::Darkport,
        PathKind::DarkportTcp,
    ];

    fn index(self) -> usize {
        match self {
            PathKind::Direct => 0,
            PathKind::Stunnel => 1,
            PathKind::Darkport => 2,
            PathKind::DarkportTcp => 3,
        }
    }

    /// Name in progress lines.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Stunnel => "stunnel",
            PathKind::Darkport => "dp-quic",
            PathKind::DarkportTcp => "dp-tcp",
        }
    }
}

/// Whether more is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput and the like.
    Higher,
    /// Latency, memory, CPU.
    Lower,
}

/// One condition of a target from the issue.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Darkport / stunnel ≥ x.
    VsStunnelAtLeast(f64),
    /// Darkport / stunnel ≤ x.
    VsStunnelAtMost(f64),
    /// Darkport ≤ x (in the row's unit).
    AtMost(f64),
    /// Darkport ≥ x (in the row's unit).
    AtLeast(f64),
}

impl Target {
    fn describe(&self, unit: &str) -> String {
        match self {
            Target::VsStunnelAtLeast(x) => format!("≥ {x}× stunnel"),
            Target::VsStunnelAtMost(x) => format!("≤ {x}× stunnel"),
            Target::AtMost(x) => format!("≤ {x} {unit}"),
            Target::AtLeast(x) => format!("≥ {x} {unit}"),
        }
    }

    fn met(&self, darkport: f64, stunnel: Option<f64>) -> Option<bool> {
        match *self {
            Target::VsStunnelAtLeast(x) => stunnel.map(|s| darkport / s >= x),
            Target::VsStunnelAtMost(x) => stunnel.map(|s| darkport / s <= x),
            Target::AtMost(x) => Some(darkport <= x),
            Target::AtLeast(x) => Some(darkport >= x),
        }
    }
}

/// One line of the table.
#[derive(Debug)]
pub struct Row {
    key: String,
    label: String,
    unit: &'static str,
    better: Better,
    targets: Vec<Target>,
    /// Per path, one value per run.
    values: [Vec<f64>; PATHS],
    /// Worst interference seen while measuring this row.
    interference: Interference,
    /// Why a path has no value, if it has none on purpose.
    missing: [Option<String>; PATHS],
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    /// Free-form lines printed under the table.
    pub notes: Vec<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// `1234567` → `1,234,567`.
pub fn group_thousands(digits: &str) -> String {
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or(""))
        .collect();
    groups.join(",")
}

/// Three significant digits, without exponent.
fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", x.abs());
        let sign = if x < 0.0 { "-" } else { "" };
        format!("{sign}{}", group_thousands(&s))
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

impl Report {
    /// Declares a row (idempotent; the first declaration wins).
    pub fn row(
        &mut self,
        key: &str,
        label: impl Into<String>,
        unit: &'static str,
        better: Better,
        targets: Vec<Target>,
    ) {
        if self.rows.iter().any(|r| r.key == key) {
            return;
        }
        self.rows.push(Row {
            key: key.to_string(),
            label: label.into(),
            unit,
            better,
            targets,
            values: Default::default(),
            interference: Interference::default(),
            missing: Default::default(),
        });
    }

    fn get(&mut self, key: &str) -> Option<&mut Row> {
        self.rows.iter_mut().find(|r| r.key == key)
    }

    /// Adds one measurement.
    pub fn push(&mut self, key: &str, path: PathKind, value: f64, during: Interference) {
        if let Some(r) = self.get(key) {
            r.values[path.index()].push(value);
            r.interference = r.interference.max(during);
        }
    }

    /// Says why a path has no value in a row.
    pub fn missing(&mut self, key: &str, path: PathKind, why: impl Into<String>) {
        if let Some(r) = self.get(key) {
            r.missing[path.index()] = Some(why.into());
        }
    }

    /// The table (Markdown), the targets and the raw values.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | unit | direct | stunnel | Darkport QUIC | Darkport TCP | QUIC/stunnel | TCP/stunnel | target | met (QUIC, TCP) |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|---|");
        for r in &self.rows {
            let med: Vec<Option<f64>> = r.values.iter().map(|v| median(v)).collect();
            let cell = |i: usize| match (med[i], &r.missing[i]) {
                (Some(m), _) => fmt_num(m),
                (None, Some(_)) => "n/a".to_string(),
                (None, None) => "—".to_string(),
            };
            let ratio = |d: usize| match (med[d], med[1]) {
                (Some(d), Some(o)) if o != 0.0 => format!("{:.2}×", d / o),
                _ => "—".to_string(),
            };
            let target = r
                .targets
                .iter()
                .map(|t| t.describe(r.unit))
                .collect::<Vec<_>>()
                .join(", ");
            let met_by = |i: usize| match med[i] {
                Some(d) if !r.targets.is_empty() => {
                    let checks: Vec<Option<bool>> =
                        r.targets.iter().map(|t| t.met(d, med[1])).collect();
                    if checks.contains(&Some(false)) {
                        "**no**"
                    } else if checks.iter().all(|c| *c == Some(true)) {
                        "yes"
                    } else {
                        "?"
                    }
                }
                _ => "",
            };
            let met = match (met_by(2), met_by(3)) {
                ("", "") => String::new(),
                (q, t) => format!("{q}, {t}"),
            };
            let busy = if r.interference.busy() { " ⚠" } else { "" };
            let _ = writeln!(
                out,
                "| {}{busy} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.unit,
                match r.better {
                    Better::Higher => " ↑",
                    Better::Lower => " ↓",
                },
                cell(0),
                cell(1),
                cell(2),
                cell(3),
                ratio(2),
                ratio(3),
                target,
                met
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Medians of the runs; ↑ higher is better, ↓ lower is better; n/a = not measured on that path (see notes)."
        );
        if self.rows.iter().any(|r| r.interference.busy()) {
            let _ = writeln!(
                out,
                "⚠ = other processes used ≥ 0.2 cores, or the hypervisor stole ≥ 5%, while that row was measured:"
            );
            for r in self.rows.iter().filter(|r| r.interference.busy()) {
                let _ = writeln!(
                    out,
                    "  - {}: up to {:.2} foreign cores, {:.1}% steal",
                    r.label,
                    r.interference.foreign_cores,
                    r.interference.steal * 100.0
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        for r in &self.rows {
            for (i, p) in PathKind::ALL.iter().enumerate() {
                if let Some(why) = &r.missing[i] {
                    if r.values[i].is_empty() {
                        let _ = writeln!(out, "- {} / {}: n/a: {why}", r.label, p.name());
                    }
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Every run (direct | stunnel | Darkport QUIC | Darkport TCP):"
        );
        for r in &self.rows {
            let runs = |i: usize| {
                r.values[i]
                    .iter()
                    .map(|v| fmt_num(*v))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                out,
                "  {:<44} {} | {} | {} | {}",
                format!("{} ({})", r.label, r.unit),
                runs(0),
                runs(1),
                runs(2),
                runs(3)
            );
        }
        out
    }
}
