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
//! On TCP, Darkport's codes are sent as `0x4450_0000 + code` (["DP"](H2_CODE_BASE)),
//! so they never read as HTTP/2's own error codes. A `GOAWAY` carries the
//! close code but, unlike QUIC's `CONNECTION_CLOSE`, not the reason text
//! (h2 does not let a user send debug data): a client learns *that* it was
//! refused, and the router's log says why.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use darkport_proto::codec::{encode_frame, read_frame, MAX_DIAL_FRAME};
use darkport_proto::codes::{CloseCode, StreamCode};
use darkport_proto::msg::CloseNotice;
use darkport_proto::PeerIdentity;

/// What [`accept_tcp`] takes: a TLS server configuration, shared.
pub use tokio_rustls::TlsAcceptor;

use crate::endpoint::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, KEEP_ALIVE, MAX_STREAMS};
use crate::tls::TlsError;

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

/// Darkport's stream and close codes on HTTP/2 are this plus the code
/// ("DP" in the top bytes), so they never collide with HTTP/2's own
/// error codes (`CANCEL`, `PROTOCOL_ERROR`, ...).
pub const H2_CODE_BASE: u32 = 0x4450_0000;

fn h2_reason(code: u32) -> h2::Reason {
    h2::Reason::from(H2_CODE_BASE.wrapping_add(code))
}

/// The Darkport code inside an HTTP/2 reason, if it is one of ours.
fn our_code(reason: h2::Reason) -> Option<u64> {
    let r = u32::from(reason);
    (r >= H2_CODE_BASE && r - H2_CODE_BASE < 0x1_0000).then(|| u64::from(r - H2_CODE_BASE))
}

