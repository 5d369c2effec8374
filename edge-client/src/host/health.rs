//! Health of a hosted service as the hoster sees it, as plain state: the
//! results of its checks go in, the precedence its terminators should
//! have comes out. The checks themselves (a TCP connect, a Fluentd
//! probe) are the caller's: `darkport-edge-client host --health-check`.
//!
//! After `count` failed checks in a row a service is `Failed` on every
//! router (routers then use its terminators only when no other is left);
//! one good check gives it back the precedence it was configured with.
//! So dials move away within `interval × count` of the service failing,
//! and come back one interval after it recovers.

use std::time::Instant;

use darkport_proto::msg::Precedence;

/// One service's check results so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    /// The precedence while healthy (the operator's `--precedence`).
    configured: Precedence,
    /// Failed checks in a row before the service counts as failed (at
    /// least 1).
    count: u32,
    /// Failed checks in a row now.
    failures: u32,
    /// Since when it has been failing (the first failure of the run).
    failing_since: Option<Instant>,
    /// Whether it counts as failed now.
    failed: bool,
}

/// What a check result changed, from [`HealthState::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthVerdict {
    /// The precedence the service's terminators should have now.
    pub precedence: Precedence,
    /// Whether that differs from before this result: the routers must be
    /// told.
    pub changed: bool,
    /// With a failing service, since when it has been failing.
    pub failing_since: Option<Instant>,
}

impl HealthState {
    /// A service that is healthy until checked otherwise, with `configured`
    /// precedence, failed after `count` failures in a row (0 counts as 1).
    pub fn new(configured: Precedence, count: u32) -> HealthState {
        HealthState {
            configured,
            count: count.max(1),
            failures: 0,
            failing_since: None,
            failed: false,
        }
    }

    /// The precedence the terminators should have now.
    pub fn precedence(&self) -> Precedence {
        if self.failed {
            Precedence::Failed
        } else {
            self.configured
        }
    }

    /// Takes the result of one check made at `now`.
    pub fn observe(&mut self, healthy: bool, now: Instant) -> HealthVerdict {
        let before = self.precedence();
        if healthy {
            self.failures = 0;
            self.failing_since = None;
            self.failed = false;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.failing_since.get_or_insert(now);
            if self.failures >= self.count {
                self.failed = true;
            }
        }
        let precedence = self.precedence();
        HealthVerdict {
            precedence,
            changed: precedence != before,
            failing_since: self.failing_since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Each row: configured precedence, count, the results in order, and
    /// the precedence and `changed` expected after each.
    #[test]
    fn failures_in_a_row_fail_it_and_one_success_restores_it() {
        use Precedence::*;
        type Row = (Precedence, u32, &'static [(bool, Precedence, bool)]);
        let table: &[Row] = &[
            // Healthy stays as configured, never "changed".
            (
                Default,
                3,
                &[(true, Default, false), (true, Default, false)],
            ),
            // Three failures in a row with count 3: failed at the third.
            (
                Default,
                3,
                &[
                    (false, Default, false),
                    (false, Default, false),
                    (false, Failed, true),
                    (false, Failed, false),
                    (true, Default, true),
                ],
            ),
            // A success between failures starts the count again.
            (
                Required,
                2,
                &[
                    (false, Required, false),
                    (true, Required, false),
                    (false, Required, false),
                    (false, Failed, true),
                    (true, Required, true),
                ],
            ),
            // Count 0 means 1: the first failure fails it.
            (Default, 0, &[(false, Failed, true), (true, Default, true)]),
        ];
        let t0 = Instant::now();
        for (row, (configured, count, steps)) in table.iter().enumerate() {
            let mut h = HealthState::new(*configured, *count);
            for (i, (ok, want, changed)) in steps.iter().enumerate() {
                let now = t0 + Duration::from_secs(i as u64);
                let v = h.observe(*ok, now);
                assert_eq!(
                    (v.precedence, v.changed),
                    (*want, *changed),
                    "row {row}, step {i}"
                );
                assert_eq!(h.precedence(), *want);
            }
        }
    }

    #[test]
    fn it_says_since_when_it_fails() {
        let t0 = Instant::now();
        let mut h = HealthState::new(Precedence::Default, 2);
        assert_eq!(h.observe(false, t0).failing_since, Some(t0));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(h.observe(false, later).failing_since, Some(t0));
        assert_eq!(h.observe(true, later).failing_since, None);
    }
}
