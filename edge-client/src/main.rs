//! `darkport-edge-client`: parse arguments, then call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use darkport_cli::health::Health;
use darkport_cli::{AssetsArgs, EnrollArgs};

use darkport_proto::identity::Kind;
use darkport_transport::splice::{splice_io, Ending};
use edge_client::metrics::ClientMetrics;
use edge_client::{Client, ClientOptions, TransportMode};

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

impl darkport_cli::CommandLine for Cli {
    fn log_args(&self) -> &darkport_cli::LogArgs {
        &self.log
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets(AssetsArgs),
    /// Redeem an enrollment token; the key pair is made here.
    Enroll(EnrollArgs),
    /// Expose services on local TCP ports.
    Run(RunArgs),
    /// Connect stdin/stdout to a service, like nc (usable as ssh ProxyCommand).
    Dial {
        /// The service to reach.
        service: String,
        /// Identity file from `enroll`.
        #[arg(long, env = "DARKPORT_IDENTITY")]
        identity: PathBuf,
        /// Router HOST:PORT to use instead of asking the controller (repeatable).
        #[arg(long = "router")]
        routers: Vec<String>,
        /// How to reach routers: auto (QUIC, falling back to TLS over TCP
        /// where UDP does not get through), quic or tcp.
        #[arg(long, env = "DARKPORT_TRANSPORT", default_value = "auto")]
        transport: TransportMode,
    },
}

/// The settings of `run`; each is also a key of the config file.
#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: darkport_cli::RunCommon,
    /// Identity file from `enroll`.
    #[arg(long, env = "DARKPORT_IDENTITY")]
    identity: PathBuf,
    /// LOCAL_ADDR=SERVICE, e.g. 127.0.0.1:24224=fluentd (repeatable;
    /// in a config file, a list).
    #[arg(long = "forward", required = true)]
    forwards: Vec<String>,
    /// Router HOST:PORT to use instead of asking the controller
    /// (repeatable; in a config file, a list).
    #[arg(long = "router")]
    routers: Vec<String>,
    /// How to reach routers: auto (race QUIC and TLS over TCP, prefer
    /// QUIC, remember TCP per router for 5 minutes where UDP does not get
    /// through), quic or tcp.
    #[arg(long, env = "DARKPORT_TRANSPORT", default_value = "auto")]
    transport: TransportMode,
    /// On SIGTERM or Ctrl-C: stop accepting local connections and let
    /// the open ones finish for up to this long, then reset the rest.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    grace_period: std::time::Duration,
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
fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(real_main());
    // `dial` reads stdin on a blocking thread; when the tunnel ends first,
    // that read may never return (stdin still open). Do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    darkport_cli::exit(result.map(|()| ExitCode::SUCCESS))
}

async fn real_main() -> Result<()> {
    let (cli, log) = darkport_cli::start::<Cli>()?;
    match cli.cmd {
        Cmd::GenerateAssets(args) => args.write::<Cli>()?,
        Cmd::Enroll(args) => args.enroll(Kind::Client).await?,
        Cmd::Run(args) => {
            let forwards = args
                .forwards
                .iter()
                .map(|f| parse_forward(f))
                .collect::<Result<Vec<_>>>()?;
            let client = Arc::new(Client::from_identity_file(
                &args.identity,
                ClientOptions {
                    routers: args.routers.clone(),
                    transport: args.transport,
                    ..Default::default()
                },
            )?);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut tasks = tokio::task::JoinSet::new();
            for (addr, service) in &forwards {
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
                    service.clone(),
                    stopped,
                    args.grace_period,
                ));
            }
            let health = Health::of(
                Arc::new(ClientMetrics::new(client.clone())),
                ClientMetrics::register,
                ClientMetrics::ready,
                Some(ClientMetrics::refresh),
            );
            darkport_cli::health::start(&args.common.metrics, health, std::future::pending())
                .await?;
            // Connect now, and say at once if a forwarded service cannot
            // be reached (not only at the first connection).
            let warm = client.clone();
            tokio::spawn(async move {
                match warm.warm_up().await {
                    Ok(Some(served)) => {
                        for (addr, service) in &forwards {
                            if !served.iter().any(|s| s == service) {
                                tracing::warn!(%addr, %service, "no router serves service {service:?} to this identity: the controller knows no such service, or no policy lets this identity dial it, or no router policy covers it; check with darkport-controller policy explain");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("cannot connect to a router yet (will keep trying): {e}")
                    }
                }
            });
            // Signals are handled from here on; every forward port is
            // bound: ready, for systemd.
            darkport_cli::ready_until_stopped::<Cli>(log, |_| {}).await;
            let _ = stop_tx.send(true);
            while tasks.join_next().await.is_some() {}
            client.close().await;
        }
        Cmd::Dial {
            service,
            identity,
            routers,
            transport,
        } => {
            let client = Client::from_identity_file(
                &identity,
                ClientOptions {
                    routers,
                    transport,
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
            // Over TCP, the close sends what is still queued once these
            // are gone.
            drop((send, recv));
            client.close().await;
            match stats.ending {
                Ending::Clean => {}
                Ending::LocalReset => {
                    return Err(anyhow!("local input/output failed; the stream was reset"))
                }
                Ending::RemoteReset | Ending::Cancelled => {
                    return Err(anyhow!(
                        "{}",
                        edge_client::describe_remote_end(
                            stats.remote.as_ref(),
                            client.identity().name.as_str(),
                            &service
                        )
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_has_help() {
        darkport_cli::assert_cli_documented(Cli::command());
    }
}
