//! The controller's data directory.
//!
//! ```text
//! <data-dir>/            mode 0700
//!   config.json          advertise address, certificate lifetime
//!   ca.pem               CA certificate
//!   ca.key               CA private key (0600)
//!   controller.id        the controller's own identity (0600)
//!   admin.id             the admin identity used by admin commands (0600)
//!   token.key            secret for enrollment token MACs (0600)
//!   reset.key            QUIC stateless-reset key, kept across restarts (0600)
//!   state.db             SQLite: identities, certificates, services, policies,
//!                        tokens, routers, audit log (0600)
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use darkport_proto::identity::{IdentityName, Kind};
use darkport_transport::identity::{write_private_file, IdentityFile, IDENTITY_FILE_VERSION};

use crate::ca::Ca;
use crate::store::{CertRecord, IdentityRecord, Store};

/// Why the data dir could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Already initialised.
    #[error("{0} is already initialized; use another --data-dir, or delete it to start over (this revokes every identity)")]
    AlreadyInitialized(PathBuf),
    /// Not initialised.
    #[error("{0} is not an initialized controller data dir; run darkport-controller init --data-dir {0} --advertise HOST:PORT first")]
    NotInitialized(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// Bad option.
    #[error("{0}")]
    Invalid(String),
    /// CA failure.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// State failure.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Settings chosen at `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port` routers and clients use to reach the controller; baked
    /// into tokens and identity files.
    pub advertise: String,
    /// Lifetime of identity certificates, seconds.
    pub cert_ttl_secs: u64,
}

/// Options for [`init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// See [`Config::advertise`].
    pub advertise: String,
    /// See [`Config::cert_ttl_secs`].
    pub cert_ttl: Duration,
}

/// Paths inside a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// `controller.id`.
    pub fn controller_identity(&self) -> PathBuf {
        self.root.join("controller.id")
    }
    /// `admin.id`.
    pub fn admin_identity(&self) -> PathBuf {
        self.root.join("admin.id")
    }
    /// `token.key`.
    pub fn token_key(&self) -> PathBuf {
        self.root.join("token.key")
    }
    /// `state.db`.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.db")
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, DataDirError> {
        std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && !self.ca_key().exists() {
                DataDirError::NotInitialized(self.root.clone())
            } else {
                DataDirError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })
    }

    /// Reads `config.json`.
    pub fn load_config(&self) -> Result<Config, DataDirError> {
        let bytes = self.read(&self.config())?;
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| DataDirError::File {
            path: self.config(),
            reason: e.to_string(),
        })?;
        let allowed = MIN_CERT_TTL.as_secs()..=MAX_CERT_TTL.as_secs();
        if !allowed.contains(&config.cert_ttl_secs) {
            return Err(DataDirError::File {
                path: self.config(),
                reason: format!("cert_ttl_secs must be within {allowed:?}"),
            });
        }
        Ok(config)
    }

    /// Reads a secret, refusing it if group or others may access it.
    fn read_secret(&self, path: &Path) -> Result<Vec<u8>, DataDirError> {
        if !path.exists() && !self.ca_key().exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        darkport_transport::identity::read_private_file(path, MAX_SECRET_FILE).map_err(|e| {
            DataDirError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })
    }

    /// Loads the CA.
    pub fn load_ca(&self) -> Result<Ca, DataDirError> {
        let cert = String::from_utf8_lossy(&self.read(&self.ca_cert())?).into_owned();
        let key = String::from_utf8_lossy(&self.read_secret(&self.ca_key())?).into_owned();
        Ok(Ca::load(&cert, &key)?)
    }

    /// Loads the token secret.
    pub fn load_token_key(&self) -> Result<darkport_proto::token::TokenKey, DataDirError> {
        let bytes = self.read_secret(&self.token_key())?;
        if bytes.len() != 32 {
            return Err(DataDirError::File {
                path: self.token_key(),
                reason: "must hold 32 bytes".into(),
            });
        }
        Ok(darkport_proto::token::TokenKey::new(&bytes))
    }
}

fn file_err(path: &Path) -> impl Fn(String) -> DataDirError + '_ {
    move |reason| DataDirError::File {
        path: path.to_path_buf(),
        reason,
    }
}

/// Name of the router policy `init` creates: all routers serve all services.
pub const DEFAULT_ROUTER_POLICY: &str = "all-routers";

/// Shortest identity certificate lifetime (short lifetimes are for tests of
/// renewal; production uses days).
pub const MIN_CERT_TTL: Duration = Duration::from_secs(5);

/// Longest identity certificate lifetime.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Controller and admin certificates live as long as the CA.
/// Largest CA key or token secret read (they are a few hundred bytes).
const MAX_SECRET_FILE: u64 = 64 * 1024;

