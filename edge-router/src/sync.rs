//! The router's control session: register, then receive snapshots.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use darkport_proto::codec::{read_frame, MAX_CONTROL_FRAME};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{ControlBody, ControlResponse};
use darkport_proto::policy::PolicySnapshot;
use darkport_proto::ALPN_CONTROL;
use darkport_transport::control;
use darkport_transport::identity::Identity;
use darkport_transport::tls::{client_config, Trust};

/// First retry delay after the control session fails.
const BACKOFF_START: Duration = Duration::from_millis(250);

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Keeps a control session up forever, publishing snapshots to `tx`.
pub async fn run(
    identity: Identity,
    advertise: String,
    tx: watch::Sender<Option<Arc<PolicySnapshot>>>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        if let Err(e) = session(&identity, &advertise, &tx).await {
            // A session that lived a while was healthy: start over quickly.
            if started.elapsed() > HEALTHY_SESSION {
                backoff = BACKOFF_START;
            }
            warn!(
                "control session with the controller at {} failed: {e}; retrying in {:?}",
                identity.controller, backoff
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
) -> Result<(), String> {
    let config = client_config(
        Some(identity),
        Trust::Ca(identity.ca.clone()),
        Kind::Controller,
        ALPN_CONTROL,
    )
    .map_err(|e| e.to_string())?;
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
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match read_frame::<_, ControlResponse>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(m) => m,
                Err(e) => {
                    let why = conn
                        .close_reason()
                        .map(|r| darkport_transport::describe_connection_error(&r))
                        .unwrap_or_else(|| e.to_string());
                    return Err(why);
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
                tx.send_replace(Some(Arc::new(s)));
            }
            ControlResponse::Error(e) => return Err(e.message),
            _ => return Err("unexpected message on the sync stream".into()),
        }
    }
}
