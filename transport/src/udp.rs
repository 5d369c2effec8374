//! quinn's UDP socket, registered for reading only.
//!
//! quinn's own tokio socket registers with epoll for both reading and
//! writing, edge-triggered. Linux signals "writable" on a UDP socket each
//! time a sent datagram is freed, so every datagram sent wakes the thread
//! whose epoll holds the socket: on the router that is the endpoint
//! driver's thread, woken once per datagram sent by a connection on any
//! other thread (a context switch each), and on a current-thread client
//! one extra `epoll_wait` per send. Measured at MTU 1500 with
//! `strace` during the bench's ping-pong (docs/benchmarks.md, "Ping-pong").
//!
//! Here the socket is registered for reading only, sends go straight to
//! the kernel (as quinn's do), and writability is waited for only after a
//! send found the socket's buffer full: a duplicate of the descriptor is
//! registered for writing on the waiting task's runtime, and deregistered
//! once it is writable. That costs a few system calls when the buffer is
//! full, which is rare with [`crate::endpoint::UDP_BUFFER`]-sized buffers,
//! and nothing otherwise. Where no duplicate can be made or registered
//! (out of descriptors), the poller waits 1 ms and lets quinn try again
//! rather than fail: an error there would end the connection's driver and
//! leave the connection hanging. A full buffer hit by the endpoint's own
//! sends (quinn's driver never waits) costs the next connection that
//! sends one registration, which finds the socket writable at once.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// quinn's tokio runtime, with [`Socket`] for its UDP sockets.
#[derive(Debug)]
pub struct ReadRegisteredRuntime;

impl Runtime for ReadRegisteredRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        quinn::TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // As quinn's: on the runtime the caller is in, so a connection's
        // driver runs where it is accepted (see crate::shards).
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(Socket::new(sock)?))
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

/// A UDP socket for quinn, registered with epoll for reading only.
pub struct Socket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// A send found the buffer full and it has not been seen writable
    /// since. quinn asks a poller before every send; until this is set
    /// the answer is "writable" at no cost.
    full: AtomicBool,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("local", &self.io.get_ref().local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// Takes a bound socket (made non-blocking here) into the current
    /// runtime's reactor, for reading.
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Socket> {
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&sock).into())?;
        Ok(Socket {
            io: register(sock, Interest::READABLE)?,
            state,
            full: AtomicBool::new(false),
        })
    }
}

/// Registers a socket with the current runtime's reactor.
///
/// `AsyncFd::with_interest` is deprecated in favour of an `unsafe`
/// function because a type that does not own its descriptor could close
/// it while it is registered. A `std::net::UdpSocket` owns its
/// descriptor and closes it only when dropped, after `AsyncFd`'s drop has
/// deregistered it, so the safe form is sound here, and this crate
/// forbids `unsafe`.
#[allow(deprecated)]
fn register(
    sock: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    AsyncFd::with_interest(sock, interest)
}

impl AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritePoller {
            socket: self,
            waiting: None,
            retry: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // WouldBlock is returned as is; quinn then waits on a WritePoller.
        let sent = self.state.send(self.io.get_ref().into(), transmit);
        if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.full.store(true, Ordering::Relaxed);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            // WouldBlock clears the readiness and waits again.
            if let Ok(res) = guard.try_io(|fd| self.state.recv(fd.get_ref().into(), bufs, meta)) {
                return Poll::Ready(res);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Waits for a full send buffer to drain: a duplicate of the socket's
/// descriptor registered for writing while someone waits, and only then.
struct WritePoller {
    socket: Arc<Socket>,
    /// The duplicate, registered on the waiting task's runtime; dropped
    /// (deregistered and closed) once the socket is writable.
    waiting: Option<AsyncFd<std::net::UdpSocket>>,
    /// When no duplicate could be made or registered: a short wait
    /// before quinn tries the send again.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a poller that could not register waits before a new send.
const RETRY: std::time::Duration = std::time::Duration::from_millis(1);

impl fmt::Debug for WritePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritePoller")
            .field("waiting", &self.waiting.is_some())
            .field("retry", &self.retry.is_some())
            .finish()
    }
}

impl UdpPoller for WritePoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if let Some(retry) = self.retry.as_mut() {
            // Waiting without a registration (see below).
            ready!(Future::poll(retry.as_mut(), cx));
            self.retry = None;
            return Poll::Ready(Ok(()));
        }
        if self.waiting.is_none() && !self.socket.full.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        if self.waiting.is_none() {
            // Registering reports the socket writable at once if it
            // already is, so space freed since the failed send is not
            // missed.
            match self
                .socket
                .io
                .get_ref()
                .try_clone()
                .and_then(|dup| register(dup, Interest::WRITABLE))
            {
                Ok(fd) => self.waiting = Some(fd),
                Err(e) => {
                    // Out of descriptors or epoll watches: an error here
                    // would end quinn's connection driver and leave the
                    // connection hanging, so wait a little and let quinn
                    // try the send again.
                    tracing::debug!(
                        "cannot wait for the UDP socket to drain ({e}); retrying in {RETRY:?}"
                    );
                    self.retry = Some(Box::pin(tokio::time::sleep(RETRY)));
                    return self.poll_writable(cx);
                }
            }
        }
        let Some(fd) = self.waiting.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        let ready = fd.poll_write_ready(cx).map_ok(|_| ());
        if ready.is_ready() {
            self.socket.full.store(false, Ordering::Relaxed);
            // Deregistered before it is closed (AsyncFd's drop), so this
            // runtime hears of the socket's sends no more.
            self.waiting = None;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends go out; a poller says "writable" at once until a send found
    /// the buffer full, then waits on a registration it drops afterwards. (A full send buffer
    /// cannot be made on loopback, which frees each datagram as it sends
    /// it; the netns transport tests carry bulk at MTU 1500 through it.)
    #[tokio::test]
    async fn sends_go_out_and_a_poller_keeps_no_registration() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let socket = Arc::new(
            Socket::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).expect("socket"),
        );
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: b"ping",
            segment_size: None,
            src_ip: None,
        };
        socket.try_send(&transmit).expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, socket.local_addr().expect("addr"));
        let mut poller = socket.clone().create_io_poller();
        writable_within_5_s(&mut poller).await;
        // As after a send that found the buffer full: the poller registers
        // a duplicate, hears that the socket is writable, and lets it go.
        socket.full.store(true, Ordering::Relaxed);
        writable_within_5_s(&mut poller).await;
        assert!(!socket.full.load(Ordering::Relaxed));
    }

    /// The poller says writable within 5 s and holds no registration then.
    async fn writable_within_5_s(poller: &mut Pin<Box<dyn UdpPoller>>) {
        let ready = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)),
        )
        .await;
        assert!(matches!(ready, Ok(Ok(()))), "{ready:?}");
        assert!(format!("{poller:?}").contains("waiting: false"));
    }

    /// Datagrams sent to the socket are received through quinn's interface.
    #[tokio::test]
    async fn receives_what_is_sent_to_it() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let socket = Socket::new(rx).expect("socket");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"hello", to).expect("send");
        let mut buf = [0u8; 2048];
        let mut meta = [RecvMeta::default()];
        let n = std::future::poll_fn(|cx| {
            let mut bufs = [io::IoSliceMut::new(&mut buf)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .expect("recv");
        assert_eq!(n, 1);
        assert_eq!(&buf[..meta[0].len], b"hello");
        assert_eq!(meta[0].addr, tx.local_addr().expect("addr"));
    }
}
