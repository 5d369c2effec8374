//! Which transport to reach a router with: a pure decision of the mode,
//! what was learned about the router, and the time (passed in, so tests
//! run in virtual time).
//!
//! In [`TransportMode::Auto`] a client races the two: QUIC starts at once
//! and TCP joins after [`FALLBACK_AFTER`] (or at once if QUIC fails
//! sooner); the first to finish its handshake wins, and QUIC wins a tie.
//! A router where TCP won is remembered for [`REMEMBER_TCP`]: new
//! connections go straight to TCP (no QUIC handshake to wait out behind a
//! firewall that drops UDP), and when that expires QUIC is tried again,
//! also for a live TCP connection, which is replaced if QUIC now gets
//! through.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use darkport_transport::mux::{Transport, TransportMode};

/// How long QUIC has alone before TCP joins the race: QUIC's handshake
/// takes one round trip, so a path where it has not finished in this long
/// is one that drops UDP, or one so slow that TCP is no worse.
pub const FALLBACK_AFTER: Duration = Duration::from_millis(500);

/// How long a router where TCP won is reached over TCP before QUIC is
/// tried again.
pub const REMEMBER_TCP: Duration = Duration::from_secs(300);

/// How to connect to one router now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// QUIC only.
    Quic,
    /// TCP only.
    Tcp,
    /// QUIC at once, TCP after `tcp_after` (or when QUIC fails).
    Race {
        /// Head start QUIC gets.
        tcp_after: Duration,
    },
}

/// What the client learned about routers: where TCP won, and until when
/// that holds.
#[derive(Debug, Default)]
pub struct Memory {
    tcp_until: HashMap<String, Instant>,
}

impl Memory {
    /// The plan for `router` at `now`.
    pub fn plan(&self, mode: TransportMode, router: &str, now: Instant) -> Plan {
        match mode {
            TransportMode::Quic => Plan::Quic,
            TransportMode::Tcp => Plan::Tcp,
            TransportMode::Auto => match self.tcp_until.get(router) {
                Some(until) if now < *until => Plan::Tcp,
                _ => Plan::Race {
                    tcp_after: FALLBACK_AFTER,
                },
            },
        }
    }

    /// Records which transport got through to `router` at `now` (in a race,
    /// or a retry of QUIC), to be held for `hold`.
    pub fn learned(&mut self, router: &str, won: Transport, now: Instant, hold: Duration) {
        match won {
            Transport::Quic => {
                self.tcp_until.remove(router);
            }
            Transport::Tcp => {
                self.tcp_until.insert(router.to_string(), now + hold);
            }
        }
        // Bounded by the routers the client knows of; expired entries go.
        self.tcp_until.retain(|_, until| *until > now);
    }

    /// Whether a live TCP connection to `router` should try QUIC again now.
    pub fn retry_quic(&self, mode: TransportMode, router: &str, now: Instant) -> bool {
        mode == TransportMode::Auto && !matches!(self.plan(mode, router, now), Plan::Tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_modes_ignore_what_was_learned() {
        let t0 = Instant::now();
        let mut m = Memory::default();
        m.learned("r:1", Transport::Tcp, t0, REMEMBER_TCP);
        assert_eq!(m.plan(TransportMode::Quic, "r:1", t0), Plan::Quic);
        assert_eq!(m.plan(TransportMode::Tcp, "r:1", t0), Plan::Tcp);
        assert!(!m.retry_quic(TransportMode::Tcp, "r:1", t0 + REMEMBER_TCP * 2));
        assert!(!m.retry_quic(TransportMode::Quic, "r:1", t0 + REMEMBER_TCP * 2));
    }

    #[test]
    fn auto_races_then_remembers_tcp_then_tries_quic_again() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(60);
        let mut m = Memory::default();
        let race = Plan::Race {
            tcp_after: FALLBACK_AFTER,
        };
        assert_eq!(m.plan(TransportMode::Auto, "r:1", t0), race);
        // TCP won: straight to TCP while remembered, for this router only.
        m.learned("r:1", Transport::Tcp, t0, hold);
        assert_eq!(m.plan(TransportMode::Auto, "r:1", t0 + hold / 2), Plan::Tcp);
        assert!(!m.retry_quic(TransportMode::Auto, "r:1", t0 + hold / 2));
        assert_eq!(m.plan(TransportMode::Auto, "r:2", t0), race);
        // Expired: race again, and a live TCP connection tries QUIC.
        assert_eq!(m.plan(TransportMode::Auto, "r:1", t0 + hold), race);
        assert!(m.retry_quic(TransportMode::Auto, "r:1", t0 + hold));
        // QUIC still blocked: TCP learned again from then.
        m.learned("r:1", Transport::Tcp, t0 + hold, hold);
        assert_eq!(
            m.plan(TransportMode::Auto, "r:1", t0 + hold + hold / 2),
            Plan::Tcp
        );
        // QUIC got through: forgotten at once.
        m.learned("r:1", Transport::Quic, t0 + hold * 3, hold);
        assert_eq!(m.plan(TransportMode::Auto, "r:1", t0 + hold * 3), race);
    }

    #[test]
    fn memory_drops_expired_routers() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(1);
        let mut m = Memory::default();
        for i in 0..100 {
            m.learned(&format!("r:{i}"), Transport::Tcp, t0, hold);
        }
        m.learned("last:1", Transport::Tcp, t0 + hold * 2, hold);
        assert_eq!(m.tcp_until.len(), 1);
    }
}
