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
use crate::store::{Backend, CertRecord, IdentityRecord, Store};

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
    /// Where the state is: absent for `state.db` (SQLite) in the data dir,
    /// or a `postgres://` URL shared by several controllers. The file is
    /// 0600 since a URL may carry a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// Options for [`init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// See [`Config::advertise`].
    pub advertise: String,
    /// See [`Config::cert_ttl_secs`].
    pub cert_ttl: Duration,
    /// See [`Config::store`].
    pub store: Option<String>,
}

/// Options for [`join`].
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// This controller's `host:port`.
    pub advertise: String,
    /// This controller's name, unique among the controllers.
    pub name: IdentityName,
    /// The shared store (a `postgres://` URL).
    pub store: String,
    /// A directory holding `ca.pem`, `ca.key` and `token.key` copied from
    /// an existing controller's data dir.
    pub from: PathBuf,
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

    /// Opens the state: `store` (a `postgres://` URL) when given, else
    /// the config's, else `state.db` in the data dir.
    pub fn open_store(&self, config: &Config) -> Result<Store, DataDirError> {
        match config.store.as_deref() {
            Some(url) => open_url(url),
            None => {
                if !self.state().exists() {
                    return Err(DataDirError::NotInitialized(self.root.clone()));
                }
                Ok(Store::open(&self.state())?)
            }
        }
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

/// Opens a shared store by URL.
pub fn open_url(url: &str) -> Result<Store, DataDirError> {
    if !crate::store::postgres::is_postgres_url(url) {
        return Err(DataDirError::Invalid(format!(
            "store {:?} is not a postgres:// or postgresql:// URL; leave it out to keep state in state.db (SQLite) in the data dir",
            crate::store::postgres::redact(url)
        )));
    }
    Ok(Store::new(Box::new(
        crate::store::postgres::PgBackend::connect(url)?,
    ))?)
}

fn check_advertise(advertise: &str) -> Result<(), DataDirError> {
    if darkport_transport::endpoint::parse_host_port(advertise).is_none() {
        return Err(DataDirError::Invalid(format!(
            "--advertise {advertise:?} is not HOST:PORT"
        )));
    }
    Ok(())
}

fn make_private_dir(root: &Path) -> Result<(), DataDirError> {
    std::fs::create_dir_all(root).map_err(|e| file_err(root)(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(root)(e.to_string()))?;
    }
    Ok(())
}

/// Writes this controller's identity (`controller.id`, named `name`) and
/// an admin identity (`admin.id`, named `admin`) signed by `ca`; returns
/// the admin certificate's record, for the state.
fn local_identities(
    dir: &DataDir,
    ca: &Ca,
    name: &IdentityName,
    advertise: &str,
) -> Result<CertRecord, DataDirError> {
    let admin = fixed_name("admin")?;
    let mut admin_cert = None;
    for (kind, name, path) in [
        (Kind::Controller, name, dir.controller_identity()),
        (Kind::Admin, &admin, dir.admin_identity()),
    ] {
        let (cert_pem, key_pem, der) = ca.issue_local(kind, name, LOCAL_TTL)?;
        let file = IdentityFile {
            version: IDENTITY_FILE_VERSION,
            name: name.clone(),
            kind,
            controller: advertise.to_string(),
            key_pem,
            cert_pem,
            ca_pem: ca.cert_pem.clone(),
        };
        file.save(&path, false)
            .map_err(|e| file_err(&path)(e.to_string()))?;
        if kind == Kind::Admin {
            let now = darkport_transport::unix_now();
            admin_cert = Some(CertRecord {
                fingerprint: darkport_proto::identity::fingerprint(&der),
                issued_at: now,
                expires_at: now + LOCAL_TTL.as_secs(),
            });
        }
    }
    admin_cert.ok_or_else(|| DataDirError::Invalid("no admin certificate was made".into()))
}

/// Writes `config.json` (0600); `replace` an existing one or fail.
fn write_config(dir: &DataDir, config: &Config, replace: bool) -> Result<(), DataDirError> {
    let text =
        serde_json::to_vec_pretty(config).map_err(|e| file_err(&dir.config())(e.to_string()))?;
    write_private_file(&dir.config(), &text, replace)
        .map_err(|e| file_err(&dir.config())(e.to_string()))
}

/// Adds a controller to a deployment whose state is in a shared store:
/// makes `opts.name`'s data dir from the CA and token secret copied from
/// an existing controller (`opts.from`), issues this controller's own
/// certificate and admin certificate locally (their keys never leave this
/// host), and records the admin certificate in the shared state.
pub fn join(dir: &DataDir, opts: &JoinOptions) -> Result<(), DataDirError> {
    if dir.ca_key().exists() || dir.config().exists() {
        return Err(DataDirError::AlreadyInitialized(dir.root.clone()));
    }
    check_advertise(&opts.advertise)?;
    let from = DataDir::new(&opts.from);
    let ca = from.load_ca()?;
    let token_key = from.read_secret(&from.token_key())?;
    from.load_token_key()?;
    let store = open_url(&opts.store)?;
    {
        let state = store.read();
        if state.generation == 0 {
            return Err(DataDirError::Invalid(format!(
                "the store {} holds no deployment yet; initialize the first controller with darkport-controller init --store URL, then join others",
                store.describe()
            )));
        }
        if state.controllers.contains_key(&opts.name) {
            return Err(DataDirError::Invalid(format!(
                "a controller named {} is already in the store; pick another --name",
                opts.name
            )));
        }
    }
    make_private_dir(&dir.root)?;
    let ca_key = from.read_secret(&from.ca_key())?;
    write_keys(dir, &ca_key, &ca.cert_pem, &token_key)?;
    let admin_cert = local_identities(dir, &ca, &opts.name, &opts.advertise)?;
    let admin = fixed_name("admin")?;
    store.update(
        false,
        crate::store::audit(
            "join",
            format!(
                "controller {} joined, advertise {}",
                opts.name, opts.advertise
            ),
        ),
        |s| {
            let now = darkport_transport::unix_now();
            let record = s
                .identities
                .entry(admin.clone())
                .or_insert_with(|| IdentityRecord {
                    name: admin.clone(),
                    kind: Kind::Admin,
                    roles: vec![],
                    certificates: vec![],
                    created_at: now,
                    revoked_at: None,
                    last_seen: None,
                });
            record.certificates.push(admin_cert.clone());
            s.controllers.insert(
                opts.name.clone(),
                crate::store::ControllerRecord {
                    advertise: opts.advertise.clone(),
                    last_seen: now,
                },
            );
            Ok::<_, DataDirError>(())
        },
    )?;
    write_config(
        dir,
        &Config {
            advertise: opts.advertise.clone(),
            cert_ttl_secs: from_config_ttl(&from).unwrap_or(DEFAULT_CERT_TTL.as_secs()),
            store: Some(opts.store.clone()),
        },
        false,
    )
}

/// The certificate lifetime of the controller copied from, if its
/// `config.json` was copied too.
fn from_config_ttl(from: &DataDir) -> Option<u64> {
    from.load_config().ok().map(|c| c.cert_ttl_secs)
}

/// What [`migrate`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Identities.
    pub identities: usize,
    /// Services.
    pub services: usize,
    /// Service and router policies.
    pub policies: usize,
    /// Enrollment tokens, used or not.
    pub tokens: usize,
    /// Audit entries.
    pub audit: usize,
}

