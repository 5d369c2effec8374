//! The router's control session: register, receive snapshots, report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use darkport_proto::codec::{read_frame, MAX_CONTROL_FRAME};
use darkport_proto::msg::{
    ControlBody, ControlError, ControlErrorCode, ControlResponse, RouterReport,
};
use darkport_proto::policy::PolicySnapshot;
use darkport_transport::control;
use darkport_transport::endpoint::CONTROLLER_SILENCE;
use darkport_transport::identity::Identity;
use darkport_transport::unix_now;

use crate::{Clients, PolicyClock};

/// First retry delay after the control session fails.
const BACKOFF_START: Duration = Duration::from_millis(250);

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Delay (50–100 % of it) before syncing with another controller after
/// the one in use went away: failover is not a retry of the same one.
const FAILOVER_DELAY: Duration = Duration::from_millis(100);

/// How often the session checks that its controller is still heard from
/// (`CONTROLLER_SILENCE`).
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often the router reports its clients and snapshot version.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What the control session tells the rest of the router besides
/// snapshots.
#[derive(Debug)]
pub struct Status {
    /// When the policy was last known current.
    pub policy: Arc<PolicyClock>,
    /// Set once the controller says this router was revoked or deleted.
    pub revoked: watch::Sender<Option<String>>,
}

/// How a control session ended.
enum SessionEnd {
    /// The controller says this router's identity is gone for good.
    Revoked(String),
    /// Anything else: try again.
    Failed(String),
    /// The session was registered, then the controller went away (died,
    /// or the path to it did): try another controller at once.
    Lost(String),
}

impl From<control::ControlClientError> for SessionEnd {
    fn from(e: control::ControlClientError) -> Self {
        match e {
            control::ControlClientError::Refused(ControlError {
                code: ControlErrorCode::Revoked,
                message,
            }) => SessionEnd::Revoked(message),
            other => SessionEnd::Failed(other.to_string()),
        }
    }
}

