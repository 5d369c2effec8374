//! [`Conn`]: one connection API over QUIC and TLS over TCP, and
//! [`Shared`], what a TCP connection's handles share with its driver task.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};

use darkport_proto::codes::CloseCode;
use darkport_proto::msg::CloseNotice;
use darkport_proto::PeerIdentity;

use super::gate::{SendGate, SEND_QUEUE};
use super::halves::{RecvHalf, RecvState, SendHalf};
use super::remote::{Lost, RemoteEnd};
use super::Transport;
use crate::hint::Hint;
use crate::tls::TlsError;

/// A data-plane connection over either transport; cheap to clone.
#[derive(Clone, Debug)]
pub struct Conn(pub(super) Inner);

#[derive(Clone, Debug)]
pub(super) enum Inner {
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
                let _ = t.shared.end.set(RemoteEnd::Lost(Lost::ClosedHereBecause(
                    String::from_utf8_lossy(reason).into_owned(),
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
            Inner::Quic(c) => quic_pair(c.open_bi().await),
            Inner::Tcp(t) => {
                let TcpSide::Client(requests) = &t.side else {
                    return Err(RemoteEnd::Lost(Lost::ServerOpens));
                };
                let lost = |e: h2::Error| {
                    t.shared
                        .end
                        .get()
                        .cloned()
                        .unwrap_or_else(|| RemoteEnd::from_h2(&e, false, t.shared.hint()))
                };
                let mut requests = requests.clone().ready().await.map_err(lost)?;
                let request = http::Request::new(());
                let (response, send) = requests.send_request(request, false).map_err(lost)?;
                Ok((
                    SendHalf::h2(send, &t.shared, true),
                    RecvHalf::h2(RecvState::Waiting(response), &t.shared),
                ))
            }
        }
    }

    /// Accepts the next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(SendHalf, RecvHalf), RemoteEnd> {
        match &self.0 {
            Inner::Quic(c) => quic_pair(c.accept_bi().await),
            Inner::Tcp(t) => {
                let TcpSide::Server(streams) = &t.side else {
                    return Err(RemoteEnd::Lost(Lost::ClientAccepts));
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

/// The halves of a QUIC stream just opened or accepted.
fn quic_pair(
    opened: Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>,
) -> Result<(SendHalf, RecvHalf), RemoteEnd> {
    let (s, r) = opened.map_err(|e| RemoteEnd::from_connection(&e))?;
    Ok((SendHalf::quic(s), RecvHalf::quic(r)))
}

/// What both ends of a TCP connection share with its driver task.
pub(super) struct Shared {
    /// Bytes received so far (liveness).
    pub(super) rx_bytes: AtomicU64,
    /// Last measured round-trip time (HTTP/2 PING), microseconds.
    pub(super) rtt_micros: AtomicU64,
    /// Why the connection ended, once it has.
    pub(super) end: OnceLock<RemoteEnd>,
    /// Set when the driver task has ended.
    pub(super) done: watch::Sender<bool>,
    /// A close asked for by the owner: code and reason.
    pub(super) close: watch::Sender<Option<(CloseCode, String)>>,
    /// What the failed TLS layer said, when a user can act on it: kept
    /// here by the I/O under h2, because h2 turns its errors into text.
    pub(super) refused: OnceLock<Hint>,
    /// What the router said on the notice stream before closing.
    pub(super) notice: OnceLock<CloseNotice>,
    /// The peer's verified certificate chain, leaf first.
    pub(super) certs: Vec<CertificateDer<'static>>,
    pub(super) remote: SocketAddr,
    /// What the connection holds queued to send, and its writers waiting
    /// for room ([`SEND_QUEUE`]).
    pub(super) gate: Arc<SendGate>,
}

impl Shared {
    pub(super) async fn wait_end(&self) -> RemoteEnd {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        self.end
            .get()
            .cloned()
            .unwrap_or_else(|| RemoteEnd::Lost(Lost::Ended))
    }

    pub(super) fn finish(&self, end: RemoteEnd) {
        // The peer's close code says more than how the socket ended.
        let _ = self.end.set(self.noticed().unwrap_or(end));
        self.done.send_replace(true);
        // Writers waiting for room now meet the connection's end in h2.
        self.gate.close();
    }

    /// What to tell the user about how the TLS layer failed, if anything.
    pub(super) fn hint(&self) -> Option<Hint> {
        self.refused.get().copied()
    }

    /// Keeps the hint in an I/O error from TLS: the first one counts.
    pub(super) fn note_tls_error(&self, e: &std::io::Error) {
        if let Some(hint) = Hint::from_io(e) {
            let _ = self.refused.set(hint);
        }
    }

    /// The peer's close, if it sent a [`CloseNotice`].
    pub(super) fn noticed(&self) -> Option<RemoteEnd> {
        self.notice.get().map(|n| RemoteEnd::Closed {
            code: u64::from(n.code),
            reason: n.reason.clone(),
        })
    }
}

pub(super) struct TcpConn {
    pub(super) shared: Arc<Shared>,
    pub(super) side: TcpSide,
}

pub(super) enum TcpSide {
    Client(h2::client::SendRequest<Bytes>),
    Server(tokio::sync::Mutex<mpsc::Receiver<(SendHalf, RecvHalf)>>),
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConn")
            .field("remote", &self.shared.remote)
            .field("end", &self.shared.end.get())
            .finish()
    }
}

pub(super) fn new_shared(
    certs: Vec<CertificateDer<'static>>,
    remote: SocketAddr,
    client: bool,
) -> Arc<Shared> {
    Arc::new(Shared {
        gate: Arc::new(SendGate::new(SEND_QUEUE, client)),
        notice: OnceLock::new(),
        refused: OnceLock::new(),
        rx_bytes: AtomicU64::new(0),
        rtt_micros: AtomicU64::new(0),
        end: OnceLock::new(),
        done: watch::Sender::new(false),
        close: watch::Sender::new(None),
        certs,
        remote,
    })
}
