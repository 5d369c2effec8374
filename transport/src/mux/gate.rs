//! The async side of the send queue ([`SendGate`]), and the I/O under
//! h2 that counts what crosses and keeps what TLS said when it failed
//! ([`Counted`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::conn::Shared;
use super::sendq;

/// Most bytes one TCP connection holds queued to send: accepted from its
/// streams' writers and not yet handed to TLS. The same as QUIC's
/// per-connection send window
/// ([`CONNECTION_SEND_WINDOW`](crate::endpoint::CONNECTION_SEND_WINDOW)),
/// so a peer costs the same over either transport. Without it, h2 holds up to `H2_SEND_BUFFER` (1 MiB) for
/// each of up to [`MAX_STREAMS`](crate::endpoint::MAX_STREAMS) streams when a peer grants huge windows
/// and then stops reading. An honest Darkport peer never meets it: its
/// connection window (`H2_CONN_WINDOW`, 16 MiB) already bounds what
/// h2 queues.
/// Writers wait at the limit (backpressure, as on QUIC), and go on as
/// bytes are written. Control frames and the close-notice stream are not
/// counted, so they get through at the limit.
pub const SEND_QUEUE: u64 = crate::endpoint::CONNECTION_SEND_WINDOW;

/// The async side of [`sendq::SendQueue`]: one per TCP connection,
/// shared by its writers ([`H2Send`]) and the I/O under h2 ([`Counted`]).
pub(super) struct SendGate {
    /// Locked briefly, never across an await: once per write handed to h2
    /// and once per write to TLS that carries frames we count.
    queue: std::sync::Mutex<sendq::SendQueue>,
    /// Wakes the writers waiting for room. An `Arc` so that a writer can
    /// hold its wait ([`tokio::sync::futures::OwnedNotified`]) across polls.
    freed: Arc<Notify>,
}

/// A writer's wait for room in the send queue, kept across polls.
pub(super) type Waiting = Pin<Box<tokio::sync::futures::OwnedNotified>>;

impl SendGate {
    pub(super) fn new(limit: u64, client: bool) -> SendGate {
        SendGate {
            queue: std::sync::Mutex::new(sendq::SendQueue::new(limit, client)),
            freed: Arc::new(Notify::new()),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, sendq::SendQueue> {
        // A panic elsewhere leaves the counts as they were: still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, wake: bool) {
        if wake {
            self.freed.notify_waiters();
        }
    }

    /// Bytes queued now.
    pub(super) fn queued(&self) -> u64 {
        self.lock().queued()
    }

    /// Waits for room to queue up to `want` bytes on `stream`: how many,
    /// counted (`Some`), or `None` for as many as h2 takes, uncounted
    /// (the stream or the connection is over, so h2 fails or drops them).
    pub(super) fn poll_grant(
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

    pub(super) fn refund(&self, stream: u32, n: usize) {
        let wake = self.lock().refund(stream, n);
        self.wake(wake);
    }

    pub(super) fn reset(&self, stream: u32) {
        let wake = self.lock().reset(stream);
        self.wake(wake);
    }

    pub(super) fn close(&self) {
        let wake = self.lock().close();
        self.wake(wake);
    }

    /// `pieces` were written to TLS, in order: give back their DATA
    /// payload.
    pub(super) fn sent<'a>(
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
    pub(super) fn received(&self, walker: &mut sendq::FrameWalker, bytes: &[u8]) {
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
pub(super) struct Counted<T> {
    io: T,
    shared: Arc<Shared>,
    /// Frames we write, as they reach TLS.
    out: sendq::FrameWalker,
    /// Frames the peer writes, as h2 reads them.
    inn: sendq::FrameWalker,
}

impl<T> Counted<T> {
    pub(super) fn new(io: T, shared: Arc<Shared>, client: bool) -> Counted<T> {
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
        // A TLS alert from the peer (a refused certificate) fails a read;
        // h2 keeps only the text of the error, so its kind is kept here.
        if let Poll::Ready(Err(e)) = &r {
            this.shared.note_tls_error(e);
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

#[cfg(test)]
mod counted_tests {
    use super::*;
    use crate::mux::conn::new_shared;
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
