//! `run`: serve enrollment, admin and router sync until SIGTERM or Ctrl-C.

use anyhow::{Context, Result};

use darkport_cli::LogHandle;
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
    let metrics = darkport_controller::metrics::Metrics::default();
    let mut registry = prometheus_client::registry::Registry::with_prefix("darkport");
    metrics.register(&mut registry);
    let ready = metrics.clone();
    let health = darkport_cli::health::Health {
        registry,
        ready: Box::new(move || ready.ready()),
        refresh: vec![],
    };
    darkport_cli::health::start(&common.metrics, health, std::future::pending()).await?;
    let reload = darkport_cli::reload_on_hangup::<Cli>(log, |c| &c.log, |_| {});
    let signal = darkport_transport::endpoint::shutdown_signal(reload);
    darkport_cli::notify_ready();
    let stopping = async move {
        signal.await;
        darkport_cli::notify_stopping();
    };
    darkport_controller::server::run_with_store(dd, socket, stopping, metrics, store).await?;
    Ok(())
}
