//! How a stream or connection ended ([`RemoteEnd`]), from either
//! transport's errors, and Darkport's codes on HTTP/2.

use std::fmt;
use std::io;

use darkport_proto::codes::{self, CloseCode};

use crate::hint::Hint;

/// The HTTP/2 reason carrying the Darkport code `code`
/// ([`codes::h2_code`]).
pub(super) fn h2_reason(code: u32) -> h2::Reason {
    h2::Reason::from(codes::h2_code(code))
}

/// The Darkport code inside an HTTP/2 reason, if it is one of ours.
pub(super) fn our_code(reason: h2::Reason) -> Option<u64> {
    codes::from_h2_code(u32::from(reason))
}

/// What the peer did to a stream or connection, or what happened to it:
/// the error of every stream and connection operation here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteEnd {
    /// The peer reset its sending side with this code
    /// ([`StreamCode::Reset`](darkport_proto::codes::StreamCode::Reset),
    /// [`StreamCode::Cut`](darkport_proto::codes::StreamCode::Cut), ...).
    Reset(u64),
    /// The peer stopped reading with this code.
    Stopped(u64),
    /// The peer closed the whole connection with this code
    /// ([`CloseCode`]) and reason.
    Closed {
        /// Application close code (`darkport_proto::codes::CloseCode`).
        code: u64,
        /// The peer's reason text (over TCP: the code's name).
        reason: String,
    },
    /// The connection failed (timeout, reset, transport error), or was
    /// closed here.
    Lost(Lost),
}

/// Why a connection or stream was lost, where the peer gave no code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Lost {
    /// The QUIC connection failed: timed out, reset, refused in its
    /// handshake, a transport error.
    #[error("{}", crate::describe_connection_error(.0))]
    Quic(quinn::ConnectionError),
    /// A read on a QUIC stream failed otherwise.
    #[error("{0}")]
    QuicRead(quinn::ReadError),
    /// A write on a QUIC stream failed otherwise.
    #[error("{0}")]
    QuicWrite(quinn::WriteError),
    /// HTTP/2, or the TLS or TCP under it, failed. h2 keeps its errors as
    /// text only; `hint` is what the TLS layer said, if a user can act on
    /// it (a refused certificate).
    #[error("{text}{}", Hint::suffix(*.hint))]
    Http2 {
        /// h2's error.
        text: String,
        /// What to do about it.
        hint: Option<Hint>,
    },
    /// The peer ended the TCP connection (GOAWAY) with a code that is not
    /// Darkport's; h2's error says which.
    #[error("the peer ended the connection: {0}")]
    GoAway(String),
    /// The peer reset the stream with a code that is not Darkport's.
    #[error("the peer reset the stream ({0})")]
    ResetNotOurs(h2::Reason),
    /// Nothing arrived from the peer for this long (TCP; QUIC's idle
    /// timeout is [`Lost::Quic`]).
    #[error("the peer stopped answering (nothing for {} s)", .0.as_secs())]
    Silent(std::time::Duration),
    /// The router ended the TCP connection without a close code.
    #[error("the router closed the connection")]
    RouterClosed,
    /// The client ended the TCP connection.
    #[error("the client closed the connection")]
    ClientClosed,
    /// Closed here.
    #[error("closed locally")]
    ClosedHere,
    /// Closed here with this reason.
    #[error("closed locally: {0}")]
    ClosedHereBecause(String),
    /// The router ended a TCP connection whose client opened streams
    /// faster than they were served, refused too often
    /// ([`super::MAX_REFUSED_STREAMS`]).
    #[error("too many streams refused")]
    TooManyRefused,
    /// The TCP connection's task ended without saying why.
    #[error("the connection ended")]
    Ended,
    /// A server tried to open a stream on a TCP connection (only clients
    /// do).
    #[error("a server does not open streams on a TCP connection")]
    ServerOpens,
    /// A client tried to accept a stream on a TCP connection (only servers
    /// do).
    #[error("a client does not accept streams on a TCP connection")]
    ClientAccepts,
    /// A write after the stream was finished or reset here.
    #[error("the stream was already finished or reset here")]
    Finished,
    /// A read after the stream was stopped here.
    #[error("the stream was stopped")]
    StoppedHere,
    /// The HTTP/2 stream is closed, and h2 says no more.
    #[error("the stream is closed")]
    StreamClosed,
}

impl fmt::Display for RemoteEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteEnd::Reset(c) => write!(f, "the peer reset the stream (code {c})"),
            RemoteEnd::Stopped(c) => write!(f, "the peer stopped reading the stream (code {c})"),
            RemoteEnd::Closed { code, reason } if reason.is_empty() => {
                write!(f, "closed by the peer (code {code})")
            }
            RemoteEnd::Closed { reason, .. } => write!(f, "closed by the peer: {reason}"),
            RemoteEnd::Lost(why) => why.fmt(f),
        }
    }
}

