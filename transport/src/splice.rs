//! Byte-exact copying between a TCP connection and a Darkport stream
//! (QUIC, or HTTP/2 over TLS over TCP: [`crate::mux`]).
//!
//! TCP → QUIC waits for data without a buffer, then reads into a
//! [`BUF_SIZE`] buffer that is handed to quinn as is when it holds at least
//! half a buffer (no copy), or copied out exactly when it holds less. Other
//! local readers (stdin) read into a buffer sized to the traffic (at most
//! [`BUF_SIZE`], [`MIN_BUF`] while idle), handed to quinn as is.
//! QUIC → local writes quinn's received chunks straight out, several per
//! system call. There is no per-byte work on bulk data, and an idle TCP
//! connection holds no buffer.
//!
//! Half-close: end of stream on TCP (FIN) finishes the QUIC send stream;
//! end of the QUIC receive stream shuts down the TCP write side. The other
//! direction keeps flowing until it ends too.
//!
//! Reset: a TCP error (RST) resets the QUIC send stream and stops the
//! receive stream; a QUIC reset (or a lost connection) closes the TCP socket
//! with `SO_LINGER` 0, which sends RST. Neither side ever mistakes a reset
//! for a clean end of data.

use bytes::Bytes;
use darkport_proto::codes::StreamCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

pub use crate::mux::RemoteEnd;
use crate::mux::{RecvHalf, SendHalf};

/// Largest local read, handed to the transport in one piece.
pub const BUF_SIZE: usize = 64 * 1024;

/// Smallest local read buffer: what an idle connection waits on.
pub const MIN_BUF: usize = 4 * 1024;

/// Most received chunks (about one packet each on QUIC) per local write.
const CHUNKS: usize = 32;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both directions ended with FIN.
    Clean,
    /// The local (TCP or stdio) side failed or was reset.
    LocalReset,
    /// The stream was reset or its connection was lost.
    RemoteReset,
    /// Cut on purpose (revocation, policy change): both sides were reset.
    Cancelled,
}

/// Bytes moved and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes read locally and sent over QUIC.
    pub sent: u64,
    /// Bytes received over QUIC and written locally.
    pub received: u64,
    /// Outcome.
    pub ending: Ending,
    /// With [`Ending::RemoteReset`]: what the peer did.
    pub remote: Option<RemoteEnd>,
}

/// The local side ended cleanly: finishes the stream (the FIN goes out at
/// once) and returns when the peer has read it to completion (or stopped
/// it, or the connection ended). Until then the data is only in our send
/// buffer, so the stream is still in flight: a draining router that closed
/// its connections as soon as its splices returned would throw it away.
async fn finish(send: &mut SendHalf) -> Ending {
    send.finish();
    send.stopped().await;
    Ending::Clean
}

async fn local_to_quic<R: AsyncRead + Unpin>(
    r: &mut R,
    send: &mut SendHalf,
    count: &mut u64,
    remote: &mut Option<RemoteEnd>,
) -> Ending {
    // Each read gets a fresh buffer that quinn keeps until acknowledged, so
    // nothing is copied into its send buffer. The size follows the traffic:
    // it doubles while reads fill it, else drops to what the last read
    // needed, so a connection that went quiet waits on a small buffer.
    let mut cap = MIN_BUF;
    loop {
        let mut buf = Vec::with_capacity(cap);
        match r.read_buf(&mut buf).await {
            Ok(0) => return finish(send).await,
            Ok(n) => {
                cap = if n >= cap {
                    (cap * 2).min(BUF_SIZE)
                } else {
                    n.next_power_of_two().clamp(MIN_BUF, BUF_SIZE)
                };
                if let Err(e) = send.write_chunk(buf.into()).await {
                    *remote = Some(e);
                    return Ending::RemoteReset;
                }
                *count += n as u64;
            }
            Err(_) => return Ending::LocalReset,
        }
    }
}

