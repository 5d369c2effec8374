//! Darkport's TLS and QUIC plumbing, shared by controller, router and client.
//!
//! - [`identity`]: the identity file (key, certificate, CA, controller
//!   address), written 0600 and atomically.
//! - [`tls`]: rustls configurations with one crypto provider (ring), the
//!   certificate verifier that pins the Darkport CA and checks the peer's
//!   identity kind, and [`tls::peer_identity`], the one place a certificate
//!   becomes a [`darkport_proto::PeerIdentity`].
//! - [`endpoint`]: QUIC endpoints with the transport settings a tunnel needs
//!   (stream limits, windows, keep-alive, socket buffers).
//! - [`mux`]: one connection and stream API over QUIC and over TLS 1.3 on
//!   TCP (HTTP/2 framing): the data plane's two transports.
//! - [`splice`]: byte-exact copying between a TCP socket and a stream,
//!   carrying half-close (FIN) and reset both ways.
//! - [`connect`]: [`connect::ConnectError`], why a connection over either
//!   transport could not be made.
//! - [`control`]: one request/response exchange with the controller.
//! - [`hint`]: what a refused TLS handshake tells the user to do.
//! - [`shards`]: single-threaded runtimes that each own whole connections.
//! - [`limits`]: caps on held slots, per-key rate limits, log-line budgets.
//! - [`admission`]: handshakes in progress, bounded per source prefix and
//!   in all, always making room for a new peer.
//!
//! What it does not do: decide anything. Policy lives in `darkport-proto`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cert;
pub mod connect;
pub mod control;
pub mod endpoint;
pub mod enroll;
pub mod hint;
pub mod identity;
pub mod limits;
pub mod mux;
pub mod renew;
pub mod shards;
pub mod splice;
pub mod tls;
pub mod udp;

use std::time::{SystemTime, UNIX_EPOCH};

use darkport_proto::codes::{CloseCode, StreamCode};

use crate::hint::Hint;

/// A connection close code as quinn takes it.
pub fn close_code(code: CloseCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.code())
}

/// A stream reset or stop code as quinn takes it.
pub fn stream_code(code: StreamCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.code())
}

/// The Darkport close code of a connection the peer closed, if any.
pub fn peer_close_code(e: &quinn::ConnectionError) -> Option<(CloseCode, String)> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = CloseCode::from_code(c.error_code.into_inner())?;
            Some((code, String::from_utf8_lossy(&c.reason).into_owned()))
        }
        _ => None,
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Describes why a QUIC connection ended, in words a user can act on.
pub fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            format!("closed by the peer: {reason}")
        }
        E::ConnectionClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            let code = close.error_code;
            let hint = Hint::suffix(Hint::from_quic(e));
            if reason.is_empty() {
                format!("the peer refused the connection ({code}){hint}")
            } else {
                format!("the peer refused the connection ({code}): {reason}{hint}")
            }
        }
        E::TransportError(t) => {
            let hint = Hint::suffix(Hint::from_quic(e));
            format!("TLS/QUIC error: {t}{hint}")
        }
        E::TimedOut => "the peer stopped answering (timed out)".into(),
        E::Reset => "the peer reset the connection (it may have restarted)".into(),
        E::LocallyClosed => "closed locally".into(),
        E::VersionMismatch => "QUIC version mismatch".into(),
        E::CidsExhausted => "connection ids exhausted".into(),
    }
}