impl std::error::Error for RemoteEnd {}

impl From<RemoteEnd> for io::Error {
    fn from(e: RemoteEnd) -> io::Error {
        let kind = match e {
            RemoteEnd::Reset(_) | RemoteEnd::Stopped(_) => io::ErrorKind::ConnectionReset,
            RemoteEnd::Closed { .. } => io::ErrorKind::ConnectionAborted,
            RemoteEnd::Lost(_) => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

impl RemoteEnd {
    /// From a QUIC connection error.
    pub fn from_connection(e: &quinn::ConnectionError) -> RemoteEnd {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => RemoteEnd::Closed {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            other => RemoteEnd::Lost(Lost::Quic(other.clone())),
        }
    }

    pub(super) fn from_read(e: &quinn::ReadError) -> RemoteEnd {
        match e {
            quinn::ReadError::Reset(code) => RemoteEnd::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => RemoteEnd::from_connection(c),
            other => RemoteEnd::Lost(Lost::QuicRead(other.clone())),
        }
    }

    pub(super) fn from_write(e: &quinn::WriteError) -> RemoteEnd {
        match e {
            quinn::WriteError::Stopped(code) => RemoteEnd::Stopped(code.into_inner()),
            quinn::WriteError::ConnectionLost(c) => RemoteEnd::from_connection(c),
            other => RemoteEnd::Lost(Lost::QuicWrite(other.clone())),
        }
    }

    /// From an h2 error on a stream (`sending`: a write failed) or on the
    /// connection; `hint`: what the connection's TLS layer said when it
    /// failed ([`Shared::hint`](super::conn::Shared::hint)).
    pub(super) fn from_h2(e: &h2::Error, sending: bool, hint: Option<Hint>) -> RemoteEnd {
        if let (true, Some(reason)) = (e.is_go_away() && e.is_remote(), e.reason()) {
            return match our_code(reason) {
                Some(code) => RemoteEnd::Closed {
                    code,
                    reason: close_name(code),
                },
                None => RemoteEnd::Lost(Lost::GoAway(e.to_string())),
            };
        }
        if let (true, Some(reason)) = (e.is_reset() && e.is_remote(), e.reason()) {
            if let Some(code) = our_code(reason) {
                return if sending {
                    RemoteEnd::Stopped(code)
                } else {
                    RemoteEnd::Reset(code)
                };
            }
        }
        // TLS alerts (a refused certificate) arrive as I/O errors, which
        // h2 keeps only as text: the hint comes from below h2.
        RemoteEnd::Lost(Lost::Http2 {
            text: e.to_string(),
            hint,
        })
    }

    /// What a user can do about a refused certificate, if that is why
    /// the connection was lost.
    pub fn hint(&self) -> Option<Hint> {
        match self {
            RemoteEnd::Lost(Lost::Quic(e)) => Hint::from_quic(e),
            RemoteEnd::Lost(Lost::Http2 { hint, .. }) => *hint,
            _ => None,
        }
    }

    /// The code of a stream reset or stop, if that is what this is.
    pub fn stream_code(&self) -> Option<u64> {
        match self {
            RemoteEnd::Reset(c) | RemoteEnd::Stopped(c) => Some(*c),
            _ => None,
        }
    }
}

/// What a client says about a close code it received over TCP, where no
/// reason text crosses.
pub(super) fn close_name(code: u64) -> String {
    match CloseCode::from_code(code) {
        Some(CloseCode::Done) => "done".into(),
        Some(CloseCode::Forbidden) => "this identity may not use the data plane (see the router's log)".into(),
        Some(CloseCode::Revoked) => "this identity was revoked, or the router's policy no longer allows it (over TCP the router's reason is in its log)".into(),
        Some(CloseCode::Busy) => "the router is at a limit (see the router's log)".into(),
        Some(CloseCode::RouterRevoked) => "this router was revoked".into(),
        Some(CloseCode::ControlRefused) => "the certificate is not current".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_cross_http2_intact_and_never_collide() {
        for c in [0u32, 1, 2, 3, 6] {
            assert_eq!(our_code(h2_reason(c)), Some(u64::from(c)));
        }
        // HTTP/2's own codes are not ours.
        for r in [
            h2::Reason::CANCEL,
            h2::Reason::PROTOCOL_ERROR,
            h2::Reason::NO_ERROR,
        ] {
            assert_eq!(our_code(r), None);
        }
    }
}
