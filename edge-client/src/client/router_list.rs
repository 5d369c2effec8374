//! The controller's router list: fetching it within one timeout, caching
//! it beside the identity file, and handing it to the pool.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tracing::warn;

use darkport_proto::codes::CloseCode;
use darkport_proto::msg::{ControlBody, ControlResponse, RouterInfo};
use darkport_transport::control;
use darkport_transport::endpoint::HANDSHAKE_TIMEOUT;
use darkport_transport::identity::Identity;

use super::pooled::{lock, Pool};
use super::{clock, Client, ClientOptions};
use crate::DialError;

/// The controller's router list: fetching it, caching it beside the
/// identity file, and handing it to the pool. When to fetch is the pool's
/// decision ([`PoolState::list_stale`]); this carries it out, for the dial
/// path and the background maintenance alike.
#[derive(Debug, Clone)]
pub(crate) struct RouterList {
    /// The routers were given by address: nothing is fetched.
    fixed: bool,
    /// `<identity file>.routers`, when there is an identity file, so a
    /// client started while the controller is down still finds routers.
    cache: Option<PathBuf>,
}

/// Time one fetch of the router list may take. The control connection
/// gives up its handshake after [`HANDSHAKE_TIMEOUT`] with an error that
/// says what to do ("is it running?"); the extra second lets that error,
/// rather than this timeout, reach the log, and covers the one request and
/// its answer that follow the handshake.
const LIST_FETCH_TIMEOUT: Duration = HANDSHAKE_TIMEOUT.saturating_add(Duration::from_secs(1));

impl RouterList {
    pub(super) fn new(options: &ClientOptions) -> RouterList {
        let cache = options.identity_path.clone().map(|p| {
            let mut p = p.into_os_string();
            p.push(".routers");
            PathBuf::from(p)
        });
        RouterList {
            fixed: !options.routers.is_empty(),
            cache,
        }
    }

    /// Asks the controller for its router list, within
    /// [`LIST_FETCH_TIMEOUT`].
    pub(crate) async fn fetch(identity: &Identity) -> Result<Vec<RouterInfo>, DialError> {
        let ask = async {
            let config = darkport_transport::tls::controller_client_config(identity)?;
            let resp =
                control::one_shot(&identity.controller, config, ControlBody::ListRouters).await?;
            let ControlResponse::Routers(list) = resp else {
                return Err(DialError::NoRouters);
            };
            Ok(list)
        };
        tokio::time::timeout(LIST_FETCH_TIMEOUT, ask)
            .await
            .unwrap_or(Err(DialError::NoRouters))
    }

    /// The list cached by the last successful fetch, if any.
    pub(crate) fn cached(&self) -> Option<Vec<RouterInfo>> {
        let bytes = std::fs::read(self.cache.as_ref()?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Caches a list just fetched beside the identity file.
    pub(crate) fn store(&self, list: &[RouterInfo]) {
        if let Some(path) = &self.cache {
            if let Ok(text) = serde_json::to_vec_pretty(list) {
                let _ = darkport_transport::identity::write_private_file(path, &text, true);
            }
        }
    }

    /// Fetches the list and hands it to the pool.
    pub(super) async fn refresh(&self, pool: &Mutex<Pool>, identity: &Identity) {
        let result = RouterList::fetch(identity).await;
        self.apply(pool, result, clock());
    }

    /// Takes a router list fetched at `now` (and caches it), or notes the
    /// failure.
    fn apply(
        &self,
        pool: &Mutex<Pool>,
        result: Result<Vec<RouterInfo>, DialError>,
        now: std::time::Instant,
    ) {
        match result {
            Ok(list) => {
                self.store(&list);
                let unlisted = lock(pool).state.on_router_list(&list, now);
                for conn in unlisted {
                    conn.close(CloseCode::Done, b"router no longer listed");
                }
            }
            Err(e) => {
                let mut pool = lock(pool);
                pool.state.defer_list(now);
                if pool.state.has_routers() {
                    warn!("cannot refresh routers from the controller ({e}); using the known ones");
                } else {
                    warn!("cannot get routers from the controller: {e}");
                }
            }
        }
    }
}
impl Client {
    /// Refreshes the router list from the controller when it is stale;
    /// keeps the last list (in memory, else on disk) if the controller is
    /// unreachable.
    pub(super) async fn refresh_routers(&self) {
        let now = clock();
        if self.router_list.fixed || !self.pool().state.list_stale(now) {
            return;
        }
        // A cached list is used at once and refreshed in the background: a
        // controller that is down costs a new client nothing.
        if !self.pool().state.has_routers() {
            if let Some(list) = self.router_list.cached() {
                self.pool().state.on_cached_list(&list);
            }
        }
        let (list, identity, pool) = (self.router_list.clone(), self.identity(), self.pool.clone());
        let refresh = async move { list.refresh(&pool, &identity).await };
        if !self.pool().state.has_routers() {
            refresh.await;
        } else {
            // Not again until this one is done or has failed.
            self.pool().state.defer_list(now);
            tokio::spawn(refresh);
        }
    }

    /// Asks the controller for the router list now, waiting for the answer.
    pub(super) async fn refresh_routers_now(&self) {
        if !self.router_list.fixed {
            self.router_list.refresh(&self.pool, &self.identity()).await;
        }
    }
}