/// What the peer did to a stream or connection, or what happened to it:
/// the error of every stream and connection operation here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteEnd {
    /// The peer reset its sending side with this code
    /// ([`StreamCode::Reset`], [`StreamCode::Cut`], ...).
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
    Lost(String),
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
            RemoteEnd::Lost(why) => f.write_str(why),
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
            other => RemoteEnd::Lost(crate::describe_connection_error(other)),
        }
    }

    fn from_read(e: &quinn::ReadError) -> RemoteEnd {
        match e {
            quinn::ReadError::Reset(code) => RemoteEnd::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => RemoteEnd::from_connection(c),
            other => RemoteEnd::Lost(other.to_string()),
        }
    }

    fn from_write(e: &quinn::WriteError) -> RemoteEnd {
        match e {
            quinn::WriteError::Stopped(code) => RemoteEnd::Stopped(code.into_inner()),
            quinn::WriteError::ConnectionLost(c) => RemoteEnd::from_connection(c),
            other => RemoteEnd::Lost(other.to_string()),
        }
    }

    /// From an h2 error on a stream (`sending`: a write failed) or on the
    /// connection.
    fn from_h2(e: &h2::Error, sending: bool) -> RemoteEnd {
        if let (true, Some(reason)) = (e.is_go_away() && e.is_remote(), e.reason()) {
            return match our_code(reason) {
                Some(code) => RemoteEnd::Closed {
                    code,
                    reason: close_name(code),
                },
                None => RemoteEnd::Lost(format!("the peer ended the connection: {e}")),
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
        // TLS alerts (a refused certificate) arrive as I/O errors.
        RemoteEnd::Lost(hint(e.to_string()))
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
fn close_name(code: u64) -> String {
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

/// A data-plane connection over either transport; cheap to clone.
#[derive(Clone, Debug)]
pub struct Conn(Inner);

#[derive(Clone, Debug)]
enum Inner {
    Quic(quinn::Connection),
    Tcp(Arc<TcpConn>),
}

impl From<quinn::Connection> for Conn {
    fn from(c: quinn::Connection) -> Conn {
        Conn(Inner::Quic(c))
    }
}

impl Conn {
    /// The transport under this connection.
    pub fn transport(&self) -> Transport {
        match &self.0 {
            Inner::Quic(_) => Transport::Quic,
            Inner::Tcp(_) => Transport::Tcp,
        }
    }

    /// The QUIC connection, for QUIC-only detail (path MTU, statistics).
    pub fn as_quic(&self) -> Option<&quinn::Connection> {
        match &self.0 {
            Inner::Quic(c) => Some(c),
            Inner::Tcp(_) => None,
        }
    }

    /// An id unique among live connections.
    pub fn stable_id(&self) -> usize {
        match &self.0 {
            Inner::Quic(c) => c.stable_id(),
            Inner::Tcp(t) => Arc::as_ptr(t) as usize,
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match &self.0 {
            Inner::Quic(c) => c.remote_address(),
            Inner::Tcp(t) => t.shared.remote,
        }
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        match &self.0 {
            Inner::Quic(c) => c.rtt(),
            Inner::Tcp(t) => Duration::from_micros(t.shared.rtt_micros.load(Ordering::Relaxed)),
        }
    }

    /// A count that moves whenever anything arrives from the peer
    /// (datagrams for QUIC, bytes for TCP): liveness, not volume.
    pub fn heard(&self) -> u64 {
        match &self.0 {
            Inner::Quic(c) => c.stats().udp_rx.datagrams,
            Inner::Tcp(t) => t.shared.rx_bytes.load(Ordering::Relaxed),
        }
    }

    /// Bytes a TCP connection holds queued to send: accepted from its
    /// streams' writers and not yet handed to TLS; at most
    /// [`SEND_QUEUE`]. `None` for QUIC, where quinn keeps the count.
    pub fn queued_to_send(&self) -> Option<u64> {
        match &self.0 {
            Inner::Quic(_) => None,
            Inner::Tcp(t) => Some(t.shared.gate.queued()),
        }
    }

    /// Largest UDP payload the path is known to carry (QUIC only).
    pub fn path_mtu(&self) -> Option<u16> {
        self.as_quic().map(|c| c.stats().path.current_mtu)
    }

    /// Why the connection ended; `None` while it is open.
    pub fn close_reason(&self) -> Option<RemoteEnd> {
        match &self.0 {
            Inner::Quic(c) => c.close_reason().map(|e| RemoteEnd::from_connection(&e)),
            Inner::Tcp(t) => t.shared.end.get().cloned().or_else(|| t.shared.noticed()),
        }
    }

    /// Completes when the connection has ended; says why.
    pub async fn closed(&self) -> RemoteEnd {
        match &self.0 {
            Inner::Quic(c) => RemoteEnd::from_connection(&c.closed().await),
            Inner::Tcp(t) => t.shared.wait_end().await,
        }
    }

    /// Closes the connection with `code`; `reason` reaches a QUIC peer.
    pub fn close(&self, code: CloseCode, reason: &[u8]) {
        match &self.0 {
            Inner::Quic(c) => c.close(crate::close_code(code), reason),
            Inner::Tcp(t) => {
                let _ = t.shared.end.set(RemoteEnd::Lost(format!(
                    "closed locally: {}",
                    String::from_utf8_lossy(reason)
                )));
                let reason = String::from_utf8_lossy(reason).into_owned();
                t.shared.close.send_replace(Some((code, reason)));
            }
        }
    }

    /// The peer's verified identity, from its leaf certificate.
    pub fn peer_identity(&self) -> Result<PeerIdentity, TlsError> {
        match &self.0 {
            Inner::Quic(c) => crate::tls::peer_identity(c),
            Inner::Tcp(t) => crate::tls::identity_from_chain(&t.shared.certs),
        }
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendHalf, RecvHalf), RemoteEnd> {
        match &self.0 {
            Inner::Quic(c) => {
                let (s, r) = c
                    .open_bi()
                    .await
                    .map_err(|e| RemoteEnd::from_connection(&e))?;
                Ok((SendHalf::quic(s), RecvHalf::quic(r)))
            }
            Inner::Tcp(t) => {
                let TcpSide::Client(requests) = &t.side else {
                    return Err(RemoteEnd::Lost(
                        "a server does not open streams on a TCP connection".into(),
                    ));
                };
                let lost = |e: h2::Error| {
                    t.shared
                        .end
                        .get()
                        .cloned()
                        .unwrap_or_else(|| RemoteEnd::from_h2(&e, false))
                };
                let mut requests = requests.clone().ready().await.map_err(lost)?;
                let request = http::Request::new(());
                let (response, send) = requests.send_request(request, false).map_err(lost)?;
                Ok((
                    SendHalf::h2(send, Some(t.shared.gate.clone())),
                    RecvHalf::h2(RecvState::Waiting(response)),
                ))
            }
        }
    }

    /// Accepts the next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(SendHalf, RecvHalf), RemoteEnd> {
        match &self.0 {
            Inner::Quic(c) => {
                let (s, r) = c
                    .accept_bi()
                    .await
                    .map_err(|e| RemoteEnd::from_connection(&e))?;
                Ok((SendHalf::quic(s), RecvHalf::quic(r)))
            }
            Inner::Tcp(t) => {
                let TcpSide::Server(streams) = &t.side else {
                    return Err(RemoteEnd::Lost(
                        "a client does not accept streams on a TCP connection".into(),
                    ));
                };
                match streams.lock().await.recv().await {
                    Some(pair) => Ok(pair),
                    None => Err(t.shared.wait_end().await),
                }
            }
        }
    }

    /// Completes (within at most `within`) once a TCP connection closed
    /// here has sent what it had queued; QUIC connections are flushed by
    /// their endpoint. Holds no handle to the connection: drop every
    /// [`Conn`] and stream of it, so that it can finish.
    pub fn flushed(&self, within: Duration) -> impl Future<Output = ()> + Send + 'static {
        let shared = match &self.0 {
            Inner::Tcp(t) => Some(t.shared.clone()),
            Inner::Quic(_) => None,
        };
        async move {
            if let Some(s) = shared {
                let mut done = s.done.subscribe();
                let _ = tokio::time::timeout(within, done.wait_for(|d| *d)).await;
            }
        }
    }
}

/// What both ends of a TCP connection share with its driver task.
struct Shared {
    /// Bytes received so far (liveness).
    rx_bytes: AtomicU64,
    /// Last measured round-trip time (HTTP/2 PING), microseconds.
    rtt_micros: AtomicU64,
    /// Why the connection ended, once it has.
    end: OnceLock<RemoteEnd>,
    /// Set when the driver task has ended.
    done: watch::Sender<bool>,
    /// A close asked for by the owner: code and reason.
    close: watch::Sender<Option<(CloseCode, String)>>,
    /// What the router said on the notice stream before closing.
    notice: OnceLock<CloseNotice>,
    /// The peer's verified certificate chain, leaf first.
    certs: Vec<CertificateDer<'static>>,
    remote: SocketAddr,
    /// What the connection holds queued to send, and its writers waiting
    /// for room ([`SEND_QUEUE`]).
    gate: Arc<SendGate>,
}

impl Shared {
    async fn wait_end(&self) -> RemoteEnd {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        self.end
            .get()
            .cloned()
            .unwrap_or_else(|| RemoteEnd::Lost("the connection ended".into()))
    }

    fn finish(&self, end: RemoteEnd) {
        // The peer's close code says more than how the socket ended.
        let _ = self.end.set(self.noticed().unwrap_or(end));
        self.done.send_replace(true);
        // Writers waiting for room now meet the connection's end in h2.
        self.gate.close();
    }

    /// The peer's close, if it sent a [`CloseNotice`].
    fn noticed(&self) -> Option<RemoteEnd> {
        self.notice.get().map(|n| RemoteEnd::Closed {
            code: u64::from(n.code),
            reason: n.reason.clone(),
        })
    }
}

struct TcpConn {
    shared: Arc<Shared>,
    side: TcpSide,
}

enum TcpSide {
    Client(h2::client::SendRequest<Bytes>),
    Server(tokio::sync::Mutex<mpsc::Receiver<(SendHalf, RecvHalf)>>),
}

impl fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConn")
            .field("remote", &self.shared.remote)
            .field("end", &self.shared.end.get())
            .finish()
    }
}

/// Largest HTTP/2 frame we take: bulk data crosses in few frames.
const H2_MAX_FRAME: u32 = 64 * 1024;
/// Per-stream receive window, as for QUIC (`endpoint::transport_config`).
const H2_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Per-connection receive window, as for QUIC.
const H2_CONN_WINDOW: u32 = 32 * 1024 * 1024;
/// Most bytes queued to send per stream beyond the peer's window.
const H2_SEND_BUFFER: usize = 1024 * 1024;

/// Most bytes one TCP connection holds queued to send: accepted from its
/// streams' writers and not yet handed to TLS. The same as QUIC's
/// per-connection send window (`send_window` in
/// `endpoint::base_transport`), so a peer costs the same over either
/// transport. Without it, h2 holds up to `H2_SEND_BUFFER` (1 MiB) for
/// each of up to [`MAX_STREAMS`] streams when a peer grants huge windows
/// and then stops reading. An honest Darkport peer never meets it: its
/// connection window (`H2_CONN_WINDOW`, also 32 MiB) already bounds what
/// h2 queues.
/// Writers wait at the limit (backpressure, as on QUIC), and go on as
/// bytes are written. Control frames and the close-notice stream are not
/// counted, so they get through at the limit.
pub const SEND_QUEUE: u64 = 32 * 1024 * 1024;
/// Largest header block we take: our requests carry none of note.
const H2_MAX_HEADERS: u32 = 4 * 1024;

/// The TCP socket settings of a data-plane connection: no Nagle delay,
/// keep-alives so a dead peer behind a NAT is noticed.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka);
}

