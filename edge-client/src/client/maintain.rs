//! The background maintenance: drops dead connections, makes missing ones,
//! moves TCP connections back to QUIC when it gets through again, and
//! keeps the router list fresh, for as long as the client lives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use darkport_proto::codes::CloseCode;
use darkport_transport::identity::Identity;
use darkport_transport::mux::Transport;

use super::clock;
use super::connect::{Configs, Connector};
use super::pooled::{admit, lock, Live, Pool};
use super::router_list::RouterList;
use crate::pool::{Asker, DEAD_AFTER};

/// Time a background connect to a router may take.
const BACKGROUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the pool is checked: dead connections dropped, missing ones
/// made, a stale router list refreshed.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// Keeps the pool at `pool_size` live connections and the router list
/// fresh, for as long as the client lives. Does nothing until the first
/// dial has loaded a router list. What to do is the decision of
/// [`PoolState`](crate::pool::PoolState); this carries it out.
pub(super) async fn maintain(
    pool: Arc<Mutex<Pool>>,
    connector: Connector,
    router_list: RouterList,
    pool_size: usize,
    identity: watch::Receiver<Arc<Identity>>,
) {
    loop {
        tokio::time::sleep(MAINTAIN_EVERY).await;
        let dead = {
            let mut p = lock(&pool);
            let now = clock();
            p.state.sweep(now);
            p.state.dead(now)
        };
        for (router, conn) in dead {
            warn!(router = %router, "router silent for {DEAD_AFTER:?}; dropping the connection");
            conn.close(CloseCode::Done, b"router silent");
        }
        let (configs, live, idle, stale) = {
            let mut p = lock(&pool);
            let now = clock();
            p.state.sweep(now);
            let live: Vec<Live> = p
                .state
                .links()
                .map(|(router, conn)| Live::from((router.to_string(), conn.clone())))
                .collect();
            let (idle, stale) = (p.state.idle(now), p.state.list_stale(now));
            (p.configs.clone(), live, idle, stale)
        };
        // Nothing to do until a dial (or warm_up) asked for routers; an
        // empty list is asked for again soon (routers may start later).
        if idle {
            continue;
        }
        if stale {
            let id = identity.borrow().clone();
            router_list.refresh(&pool, &id).await;
        }
        retry_quic(&pool, &connector, &configs, &live).await;
        let missing = lock(&pool)
            .state
            .to_connect(clock(), pool_size, Asker::Background);
        let attempts = missing.into_iter().map(|addr| {
            let (connector, configs) = (connector.clone(), configs.clone());
            async move {
                let r = tokio::time::timeout(
                    BACKGROUND_CONNECT_TIMEOUT,
                    connector.connect(&configs, &addr),
                )
                .await;
                (addr, r)
            }
        });
        for (addr, result) in futures_join_all(attempts).await {
            match result {
                Ok(Ok(conn)) => {
                    let rtt = conn.rtt();
                    if admit(&pool, addr.clone(), conn, pool_size) {
                        info!(router = %addr, ?rtt, "connected to router");
                    }
                }
                _ => lock(&pool).state.on_unreachable(&addr, clock()),
            }
        }
    }
}

/// For each live TCP connection whose router's TCP memory has expired
/// (auto mode), tries QUIC again; if it gets through, the QUIC
/// connection takes the TCP one's place for new dials (streams on the TCP
/// connection carry on to their end), else TCP is remembered again.
async fn retry_quic(pool: &Mutex<Pool>, connector: &Connector, configs: &Configs, live: &[Live]) {
    let now = clock();
    let due: Vec<&Live> = live
        .iter()
        .filter(|l| l.conn.transport() == Transport::Tcp)
        .filter(|l| {
            connector
                .memory()
                .retry_quic(connector.mode, &l.router, now)
        })
        .collect();
    for old in due {
        let attempt = tokio::time::timeout(
            BACKGROUND_CONNECT_TIMEOUT,
            connector.quic(configs, &old.router),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                connector.learned(&old.router, Transport::Quic);
                info!(router = %old.router, "QUIC gets through again; new dials use it instead of TCP");
                let replaced = lock(pool).state.replace(old.conn.stable_id(), conn);
                if let Err(conn) = replaced {
                    conn.close(CloseCode::Done, b"enough routers");
                }
            }
            _ => {
                debug!(router = %old.router, "QUIC still does not get through; staying on TCP");
                connector.learned(&old.router, Transport::Tcp);
            }
        }
    }
}

/// Runs futures concurrently and collects their outputs.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    let mut out = vec![];
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            out.push(v);
        }
    }
    out
}
