//! Fluentd's forward protocol (v1), sans-IO: bytes in, bytes out, no
//! sockets and no value trees on the hot path.
//!
//! - [`scan`]: where a msgpack value ends, without decoding it, and the
//!   few scalar reads the protocol needs.
//! - [`message`]: one message as slices of its bytes: the Message,
//!   Forward, PackedForward and CompressedPackedForward (gzip or zstd)
//!   modes, the option map (`chunk`, `size`, `compressed`), and the
//!   entries inside.
//! - [`stamp`]: adds the verified sender's keys to a record, dropping any
//!   pair the app sent under those keys.
//! - Tag patterns live in `darkport_proto::tags`, beside the policies
//!   that hold them.
//! - [`filter`]: the router's per-stream processor: framing, tag policy,
//!   stamping, PackedForward out, with bounds on every size and on the
//!   work and output of each message ([`Limits`]).
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
pub use filter::{
    shrink_buffer, Counts, Denial, DenialReason, EventTime, Filter, Limits, KEEP_CAPACITY,
};
pub use message::Compression;
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
    /// A message with more entries than [`Limits::max_entries`]: the work
    /// (and the stamps) of one message are bounded, so a small compressed
    /// payload of tiny entries cannot make the router produce hundreds of
    /// megabytes.
    #[error("a message with more than {limit} entries; send smaller chunks (Fluent Bit: a smaller Buffer_Chunk_Size; Fluentd: chunk_limit_records or a smaller chunk_limit_size)")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// A gzip payload that does not decompress.
    #[error("the gzip payload does not decompress: {0}")]
    Gzip(String),
    /// A zstd payload (`compressed: "zstd"`) that does not decompress.
    #[error("the zstd payload does not decompress: {0}")]
    Zstd(String),
    /// The stream ended inside a message.
    #[error("the stream ended in the middle of a message ({0} bytes of it)")]
    Truncated(usize),
    /// The shared-key handshake failed.
    #[error("forward-protocol handshake: {0}")]
    Handshake(#[from] handshake::HandshakeError),
}

impl FluentError {
    /// A short name for metrics and logs (a few fixed values; a
    /// [`FluentError::TooLarge`]'s `what` is a fixed string too, if a
    /// finer label is wanted).
    pub fn as_str(&self) -> &'static str {
        match self {
            FluentError::Malformed(_) => "malformed",
            FluentError::TooLarge { .. } => "too_large",
            FluentError::TooManyEntries { .. } => "too_many_entries",
            FluentError::Gzip(_) | FluentError::Zstd(_) => "decompress",
            FluentError::Truncated(_) => "truncated",
            FluentError::Handshake(_) => "handshake",
        }
    }
}
