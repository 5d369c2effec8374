//! QUIC endpoints tuned for carrying many TCP connections.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// UDP socket buffer size asked of the kernel; quinn does not size them and
/// the default (~208 KiB) drops packets under load.
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Most concurrent streams (= tunneled TCP connections) per QUIC connection.
pub const MAX_STREAMS: u32 = 20_000;

/// Keep-alive below the idle timeout so quiet tunnels survive NATs.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A connection with no traffic (keep-alives included) for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest UDP payload a Darkport endpoint sends or accepts: the upper
/// bound of QUIC path MTU discovery. Discovery starts at 1,200 bytes and
/// probes upwards, so a 1,500-byte path settles at about 1,450 and a
/// jumbo-frame path (9,000; loopback) at this bound. Fewer, larger packets
/// are what makes bulk transfer cheap: quinn's cost is per packet. The
/// bound keeps quinn's GSO batches (10 datagrams) within the kernel's
/// 64 KiB limit; at 8,952 they do not fit and sending falls back to
/// 1,200-byte packets (measured slower than the default 1,452).
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Receive window of one stream, QUIC and HTTP/2 alike: one stream moves
/// up to 8 MiB per round trip, 3.3 Gbit/s at 20 ms RTT and 1.6 Gbit/s at
/// 40 ms (the WAN target in docs/benchmarks.md is 1 Gbit/s at 20 ms).
/// Windows are credit, not allocations: idle streams cost nothing.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// Receive window of one connection, all its streams together: two
/// streams at full speed, 6.7 Gbit/s at 20 ms RTT, more than one core
/// carries. With [`CONNECTION_SEND_WINDOW`] it is the cap on what one
/// peer connection makes an endpoint buffer (see
/// [`CONNECTION_BUFFER_BOUND`]).
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;

/// Bytes one connection holds sent and not yet acknowledged (QUIC), or
/// queued for a peer that is not reading (HTTP/2, `mux::SEND_QUEUE`).
/// Writers wait at the limit. The same figure as the receive window: the
/// router's two sides of a stream see the same rate.
pub const CONNECTION_SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// What one peer connection can make an endpoint hold in stream data, at
/// most: quinn keeps received data in the packet buffers it arrived in and
/// compacts them once they hold 1.5 times the data (so up to 2.5 times
/// the receive window), and sent data sits in the read buffers it was
/// read into (64 KiB for a read of at least 32 KiB: up to 2 times the send
/// window). 72 MiB with the windows above; docs/threat-model.md lists it,
/// and the soak in docs/benchmarks.md shows the router flat under it.
pub const CONNECTION_BUFFER_BOUND: u64 =
    CONNECTION_RECEIVE_WINDOW as u64 * 5 / 2 + CONNECTION_SEND_WINDOW * 2;

/// Streams a client may open before its handshake is done and it is
/// admitted. quinn allocates the state of every stream a peer may open
/// when the connection is made (about 40 bytes each, both directions), so
/// the full [`MAX_STREAMS`] would cost a pending handshake about 0.8 MB,
/// all of it an attacker's for the price of one Initial. Servers raise the
/// limit to [`MAX_STREAMS`] once the peer is admitted
/// (`quinn::Connection::set_max_concurrent_bi_streams`).
pub const PENDING_STREAMS: u32 = 64;

/// The transport settings of a server's connections until their peer is
/// admitted: [`transport_config`] with [`PENDING_STREAMS`].
pub fn pending_transport_config() -> Arc<TransportConfig> {
    transport_config_with_streams(PENDING_STREAMS)
}

/// Timeout for a QUIC handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent streams a controller accepts per connection: control
/// requests are few, and peers without certificates may connect.
pub const MAX_CONTROL_STREAMS: u32 = 16;

/// Receive window of one control stream at the controller: a little more
/// than the largest request a peer without a certificate may send.
pub const CONTROL_STREAM_WINDOW: u32 = 80 * 1024;

/// Receive window of one control connection at the controller, all
/// streams together: what a peer can make the controller buffer.
pub const CONTROL_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Send window of one control connection at the controller: what the
/// controller buffers for a peer that does not read (snapshots larger than
/// this are sent as the peer acknowledges).
pub const CONTROL_SEND_WINDOW: u64 = 2 * 1024 * 1024;

