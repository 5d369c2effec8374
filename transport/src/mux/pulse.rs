//! Keep-alive and liveness of a TCP connection.
//!
//! [`Pulse`] is the decision, a pure function of (state, `now`, bytes
//! received): it says when to send a PING and when the peer has been
//! silent too long. [`Keepalive`] is its shell: it reads the clock, sends
//! the PING through h2 and records the round trip. Time is
//! `tokio::time::Instant` throughout, so the connection drivers can pass the
//! instant their interval ticked at, and tests can pause time.

use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Shared;
use super::remote::{Lost, RemoteEnd};
use crate::endpoint::IDLE_TIMEOUT;

/// What a tick asks of the connection's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// Nothing to do: a PING is in flight, or none can be sent.
    Wait,
    /// Send a PING now (and tell [`Pulse::ping_sent`]).
    Ping,
}

/// Keep-alive and liveness for a TCP connection: a PING every
/// [`KEEP_ALIVE`](crate::endpoint::KEEP_ALIVE) (which also measures the
/// round trip), and the connection is taken for lost after
/// [`IDLE_TIMEOUT`] with nothing received, as a QUIC connection would be.
#[derive(Debug)]
pub(super) struct Pulse {
    /// When the PING in flight left, if one is: its PONG gives the RTT,
    /// and no second PING goes out meanwhile (h2 allows one at a time).
    sent: Option<Instant>,
    /// Bytes received as of the last change, and when that change was
    /// seen: silence is measured from there.
    last: (u64, Instant),
    /// Whether PINGs can be sent at all (h2 hands out one `PingPong`, and
    /// it fails for good once the connection errs).
    can_ping: bool,
}

impl Pulse {
    /// A pulse for a connection established at `now`.
    pub(super) fn new(now: Instant, can_ping: bool) -> Pulse {
        Pulse {
            sent: None,
            last: (0, now),
            can_ping,
        }
    }

    /// At each tick, with the bytes received so far: `Err` when the peer
    /// has been silent for [`IDLE_TIMEOUT`], else whether to send a PING.
    pub(super) fn tick(&mut self, now: Instant, rx: u64) -> Result<Beat, Lost> {
        if rx != self.last.0 {
            self.last = (rx, now);
        } else if now.saturating_duration_since(self.last.1) >= IDLE_TIMEOUT {
            return Err(Lost::Silent(IDLE_TIMEOUT));
        }
        Ok(if self.can_ping && self.sent.is_none() {
            Beat::Ping
        } else {
            Beat::Wait
        })
    }

    /// The PING asked for went out at `now` (`false`: it could not be sent,
    /// and the next tick asks again).
    pub(super) fn ping_sent(&mut self, now: Instant, sent: bool) {
        if sent {
            self.sent = Some(now);
        }
    }

    /// The PONG arrived at `now` (`false`: the PING failed, and no more are
    /// sent): the round trip, at least 1 µs, if a PING was in flight.
    pub(super) fn pong(&mut self, now: Instant, ok: bool) -> Option<Duration> {
        let sent = self.sent.take()?;
        if !ok {
            self.can_ping = false;
            return None;
        }
        Some(
            now.saturating_duration_since(sent)
                .max(Duration::from_micros(1)),
        )
    }

    /// Whether a PONG is awaited.
    fn in_flight(&self) -> bool {
        self.sent.is_some()
    }
}

/// The shell of [`Pulse`]: h2's PING handle and the connection's counters.
pub(super) struct Keepalive {
    pulse: Pulse,
    ping: Option<h2::PingPong>,
}

impl Keepalive {
    pub(super) fn new(ping: Option<h2::PingPong>) -> Keepalive {
        Keepalive {
            pulse: Pulse::new(Instant::now(), ping.is_some()),
            ping,
        }
    }

    /// At each tick: `Err` when the peer has been silent too long. The
    /// clock is read here, once.
    pub(super) fn tick(&mut self, shared: &Shared) -> Result<(), RemoteEnd> {
        let now = Instant::now();
        let rx = shared.rx_bytes.load(Ordering::Relaxed);
        match self.pulse.tick(now, rx).map_err(RemoteEnd::Lost)? {
            Beat::Wait => {}
            Beat::Ping => {
                let sent = self
                    .ping
                    .as_mut()
                    .is_some_and(|p| p.send_ping(h2::Ping::opaque()).is_ok());
                self.pulse.ping_sent(now, sent);
            }
        }
        Ok(())
    }

    pub(super) fn poll_pong(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<()> {
        let Some(p) = self.ping.as_mut().filter(|_| self.pulse.in_flight()) else {
            return Poll::Pending;
        };
        let ok = ready!(p.poll_pong(cx)).is_ok();
        if !ok {
            self.ping = None;
        }
        if let Some(rtt) = self.pulse.pong(Instant::now(), ok) {
            let micros = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
            shared.rtt_micros.store(micros, Ordering::Relaxed);
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn pings_one_at_a_time_and_measures_the_round_trip() {
        let t0 = Instant::now();
        let mut p = Pulse::new(t0, true);
        assert_eq!(p.tick(t0, 0), Ok(Beat::Ping));
        p.ping_sent(t0, true);
        assert_eq!(p.tick(t0 + SEC, 0), Ok(Beat::Wait), "one PING in flight");
        assert_eq!(p.pong(t0 + SEC / 4, true), Some(SEC / 4));
        assert_eq!(p.tick(t0 + 2 * SEC, 0), Ok(Beat::Ping));
        // A PONG with no PING in flight measures nothing.
        assert_eq!(p.pong(t0 + 3 * SEC, true), None);
    }

    #[test]
    fn an_instant_pong_counts_as_one_microsecond() {
        let t0 = Instant::now();
        let mut p = Pulse::new(t0, true);
        p.ping_sent(t0, true);
        assert_eq!(p.pong(t0, true), Some(Duration::from_micros(1)));
    }

    #[test]
    fn a_ping_not_sent_is_asked_for_again() {
        let t0 = Instant::now();
        let mut p = Pulse::new(t0, true);
        assert_eq!(p.tick(t0, 0), Ok(Beat::Ping));
        p.ping_sent(t0, false);
        assert_eq!(p.tick(t0 + SEC, 0), Ok(Beat::Ping));
    }

    #[test]
    fn a_failed_ping_stops_the_pings_not_the_liveness_check() {
        let t0 = Instant::now();
        let mut p = Pulse::new(t0, true);
        p.ping_sent(t0, true);
        assert_eq!(p.pong(t0 + SEC, false), None);
        assert_eq!(p.tick(t0 + SEC, 0), Ok(Beat::Wait));
        assert_eq!(
            p.tick(t0 + IDLE_TIMEOUT, 0),
            Err(Lost::Silent(IDLE_TIMEOUT))
        );
        let mut without = Pulse::new(t0, false);
        assert_eq!(without.tick(t0, 0), Ok(Beat::Wait));
    }

    #[test]
    fn silence_is_measured_from_the_last_byte_received() {
        let t0 = Instant::now();
        let mut p = Pulse::new(t0, false);
        let almost = IDLE_TIMEOUT - SEC;
        assert_eq!(p.tick(t0 + almost, 0), Ok(Beat::Wait));
        // Bytes arrived: the silence starts again.
        assert_eq!(p.tick(t0 + almost, 10), Ok(Beat::Wait));
        assert_eq!(p.tick(t0 + almost + almost, 10), Ok(Beat::Wait));
        assert_eq!(
            p.tick(t0 + almost + IDLE_TIMEOUT, 10),
            Err(Lost::Silent(IDLE_TIMEOUT))
        );
    }
}
