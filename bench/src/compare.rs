//! Results files (`--save`) and the regression check (`--compare`).
//!
//! A results file is the JSON form of one run's report: every value of
//! every run, per row and path, plus how the run was made (namespace or
//! loopback, quick or full). `--compare FILE` runs the file's scenarios
//! again and compares each Darkport path's ratio to stunnel, row by row,
//! with the saved one. Ratios, not absolute figures, because a ratio to
//! stunnel measured in the same run carries over between machines far
//! better than a figure does.
//!
//! A ratio "fell" when it moved in the row's worse direction by more than
//! the run-to-run spread: the larger of the saved run's and this run's
//! spread (max − min of the per-run ratios, over their median), and never
//! less than [`SPREAD_FLOOR`]. One run has no spread of its own; the floor
//! keeps a single noisy sample from reading as a regression.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::{median, Better, PathKind};

/// The smallest move of a ratio that counts as a change (5 %).
pub const SPREAD_FLOOR: f64 = 0.05;

/// The format of results files this bench writes and reads.
const FORMAT: u32 = 1;

/// One run's report, as saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// [`FORMAT`].
    pub format: u32,
    /// Across a veth pair at MTU 1500 (`--netns`), or on loopback.
    pub netns: bool,
    /// Small sizes (`--quick`).
    pub quick: bool,
    /// The scenarios run, by their `--only` names.
    pub scenarios: Vec<String>,
    /// Where and when it was measured (free text, for the reader).
    pub machine: String,
    /// Every row of the table.
    pub rows: Vec<SavedRow>,
}

/// One row: every run's value per path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedRow {
    /// The row's key (`fluent100`, `pp_p50`, ...).
    pub key: String,
    /// What it measures.
    pub label: String,
    /// Its unit.
    pub unit: String,
    /// Whether higher is better.
    pub higher_is_better: bool,
    /// Per path (`PathKind::name`), one value per run, in run order.
    pub values: BTreeMap<String, Vec<f64>>,
}

impl Results {
    /// A run's results, in this bench's format.
    pub fn new(
        netns: bool,
        quick: bool,
        scenarios: Vec<String>,
        machine: String,
        rows: Vec<SavedRow>,
    ) -> Results {
        Results {
            format: FORMAT,
            netns,
            quick,
            scenarios,
            machine,
            rows,
        }
    }

    /// Reads a results file, saying what is wrong with it.
    pub fn load(path: &Path) -> Result<Results> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the results file {}", path.display()))?;
        let r: Results = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a darkport-bench results file (write one with --save)",
                path.display()
            )
        })?;
        anyhow::ensure!(
            r.format == FORMAT,
            "{} is in results format {}; this bench reads format {FORMAT} (measure again with --save)",
            path.display(),
            r.format
        );
        Ok(r)
    }

    /// Writes the file (pretty JSON, one trailing newline, so that it
    /// diffs well in a repository).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text)
            .with_context(|| format!("writing the results file {}", path.display()))
    }
}

/// One Darkport path's ratio to stunnel in one row, saved and now.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Row key.
    pub key: String,
    /// Row label.
    pub label: String,
    /// The Darkport path.
    pub path: PathKind,
    /// Ratio of medians in the saved run.
    pub saved: f64,
    /// Ratio of medians now.
    pub now: f64,
    /// The relative move allowed before it counts (the spread).
    pub allowed: f64,
    /// Moved in the worse direction by more than `allowed`.
    pub fell: bool,
    /// The row's direction.
    pub higher_is_better: bool,
}

impl Finding {
    /// The relative change in the better direction: +0.10 is 10 % better.
    pub fn gain(&self) -> f64 {
        let change = self.now / self.saved - 1.0;
        if self.higher_is_better {
            change
        } else {
            -change
        }
    }
}

/// Per-run ratios of `path` to stunnel, pairing runs by their index.
fn run_ratios(row: &SavedRow, path: PathKind) -> Vec<f64> {
    let (Some(d), Some(s)) = (
        row.values.get(path.name()),
        row.values.get(PathKind::Stunnel.name()),
    ) else {
        return Vec::new();
    };
    d.iter()
        .zip(s)
        .filter(|(_, s)| **s > 0.0)
        .map(|(d, s)| d / s)
        .filter(|r| r.is_finite())
        .collect()
}

