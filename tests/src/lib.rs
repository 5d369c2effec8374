//! Whole-system test harness for Darkport.
//!
//! [`Fixture::start`] brings up a real controller (fresh CA in a temporary
//! data dir) and a real edge router, both through their library `run`
//! entry points on 127.0.0.1 with ports chosen by the OS, and enrolls the
//! router with a real token. Tests then create identities, services and
//! policies through the real admin API, enroll clients, and dial through
//! real QUIC.
//!
//! [`fluent`] is a small Fluentd forward-protocol receiver (Message,
//! Forward, PackedForward; acks on `chunk`) used as the private service in
//! interop tests and in the quickstart.
#![forbid(unsafe_code)]

pub mod fluent;
pub mod netns;
pub mod ops;
pub mod soak;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use darkport_controller::admin::Admin;
use darkport_controller::{DataDir, InitOptions};
use darkport_edge_router::RouterConfig;
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{RouterPolicyEntry, Selector, ServiceEntry};
use edge_client::{Client, ClientOptions};

/// Polls `$cond` (an async expression yielding bool) every 20 ms until it
/// holds or `$timeout` passes, then fails with `$msg`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Polls `check` every 20 ms until it holds or `within` passes; then fails
/// naming `what`. Whole-system tests wait on something observable this way
/// (a log line, a gauge, a record count, an admin answer), never on a fixed
/// sleep: a sleep is too short on a loaded machine and too long elsewhere.
pub async fn poll_until<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`poll_until`] for tests: panics with its message.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = poll_until(what, within, check).await {
        panic!("{e}");
    }
}

/// A TCP connection through the tunnel to an echo service, kept busy (16
/// KiB written and its echo read back, over and over) until it fails.
pub struct Busy {
    /// Echo rounds completed so far.
    rounds: Arc<AtomicU64>,
    /// Ends with how the connection failed, and when.
    pub task: JoinHandle<(std::io::Error, std::time::Instant)>,
}

