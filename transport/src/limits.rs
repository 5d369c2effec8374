//! Bounds on what a peer can make a server hold or spend: counted slots
//! (connections, streams) per key and in all, token-bucket rate limits per
//! key, and a budget for log lines.
//!
//! All three are decisions over plain data with the time passed in, so
//! they are tested without sockets or clocks; servers hold them in an
//! `Arc` and call them from any task. None holds a lock across an await.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Which cap refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapExceeded {
    /// This key holds `limit` slots already.
    #[error("at most {limit} per {what}")]
    PerKey {
        /// The cap.
        limit: usize,
        /// What a key is ("address", "identity").
        what: &'static str,
    },
    /// All keys together hold `limit` slots already.
    #[error("at most {limit} in all")]
    Global {
        /// The cap.
        limit: usize,
    },
}

/// Counted slots with a cap per key and a cap in all.
#[derive(Debug)]
pub struct Caps<K: Hash + Eq> {
    /// Changeable while running (a reload); slots held above a lowered
    /// cap stay until released.
    per_key: AtomicUsize,
    global: usize,
    /// What a key is, for refusals.
    what: &'static str,
    counts: DashMap<K, usize>,
    total: AtomicUsize,
}

/// A held slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    caps: Arc<Caps<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Caps<K> {
    /// Changes the per-key cap for new slots.
    pub fn set_per_key(&self, per_key: usize) {
        self.per_key.store(per_key, Ordering::Relaxed);
    }

    /// Caps of `per_key` slots per key (a key is a `what`) and `global`
    /// slots in all.
    pub fn new(per_key: usize, global: usize, what: &'static str) -> Arc<Self> {
        Arc::new(Caps {
            per_key: AtomicUsize::new(per_key),
            global,
            what,
            counts: DashMap::new(),
            total: AtomicUsize::new(0),
        })
    }

    /// Takes a slot for `key`, or says which cap is reached.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Result<Slot<K>, CapExceeded> {
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < self.global).then_some(t + 1)
            })
            .is_err()
        {
            return Err(CapExceeded::Global { limit: self.global });
        }
        let mut count = self.counts.entry(key.clone()).or_insert(0);
        let per_key = self.per_key.load(Ordering::Relaxed);
        if *count >= per_key {
            drop(count);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::PerKey {
                limit: per_key,
                what: self.what,
            });
        }
        *count += 1;
        drop(count);
        Ok(Slot {
            caps: self.clone(),
            key,
        })
    }

    /// Slots held by `key` now.
    pub fn held(&self, key: &K) -> usize {
        self.counts.get(key).map_or(0, |c| *c)
    }

    /// Slots held in all now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        // Remove the key when its count reaches zero, so the map holds only
        // keys with live slots (its size is bounded by the global cap).
        self.caps.counts.remove_if_mut(&self.key, |_, c| {
            *c = c.saturating_sub(1);
            *c == 0
        });
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `burst` requests at once, then one every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Time to earn one more request.
    pub every: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests available at `at`, in units of one request.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            / rate.every.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + earned).min(f64::from(rate.burst));
        self.at = self.at.max(now);
    }
}

/// Per-key token buckets, with a bound on how many keys are tracked.
#[derive(Debug)]
pub struct RateLimit<K: Hash + Eq> {
    rate: Rate,
    max_keys: usize,
    buckets: DashMap<K, Bucket>,
}

/// A refused request: when the next one will be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl<K: Hash + Eq + Clone> RateLimit<K> {
    /// A limit of `rate` per key, tracking at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        RateLimit {
            rate,
            max_keys,
            buckets: DashMap::new(),
        }
    }

    /// The rate in force.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Spends one request of `key` at `now`, or says when to retry.
    ///
    /// When `max_keys` keys are tracked, buckets that have refilled
    /// completely (keys that have been quiet) are forgotten first; if every
    /// tracked key is still active, a new key is refused: many sources at
    /// once are themselves a flood.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), RetryAfter> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            let rate = self.rate;
            self.buckets.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < f64::from(rate.burst)
            });
            if self.buckets.len() >= self.max_keys {
                return Err(RetryAfter(self.rate.every));
            }
        }
        let mut bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: f64::from(self.rate.burst),
            at: now,
        });
        bucket.refill(self.rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) * self.rate.every.as_secs_f64();
            Err(RetryAfter(Duration::from_secs_f64(wait)))
        }
    }
}

/// What to do with one more line of a noisy kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Write it.
    Write,
    /// Write it, and say that `n` lines of its kind were dropped since the
    /// last one written.
    WriteAfterSuppressed(u64),
    /// Drop it (it is counted).
    Suppress,
}