/// Ratio of medians, if both are measured and stunnel's is not zero.
fn ratio(row: &SavedRow, path: PathKind) -> Option<f64> {
    let d = median(row.values.get(path.name())?)?;
    let s = median(row.values.get(PathKind::Stunnel.name())?)?;
    (s > 0.0)
        .then(|| d / s)
        .filter(|r| r.is_finite() && *r > 0.0)
}

/// (max − min) / median of a run's per-run ratios; 0 for fewer than two.
fn spread(ratios: &[f64]) -> f64 {
    if ratios.len() < 2 {
        return 0.0;
    }
    let max = ratios.iter().copied().fold(f64::MIN, f64::max);
    let min = ratios.iter().copied().fold(f64::MAX, f64::min);
    match median(ratios) {
        Some(m) if m > 0.0 => (max - min) / m,
        _ => 0.0,
    }
}

/// Every row and Darkport path measured with stunnel in both runs.
pub fn compare(saved: &Results, now: &Results) -> Vec<Finding> {
    let mut out = Vec::new();
    for old in &saved.rows {
        let Some(new) = now.rows.iter().find(|r| r.key == old.key) else {
            continue;
        };
        for path in [
            PathKind::Darkport,
            PathKind::DarkportTcp,
            PathKind::DarkportHosted,
        ] {
            let (Some(s), Some(n)) = (ratio(old, path), ratio(new, path)) else {
                continue;
            };
            let allowed = spread(&run_ratios(old, path))
                .max(spread(&run_ratios(new, path)))
                .max(SPREAD_FLOOR);
            let better = if old.higher_is_better {
                Better::Higher
            } else {
                Better::Lower
            };
            let fell = match better {
                Better::Higher => n < s * (1.0 - allowed),
                Better::Lower => n > s * (1.0 + allowed),
            };
            out.push(Finding {
                key: old.key.clone(),
                label: old.label.clone(),
                path,
                saved: s,
                now: n,
                allowed,
                fell,
                higher_is_better: old.higher_is_better,
            });
        }
    }
    out
}