/// Moves a controller's state from `state.db` (SQLite) into the empty
/// shared store at `url` (PostgreSQL), in one transaction: identities
/// with their certificates, services, policies, tokens (a used token
/// stays used), routers, controllers and the whole audit log. Then the
/// data dir's config names the store, and `state.db` is renamed
/// `state.db.migrated` (kept as a backup, no longer read). Run it with the
/// controller stopped.
pub fn migrate(dir: &DataDir, url: &str) -> Result<Migrated, DataDirError> {
    let mut config = dir.load_config()?;
    if let Some(current) = &config.store {
        return Err(DataDirError::Invalid(format!(
            "{} already keeps its state in {}; nothing to migrate",
            dir.root.display(),
            crate::store::postgres::redact(current)
        )));
    }
    if !dir.state().exists() {
        return Err(DataDirError::NotInitialized(dir.root.clone()));
    }
    if !crate::store::postgres::is_postgres_url(url) {
        return Err(DataDirError::Invalid(format!(
            "--to {:?} is not a postgres:// or postgresql:// URL",
            crate::store::postgres::redact(url)
        )));
    }
    let mut from = crate::store::sqlite::SqliteBackend::open(&dir.state())?;
    let state = from.load()?;
    let audit = from.audit(u32::MAX)?;
    let mut to = crate::store::postgres::PgBackend::connect(url)?;
    let empty = to.load()?;
    if empty.generation != 0 || !empty.identities.is_empty() {
        return Err(DataDirError::Invalid(format!(
            "the store {} already holds a deployment; migrate into an empty database",
            to.describe()
        )));
    }
    let mut moved = state.clone();
    moved.generation = empty.generation + 1;
    to.commit(&empty, &moved, &audit)?;
    // Closed first: SQLite folds its write-ahead log back into the file.
    drop(from);
    config.store = Some(url.to_string());
    write_config(dir, &config, true)?;
    let backup = dir.root.join("state.db.migrated");
    std::fs::rename(dir.state(), &backup).map_err(|e| file_err(&backup)(e.to_string()))?;
    Ok(Migrated {
        identities: state.identities.len(),
        services: state.services.len(),
        policies: state.policies.len() + state.router_policies.len(),
        tokens: state.tokens.len(),
        audit: audit.len(),
    })
}

