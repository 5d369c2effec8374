//! The glue between live router connections and the pure [`PoolState`]:
//! what the pool sees of a connection, which connections a dial may use,
//! and filling the pool when a dial finds it empty.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use darkport_proto::codes::CloseCode;
use darkport_transport::identity::Identity;
use darkport_transport::mux::{Conn, RemoteEnd};

use super::connect::{router_error, Configs};
use super::{clock, Client};
use crate::pool::{Asker, ConnId, Ended, Link, PoolState};
use crate::{DialError, RouterFailure};

/// A router connection.
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) router: String,
    pub(super) conn: Conn,
}

/// The pool's decisions are made by [`PoolState`] on what it sees of a
/// connection through this; the transport stays out of it.
impl Link for Conn {
    fn id(&self) -> ConnId {
        self.stable_id()
    }

    fn rtt(&self) -> Duration {
        Conn::rtt(self)
    }

    fn heard(&self) -> u64 {
        Conn::heard(self)
    }

    fn ended(&self) -> Option<Ended> {
        let end = self.close_reason()?;
        Some(match refusal("", end) {
            Some(_) => Ended::Refused,
            None => Ended::Closed,
        })
    }
}

impl Live {
    /// The error for a dial on this connection that got no answer: the
    /// router's refusal if it closed the connection with one, else
    /// `cause`.
    pub(super) fn lost(&self, cause: RouterFailure) -> DialError {
        refused(&self.router, &self.conn).unwrap_or_else(|| router_error(&self.router, cause))
    }

    /// How the connection ended, or `fallback` while it has not.
    pub(super) fn why_closed(&self, fallback: RouterFailure) -> RouterFailure {
        self.conn
            .close_reason()
            .map(RouterFailure::Ended)
            .unwrap_or(fallback)
    }
}

impl From<(String, Conn)> for Live {
    fn from((router, conn): (String, Conn)) -> Live {
        Live { router, conn }
    }
}

#[derive(Debug)]
pub(super) struct Pool {
    /// Identity the connections below were made with.
    pub(super) identity: Arc<Identity>,
    /// Data-plane TLS configurations for `identity`.
    pub(super) configs: Configs,
    /// Routers, connections and the decisions about them.
    pub(super) state: PoolState<Conn>,
}
impl Client {
    pub(super) fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        lock(&self.pool)
    }

    /// Live connections that may serve `service` at `now`, lowest RTT first.
    /// Connections a router closed because it refuses this identity are
    /// dropped, and the refusal is put in `refusal`: a router may close
    /// such a connection before any dial was tried on it.
    pub(super) fn candidates(
        &self,
        service: &str,
        refusal: &mut Option<DialError>,
        now: std::time::Instant,
    ) -> Vec<Live> {
        let current = self.identity();
        let mut pool = self.pool();
        if !Arc::ptr_eq(&pool.identity, &current) {
            // A renewed certificate: new connections present it. Existing
            // streams keep their connections until they end.
            match Configs::new(&current) {
                Ok(c) => {
                    pool.configs = c;
                    pool.identity = current;
                    pool.state.take_all();
                }
                Err(e) => warn!("cannot use the renewed certificate: {e}"),
            }
        }
        for (router, conn) in pool.state.sweep(now) {
            if let Some(e) = refused(&router, &conn) {
                *refusal = Some(e);
            } else if let (None, Some(end)) = (&*refusal, conn.close_reason()) {
                // A connection that ended before a dial could use it (a
                // router refusing our certificate ends it right after the
                // handshake): how it ended is the dial's answer, not
                // "no router".
                *refusal = Some(router_error(&router, RouterFailure::Ended(end)));
            }
        }
        pool.state
            .candidates_for(service)
            .into_iter()
            .map(Live::from)
            .collect()
    }

    pub(super) fn set_aside(&self, live: &Live) {
        self.pool().state.set_aside(live.conn.stable_id());
    }

    /// Makes sure there are up to `pool_size` router connections; returns
    /// an error only if there are none.
    pub(super) async fn fill(&self) -> Result<(), DialError> {
        let _gate = self.refill.lock().await;
        self.refresh_routers().await;
        let (configs, targets) = {
            let pool = self.pool();
            let targets = pool
                .state
                .to_connect(clock(), self.options.pool_size, Asker::Dial);
            (pool.configs.clone(), targets)
        };
        if targets.is_empty() {
            return Ok(());
        }
        // Connect to every candidate at once and return as soon as one is
        // up: a dead router in the list costs nothing while a live one
        // answers. Later successes join the pool in the background.
        let (tx, mut rx) = tokio::sync::mpsc::channel(targets.len().max(1));
        for addr in targets {
            let (connector, configs, tx, pool) = (
                self.connector.clone(),
                configs.clone(),
                tx.clone(),
                self.pool.clone(),
            );
            let size = self.options.pool_size;
            tokio::spawn(async move {
                let result = connector.connect(&configs, &addr).await;
                if let Ok(conn) = &result {
                    info!(router = %addr, rtt = ?conn.rtt(), transport = %conn.transport(), "connected to router");
                    admit(&pool, addr, conn.clone(), size);
                }
                let _ = tx.send(result.map(|_| ())).await;
            });
        }
        drop(tx);
        let mut last = None;
        while let Some(result) = rx.recv().await {
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!("{e}");
                    last = Some(e);
                }
            }
        }
        if self.pool().state.is_empty() {
            return Err(last.unwrap_or(DialError::NoRouters));
        }
        Ok(())
    }
}

/// The router's refusal of this identity, if it closed the connection with
/// one of the codes that mean "this identity may not use the data plane"
/// (see the router's listener).
pub(super) fn refused(router: &str, conn: &Conn) -> Option<DialError> {
    refusal(router, conn.close_reason()?)
}

/// [`refused`], from how the connection ended.
fn refusal(router: &str, end: RemoteEnd) -> Option<DialError> {
    let RemoteEnd::Closed { code, reason } = end else {
        return None;
    };
    match (CloseCode::from_code(code)?, reason) {
        (CloseCode::Forbidden | CloseCode::Revoked, reason) => Some(DialError::IdentityRefused {
            router: router.to_string(),
            reason,
        }),
        (CloseCode::RouterRevoked, reason) => Some(DialError::RouterRevoked {
            router: router.to_string(),
            reason,
        }),
        (CloseCode::Busy, reason) => Some(router_error(router, RouterFailure::Busy(reason))),
        _ => None,
    }
}

/// The pool, also after a panic elsewhere while it was held (its state is
/// kept consistent between statements).
pub(super) fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a new connection to `router` to the pool, or closes it when the
/// pool has no place for it; says whether it joined.
pub(super) fn admit(pool: &Mutex<Pool>, router: String, conn: Conn, size: usize) -> bool {
    let joined = lock(pool).state.on_connected(router, conn, size);
    match joined {
        Ok(()) => true,
        Err(conn) => {
            conn.close(CloseCode::Done, b"enough routers");
            false
        }
    }
}
