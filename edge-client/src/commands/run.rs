//! `run`: expose services on local TCP ports until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use darkport_cli::health::Health;
use darkport_cli::LogHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;

use edge_client::metrics::ClientMetrics;
use edge_client::Client;

use crate::cli::{Cli, RunArgs};

/// One `--forward`: the local address to listen on, and the service its
/// connections are dialed to.
type Forward = (SocketAddr, String);

pub async fn exec(args: RunArgs, log: LogHandle) -> Result<()> {
    let forwards = args
        .forwards
        .iter()
        .map(|f| parse_forward(f))
        .collect::<Result<Vec<_>>>()?;
    let client = Arc::new(super::client(
        &args.identity,
        &args.routers,
        args.transport,
    )?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = forward_all(&client, &forwards, &stop_rx, args.grace_period).await?;
    let health = Health::of(
        Arc::new(ClientMetrics::new(client.clone())),
        ClientMetrics::register,
        ClientMetrics::ready,
        Some(ClientMetrics::refresh),
    );
    darkport_cli::health::start(&args.common.metrics, health, std::future::pending()).await?;
    // Connect now, and say at once if a forwarded service cannot be
    // reached (not only at the first connection).
    tokio::spawn(warm_up(client.clone(), forwards));
    // Signals are handled from here on; every forward port is bound:
    // ready, for systemd.
    darkport_cli::ready_until_stopped::<Cli>(log, |_| {}).await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    client.close().await;
    Ok(())
}

fn parse_forward(s: &str) -> Result<Forward> {
    let (addr, service) = s.rsplit_once('=').ok_or_else(|| {
        anyhow!("--forward {s:?} must be LOCAL_ADDR=SERVICE, e.g. 127.0.0.1:24224=fluentd")
    })?;
    let addr = addr
        .parse()
        .with_context(|| format!("--forward {s:?}: {addr:?} is not an IP:PORT address"))?;
    Ok((addr, service.to_string()))
}

/// Binds every forward port, in order (the first that cannot be bound is
/// the error), and serves each until `stop` turns true, then drains it for
/// the grace period.
async fn forward_all(
    client: &Arc<Client>,
    forwards: &[Forward],
    stop: &watch::Receiver<bool>,
    grace_period: Duration,
) -> Result<JoinSet<std::io::Result<()>>> {
    let mut tasks = JoinSet::new();
    for (addr, service) in forwards {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let mut stop = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tasks.spawn(edge_client::forward::forward_draining(
            client.clone(),
            listener,
            service.clone(),
            stopped,
            grace_period,
        ));
    }
    Ok(tasks)
}

/// Connects to a router, and warns of each forward whose service no
/// router serves to this identity.
async fn warm_up(client: Arc<Client>, forwards: Vec<Forward>) {
    match client.warm_up().await {
        Ok(Some(served)) => {
            for (addr, service) in unserved(&forwards, &served) {
                tracing::warn!(%addr, %service, "no router serves service {service:?} to this identity: the controller knows no such service, or no policy lets this identity dial it, or no router policy covers it; check with darkport-controller policy explain");
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!("cannot connect to a router yet (will keep trying): {e}")
        }
    }
}

/// The forwards whose service is not among `served`.
fn unserved<'a>(
    forwards: &'a [Forward],
    served: &'a [String],
) -> impl Iterator<Item = &'a Forward> + 'a {
    forwards
        .iter()
        .filter(|(_, service)| !served.iter().any(|s| s == service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_is_addr_equals_service() {
        let (addr, service) = parse_forward("127.0.0.1:24224=fluentd").unwrap();
        assert_eq!(addr, "127.0.0.1:24224".parse().unwrap());
        assert_eq!(service, "fluentd");
        let e = parse_forward("fluentd").unwrap_err().to_string();
        assert!(e.contains("must be LOCAL_ADDR=SERVICE"), "{e}");
        let e = parse_forward("localhost:1=x").unwrap_err().to_string();
        assert!(e.contains("is not an IP:PORT address"), "{e}");
    }

    #[test]
    fn unserved_lists_forwards_no_router_serves() {
        let forwards = vec![
            parse_forward("127.0.0.1:1=a").unwrap(),
            parse_forward("127.0.0.1:2=b").unwrap(),
        ];
        let served = vec!["b".to_string()];
        let left: Vec<_> = unserved(&forwards, &served).map(|f| &f.1).collect();
        assert_eq!(left, ["a"]);
    }
}
