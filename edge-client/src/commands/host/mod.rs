//! `host`: serve local services through routers until SIGTERM or Ctrl-C,
//! over connections this process opens; it listens on no socket (unless
//! `--metrics-listen` asks for the metrics endpoint).
//!
//! Each stream a router brings: connect to the service's local address
//! (within [`LOCAL_CONNECT_TIMEOUT`]), write the PROXY header if asked,
//! answer `Ok` (or `ServiceUnreachable` with the reason), then splice
//! byte-exact. One log line per stream names the caller.
//!
//! - `probe`: the health checks.
//! - `proxy`: the PROXY protocol v2 header.

mod probe;
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use darkport_cli::health::Health;
use darkport_cli::LogHandle;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use darkport_transport::splice::{abort_on_drop, reset_tcp, splice_tcp, Ending};
use edge_client::host::{default_instance, HealthState, HostOptions, HostedService, RouterState};
use edge_client::metrics::HostMetrics;
use edge_client::{Host, IncomingStream};

use crate::cli::{Cli, HealthCheck, HostArgs};

/// Time to connect to a local service for a stream: within the router's
/// 6 s for the answer ([`edge_client::host::ANSWER_TIMEOUT`]), with room
/// for the PROXY header and the answer itself.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest health check, whatever the interval.
const MAX_CHECK_TIME: Duration = Duration::from_secs(5);

/// One `--service`: the service's name and its local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    /// `HOST:PORT`, resolved at each connect.
    pub addr: String,
}

pub async fn exec(args: HostArgs, log: LogHandle) -> Result<()> {
    let locals = args
        .services
        .iter()
        .map(|s| parse_service(s))
        .collect::<Result<Vec<_>>>()?;
    let client = Arc::new(crate::commands::client(
        &args.identity,
        &args.routers,
        args.transport,
    )?);
    let hosted: Vec<HostedService> = locals
        .iter()
        .map(|l| HostedService {
            name: l.name.clone(),
            cost: args.cost,
            precedence: args.precedence,
        })
        .collect();
    let instance = args.instance.clone().unwrap_or_else(default_instance);
    let host = Arc::new(client.host(
        &hosted,
        HostOptions {
            max_routers: args.max_routers,
            instance: instance.clone(),
            offers: args.offers.into(),
        },
    )?);
    let metrics = Arc::new(HostMetrics::new(host.clone()));
    let health = Health::of(
        metrics.clone(),
        HostMetrics::register,
        HostMetrics::ready,
        Some(HostMetrics::refresh),
    );
    darkport_cli::health::start(&args.common.metrics, health, std::future::pending()).await?;
    let (stop_checks, checks_stop) = watch::channel(false);
    start_health_checks(&host, &locals, &args, &checks_stop);
    let ctx = Arc::new(StreamCtx {
        locals,
        proxy_protocol: args.proxy_protocol,
        metrics,
    });
    info!(%instance, services = ?hosted.iter().map(|s| &s.name).collect::<Vec<_>>(), "hosting; this host listens on no port");
    let mut streams = JoinSet::new();
    let stopped = darkport_cli::ready_until_stopped::<Cli>(log, |_| {});
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            r = host.accept() => match r {
                Ok(incoming) => {
                    streams.spawn(serve_stream(ctx.clone(), incoming));
                }
                Err(e) => return Err(anyhow!("hosting ended: {e}")),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    let _ = stop_checks.send(true);
    drain(&host, &ctx, streams, args.grace_period).await;
    client.close().await;
    info!("drained; exiting");
    Ok(())
}

/// Parses `NAME=HOST:PORT`.
fn parse_service(s: &str) -> Result<Local> {
    let (name, addr) = s.split_once('=').ok_or_else(|| {
        anyhow!("--service {s:?} must be NAME=HOST:PORT, e.g. fluentd=127.0.0.1:24224")
    })?;
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if name.is_empty() || !port_ok {
        return Err(anyhow!(
            "--service {s:?} must be NAME=HOST:PORT, e.g. fluentd=127.0.0.1:24224"
        ));
    }
    Ok(Local {
        name: name.to_string(),
        addr: addr.to_string(),
    })
}

/// One task per service with a health check: after `--health-count`
/// failures in a row its terminators are `Failed` on every router; one
/// good check restores the configured precedence.
fn start_health_checks(
    host: &Arc<Host>,
    locals: &[Local],
    args: &HostArgs,
    stop: &watch::Receiver<bool>,
) {
    if args.health_check == HealthCheck::None {
        return;
    }
    let within = args.health_interval.min(MAX_CHECK_TIME);
    for local in locals {
        let (host, local, mut stop) = (host.clone(), local.clone(), stop.clone());
        let (kind, interval, count) = (args.health_check, args.health_interval, args.health_count);
        let mut state = HealthState::new(args.precedence, count);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let result = probe::check(kind, &local.addr, within).await;
                let now = tokio::time::Instant::now().into_std();
                let verdict = state.observe(result.is_ok(), now);
                if !verdict.changed {
                    if let Err(e) = &result {
                        tracing::debug!(service = %local.name, "health check failed: {e}");
                    }
                    continue;
                }
                let _ = host.set_precedence(&local.name, verdict.precedence);
                match result {
                    Err(e) => {
                        warn!(service = %local.name, "health check failed {count} time(s) in a row ({e}); terminators marked failed on every router")
                    }
                    Ok(()) => {
                        info!(service = %local.name, precedence = verdict.precedence.as_str(), "health check passes again; precedence restored on every router")
                    }
                }
            }
        });
    }
}