/// At most `per_interval` lines of one kind per `interval`; the rest are
/// counted and summarised in the next line written.
#[derive(Debug)]
pub struct LogBudget {
    per_interval: u32,
    interval: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    window_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl LogBudget {
    /// A budget of `per_interval` lines per `interval`.
    pub fn new(per_interval: u32, interval: Duration) -> Self {
        LogBudget {
            per_interval,
            interval,
            state: Mutex::new(LogState {
                window_start: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Decides for one line at `now`.
    pub fn admit(&self, now: Instant) -> LogDecision {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let new_window = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if new_window {
            s.window_start = Some(now);
            s.written = 0;
        }
        if s.written >= self.per_interval {
            s.suppressed += 1;
            return LogDecision::Suppress;
        }
        s.written += 1;
        match std::mem::take(&mut s.suppressed) {
            0 => LogDecision::Write,
            n => LogDecision::WriteAfterSuppressed(n),
        }
    }

    /// Lines dropped and not yet reported; resets the count. For a
    /// periodic summary when no further line comes.
    pub fn take_suppressed(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut s.suppressed)
    }
}

/// A [`LogBudget`] that also gives each source (a peer identity, an
/// address) its own smaller share, so that one noisy sender cannot use the
/// whole budget and crowd out the lines about others.
#[derive(Debug)]
pub struct SourceLogBudget {
    /// All sources together (and lines with no source).
    global: Arc<LogBudget>,
    per_source: u32,
    /// Per source: (window start, lines written in it).
    sources: Mutex<std::collections::HashMap<String, (Instant, u32)>>,
}

/// Sources remembered at once; past it the table starts again (a source
/// then gets a fresh share: never more memory).
const LOG_SOURCES: usize = 4096;

impl SourceLogBudget {
    /// `per_interval` lines per `interval` in all, at most `per_source` of
    /// them about one source.
    pub fn new(per_interval: u32, per_source: u32, interval: Duration) -> Self {
        SourceLogBudget {
            global: Arc::new(LogBudget::new(per_interval, interval)),
            per_source,
            sources: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Decides for one line with no particular source.
    pub fn admit(&self, now: Instant) -> LogDecision {
        self.global.admit(now)
    }

    /// Decides for one line about `source`.
    pub fn admit_for(&self, source: &str, now: Instant) -> LogDecision {
        {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if sources.len() >= LOG_SOURCES && !sources.contains_key(source) {
                sources.clear();
            }
            let interval = self.global.interval;
            let entry = sources.entry(source.to_string()).or_insert((now, 0));
            if now.saturating_duration_since(entry.0) >= interval {
                *entry = (now, 0);
            }
            if entry.1 >= self.per_source {
                // Counted with the global budget's suppressed lines, so the
                // summary says how many were dropped.
                let mut g = self.global.state.lock().unwrap_or_else(|p| p.into_inner());
                g.suppressed += 1;
                return LogDecision::Suppress;
            }
            entry.1 += 1;
        }
        self.global.admit(now)
    }

    /// The budget for all sources together (for the periodic summary,
    /// [`report_suppressed`]).
    pub fn global(&self) -> &Arc<LogBudget> {
        &self.global
    }
}

/// Logs an info line about `source` through a [`SourceLogBudget`].
#[macro_export]
macro_rules! budgeted_info_for {
    ($budget:expr, $source:expr, $($arg:tt)+) => {
        match $budget.admit_for($source, std::time::Instant::now()) {
            $crate::limits::LogDecision::Write => tracing::info!($($arg)+),
            $crate::limits::LogDecision::WriteAfterSuppressed(n) => {
                tracing::info!(suppressed = n, "{n} similar lines were suppressed");
                tracing::info!($($arg)+)
            }
            $crate::limits::LogDecision::Suppress => {}
        }
    };
}

/// Every `interval` of the budget, logs one line saying how many lines of
/// `what` were dropped, if any were and no later line said so. Runs until
/// dropped.
pub async fn report_suppressed(budget: Arc<LogBudget>, what: &'static str) {
    let mut tick = tokio::time::interval(budget.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = budget.take_suppressed();
        if n > 0 {
            tracing::info!(
                suppressed = n,
                "{n} more {what} in the last {} s (not logged one by one)",
                budget.interval.as_secs()
            );
        }
    }
}

/// Logs an info line through a [`LogBudget`]: at most its budget of lines
/// per interval, then one line saying how many were dropped.
#[macro_export]
macro_rules! budgeted_info {
    ($budget:expr, $($arg:tt)+) => {
        match $budget.admit(std::time::Instant::now()) {
            $crate::limits::LogDecision::Write => tracing::info!($($arg)+),
            $crate::limits::LogDecision::WriteAfterSuppressed(n) => {
                tracing::info!(suppressed = n, "{n} similar lines were suppressed");
                tracing::info!($($arg)+)
            }
            $crate::limits::LogDecision::Suppress => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_noisy_source_cannot_crowd_out_the_others() {
        let b = SourceLogBudget::new(10, 3, Duration::from_secs(10));
        let t0 = Instant::now();
        let written = |src: &str, n: usize| {
            (0..n)
                .filter(|_| b.admit_for(src, t0) != LogDecision::Suppress)
                .count()
        };
        assert_eq!(written("noisy", 100), 3, "its own share only");
        // Another source still gets lines, the first saying what the noisy
        // one lost.
        assert_eq!(
            b.admit_for("quiet-1", t0),
            LogDecision::WriteAfterSuppressed(97)
        );
        assert_eq!(written("quiet-2", 2), 2);
        assert_eq!(b.global().take_suppressed(), 0);
        // A new window gives every source its share again.
        assert_eq!(
            (0..5)
                .filter(
                    |_| b.admit_for("noisy", t0 + Duration::from_secs(11)) != LogDecision::Suppress
                )
                .count(),
            3
        );
    }

    #[test]
    fn caps_per_key_and_global_and_release_on_drop() {
        let caps = Caps::new(2, 3, "address");
        let a1 = caps.try_acquire("a").expect("a1");
        let _a2 = caps.try_acquire("a").expect("a2");
        assert_eq!(
            caps.try_acquire("a").unwrap_err(),
            CapExceeded::PerKey {
                limit: 2,
                what: "address"
            }
        );
        let _b1 = caps.try_acquire("b").expect("b1");
        assert_eq!(
            caps.try_acquire("c").unwrap_err(),
            CapExceeded::Global { limit: 3 }
        );
        assert_eq!(caps.total(), 3);
        drop(a1);
        assert_eq!(caps.held(&"a"), 1);
        let _c1 = caps.try_acquire("c").expect("a slot came back");
        assert_eq!(caps.total(), 3);
    }

    #[test]
    fn caps_forget_keys_with_no_slots() {
        let caps = Caps::new(1, 10, "identity");
        for i in 0..100 {
            let s = caps.try_acquire(i).expect("slot");
            drop(s);
        }
        assert_eq!(caps.counts.len(), 0);
        assert_eq!(caps.total(), 0);
    }

    #[test]
    fn rate_limit_bursts_then_refills_in_virtual_time() {
        let t0 = Instant::now();
        let limit = RateLimit::new(
            Rate {
                burst: 3,
                every: Duration::from_secs(10),
            },
            100,
        );
        for _ in 0..3 {
            limit.check(&"id", t0).expect("burst");
        }
        let RetryAfter(wait) = limit.check(&"id", t0).expect_err("over the burst");
        assert_eq!(wait, Duration::from_secs(10));
        let RetryAfter(wait) = limit
            .check(&"id", t0 + Duration::from_secs(4))
            .expect_err("not yet");
        assert_eq!(wait, Duration::from_secs(6));
        limit
            .check(&"id", t0 + Duration::from_secs(10))
            .expect("one earned");
        limit.check(&"other", t0).expect("keys are independent");
        // Never more than the burst, however long the quiet.
        let later = t0 + Duration::from_secs(10_000);
        for _ in 0..3 {
            limit.check(&"id", later).expect("burst again");
        }
        assert!(limit.check(&"id", later).is_err());
    }

    #[test]
    fn rate_limit_tracks_a_bounded_number_of_keys() {
        let t0 = Instant::now();
        let rate = Rate {
            burst: 2,
            every: Duration::from_secs(1),
        };
        let limit = RateLimit::new(rate, 4);
        for k in 0..4 {
            limit.check(&k, t0).expect("new key");
        }
        // Every tracked key is active: a fifth is refused, not tracked.
        assert!(limit.check(&4, t0).is_err());
        assert_eq!(limit.buckets.len(), 4);
        // Once the others are quiet (refilled), they are forgotten.
        limit.check(&4, t0 + Duration::from_secs(5)).expect("room");
        assert_eq!(limit.buckets.len(), 1);
    }

    #[test]
    fn log_budget_summarises_what_it_drops() {
        let t0 = Instant::now();
        let budget = LogBudget::new(2, Duration::from_secs(10));
        assert_eq!(budget.admit(t0), LogDecision::Write);
        assert_eq!(budget.admit(t0), LogDecision::Write);
        for _ in 0..1000 {
            assert_eq!(budget.admit(t0), LogDecision::Suppress);
        }
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(10)),
            LogDecision::WriteAfterSuppressed(1000)
        );
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(11)),
            LogDecision::Write
        );
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(12)),
            LogDecision::Suppress
        );
        assert_eq!(budget.take_suppressed(), 1);
        assert_eq!(budget.take_suppressed(), 0);
    }
}
