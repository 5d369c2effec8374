//! Which routers the host keeps sessions with: the controller's list
//! (cached beside the identity file, so a host started while the
//! controller is down still finds its routers), fetched again every
//! [`ROUTER_LIST_TTL`], a session started for each new router and
//! stopped for each router no longer listed. Routers given by address
//! are used as they are.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

use darkport_proto::msg::RouterInfo;

use super::state::hosting_routers;
use super::{session, Ctx};
use crate::client::RouterList;
use crate::pool::{EMPTY_LIST_RETRY, RETRY_AFTER_FAILURE, ROUTER_LIST_TTL};

/// Where the router list comes from.
pub(super) struct Source {
    /// Routers given by address (nothing is fetched), else empty.
    pub(super) fixed: Vec<String>,
    /// The controller's list and its cache.
    pub(super) list: RouterList,
    /// At most this many routers.
    pub(super) max_routers: Option<usize>,
}

/// Keeps one session per router until the host withdraws, then waits for
/// the sessions to end (each ends once its router acknowledged the
/// withdrawal, or gave up waiting for it) and closes the inbox.
pub(super) async fn supervise(ctx: Arc<Ctx>, source: Source) {
    let mut sessions: JoinSet<()> = JoinSet::new();
    let mut by_router: HashMap<String, AbortHandle> = HashMap::new();
    let mut wanted = ctx.shared.wanted.subscribe();
    let names: Vec<String> = wanted
        .borrow()
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut first = true;
    loop {
        let (routers, authoritative, wait) = routers_now(&ctx, &source, &names, first).await;
        first = false;
        for r in &routers {
            if !by_router.contains_key(r) {
                info!(router = %r, "hosting through router");
                let handle = sessions.spawn(session::run(ctx.clone(), r.clone()));
                by_router.insert(r.clone(), handle);
            }
        }
        if authoritative {
            by_router.retain(|r, handle| {
                let keep = routers.contains(r);
                if !keep {
                    info!(router = %r, "router no longer listed; leaving it");
                    handle.abort();
                    ctx.shared.forget(r);
                }
                keep
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wanted.wait_for(|w| w.withdrawn) => break,
            // Finished sessions are collected so the set does not grow.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    while sessions.join_next().await.is_some() {}
    ctx.shared.inbox.close();
}

/// The routers to host through now, whether that list is the controller's
/// current word (routers missing from it are left), and when to look
/// again.
async fn routers_now(
    ctx: &Ctx,
    source: &Source,
    names: &[String],
    first: bool,
) -> (Vec<String>, bool, std::time::Duration) {
    if !source.fixed.is_empty() {
        let mut r = source.fixed.clone();
        r.truncate(source.max_routers.unwrap_or(usize::MAX));
        return (r, true, ROUTER_LIST_TTL);
    }
    let pick = |list: &[RouterInfo]| hosting_routers(list, names, source.max_routers);
    // A cached list starts the sessions at once, before the controller
    // answers (or while it is down).
    if first {
        if let Some(list) = source.list.cached() {
            let cached = pick(&list);
            if !cached.is_empty() {
                ctx.shared.set_list_error(None);
                return (cached, false, std::time::Duration::ZERO);
            }
        }
    }
    let identity = ctx.identity.borrow().clone();
    match RouterList::fetch(&identity).await {
        Ok(list) => {
            source.list.store(&list);
            ctx.shared.set_list_error(None);
            let routers = pick(&list);
            let wait = if routers.is_empty() {
                EMPTY_LIST_RETRY
            } else {
                ROUTER_LIST_TTL
            };
            (routers, true, wait)
        }
        Err(e) => {
            warn!(
                "cannot get the router list from the controller ({e}); keeping the known routers"
            );
            ctx.shared.set_list_error(Some(e.to_string()));
            let cached = source.list.cached().map(|l| pick(&l)).unwrap_or_default();
            (cached, false, RETRY_AFTER_FAILURE)
        }
    }
}
