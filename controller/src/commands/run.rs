//! `run`: serve enrollment, admin and router sync until SIGTERM or Ctrl-C.

use anyhow::{Context, Result};

use darkport_cli::health::Health;
use darkport_cli::LogHandle;
use darkport_controller::metrics::{ControllerMetrics, Metrics};
use darkport_controller::DataDir;

use crate::cli::{Cli, RunArgs};

pub async fn exec(args: RunArgs, log: LogHandle) -> Result<()> {
    let RunArgs {
        dir,
        listen,
        common,
        store,
    } = args;
    let dd = DataDir::new(&dir.data_dir);
    let config = dd.load_config()?;
    let listen = match listen {
        Some(l) => l,
        None => darkport_transport::endpoint::resolve(&config.advertise)
            .await
            .with_context(|| {
                format!(
                    "cannot resolve the advertise address {}; pass --listen",
                    config.advertise
                )
            })?,
    };
    let socket = darkport_controller::server::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Readiness for systemd once the socket is bound and the CA,
    // its key and the config load (run loads them again).
    dd.load_config()?;
    dd.load_ca()?;
    let metrics = Metrics::default();
    let health = Health::of(
        metrics.clone(),
        ControllerMetrics::register,
        ControllerMetrics::ready,
        None,
    );
    darkport_cli::health::start(&common.metrics, health, std::future::pending()).await?;
    let stopping = darkport_cli::ready_until_stopped::<Cli>(log, |_| {});
    darkport_controller::server::run_with_store(dd, socket, stopping, metrics, store).await?;
    Ok(())
}
