//! The byte stream a dial returns.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use darkport_proto::codes::StreamCode;
use darkport_transport::mux::{RecvHalf, SendHalf};

/// A connection to a service through Darkport: one stream (QUIC, or
/// HTTP/2 over TLS over TCP).
///
/// Writes go to the service, reads come from it. `shutdown` sends a
/// half-close (the service sees end of stream and can still answer).
/// Dropping the stream before `shutdown` resets it, and the router resets
/// the service's TCP connection: a truncated stream never looks complete.
#[derive(Debug)]
pub struct DialStream {
    /// `None` only after [`DialStream::into_split`].
    parts: Option<(SendHalf, RecvHalf)>,
    /// Whether `shutdown` completed, so dropping is a clean close.
    finished: bool,
}

fn split_error() -> io::Error {
    io::Error::other("DialStream was split")
}

impl DialStream {
    pub(crate) fn new(send: SendHalf, recv: RecvHalf) -> Self {
        DialStream {
            parts: Some((send, recv)),
            finished: false,
        }
    }

    /// The two halves, for splicing or for use from separate tasks.
    /// From here on, dropping the send half finishes it; call `reset` on
    /// it to abort instead.
    pub fn into_split(mut self) -> (SendHalf, RecvHalf) {
        self.finished = true;
        match self.parts.take() {
            Some(p) => p,
            // Unreachable: `parts` is only taken here, by value.
            None => unreachable!("DialStream split twice"),
        }
    }
}

impl Drop for DialStream {
    fn drop(&mut self) {
        if let (false, Some((send, recv))) = (self.finished, self.parts.as_mut()) {
            send.reset(StreamCode::Reset);
            recv.stop(StreamCode::Reset);
        }
    }
}

impl AsyncRead for DialStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().parts.as_mut() {
            Some((_, recv)) => Pin::new(recv).poll_read(cx, buf),
            None => Poll::Ready(Err(split_error())),
        }
    }
}

impl AsyncWrite for DialStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().parts.as_mut() {
            Some((send, _)) => Pin::new(send).poll_write(cx, buf),
            None => Poll::Ready(Err(split_error())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().parts.as_mut() {
            Some((send, _)) => Pin::new(send).poll_flush(cx),
            None => Poll::Ready(Err(split_error())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.parts.as_mut() {
            Some((send, _)) => {
                let r = Pin::new(send).poll_shutdown(cx);
                if let Poll::Ready(Ok(())) = r {
                    this.finished = true;
                }
                r
            }
            None => Poll::Ready(Err(split_error())),
        }
    }
}
