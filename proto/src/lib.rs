//! Darkport's wire protocol and pure decisions.
//!
//! This crate holds everything two Darkport processes must agree on, and
//! nothing that touches a socket:
//!
//! - [`codec`]: length-prefixed frames with a hard size limit, one
//!   encode/decode style, trailing bytes rejected, and a distinct
//!   "incomplete" case for partial input.
//! - [`codes`]: every QUIC close, reset and stop code.
//! - [`msg`]: every message on the wire (dial, control, admin, enrollment,
//!   policy snapshot). docs/protocol.md describes them byte by byte.
//! - [`identity`]: identity kinds and names, and the SPIFFE-style URI that a
//!   certificate carries.
//! - [`token`]: one-time enrollment tokens, signed by the controller.
//! - [`policy`]: selectors (`#role`, `@name`, `#all`) and the pure
//!   [`policy::authorize`] decision the router makes for every stream.
//!
//! It does not do TLS, certificates or I/O beyond generic
//! `AsyncRead`/`AsyncWrite` frame helpers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod codes;
pub mod identity;
pub mod msg;
pub mod policy;
pub mod tags;
pub mod token;

pub use codec::ProtoError;
pub use identity::{IdentityName, Kind, PeerIdentity};

/// Version of the wire protocol carried in the first message of every stream.
pub const PROTOCOL_VERSION: u16 = 5;

/// The oldest version whose messages are still understood where they did
/// not change: dial requests, enrollment, renewal and the router and
/// controller lists are the same bytes in versions 3 to 5, so edge clients
/// of version 3 keep working through an upgrade (docs/protocol.md, 6.2).
/// Hosting (version 5) is new streams on the same dial messages.
pub const OLDEST_COMPATIBLE_VERSION: u16 = 3;

/// ALPN for the data plane (client ⇄ router).
pub const ALPN_DATA: &[u8] = b"darkport/1";

/// ALPN of the data plane over TLS over TCP (streams in HTTP/2 framing).
pub const ALPN_DATA_TCP: &[u8] = b"darkport-tcp/1";

/// ALPN for the control plane (anything ⇄ controller).
pub const ALPN_CONTROL: &[u8] = b"darkport-ctl/1";

/// The TLS server name (SNI) a client sends to a router, over QUIC and
/// over TCP. It carries no meaning: the router's certificate is checked
/// for a router identity URI, not for this name (docs/protocol.md, 4.1).
pub const ROUTER_SERVER_NAME: &str = "darkport-router";

/// The TLS server name (SNI) every client of the control plane sends to a
/// controller; as for routers, the certificate check is on the identity
/// URI (docs/protocol.md, 5.1).
pub const CONTROLLER_SERVER_NAME: &str = "darkport-controller";

/// Certificates are valid from this many seconds before they are issued,
/// to tolerate clock skew. Renewal schedules count from the issue time.
pub const CERT_BACKDATE_SECS: u64 = 60;

/// Trust domain written into every identity URI.
pub const TRUST_DOMAIN: &str = "darkport";