/// Local TCP → QUIC, for a socket: waits for data holding no buffer, then
/// reads into one [`BUF_SIZE`] buffer until the socket is drained. A read
/// of at least half a buffer is handed to quinn as is (no copy); a smaller
/// one is copied into a chunk of its own size and the buffer is used again.
/// A burst of any size costs one read per [`BUF_SIZE`], and an idle
/// connection holds no buffer at all.
async fn tcp_to_quic(
    r: &OwnedReadHalf,
    send: &mut SendHalf,
    count: &mut u64,
    meter: &Meter<'_>,
    remote: &mut Option<RemoteEnd>,
) -> Ending {
    loop {
        if r.readable().await.is_err() {
            return Ending::LocalReset;
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if buf.capacity() == 0 {
                buf.reserve_exact(BUF_SIZE);
            }
            match r.try_read_buf(&mut buf) {
                Ok(0) => return finish(send).await,
                Ok(n) => {
                    let chunk = if n >= BUF_SIZE / 2 {
                        Bytes::from(std::mem::take(&mut buf))
                    } else {
                        let c = Bytes::copy_from_slice(&buf);
                        buf.clear();
                        c
                    };
                    if let Err(e) = send.write_chunk(chunk).await {
                        *remote = Some(e);
                        return Ending::RemoteReset;
                    }
                    *count += n as u64;
                    (meter.sent)(n as u64);
                }
                // Drained: wait for more without a buffer.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Ending::LocalReset,
            }
        }
    }
}

/// Writes all of `chunks`: several per system call when `w` takes vectors
/// (TCP does), else gathered into one buffer per call.
async fn write_all_chunks<W, B>(w: &mut W, chunks: &[B]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    B: std::ops::Deref<Target = [u8]>,
{
    if !w.is_write_vectored() {
        let mut all = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
        for c in chunks {
            all.extend_from_slice(c);
        }
        return w.write_all(&all).await;
    }
    // Position: chunk `i`, byte `skip` within it.
    let (mut i, mut skip) = (0, 0);
    loop {
        // Past written and empty chunks: all-empty vectors would write 0.
        while i < chunks.len() && chunks[i].len() == skip {
            i += 1;
            skip = 0;
        }
        if i == chunks.len() {
            return Ok(());
        }
        let mut iov = [std::io::IoSlice::new(&[]); CHUNKS];
        let mut m = 0;
        for (slot, c) in iov.iter_mut().zip(&chunks[i..]) {
            *slot = std::io::IoSlice::new(if m == 0 { &c[skip..] } else { c });
            m += 1;
        }
        let mut n = w.write_vectored(&iov[..m]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = chunks[i].len() - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
}

async fn quic_to_local<W: AsyncWrite + Unpin>(
    recv: &mut RecvHalf,
    w: &mut W,
    count: &mut u64,
    meter: &Meter<'_>,
    remote: &mut Option<RemoteEnd>,
) -> Ending {
    // Chunks go out straight from quinn's receive buffers, up to CHUNKS per
    // write: nothing is copied in user space and an idle stream holds no
    // buffer.
    let mut chunks: [_; CHUNKS] = Default::default();
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(k)) => {
                let n: usize = chunks[..k].iter().map(|c| c.len()).sum();
                let written = write_all_chunks(w, &chunks[..k]).await;
                // Release the chunks now rather than at the next read.
                chunks[..k].fill_with(Default::default);
                if written.is_err() {
                    return Ending::LocalReset;
                }
                *count += n as u64;
                (meter.received)(n as u64);
            }
            Ok(None) => {
                if w.flush().await.is_err() {
                    return Ending::LocalReset;
                }
                let _ = w.shutdown().await;
                return Ending::Clean;
            }
            Err(e) => {
                *remote = Some(e);
                return Ending::RemoteReset;
            }
        }
    }
}

/// Runs both directions until both end cleanly, one fails, or `cancel`.
async fn both(
    up: impl std::future::Future<Output = Ending>,
    down: impl std::future::Future<Output = Ending>,
    cancel: impl std::future::Future<Output = ()>,
) -> Ending {
    tokio::pin!(up, down, cancel);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let e = tokio::select! {
            e = &mut up, if !up_done => { up_done = true; e }
            e = &mut down, if !down_done => { down_done = true; e }
            _ = &mut cancel => Ending::Cancelled,
        };
        if e != Ending::Clean {
            return e;
        }
        if up_done && down_done {
            return Ending::Clean;
        }
    }
}

/// What the peer did, for a splice that ended with its reset: a reset
/// of what it sends says more than a stop of what it reads.
fn remote_end(ending: Ending, up: Option<RemoteEnd>, down: Option<RemoteEnd>) -> Option<RemoteEnd> {
    (ending == Ending::RemoteReset)
        .then(|| down.or(up))
        .flatten()
}

/// Resets both directions of the stream unless the splice ended cleanly.
fn reset_quic(ending: Ending, send: &mut SendHalf, recv: &mut RecvHalf) {
    let code = match ending {
        Ending::Clean => return,
        Ending::Cancelled => StreamCode::Cut,
        Ending::LocalReset | Ending::RemoteReset => StreamCode::Reset,
    };
    send.reset(code);
    recv.stop(code);
}

