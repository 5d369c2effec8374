//! The two halves of a stream over either transport: [`SendHalf`] and
//! [`RecvHalf`], with their HTTP/2 sides [`H2Send`] and [`RecvState`].

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use darkport_proto::codes::StreamCode;

use super::conn::Shared;
use super::gate::Waiting;
use super::remote::{h2_reason, our_code, Lost, RemoteEnd};

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
    /// Its connection: the send queue, and why the connection failed.
    conn: Arc<Shared>,
    /// Whether the send queue counts this stream; not the close-notice
    /// streams, which must get through when it is full (a few bytes, once).
    counted: bool,
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
                None => RemoteEnd::Lost(Lost::ResetNotOurs(reason)),
            },
            Poll::Ready(Err(e)) => RemoteEnd::from_h2(&e, true, self.conn.hint()),
            Poll::Pending => RemoteEnd::Lost(Lost::StreamClosed),
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
                Some(Err(e)) => {
                    return Poll::Ready(Err(RemoteEnd::from_h2(&e, true, self.conn.hint())))
                }
                None => return Poll::Ready(Err(self.why())),
            }
        }
    }

    /// Waits for room to send up to `want` bytes: flow-control credit,
    /// then room in the connection's send queue. Send at once what it
    /// grants, with [`H2Send::send`].
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<Room, RemoteEnd>> {
        let credit = ready!(self.poll_credit(cx, want))?;
        let Some(gate) = self.counted.then_some(&self.conn.gate) else {
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
        if room.counted && unused > 0 {
            self.conn.gate.refund(self.id, unused);
        }
        sent.map_err(|e| RemoteEnd::from_h2(&e, true, self.conn.hint()))
    }

    /// We reset the stream: h2 dropped what it had queued for it.
    fn reset(&mut self, reason: h2::Reason) {
        self.stream.send_reset(reason);
        self.waiting = None;
        if self.counted {
            self.conn.gate.reset(self.id);
        }
    }
}

fn finished() -> RemoteEnd {
    RemoteEnd::Lost(Lost::Finished)
}

impl SendHalf {
    pub(super) fn quic(s: quinn::SendStream) -> SendHalf {
        SendHalf {
            inner: SendInner::Quic(s),
            done: false,
            wrote: false,
        }
    }

    /// `counted`: whether the connection's send queue counts the stream
    /// (not a close-notice stream).
    pub(super) fn h2(stream: h2::SendStream<Bytes>, conn: &Arc<Shared>, counted: bool) -> SendHalf {
        let id = u32::from(stream.stream_id());
        SendHalf {
            inner: SendInner::H2(H2Send {
                stream,
                id,
                conn: conn.clone(),
                counted,
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
    /// [`Conn::flushed`](super::Conn::flushed)).
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
    /// With its connection, which says why it failed.
    H2(RecvState, Arc<Shared>),
}

pub(super) enum RecvState {
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

impl RecvState {
    /// The next non-empty chunk; `None` at the end of the stream.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        conn: &Shared,
    ) -> Poll<Result<Option<Bytes>, RemoteEnd>> {
        let read_error = |e: &h2::Error| RemoteEnd::from_h2(e, false, conn.hint());
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
                RecvState::Stopped => return Poll::Ready(Err(RemoteEnd::Lost(Lost::StoppedHere))),
            }
        }
    }
}

impl RecvHalf {
    pub(super) fn quic(r: quinn::RecvStream) -> RecvHalf {
        RecvHalf {
            inner: RecvInner::Quic(r),
            pending: Bytes::new(),
        }
    }

    pub(super) fn h2(state: RecvState, conn: &Arc<Shared>) -> RecvHalf {
        RecvHalf {
            inner: RecvInner::H2(state, conn.clone()),
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
            RecvInner::H2(s, conn) => Ok(poll_fn(|cx| s.poll_chunk(cx, conn)).await?.map(|b| {
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
            RecvInner::H2(s, conn) => poll_fn(|cx| s.poll_chunk(cx, conn)).await,
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
            RecvInner::H2(s, _) => *s = RecvState::Stopped,
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
                RecvInner::H2(s, conn) => match ready!(s.poll_chunk(cx, conn)) {
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
