//! Hosting: serving a service through routers over connections this host
//! opens itself, so its network needs to accept no inbound connection at
//! all (docs/protocol.md, "Hosting").
//!
//! A [`Host`] keeps one connection to every router that may serve its
//! services (the controller's router list, at most
//! [`HostOptions::max_routers`]). On each it opens the *host stream* and
//! registers its services (a `HostRequest`, answered by one verdict per
//! service: a *terminator* on that router, or why not), and keeps
//! [`HostOptions::offers`] idle *offer streams* that the router hands
//! callers' dials to. A dial arrives as an [`IncomingStream`], with the
//! [`Caller`] as the router verified it; the host answers it `Ok` (then
//! bytes flow) or refuses it.
//!
//! What it promises:
//! - **Self-healing.** A connection that ends is made again with a
//!   backoff (from 250 ms, at most 5 s, jittered), and every new
//!   connection registers the current services again: a router restart
//!   loses the terminators only until the router listens again plus at
//!   most one backoff. The router list is fetched again every
//!   [`ROUTER_LIST_TTL`](crate::client::ROUTER_LIST_TTL); new routers get
//!   a connection, routers no longer listed are left.
//! - **Health.** [`Host::set_precedence`] and [`Host::set_cost`] reach
//!   every router at once (a new `HostRequest`); [`HealthState`] turns
//!   check results into the precedence.
//! - **Drain.** [`Host::withdraw`] sends the empty set to every router and
//!   waits (at most [`WITHDRAW_TIMEOUT`]) for each to acknowledge it:
//!   from then on no router hands this host a new stream. Streams already
//!   accepted carry on. [`Host::close`] withdraws, closes the idle offers
//!   and ends [`Host::accept`].
//!
//! [`Client::listen`] is the one-service face of it, [`Listener`], which
//! answers `Ok` for the app.
//!
//! Layout, one job per file:
//! - this file: the public types and what the sessions share;
//! - `state`: the decisions (backoff, which routers, registered or not,
//!   what an answer acknowledges), pure and table-tested;
//! - `health`: [`HealthState`], pure;
//! - `supervise`: the router list and one session per router;
//! - `session`: one router connection, its host stream and its offers;
//! - `offer`: one offer stream, and [`IncomingStream`];
//! - `inbox`: streams waiting for [`Host::accept`];
//! - `error`: [`HostError`].

mod error;
mod health;
mod inbox;
mod offer;
mod session;
pub mod state;
mod supervise;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::debug;

use darkport_proto::msg::{HostRequest, MAX_HOST_FRAME, MAX_IDLE_OFFERS};
use darkport_transport::identity::Identity;
use darkport_transport::mux::Transport;

use crate::client::{Connector, DIAL_TIMEOUT};
use crate::{Client, DialStream};

pub use darkport_proto::msg::{HostVerdict, HostedService, Precedence};
pub use error::{AnswerFailure, HostError};
pub use health::{HealthState, HealthVerdict};
pub use offer::{Caller, IncomingStream};

use inbox::Inbox;
use state::{check_registered, Registration};

/// Idle offer streams kept per router connection by default: as many
/// dials as can arrive at once, in one round trip, before the host has
/// replaced the offers they used.
pub const DEFAULT_OFFERS: usize = 16;

/// Time a router gives the host to answer a stream (the router's
/// `HOSTER_ANSWER_TIMEOUT`, docs/protocol.md section 4.4):
/// [`IncomingStream::accept`] or [`IncomingStream::refuse`] must have
/// been sent by then, or the router tries another terminator.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);

/// Time each router has to acknowledge a withdrawal; a router that does
/// not has its host stream closed, which removes the terminators too.
pub const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// Time [`Client::listen`] waits for a router to register the service.
pub const LISTEN_TIMEOUT: Duration = DIAL_TIMEOUT;

/// Most streams waiting for [`Host::accept`]; past it a new stream is
/// refused at once (`ServiceUnreachable`, the caller is told why).
pub const ACCEPT_BACKLOG: usize = 256;

/// Longest instance name a router takes.
pub const MAX_INSTANCE: usize = 128;

/// Most services one host request may name (a router refuses more).
pub const MAX_HOSTED_SERVICES: usize = 256;