/// Splices any local reader/writer pair with a QUIC stream until both
/// directions end or `cancel` completes. On a reset or cancel the QUIC side
/// is reset here; resetting the local side is the caller's job.
pub async fn splice_io<R, W>(
    r: &mut R,
    w: &mut W,
    send: &mut SendHalf,
    recv: &mut RecvHalf,
    cancel: impl std::future::Future<Output = ()>,
) -> SpliceStats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut up, mut down) = (None, None);
    let ending = both(
        local_to_quic(r, send, &mut sent, &mut up),
        quic_to_local(recv, w, &mut received, &Meter::NONE, &mut down),
        cancel,
    )
    .await;
    reset_quic(ending, send, recv);
    SpliceStats {
        sent,
        received,
        ending,
        remote: remote_end(ending, up, down),
    }
}

/// Splices a TCP connection with a QUIC stream; see the module docs.
pub async fn splice_tcp(tcp: TcpStream, send: SendHalf, recv: RecvHalf) -> SpliceStats {
    splice_tcp_until(tcp, send, recv, std::future::pending()).await
}

/// Reports bytes as they cross (for live byte counters, not only totals at
/// the end): called once per chunk, never per byte.
pub struct Meter<'a> {
    /// Bytes read locally and sent over QUIC.
    pub sent: &'a (dyn Fn(u64) + Sync),
    /// Bytes received over QUIC and written locally.
    pub received: &'a (dyn Fn(u64) + Sync),
}

impl Meter<'static> {
    /// Counts nothing.
    pub const NONE: Meter<'static> = Meter {
        sent: &|_| {},
        received: &|_| {},
    };
}

/// [`splice_tcp`], cut with resets on both sides when `cancel` completes.
pub async fn splice_tcp_until(
    tcp: TcpStream,
    send: SendHalf,
    recv: RecvHalf,
    cancel: impl std::future::Future<Output = ()>,
) -> SpliceStats {
    splice_tcp_metered(tcp, send, recv, cancel, &Meter::NONE).await
}

/// [`splice_tcp_until`], reporting bytes to `meter` as they cross.
pub async fn splice_tcp_metered(
    tcp: TcpStream,
    mut send: SendHalf,
    mut recv: RecvHalf,
    cancel: impl std::future::Future<Output = ()>,
    meter: &Meter<'_>,
) -> SpliceStats {
    let _ = tcp.set_nodelay(true);
    abort_on_drop(&tcp);
    let (r, mut w) = tcp.into_split();
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut up, mut down) = (None, None);
    let ending = both(
        tcp_to_quic(&r, &mut send, &mut sent, meter, &mut up),
        quic_to_local(&mut recv, &mut w, &mut received, meter, &mut down),
        cancel,
    )
    .await;
    reset_quic(ending, &mut send, &mut recv);
    match r.reunite(w) {
        Ok(tcp) if ending != Ending::Clean => reset_tcp(tcp),
        Ok(tcp) => close_gracefully(tcp),
        // Cannot happen (both halves are this stream's); the halves are
        // dropped, which closes the socket.
        Err(_) => {}
    }
    SpliceStats {
        sent,
        received,
        ending,
        remote: remote_end(ending, up, down),
    }
}

/// One direction of [`splice_streams`]: what `from` has received goes to
/// `to`. A single chunk is handed on as is (no copy); several (QUIC
/// delivers about one packet each) are gathered into one, since quinn's
/// send buffer costs time per chunk it holds (issue 21: passing 1.4 KB
/// chunks one by one made the router's sending thread spend a third of
/// its time scanning them). A clean end of `from` finishes `to` (and
/// waits until its peer read it, as [`finish`] says); a failed read is
/// the `from` side's reset, a failed write the other side's.
async fn stream_to_stream(
    from: &mut RecvHalf,
    to: &mut SendHalf,
    count: &mut u64,
    meter: &(dyn Fn(u64) + Sync),
    reset_of: (Ending, Ending),
    remote: &mut Option<RemoteEnd>,
) -> Ending {
    let (from_reset, to_reset) = reset_of;
    let mut chunks: [Bytes; CHUNKS] = Default::default();
    loop {
        match from.read_chunks(&mut chunks).await {
            Ok(Some(k)) => {
                let chunk = gather(&mut chunks[..k]);
                let n = chunk.len() as u64;
                if let Err(e) = to.write_chunk(chunk).await {
                    if to_reset == Ending::RemoteReset {
                        *remote = Some(e);
                    }
                    return to_reset;
                }
                *count += n;
                meter(n);
            }
            Ok(None) => return finish(to).await,
            Err(e) => {
                if from_reset == Ending::RemoteReset {
                    *remote = Some(e);
                }
                return from_reset;
            }
        }
    }
}