impl Busy {
    /// Starts the traffic on `tcp`.
    pub fn start(mut tcp: TcpStream) -> Busy {
        let rounds = Arc::new(AtomicU64::new(0));
        let counter = rounds.clone();
        let task = tokio::spawn(async move {
            let chunk = payload(16 * 1024, 1);
            let mut back = vec![0u8; chunk.len()];
            loop {
                if let Err(e) = tcp.write_all(&chunk).await {
                    return (e, std::time::Instant::now());
                }
                if let Err(e) = tcp.read_exact(&mut back).await {
                    return (e, std::time::Instant::now());
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Busy { rounds, task }
    }

    /// Waits (at most 10 s) until `n` echo rounds have come back: the
    /// stream is carried end to end, through router and service. Panics
    /// if the stream failed first.
    pub async fn carrying(&self, n: u64) {
        wait_until(
            &format!("{n} echo rounds on the busy stream"),
            Duration::from_secs(10),
            || async {
                assert!(!self.task.is_finished(), "the busy stream failed");
                self.rounds.load(Ordering::Relaxed) >= n
            },
        )
        .await;
    }
}

/// Installs a test log subscriber once (`RUST_LOG` to see more).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Parses a name; panics on a bad literal (test code only).
pub fn n(s: &str) -> IdentityName {
    IdentityName::new(s).expect("valid test name")
}

/// A running controller and router with a fresh CA.
pub struct Fixture {
    /// Holds every file of the test (data dir, identity files, tokens).
    pub dir: tempfile::TempDir,
    /// Controller data dir.
    pub data_dir: DataDir,
    /// Controller's UDP address.
    pub controller_addr: SocketAddr,
    /// Router's UDP address.
    pub router_addr: SocketAddr,
    /// The address controller and routers listen on.
    ip: std::net::IpAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fixture {
    /// Controller plus one enrolled, registered router.
    pub async fn start() -> Result<Fixture> {
        Fixture::start_with_cert_ttl(Duration::from_secs(3600)).await
    }

    /// [`Fixture::start`] with another certificate lifetime.
    pub async fn start_with_cert_ttl(cert_ttl: Duration) -> Result<Fixture> {
        Fixture::start_full(std::net::Ipv4Addr::LOCALHOST.into(), cert_ttl).await
    }

    /// [`Fixture::start`] with controller and router listening on `ip`
    /// (port 0), not 127.0.0.1: reachable from a network namespace.
    pub async fn start_at(ip: std::net::IpAddr) -> Result<Fixture> {
        Fixture::start_full(ip, Duration::from_secs(3600)).await
    }

    async fn start_full(ip: std::net::IpAddr, cert_ttl: Duration) -> Result<Fixture> {
        init_logging();
        let dir = tempfile::tempdir()?;
        let data_dir = DataDir::new(dir.path().join("ctl"));
        let ctl_socket = darkport_controller::server::bind(SocketAddr::new(ip, 0))?;
        let controller_addr = ctl_socket.local_addr()?;
        darkport_controller::init(
            &data_dir,
            &InitOptions {
                advertise: controller_addr.to_string(),
                cert_ttl,
                store: test_store()?,
            },
        )?;
        let mut fx = Fixture {
            dir,
            data_dir: data_dir.clone(),
            controller_addr,
            router_addr: "127.0.0.1:1".parse()?,
            ip,
            tasks: vec![],
        };
        let dd = data_dir.clone();
        fx.tasks.push(tokio::spawn(async move {
            if let Err(e) = darkport_controller::run(dd, ctl_socket, std::future::pending()).await {
                panic!("controller failed: {e}");
            }
        }));
        let router_id = fx.enroll("router-1", Kind::Router, &[]).await?;
        fx.router_addr = fx.start_router(&router_id).await?;
        Ok(fx)
    }

    /// Starts a router with this identity file; returns its address once the
    /// controller lists it online.
    pub async fn start_router(&mut self, identity: &std::path::Path) -> Result<SocketAddr> {
        self.start_router_with(identity, |_| {}).await
    }

    /// [`Fixture::start_router`] with a configuration changed by `tune`
    /// (limits, for example).
    pub async fn start_router_with(
        &mut self,
        identity: &std::path::Path,
        tune: impl FnOnce(&mut RouterConfig),
    ) -> Result<SocketAddr> {
        let bind = SocketAddr::new(self.ip, 0);
        let (addr, handle) =
            run_router_at(&self.data_dir, identity, bind, tune, std::future::pending()).await?;
        self.tasks.push(handle);
        Ok(addr)
    }

    /// Starts a router like [`Fixture::start_router_with`] that runs until
    /// the returned sender is used (or dropped); the handle completes when
    /// the router has stopped.
    pub async fn start_router_stoppable(
        &mut self,
        identity: &std::path::Path,
        tune: impl FnOnce(&mut RouterConfig),
    ) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>, JoinHandle<()>)> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = stop_rx.await;
        };
        let bind = SocketAddr::new(self.ip, 0);
        let (addr, handle) = run_router_at(&self.data_dir, identity, bind, tune, stop).await?;
        Ok((addr, stop_tx, handle))
    }

    /// Sends an admin request with the admin identity from `init`.
    pub async fn admin(&self, req: AdminRequest) -> Result<AdminResponse> {
        Ok(Admin::from_data_dir(&self.data_dir, None)?
            .call(req)
            .await?)
    }

    /// Creates an identity and returns its token.
    pub async fn token(
        &self,
        name: &str,
        kind: Kind,
        roles: &[&str],
        ttl_secs: u64,
    ) -> Result<String> {
        let req = AdminRequest::CreateIdentity {
            name: n(name),
            kind,
            roles: roles.iter().map(|r| n(r)).collect(),
            token_ttl_secs: ttl_secs,
        };
        match self.admin(req).await? {
            AdminResponse::Token { token, .. } => Ok(token),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Creates and enrolls an identity; returns the identity file path.
    pub async fn enroll(&self, name: &str, kind: Kind, roles: &[&str]) -> Result<PathBuf> {
        let token = self.token(name, kind, roles, 3600).await?;
        let path = self.dir.path().join(format!("{name}.id"));
        edge_client::enroll(&token, kind, &path)
            .await
            .with_context(|| format!("enrolling {name}"))?;
        Ok(path)
    }

    /// Creates a service.
    pub async fn service(&self, name: &str, address: SocketAddr) -> Result<()> {
        self.service_with(name, address, Default::default()).await
    }

    /// Creates a service speaking `protocol`.
    pub async fn service_with(
        &self,
        name: &str,
        address: SocketAddr,
        protocol: darkport_proto::policy::ServiceProtocol,
    ) -> Result<()> {
        self.admin(AdminRequest::CreateService(ServiceEntry {
            name: n(name),
            address: address.to_string(),
            roles: vec![],
            protocol,
            strategy: Default::default(),
        }))
        .await?;
        Ok(())
    }

    /// Creates a policy from selector strings.
    pub async fn policy(&self, name: &str, services: &[&str], identities: &[&str]) -> Result<()> {
        self.policy_with_tags(name, services, identities, &[]).await
    }

    /// Creates a policy from selector strings, limited to `tags` patterns
    /// (empty: any tag).
    pub async fn policy_with_tags(
        &self,
        name: &str,
        services: &[&str],
        identities: &[&str],
        tags: &[&str],
    ) -> Result<()> {
        let sel = |v: &[&str]| {
            v.iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        self.admin(AdminRequest::CreatePolicy {
            name: n(name),
            services: sel(services)?,
            identities: sel(identities)?,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kind: Default::default(),
        })
        .await?;
        Ok(())
    }

    /// Creates a bind policy: `identities` may host `services`.
    pub async fn bind_policy(
        &self,
        name: &str,
        services: &[&str],
        identities: &[&str],
    ) -> Result<()> {
        let sel = |v: &[&str]| {
            v.iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        self.admin(AdminRequest::CreatePolicy {
            name: n(name),
            services: sel(services)?,
            identities: sel(identities)?,
            tags: vec![],
            kind: darkport_proto::policy::PolicyKind::Bind,
        })
        .await?;
        Ok(())
    }

    /// An SDK client for an identity file, pointed at this fixture's router.
    pub fn client(&self, identity: &std::path::Path) -> Result<Arc<Client>> {
        Ok(Arc::new(Client::from_identity_file(
            identity,
            ClientOptions {
                routers: vec![self.router_addr.to_string()],
                ..client_options()
            },
        )?))
    }

    /// Starts a local forwarder (127.0.0.1, OS-chosen port) to `service`.
    pub async fn forward(&mut self, client: Arc<Client>, service: &str) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = service.to_string();
        self.tasks.push(tokio::spawn(async move {
            let _ =
                edge_client::forward::forward(client, listener, service, std::future::pending())
                    .await;
        }));
        Ok(addr)
    }

    /// Starts a second router, `router-2` with role `edge-b`, and makes it
    /// the only one that may serve any service (deletes the default
    /// `all-routers` router policy, adds `b-only`). Returns its address;
    /// the fixture's first router then answers dials with WrongRouter.
    pub async fn only_second_router_serves(&mut self) -> Result<SocketAddr> {
        let r2 = self.enroll("router-2", Kind::Router, &["edge-b"]).await?;
        let r2_addr = self.start_router(&r2).await?;
        self.admin(AdminRequest::DeleteRouterPolicy {
            name: n("all-routers"),
        })
        .await?;
        self.admin(AdminRequest::CreateRouterPolicy(RouterPolicyEntry {
            name: n("b-only"),
            routers: vec![Selector::Role(n("edge-b"))],
            services: vec![Selector::All],
        }))
        .await?;
        Ok(r2_addr)
    }

    /// The common setup: an echo service `echo`, a client `app-1` with role
    /// `writers` allowed to dial it, and a forwarder. Returns the forward
    /// address.
    pub async fn echo_setup(&mut self) -> Result<SocketAddr> {
        let echo = echo_server().await?;
        self.service("echo", echo).await?;
        self.policy("echo-writers", &["echo"], &["#writers"])
            .await?;
        let id = self.enroll("app-1", Kind::Client, &["writers"]).await?;
        let client = self.client(&id)?;
        self.forward(client, "echo").await
    }
}

/// An address nothing listens on (bound, then closed): a service there is
/// unreachable except through terminators.
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// The hosting fixture: `echo-h` (its address dead), `app-1` (role
/// `writers`) allowed to dial it, and `host-1` (role `hosters`) allowed to
/// host it by the bind policy `hosts`. Returns the two identity files.
pub async fn hosting_setup() -> (Fixture, PathBuf, PathBuf) {
    let fx = Fixture::start().await.expect("fixture");
    fx.service("echo-h", dead_address().await)
        .await
        .expect("service");
    fx.policy("dialers", &["echo-h"], &["#writers"])
        .await
        .expect("dial policy");
    fx.bind_policy("hosts", &["echo-h"], &["#hosters"])
        .await
        .expect("bind policy");
    let app = fx
        .enroll("app-1", Kind::Client, &["writers"])
        .await
        .expect("app");
    let hoster = fx
        .enroll("host-1", Kind::Client, &["hosters"])
        .await
        .expect("hoster");
    (fx, app, hoster)
}

/// Sends `data` through a dial of `service` (writing and reading at once)
/// and returns what came back.
pub async fn echo_through(client: &Client, service: &str, data: &[u8]) -> Vec<u8> {
    let mut s = client.dial(service).await.expect("dial");
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let recv = async {
        r.read_to_end(&mut back).await.expect("read");
    };
    tokio::join!(send, recv);
    back
}

/// A TCP echo server on 127.0.0.1: echoes until EOF, then half-closes.
pub async fn echo_server() -> Result<SocketAddr> {
    echo_server_at(std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`echo_server`] on `ip` (port 0).
pub async fn echo_server_at(ip: std::net::IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// A service on 127.0.0.1 that reads to EOF and only then answers with
/// `"<length> <sha256 hex>"` and closes: proof that the FIN crossed while
/// the other direction stayed open, and that the content is exact.
pub async fn digest_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if tcp.read_to_end(&mut got).await.is_ok() {
                    let reply = format!("{} {}", got.len(), sha256(&got));
                    let _ = tcp.write_all(reply.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// Deterministic pseudo-random bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// SHA-256, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes `data` and half-closes while reading everything back; returns
/// what came back.
pub async fn roundtrip(mut tcp: TcpStream, data: &[u8]) -> Result<Vec<u8>> {
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let read = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    let (w, back) = tokio::join!(write, read);
    w?;
    Ok(back?)
}

/// The resident memory of process `pid`, in bytes (0 if unreadable).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A controller or router running as its own process (see the
/// `darkport-test-node` binary); killed with SIGKILL when dropped.
pub struct Node {
    child: std::process::Child,
    /// Its UDP address.
    pub addr: SocketAddr,
}

impl Node {
    /// Starts `darkport-test-node ROLE PATH ADDR` from the binary at `bin`.
    pub fn spawn(bin: &str, role: &str, path: &std::path::Path, addr: SocketAddr) -> Result<Node> {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(role).arg(path).arg(addr.to_string());
        Node::start(cmd, bin)
    }

    /// [`Node::spawn`] with extra environment variables and its log
    /// (stderr) written to `log`.
    pub fn spawn_logged(
        bin: &str,
        role: &str,
        path: &std::path::Path,
        addr: SocketAddr,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Result<Node> {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(role)
            .arg(path)
            .arg(addr.to_string())
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(log)?);
        Node::start(cmd, bin)
    }

    fn start(mut cmd: std::process::Command, bin: &str) -> Result<Node> {
        let addr = cmd
            .get_args()
            .nth(2)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse().ok())
            .context("node address")?;
        let child = cmd
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        Ok(Node { child, addr })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no goodbye to anyone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port on 127.0.0.1 free for both UDP and TCP, chosen by the OS (bound,
/// then released). Routers and controllers bind QUIC and TLS/TCP on the same
/// port, so a port free only for UDP would make a test flaky.
pub fn free_udp_addr() -> Result<SocketAddr> {
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let addr = udp.local_addr()?;
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no port on 127.0.0.1 was free for both UDP and TCP in 64 tries")
}

/// A controller data dir initialised for `addr`, in `dir`.
pub fn init_controller(
    dir: &std::path::Path,
    addr: SocketAddr,
    cert_ttl: Duration,
) -> Result<DataDir> {
    init_logging();
    let data_dir = DataDir::new(dir.join("ctl"));
    darkport_controller::init(
        &data_dir,
        &InitOptions {
            advertise: addr.to_string(),
            cert_ttl,
            store: test_store()?,
        },
    )?;
    Ok(data_dir)
}

/// Sends an admin request to the controller of `data_dir`.
pub async fn admin(data_dir: &DataDir, req: AdminRequest) -> Result<AdminResponse> {
    Ok(Admin::from_data_dir(data_dir, None)?.call(req).await?)
}

/// Creates and enrolls an identity through the controller of `data_dir`;
/// returns the identity file in `dir`.
pub async fn enroll_at(
    data_dir: &DataDir,
    dir: &std::path::Path,
    name: &str,
    kind: Kind,
    roles: &[&str],
) -> Result<PathBuf> {
    let req = AdminRequest::CreateIdentity {
        name: n(name),
        kind,
        roles: roles.iter().map(|r| n(r)).collect(),
        token_ttl_secs: 3600,
    };
    let AdminResponse::Token { token, .. } = admin(data_dir, req).await? else {
        bail!("no token");
    };
    let path = dir.join(format!("{name}.id"));
    edge_client::enroll(&token, kind, &path).await?;
    Ok(path)
}

/// Waits until the controller lists a router at `addr` as online.
pub async fn wait_router_online(
    data_dir: &DataDir,
    addr: SocketAddr,
    within: Duration,
) -> Result<()> {
    poll_until(
        &format!("the router at {addr} to be online"),
        within,
        || async {
            matches!(
                admin(data_dir, AdminRequest::ListRouters).await,
                Ok(AdminResponse::Routers(rs))
                    if rs.iter().any(|r| r.online && r.advertise == addr.to_string())
            )
        },
    )
    .await
}

/// Waits until the controller of `data_dir` answers admin requests.
pub async fn wait_admin(data_dir: &DataDir) {
    wait_until(
        "the controller to answer admin requests",
        Duration::from_secs(15),
        || async { admin(data_dir, AdminRequest::ListIdentities).await.is_ok() },
    )
    .await;
}

/// A controller in its own process (the `darkport-test-node` binary at
/// `node`) with a fresh CA, an `echo` service and a policy letting every
/// identity dial every service.
pub async fn controller_process_with_echo(
    node: &str,
) -> (tempfile::TempDir, DataDir, SocketAddr, Node) {
    let dir = tempfile::tempdir().expect("dir");
    let ctl_addr = free_udp_addr().expect("addr");
    let dd = init_controller(dir.path(), ctl_addr, Duration::from_secs(3600)).expect("init");
    let ctl = Node::spawn(node, "controller", dd.root(), ctl_addr).expect("controller");
    wait_admin(&dd).await;
    echo_service_for_all(&dd).await;
    (dir, dd, ctl_addr, ctl)
}

/// Creates an `echo` service (a fresh echo server) and a policy `p` that
/// lets every identity dial every service, through the controller of
/// `data_dir`.
pub async fn echo_service_for_all(data_dir: &DataDir) {
    let echo = echo_server().await.expect("echo");
    let service = ServiceEntry {
        name: n("echo"),
        address: echo.to_string(),
        roles: vec![],
        protocol: Default::default(),
        strategy: Default::default(),
    };
    admin(data_dir, AdminRequest::CreateService(service))
        .await
        .expect("service");
    let policy = AdminRequest::CreatePolicy {
        name: n("p"),
        services: vec![Selector::All],
        identities: vec![Selector::All],
        tags: vec![],
        kind: Default::default(),
    };
    admin(data_dir, policy).await.expect("policy");
}

/// Which transport the whole-system tests' clients use:
/// `DARKPORT_TEST_TRANSPORT` (`auto`, the default, `quic` or `tcp`).
/// scripts/test.sh runs the tunnel and lifecycle tests once more with
/// `tcp`, so everything they check holds on both transports.
pub const ENV_TEST_TRANSPORT: &str = "DARKPORT_TEST_TRANSPORT";

/// Client options for tests: the defaults, with the transport from
/// [`ENV_TEST_TRANSPORT`].
pub fn client_options() -> ClientOptions {
    let transport = match std::env::var(ENV_TEST_TRANSPORT) {
        Ok(t) => t
            .parse()
            .unwrap_or_else(|e| panic!("{ENV_TEST_TRANSPORT}: {e}")),
        Err(_) => Default::default(),
    };
    ClientOptions {
        transport,
        ..Default::default()
    }
}

/// Runs a router in this process on `bind` (port 0: chosen by the OS)
/// with no snapshot cache and the configuration changed by `tune`, until
/// `stop`; returns its address once the controller of `data_dir` lists it
/// online, and its task.
pub async fn run_router_at(
    data_dir: &DataDir,
    identity: &std::path::Path,
    bind: SocketAddr,
    tune: impl FnOnce(&mut RouterConfig),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let socket = darkport_edge_router::Listeners::bind(bind, true)?;
    let addr = socket.udp.local_addr()?;
    let mut config = RouterConfig::from_identity_file(identity.to_path_buf(), addr.to_string())?;
    config.snapshot_path = None;
    tune(&mut config);
    let handle = tokio::spawn(async move {
        if let Err(e) = darkport_edge_router::run(config, socket, stop).await {
            panic!("router failed: {e}");
        }
    });
    wait_router_online(data_dir, addr, Duration::from_secs(10)).await?;
    Ok((addr, handle))
}

/// The store new test controllers use: `None` (SQLite in the data dir)
/// unless `DARKPORT_TEST_BACKEND=postgres`, then a fresh database on the
/// server `DARKPORT_TEST_POSTGRES` names (scripts/test.sh runs the
/// control-plane tests once more that way).
pub fn test_store() -> Result<Option<String>> {
    if std::env::var("DARKPORT_TEST_BACKEND").as_deref() != Ok("postgres") {
        return Ok(None);
    }
    let Some(server) = pg::server_url("DARKPORT_TEST_BACKEND=postgres") else {
        bail!("DARKPORT_TEST_BACKEND=postgres needs DARKPORT_TEST_POSTGRES (scripts/postgres.sh start DIR prints one)");
    };
    Ok(Some(pg::fresh_database(&server)?))
}

/// A real PostgreSQL for tests: the server `.ci/run` (or the developer,
/// with `scripts/postgres.sh start DIR`) started, and private servers a
/// test can stop and start.
pub mod pg {
    use anyhow::{bail, Context, Result};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The server URL in `DARKPORT_TEST_POSTGRES`. Without it: `None`
    /// after a loud SKIPPED line naming `test`, or a panic under `CI=true`
    /// (a test that needs PostgreSQL must not pass silently in CI).
    pub fn server_url(test: &str) -> Option<String> {
        match std::env::var("DARKPORT_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("{test} needs PostgreSQL and CI=true: set DARKPORT_TEST_POSTGRES (.ci/run starts one with scripts/postgres.sh)");
                }
                // Straight to stderr: libtest captures eprintln! of passing
                // tests, and a skip must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {test}: no PostgreSQL; set DARKPORT_TEST_POSTGRES to the URL scripts/postgres.sh start DIR prints"
                );
                None
            }
        }
    }

    /// `url` with its database replaced by `db`.
    pub fn with_database(url: &str, db: &str) -> String {
        let (base, _) = match url.rsplit_once('/') {
            Some((b, tail)) if !b.ends_with('/') => (b, tail),
            _ => (url.trim_end_matches('/'), ""),
        };
        format!("{base}/{db}")
    }

    fn psql(url: &str, sql: &str) -> Result<()> {
        run_psql(url, "-q", sql).map(drop)
    }

    /// The rows `sql` returns at `url`, as psql prints them unaligned
    /// (`|` between columns, one row a line), trimmed.
    pub fn query(url: &str, sql: &str) -> Result<String> {
        let out = run_psql(url, "-qtA", sql)?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// Runs `sql` at `url` with psql and `flags`, stopping at the first
    /// error; its standard output.
    fn run_psql(url: &str, flags: &str, sql: &str) -> Result<Vec<u8>> {
        let out = Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", flags, "-d", url, "-c", sql])
            .output()
            .context("running psql (Debian package postgresql-client)")?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    /// How many sessions of `url`'s database other than this one wait on
    /// `event` (`pg_stat_activity.wait_event`, e.g. `PgSleep`) or, with
    /// `event` a type such as `Lock`, on any event of that type.
    pub fn sessions_waiting(url: &str, event: &str) -> usize {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND (wait_event = '{event}' OR wait_event_type = '{event}')"
        );
        query(url, &sql)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// A fresh database on the test server for `test`, or `None` where
    /// there is no PostgreSQL (see [`server_url`]).
    pub fn test_database(test: &str) -> Option<String> {
        let server = server_url(test)?;
        Some(fresh_database(&server).expect("a fresh test database"))
    }

    /// Creates an empty database with a unique name on `server`; returns
    /// its URL.
    pub fn fresh_database(server: &str) -> Result<String> {
        let mut b = [0u8; 8];
        rand::fill(&mut b);
        let name = format!("dp_test_{}", hex::encode(b));
        psql(server, &format!("CREATE DATABASE {name}"))?;
        Ok(with_database(server, &name))
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
    }

    /// A PostgreSQL server of a test's own (scripts/postgres.sh), stopped
    /// on drop: for tests that stop the database.
    pub struct Server {
        dir: tempfile::TempDir,
        /// Server URL (database `postgres`).
        pub url: String,
    }

    impl Server {
        /// Starts a new server in a temporary directory, or `None` (with a
        /// loud SKIPPED line, or a panic under CI=true) where PostgreSQL is
        /// not installed.
        pub fn start(test: &str) -> Result<Option<Server>> {
            if server_url(test).is_none() {
                return Ok(None);
            }
            let dir = tempfile::Builder::new().prefix("dp-pg").tempdir()?;
            let out = Command::new("bash")
                .arg(script())
                .arg("start")
                .arg(dir.path())
                .output()
                .context("running scripts/postgres.sh")?;
            if !out.status.success() {
                bail!(
                    "scripts/postgres.sh start failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(Some(Server { dir, url }))
        }

        /// Stops the server (fast shutdown: clients are disconnected).
        pub fn stop(&self) -> Result<()> {
            self.run("stop")
        }

        /// Starts the stopped server again, on the same port.
        pub fn restart(&self) -> Result<()> {
            self.run("restart")
        }

        fn run(&self, verb: &str) -> Result<()> {
            let status = Command::new("bash")
                .arg(script())
                .arg(verb)
                .arg(self.dir.path())
                .status()?;
            if !status.success() {
                bail!("scripts/postgres.sh {verb} failed");
            }
            Ok(())
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.run("stop");
        }
    }
}
