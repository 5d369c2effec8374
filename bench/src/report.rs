//! Collected measurements and the table printed at the end.

use std::fmt::Write as _;

use crate::compare::SavedRow;
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
    /// App → edge client → (QUIC) → router → (QUIC, dialed out by the
    /// hoster) → hoster → service: a hosted service (issue 21).
    DarkportHosted,
}

/// How many paths there are.
const PATHS: usize = 5;

impl PathKind {
    /// All paths.
    pub const ALL: [PathKind; PATHS] = [
        PathKind::Direct,
        PathKind::Stunnel,
        PathKind::Darkport,
        PathKind::DarkportTcp,
        PathKind::DarkportHosted,
    ];

    /// The Darkport paths, whose cells the targets judge.
    const DARKPORT: [PathKind; 3] = [
        PathKind::Darkport,
        PathKind::DarkportTcp,
        PathKind::DarkportHosted,
    ];

    fn index(self) -> usize {
        match self {
            PathKind::Direct => 0,
            PathKind::Stunnel => 1,
            PathKind::Darkport => 2,
            PathKind::DarkportTcp => 3,
            PathKind::DarkportHosted => 4,
        }
    }

    /// Name in progress lines.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Stunnel => "stunnel",
            PathKind::Darkport => "dp-quic",
            PathKind::DarkportTcp => "dp-tcp",
            PathKind::DarkportHosted => "dp-hosted",
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
    /// Darkport / direct TCP ≤ x (issue 22: round trips within 2× direct).
    VsDirectAtMost(f64),
    /// Darkport ≤ x (in the row's unit).
    AtMost(f64),
    /// Darkport ≥ x (in the row's unit).
    AtLeast(f64),
    /// The hosted path no worse than the router-dialed QUIC path by more
    /// than the fraction x, in the row's better direction (issue 21: a
    /// hosted service within 10 % of a router-dialed one). Judges the
    /// hosted path only.
    HostedNearQuic(f64),
}

/// The medians a target is judged against.
#[derive(Debug, Clone, Copy)]
struct Judged {
    /// The Darkport path's median.
    value: f64,
    /// stunnel's median, if measured.
    stunnel: Option<f64>,
    /// Direct TCP's median, if measured.
    direct: Option<f64>,
    /// The router-dialed QUIC path's median, if measured.
    quic: Option<f64>,
    better: Better,
}

impl Target {
    fn describe(&self, unit: &str) -> String {
        match self {
            Target::VsStunnelAtLeast(x) => format!("≥ {x}× stunnel"),
            Target::VsStunnelAtMost(x) => format!("≤ {x}× stunnel"),
            Target::VsDirectAtMost(x) => format!("≤ {x}× direct"),
            Target::AtMost(x) => format!("≤ {x} {unit}"),
            Target::AtLeast(x) => format!("≥ {x} {unit}"),
            Target::HostedNearQuic(x) => format!("hosted within {:.0} % of QUIC", x * 100.0),
        }
    }

    /// Whether this target judges `path`'s cell.
    fn judges(&self, path: PathKind) -> bool {
        match self {
            Target::HostedNearQuic(_) => path == PathKind::DarkportHosted,
            _ => PathKind::DARKPORT.contains(&path),
        }
    }

    fn met(&self, j: Judged) -> Option<bool> {
        let d = j.value;
        match *self {
            Target::VsStunnelAtLeast(x) => j.stunnel.map(|s| d / s >= x),
            Target::VsStunnelAtMost(x) => j.stunnel.map(|s| d / s <= x),
            Target::VsDirectAtMost(x) => j.direct.map(|s| d / s <= x),
            Target::AtMost(x) => Some(d <= x),
            Target::AtLeast(x) => Some(d >= x),
            Target::HostedNearQuic(x) => j.quic.map(|q| match j.better {
                Better::Higher => d >= q * (1.0 - x),
                Better::Lower => d <= q * (1.0 + x),
            }),
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

/// The median, or `None` for no values.
pub fn median(v: &[f64]) -> Option<f64> {
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

    /// The median of a row on a path, if measured.
    pub fn median_of(&self, key: &str, path: PathKind) -> Option<f64> {
        self.rows.iter().find(|r| r.key == key)?.median(path)
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

    /// Every row with every run's value, for a results file.
    pub fn saved_rows(&self) -> Vec<SavedRow> {
        self.rows
            .iter()
            .map(|r| SavedRow {
                key: r.key.clone(),
                label: r.label.clone(),
                unit: r.unit.to_string(),
                higher_is_better: r.better == Better::Higher,
                values: PathKind::ALL
                    .iter()
                    .filter(|p| !r.values[p.index()].is_empty())
                    .map(|p| (p.name().to_string(), r.values[p.index()].clone()))
                    .collect(),
            })
            .collect()
    }

    /// The table (Markdown), the targets and the raw values.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | unit | direct | stunnel | Darkport QUIC | Darkport TCP | Darkport hosted | QUIC/stunnel | TCP/stunnel | hosted/QUIC | target | met (QUIC, TCP, hosted) |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
        );
        for r in &self.rows {
            let _ = writeln!(out, "{}", r.table_line());
        }
        let _ = writeln!(out);
        self.render_notes(&mut out);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Every run (direct | stunnel | Darkport QUIC | Darkport TCP | Darkport hosted):"
        );
        for r in &self.rows {
            let runs: Vec<String> = r
                .values
                .iter()
                .map(|v| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(" "))
                .collect();
            let _ = writeln!(
                out,
                "  {:<44} {}",
                format!("{} ({})", r.label, r.unit),
                runs.join(" | ")
            );
        }
        out
    }

    /// The legend, the busy rows, the notes and why cells are n/a.
    fn render_notes(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Medians of the runs; ↑ higher is better, ↓ lower is better; n/a = not measured on that path (see notes); hosted/QUIC compares the hosted service with the router-dialed one over the same transport."
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
    }
}

impl Row {
    fn median(&self, p: PathKind) -> Option<f64> {
        median(&self.values[p.index()])
    }

