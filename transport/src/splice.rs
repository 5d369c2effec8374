//! Byte-exact copying between a TCP connection and a QUIC stream.
//!
//! Each direction reads into one bounded buffer and writes it out, so there
//! is no per-byte work and at most two buffers per tunneled connection.
//!
//! Half-close: end of stream on TCP (FIN) finishes the QUIC send stream;
//! end of the QUIC receive stream shuts down the TCP write side. The other
//! direction keeps flowing until it ends too.
//!
//! Reset: a TCP error (RST) resets the QUIC send stream and stops the
//! receive stream; a QUIC reset (or a lost connection) closes the TCP socket
//! with `SO_LINGER` 0, which sends RST. Neither side ever mistakes a reset
//! for a clean end of data.

use quinn::{ReadError, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Copy buffer per direction.
pub const BUF_SIZE: usize = 64 * 1024;

/// Application error code sent in QUIC RESET_STREAM / STOP_SENDING when the
/// TCP side was reset.
pub const RESET_CODE: VarInt = VarInt::from_u32(1);

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both directions ended with FIN.
    Clean,
    /// The local (TCP or stdio) side failed or was reset.
    LocalReset,
    /// The QUIC stream was reset or its connection was lost.
    RemoteReset,
    /// Cut on purpose (revocation, policy change): both sides were reset.
    Cancelled,
}

/// Bytes moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes read locally and sent over QUIC.
    pub sent: u64,
    /// Bytes received over QUIC and written locally.
    pub received: u64,
    /// Outcome.
    pub ending: Ending,
}

async fn local_to_quic<R: AsyncRead + Unpin>(
    r: &mut R,
    send: &mut SendStream,
    count: &mut u64,
) -> Ending {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                let _ = send.finish();
                return Ending::Clean;
            }
            Ok(n) => {
                if send.write_all(&buf[..n]).await.is_err() {
                    return Ending::RemoteReset;
                }
                *count += n as u64;
            }
            Err(_) => return Ending::LocalReset,
        }
    }
}

async fn quic_to_local<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    w: &mut W,
    count: &mut u64,
) -> Ending {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return Ending::LocalReset;
                }
                *count += n as u64;
            }
            Ok(None) => {
                if w.flush().await.is_err() {
                    return Ending::LocalReset;
                }
                let _ = w.shutdown().await;
                return Ending::Clean;
            }
            Err(ReadError::Reset(_)) | Err(_) => return Ending::RemoteReset,
        }
    }
}

/// Splices any local reader/writer pair with a QUIC stream until both
/// directions end or `cancel` completes. On a reset or cancel the QUIC side
/// is reset here; resetting the local side is the caller's job.
pub async fn splice_io<R, W>(
    r: &mut R,
    w: &mut W,
    send: &mut SendStream,
    recv: &mut RecvStream,
    cancel: impl std::future::Future<Output = ()>,
) -> SpliceStats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sent, mut received) = (0u64, 0u64);
    let ending = {
        let up = local_to_quic(r, send, &mut sent);
        let down = quic_to_local(recv, w, &mut received);
        tokio::pin!(up, down, cancel);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let e = tokio::select! {
                e = &mut up, if !up_done => { up_done = true; e }
                e = &mut down, if !down_done => { down_done = true; e }
                _ = &mut cancel => Ending::Cancelled,
            };
            if e != Ending::Clean {
                break e;
            }
            if up_done && down_done {
                break Ending::Clean;
            }
        }
    };
    if ending != Ending::Clean {
        let _ = send.reset(RESET_CODE);
        let _ = recv.stop(RESET_CODE);
    }
    SpliceStats {
        sent,
        received,
        ending,
    }
}

/// Splices a TCP connection with a QUIC stream; see the module docs.
pub async fn splice_tcp(tcp: TcpStream, send: SendStream, recv: RecvStream) -> SpliceStats {
    splice_tcp_until(tcp, send, recv, std::future::pending()).await
}

/// [`splice_tcp`], cut with resets on both sides when `cancel` completes.
pub async fn splice_tcp_until(
    mut tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    cancel: impl std::future::Future<Output = ()>,
) -> SpliceStats {
    let _ = tcp.set_nodelay(true);
    let stats = {
        let (mut r, mut w) = tcp.split();
        splice_io(&mut r, &mut w, &mut send, &mut recv, cancel).await
    };
    if stats.ending != Ending::Clean {
        reset_tcp(tcp);
    }
    stats
}

/// Closes a TCP connection with RST instead of FIN.
pub fn reset_tcp(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}