/// The controller's transport settings: few streams and small windows,
/// since peers without certificates may connect.
pub fn control_transport_config() -> Arc<TransportConfig> {
    let mut t = base_transport(MAX_CONTROL_STREAMS);
    t.stream_receive_window(VarInt::from_u32(CONTROL_STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONTROL_CONNECTION_WINDOW))
        .send_window(CONTROL_SEND_WINDOW);
    Arc::new(t)
}

/// Keep-alive interval of a router's sync session with its controller:
/// every keep-alive is acknowledged, so a controller silent for a few of
/// them is gone (see [`CONTROLLER_SILENCE`]).
pub const SYNC_KEEP_ALIVE: Duration = Duration::from_millis(250);

/// A router whose controller sent no packet for this long (four missed
/// keep-alive acknowledgements) ends the session and syncs with another
/// controller: a controller killed with `kill -9` is left within about
/// 1 s, inside the 2 s the HA design promises. A watchdog in the session,
/// not the QUIC idle timeout, so that handshakes with a busy controller
/// keep the usual [`HANDSHAKE_TIMEOUT`].
pub const CONTROLLER_SILENCE: Duration = Duration::from_secs(1);

/// The transport settings of a router's sync session: the usual ones with
/// keep-alives every [`SYNC_KEEP_ALIVE`].
pub fn sync_transport_config() -> Arc<TransportConfig> {
    let mut t = base_transport(MAX_CONTROL_STREAMS);
    t.keep_alive_interval(Some(SYNC_KEEP_ALIVE));
    Arc::new(t)
}

/// The transport settings every Darkport endpoint uses.
pub fn transport_config() -> Arc<TransportConfig> {
    transport_config_with_streams(MAX_STREAMS)
}

/// [`transport_config`] with another limit on concurrent streams.
pub fn transport_config_with_streams(max_streams: u32) -> Arc<TransportConfig> {
    Arc::new(base_transport(max_streams))
}

fn base_transport(max_streams: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(CONNECTION_SEND_WINDOW);
    if let Ok(idle) = IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Binds a UDP socket with large buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds a UDP socket (as [`bind_udp`]) and a TCP listener on the same
/// address and port: a router's QUIC and TCP listeners. With port 0, the
/// port the system picks for UDP is taken for TCP too (tried a few times
/// in case TCP has it in use).
pub fn bind_udp_and_tcp(addr: SocketAddr) -> std::io::Result<(UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = bind_udp(addr)?;
        let mut at = addr;
        at.set_port(udp.local_addr()?.port());
        match bind_tcp(at) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on TCP {at} (QUIC took UDP {at}): {e}; free the port, or pass --no-tcp"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

/// A TCP listener with the backlog and address reuse a server wants.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A server endpoint on an already-bound socket.
pub fn server(socket: UdpSocket, config: quinn::ServerConfig) -> std::io::Result<quinn::Endpoint> {
    server_with_reset_key(socket, config, None)
}

/// A server endpoint whose QUIC stateless-reset key is `reset_key`.
///
/// Keeping the key across restarts lets a restarted server answer packets
/// of its previous life with a valid stateless reset, so peers drop dead
/// connections at once instead of at the idle timeout.
pub fn server_with_reset_key(
    socket: UdpSocket,
    config: quinn::ServerConfig,
    reset_key: Option<&[u8]>,
) -> std::io::Result<quinn::Endpoint> {
    let mut endpoint_config = match reset_key {
        Some(k) => {
            quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)))
        }
        None => quinn::EndpointConfig::default(),
    };
    accept_large_datagrams(&mut endpoint_config);
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(crate::udp::ReadRegisteredRuntime),
    )
}

/// Lets peers send datagrams up to [`MAX_UDP_PAYLOAD`] (the transport
/// parameter `max_udp_payload_size`; quinn's default is 1,472).
fn accept_large_datagrams(config: &mut quinn::EndpointConfig) {
    // Cannot fail: the value is within 1,200..=65,527.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
}

/// Reads the stateless-reset key at `path`, creating a random one (0600)
/// if there is none.
pub fn load_or_create_reset_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use crate::identity::PrivateFileError;
    match crate::identity::read_private_file(path, 64) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) | Err(PrivateFileError::TooLarge { .. }) => {}
        Err(PrivateFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(std::io::Error::other(e)),
    }
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    crate::identity::write_private_file(path, &key, true).map_err(std::io::Error::other)?;
    Ok(key)
}