/// Options of [`Client::host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Host through at most this many routers (`None`: every router that
    /// may serve the services). Each router is one connection; a client on
    /// a router this host is not connected to cannot reach the services
    /// through it.
    pub max_routers: Option<usize>,
    /// Names this process among the hosters of the same identity: a
    /// terminator is (service, identity, router, instance). Default:
    /// [`default_instance`].
    pub instance: String,
    /// Idle offer streams per router connection, 1 to
    /// [`MAX_IDLE_OFFERS`]; default [`DEFAULT_OFFERS`].
    pub offers: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            max_routers: None,
            instance: default_instance(),
            offers: DEFAULT_OFFERS,
        }
    }
}

/// Options of [`Client::listen`]: the service's cost and precedence, and
/// the [`HostOptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// Static cost, 0 to 65535, lower preferred (routers add what they
    /// measure).
    pub cost: u16,
    /// `Required` terminators are used first, `Default` next, `Failed`
    /// only when no other is left.
    pub precedence: Precedence,
    /// See [`HostOptions::max_routers`].
    pub max_routers: Option<usize>,
    /// See [`HostOptions::instance`].
    pub instance: String,
    /// See [`HostOptions::offers`].
    pub offers: usize,
}

impl Default for ListenOptions {
    fn default() -> Self {
        let h = HostOptions::default();
        ListenOptions {
            cost: 0,
            precedence: Precedence::Default,
            max_routers: h.max_routers,
            instance: h.instance,
            offers: h.offers,
        }
    }
}

/// `hostname-pid`: unique among the processes of one machine, and says
/// where a terminator comes from in `service show`.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let mut s = format!("{host}-{}", std::process::id());
    if s.len() > MAX_INSTANCE {
        let cut = (0..=MAX_INSTANCE)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

/// Where one router stands, from [`Host::routers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStatus {
    /// The router's address (`host:port`).
    pub router: String,
    /// Connected, connecting, down, or withdrawn.
    pub state: RouterState,
    /// The transport of the connection, while up.
    pub transport: Option<Transport>,
    /// The router's last verdict on each service (empty until it answered,
    /// and after a withdrawal).
    pub verdicts: Vec<HostVerdict>,
    /// Idle offer streams open now.
    pub idle_offers: usize,
}

/// A router connection's state, in [`RouterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterState {
    /// Connecting (first time, or again after a backoff).
    Connecting,
    /// Connected with the host stream up.
    Up,
    /// The connection failed or ended; why. It is being tried again.
    Down(String),
    /// The host withdrew; `acknowledged` when the router confirmed it
    /// (else the connection was down, or the router did not answer in
    /// time and the host stream was closed).
    Withdrawn {
        /// Whether the router acknowledged the withdrawal.
        acknowledged: bool,
    },
}

/// What the host wants the routers to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    services: Vec<HostedService>,
    /// Terminal: once withdrawn, never hosting again.
    withdrawn: bool,
}

impl Wanted {
    /// What a `HostRequest` carries now.
    fn request(&self) -> Vec<HostedService> {
        if self.withdrawn {
            vec![]
        } else {
            self.services.clone()
        }
    }
}

/// What the host's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    instance: String,
    offers: usize,
    /// A change makes every session send a new `HostRequest`.
    wanted: watch::Sender<Wanted>,
    /// Per router. Held only to read or write, never across an await.
    status: Mutex<BTreeMap<String, RouterStatus>>,
    /// Why the controller's router list could not be had, lately.
    list_error: Mutex<Option<String>>,
    /// Bumped on every status change.
    changed: watch::Sender<u64>,
    inbox: Inbox<IncomingStream>,
}