/// The comparison as Markdown: a table of every ratio, then the ones that
/// fell.
pub fn render(saved: &Results, now: &Results, findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Ratios to stunnel: saved run against this run");
    let _ = writeln!(out);
    let mode = |r: &Results| {
        format!(
            "{}{}",
            if r.netns {
                "MTU 1500 (--netns)"
            } else {
                "loopback"
            },
            if r.quick { ", --quick" } else { "" }
        )
    };
    let _ = writeln!(out, "- saved: {}; {}", mode(saved), saved.machine);
    let _ = writeln!(out, "- now: {}; {}", mode(now), now.machine);
    if saved.netns != now.netns || saved.quick != now.quick {
        let _ = writeln!(
            out,
            "- ⚠ the two runs were made differently ({} against {}): ratios may move for that reason alone",
            mode(saved),
            mode(now)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| scenario | path | saved | now | change | spread | verdict |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
    for f in findings {
        let verdict = if f.fell { "**fell**" } else { "kept" };
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {:.2}× | {:.2}× | {:+.0} % | ±{:.0} % | {verdict} |",
            f.label,
            if f.higher_is_better { "↑" } else { "↓" },
            f.path.name(),
            f.saved,
            f.now,
            f.gain() * 100.0,
            f.allowed * 100.0,
        );
    }
    let _ = writeln!(out);
    let fell: Vec<&Finding> = findings.iter().filter(|f| f.fell).collect();
    if findings.is_empty() {
        let _ = writeln!(
            out,
            "No ratio to compare: the two runs share no row measured on stunnel and a Darkport path."
        );
    } else if fell.is_empty() {
        let _ = writeln!(
            out,
            "No ratio fell by more than the run-to-run spread ({} compared).",
            findings.len()
        );
    } else {
        let _ = writeln!(
            out,
            "{} of {} ratios fell by more than the run-to-run spread:",
            fell.len(),
            findings.len()
        );
        for f in fell {
            let _ = writeln!(
                out,
                "- {} / {}: {:.2}× → {:.2}× stunnel",
                f.label,
                f.path.name(),
                f.saved,
                f.now
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, higher: bool, quic: &[f64], stunnel: &[f64]) -> SavedRow {
        let mut values = BTreeMap::new();
        values.insert(PathKind::Darkport.name().to_string(), quic.to_vec());
        values.insert(PathKind::Stunnel.name().to_string(), stunnel.to_vec());
        SavedRow {
            key: key.into(),
            label: key.into(),
            unit: "x".into(),
            higher_is_better: higher,
            values,
        }
    }

    fn results(rows: Vec<SavedRow>) -> Results {
        Results {
            format: FORMAT,
            netns: true,
            quick: false,
            scenarios: vec!["fluent".into()],
            machine: "test".into(),
            rows,
        }
    }

    #[test]
    fn a_ratio_falls_only_beyond_the_spread_in_the_worse_direction() {
        // (higher is better, saved QUIC runs, now QUIC runs, fell); stunnel
        // is 100 in every run.
        let table: [(bool, &[f64], &[f64], bool); 8] = [
            // Same ratio.
            (true, &[100.0], &[100.0], false),
            // Within the 5 % floor.
            (true, &[100.0], &[96.0], false),
            // Beyond it.
            (true, &[100.0], &[94.0], true),
            // Better is never a fall.
            (true, &[100.0], &[150.0], false),
            // Lower is better: a rise is worse.
            (false, &[100.0], &[106.0], true),
            (false, &[100.0], &[80.0], false),
            // The saved runs spread ±10 % (90..110, median 100: 20 %),
            // so 85 is within it ...
            (true, &[90.0, 100.0, 110.0], &[85.0], false),
            // ... and 79 is not.
            (true, &[90.0, 100.0, 110.0], &[79.0], true),
        ];
        for (higher, saved, now, fell) in table {
            let st = |n: usize| vec![100.0; n];
            let s = results(vec![row("r", higher, saved, &st(saved.len()))]);
            let n = results(vec![row("r", higher, now, &st(now.len()))]);
            let f = compare(&s, &n);
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].fell, fell, "{higher} {saved:?} → {now:?}: {f:?}");
        }
    }

    #[test]
    fn the_spread_of_this_run_counts_too() {
        let s = results(vec![row("r", true, &[100.0], &[100.0])]);
        // Now: 70, 80, 100 against stunnel 100: median 0.8, spread 37.5 %.
        let n = results(vec![row("r", true, &[70.0, 80.0, 100.0], &[100.0; 3])]);
        let f = compare(&s, &n);
        assert!(!f[0].fell, "{f:?}");
        assert!((f[0].allowed - 0.375).abs() < 1e-9);
    }

    #[test]
    fn rows_without_stunnel_or_missing_now_are_skipped() {
        let mut no_stunnel = row("a", true, &[1.0], &[1.0]);
        no_stunnel.values.remove(PathKind::Stunnel.name());
        let s = results(vec![no_stunnel.clone(), row("b", true, &[1.0], &[1.0])]);
        let n = results(vec![no_stunnel]);
        assert!(compare(&s, &n).is_empty());
        assert!(render(&s, &n, &[]).contains("No ratio to compare"));
    }

    #[test]
    fn a_results_file_round_trips_and_a_wrong_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let r = results(vec![row("fluent100", true, &[1.5, 2.0], &[1.0, 1.0])]);
        r.save(&path).expect("save");
        assert_eq!(Results::load(&path).expect("load"), r);
        std::fs::write(&path, "{}").expect("write");
        let e = format!("{:#}", Results::load(&path).expect_err("not results"));
        assert!(e.contains("not a darkport-bench results file"), "{e}");
        let mut old = r.clone();
        old.format = 0;
        old.save(&path).expect("save");
        let e = format!("{:#}", Results::load(&path).expect_err("old format"));
        assert!(e.contains("results format 0"), "{e}");
    }

    #[test]
    fn the_report_names_what_fell_and_the_mode_mismatch() {
        let s = results(vec![row("fluent100", true, &[120.0], &[100.0])]);
        let mut n = results(vec![row("fluent100", true, &[90.0], &[100.0])]);
        n.quick = true;
        let f = compare(&s, &n);
        let out = render(&s, &n, &f);
        assert!(
            out.contains("| fluent100 (↑) | dp-quic | 1.20× | 0.90× | -25 % | ±5 % | **fell** |"),
            "{out}"
        );
        assert!(out.contains("1 of 1 ratios fell"), "{out}");
        assert!(out.contains("made differently"), "{out}");
    }
}
