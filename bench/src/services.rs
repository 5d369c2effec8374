//! The private services behind every path, run in a child process
//! (`darkport-bench serve`) so that the load generator, the services and
//! the tunnel each have their own process and file-descriptor table.
//!
//! - sink: reads until end of stream, then answers the byte count (u64, big
//!   endian) and closes.
//! - rr: reads a 100-byte request, writes a 100-byte reply and closes (the
//!   service closes first, so TIME_WAIT stays on the service side).
//! - echo: echoes until end of stream.
//! - fluent: the Fluentd forward receiver of `darkport_tests::fluent`,
//!   acking every message that carries a `chunk`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::procs::Proc;

/// Size of the request and of the reply in the connection-setup scenario.
pub const RR_SIZE: usize = 100;

/// Where each service listens, on one path.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// Byte sink.
    pub sink: SocketAddr,
    /// One request, one reply, close.
    pub rr: SocketAddr,
    /// Echo until end of stream.
    pub echo: SocketAddr,
    /// Fluentd forward receiver.
    pub fluent: SocketAddr,
    /// The same receiver behind a fluent-forward service (Darkport stamps
    /// every record); elsewhere the same address as `fluent`.
    pub fluentfw: SocketAddr,
}

impl Targets {
    /// (service name in the controller, address), one per service: the
    /// same names on every path (the hosted twins add [`HOSTED_SUFFIX`]).
    pub fn by_name(&self) -> [(&'static str, SocketAddr); 5] {
        [
            ("sink", self.sink),
            ("rr", self.rr),
            ("echo", self.echo),
            ("fluent", self.fluent),
            ("fluentfw", self.fluentfw),
        ]
    }
}

/// Added to a service's name for its hosted twin (`sink-h`, …), which has
/// no address: the router reaches it through the hoster's terminators.
pub const HOSTED_SUFFIX: &str = "-h";

/// The service whose router speaks Fluentd's forward protocol (every
/// record stamped); its address is the plain `fluent` receiver.
pub const FLUENT_FORWARD: &str = "fluentfw";

/// The services' child process; it also exits when its stdin closes, so it
/// never outlives the bench.
#[derive(Debug)]
pub struct Services {
    /// The service addresses (the "direct" path).
    pub targets: Targets,
    /// Held open; the child exits when it closes.
    _stdin: std::process::ChildStdin,
    /// The child.
    pub proc: Proc,
}

impl Services {
    /// Starts `<this exe> serve` on the far side of `topo` and reads the
    /// addresses it prints.
    pub async fn start(dir: &Path, topo: &crate::topo::Topology) -> Result<Services> {
        let exe = std::env::current_exe().context("finding the bench executable")?;
        let log = dir.join("services.log");
        let err = std::fs::File::create(&log).context("creating services.log")?;
        let mut child = topo
            .far(&exe)
            .args(["serve", "--bind", &topo.far_ip().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("starting the services process")?;
        let stdin = child.stdin.take().context("services stdin")?;
        let stdout = child.stdout.take().context("services stdout")?;
        let proc = Proc::adopt("services", child, &log);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), line)
            .await
            .context("the services process did not print its addresses within 10 s")?
            .context("reading the services' addresses")?
            .context("reading the services' addresses")?;
        let targets = parse_targets(&line)?;
        Ok(Services {
            targets,
            _stdin: stdin,
            proc,
        })
    }
}

fn parse_targets(line: &str) -> Result<Targets> {
    let get = |key: &str| -> Result<SocketAddr> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("services printed {line:?}, without {key}="))?
            .parse()
            .with_context(|| format!("services printed {line:?}"))
    };
    Ok(Targets {
        sink: get("sink")?,
        rr: get("rr")?,
        echo: get("echo")?,
        fluent: get("fluent")?,
        fluentfw: get("fluent")?,
    })
}

/// The `serve` subcommand: binds the services, prints their addresses on
/// one line, and serves until stdin closes.
pub async fn serve(ip: std::net::IpAddr) -> Result<()> {
    let bind = || TcpListener::bind(SocketAddr::new(ip, 0));
    let (sink, rr, echo, fluent) = (bind().await?, bind().await?, bind().await?, bind().await?);
    println!(
        "sink={} rr={} echo={} fluent={}",
        sink.local_addr()?,
        rr.local_addr()?,
        echo.local_addr()?,
        fluent.local_addr()?
    );
    tokio::spawn(accept_loop(sink, serve_sink));
    tokio::spawn(accept_loop(rr, serve_rr));
    tokio::spawn(accept_loop(echo, serve_echo));
    tokio::spawn(darkport_tests::fluent::serve(fluent, |_| {}));
    // The parent holds our stdin; its end (the parent exited) ends us.
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    while stdin.read_line(&mut line).await.unwrap_or(0) > 0 {
        line.clear();
    }
    Ok(())
}

async fn accept_loop<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handler(tcp));
            }
            // Out of descriptors and the like: the bench reports the
            // failed connection; keep serving.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn serve_sink(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match tcp.read(&mut buf).await? {
            0 => break,
            n => total += n as u64,
        }
    }
    tcp.write_all(&total.to_be_bytes()).await?;
    tcp.shutdown().await
}

async fn serve_rr(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut req = [0u8; RR_SIZE];
    tcp.read_exact(&mut req).await?;
    tcp.write_all(&[b'r'; RR_SIZE]).await?;
    tcp.shutdown().await
}

async fn serve_echo(mut tcp: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = tcp.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}
