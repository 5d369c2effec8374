//! `darkport-edge-client`: parse arguments, then call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

use darkport_proto::identity::Kind;
use darkport_transport::splice::{splice_io, Ending};
use edge_client::{enroll, read_token, Client, ClientOptions};

#[derive(Parser)]
#[command(
    name = "darkport-edge-client",
    version,
    about = "Darkport edge client: local ports to private services"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: darkport_cli::LogArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Redeem an enrollment token; the key pair is made here.
    Enroll {
        /// Token text, or a file holding it.
        #[arg(long)]
        token: String,
        /// Where to write the identity file (0600).
        #[arg(long)]
        identity: PathBuf,
    },
    /// Expose services on local TCP ports.
    Run {
        /// Identity file from `enroll`.
        #[arg(long)]
        identity: PathBuf,
        /// LOCAL_ADDR=SERVICE, e.g. 127.0.0.1:24224=fluentd (repeatable).
        #[arg(long = "forward", required = true)]
        forwards: Vec<String>,
        /// Router HOST:PORT to use instead of asking the controller (repeatable).
        #[arg(long = "router")]
        routers: Vec<String>,
        /// On SIGTERM or Ctrl-C: stop accepting local connections and let
        /// the open ones finish for up to this long, then reset the rest.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        grace_period: std::time::Duration,
    },
    /// Connect stdin/stdout to a service, like nc (usable as ssh ProxyCommand).
    Dial {
        service: String,
        /// Identity file from `enroll`.
        #[arg(long)]
        identity: PathBuf,
        /// Router HOST:PORT to use instead of asking the controller (repeatable).
        #[arg(long = "router")]
        routers: Vec<String>,
    },
}

fn parse_forward(s: &str) -> Result<(SocketAddr, String)> {
    let (addr, service) = s.rsplit_once('=').ok_or_else(|| {
        anyhow!("--forward {s:?} must be LOCAL_ADDR=SERVICE, e.g. 127.0.0.1:24224=fluentd")
    })?;
    let addr = addr
        .parse()
        .with_context(|| format!("--forward {s:?}: {addr:?} is not an IP:PORT address"))?;
    Ok((addr, service.to_string()))
}

/// One thread: the client's router connection and every stream on it share
/// a core, with no cross-thread wake-up per packet (measured: bulk 1.29x
/// -> 1.62x stunnel, CPU per GiB down 17%; docs/benchmarks.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Result<()> {
    let cli = Cli::parse();
    darkport_cli::init_logging(&cli.log)?;
    match cli.cmd {
        Cmd::Enroll { token, identity } => {
            let file = enroll(&read_token(&token)?, Kind::Client, &identity).await?;
            println!(
                "enrolled client {}; identity written to {}",
                file.name,
                identity.display()
            );
        }
        Cmd::Run {
            identity,
            forwards,
            routers,
            grace_period,
        } => {
            let forwards = forwards
                .iter()
                .map(|f| parse_forward(f))
                .collect::<Result<Vec<_>>>()?;
            let client = Arc::new(Client::from_identity_file(
                &identity,
                ClientOptions {
                    routers,
                    ..Default::default()
                },
            )?);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut tasks = tokio::task::JoinSet::new();
            for (addr, service) in forwards {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let mut stop = stop_rx.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                tasks.spawn(edge_client::forward::forward_draining(
                    client.clone(),
                    listener,
                    service,
                    stopped,
                    grace_period,
                ));
            }
            // Signals are handled from here on; every forward port is
            // bound: ready, for systemd.
            let signal = darkport_transport::endpoint::shutdown_signal();
            darkport_cli::notify_ready();
            signal.await;
            darkport_cli::notify_stopping();
            let _ = stop_tx.send(true);
            while tasks.join_next().await.is_some() {}
            client.close().await;
        }
        Cmd::Dial {
            service,
            identity,
            routers,
        } => {
            let client = Client::from_identity_file(
                &identity,
                ClientOptions {
                    routers,
                    ..Default::default()
                },
            )?;
            let stream = client.dial(&service).await?;
            let (mut send, mut recv) = stream.into_split();
            let stats = splice_io(
                &mut tokio::io::stdin(),
                &mut tokio::io::stdout(),
                &mut send,
                &mut recv,
                std::future::pending(),
            )
            .await;
            // Let the router see everything we sent before the process ends.
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            client.close().await;
            match stats.ending {
                Ending::Clean => {}
                Ending::LocalReset => {
                    return Err(anyhow!("local input/output failed; the stream was reset"))
                }
                Ending::RemoteReset | Ending::Cancelled => {
                    return Err(anyhow!("the service side reset the connection"))
                }
            }
        }
    }
    Ok(())
}
