//! Fluentd's forward protocol (v1), sans-IO: bytes in, bytes out, no
//! sockets and no value trees on the hot path.
//!
//! - [`scan`]: where a msgpack value ends, without decoding it, and the
//!   few scalar reads the protocol needs.
//! - [`message`]: one message as slices of its bytes: the Message,
//!   Forward, PackedForward and CompressedPackedForward modes, the option
//!   map (`chunk`, `size`, `compressed`), and the entries inside.
//! - [`stamp`]: adds the verified sender's keys to a record, dropping any
//!   pair the app sent under those keys.
//! - Tag patterns live in `darkport_proto::tags`, beside the policies
//!   that hold them.
//! - [`filter`]: the router's per-stream processor: framing, tag policy,
//!   stamping, PackedForward out, with bounds on every size.
//! - [`handshake`]: HELO, PING and PONG of `<security> shared_key`.
//! - [`ack`]: `{"ack": chunk}` answers.
//!
//! The router, the test receiver (tests crate) and the benchmark use it.
//! The specification: <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ack;
pub mod filter;
pub mod handshake;
pub mod message;
pub mod scan;
pub mod stamp;

pub use darkport_proto::tags::{PatternError, TagRules};
pub use filter::{Counts, Denial, DenialReason, EventTime, Filter, Limits};
pub use stamp::{Stamp, StampValue};

/// Why a forward-protocol stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FluentError {
    /// Not the forward protocol, or not as the specification allows.
    #[error("not a valid Fluentd forward-protocol message: {0}")]
    Malformed(&'static str),
    /// Over a size limit.
    #[error("{what} larger than {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A compressed payload that does not decompress.
    #[error("the gzip payload does not decompress: {0}")]
    Gzip(String),
    /// The stream ended inside a message.
    #[error("the stream ended in the middle of a message ({0} bytes of it)")]
    Truncated(usize),
    /// The shared-key handshake failed.
    #[error("forward-protocol handshake: {0}")]
    Handshake(#[from] handshake::HandshakeError),
}
