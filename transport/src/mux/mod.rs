//! One connection API over Darkport's two data-plane transports.
//!
//! - **QUIC** (quinn): the default. One UDP flow, streams without
//!   head-of-line blocking, a new stream in one packet.
//! - **TCP**: TLS 1.3 over TCP (tokio-rustls, the same rustls
//!   configuration and certificate checks as QUIC, ALPN
//!   [`darkport_proto::ALPN_DATA_TCP`]), with many streams multiplexed by
//!   HTTP/2 framing ([`h2`]). For networks that block or throttle UDP.
//!
//! [`Conn`], [`SendHalf`] and [`RecvHalf`] give both the operations the
//! data plane needs: open and accept bidirectional streams, write chunks,
//! finish (half-close), reset with a code, read chunks, stop; close a
//! connection with a [`CloseCode`], learn why it ended ([`RemoteEnd`]), its
//! round-trip time, and whether anything arrived lately (liveness).
//!
//! Why h2 (docs/architecture.md has the long form): it is the multiplexer
//! with reset *codes* (`RST_STREAM` carries a 32-bit reason, so a Darkport
//! [`StreamCode`] crosses intact, as it does in QUIC), half-close
//! (`END_STREAM`), per-stream and per-connection flow control with windows
//! we choose, a bound on concurrent streams, and the rapid-reset defences;
//! it is what hyper runs on and what Cloudflare Tunnel falls back to.
//! yamux has no reset codes.
//!
//! On TCP, Darkport's codes are sent as `0x4450_0000 + code`
//! (["DP"](darkport_proto::codes::H2_CODE_BASE)), so they never read as HTTP/2's own error codes. A `GOAWAY` carries the
//! close code but, unlike QUIC's `CONNECTION_CLOSE`, not the reason text
//! (h2 does not let a user send debug data): a client learns *that* it was
//! refused, and the router's log says why.
//!
//! Layout, one job per file:
//! - `remote.rs`: [`RemoteEnd`], how a stream or connection ended, and
//!   Darkport's codes on HTTP/2.
//! - `conn.rs`: [`Conn`], the connection facade, and what a TCP
//!   connection's handles share with its driver task.
//! - `tcp.rs`: TLS over TCP: [`connect_tcp`], [`accept_tcp`], socket
//!   settings, the lingering close of a refused handshake.
//! - `h2drive.rs`: the tasks that drive an HTTP/2 connection, the accept
//!   decision, and the close-notice stream.
//! - `pulse.rs`: keep-alive and liveness of a TCP connection.
//! - `halves.rs`: [`SendHalf`] and [`RecvHalf`] over either transport.
//! - `gate.rs`: the async side of the send queue ([`SEND_QUEUE`]) and the
//!   I/O wrapper under h2 that follows the frames crossing.
//! - `sendq.rs`: the send queue's decisions, with no I/O.
//!
//! [`CloseCode`]: darkport_proto::codes::CloseCode
//! [`StreamCode`]: darkport_proto::codes::StreamCode

use std::fmt;

/// What [`accept_tcp`] takes: a TLS server configuration, shared.
pub use tokio_rustls::TlsAcceptor;

pub use crate::connect::ConnectError;
pub use conn::Conn;
pub use gate::SEND_QUEUE;
pub use h2drive::{accept_decision, AcceptDecision, ACCEPT_QUEUE, MAX_REFUSED_STREAMS};
pub use halves::{RecvHalf, SendHalf};
pub use remote::{Lost, RemoteEnd};
pub use tcp::{accept_tcp, connect_tcp, LINGER, LINGER_BYTES};

mod conn;
mod gate;
mod h2drive;
mod halves;
mod pulse;
mod remote;
mod tcp;

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP, streams multiplexed with HTTP/2 framing.
    Tcp,
}

impl Transport {
    /// `quic` or `tcp`: the name in flags, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which transport a client uses to reach routers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// Race QUIC and TCP, prefer QUIC; remember TCP for a router where
    /// QUIC did not get through, and try QUIC there again later.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TCP only.
    Tcp,
}

impl std::str::FromStr for TransportMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportMode::Auto),
            "quic" => Ok(TransportMode::Quic),
            "tcp" => Ok(TransportMode::Tcp),
            other => Err(format!(
                "unknown transport {other:?}; use auto, quic or tcp"
            )),
        }
    }
}

impl fmt::Display for TransportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportMode::Auto => "auto",
            TransportMode::Quic => "quic",
            TransportMode::Tcp => "tcp",
        })
    }
}

/// The send-side memory bound of a TCP connection, as a state machine
/// with no I/O: what one HTTP/2 connection holds queued to send, and when
/// a writer may queue more.
///
/// h2 buffers what a stream's writer hands it until the peer's windows
/// let it out, up to [`H2_SEND_BUFFER`](tcp::H2_SEND_BUFFER) per stream. A peer that grants
/// huge windows and then stops reading its socket would make us hold that
/// for every one of up to [`MAX_STREAMS`](crate::endpoint::MAX_STREAMS) streams. QUIC bounds the same
/// thing per connection (quinn's `send_window`); this is that bound for
/// HTTP/2. h2 does not say when data reaches the socket, so the I/O
/// wrapper under h2 ([`Counted`](gate::Counted)) reads the frame headers of the bytes
/// going out ([`FrameWalker`](sendq::FrameWalker)) and gives back each stream's DATA payload
/// as it is written, exactly. Data h2 drops without writing it (a stream
/// reset either way, streams a GOAWAY gives up) is given back when the
/// `RST_STREAM` or `GOAWAY` crosses; the connection's end opens the gate
/// for good (h2 then fails every write).
mod sendq;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_modes_parse() {
        for m in ["auto", "quic", "tcp"] {
            assert_eq!(m.parse::<TransportMode>().unwrap().to_string(), m);
        }
        let e = "udp".parse::<TransportMode>().unwrap_err();
        assert!(e.contains("auto, quic or tcp"), "{e}");
    }
}
