//! Runs a controller or a router as its own process, through the same
//! library entry points the production binaries call, so whole-system tests
//! can kill it with SIGKILL and restart it.
//!
//! ```text
//! darkport-test-node controller DATA_DIR LISTEN_ADDR
//! darkport-test-node router IDENTITY_FILE LISTEN_ADDR
//! darkport-test-node client IDENTITY_FILE FORWARD_TCP_ADDR   (to service "echo")
//! ```

/// The production router's allocator (edge-router/src/main.rs), so the
/// soak measures the router as it ships.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

#[tokio::main]
async fn main() -> Result<()> {
    // The binaries' logging, from the environment (DARKPORT_LOG_FORMAT,
    // DARKPORT_LOG_LEVEL), quiet by default.
    #[derive(clap::Parser)]
    struct Log {
        #[command(flatten)]
        log: darkport_cli::LogArgs,
    }
    let mut log = <Log as clap::Parser>::parse_from(["darkport-test-node"]).log;
    if std::env::var(darkport_cli::ENV_LOG_LEVEL).is_err() {
        log.log_level = "warn".into();
    }
    darkport_cli::init_logging(&log)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role, path, listen] = args.as_slice() else {
        bail!("usage: darkport-test-node controller|router|client PATH LISTEN_ADDR");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN_ADDR")?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if role == "client" {
        let client = edge_client::Client::from_identity_file(
            std::path::Path::new(path),
            darkport_tests::client_options(),
        )?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        edge_client::forward::forward(std::sync::Arc::new(client), listener, "echo".into(), stop)
            .await?;
        return Ok(());
    }
    match role.as_str() {
        "controller" => {
            let socket = darkport_transport::endpoint::bind_udp(listen)
                .with_context(|| format!("bind {listen}"))?;
            darkport_controller::run(darkport_controller::DataDir::new(path), socket, stop).await?;
        }
        "router" => {
            let config = darkport_edge_router::RouterConfig::from_identity_file(
                PathBuf::from(path),
                listen.to_string(),
            )?;
            // The port was free for UDP when the test chose it; TCP may
            // have it in use (an ephemeral port): QUIC only, then.
            let listeners = darkport_edge_router::Listeners::bind(listen, true)
                .or_else(|e| {
                    eprintln!("no TCP listener on {listen} ({e}); QUIC only");
                    darkport_edge_router::Listeners::bind(listen, false)
                })
                .with_context(|| format!("bind {listen}"))?;
            darkport_edge_router::run(config, listeners, stop).await?;
        }
        other => bail!("unknown role {other:?}"),
    }
    Ok(())
}
