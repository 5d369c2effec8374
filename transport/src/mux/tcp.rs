//! TLS 1.3 over TCP with HTTP/2 framing: dialing a router
//! ([`connect_tcp`]), accepting a client ([`accept_tcp`]), the socket
//! settings, and the lingering close of a refused handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::conn::{new_shared, Conn, Inner, TcpConn, TcpSide};
use super::gate::Counted;
use super::h2drive::{drive_client, drive_server, read_notice, ACCEPT_QUEUE};
use super::remote::RemoteEnd;
use crate::connect::ConnectError;
use crate::endpoint::{HANDSHAKE_TIMEOUT, MAX_STREAMS};

/// Largest HTTP/2 frame we take: bulk data crosses in few frames.
const H2_MAX_FRAME: u32 = 64 * 1024;
/// Per-stream receive window, as for QUIC (`endpoint::transport_config`).
const H2_STREAM_WINDOW: u32 = crate::endpoint::STREAM_WINDOW;
/// Per-connection receive window, as for QUIC.
const H2_CONN_WINDOW: u32 = crate::endpoint::CONNECTION_RECEIVE_WINDOW;
/// Most bytes queued to send per stream beyond the peer's window.
pub(super) const H2_SEND_BUFFER: usize = 1024 * 1024;
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

/// The peer's verified certificate chain, leaf first, once TLS's
/// handshake is done.
fn peer_chain(tls: &rustls::CommonState) -> Vec<CertificateDer<'static>> {
    tls.peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// Connects to a router over TLS over TCP, trying each address `addr`
/// resolves to in turn, all within [`HANDSHAKE_TIMEOUT`].
pub async fn connect_tcp(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
    server_name: &str,
) -> Result<Conn, ConnectError> {
    let work = async {
        let addrs =
            crate::endpoint::resolve_all(addr)
                .await
                .map_err(|source| ConnectError::Resolve {
                    addr: addr.to_string(),
                    source,
                })?;
        let mut last = ConnectError::NoAddress;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(tcp) => return handshake_client(tcp, a, config.clone(), server_name).await,
                Err(source) => last = ConnectError::Tcp { addr: a, source },
            }
        }
        Err(last)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                tried: addr.to_string(),
            })
        })
}

async fn handshake_client(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Conn, ConnectError> {
    tune(&tcp);
    let name =
        rustls_pki_types::ServerName::try_from(server_name.to_string()).map_err(|source| {
            ConnectError::ServerName {
                name: server_name.to_string(),
                source,
            }
        })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            remote: Some(remote),
            source,
        })?;
    let shared = new_shared(peer_chain(tls.get_ref().1), remote, true);
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
        .map_err(|source| ConnectError::Http2 {
            remote: Some(remote),
            source,
            hint: shared.hint(),
        })?;
    // Subscribed before the task runs, so a close asked for at once is seen.
    let close = shared.close.subscribe();
    tokio::spawn(drive_client(connection, shared.clone(), close));
    // The first stream is the notice stream: the router says on it why it
    // closes the connection, before it does. Waiting for it to open also
    // waits for the server's settings.
    // A router that refuses our certificate says so (a TLS alert) here,
    // at the first read after the TLS handshake.
    let refused = |e: h2::Error| ConnectError::Refused {
        remote,
        end: RemoteEnd::from_h2(&e, false, shared.hint()),
    };
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
) -> Result<Conn, ConnectError> {
    let remote = tcp.peer_addr().map_err(ConnectError::NoPeer)?;
    tune(&tcp);
    let work = async {
        let tls = match acceptor.accept(tcp).into_fallible().await {
            Ok(tls) => tls,
            Err((source, tcp)) => {
                linger_close(tcp).await;
                return Err(ConnectError::Tls {
                    remote: None,
                    source,
                });
            }
        };
        // rustls refuses a client whose ALPN offer does not match, but lets
        // one that offers none through: require ours.
        let expected = acceptor.config().alpn_protocols.first().cloned();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if expected.is_some() && negotiated != expected {
            let (tcp, _) = tls.into_inner();
            linger_close(tcp).await;
            return Err(ConnectError::NoAlpn {
                expected: String::from_utf8_lossy(&expected.unwrap_or_default()).into_owned(),
            });
        }
        let shared = new_shared(peer_chain(tls.get_ref().1), remote, false);
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
            .map_err(|source| ConnectError::Http2 {
                remote: None,
                source,
                hint: shared.hint(),
            })?;
        Ok::<_, ConnectError>((connection, shared))
    };
    let (connection, shared) = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(ConnectError::HandshakeTimeout))?;
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let close = shared.close.subscribe();
    tokio::spawn(drive_server(connection, shared.clone(), tx, close));
    Ok(Conn(Inner::Tcp(Arc::new(TcpConn {
        shared,
        side: TcpSide::Server(tokio::sync::Mutex::new(rx)),
    }))))
}
