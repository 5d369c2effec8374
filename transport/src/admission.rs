//! Handshakes in progress: bounded per source prefix and in all, with room
//! always made for a new peer.
//!
//! A peer that has not yet proved who it is (its TLS handshake is not
//! done) is the cheapest thing for an attacker to make a server hold.
//! Every listener (router QUIC, router TCP, controller) puts each
//! handshake in progress into one [`HandshakeGate`]:
//!
//! - handshakes are counted per **source prefix** (`/24` of IPv4, `/64` of
//!   IPv6 by default): one host, one subnet or one IPv6 allocation is one
//!   key, however many addresses it uses;
//! - a prefix at its cap makes room by ending **its own** oldest handshake;
//! - a full gate makes room by ending the oldest handshake of the
//!   **busiest** prefix (most handshakes; ties go to the oldest);
//! - a handshake leaves the gate when it completes (the peer's certificate
//!   is verified), fails, times out or is evicted.
//!
//! Why a flood cannot keep an honest peer out: a new handshake is always
//! admitted, and the one it displaces is never from a prefix with fewer
//! handshakes than the busiest. An honest peer's prefix holds one, so it
//! is displaced only when every prefix holds one (the attacker then needs
//! as many prefixes as the gate has room, e.g. 512 /24s), and then only
//! once all older ones have gone. Its handshake needs one or two round
//! trips; stalled ones are older. So an honest peer waits at most for its
//! own handshake, plus, under a spoofed flood, one Retry round trip.
//!
//! [`Pending`] is the pure decision (no clock, no I/O), table-tested; the
//! gate wraps it in a mutex (never held across an await) and tells an
//! evicted handshake's task through a oneshot channel.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bounds of one gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Handshakes in progress in all.
    pub total: usize,
    /// Handshakes in progress from one source prefix.
    pub per_prefix: usize,
    /// QUIC: above this many handshakes in progress, a peer whose address
    /// is not yet validated gets a Retry first (a spoofed flood then costs
    /// the server one stateless packet per datagram).
    pub retry_above: usize,
    /// Prefix length that makes one IPv4 source (bits, 0 to 32).
    pub v4_prefix: u8,
    /// Prefix length that makes one IPv6 source (bits, 0 to 128).
    pub v6_prefix: u8,
}

impl Default for GateLimits {
    /// 512 in all and 32 per prefix: a stalled QUIC handshake costs the
    /// router about 90 KiB (measured, tests/tests/flood.rs), so a full
    /// gate is about 45 MiB; 16 prefixes fill it.
    fn default() -> Self {
        GateLimits {
            total: 512,
            per_prefix: 32,
            retry_above: 64,
            v4_prefix: 24,
            v6_prefix: 64,
        }
    }
}

/// Limits that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GateLimitsError {
    /// A cap of zero would admit nobody.
    #[error("handshake caps must be at least 1 (got total {total}, per prefix {per_prefix})")]
    Zero {
        /// The total cap.
        total: usize,
        /// The per-prefix cap.
        per_prefix: usize,
    },
    /// A prefix longer than the address.
    #[error("a source prefix is at most /32 for IPv4 and /128 for IPv6 (got /{v4} and /{v6})")]
    Prefix {
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
}

impl GateLimits {
    /// Whether these limits can work.
    pub fn check(&self) -> Result<(), GateLimitsError> {
        if self.total == 0 || self.per_prefix == 0 {
            return Err(GateLimitsError::Zero {
                total: self.total,
                per_prefix: self.per_prefix,
            });
        }
        if self.v4_prefix > 32 || self.v6_prefix > 128 {
            return Err(GateLimitsError::Prefix {
                v4: self.v4_prefix,
                v6: self.v6_prefix,
            });
        }
        Ok(())
    }

    /// The source prefix of `ip`: its first bits, the rest zero. An
    /// IPv4-mapped IPv6 address counts as the IPv4 address.
    pub fn prefix_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, self.v4_prefix)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(mask_v4(v4, self.v4_prefix)),
                None => {
                    let bits = u128::from(v6);
                    let len = u32::from(self.v6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                    IpAddr::V6((bits & mask).into())
                }
            },
        }
    }
}

fn mask_v4(ip: std::net::Ipv4Addr, len: u8) -> std::net::Ipv4Addr {
    let len = u32::from(len.min(32));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    (u32::from(ip) & mask).into()
}

/// Handshakes in progress by prefix, oldest first: the pure decision.
#[derive(Debug)]
pub struct Pending<T> {
    by_prefix: HashMap<IpAddr, VecDeque<(u64, T)>>,
    total: usize,
    next: u64,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            by_prefix: HashMap::new(),
            total: 0,
            next: 0,
        }
    }
}

impl<T> Pending<T> {
    /// Handshakes in progress.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Handshakes in progress from `prefix`.
    pub fn of(&self, prefix: &IpAddr) -> usize {
        self.by_prefix.get(prefix).map_or(0, VecDeque::len)
    }

