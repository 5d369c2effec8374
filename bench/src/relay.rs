//! Userspace delay relays for the WAN-like check, used because `tc netem`
//! is not available on these kernels (the bench probes for it and says so).
//!
//! - [`UdpDelay`] sits between the edge client and the router and holds
//!   every datagram for the delay in each direction. QUIC runs end to end
//!   through it, so its congestion control and flow-control windows see
//!   the full round-trip time. It receives with GRO and sends with GSO
//!   (quinn-udp), so it is not the bottleneck at a few Gbit/s.
//! - [`TcpDelay`] does the same for TCP paths, but it terminates TCP: each
//!   side's TCP sees a loopback round trip and only the bytes are delayed.
//!   The relay holds at most [`TCP_QUEUE_CHUNKS`] chunks per direction, so
//!   throughput through it is bounded by that queue, not by the TCP
//!   windows of the real endpoints. Figures through it are a reference,
//!   not a faithful WAN.
//!
//! Both run on their own thread with a single-threaded runtime and stop
//! when dropped.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Datagrams (or GRO batches) queued per direction before the relay drops,
/// like a router's queue.
const UDP_QUEUE: usize = 16_384;

/// Chunks (up to 64 KiB each) queued per direction in the TCP relay.
pub const TCP_QUEUE_CHUNKS: usize = 1024;

/// UDP socket buffers of the relay.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// A relay thread; dropping it stops the relay.
#[derive(Debug)]
pub struct RelayHandle {
    /// Where to send traffic.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `body` (given the stop signal) on a new thread with its own
/// runtime, after `bind` has produced the address to report.
fn spawn_thread<F, Fut>(name: &str, body: F) -> Result<RelayHandle>
where
    F: FnOnce(oneshot::Receiver<()>, std::sync::mpsc::Sender<Result<SocketAddr>>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (stop_tx, stop_rx) = oneshot::channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(body(stop_rx, addr_tx));
        })
        .context("starting a relay thread")?;
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the relay did not start")??;
    Ok(RelayHandle {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// A UDP relay delaying each datagram by a fixed time each way.
pub struct UdpDelay;

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// One received batch: deadline, bytes, segment size.
struct Datagrams {
    due: Instant,
    data: Vec<u8>,
    stride: usize,
}

impl UdpDelay {
    /// Relays between whoever sends to the returned address (the edge
    /// client) and `upstream` (the router).
    pub fn start(upstream: SocketAddr, delay: Duration) -> Result<RelayHandle> {
        spawn_thread("udp-delay", move |stop, addr_tx| async move {
            let bound = (|| -> Result<_> {
                let front = Arc::new(udp_socket("127.0.0.1:0".parse()?)?);
                let back = Arc::new(udp_socket("127.0.0.1:0".parse()?)?);
                let fstate = Arc::new(quinn_udp::UdpSocketState::new((&*front).into())?);
                let bstate = Arc::new(quinn_udp::UdpSocketState::new((&*back).into())?);
                Ok((front, back, fstate, bstate))
            })();
            let (front, back, fstate, bstate) = match bound {
                Ok(b) => b,
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return;
                }
            };
            let _ = addr_tx.send(front.local_addr().map_err(Into::into));
            let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
            let (up_tx, up_rx) = mpsc::channel(UDP_QUEUE);
            let (down_tx, down_rx) = mpsc::channel(UDP_QUEUE);
            let relay = async {
                tokio::join!(
                    udp_receive(
                        front.clone(),
                        fstate.clone(),
                        up_tx,
                        delay,
                        Some(client.clone())
                    ),
                    udp_receive(back.clone(), bstate.clone(), down_tx, delay, None),
                    udp_send(back.clone(), bstate.clone(), up_rx, Dest::Fixed(upstream)),
                    udp_send(
                        front.clone(),
                        fstate.clone(),
                        down_rx,
                        Dest::Learned(client.clone())
                    ),
                )
            };
            tokio::select! {
                _ = stop => {}
                _ = relay => {}
            }
        })
    }
}

enum Dest {
    Fixed(SocketAddr),
    Learned(Arc<Mutex<Option<SocketAddr>>>),
}

async fn udp_receive(
    sock: Arc<UdpSocket>,
    state: Arc<quinn_udp::UdpSocketState>,
    tx: mpsc::Sender<Datagrams>,
    delay: Duration,
    learn: Option<Arc<Mutex<Option<SocketAddr>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024 + 4096];
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let mut meta = [quinn_udp::RecvMeta::default()];
        let got = sock.try_io(Interest::READABLE, || {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            state.recv((&*sock).into(), &mut bufs, &mut meta)
        });
        match got {
            Ok(n) if n > 0 => {
                let m = &meta[0];
                if let Some(learn) = &learn {
                    *learn.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.addr);
                }
                let d = Datagrams {
                    due: Instant::now() + delay,
                    data: buf[..m.len].to_vec(),
                    stride: m.stride.max(1),
                };
                // A full queue drops, as a congested link would.
                let _ = tx.try_send(d);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn udp_send(
    sock: Arc<UdpSocket>,
    state: Arc<quinn_udp::UdpSocketState>,
    mut rx: mpsc::Receiver<Datagrams>,
    dest: Dest,
) {
    while let Some(d) = rx.recv().await {
        tokio::time::sleep_until(d.due).await;
        let to = match &dest {
            Dest::Fixed(a) => *a,
            Dest::Learned(l) => match *l.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(a) => a,
                None => continue,
            },
        };
        // As many segments as the kernel takes in one GSO send (64 KiB).
        let segments = (65_000 / d.stride).clamp(1, state.max_gso_segments().max(1));
        let max = d.stride * segments;
        for part in d.data.chunks(max) {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: part,
                segment_size: (part.len() > d.stride).then_some(d.stride),
                src_ip: None,
            };
            loop {
                if sock.writable().await.is_err() {
                    return;
                }
                match sock.try_io(Interest::WRITABLE, || state.send((&*sock).into(), &t)) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    _ => break,
                }
            }
        }
    }
}

/// A TCP relay delaying bytes by a fixed time each way; see the module docs.
pub struct TcpDelay;

impl TcpDelay {
    /// Accepts on the returned address and relays each connection to
    /// `upstream`.
    pub fn start(upstream: SocketAddr, delay: Duration) -> Result<RelayHandle> {
        spawn_thread("tcp-delay", move |stop, addr_tx| async move {
            let listener = match TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = addr_tx.send(listener.local_addr().map_err(Into::into));
            let accept = async {
                loop {
                    let Ok((down, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        tokio::join!(tcp_pump(dr, uw, delay), tcp_pump(ur, dw, delay));
                    });
                }
            };
            tokio::select! {
                _ = stop => {}
                _ = accept => {}
            }
        })
    }
}

async fn tcp_pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(TCP_QUEUE_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // End of stream (empty chunk) or error: forward the end.
                _ => {
                    let _ = tx.send((Instant::now() + delay, Vec::new())).await;
                    return;
                }
            }
        }
    };
    let write = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if data.is_empty() {
                let _ = w.shutdown().await;
                return;
            }
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}