const LOCAL_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Creates a data dir: CA, controller and admin identities, token secret,
/// empty state.
pub fn init(dir: &DataDir, opts: &InitOptions) -> Result<(), DataDirError> {
    if dir.ca_key().exists() || dir.state().exists() {
        return Err(DataDirError::AlreadyInitialized(dir.root.clone()));
    }
    if opts.cert_ttl < MIN_CERT_TTL || opts.cert_ttl > MAX_CERT_TTL {
        return Err(DataDirError::Invalid(format!(
            "--cert-ttl must be between {} s and {} days",
            MIN_CERT_TTL.as_secs(),
            MAX_CERT_TTL.as_secs() / 86400
        )));
    }
    if darkport_transport::endpoint::parse_host_port(&opts.advertise).is_none() {
        return Err(DataDirError::Invalid(format!(
            "--advertise {:?} is not HOST:PORT",
            opts.advertise
        )));
    }
    std::fs::create_dir_all(&dir.root).map_err(|e| file_err(&dir.root)(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(&dir.root)(e.to_string()))?;
    }
    let (ca, ca_key_pem) = Ca::generate()?;
    write_private_file(&dir.ca_key(), ca_key_pem.as_bytes(), false)
        .map_err(|e| file_err(&dir.ca_key())(e.to_string()))?;
    std::fs::write(dir.ca_cert(), &ca.cert_pem)
        .map_err(|e| file_err(&dir.ca_cert())(e.to_string()))?;

    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| DataDirError::Invalid("the system random generator failed".into()))?;
    write_private_file(&dir.token_key(), &secret, false)
        .map_err(|e| file_err(&dir.token_key())(e.to_string()))?;

    let mut admin_record = None;
    for (kind, name, path) in [
        (Kind::Controller, "controller", dir.controller_identity()),
        (Kind::Admin, "admin", dir.admin_identity()),
    ] {
        let name = IdentityName::new(name).map_err(|e| DataDirError::Invalid(e.to_string()))?;
        let (cert_pem, key_pem, der) = ca.issue_local(kind, &name, LOCAL_TTL)?;
        let file = IdentityFile {
            version: IDENTITY_FILE_VERSION,
            name: name.clone(),
            kind,
            controller: opts.advertise.clone(),
            key_pem,
            cert_pem,
            ca_pem: ca.cert_pem.clone(),
        };
        file.save(&path, false)
            .map_err(|e| file_err(&path)(e.to_string()))?;
        if kind == Kind::Admin {
            let now = darkport_transport::unix_now();
            admin_record = Some(IdentityRecord {
                name,
                kind,
                roles: vec![],
                certificates: vec![CertRecord {
                    fingerprint: darkport_proto::identity::fingerprint(&der),
                    issued_at: now,
                    expires_at: now + LOCAL_TTL.as_secs(),
                }],
                created_at: now,
                revoked_at: None,
                last_seen: None,
            });
        }
    }

    let config = Config {
        advertise: opts.advertise.clone(),
        cert_ttl_secs: opts.cert_ttl.as_secs(),
    };
    let text =
        serde_json::to_vec_pretty(&config).map_err(|e| file_err(&dir.config())(e.to_string()))?;
    write_private_file(&dir.config(), &text, false)
        .map_err(|e| file_err(&dir.config())(e.to_string()))?;

    let store = Store::open(&dir.state())?;
    let all_routers = IdentityName::new(DEFAULT_ROUTER_POLICY)
        .map_err(|e| DataDirError::Invalid(e.to_string()))?;
    store.update(
        true,
        crate::store::audit("init", format!("initialized, advertise {}", opts.advertise)),
        |s| {
            if let Some(admin) = &admin_record {
                s.identities.insert(admin.name.clone(), admin.clone());
            }
            // Every router may serve every service until the admin narrows it:
            // a visible, deletable default rather than an implicit rule.
            s.router_policies.insert(
                all_routers.clone(),
                darkport_proto::policy::RouterPolicyEntry {
                    name: all_routers.clone(),
                    routers: vec![darkport_proto::policy::Selector::All],
                    services: vec![darkport_proto::policy::Selector::All],
                },
            );
            Ok::<_, DataDirError>(())
        },
    )?;
    Ok(())
}

fn rustls_pem_to_der(pem: &str) -> Result<Vec<u8>, DataDirError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| DataDirError::Invalid(format!("CA certificate: {e}")))
}

/// SHA-256 fingerprint (hex) of a PEM certificate.
pub fn pem_fingerprint(pem: &str) -> Result<String, DataDirError> {
    Ok(darkport_proto::identity::fingerprint(&rustls_pem_to_der(
        pem,
    )?))
}
