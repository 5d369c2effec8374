//! `run`: accept clients and carry their streams to services until
//! SIGTERM or Ctrl-C.

use anyhow::{bail, Context, Result};
use darkport_cli::health::Health;
use darkport_cli::LogHandle;

use darkport_edge_router::metrics::RouterMetrics;
use darkport_edge_router::{run, Listeners, RouterConfig};

use crate::cli::{Cli, Cmd, RunArgs};

pub async fn exec(args: Box<RunArgs>, log: LogHandle) -> Result<()> {
    let advertise = advertise(&args)?;
    let socket = Listeners::bind(args.listen, !args.no_tcp)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = RouterConfig::from_identity_file(args.identity.clone(), advertise)?;
    if let Some(n) = args.threads {
        config.threads = n.into();
    }
    let base = config.limits;
    config.limits = args.limits(base);
    config.grace_period = args.grace_period;
    let (limits_tx, limits_rx) = tokio::sync::watch::channel(config.limits);
    config.limit_updates = Some(limits_rx);
    let health = Health::of(
        config.metrics.clone(),
        RouterMetrics::register,
        RouterMetrics::ready,
        Some(RouterMetrics::refresh),
    );
    darkport_cli::health::start(&args.common.metrics, health, std::future::pending()).await?;
    // Signals are handled from here on; socket bound, identity loaded:
    // ready, for systemd. SIGHUP applies the limits read again.
    let stopping = darkport_cli::ready_until_stopped::<Cli>(log, move |c| {
        if let Cmd::Run(a) = &c.cmd {
            let _ = limits_tx.send(a.limits(base));
        }
    });
    run(config, socket, stopping).await?;
    Ok(())
}

/// The address clients are told to reach this router at: `--advertise`,
/// else `--listen` unless it is a wildcard.
fn advertise(args: &RunArgs) -> Result<String> {
    Ok(match &args.advertise {
        Some(a) => a.clone(),
        None if args.listen.ip().is_unspecified() => {
            bail!("--listen {} is a wildcard address; pass --advertise HOST:PORT so clients know where to connect", args.listen)
        }
        None => args.listen.to_string(),
    })
}
