//! `darkport-edge-router`: parse arguments, then call the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use darkport_edge_router::{run, RouterConfig};
use darkport_proto::identity::Kind;
use darkport_transport::enroll::{enroll, read_token};

#[derive(Parser)]
#[command(
    name = "darkport-edge-router",
    version,
    about = "Darkport edge router: the public QUIC endpoint"
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
    /// Accept clients and carry their streams to services.
    Run {
        /// Identity file from `enroll`.
        #[arg(long)]
        identity: PathBuf,
        /// UDP address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// HOST:PORT clients use to reach this router (default: --listen).
        /// The last policy snapshot is kept in IDENTITY.snapshot, and the
        /// certificate is renewed in IDENTITY automatically.
        #[arg(long)]
        advertise: Option<String>,
        /// Threads carrying client connections; each connection and its
        /// streams stay on one thread (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
        /// Concurrent QUIC connections one client identity may hold here.
        #[arg(long, default_value_t = darkport_edge_router::MAX_CONNECTIONS_PER_IDENTITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_connections_per_identity: usize,
        /// Concurrent streams (tunneled connections) one client identity
        /// may hold here, across its connections; more are refused with
        /// LimitReached.
        #[arg(long, default_value_t = darkport_edge_router::MAX_STREAMS_PER_IDENTITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_streams_per_identity: usize,
        /// Refuse new dials once the controller has not been heard from
        /// for this long (e.g. "7d", "12h"; "0" never refuses). Default:
        /// the lifetime of the router's certificate.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_policy_age: Option<std::time::Duration>,
        /// On SIGTERM or Ctrl-C: refuse new dials with "draining" (clients
        /// move to another router at once) and let streams in flight go on
        /// for up to this long, then reset the rest.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        grace_period: std::time::Duration,
    },
}

/// The main thread accepts connections and talks to the controller;
/// client connections run on the router's connection threads.
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
            let file = enroll(&read_token(&token)?, Kind::Router, &identity).await?;
            println!(
                "enrolled router {}; identity written to {}",
                file.name,
                identity.display()
            );
        }
        Cmd::Run {
            identity,
            listen,
            advertise,
            threads,
            max_connections_per_identity,
            max_streams_per_identity,
            max_policy_age,
            grace_period,
        } => {
            let advertise = match advertise {
                Some(a) => a,
                None if listen.ip().is_unspecified() => {
                    bail!("--listen {listen} is a wildcard address; pass --advertise HOST:PORT so clients know where to connect")
                }
                None => listen.to_string(),
            };
            let socket = darkport_transport::endpoint::bind_udp(listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            let mut config = RouterConfig::from_identity_file(identity, advertise)?;
            if let Some(n) = threads {
                config.threads = n.into();
            }
            config.limits.max_connections_per_identity = max_connections_per_identity;
            config.limits.max_streams_per_identity = max_streams_per_identity;
            config.grace_period = grace_period;
            if let Some(age) = max_policy_age {
                config.limits.max_policy_age = (!age.is_zero()).then_some(age);
            }
            // Signals are handled from here on; socket bound, identity
            // loaded: ready, for systemd.
            let signal = darkport_transport::endpoint::shutdown_signal();
            darkport_cli::notify_ready();
            let stopping = async move {
                signal.await;
                darkport_cli::notify_stopping();
            };
            run(config, socket, stopping).await?;
        }
    }
    Ok(())
}