/// A client endpoint on an ephemeral port: of the peer's address family
/// when it is known, else dual-stack (`[::]:0` taking IPv4 as mapped
/// addresses), so one endpoint reaches IPv4 and IPv6 routers and
/// controllers alike; IPv4 only where the host has no IPv6.
pub fn client(peer_hint: Option<SocketAddr>) -> std::io::Result<quinn::Endpoint> {
    let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    let socket = match peer_hint {
        Some(SocketAddr::V4(_)) => bind_udp(v4)?,
        Some(SocketAddr::V6(_)) => {
            bind_udp(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))?
        }
        None => bind_dual_stack().or_else(|_| bind_udp(v4))?,
    };
    let mut endpoint_config = quinn::EndpointConfig::default();
    accept_large_datagrams(&mut endpoint_config);
    quinn::Endpoint::new(
        endpoint_config,
        None,
        socket,
        Arc::new(crate::udp::ReadRegisteredRuntime),
    )
}

/// An IPv6 UDP socket on an ephemeral port that also carries IPv4.
fn bind_dual_stack() -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)).into())?;
    Ok(socket.into())
}

/// Resolves `host:port` to one address.
pub async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    })
}

/// Every address `host:port` resolves to, in the resolver's order.
pub async fn resolve_all(addr: &str) -> std::io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    if all.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        ));
    }
    Ok(all)
}

/// Time between connection attempts to the addresses of one name (RFC 8305
/// "Happy Eyeballs" recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why [`connect_any`] failed: the same error as for TCP connects.
pub use crate::connect::ConnectError;

/// Connects to `addr` (`host:port`), trying every address it resolves to,
/// not only the first: a new attempt starts every [`ATTEMPT_DELAY`] until
/// one completes its handshake, and the first to complete wins (the others
/// are dropped). All within [`HANDSHAKE_TIMEOUT`].
pub async fn connect_any(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    server_name: &str,
) -> Result<quinn::Connection, ConnectError> {
    let addrs = resolve_all(addr)
        .await
        .map_err(|source| ConnectError::Resolve {
            addr: addr.to_string(),
            source,
        })?;
    connect_addrs(endpoint, config, addrs, server_name).await
}

/// [`connect_any`] over addresses already resolved.
pub async fn connect_addrs(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addrs: Vec<SocketAddr>,
    server_name: &str,
) -> Result<quinn::Connection, ConnectError> {
    let tried = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut attempts = tokio::task::JoinSet::new();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut pending = addrs.into_iter();
    let mut next_start = tokio::time::Instant::now();
    loop {
        if let Some(sock) = (tokio::time::Instant::now() >= next_start)
            .then(|| pending.next())
            .flatten()
        {
            match endpoint.connect_with(config.clone(), sock, server_name) {
                Ok(connecting) => {
                    attempts.spawn(connecting);
                }
                Err(source) => last = Some(ConnectError::Start { addr: sock, source }),
            }
            next_start = tokio::time::Instant::now() + ATTEMPT_DELAY;
            continue;
        }
        if attempts.is_empty() && pending.len() == 0 {
            return Err(last.unwrap_or(ConnectError::NoAddress));
        }
        let wake = if pending.len() > 0 {
            next_start.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ConnectError::Timeout { tried });
                }
            }
            Some(done) = attempts.join_next(), if !attempts.is_empty() => match done {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => {
                    last = Some(ConnectError::Quic(e));
                    // A failure starts the next attempt at once.
                    next_start = tokio::time::Instant::now();
                }
                Err(e) => last = Some(ConnectError::Task(e)),
            },
        }
    }
}

/// Splits `host:port` without resolving it; `None` if it is not of that form.
pub fn parse_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Completes an incoming QUIC handshake within [`HANDSHAKE_TIMEOUT`];
/// logs and returns `None` if it fails or times out. `what` names the
/// kind of peer for the log ("client", "control").
pub async fn accept(incoming: quinn::Incoming, what: &str) -> Option<quinn::Connection> {
    let remote = incoming.remote_address();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::info!(%remote, "{what} handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::info!(%remote, "{what} handshake timed out");
            None
        }
    }
}

/// Completes on Ctrl-C or SIGTERM: the shutdown signal of every binary.
/// SIGHUP, whose default action would end the process, calls `on_hangup`
/// instead (the binaries reload their settings there): a reload must
/// never kill a router or controller.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a binary calls it before it tells systemd it is ready, so
/// no signal can arrive in between and find the default action.
pub fn shutdown_signal(
    mut on_hangup: impl FnMut() + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Ok(mut int), Ok(mut term), Ok(mut hup)) = handlers {
            loop {
                tokio::select! {
                    _ = int.recv() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => on_hangup(),
                }
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
