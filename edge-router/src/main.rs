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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
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
            run(
                config,
                socket,
                darkport_transport::endpoint::shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