/// Default lifetime of identity certificates (7 days).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Creates a data dir: CA, controller and admin identities, token secret,
/// empty state (in `state.db`, or in the shared store `opts.store`).
pub fn init(dir: &DataDir, opts: &InitOptions) -> Result<(), DataDirError> {
    if dir.ca_key().exists() || dir.state().exists() {
        return Err(DataDirError::AlreadyInitialized(dir.root.clone()));
    }
    check_cert_ttl(opts.cert_ttl)?;
    check_advertise(&opts.advertise)?;
    // A shared store must be empty: a second controller joins instead.
    let shared = opts.store.as_deref().map(open_empty_store).transpose()?;
    make_private_dir(&dir.root)?;
    let (ca, ca_key_pem) = Ca::generate()?;
    let token_key = random_token_key()?;
    write_keys(dir, ca_key_pem.as_bytes(), &ca.cert_pem, &token_key)?;

    let controller = fixed_name("controller")?;
    let admin_cert = local_identities(dir, &ca, &controller, &opts.advertise)?;
    let now = darkport_transport::unix_now();
    let admin = IdentityRecord {
        name: fixed_name("admin")?,
        kind: Kind::Admin,
        roles: vec![],
        certificates: vec![admin_cert],
        created_at: now,
        revoked_at: None,
        last_seen: None,
    };

    write_config(
        dir,
        &Config {
            advertise: opts.advertise.clone(),
            cert_ttl_secs: opts.cert_ttl.as_secs(),
            store: opts.store.clone(),
        },
        false,
    )?;

    let store = match shared {
        Some(s) => s,
        None => Store::open(&dir.state())?,
    };
    seed_state(&store, &controller, &admin, &opts.advertise, now)
}

/// `--cert-ttl` must be within [`MIN_CERT_TTL`] and [`MAX_CERT_TTL`].
fn check_cert_ttl(cert_ttl: Duration) -> Result<(), DataDirError> {
    if cert_ttl < MIN_CERT_TTL || cert_ttl > MAX_CERT_TTL {
        return Err(DataDirError::Invalid(format!(
            "--cert-ttl must be between {} s and {} days",
            MIN_CERT_TTL.as_secs(),
            MAX_CERT_TTL.as_secs() / 86400
        )));
    }
    Ok(())
}

/// The shared store at `url`, if it holds no deployment yet.
fn open_empty_store(url: &str) -> Result<Store, DataDirError> {
    let store = open_url(url)?;
    if store.read().generation != 0 {
        return Err(DataDirError::Invalid(format!(
            "the store {} already holds a deployment; add this controller with darkport-controller join, or use an empty database",
            store.describe()
        )));
    }
    Ok(store)
}

/// A new token secret, from the system's random generator.
fn random_token_key() -> Result<[u8; 32], DataDirError> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| DataDirError::Invalid("the system random generator failed".into()))?;
    Ok(secret)
}

/// Writes the CA's key and certificate and the token secret into `dir`,
/// the secrets readable by their owner only.
fn write_keys(
    dir: &DataDir,
    ca_key: &[u8],
    ca_cert_pem: &str,
    token_key: &[u8],
) -> Result<(), DataDirError> {
    write_private_file(&dir.ca_key(), ca_key, false)
        .map_err(|e| file_err(&dir.ca_key())(e.to_string()))?;
    std::fs::write(dir.ca_cert(), ca_cert_pem)
        .map_err(|e| file_err(&dir.ca_cert())(e.to_string()))?;
    write_private_file(&dir.token_key(), token_key, false)
        .map_err(|e| file_err(&dir.token_key())(e.to_string()))
}

/// A name Darkport itself gives (`admin`, `controller`, …), which is
/// always valid.
fn fixed_name(name: &str) -> Result<IdentityName, DataDirError> {
    IdentityName::new(name).map_err(|e| DataDirError::Invalid(e.to_string()))
}

/// A new deployment's first state: the admin identity, this controller,
/// and the default router policy.
fn seed_state(
    store: &Store,
    controller: &IdentityName,
    admin: &IdentityRecord,
    advertise: &str,
    now: u64,
) -> Result<(), DataDirError> {
    let all_routers = fixed_name(DEFAULT_ROUTER_POLICY)?;
    store.update(
        true,
        crate::store::audit("init", format!("initialized, advertise {advertise}")),
        |s| {
            s.identities.insert(admin.name.clone(), admin.clone());
            s.controllers.insert(
                controller.clone(),
                crate::store::ControllerRecord {
                    advertise: advertise.to_string(),
                    last_seen: now,
                },
            );
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