impl Shared {
    fn update(&self, router: &str, f: impl FnOnce(&mut RouterStatus)) {
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            let entry = s.entry(router.to_string()).or_insert_with(|| RouterStatus {
                router: router.to_string(),
                state: RouterState::Connecting,
                transport: None,
                verdicts: vec![],
                idle_offers: 0,
            });
            f(entry);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn set_state(&self, router: &str, state: RouterState) {
        self.update(router, |s| {
            if !matches!(state, RouterState::Up) {
                s.transport = None;
                s.verdicts.clear();
                s.idle_offers = 0;
            }
            s.state = state;
        });
    }

    fn set_up(&self, router: &str, transport: Transport) {
        self.update(router, |s| {
            s.state = RouterState::Up;
            s.transport = Some(transport);
        });
    }

    fn set_verdicts(&self, router: &str, verdicts: &[HostVerdict]) {
        self.update(router, |s| s.verdicts = verdicts.to_vec());
    }

    fn set_idle(&self, router: &str, n: usize) {
        let same = {
            let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.get(router).is_some_and(|r| r.idle_offers == n)
        };
        if !same {
            self.update(router, |s| s.idle_offers = n);
        }
    }

    /// Withdrawn, unless the router already acknowledged it.
    fn mark_withdrawn(&self, router: &str) {
        self.update(router, |s| {
            if !matches!(s.state, RouterState::Withdrawn { .. }) {
                s.state = RouterState::Withdrawn {
                    acknowledged: false,
                };
                s.verdicts.clear();
                s.idle_offers = 0;
                s.transport = None;
            }
        });
    }

    fn forget(&self, router: &str) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(router);
        self.changed.send_modify(|v| *v += 1);
    }

    fn set_list_error(&self, e: Option<String>) {
        *self.list_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn statuses(&self) -> Vec<RouterStatus> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.values().cloned().collect()
    }
}

/// What a session needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    connector: Connector,
    identity: watch::Receiver<Arc<Identity>>,
    shared: Arc<Shared>,
}

