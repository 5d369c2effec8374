//! [`ConnectError`]: why a data-plane or control connection could not be
//! made, over QUIC ([`crate::endpoint::connect_any`]) or TLS over TCP
//! ([`crate::mux::connect_tcp`], [`crate::mux::accept_tcp`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::endpoint::HANDSHAKE_TIMEOUT;
use crate::hint::Hint;
use crate::mux::RemoteEnd;

/// Why a connection could not be made, over either transport. The text
/// says what happened; [`ConnectError::hint`] says what a user can do
/// about a refused certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The name did not resolve, or to no address: check it and the DNS.
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// The name, as given (`host:port`).
        addr: String,
        /// The resolver's answer.
        source: io::Error,
    },
    /// There was no address to try.
    #[error("no address to try")]
    NoAddress,
    /// No handshake completed within [`HANDSHAKE_TIMEOUT`]: the peer is
    /// down, or a firewall drops the packets.
    #[error("no answer within {} s (tried {tried})", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout {
        /// The addresses tried (or the name, over TCP).
        tried: String,
    },
    /// A client did not complete its handshake within
    /// [`HANDSHAKE_TIMEOUT`] (accepting side).
    #[error("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    HandshakeTimeout,
    /// QUIC could not start a connection to this address.
    #[error("{addr}: {source}")]
    Start {
        /// The address.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The QUIC handshake failed: refused, timed out, or a TLS error.
    #[error("{}", crate::describe_connection_error(.0))]
    Quic(quinn::ConnectionError),
    /// A connection attempt's task ended without an answer.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// The TCP connection to this address failed: is the router's TCP
    /// port open?
    #[error("TCP connect to {addr}: {source}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The socket's error.
        source: io::Error,
    },
    /// An accepted TCP connection was already gone.
    #[error("TCP connection without a peer: {0}")]
    NoPeer(#[source] io::Error),
    /// The server name is not a DNS name or an IP address.
    #[error("bad server name {name:?}: {source}")]
    ServerName {
        /// The name.
        name: String,
        /// Why it is not one.
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake over TCP failed (a refused certificate, or not a
    /// TLS peer); `remote` is the router dialed, `None` when accepting.
    #[error("{}", TlsText(remote, source))]
    Tls {
        /// The router dialed.
        remote: Option<SocketAddr>,
        /// The TLS layer's error; a rustls error inside says why.
        source: io::Error,
    },
    /// The client offered no ALPN, or not ours.
    #[error("the client offered no ALPN {expected:?}: not a Darkport client, or too old")]
    NoAlpn {
        /// The protocol we serve.
        expected: String,
    },
    /// The HTTP/2 handshake failed; `remote` is the router dialed,
    /// `None` when accepting.
    #[error("{}", Http2Text(remote, source, hint))]
    Http2 {
        /// The router dialed.
        remote: Option<SocketAddr>,
        /// h2's error.
        source: h2::Error,
        /// What the TLS layer under h2 said, if a user can act on it.
        hint: Option<Hint>,
    },
    /// The router refused the connection after the handshakes (a refused
    /// certificate shows here, at the first read after TLS's handshake).
    #[error("{remote}: {end}")]
    Refused {
        /// The router.
        remote: SocketAddr,
        /// How it ended the connection.
        end: RemoteEnd,
    },
}

impl ConnectError {
    /// What a user can do about a refused certificate, if that is why.
    pub fn hint(&self) -> Option<Hint> {
        match self {
            ConnectError::Quic(e) => Hint::from_quic(e),
            ConnectError::Tls { source, .. } => Hint::from_io(source),
            ConnectError::Http2 { hint, .. } => *hint,
            ConnectError::Refused { end, .. } => end.hint(),
            _ => None,
        }
    }
}

/// The text of [`ConnectError::Tls`], with its hint.
struct TlsText<'a>(&'a Option<SocketAddr>, &'a io::Error);

impl fmt::Display for TlsText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let TlsText(remote, e) = *self;
        let hint = Hint::suffix(Hint::from_io(e));
        match remote {
            Some(remote) => write!(f, "TLS over TCP to {remote}: {e}{hint}"),
            None => write!(f, "TLS handshake: {e}{hint}"),
        }
    }
}

/// The text of [`ConnectError::Http2`], with its hint.
struct Http2Text<'a>(&'a Option<SocketAddr>, &'a h2::Error, &'a Option<Hint>);

impl fmt::Display for Http2Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Http2Text(remote, e, hint) = *self;
        let hint = Hint::suffix(*hint);
        match remote {
            Some(remote) => write!(f, "HTTP/2 handshake with {remote}: {e}{hint}"),
            None => write!(f, "HTTP/2 handshake: {e}{hint}"),
        }
    }
}