/// What every stream's task needs.
struct StreamCtx {
    locals: Vec<Local>,
    proxy_protocol: bool,
    metrics: Arc<HostMetrics>,
}

/// One stream: connect locally, answer, splice. Logs one line.
async fn serve_stream(ctx: Arc<StreamCtx>, incoming: IncomingStream) {
    let caller = incoming.caller();
    let service = incoming.service().to_string();
    let refuse = |reason: String, incoming: IncomingStream| {
        let (caller, service, metrics) = (caller.clone(), service.clone(), ctx.metrics.clone());
        async move {
            warn!(%service, caller = %caller.identity, caller_address = %caller.address, router = %caller.router, "stream refused: {reason}");
            metrics.stream(&service, "refused");
            let _ = incoming.refuse(&reason).await;
        }
    };
    let Some(local) = ctx.locals.iter().find(|l| l.name == service) else {
        return refuse(format!("service {service:?} is not hosted here"), incoming).await;
    };
    let mut tcp = match connect_local(&local.addr).await {
        Ok(t) => t,
        Err(reason) => return refuse(reason, incoming).await,
    };
    abort_on_drop(&tcp);
    if ctx.proxy_protocol {
        if let Err(e) = write_proxy_header(&mut tcp, &caller).await {
            reset_tcp(tcp);
            return refuse(
                format!("cannot write the PROXY header to {}: {e}", local.addr),
                incoming,
            )
            .await;
        }
    }
    let stream = match incoming.accept().await {
        Ok(s) => s,
        Err(e) => {
            warn!(%service, caller = %caller.identity, router = %caller.router, "stream lost before it began: {e}");
            ctx.metrics.stream(&service, "lost");
            reset_tcp(tcp);
            return;
        }
    };
    let (send, recv) = stream.into_split();
    let stats = splice_tcp(tcp, send, recv).await;
    let ending = match stats.ending {
        Ending::Clean => "clean",
        Ending::LocalReset => "service reset",
        Ending::RemoteReset => "caller side reset",
        Ending::Cancelled => "cut",
    };
    ctx.metrics.stream(&service, "ok");
    info!(
        %service,
        caller = %caller.identity,
        caller_address = %caller.address,
        router = %caller.router,
        to_service = stats.received,
        from_service = stats.sent,
        ending,
        "stream ended"
    );
}

async fn connect_local(addr: &str) -> Result<TcpStream, String> {
    match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("the hoster cannot connect to {addr}: {e}")),
        Err(_) => Err(format!(
            "the hoster cannot connect to {addr} within {} s",
            LOCAL_CONNECT_TIMEOUT.as_secs()
        )),
    }
}

async fn write_proxy_header(
    tcp: &mut TcpStream,
    caller: &edge_client::Caller,
) -> std::io::Result<()> {
    let header = proxy::header(caller, tcp.peer_addr()?)?;
    // Local and small: it goes out at once, or the service is stuck
    // (the router's answer deadline is near anyway).
    tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&header))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Withdraws from every router first, serves what arrived before the
/// withdrawal took effect, closes the idle offers, then lets the open
/// streams finish for up to `grace`.
async fn drain(host: &Host, ctx: &Arc<StreamCtx>, mut streams: JoinSet<()>, grace: Duration) {
    info!("draining: withdrawing every terminator first");
    for r in host.withdraw().await {
        match r.state {
            RouterState::Withdrawn { acknowledged: true } => {
                info!(router = %r.router, "withdrawal acknowledged")
            }
            RouterState::Withdrawn {
                acknowledged: false,
            } => {
                info!(router = %r.router, "not connected or no answer: its terminators went with the connection")
            }
            other => warn!(router = %r.router, state = ?other, "withdrawal not confirmed"),
        }
    }
    let close = host.close();
    tokio::pin!(close);
    let mut closed = false;
    loop {
        tokio::select! {
            _ = &mut close, if !closed => closed = true,
            r = host.accept() => match r {
                Ok(incoming) => {
                    streams.spawn(serve_stream(ctx.clone(), incoming));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    if !streams.is_empty() {
        info!(
            streams = streams.len(),
            grace_secs = grace.as_secs(),
            "no new streams; letting the open ones finish"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while !streams.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(streams = streams.len(), "grace period over; resetting the streams still open");
                    break;
                }
                Some(_) = streams.join_next() => {}
            }
        }
    }
    streams.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_is_name_equals_host_port() {
        let l = parse_service("fluentd=127.0.0.1:24224").unwrap();
        assert_eq!(
            l,
            Local {
                name: "fluentd".into(),
                addr: "127.0.0.1:24224".into()
            }
        );
        assert_eq!(
            parse_service("web=localhost:8080").unwrap().addr,
            "localhost:8080"
        );
        assert_eq!(parse_service("v6=[::1]:80").unwrap().addr, "[::1]:80");
        for bad in [
            "fluentd",
            "=127.0.0.1:1",
            "a=127.0.0.1",
            "a=:80",
            "a=h:port",
            "a=h:70000",
        ] {
            let e = parse_service(bad).unwrap_err().to_string();
            assert!(e.contains("must be NAME=HOST:PORT"), "{bad}: {e}");
        }
    }
}