/// `chunks` as one: the only one as is, several copied into one buffer.
/// The slots are emptied either way.
fn gather(chunks: &mut [Bytes]) -> Bytes {
    if let [one] = chunks {
        return std::mem::take(one);
    }
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks.iter_mut() {
        all.extend_from_slice(c);
        *c = Bytes::new();
    }
    Bytes::from(all)
}

/// Splices two Darkport streams: a client's (`send`, `recv`, the remote
/// side) with a hoster's (`local_send`, `local_recv`, which stands where a
/// service's TCP connection would). Byte-exact, FIN and reset carried
/// both ways as [`splice_tcp_metered`] does: a clean end finishes the
/// other stream, a reset of either (or `cancel`) resets both.
pub async fn splice_streams(
    (mut local_send, mut local_recv): (SendHalf, RecvHalf),
    mut send: SendHalf,
    mut recv: RecvHalf,
    cancel: impl std::future::Future<Output = ()>,
    meter: &Meter<'_>,
) -> SpliceStats {
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut up, mut down) = (None, None);
    let ending = both(
        stream_to_stream(
            &mut local_recv,
            &mut send,
            &mut sent,
            meter.sent,
            (Ending::LocalReset, Ending::RemoteReset),
            &mut up,
        ),
        stream_to_stream(
            &mut recv,
            &mut local_send,
            &mut received,
            meter.received,
            (Ending::RemoteReset, Ending::LocalReset),
            &mut down,
        ),
        cancel,
    )
    .await;
    reset_quic(ending, &mut send, &mut recv);
    reset_quic(ending, &mut local_send, &mut local_recv);
    SpliceStats {
        sent,
        received,
        ending,
        remote: remote_end(ending, up, down),
    }
}

/// Closes a TCP connection with RST instead of FIN.
pub fn reset_tcp(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// Makes the kernel close `tcp` with RST, not FIN, if this process dies
/// (kill -9, a crash) while the connection carries a tunneled stream: the
/// peer then sees a reset, never a clean end after part of the bytes.
/// `close_gracefully` undoes it for a stream that ended cleanly. Zero
/// linger never blocks on close.
pub fn abort_on_drop(tcp: &TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// Closes a connection whose stream ended cleanly (both FINs carried)
/// the ordinary way.
fn close_gracefully(tcp: TcpStream) {
    // Linger off: close(2) returns at once and the kernel finishes the
    // connection in the background.
    let _ = socket2::SockRef::from(&tcp).set_linger(None);
    drop(tcp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    #[test]
    fn gather_keeps_one_chunk_and_joins_several_in_order() {
        let mut one = [Bytes::from_static(b"abc")];
        let g = gather(&mut one);
        assert_eq!(&g[..], b"abc");
        assert!(one[0].is_empty());
        let mut many = [
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
            Bytes::from_static(b"f"),
        ];
        assert_eq!(&gather(&mut many)[..], b"abcdef");
        assert!(many.iter().all(Bytes::is_empty), "the slots are emptied");
        assert!(gather(&mut []).is_empty());
    }
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A vectored writer that takes at most `max` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn chunks_survive_partial_vectored_writes() {
        let chunks: Vec<Vec<u8>> = vec![
            b"hello ".to_vec(),
            Vec::new(),
            b"quic".to_vec(),
            b" ".to_vec(),
            (0..100u8).collect(),
            Vec::new(),
        ];
        let want: Vec<u8> = chunks.concat();
        for max in [1, 3, 7, 64, 1000] {
            let mut w = Trickle {
                out: Vec::new(),
                max,
                calls: 0,
            };
            write_all_chunks(&mut w, &chunks).await.unwrap();
            assert_eq!(w.out, want, "max {max}");
            assert!(
                w.calls <= want.len().div_ceil(max),
                "max {max}: {} calls",
                w.calls
            );
        }
    }

    #[tokio::test]
    async fn only_empty_chunks_write_nothing() {
        let mut w = Trickle {
            out: Vec::new(),
            max: 4,
            calls: 0,
        };
        write_all_chunks(&mut w, &[Vec::<u8>::new(), Vec::new()])
            .await
            .unwrap();
        assert!(w.out.is_empty());
        assert_eq!(w.calls, 0);
    }

    #[tokio::test]
    async fn gathers_for_a_plain_writer() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_all_chunks(&mut a, &[b"ab".to_vec(), b"cd".to_vec()])
            .await
            .unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcd");
    }
}