    /// One line of the Markdown table.
    fn table_line(&self) -> String {
        let cell = |p: PathKind| match (self.median(p), &self.missing[p.index()]) {
            (Some(m), _) => fmt_num(m),
            (None, Some(_)) => "n/a".to_string(),
            (None, None) => "—".to_string(),
        };
        let ratio = |p: PathKind, of: PathKind| match (self.median(p), self.median(of)) {
            (Some(d), Some(o)) if o != 0.0 => format!("{:.2}×", d / o),
            _ => "—".to_string(),
        };
        let target = self
            .targets
            .iter()
            .map(|t| t.describe(self.unit))
            .collect::<Vec<_>>()
            .join(", ");
        let met: Vec<&str> = PathKind::DARKPORT.iter().map(|p| self.met(*p)).collect();
        let met = if met.iter().all(|m| m.is_empty()) {
            String::new()
        } else {
            met.join(", ")
        };
        let busy = if self.interference.busy() { " ⚠" } else { "" };
        let arrow = match self.better {
            Better::Higher => " ↑",
            Better::Lower => " ↓",
        };
        let cells: Vec<String> = PathKind::ALL.iter().map(|p| cell(*p)).collect();
        format!(
            "| {}{busy} | {}{arrow} | {} | {} | {} | {} | {target} | {met} |",
            self.label,
            self.unit,
            cells.join(" | "),
            ratio(PathKind::Darkport, PathKind::Stunnel),
            ratio(PathKind::DarkportTcp, PathKind::Stunnel),
            ratio(PathKind::DarkportHosted, PathKind::Darkport),
        )
    }

    /// "yes", "**no**", "?" (a target cannot be judged yet) or "" (no
    /// target judges this path, or it has no value).
    fn met(&self, p: PathKind) -> &'static str {
        let Some(value) = self.median(p) else {
            return "";
        };
        let judged = Judged {
            value,
            stunnel: self.median(PathKind::Stunnel),
            direct: self.median(PathKind::Direct),
            quic: self.median(PathKind::Darkport),
            better: self.better,
        };
        let checks: Vec<Option<bool>> = self
            .targets
            .iter()
            .filter(|t| t.judges(p))
            .map(|t| t.met(judged))
            .collect();
        if checks.is_empty() {
            ""
        } else if checks.contains(&Some(false)) {
            "**no**"
        } else if checks.iter().all(|c| *c == Some(true)) {
            "yes"
        } else {
            "?"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(value: f64, quic: f64, better: Better) -> Judged {
        Judged {
            value,
            stunnel: None,
            direct: None,
            quic: Some(quic),
            better,
        }
    }

    #[test]
    fn hosted_near_quic_follows_the_better_direction() {
        let t = Target::HostedNearQuic(0.10);
        // (hosted, QUIC, better, met)
        let table = [
            (9.0, 10.0, Better::Higher, Some(true)),
            (8.9, 10.0, Better::Higher, Some(false)),
            (12.0, 10.0, Better::Higher, Some(true)),
            (1.1, 1.0, Better::Lower, Some(true)),
            (1.11, 1.0, Better::Lower, Some(false)),
            (0.5, 1.0, Better::Lower, Some(true)),
        ];
        for (hosted, quic, better, met) in table {
            assert_eq!(
                t.met(judged(hosted, quic, better)),
                met,
                "{hosted} vs {quic}"
            );
        }
        let unmeasured = Judged {
            quic: None,
            ..judged(1.0, 1.0, Better::Lower)
        };
        assert_eq!(t.met(unmeasured), None);
    }

    #[test]
    fn the_hosted_target_judges_the_hosted_cell_only() {
        let mut r = Report::default();
        r.row(
            "bulk1",
            "bulk",
            "Gbit/s",
            Better::Higher,
            vec![Target::AtLeast(1.0), Target::HostedNearQuic(0.10)],
        );
        let none = Interference::default();
        for (p, v) in [
            (PathKind::Direct, 20.0),
            (PathKind::Stunnel, 5.0),
            (PathKind::Darkport, 5.0),
            (PathKind::DarkportTcp, 7.0),
            (PathKind::DarkportHosted, 4.0),
        ] {
            r.push("bulk1", p, v, none);
        }
        let out = r.render();
        let line = out.lines().nth(2).unwrap_or_default();
        assert_eq!(
            line,
            "| bulk | Gbit/s ↑ | 20.0 | 5.00 | 5.00 | 7.00 | 4.00 | 1.00× | 1.40× | 0.80× | ≥ 1 Gbit/s, hosted within 10 % of QUIC | yes, yes, **no** |"
        );
        // Every header has a cell: 12 columns in the header, the rule and
        // the row.
        for l in out.lines().take(3) {
            assert_eq!(l.matches('|').count(), 13, "{l}");
        }
        assert!(out.contains("  bulk (Gbit/s)"));
        assert!(out.contains("20.0 | 5.00 | 5.00 | 7.00 | 4.00"));
    }
}