/// Hosts one or more services through routers; see the [module
/// docs](self). Made by [`Client::host`]. Dropping it stops hosting at
/// once (the routers remove its terminators when the connections end);
/// [`Host::close`] drains instead.
#[derive(Debug)]
pub struct Host {
    shared: Arc<Shared>,
    supervisor: AbortHandle,
    /// Turns true when the supervisor has ended (its sender dropped when
    /// it was aborted).
    done: watch::Receiver<bool>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl Host {
    /// The next stream a router brought, to be answered; waits for one.
    /// After [`Host::close`], the streams that arrived before the
    /// withdrawal took effect are still returned, then
    /// [`HostError::Closed`].
    pub async fn accept(&self) -> Result<IncomingStream, HostError> {
        self.shared.inbox.next().await.ok_or(HostError::Closed)
    }

    /// The services hosted, with their current cost and precedence.
    pub fn services(&self) -> Vec<HostedService> {
        self.shared.wanted.borrow().services.clone()
    }

    /// Sets a service's cost on every router (a new `HostRequest`).
    pub fn set_cost(&self, service: &str, cost: u16) -> Result<(), HostError> {
        self.modify(service, |s| s.cost = cost)
    }

    /// Sets a service's precedence on every router (a new `HostRequest`):
    /// `Failed` after failed health checks, back to what it was after a
    /// good one.
    pub fn set_precedence(&self, service: &str, precedence: Precedence) -> Result<(), HostError> {
        self.modify(service, |s| s.precedence = precedence)
    }

    fn modify(&self, service: &str, f: impl FnOnce(&mut HostedService)) -> Result<(), HostError> {
        let mut found = false;
        self.shared.wanted.send_if_modified(|w| {
            let Some(s) = w.services.iter_mut().find(|s| s.name == service) else {
                return false;
            };
            found = true;
            let before = s.clone();
            f(s);
            *s != before
        });
        if found {
            Ok(())
        } else {
            Err(HostError::NotHosted(service.to_string()))
        }
    }

    /// Where each router stands.
    pub fn routers(&self) -> Vec<RouterStatus> {
        self.shared.statuses()
    }

    /// Waits until a router registered `service` (returns those that
    /// did), every router refused it ([`HostError::Refused`]), or
    /// `within` passed ([`HostError::NotRegistered`]).
    pub async fn registered(
        &self,
        service: &str,
        within: Duration,
    ) -> Result<Vec<String>, HostError> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let statuses = self.shared.statuses();
            let said: Vec<state::Said<'_>> = statuses
                .iter()
                .map(|r| {
                    let v = r.verdicts.iter().find(|v| v.service == service);
                    (r.router.as_str(), v.map(|v| (v.status, v.message.as_str())))
                })
                .collect();
            match check_registered(&said) {
                Registration::Registered(routers) => return Ok(routers),
                Registration::Refused(refusals) => {
                    return Err(HostError::Refused {
                        service: service.to_string(),
                        refusals,
                    })
                }
                Registration::Waiting => {}
            }
            changed.borrow_and_update();
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(HostError::NotRegistered {
                    service: service.to_string(),
                    within,
                    last: self.describe_routers(),
                });
            }
        }
    }

    /// What each router last said, for an error message.
    fn describe_routers(&self) -> String {
        let statuses = self.shared.statuses();
        if statuses.is_empty() {
            let e = self
                .shared
                .list_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return match e {
                Some(e) => format!("no router known: {e}"),
                None => "no router known: the controller lists none".into(),
            };
        }
        statuses
            .iter()
            .map(|r| match &r.state {
                RouterState::Down(why) => format!("{}: {why}", r.router),
                state => format!("{}: {state:?}", r.router),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Withdraws every terminator: sends the empty set to every router and
    /// waits until each acknowledged it, or its connection is down, or
    /// [`WITHDRAW_TIMEOUT`] (plus a second) passed. From then on no router
    /// hands this host a new stream; streams accepted before carry on,
    /// and a dial already on its way is still delivered to
    /// [`Host::accept`]. Returns each router's state after it. Hosting
    /// does not start again.
    pub async fn withdraw(&self) -> Vec<RouterStatus> {
        self.shared.wanted.send_modify(|w| w.withdrawn = true);
        let mut changed = self.shared.changed.subscribe();
        let all_withdrawn = |s: &[RouterStatus]| {
            s.iter()
                .all(|r| matches!(r.state, RouterState::Withdrawn { .. }))
        };
        let wait = async {
            loop {
                changed.borrow_and_update();
                if all_withdrawn(&self.shared.statuses()) {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(WITHDRAW_TIMEOUT + Duration::from_secs(1), wait).await;
        self.shared.statuses()
    }

    /// Drains: [`Host::withdraw`], then closes the idle offers (after a
    /// short wait for dials already on their way) and ends
    /// [`Host::accept`] once the streams that arrived are taken.
    pub async fn close(&self) {
        self.withdraw().await;
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
        self.supervisor.abort();
        self.shared.inbox.close();
    }
}

/// One service hosted for an application: [`Listener::accept`] yields its
/// streams already answered `Ok`. Made by [`Client::listen`].
#[derive(Debug)]
pub struct Listener {
    host: Host,
    service: String,
}

/// A stream [`Listener::accept`] took: the bytes, and who sent them.
#[derive(Debug)]
pub struct Accepted {
    /// The byte stream, the same type a dial returns: `shutdown` sends a
    /// half-close, dropping it before that resets it.
    pub stream: DialStream,
    /// Who is calling, as the router verified it.
    pub caller: Caller,
}

impl Listener {
    /// The next caller's stream, answered `Ok`. A stream whose caller or
    /// router gave up before the answer is skipped. After
    /// [`Listener::close`], the streams that arrived before the withdrawal
    /// took effect are still returned, then [`HostError::Closed`].
    pub async fn accept(&self) -> Result<Accepted, HostError> {
        loop {
            let incoming = self.host.accept().await?;
            let caller = incoming.caller();
            match incoming.accept().await {
                Ok(stream) => return Ok(Accepted { stream, caller }),
                Err(e) => debug!("skipping a stream: {e}"),
            }
        }
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Sets the cost on every router.
    pub fn set_cost(&self, cost: u16) -> Result<(), HostError> {
        self.host.set_cost(&self.service, cost)
    }

    /// Sets the precedence on every router (health: `Failed` when the app
    /// knows it cannot serve well, back to `Default` when it can).
    pub fn set_precedence(&self, precedence: Precedence) -> Result<(), HostError> {
        self.host.set_precedence(&self.service, precedence)
    }

    /// Where each router stands.
    pub fn routers(&self) -> Vec<RouterStatus> {
        self.host.routers()
    }

    /// Drains: withdraws from every router first (no new streams once
    /// they acknowledged), then stops accepting and closes the idle
    /// offers. Streams already accepted carry on.
    pub async fn close(&self) {
        self.host.close().await
    }

    /// The [`Host`] underneath.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

/// Checks what a host would register before any connection.
fn validate(services: &[HostedService], options: &HostOptions) -> Result<(), HostError> {
    if services.is_empty() {
        return Err(HostError::NoServices);
    }
    if services.len() > MAX_HOSTED_SERVICES {
        return Err(HostError::TooManyServices {
            services: services.len(),
            max: MAX_HOSTED_SERVICES,
        });
    }
    for (i, s) in services.iter().enumerate() {
        if s.name.is_empty() || s.name.starts_with('@') {
            return Err(HostError::BadServiceName(s.name.clone()));
        }
        if services[..i].iter().any(|o| o.name == s.name) {
            return Err(HostError::DuplicateService(s.name.clone()));
        }
    }
    if options.offers == 0 || options.offers > MAX_IDLE_OFFERS {
        return Err(HostError::Offers {
            offers: options.offers,
            max: MAX_IDLE_OFFERS,
        });
    }
    if options.instance.is_empty() || options.instance.len() > MAX_INSTANCE {
        return Err(HostError::BadInstance(options.instance.clone()));
    }
    let request = HostRequest {
        instance: options.instance.clone(),
        services: services.to_vec(),
    };
    let len = darkport_proto::codec::to_bytes(&request)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if len > MAX_HOST_FRAME {
        return Err(HostError::Request {
            len,
            max: MAX_HOST_FRAME,
        });
    }
    Ok(())
}

impl Client {
    /// Hosts `services` through every router that may serve them (see the
    /// [`host`](crate::host) module): connects, registers, keeps offers,
    /// and heals after every lost connection, until the [`Host`] is
    /// closed or dropped. Returns at once; [`Host::registered`] waits for
    /// the routers' verdicts and [`Host::routers`] tells them.
    ///
    /// The host shares the client's QUIC endpoint, transport memory and
    /// identity (renewed in place while the client lives): keep the
    /// client, and call [`Client::close`] only after [`Host::close`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use edge_client::host::{HostOptions, HostedService, Precedence};
    /// let client = edge_client::Client::from_identity_file("svc-1.id".as_ref(), Default::default())?;
    /// let services = ["logs", "metrics"].map(|name| HostedService {
    ///     name: name.into(),
    ///     cost: 0,
    ///     precedence: Precedence::Default,
    /// });
    /// let host = client.host(&services, HostOptions::default())?;
    /// while let Ok(incoming) = host.accept().await {
    ///     // Connect to the local service first, then answer.
    ///     let _stream = incoming.accept().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn host(
        &self,
        services: &[HostedService],
        options: HostOptions,
    ) -> Result<Host, HostError> {
        validate(services, &options)?;
        let parts = self.hosting_parts();
        let shared = Arc::new(Shared {
            instance: options.instance,
            offers: options.offers,
            wanted: watch::Sender::new(Wanted {
                services: services.to_vec(),
                withdrawn: false,
            }),
            status: Mutex::default(),
            list_error: Mutex::default(),
            changed: watch::Sender::new(0),
            inbox: Inbox::new(ACCEPT_BACKLOG),
        });
        let ctx = Arc::new(Ctx {
            connector: parts.connector,
            identity: parts.identity,
            shared: shared.clone(),
        });
        let source = supervise::Source {
            fixed: parts.routers,
            list: parts.router_list,
            max_routers: options.max_routers,
        };
        let (done_tx, done) = watch::channel(false);
        let supervisor = tokio::spawn(async move {
            supervise::supervise(ctx, source).await;
            done_tx.send_replace(true);
        })
        .abort_handle();
        Ok(Host {
            shared,
            supervisor,
            done,
        })
    }

    /// Hosts one service for this application: registers it on every
    /// router that may serve it and returns once one of them has (within
    /// [`LISTEN_TIMEOUT`]); [`HostError::Refused`] when every router
    /// refused it (no bind policy lets this identity host it, or no such
    /// service). From then on the [`Listener`] heals by itself: a router
    /// that restarts gets the terminator back as soon as it is up.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use edge_client::host::ListenOptions;
    /// use tokio::io::AsyncWriteExt;
    /// let client = edge_client::Client::from_identity_file("svc-1.id".as_ref(), Default::default())?;
    /// let listener = client.listen("greeter", ListenOptions::default()).await?;
    /// while let Ok(mut accepted) = listener.accept().await {
    ///     let who = accepted.caller.identity.to_string();
    ///     accepted.stream.write_all(format!("hello, {who}\n").as_bytes()).await?;
    ///     accepted.stream.shutdown().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn listen(
        &self,
        service: &str,
        options: ListenOptions,
    ) -> Result<Listener, HostError> {
        let services = [HostedService {
            name: service.to_string(),
            cost: options.cost,
            precedence: options.precedence,
        }];
        let host = self.host(
            &services,
            HostOptions {
                max_routers: options.max_routers,
                instance: options.instance,
                offers: options.offers,
            },
        )?;
        host.registered(service, LISTEN_TIMEOUT).await?;
        Ok(Listener {
            host,
            service: service.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::msg::DialStatus;

    fn svc(name: &str) -> HostedService {
        HostedService {
            name: name.into(),
            cost: 0,
            precedence: Precedence::Default,
        }
    }

    #[test]
    fn options_are_checked_before_any_connection() {
        let ok = HostOptions::default();
        assert!(validate(&[svc("logs")], &ok).is_ok());
        let table: Vec<(Vec<HostedService>, HostOptions, &str)> = vec![
            (vec![], ok.clone(), "no service to host"),
            (vec![svc("a"), svc("a")], ok.clone(), "given twice"),
            (
                (0..=MAX_HOSTED_SERVICES)
                    .map(|i| svc(&format!("s{i}")))
                    .collect(),
                ok.clone(),
                "at most 256 services",
            ),
            (vec![svc("@host")], ok.clone(), "not a service name"),
            (vec![svc("")], ok.clone(), "not a service name"),
            (
                vec![svc("a")],
                HostOptions {
                    offers: 0,
                    ..ok.clone()
                },
                "between 1 and 64",
            ),
            (
                vec![svc("a")],
                HostOptions {
                    offers: MAX_IDLE_OFFERS + 1,
                    ..ok.clone()
                },
                "between 1 and 64",
            ),
            (
                vec![svc("a")],
                HostOptions {
                    instance: String::new(),
                    ..ok.clone()
                },
                "instance name",
            ),
            (
                vec![svc(&"x".repeat(MAX_HOST_FRAME))],
                ok.clone(),
                "do not fit one host request",
            ),
        ];
        for (services, options, want) in table {
            let e = validate(&services, &options).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
    }

    #[test]
    fn the_default_instance_names_host_and_process() {
        let i = default_instance();
        assert!(i.ends_with(&format!("-{}", std::process::id())), "{i}");
        assert!(!i.is_empty() && i.len() <= MAX_INSTANCE);
        let o = ListenOptions::default();
        assert_eq!(
            (o.cost, o.precedence, o.offers),
            (0, Precedence::Default, DEFAULT_OFFERS)
        );
        assert_eq!(o.max_routers, None);
    }

    #[test]
    fn a_withdrawn_host_requests_nothing() {
        let mut w = Wanted {
            services: vec![svc("a")],
            withdrawn: false,
        };
        assert_eq!(w.request(), vec![svc("a")]);
        w.withdrawn = true;
        assert!(w.request().is_empty());
    }

    #[test]
    fn statuses_follow_the_sessions() {
        let shared = Shared {
            instance: "i".into(),
            offers: 1,
            wanted: watch::Sender::new(Wanted {
                services: vec![svc("a")],
                withdrawn: false,
            }),
            status: Mutex::default(),
            list_error: Mutex::default(),
            changed: watch::Sender::new(0),
            inbox: Inbox::new(1),
        };
        shared.set_up("r:1", Transport::Quic);
        shared.set_verdicts(
            "r:1",
            &[HostVerdict {
                service: "a".into(),
                status: DialStatus::Ok,
                message: String::new(),
            }],
        );
        shared.set_idle("r:1", 3);
        let s = &shared.statuses()[0];
        assert_eq!((s.state.clone(), s.idle_offers), (RouterState::Up, 3));
        shared.set_state("r:1", RouterState::Down("lost".into()));
        let s = &shared.statuses()[0];
        assert!(s.verdicts.is_empty() && s.transport.is_none() && s.idle_offers == 0);
        shared.set_state("r:1", RouterState::Withdrawn { acknowledged: true });
        shared.mark_withdrawn("r:1");
        assert_eq!(
            shared.statuses()[0].state,
            RouterState::Withdrawn { acknowledged: true },
            "an acknowledgement is kept"
        );
        shared.forget("r:1");
        assert!(shared.statuses().is_empty());
    }
}
