//! QUIC application error codes: the one home of every code a Darkport
//! endpoint closes a connection, resets a stream or stops a stream with,
//! and of how they travel as HTTP/2 error codes over TLS over TCP.
//!
//! docs/protocol.md section 9 describes them, and `proto/tests/golden.rs`
//! pins every value, so a code cannot change without a test failing.

/// Codes of an application `CONNECTION_CLOSE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// Normal shutdown ("done", "router shutting down", "enough routers"…).
    Done,
    /// From the controller: the presented certificate is not current
    /// (unknown, revoked, expired or replaced, wrong kind).
    ControlRefused,
    /// From a router: the identity may not use the data plane (no usable
    /// identity URI, or not a client).
    Forbidden,
    /// From a router: the client identity is not, or no longer, allowed by
    /// the router's policy snapshot.
    Revoked,
    /// A limit was reached (connections per address or identity, or
    /// connections without a certificate); the reason names it. Try again
    /// later, or elsewhere.
    Busy,
    /// From a router that learned it was revoked: clients must stop using
    /// it and fetch a fresh router list.
    RouterRevoked,
}

impl CloseCode {
    /// Every code, for tests and docs.
    pub const ALL: [CloseCode; 6] = [
        CloseCode::Done,
        CloseCode::ControlRefused,
        CloseCode::Forbidden,
        CloseCode::Revoked,
        CloseCode::Busy,
        CloseCode::RouterRevoked,
    ];

    /// The value on the wire.
    pub const fn code(self) -> u32 {
        match self {
            CloseCode::Done => 0,
            CloseCode::ControlRefused => 2,
            CloseCode::Forbidden => 3,
            CloseCode::Revoked => 4,
            CloseCode::Busy => 5,
            CloseCode::RouterRevoked => 6,
        }
    }

    /// The code with this wire value, if it is one of ours.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|c| u64::from(c.code()) == code)
    }
}

/// Codes of `RESET_STREAM` and `STOP_SENDING` on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamCode {
    /// The dial was refused or given up (`STOP_SENDING` after a refusal,
    /// `RESET_STREAM` when no dial request arrived in time, or a client
    /// giving up on a silent router); control streams that time out.
    Refused,
    /// The TCP side was reset or failed: the peer resets its TCP side.
    Reset,
    /// Cut on purpose: the router's policy no longer allows the stream
    /// (revocation, a narrowed policy). The peer resets its TCP side, as
    /// for `Reset`, and can say who cut it. Older peers treat it as
    /// `Reset`.
    Cut,
    /// The router refused the data of a fluent-forward stream: not the
    /// forward protocol, over a size limit, or a message with a tag no
    /// policy allows that asked for an ack. The reason is in the router's
    /// log. Older peers treat it as `Reset`.
    Rejected,
}

impl StreamCode {
    /// The value on the wire.
    pub const fn code(self) -> u32 {
        match self {
            StreamCode::Refused => 0,
            StreamCode::Reset => 1,
            StreamCode::Cut => 2,
            StreamCode::Rejected => 3,
        }
    }
}

/// Over TLS over TCP, Darkport's close and stream codes travel as HTTP/2
/// error codes (`GOAWAY`, `RST_STREAM`): this plus the code ("DP" in the
/// top bytes), so they never collide with HTTP/2's own (`NO_ERROR`,
/// `PROTOCOL_ERROR`, `CANCEL`, ...). docs/protocol.md section 13.
pub const H2_CODE_BASE: u32 = 0x4450_0000;

/// How many HTTP/2 error codes from [`H2_CODE_BASE`] on are read as ours:
/// anything else is HTTP/2's (or another peer's) and means a lost stream or
/// connection, not a Darkport code.
pub const H2_CODE_SPAN: u32 = 0x1_0000;

/// The HTTP/2 error code that carries the Darkport code `code`.
pub const fn h2_code(code: u32) -> u32 {
    H2_CODE_BASE.wrapping_add(code)
}

/// The Darkport code inside an HTTP/2 error code, if it is one of ours.
pub fn from_h2_code(h2: u32) -> Option<u64> {
    let code = h2.checked_sub(H2_CODE_BASE)?;
    (code < H2_CODE_SPAN).then_some(u64::from(code))
}

impl CloseCode {
    /// The HTTP/2 `GOAWAY` error code of this close code.
    pub const fn h2_code(self) -> u32 {
        h2_code(self.code())
    }
}

impl StreamCode {
    /// Every code, for tests and docs.
    pub const ALL: [StreamCode; 4] = [
        StreamCode::Refused,
        StreamCode::Reset,
        StreamCode::Cut,
        StreamCode::Rejected,
    ];

    /// The HTTP/2 `RST_STREAM` error code of this stream code.
    pub const fn h2_code(self) -> u32 {
        h2_code(self.code())
    }
}