/// Keeps a control session up, publishing snapshots to `tx`, until the
/// controller says this router was revoked: then the router stops serving
/// (see `listener`), forgets its cached policy, and the session ends.
pub async fn run(
    identity: watch::Receiver<Arc<Identity>>,
    advertise: String,
    tx: watch::Sender<Option<Arc<PolicySnapshot>>>,
    cache: Option<PathBuf>,
    clients: Clients,
    status: Status,
) {
    let mut backoff = BACKOFF_START;
    // The controllers to try, refreshed from each one the router syncs
    // with (it names itself first); the identity file's list (refreshed
    // at renewal) is merged in behind.
    let mut known = identity.borrow().controller.clone();
    loop {
        let started = tokio::time::Instant::now();
        let id = identity.borrow().clone();
        known = control::merge_controllers(
            &control::addresses(&known)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
            &id.controller,
        );
        let end = session(
            &id,
            &mut known,
            &advertise,
            &tx,
            cache.as_deref(),
            &clients,
            &status.policy,
        )
        .await;
        status.policy.set_live(false, unix_now());
        match end {
            SessionEnd::Revoked(reason) => {
                error!(
                    router = %id.name,
                    "the controller says this router was revoked: {reason}; it stops serving (closing every client connection); enroll a new router identity"
                );
                if let Some(path) = &cache {
                    crate::cache::remove(path);
                }
                tx.send_replace(None);
                status.revoked.send_replace(Some(reason));
                return;
            }
            SessionEnd::Lost(e) if control::addresses(&known).len() > 1 => {
                warn!(
                    "lost the control session with the controller at {known}: {e}; syncing with the next controller (serving with the last policy meanwhile)"
                );
                let mut list = control::addresses(&known);
                list.rotate_left(1);
                known = list.join(",");
                backoff = BACKOFF_START;
                tokio::time::sleep(jitter(FAILOVER_DELAY)).await;
                continue;
            }
            SessionEnd::Failed(e) | SessionEnd::Lost(e) => {
                // A session that lived a while was healthy: start over quickly.
                if started.elapsed() > HEALTHY_SESSION {
                    backoff = BACKOFF_START;
                }
                warn!(
                    "control session with the controller at {known} failed: {e}; retrying in {:?} (serving with the last policy meanwhile)",
                    backoff
                );
                // The controller that failed (first: it named itself
                // first) is tried last next time.
                let mut list = control::addresses(&known);
                if list.len() > 1 {
                    list.rotate_left(1);
                }
                known = list.join(",");
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Spreads retries of many routers apart: 50–100 % of `d`.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    d / 2 + d.mul_f64(f64::from(b[0]) / 510.0)
}

async fn session(
    identity: &Identity,
    known: &mut String,
    advertise: &str,
    tx: &watch::Sender<Option<Arc<PolicySnapshot>>>,
    cache: Option<&std::path::Path>,
    clients: &Clients,
    policy: &Arc<PolicyClock>,
) -> SessionEnd {
    let (endpoint, config) = match sync_endpoint(identity) {
        Ok(e) => e,
        Err(why) => return SessionEnd::Failed(why),
    };
    let (conn, first, recv) = match register(&endpoint, config, known, advertise).await {
        Ok(r) => r,
        Err(end) => return end,
    };
    follow(&conn, first, recv, tx, cache, clients, policy).await
}

/// A client endpoint and the TLS and transport settings for a sync
/// session with a controller.
fn sync_endpoint(identity: &Identity) -> Result<(quinn::Endpoint, quinn::ClientConfig), String> {
    let mut config =
        darkport_transport::tls::controller_client_config(identity).map_err(|e| e.to_string())?;
    config.transport_config(darkport_transport::endpoint::sync_transport_config());
    let endpoint = darkport_transport::endpoint::client(None).map_err(|e| e.to_string())?;
    Ok((endpoint, config))
}

/// Connects to one of the `known` controllers and opens the sync stream
/// (its first message, and the rest to read); updates `known` with the
/// controllers that one lists.
async fn register(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    known: &mut String,
    advertise: &str,
) -> Result<(quinn::Connection, ControlResponse, quinn::RecvStream), SessionEnd> {
    let conn = control::connect(endpoint, known, config).await?;
    let (first, recv) = control::request(
        &conn,
        ControlBody::RouterSync {
            advertise: advertise.to_string(),
        },
    )
    .await?;
    // Which controllers exist, from this one (it names itself first).
    if let Ok((ControlResponse::Controllers(live), _)) =
        control::request(&conn, ControlBody::ListControllers).await
    {
        if !live.is_empty() {
            *known = control::merge_controllers(&live, known);
        }
    }
    info!(controller = %conn.remote_address(), controllers = %known, %advertise, "registered with the controller");
    Ok((conn, first, recv))
}

/// Takes snapshots from the sync stream, starting with `first`, and
/// reports this router's clients, until the controller refuses, goes
/// silent or the stream ends.
async fn follow(
    conn: &quinn::Connection,
    first: ControlResponse,
    mut recv: quinn::RecvStream,
    tx: &watch::Sender<Option<Arc<PolicySnapshot>>>,
    cache: Option<&std::path::Path>,
    clients: &Clients,
    policy: &Arc<PolicyClock>,
) -> SessionEnd {
    let mut next = Some(first);
    let mut report = tokio::time::interval(REPORT_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = tokio::time::interval(WATCHDOG_TICK);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Heard::new(conn.stats().udp_rx.datagrams, tokio::time::Instant::now());
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                m = read_frame::<_, ControlResponse>(&mut recv, MAX_CONTROL_FRAME) => match m {
                    Ok(m) => m,
                    Err(e) => {
                        let why = conn
                            .close_reason()
                            .map(|r| darkport_transport::describe_connection_error(&r))
                            .unwrap_or_else(|| e.to_string());
                        return SessionEnd::Lost(why);
                    }
                },
                _ = report.tick() => {
                    send_report(conn, tx, clients, policy);
                    continue;
                }
                now = watchdog.tick() => {
                    if heard.silent(conn.stats().udp_rx.datagrams, now) > CONTROLLER_SILENCE {
                        conn.close(darkport_transport::close_code(darkport_proto::codes::CloseCode::Done), b"controller silent");
                        return SessionEnd::Lost(format!(
                            "no packet from the controller for {} ms",
                            CONTROLLER_SILENCE.as_millis()
                        ));
                    }
                    continue;
                }
                _ = clients.changed() => {
                    send_report(conn, tx, clients, policy);
                    continue;
                }
            },
        };
        match msg {
            ControlResponse::Snapshot(s) => {
                apply_snapshot(s, tx, cache, policy);
                send_report(conn, tx, clients, policy);
            }
            ControlResponse::Error(e) => {
                return control::ControlClientError::Refused(e).into();
            }
            _ => return SessionEnd::Failed("unexpected message on the sync stream".into()),
        }
    }
}

/// Makes `snapshot` the router's policy, and caches it for a restart
/// without a controller.
fn apply_snapshot(
    snapshot: PolicySnapshot,
    tx: &watch::Sender<Option<Arc<PolicySnapshot>>>,
    cache: Option<&std::path::Path>,
    policy: &PolicyClock,
) {
    info!(
        version = snapshot.version,
        services = snapshot.services.len(),
        policies = snapshot.policies.len(),
        "policy snapshot received"
    );
    if let Some(path) = cache {
        crate::cache::store(path, &snapshot);
    }
    tx.send_replace(Some(Arc::new(snapshot)));
    policy.set_live(true, unix_now());
}

/// When the controller was last heard from: the count of datagrams
/// received, and when it last grew. Pure, so it is tested in virtual
/// time.
#[derive(Debug, Clone, Copy)]
struct Heard {
    datagrams: u64,
    at: tokio::time::Instant,
}

impl Heard {
    fn new(datagrams: u64, now: tokio::time::Instant) -> Heard {
        Heard { datagrams, at: now }
    }

    /// How long the controller has been silent at `now`, given the
    /// datagram count now.
    fn silent(&mut self, datagrams: u64, now: tokio::time::Instant) -> Duration {
        if datagrams != self.datagrams {
            *self = Heard::new(datagrams, now);
        }
        now.saturating_duration_since(self.at)
    }
}

fn send_report(
    conn: &quinn::Connection,
    tx: &watch::Sender<Option<Arc<PolicySnapshot>>>,
    clients: &Clients,
    policy: &Arc<PolicyClock>,
) {
    let version = tx.borrow().as_ref().map(|s| s.version).unwrap_or(0);
    let names = clients.names();
    let body = ControlBody::RouterReport(RouterReport {
        snapshot_version: version,
        clients: names,
        terminators: clients.hosting.report(),
    });
    // On its own task: a slow answer must not delay the next snapshot.
    let (conn, policy) = (conn.clone(), policy.clone());
    tokio::spawn(async move {
        match control::request(&conn, body).await {
            // The controller answered while the session is up: the policy
            // it pushes is current.
            Ok(_) => policy.confirm(unix_now()),
            Err(e) => debug!("report not delivered: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Silence is time since the received-datagram count last moved.
    #[test]
    fn silence_counts_from_the_last_datagram() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut h = Heard::new(10, t0);
        assert_eq!(h.silent(10, t0 + ms(300)), ms(300));
        assert_eq!(h.silent(11, t0 + ms(400)), Duration::ZERO);
        assert_eq!(h.silent(11, t0 + ms(1500)), ms(1100));
        assert!(h.silent(11, t0 + ms(1500)) > CONTROLLER_SILENCE);
        // A clock that does not move forward is no silence.
        assert_eq!(h.silent(11, t0), Duration::ZERO);
    }
}
