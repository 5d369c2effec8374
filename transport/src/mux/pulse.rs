//! Keep-alive and liveness of a TCP connection ([`Pulse`]).

use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use super::conn::Shared;
use super::remote::{Lost, RemoteEnd};
use crate::endpoint::IDLE_TIMEOUT;

/// Keep-alive and liveness for a TCP connection: a PING every
/// [`KEEP_ALIVE`](crate::endpoint::KEEP_ALIVE) (which also measures the round trip), and the
/// connection is taken for lost after [`IDLE_TIMEOUT`] with nothing
/// received, as a QUIC connection would be.
pub(super) struct Pulse {
    ping: Option<h2::PingPong>,
    sent: Option<Instant>,
    last: (u64, Instant),
}

impl Pulse {
    pub(super) fn new(ping: Option<h2::PingPong>) -> Pulse {
        Pulse {
            ping,
            sent: None,
            last: (0, Instant::now()),
        }
    }

    /// At each tick: `Err` when the peer has been silent too long.
    pub(super) fn tick(&mut self, shared: &Shared) -> Result<(), RemoteEnd> {
        let rx = shared.rx_bytes.load(Ordering::Relaxed);
        if rx != self.last.0 {
            self.last = (rx, Instant::now());
        } else if self.last.1.elapsed() >= IDLE_TIMEOUT {
            return Err(RemoteEnd::Lost(Lost::Silent(IDLE_TIMEOUT)));
        }
        if let (None, Some(p)) = (self.sent, self.ping.as_mut()) {
            if p.send_ping(h2::Ping::opaque()).is_ok() {
                self.sent = Some(Instant::now());
            }
        }
        Ok(())
    }

    pub(super) fn poll_pong(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<()> {
        let (Some(p), Some(sent)) = (self.ping.as_mut(), self.sent) else {
            return Poll::Pending;
        };
        if ready!(p.poll_pong(cx)).is_ok() {
            let rtt = sent.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
            shared.rtt_micros.store(rtt.max(1), Ordering::Relaxed);
        } else {
            self.ping = None;
        }
        self.sent = None;
        Poll::Ready(())
    }
}