    /// Admits a handshake from `prefix` (always), carrying `payload`;
    /// returns its ticket and, if room had to be made, the evicted
    /// handshake's prefix and payload.
    pub fn admit(
        &mut self,
        prefix: IpAddr,
        limits: &GateLimits,
        payload: T,
    ) -> (u64, Option<(IpAddr, T)>) {
        let evicted = if self.of(&prefix) >= limits.per_prefix.max(1) {
            self.pop_oldest(prefix)
        } else if self.total >= limits.total.max(1) {
            self.busiest().and_then(|p| self.pop_oldest(p))
        } else {
            None
        };
        let ticket = self.next;
        self.next += 1;
        self.by_prefix
            .entry(prefix)
            .or_default()
            .push_back((ticket, payload));
        self.total += 1;
        (ticket, evicted)
    }

    /// Ends a handshake (done, failed, timed out); false if it was not
    /// there (already evicted).
    pub fn remove(&mut self, prefix: IpAddr, ticket: u64) -> bool {
        let Some(queue) = self.by_prefix.get_mut(&prefix) else {
            return false;
        };
        let Some(at) = queue.iter().position(|(t, _)| *t == ticket) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.by_prefix.remove(&prefix);
        }
        self.total -= 1;
        true
    }

    fn pop_oldest(&mut self, prefix: IpAddr) -> Option<(IpAddr, T)> {
        let queue = self.by_prefix.get_mut(&prefix)?;
        let (_, payload) = queue.pop_front()?;
        if queue.is_empty() {
            self.by_prefix.remove(&prefix);
        }
        self.total -= 1;
        Some((prefix, payload))
    }

    /// The prefix with the most handshakes; of those, the one whose
    /// oldest handshake is oldest.
    fn busiest(&self) -> Option<IpAddr> {
        self.by_prefix
            .iter()
            .filter_map(|(p, q)| q.front().map(|(t, _)| (q.len(), std::cmp::Reverse(*t), *p)))
            .max()
            .map(|(_, _, p)| p)
    }
}

/// How a guarded handshake ended without completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeAbort {
    /// Room was made for a newer handshake (see the module docs).
    #[error("ended to make room for newer handshakes (too many in progress from this prefix, or in all)")]
    Evicted,
    /// No completed handshake within the timeout.
    #[error("no completed handshake within {0:?}")]
    TimedOut(Duration),
}

/// The handshakes in progress at one listener.
#[derive(Debug)]
pub struct HandshakeGate {
    limits: Mutex<GateLimits>,
    pending: Mutex<Pending<tokio::sync::oneshot::Sender<()>>>,
}