/// Connects to a router over TLS over TCP, trying each address `addr`
/// resolves to in turn, all within [`HANDSHAKE_TIMEOUT`].
pub async fn connect_tcp(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
    server_name: &str,
) -> Result<Conn, String> {
    let work = async {
        let addrs = crate::endpoint::resolve_all(addr)
            .await
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?;
        let mut last = format!("{addr} resolves to no address");
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(tcp) => return handshake_client(tcp, a, config.clone(), server_name).await,
                Err(e) => last = format!("TCP connect to {a}: {e}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no TLS/TCP handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })
}

async fn handshake_client(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Conn, String> {
    tune(&tcp);
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("bad server name {server_name:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS over TCP to {remote}: {}", describe_tls(&e)))?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let shared = new_shared(certs, remote, true);
    let io = Counted::new(tls, shared.clone(), true);
    let (requests, connection) = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_header_list_size(H2_MAX_HEADERS)
        .max_send_buffer_size(H2_SEND_BUFFER)
        .max_concurrent_streams(0)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {remote}: {}", hint(e.to_string())))?;
    // Subscribed before the task runs, so a close asked for at once is seen.
    let close = shared.close.subscribe();
    tokio::spawn(drive_client(connection, shared.clone(), close));
    // The first stream is the notice stream: the router says on it why it
    // closes the connection, before it does. Waiting for it to open also
    // waits for the server's settings.
    // A router that refuses our certificate says so (a TLS alert) here,
    // at the first read after the TLS handshake.
    let refused = |e: h2::Error| format!("{remote}: {}", RemoteEnd::from_h2(&e, false));
    let mut requests = requests.ready().await.map_err(refused)?;
    let (response, ack) = requests
        .send_request(http::Request::new(()), false)
        .map_err(refused)?;
    let closing = shared.close.subscribe();
    tokio::spawn(read_notice(shared.clone(), response, ack, closing));
    Ok(Conn(Inner::Tcp(Arc::new(TcpConn {
        shared,
        side: TcpSide::Client(requests),
    }))))
}

/// Describes a TLS error, with the hint a user can act on (the same
/// hints as [`crate::describe_connection_error`] gives for QUIC).
fn describe_tls(e: &io::Error) -> String {
    hint(e.to_string())
}

/// `text` with the hint a user can act on, for the TLS errors that have one.
fn hint(text: String) -> String {
    let hint = if text.contains("alert: UnknownCA") || text.contains("alert: BadCertificate") {
        "; our certificate was not issued by the peer's Darkport CA (enrolled with another controller?)"
    } else if text.contains("alert: CertificateExpired") {
        "; our certificate has expired; renew it or re-enroll with a new token"
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "; the peer's certificate was not issued by this Darkport CA (enrolled with another controller?)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

fn new_shared(
    certs: Vec<CertificateDer<'static>>,
    remote: SocketAddr,
    client: bool,
) -> Arc<Shared> {
    Arc::new(Shared {
        gate: Arc::new(SendGate::new(SEND_QUEUE, client)),
        notice: OnceLock::new(),
        rx_bytes: AtomicU64::new(0),
        rtt_micros: AtomicU64::new(0),
        end: OnceLock::new(),
        done: watch::Sender::new(false),
        close: watch::Sender::new(None),
        certs,
        remote,
    })
}

/// How long a refused TLS handshake's socket reads what the client sent
/// before it is closed, and how much of it.
pub const LINGER: Duration = Duration::from_secs(1);
/// See [`LINGER`].
pub const LINGER_BYTES: usize = 64 * 1024;

/// Closes a TCP connection whose TLS handshake we refused, after its alert
/// was written: a FIN, then reading (and dropping) what the client sent
/// until it closes too, for at most [`LINGER`] and [`LINGER_BYTES`].
/// Closing a socket with unread bytes makes the kernel send a reset, which
/// can overtake the alert: the client would see "connection reset" instead
/// of why it was refused (a certificate from another CA, a revoked one).
async fn linger_close(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while read < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Completes a TLS over TCP handshake from a client and starts serving
/// HTTP/2 on it, all within [`HANDSHAKE_TIMEOUT`].
pub async fn accept_tcp(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Result<Conn, String> {
    let remote = tcp
        .peer_addr()
        .map_err(|e| format!("TCP connection without a peer: {e}"))?;
    tune(&tcp);
    let work = async {
        let tls = match acceptor.accept(tcp).into_fallible().await {
            Ok(tls) => tls,
            Err((e, tcp)) => {
                linger_close(tcp).await;
                return Err(format!("TLS handshake: {}", describe_tls(&e)));
            }
        };
        // rustls refuses a client whose ALPN offer does not match, but lets
        // one that offers none through: require ours.
        let expected = acceptor.config().alpn_protocols.first().cloned();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if expected.is_some() && negotiated != expected {
            let (tcp, _) = tls.into_inner();
            linger_close(tcp).await;
            return Err(format!(
                "the client offered no ALPN {:?}: not a Darkport client, or too old",
                String::from_utf8_lossy(&expected.unwrap_or_default())
            ));
        }
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let shared = new_shared(certs, remote, false);
        let io = Counted::new(tls, shared.clone(), false);
        let connection = h2::server::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            .max_header_list_size(H2_MAX_HEADERS)
            .max_send_buffer_size(H2_SEND_BUFFER)
            .max_concurrent_streams(MAX_STREAMS)
            // Rapid-reset defences (CVE-2023-44487): streams a peer opens
            // and resets at once are bounded, and so are our own resets.
            .max_pending_accept_reset_streams(256)
            .max_local_error_reset_streams(Some(1024))
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        Ok::<_, String>((connection, shared))
    };
    let (connection, shared) = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })?;
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let close = shared.close.subscribe();
    tokio::spawn(drive_server(connection, shared.clone(), tx, close));
    Ok(Conn(Inner::Tcp(Arc::new(TcpConn {
        shared,
        side: TcpSide::Server(tokio::sync::Mutex::new(rx)),
    }))))
}

/// Keep-alive and liveness for a TCP connection: a PING every
/// [`KEEP_ALIVE`] (which also measures the round trip), and the
/// connection is taken for lost after [`IDLE_TIMEOUT`] with nothing
/// received, as a QUIC connection would be.
struct Pulse {
    ping: Option<h2::PingPong>,
    sent: Option<Instant>,
    last: (u64, Instant),
}

impl Pulse {
    fn new(ping: Option<h2::PingPong>) -> Pulse {
        Pulse {
            ping,
            sent: None,
            last: (0, Instant::now()),
        }
    }

    /// At each tick: `Err` when the peer has been silent too long.
    fn tick(&mut self, shared: &Shared) -> Result<(), RemoteEnd> {
        let rx = shared.rx_bytes.load(Ordering::Relaxed);
        if rx != self.last.0 {
            self.last = (rx, Instant::now());
        } else if self.last.1.elapsed() >= IDLE_TIMEOUT {
            return Err(RemoteEnd::Lost(format!(
                "the peer stopped answering (nothing for {} s)",
                IDLE_TIMEOUT.as_secs()
            )));
        }
        if let (None, Some(p)) = (self.sent, self.ping.as_mut()) {
            if p.send_ping(h2::Ping::opaque()).is_ok() {
                self.sent = Some(Instant::now());
            }
        }
        Ok(())
    }

    fn poll_pong(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<()> {
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

type ClientConnection =
    h2::client::Connection<Counted<tokio_rustls::client::TlsStream<TcpStream>>, Bytes>;
type ServerConnection =
    h2::server::Connection<Counted<tokio_rustls::server::TlsStream<TcpStream>>, Bytes>;

/// Reads the router's [`CloseNotice`] from the notice stream, keeps it,
/// and acknowledges it by ending our side of the stream.
async fn read_notice(
    shared: Arc<Shared>,
    response: h2::client::ResponseFuture,
    ack: h2::SendStream<Bytes>,
    mut closing: watch::Receiver<Option<(CloseCode, String)>>,
) {
    let mut ack = SendHalf::h2(ack, None);
    let mut notice = RecvHalf::h2(RecvState::Waiting(response));
    tokio::select! {
        n = read_frame::<_, CloseNotice>(&mut notice, MAX_DIAL_FRAME) => {
            if let Ok(n) = n {
                let _ = shared.notice.set(n);
                ack.finish();
            }
        }
        // Closed here: the notice stream goes (reset on drop), so the
        // connection can finish once the other streams have.
        _ = closing.changed() => {}
    }
}

async fn drive_client(
    mut connection: ClientConnection,
    shared: Arc<Shared>,
    mut close: watch::Receiver<Option<(CloseCode, String)>>,
) {
    let mut pulse = Pulse::new(connection.ping_pong());
    let mut tick = tokio::time::interval(KEEP_ALIVE);
    tokio::pin!(connection);
    let end = loop {
        tokio::select! {
            r = &mut connection => break match r {
                Ok(()) => RemoteEnd::Lost("the router closed the connection".into()),
                Err(e) => RemoteEnd::from_h2(&e, false),
            },
            _ = tick.tick() => if let Err(e) = pulse.tick(&shared) { break e },
            _ = poll_fn(|cx| pulse.poll_pong(cx, &shared)) => {}
            Ok(()) = close.changed() => {
                // A client cannot send GOAWAY through h2; it lets what is
                // queued go out (the connection completes once every
                // stream and handle is gone), then drops the socket.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut connection).await;
                break RemoteEnd::Lost("closed locally".into());
            }
        }
    };
    shared.finish(end);
}

/// Streams accepted from a TCP client and not yet taken by the server
/// (`Conn::accept_bi`). Past it, new streams are refused (REFUSED_STREAM):
/// a peer that opens streams faster than they are served, or opens and
/// resets them (the rapid-reset class), cannot queue them without bound.
pub const ACCEPT_QUEUE: usize = 256;

/// Streams refused because the accept queue was full, on one connection,
/// before the connection is ended with GOAWAY (ENHANCE_YOUR_CALM): an
/// honest client waits for its answers and never gets near it.
pub const MAX_REFUSED_STREAMS: u32 = 1024;

/// What to do with a stream accepted from a TCP client, given how full the
/// accept queue is and how many were refused before: pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptDecision {
    /// Queue it for the server.
    Queue,
    /// Refuse it (REFUSED_STREAM); the client may retry it.
    Refuse,
    /// End the connection (GOAWAY ENHANCE_YOUR_CALM): refused too often.
    Calm,
}

/// [`AcceptDecision`] for a stream when the queue has `room` and
/// `refused` streams were refused before on this connection.
pub fn accept_decision(room: bool, refused: u32) -> AcceptDecision {
    match (room, refused) {
        (true, _) => AcceptDecision::Queue,
        (false, r) if r >= MAX_REFUSED_STREAMS => AcceptDecision::Calm,
        (false, _) => AcceptDecision::Refuse,
    }
}

async fn drive_server(
    mut connection: ServerConnection,
    shared: Arc<Shared>,
    streams: mpsc::Sender<(SendHalf, RecvHalf)>,
    mut close: watch::Receiver<Option<(CloseCode, String)>>,
) {
    let mut refused: u32 = 0;
    let mut pulse = Pulse::new(connection.ping_pong());
    let mut tick = tokio::time::interval(KEEP_ALIVE);
    // The client's first stream: where the close notice goes.
    let mut notice: Option<(SendHalf, RecvHalf)> = None;
    let end = loop {
        tokio::select! {
            next = connection.accept() => match next {
                None => break RemoteEnd::Lost("the client closed the connection".into()),
                Some(Err(e)) => break RemoteEnd::from_h2(&e, false),
                Some(Ok((request, mut respond))) => {
                    let recv = request.into_body();
                    // The answer's headers go out at once, so the client
                    // can read; the dial answer itself is in the body.
                    if notice.is_none() {
                        if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                            notice = Some((SendHalf::h2(send, None), RecvHalf::h2(RecvState::Open(recv))));
                        }
                        continue;
                    }
                    match accept_decision(streams.capacity() > 0, refused) {
                        AcceptDecision::Queue => {
                            if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                                let pair = (SendHalf::h2(send, Some(shared.gate.clone())), RecvHalf::h2(RecvState::Open(recv)));
                                let _ = streams.try_send(pair);
                            }
                        }
                        AcceptDecision::Refuse => {
                            refused += 1;
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                        AcceptDecision::Calm => {
                            tracing::info!(remote = %shared.remote, "ending a TCP connection: {refused} streams refused, its accept queue ({ACCEPT_QUEUE}) full");
                            connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                poll_fn(|cx| connection.poll_closed(cx)),
                            )
                            .await;
                            break RemoteEnd::Lost("too many streams refused".into());
                        }
                    }
                }
            },
            _ = tick.tick() => if let Err(e) = pulse.tick(&shared) { break e },
            _ = poll_fn(|cx| pulse.poll_pong(cx, &shared)) => {}
            Ok(()) = close.changed() => {
                let (code, reason) = close.borrow().clone().unwrap_or((CloseCode::Done, String::new()));
                let said = tokio::time::timeout(
                    NOTICE_TIMEOUT,
                    send_notice(&mut connection, notice.take(), code, reason),
                )
                .await;
                if said.is_err() {
                    tracing::debug!(remote = %shared.remote, "the client did not take the close notice in time");
                }
                connection.abrupt_shutdown(h2_reason(code.code()));
                // Send the GOAWAY and what is queued, briefly.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    poll_fn(|cx| connection.poll_closed(cx)),
                )
                .await;
                break RemoteEnd::Lost("closed locally".into());
            }
        }
    };
    shared.finish(end);
}

/// How long a router waits for a client to take its close notice.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes the close notice on the notice stream (waiting for the client
/// to open it, if it has not yet) and waits for the client's end of that
/// stream, which says it has read it; drives the connection meanwhile.
async fn send_notice(
    connection: &mut ServerConnection,
    mut notice: Option<(SendHalf, RecvHalf)>,
    code: CloseCode,
    reason: String,
) {
    while notice.is_none() {
        match connection.accept().await {
            Some(Ok((request, mut respond))) => {
                if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                    notice = Some((
                        SendHalf::h2(send, None),
                        RecvHalf::h2(RecvState::Open(request.into_body())),
                    ));
                }
            }
            _ => return,
        }
    }
    let Some((mut send, mut recv)) = notice else {
        return;
    };
    let mut reason = reason;
    // Within the frame limit whatever the reason's length.
    if reason.len() > 1024 {
        let mut cut = 1024;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let frame = encode_frame(
        &CloseNotice {
            code: code.code(),
            reason,
        },
        MAX_DIAL_FRAME,
    );
    let Ok(frame) = frame else { return };
    if send.write_chunk(Bytes::from(frame)).await.is_err() {
        return;
    }
    send.finish();
    let mut chunk = [Bytes::new()];
    let acked = async { while let Ok(Some(_)) = recv.read_chunks(&mut chunk).await {} };
    tokio::pin!(acked);
    loop {
        tokio::select! {
            _ = &mut acked => return,
            r = connection.accept() => if r.is_none() { return },
        }
    }
}

/// The async side of [`sendq::SendQueue`]: one per TCP connection,
/// shared by its writers ([`H2Send`]) and the I/O under h2 ([`Counted`]).
struct SendGate {
    /// Locked briefly, never across an await: once per write handed to h2
    /// and once per write to TLS that carries frames we count.
    queue: std::sync::Mutex<sendq::SendQueue>,
    /// Wakes the writers waiting for room. An `Arc` so that a writer can
    /// hold its wait ([`tokio::sync::futures::OwnedNotified`]) across polls.
    freed: Arc<Notify>,
}

/// A writer's wait for room in the send queue, kept across polls.
type Waiting = Pin<Box<tokio::sync::futures::OwnedNotified>>;

impl SendGate {
    fn new(limit: u64, client: bool) -> SendGate {
        SendGate {
            queue: std::sync::Mutex::new(sendq::SendQueue::new(limit, client)),
            freed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, sendq::SendQueue> {
        // A panic elsewhere leaves the counts as they were: still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, wake: bool) {
        if wake {
            self.freed.notify_waiters();
        }
    }

    /// Bytes queued now.
    fn queued(&self) -> u64 {
        self.lock().queued()
    }

    /// Waits for room to queue up to `want` bytes on `stream`: how many,
    /// counted (`Some`), or `None` for as many as h2 takes, uncounted
    /// (the stream or the connection is over, so h2 fails or drops them).
    fn poll_grant(
        &self,
        cx: &mut Context<'_>,
        stream: u32,
        want: usize,
        waiting: &mut Option<Waiting>,
    ) -> Poll<Option<usize>> {
        use sendq::Grant;
        // The lock is never held while calling into h2: h2 holds its own
        // lock while it writes to `Counted`, which takes this one.
        loop {
            if let Some(w) = waiting.as_mut() {
                ready!(w.as_mut().poll(cx));
                *waiting = None;
            }
            let grant = self.lock().grant(stream, want);
            match grant {
                Grant::Counted(n) => return Poll::Ready(Some(n)),
                Grant::Uncounted => return Poll::Ready(None),
                Grant::Wait => {}
            }
            // A wait made now hears every wake from now on, even before
            // it is polled; asking again after making it misses none.
            let w = Box::pin(self.freed.clone().notified_owned());
            let grant = self.lock().grant(stream, want);
            match grant {
                Grant::Counted(n) => return Poll::Ready(Some(n)),
                Grant::Uncounted => return Poll::Ready(None),
                Grant::Wait => *waiting = Some(w),
            }
        }
    }

    fn refund(&self, stream: u32, n: usize) {
        let wake = self.lock().refund(stream, n);
        self.wake(wake);
    }

    fn reset(&self, stream: u32) {
        let wake = self.lock().reset(stream);
        self.wake(wake);
    }

    fn close(&self) {
        let wake = self.lock().close();
        self.wake(wake);
    }

    /// `pieces` were written to TLS, in order: give back their DATA
    /// payload.
    fn sent<'a>(
        &self,
        walker: &mut sendq::FrameWalker,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let mut queue = None;
        let mut wake = false;
        let mut on = |frame| {
            let q = queue.get_or_insert_with(|| self.lock());
            wake |= q.sent(frame);
        };
        for bytes in pieces {
            walker.feed(bytes, &mut on);
        }
        drop(queue);
        self.wake(wake);
    }

    /// `bytes` were read from TLS: note streams opened and given up.
    fn received(&self, walker: &mut sendq::FrameWalker, bytes: &[u8]) {
        let mut queue = None;
        let mut wake = false;
        walker.feed(bytes, &mut |frame| {
            // Most of what arrives is data, which changes nothing here:
            // no lock for it.
            if let sendq::Frame::Data(..) | sendq::Frame::Ended(_) = frame {
                return;
            }
            let q = queue.get_or_insert_with(|| self.lock());
            wake |= q.received(frame);
        });
        drop(queue);
        self.wake(wake);
    }
}

/// The TLS stream under h2: counts bytes read (liveness), and follows the
/// frames crossing both ways for the send queue ([`SendGate`]).
struct Counted<T> {
    io: T,
    shared: Arc<Shared>,
    /// Frames we write, as they reach TLS.
    out: sendq::FrameWalker,
    /// Frames the peer writes, as h2 reads them.
    inn: sendq::FrameWalker,
}

impl<T> Counted<T> {
    fn new(io: T, shared: Arc<Shared>, client: bool) -> Counted<T> {
        // The client's preface comes before its first frame.
        let (out, inn) = if client {
            (sendq::PREFACE, 0)
        } else {
            (0, sendq::PREFACE)
        };
        Counted {
            io,
            shared,
            out: sendq::FrameWalker::new(out),
            inn: sendq::FrameWalker::new(inn),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.shared
                .rx_bytes
                .fetch_add(read.len() as u64, Ordering::Relaxed);
            this.shared.gate.received(&mut this.inn, read);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.shared.gate.sent(&mut this.out, [&buf[..n]]);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            // The first `n` bytes across the slices (empty ones too).
            let written = bufs.iter().scan(n, |left, b| {
                let k = (*left).min(b.len());
                *left -= k;
                (k > 0 || *left > 0).then(|| &b[..k])
            });
            this.shared.gate.sent(&mut this.out, written);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The sending half of a stream.
///
/// Dropping it before [`SendHalf::finish`] resets the stream, on both
/// transports: a sender that went away mid-stream never looks like a
/// clean end of data. The code is [`StreamCode::Reset`], or
/// [`StreamCode::Refused`] if nothing was ever sent (a stream given up
/// before its dial was answered).
#[derive(Debug)]
pub struct SendHalf {
    inner: SendInner,
    /// Finished or reset: nothing more to send.
    done: bool,
    /// Whether anything was sent.
    wrote: bool,
}

#[derive(Debug)]
enum SendInner {
    Quic(quinn::SendStream),
    H2(H2Send),
}

/// The sending half of an HTTP/2 stream.
struct H2Send {
    stream: h2::SendStream<Bytes>,
    /// Its id, under which the send queue counts it.
    id: u32,
    /// The connection's send queue; `None` for the close-notice streams,
    /// which must get through when it is full (a few bytes, once).
    gate: Option<Arc<SendGate>>,
    /// Set while waiting for room in the send queue.
    waiting: Option<Waiting>,
}

/// Room to send, from [`H2Send::poll_room`].
#[derive(Debug, Clone, Copy)]
struct Room {
    /// How many bytes.
    len: usize,
    /// Whether the send queue counted them (and takes them back if h2
    /// refuses them).
    counted: bool,
}

impl fmt::Debug for H2Send {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("H2Send")
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        if !self.done {
            self.reset(if self.wrote {
                StreamCode::Reset
            } else {
                StreamCode::Refused
            });
        }
    }
}

impl H2Send {
    /// Why sending is over: the peer's reset, or the connection's end.
    fn why(&mut self) -> RemoteEnd {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_reset(&mut cx) {
            Poll::Ready(Ok(reason)) => match our_code(reason) {
                Some(code) => RemoteEnd::Stopped(code),
                None => RemoteEnd::Lost(format!("the peer reset the stream ({reason})")),
            },
            Poll::Ready(Err(e)) => RemoteEnd::from_h2(&e, true),
            Poll::Pending => RemoteEnd::Lost("the stream is closed".into()),
        }
    }

    /// Waits for flow-control credit; how much there is.
    fn poll_credit(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<usize, RemoteEnd>> {
        self.stream.reserve_capacity(want);
        loop {
            let room = self.stream.capacity();
            if room > 0 {
                return Poll::Ready(Ok(room));
            }
            match ready!(self.stream.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(RemoteEnd::from_h2(&e, true))),
                None => return Poll::Ready(Err(self.why())),
            }
        }
    }

    /// Waits for room to send up to `want` bytes: flow-control credit,
    /// then room in the connection's send queue. Send at once what it
    /// grants, with [`H2Send::send`].
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<Room, RemoteEnd>> {
        let credit = ready!(self.poll_credit(cx, want))?;
        let Some(gate) = &self.gate else {
            return Poll::Ready(Ok(Room {
                len: credit,
                counted: false,
            }));
        };
        match gate.poll_grant(cx, self.id, want.min(credit), &mut self.waiting) {
            Poll::Ready(Some(len)) => Poll::Ready(Ok(Room { len, counted: true })),
            Poll::Ready(None) => Poll::Ready(Ok(Room {
                len: credit,
                counted: false,
            })),
            // The queue may stay full for long (a peer that does not
            // read): a reset of this stream ends the wait too.
            Poll::Pending => match self.stream.poll_reset(cx) {
                Poll::Ready(_) => {
                    self.waiting = None;
                    Poll::Ready(Err(self.why()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Sends `data`, at most what [`H2Send::poll_room`] gave as `room`.
    fn send(&mut self, data: Bytes, room: Room) -> Result<(), RemoteEnd> {
        let len = data.len();
        let sent = self.stream.send_data(data, false);
        // What was counted and not queued goes back (all of it if h2
        // refused the data).
        let unused = match sent {
            Ok(()) => room.len.saturating_sub(len),
            Err(_) => room.len,
        };
        if let (true, true, Some(gate)) = (room.counted, unused > 0, &self.gate) {
            gate.refund(self.id, unused);
        }
        sent.map_err(|e| RemoteEnd::from_h2(&e, true))
    }

    /// We reset the stream: h2 dropped what it had queued for it.
    fn reset(&mut self, reason: h2::Reason) {
        self.stream.send_reset(reason);
        self.waiting = None;
        if let Some(gate) = &self.gate {
            gate.reset(self.id);
        }
    }
}

fn finished() -> RemoteEnd {
    RemoteEnd::Lost("the stream was already finished or reset here".into())
}

impl SendHalf {
    fn quic(s: quinn::SendStream) -> SendHalf {
        SendHalf {
            inner: SendInner::Quic(s),
            done: false,
            wrote: false,
        }
    }

    /// `gate`: the connection's send queue, `None` for a close-notice
    /// stream.
    fn h2(stream: h2::SendStream<Bytes>, gate: Option<Arc<SendGate>>) -> SendHalf {
        let id = u32::from(stream.stream_id());
        SendHalf {
            inner: SendInner::H2(H2Send {
                stream,
                id,
                gate,
                waiting: None,
            }),
            done: false,
            wrote: false,
        }
    }

    /// Sends `data` (no copy), waiting for flow-control credit.
    pub async fn write_chunk(&mut self, data: Bytes) -> Result<(), RemoteEnd> {
        if self.done {
            return Err(finished());
        }
        self.wrote = true;
        match &mut self.inner {
            SendInner::Quic(s) => s
                .write_chunk(data)
                .await
                .map_err(|e| RemoteEnd::from_write(&e)),
            SendInner::H2(s) => {
                let mut data = data;
                while !data.is_empty() {
                    let room = poll_fn(|cx| s.poll_room(cx, data.len())).await?;
                    let piece = data.split_to(room.len.min(data.len()));
                    s.send(piece, room)?;
                }
                Ok(())
            }
        }
    }

    /// Ends the stream cleanly (FIN / `END_STREAM`): the peer reads to
    /// the end, then sees end of stream.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        match &mut self.inner {
            SendInner::Quic(s) => {
                let _ = s.finish();
            }
            SendInner::H2(s) => {
                let _ = s.stream.send_data(Bytes::new(), true);
            }
        }
    }

    /// Abandons the stream with `code`: what was not yet delivered is
    /// dropped, and the peer's reads fail with this code.
    pub fn reset(&mut self, code: StreamCode) {
        self.done = true;
        match &mut self.inner {
            SendInner::Quic(s) => {
                let _ = s.reset(crate::stream_code(code));
            }
            SendInner::H2(s) => s.reset(h2_reason(code.code())),
        }
    }

    /// Waits until the peer has everything sent or stopped reading (QUIC;
    /// over TCP, what was sent goes out with the connection's close, see
    /// [`Conn::flushed`]).
    pub async fn stopped(&mut self) {
        if let SendInner::Quic(s) = &mut self.inner {
            let _ = s.stopped().await;
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(finished().into()));
        }
        this.wrote = true;
        match &mut this.inner {
            SendInner::Quic(s) => Pin::new(s).poll_write(cx, buf).map_err(io::Error::from),
            SendInner::H2(s) => {
                if buf.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                let room = ready!(s.poll_room(cx, buf.len()))?;
                let n = room.len.min(buf.len());
                s.send(Bytes::copy_from_slice(&buf[..n]), room)?;
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            SendInner::Quic(s) => Pin::new(s).poll_flush(cx),
            SendInner::H2(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.inner {
            SendInner::Quic(s) => {
                let r = Pin::new(s).poll_shutdown(cx);
                if r.is_ready() {
                    this.done = true;
                }
                r
            }
            SendInner::H2(_) => {
                this.finish();
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct RecvHalf {
    inner: RecvInner,
    /// Received and not yet read ([`AsyncRead`] on HTTP/2 only).
    pending: Bytes,
}

#[derive(Debug)]
enum RecvInner {
    Quic(quinn::RecvStream),
    H2(RecvState),
}

enum RecvState {
    /// A stream we opened: the peer's side starts with its headers.
    Waiting(h2::client::ResponseFuture),
    Open(h2::RecvStream),
    /// Stopped here.
    Stopped,
}

impl fmt::Debug for RecvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvState::Waiting(_) => "Waiting",
            RecvState::Open(_) => "Open",
            RecvState::Stopped => "Stopped",
        })
    }
}

fn read_error(e: &h2::Error) -> RemoteEnd {
    RemoteEnd::from_h2(e, false)
}

impl RecvState {
    /// The next non-empty chunk; `None` at the end of the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, RemoteEnd>> {
        loop {
            match self {
                RecvState::Waiting(response) => {
                    let r = ready!(Pin::new(response).poll(cx)).map_err(|e| read_error(&e))?;
                    *self = RecvState::Open(r.into_body());
                }
                RecvState::Open(s) => match ready!(s.poll_data(cx)) {
                    None => return Poll::Ready(Ok(None)),
                    Some(Err(e)) => return Poll::Ready(Err(read_error(&e))),
                    Some(Ok(b)) => {
                        // Credit goes back as soon as a chunk is taken:
                        // the reader holds at most this one chunk.
                        let _ = s.flow_control().release_capacity(b.len());
                        if !b.is_empty() {
                            return Poll::Ready(Ok(Some(b)));
                        }
                    }
                },
                RecvState::Stopped => {
                    return Poll::Ready(Err(RemoteEnd::Lost("the stream was stopped".into())))
                }
            }
        }
    }
}

impl RecvHalf {
    fn quic(r: quinn::RecvStream) -> RecvHalf {
        RecvHalf {
            inner: RecvInner::Quic(r),
            pending: Bytes::new(),
        }
    }

    fn h2(state: RecvState) -> RecvHalf {
        RecvHalf {
            inner: RecvInner::H2(state),
            pending: Bytes::new(),
        }
    }

    /// Reads up to `bufs.len()` chunks as they arrived (no copy); `None`
    /// at the end of the stream.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, RemoteEnd> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        if !self.pending.is_empty() {
            bufs[0] = std::mem::take(&mut self.pending);
            return Ok(Some(1));
        }
        match &mut self.inner {
            RecvInner::Quic(r) => r
                .read_chunks(bufs)
                .await
                .map_err(|e| RemoteEnd::from_read(&e)),
            RecvInner::H2(s) => Ok(poll_fn(|cx| s.poll_chunk(cx)).await?.map(|b| {
                bufs[0] = b;
                1
            })),
        }
    }

    /// Reads the next chunk (at most `max` bytes on QUIC; a whole HTTP/2
    /// frame on TCP); `None` at the end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RemoteEnd> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        match &mut self.inner {
            RecvInner::Quic(r) => r
                .read_chunk(max, true)
                .await
                .map(|c| c.map(|c| c.bytes))
                .map_err(|e| RemoteEnd::from_read(&e)),
            RecvInner::H2(s) => poll_fn(|cx| s.poll_chunk(cx)).await,
        }
    }

    /// Stops reading: QUIC tells the peer with `STOP_SENDING` and `code`;
    /// on HTTP/2, whose `RST_STREAM` would also drop what we still send,
    /// the stream is let go and ends when both sides are done.
    pub fn stop(&mut self, code: StreamCode) {
        match &mut self.inner {
            RecvInner::Quic(r) => {
                let _ = r.stop(crate::stream_code(code));
            }
            RecvInner::H2(s) => *s = RecvState::Stopped,
        }
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match &mut this.inner {
                RecvInner::Quic(r) => {
                    return Pin::new(r).poll_read(cx, buf).map_err(|e| {
                        match e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<quinn::ReadError>())
                        {
                            Some(r) => RemoteEnd::from_read(r).into(),
                            None => e,
                        }
                    })
                }
                RecvInner::H2(s) => match ready!(s.poll_chunk(cx)) {
                    Ok(None) => return Poll::Ready(Ok(())),
                    Ok(Some(b)) => this.pending = b,
                    Err(e) => return Poll::Ready(Err(e.into())),
                },
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
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

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn streams_queue_while_there_is_room_then_are_refused_then_the_connection_ends() {
        assert_eq!(accept_decision(true, 0), AcceptDecision::Queue);
        assert_eq!(
            accept_decision(true, MAX_REFUSED_STREAMS * 2),
            AcceptDecision::Queue
        );
        assert_eq!(accept_decision(false, 0), AcceptDecision::Refuse);
        assert_eq!(
            accept_decision(false, MAX_REFUSED_STREAMS - 1),
            AcceptDecision::Refuse
        );
        assert_eq!(
            accept_decision(false, MAX_REFUSED_STREAMS),
            AcceptDecision::Calm
        );
    }
}

#[cfg(test)]
mod counted_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Takes at most `per_write` bytes a write, vectored or not.
    struct Trickle {
        per_write: usize,
        got: Vec<u8>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.per_write);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.per_write - n);
                self.got.extend_from_slice(&b[..k]);
                n += k;
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn data_written_in_pieces_and_slices_is_given_back_exactly() {
        let payload = vec![9u8; 40_000];
        // A client's preface, then DATA frames (no END_STREAM, which would
        // give back whatever is left and hide a miscount).
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for (stream, len) in [(1u32, 40_000usize), (3, 1000), (1, 5)] {
            wire.extend(&(len as u32).to_be_bytes()[1..]);
            wire.extend([0, 0]);
            wire.extend(stream.to_be_bytes());
            wire.extend(&payload[..len]);
        }
        for per_write in [1, 7, 9, 4096, usize::MAX] {
            let shared = new_shared(Vec::new(), ([127, 0, 0, 1], 1).into(), true);
            let queued = |s: u32, n: usize| {
                assert_eq!(
                    shared.gate.lock().grant(s, n),
                    sendq::Grant::Counted(n),
                    "{per_write}"
                );
            };
            // 5 bytes more than cross, as if still in h2.
            queued(1, 40_010);
            queued(3, 1000);
            let sink = Trickle {
                per_write,
                got: Vec::new(),
            };
            let mut io = Counted::new(sink, shared.clone(), true);
            // Vectored, with empty slices between the pieces, the way h2
            // writes a frame header and then its payload.
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(rest.len().min(13));
                let slices = [
                    io::IoSlice::new(&[]),
                    io::IoSlice::new(a),
                    io::IoSlice::new(&[]),
                    io::IoSlice::new(b),
                ];
                let n = io.write_vectored(&slices).await.expect("write");
                rest = &rest[n..];
            }
            assert_eq!(io.io.got, wire, "{per_write}");
            assert_eq!(shared.gate.queued(), 5, "{per_write}");
        }
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

    #[test]
    fn transport_modes_parse() {
        for m in ["auto", "quic", "tcp"] {
            assert_eq!(m.parse::<TransportMode>().unwrap().to_string(), m);
        }
        let e = "udp".parse::<TransportMode>().unwrap_err();
        assert!(e.contains("auto, quic or tcp"), "{e}");
    }
}

/// The send-side memory bound of a TCP connection, as a state machine
/// with no I/O: what one HTTP/2 connection holds queued to send, and when
/// a writer may queue more.
///
/// h2 buffers what a stream's writer hands it until the peer's windows
/// let it out, up to [`H2_SEND_BUFFER`] per stream. A peer that grants
/// huge windows and then stops reading its socket would make us hold that
/// for every one of up to [`MAX_STREAMS`] streams. QUIC bounds the same
/// thing per connection (quinn's `send_window`); this is that bound for
/// HTTP/2. h2 does not say when data reaches the socket, so the I/O
/// wrapper under h2 ([`Counted`]) reads the frame headers of the bytes
/// going out ([`FrameWalker`]) and gives back each stream's DATA payload
/// as it is written, exactly. Data h2 drops without writing it (a stream
/// reset either way, streams a GOAWAY gives up) is given back when the
/// `RST_STREAM` or `GOAWAY` crosses; the connection's end opens the gate
/// for good (h2 then fails every write).
mod sendq;
