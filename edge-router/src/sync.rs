//! The router's control session: register, receive snapshots, report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use darkport_proto::codec::{read_frame, MAX_CONTROL_FRAME};
use darkport_proto::msg::{ControlBody, ControlResponse, RouterReport};
use darkport_proto::policy::PolicySnapshot;
use darkport_transport::control;
use darkport_transport::identity::Identity;

use crate::Clients;

/// First retry delay after the control session fails.
const BACKOFF_START: Duration = Duration::from_millis(250);

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often the router reports its clients and snapshot version.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps a control session up forever, publishing snapshots to `tx`.
pub async fn run(
    identity: watch::Receiver<Arc<Identity>>,
    advertise: String,
    tx: watch::Sender<Option<Arc<PolicySnapshot>>>,
    cache: Option<PathBuf>,
    clients: Clients,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        let id = identity.borrow().clone();
        if let Err(e) = session(&id, &advertise, &tx, cache.as_deref(), &clients).await {
            // A session that lived a while was healthy: start over quickly.
            if started.elapsed() > HEALTHY_SESSION {
                backoff = BACKOFF_START;
            }
            warn!(
                "control session with the controller at {} failed: {e}; retrying in {:?} (serving with the last policy meanwhile)",
                id.controller, backoff
            );
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
    advertise: &str,
    tx: &watch::Sender<Option<Arc<PolicySnapshot>>>,
    cache: Option<&std::path::Path>,
    clients: &Clients,
) -> Result<(), String> {
    let config =
        darkport_transport::tls::controller_client_config(identity).map_err(|e| e.to_string())?;
    let endpoint = darkport_transport::endpoint::client(None).map_err(|e| e.to_string())?;
    let conn = control::connect(&endpoint, &identity.controller, config)
        .await
        .map_err(|e| e.to_string())?;
    let (first, mut recv) = control::request(
        &conn,
        ControlBody::RouterSync {
            advertise: advertise.to_string(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    info!(controller = %identity.controller, %advertise, "registered with the controller");
    let mut next = Some(first);
    let mut report = tokio::time::interval(REPORT_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        return Err(why);
                    }
                },
                _ = report.tick() => {
                    send_report(&conn, tx, clients);
                    continue;
                }
                _ = clients.changed() => {
                    send_report(&conn, tx, clients);
                    continue;
                }
            },
        };
        match msg {
            ControlResponse::Snapshot(s) => {
                info!(
                    version = s.version,
                    services = s.services.len(),
                    policies = s.policies.len(),
                    "policy snapshot received"
                );
                if let Some(path) = cache {
                    crate::cache::store(path, &s);
                }
                tx.send_replace(Some(Arc::new(s)));
                send_report(&conn, tx, clients);
            }
            ControlResponse::Error(e) => return Err(e.message),
            _ => return Err("unexpected message on the sync stream".into()),
        }
    }
}

fn send_report(
    conn: &quinn::Connection,
    tx: &watch::Sender<Option<Arc<PolicySnapshot>>>,
    clients: &Clients,
) {
    let version = tx.borrow().as_ref().map(|s| s.version).unwrap_or(0);
    let names = clients.names();
    let body = ControlBody::RouterReport(RouterReport {
        snapshot_version: version,
        clients: names,
    });
    // On its own task: a slow answer must not delay the next snapshot.
    let conn = conn.clone();
    tokio::spawn(async move {
        if let Err(e) = control::request(&conn, body).await {
            debug!("report not delivered: {e}");
        }
    });
}