impl HandshakeGate {
    /// A gate with `limits`.
    pub fn new(limits: GateLimits) -> Arc<HandshakeGate> {
        Arc::new(HandshakeGate {
            limits: Mutex::new(limits),
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Changes the limits for new handshakes (a reload).
    pub fn set_limits(&self, limits: GateLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> GateLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handshakes in progress.
    pub fn total(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total()
    }

    /// QUIC: whether a peer should prove its address with a Retry first.
    pub fn wants_retry(&self, address_validated: bool) -> bool {
        !address_validated && self.total() >= self.limits().retry_above
    }

    /// Admits a handshake from `ip`, making room if needed; the handshake
    /// is in the gate until the returned ticket is dropped.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let limits = self.limits();
        let prefix = limits.prefix_of(ip);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ticket, evicted) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(prefix, &limits, tx);
        if let Some((from, tell)) = evicted {
            tracing::debug!(prefix = %from, "evicting the oldest handshake in progress to make room");
            let _ = tell.send(());
        }
        Ticket {
            gate: self.clone(),
            prefix,
            ticket,
            evicted: Some(rx),
        }
    }

    /// Runs `handshake` as a guarded handshake from `ip`: it leaves the
    /// gate when it completes, and is dropped (its connection abandoned)
    /// if it is evicted or takes longer than `timeout`.
    pub async fn guard<F: Future>(
        self: &Arc<Self>,
        ip: IpAddr,
        timeout: Duration,
        handshake: F,
    ) -> Result<F::Output, HandshakeAbort> {
        let mut ticket = self.enter(ip);
        tokio::select! {
            r = tokio::time::timeout(timeout, handshake) => r.map_err(|_| HandshakeAbort::TimedOut(timeout)),
            () = ticket.evicted() => Err(HandshakeAbort::Evicted),
        }
    }
}

/// One handshake in a gate; dropping it takes it out.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<HandshakeGate>,
    prefix: IpAddr,
    ticket: u64,
    evicted: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Ticket {
    /// Completes when this handshake is evicted (never otherwise).
    pub async fn evicted(&mut self) {
        match self.evicted.as_mut() {
            Some(rx) => {
                if rx.await.is_ok() {
                    self.evicted = None;
                    return;
                }
                // The sender went without a word: the ticket was removed
                // normally; never complete.
                self.evicted = None;
                std::future::pending::<()>().await
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.prefix, self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limits(total: usize, per_prefix: usize) -> GateLimits {
        GateLimits {
            total,
            per_prefix,
            ..GateLimits::default()
        }
    }

    #[test]
    fn prefixes() {
        let l = GateLimits::default();
        assert_eq!(l.prefix_of(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(l.prefix_of(ip("::ffff:10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(
            l.prefix_of(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        let exact = GateLimits {
            v4_prefix: 32,
            v6_prefix: 128,
            ..l
        };
        assert_eq!(exact.prefix_of(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(exact.prefix_of(ip("2001:db8::1")), ip("2001:db8::1"));
        let all = GateLimits {
            v4_prefix: 0,
            v6_prefix: 0,
            ..l
        };
        assert_eq!(all.prefix_of(ip("10.1.2.3")), ip("0.0.0.0"));
        assert_eq!(all.prefix_of(ip("2001:db8::1")), ip("::"));
        assert!(GateLimits { v4_prefix: 33, ..l }.check().is_err());
        assert!(limits(0, 1).check().is_err());
        assert!(l.check().is_ok());
    }

    #[test]
    fn a_prefix_at_its_cap_displaces_its_own_oldest() {
        let l = limits(100, 2);
        let mut p = Pending::default();
        let a = ip("10.0.0.0");
        let (t0, e) = p.admit(a, &l, "a0");
        assert!(e.is_none());
        p.admit(a, &l, "a1");
        let (_, e) = p.admit(a, &l, "a2");
        assert_eq!(e, Some((a, "a0")));
        assert_eq!(p.of(&a), 2);
        assert!(!p.remove(a, t0), "already evicted");
        // Another prefix is untouched.
        let (_, e) = p.admit(ip("10.0.1.0"), &l, "b0");
        assert!(e.is_none());
        assert_eq!(p.total(), 3);
    }

    #[test]
    fn a_full_gate_displaces_the_oldest_of_the_busiest_prefix() {
        let l = limits(4, 10);
        let mut p = Pending::default();
        let (a, b, c, honest) = (
            ip("10.0.0.0"),
            ip("10.0.1.0"),
            ip("10.0.2.0"),
            ip("192.0.2.0"),
        );
        p.admit(b, &l, "b0");
        p.admit(a, &l, "a0");
        p.admit(a, &l, "a1");
        p.admit(c, &l, "c0");
        // Full: a is the busiest.
        let (th, e) = p.admit(honest, &l, "h");
        assert_eq!(e, Some((a, "a0")));
        // Ties (b, c, a, honest: one each) go to the oldest: b0.
        let (_, e) = p.admit(a, &l, "a2");
        assert_eq!(e, Some((b, "b0")));
        // The honest handshake is the newest of those left: it survives
        // until it is the oldest of a busiest prefix.
        let (_, e) = p.admit(c, &l, "c1");
        assert_eq!(e, Some((a, "a1")));
        assert!(
            p.remove(honest, th),
            "the honest peer finished its handshake"
        );
        assert_eq!(p.total(), 3);
    }

    #[test]
    fn a_flood_from_many_prefixes_never_displaces_a_fresh_honest_handshake_first() {
        // 16 attacker prefixes keep the gate full; an honest peer arrives,
        // then the flood goes on: the honest handshake is displaced only
        // after every older one.
        let l = limits(64, 8);
        let mut p = Pending::default();
        let attacker = |i: usize| IpAddr::from([10, 0, (i % 16) as u8, 0]);
        for i in 0..64 {
            p.admit(attacker(i), &l, i);
        }
        let honest = ip("127.0.0.0");
        let (th, _) = p.admit(honest, &l, usize::MAX);
        for i in 64..(64 + 63) {
            let (_, e) = p.admit(attacker(i), &l, i);
            assert_ne!(
                e.map(|(_, x)| x),
                Some(usize::MAX),
                "evicted the honest peer at {i}"
            );
        }
        assert!(p.remove(honest, th));
    }

    #[tokio::test]
    async fn the_gate_ends_evicted_and_slow_handshakes_and_frees_finished_ones() {
        let gate = HandshakeGate::new(limits(2, 2));
        let a = ip("10.0.0.1");
        // A finished handshake leaves at once.
        let r = gate.guard(a, Duration::from_secs(1), async { 7 }).await;
        assert_eq!(r, Ok(7));
        assert_eq!(gate.total(), 0);
        // A stalled handshake is evicted by newer ones from its prefix.
        let stalled = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.guard(a, Duration::from_secs(30), std::future::pending::<()>())
                    .await
            })
        };
        while gate.total() < 1 {
            tokio::task::yield_now().await;
        }
        let _t1 = gate.enter(ip("10.0.0.2"));
        let _t2 = gate.enter(ip("10.0.0.3"));
        assert_eq!(stalled.await.expect("task"), Err(HandshakeAbort::Evicted));
        assert_eq!(gate.total(), 2);
        drop(_t1);
        // And a slow one times out.
        tokio::time::pause();
        let r = gate
            .guard(
                ip("192.0.2.1"),
                Duration::from_secs(5),
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(r, Err(HandshakeAbort::TimedOut(Duration::from_secs(5))));
        assert_eq!(gate.total(), 1);
    }
}
