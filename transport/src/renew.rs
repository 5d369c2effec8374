//! Automatic certificate renewal for routers and clients.
//!
//! When two thirds of the certificate's lifetime have passed, a fresh key
//! pair is made here, a CSR is sent to the controller over a connection
//! authenticated with the current certificate, and the new certificate and
//! key replace the identity file atomically. The key never leaves the host.
//! Failures are retried with backoff until the certificate expires; an
//! expired certificate is reported with its expiry and the way out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use darkport_proto::msg::{ControlBody, ControlResponse};
use darkport_proto::token::fmt_time;

use crate::control::{merge_controllers, one_shot_and_controllers};
use crate::identity::{Identity, IdentityFile, IDENTITY_FILE_VERSION};
use crate::tls::cert_validity;

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// Building the request failed.
    #[error("cannot make a key pair or CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The controller refused or could not be reached.
    #[error(transparent)]
    Control(#[from] crate::control::ControlClientError),
    /// The answer was unusable.
    #[error("the controller's answer is invalid: {0}")]
    BadAnswer(String),
    /// The new identity file could not be written.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// When renewal is due: two thirds into the leaf certificate's lifetime
/// (Unix seconds), and its expiry.
pub fn schedule(identity: &Identity) -> Option<(u64, u64)> {
    let leaf = identity.chain.first()?;
    let (not_before, not_after) = cert_validity(leaf).ok()?;
    // Count from the issue time, not from the backdated start.
    let issued = (not_before + darkport_proto::CERT_BACKDATE_SECS).min(not_after);
    let lifetime = not_after - issued;
    Some((issued + lifetime * 2 / 3, not_after))
}

/// Renews now: new key, CSR, certificate; writes `path` atomically and
/// returns the new identity.
pub async fn renew(identity: &Identity, path: &Path) -> Result<Identity, RenewError> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let config = crate::tls::controller_client_config(identity)?;
    let body = ControlBody::Renew {
        csr_der: csr.der().to_vec(),
    };
    // The controllers' list is refreshed with every renewal.
    let (cert_pem, ca_pem, live) =
        match one_shot_and_controllers(&identity.controller, config, body, true).await? {
            (ControlResponse::Enrolled { cert_pem, ca_pem }, live) => (cert_pem, ca_pem, live),
            _ => return Err(RenewError::BadAnswer("not a certificate".into())),
        };
    let controller = match live {
        Some(live) if !live.is_empty() => merge_controllers(&live, &identity.controller),
        _ => identity.controller.clone(),
    };
    let file = IdentityFile {
        version: IDENTITY_FILE_VERSION,
        name: identity.name.clone(),
        kind: identity.kind,
        controller,
        key_pem: key.serialize_pem(),
        cert_pem,
        ca_pem,
    };
    let renewed = Identity::from_file(file.clone()).map_err(RenewError::BadAnswer)?;
    if renewed.ca != identity.ca {
        return Err(RenewError::BadAnswer("the CA changed".into()));
    }
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(renewed.key.clone_key())
        .map_err(|e| RenewError::BadAnswer(e.to_string()))?;
    rustls::sign::CertifiedKey::new(renewed.chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| RenewError::BadAnswer(format!("certificate does not match our key: {e}")))?;
    file.save(path, true)?;
    Ok(renewed)
}

/// Keeps the identity in `current` renewed, forever. Writes each new
/// identity to `path` and publishes it.
pub async fn run(path: PathBuf, current: watch::Sender<Arc<Identity>>) {
    let mut retry = Duration::from_secs(1);
    loop {
        let identity = current.borrow().clone();
        let Some((due, expires)) = schedule(&identity) else {
            warn!(identity = %identity.name, "cannot read the certificate's validity; automatic renewal is off");
            return;
        };
        let now = crate::unix_now();
        if now < due {
            tokio::time::sleep(Duration::from_secs(due - now)).await;
            continue;
        }
        match renew(&identity, &path).await {
            Ok(renewed) => {
                let (_, new_expiry) = schedule(&renewed).unwrap_or((0, 0));
                info!(identity = %identity.name, expires = %fmt_time(new_expiry), "certificate renewed");
                current.send_replace(Arc::new(renewed));
                retry = Duration::from_secs(1);
            }
            Err(e) => {
                let now = crate::unix_now();
                if now >= expires {
                    warn!(
                        identity = %identity.name,
                        "certificate expired at {} and renewal failed: {e}; re-enroll with a new token",
                        fmt_time(expires)
                    );
                } else {
                    warn!(identity = %identity.name, "certificate renewal failed: {e}; retrying in {retry:?} (expires {})", fmt_time(expires));
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}
