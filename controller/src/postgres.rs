//! PostgreSQL persistence for [`crate::store`]: one state shared by several
//! controllers (high availability).
//!
//! What it does: the same tables as [`crate::sqlite`], written as row-level
//! differences between the old and new in-memory state; optimistic
//! concurrency on the state's generation; a feed of other controllers'
//! commits through `LISTEN`/`NOTIFY`.
//!
//! # Why these crates
//! `tokio-postgres` is the maintained pure-Rust driver (no libpq), and it
//! hands out `NOTIFY` messages from its connection; `deadpool-postgres`
//! pools its connections and replaces broken ones, so the backend comes
//! back by itself after the database does. The sync `postgres` crate was
//! not an option: it runs its own runtime's `block_on`, which panics on a
//! tokio worker thread, and the [`Backend`] methods are called from there.
//!
//! # Threads
//! [`Backend`] methods are synchronous and called from tokio tasks (under
//! the store's std mutex). So each [`PgBackend`] owns one OS thread,
//! `darkport-pg`, running a private current-thread tokio runtime that owns
//! the pool and the listener connection. A method sends a job to that
//! thread and waits for the answer with a timeout ([`REPLY_TIMEOUT`]); it
//! never touches the caller's runtime. Dropping the backend ends the
//! thread (its job channel closes) and with it the listener.
//!
//! # Timeouts
//! Every wait is bounded: connecting [`CONNECT_TIMEOUT`], waiting for a
//! pooled connection [`POOL_WAIT`], each statement `statement_timeout`
//! ([`STATEMENT_TIMEOUT`], set by the connection's options, which also set
//! `idle_in_transaction_session_timeout` so a stalled controller cannot
//! hold the generation's row lock), a whole job [`JOB_TIMEOUT`], and the
//! caller's wait for the answer [`REPLY_TIMEOUT`]. After the database was
//! found unreachable, jobs fail at once for [`FAIL_FAST`] instead of
//! queueing behind connection attempts.
//!
//! # Commits
//! A commit is one transaction: it locks the `generation` row of `meta`
//! (`SELECT ... FOR UPDATE`, which serialises concurrent committers),
//! refuses with [`StoreError::Conflict`] when the stored generation is not
//! the one the change was made from, then applies the row differences
//! (deletes, then `INSERT ... ON CONFLICT DO UPDATE`), the meta values, the
//! audit rows and a `NOTIFY darkport_state` carrying the new generation.
//! So a consumed token lands with the certificate it paid for, and an
//! audit entry with its change. A commit whose `COMMIT` got no answer has
//! an unknown outcome; the store then holds a generation the database may
//! have passed, and its next change meets a conflict and reloads.
//!
//! # Schema
//! Versions are rows of `schema_migrations`; [`MIGRATIONS`] entry `i`
//! upgrades version `i` to `i + 1`, each in its own transaction holding a
//! transaction-level advisory lock, so two controllers starting together
//! migrate once. A schema newer than this build knows is refused. Version
//! 1 is SQLite's version 3 (JSON in text columns, the same encoding).
//!
//! # TLS
//! The store URL takes libpq's `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert=FILE`; without `sslmode`
//! connections are plaintext, as before TLS was supported. The pool's
//! connections and the listener's use the same [`tls::Connector`]. The
//! [`tls`] module has the rules; `verify-full` with the CA that signed the
//! server's certificate is the one that authenticates the database.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, IsolationLevel, Row};

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{PolicyEntry, RouterPolicyEntry, ServiceEntry};

use crate::store::{
    certificates, sync, Backend, CertRecord, ControllerRecord, IdentityRecord, RouterRecord, State,
    StoreError, TokenRecord,
};

/// Schema migrations; entry `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('snapshot_version', 0), ('generation', 0);
CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_seen BIGINT
);
CREATE TABLE certificates (
    fingerprint TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    seq BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX certificates_identity ON certificates (identity);
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    roles TEXT NOT NULL,
    protocol TEXT NOT NULL DEFAULT '"Tcp"'
);
CREATE TABLE service_policies (
    name TEXT PRIMARY KEY,
    services TEXT NOT NULL,
    identities TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE router_policies (name TEXT PRIMARY KEY, routers TEXT NOT NULL, services TEXT NOT NULL);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    consumed_at BIGINT
);
CREATE TABLE routers (name TEXT PRIMARY KEY, advertise TEXT NOT NULL, last_seen BIGINT NOT NULL);
CREATE TABLE controllers (name TEXT PRIMARY KEY, advertise TEXT NOT NULL, last_seen BIGINT NOT NULL);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL
);
"#];

/// The `NOTIFY` channel told of every commit (payload: the new generation).
pub const NOTIFY_CHANNEL: &str = "darkport_state";
/// Key of the advisory lock held while migrating ("darkport" in ASCII).
const MIGRATION_LOCK: i64 = 0x6461_726b_706f_7274;
/// Opening a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Waiting for a pooled connection (including opening one).
pub const POOL_WAIT: Duration = Duration::from_secs(3);
/// One statement, enforced by the server (`statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// One whole job (load, commit, audit) on the database thread.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(6);
/// The caller's wait for the database thread's answer: a little longer
/// than a job, so the job's own timeout is what normally fires.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(7);
/// How long after finding the database unreachable jobs fail at once.
pub const FAIL_FAST: Duration = Duration::from_millis(500);
/// The listener's first wait before reconnecting; doubled up to
/// [`LISTEN_BACKOFF_MAX`].
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The listener's longest wait before reconnecting.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the idle listener checks that its connection still works (a
/// dead TCP peer is otherwise noticed only by keepalives).
const LISTEN_PING: Duration = Duration::from_secs(5);
/// Pooled connections per backend: jobs run one at a time, one spare.
const POOL_SIZE: usize = 2;

/// Whether `s` is a PostgreSQL URL (`postgres://` or `postgresql://`)
/// rather than a file path.
pub fn is_postgres_url(s: &str) -> bool {
    let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`: in the user info
/// (`user:secret@host`) and in `password=` parameters. For messages and
/// logs.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme) = out.find("://") {
        let start = scheme + 3;
        let end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            if let Some(colon) = out[start..start + at].find(':') {
                out.replace_range(start + colon + 1..start + at, "***");
            }
        }
    }
    redact_password_params(&out)
}

/// Replaces the value of every `password=` parameter (URL query or
/// `key=value` connection string) by `***`.
fn redact_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.to_ascii_lowercase().find(KEY) {
        let boundary = pos == 0
            || matches!(
                rest.as_bytes().get(pos - 1),
                Some(b'?' | b'&' | b' ' | b'\t')
            );
        let value_start = pos + KEY.len();
        out.push_str(&rest[..value_start]);
        if !boundary {
            rest = &rest[value_start..];
            continue;
        }
        let value = &rest[value_start..];
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |i| i + 2)
        } else {
            value.find(['&', ' ', '\t']).unwrap_or(value.len())
        };
        out.push_str("***");
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

/// A PostgreSQL [`Backend`]; see the module docs.
pub struct PgBackend {
    /// The URL without its password: `describe()` and error paths.
    path: String,
    /// Jobs for the database thread. Dropping it ends the thread.
    jobs: mpsc::UnboundedSender<Job>,
    /// Whether [`Backend::changes`] was already called.
    changes_taken: bool,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The answer channel of one job.
type Reply<T> = std_mpsc::SyncSender<Result<T, StoreError>>;

/// Work for the database thread.
enum Job {
    /// Create or upgrade the schema.
    Migrate(Reply<()>),
    Load(Reply<State>),
    Commit(Box<CommitJob>, Reply<()>),
    Audit(u32, Reply<Vec<AuditEntry>>),
    /// Start the listener feeding this channel.
    Listen(mpsc::Sender<()>),
}

/// A commit, prepared on the caller's thread: only the changed rows cross
/// to the database thread.
struct CommitJob {
    /// The generation the change was made from.
    seen: u64,
    generation: u64,
    version: u64,
    writes: Vec<Write>,
}

/// One statement of a commit.
struct Write {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
}

impl Write {
    fn new(sql: &'static str, params: Vec<Box<dyn ToSql + Send + Sync>>) -> Write {
        Write { sql, params }
    }
}

fn path_buf(path: &str) -> PathBuf {
    PathBuf::from(path)
}

fn unavailable(path: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        path: path_buf(path),
        reason: reason.into(),
    }
}

fn corrupt(path: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path_buf(path),
        reason: reason.into(),
    }
}

/// `e` and its causes, `: `-separated (the driver's own message leaves
/// the cause, such as "Connection refused", to `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Sorts a driver error: the database unreachable, shutting down, out of
/// resources or too slow is [`StoreError::Unavailable`] (retry later);
/// an error the server reports about the statement is [`StoreError::Db`].
fn pg_err(path: &str, e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let class = &db.code().code()[..2.min(db.code().code().len())];
            // 08 connection exception, 53 insufficient resources, 57
            // operator intervention (shutdown, statement timeout), 58
            // system error.
            if matches!(class, "08" | "53" | "57" | "58") {
                unavailable(path, chain(&e))
            } else {
                StoreError::Db {
                    path: path_buf(path),
                    reason: chain(&e),
                }
            }
        }
        // The server's certificate refused (or no common TLS version):
        // a setting to fix, which waiting for the database does not.
        None if tls_refusal(&e).is_some() => StoreError::Db {
            path: path_buf(path),
            reason: chain(&e),
        },
        // No server error: the connection failed, closed or timed out.
        None => unavailable(path, chain(&e)),
    }
}

/// The TLS refusal `e` comes from, if it does.
fn tls_refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a tls::PgTlsError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<tls::PgTlsError>() {
            return t.is_refusal().then_some(t);
        }
        cause = c.source();
    }
    None
}

fn pool_err(path: &str, e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_err(path, e),
        PoolError::Timeout(t) => {
            unavailable(path, format!("no database connection: {t:?} timed out"))
        }
        other => unavailable(path, other.to_string()),
    }
}

/// Unix seconds (or a count) as stored: BIGINT.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    path: &str,
    row: &'a Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| corrupt(path, format!("column {i}: {e}")))
}

fn get_u64(path: &str, row: &Row, i: usize) -> Result<u64, StoreError> {
    let v: i64 = get(path, row, i)?;
    u64::try_from(v).map_err(|_| corrupt(path, format!("negative value {v} in column {i}")))
}

fn get_opt_u64(path: &str, row: &Row, i: usize) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = get(path, row, i)?;
    v.map(|v| {
        u64::try_from(v).map_err(|_| corrupt(path, format!("negative value {v} in column {i}")))
    })
    .transpose()
}

fn get_name(path: &str, row: &Row, i: usize) -> Result<IdentityName, StoreError> {
    let s: String = get(path, row, i)?;
    IdentityName::new(s).map_err(|e| corrupt(path, e.to_string()))
}

fn get_json<T: serde::de::DeserializeOwned>(
    path: &str,
    row: &Row,
    i: usize,
) -> Result<T, StoreError> {
    let s: String = get(path, row, i)?;
    serde_json::from_str(&s).map_err(|e| corrupt(path, format!("column {i}: {e}")))
}

fn to_json<T: serde::Serialize>(path: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(path, e.to_string()))
}

fn text(s: &str) -> Box<dyn ToSql + Send + Sync> {
    Box::new(s.to_string())
}

fn big(v: u64) -> Box<dyn ToSql + Send + Sync> {
    Box::new(int(v))
}

fn opt_big(v: Option<u64>) -> Box<dyn ToSql + Send + Sync> {
    Box::new(v.map(int))
}

/// The statements turning `old` into `new`, then the audit rows.
fn writes(
    path: &str,
    old: &State,
    new: &State,
    audit: &[AuditEntry],
) -> Result<Vec<Write>, StoreError> {
    // Deletes of every table first, then upserts: a certificate that
    // moved is deleted and inserted again, never the other way round.
    let mut dels: Vec<(&'static str, String)> = Vec::new();
    let mut ups: Vec<Write> = Vec::new();
    sync(
        &old.identities,
        &new.identities,
        |k| {
            dels.push(("DELETE FROM identities WHERE name = $1", k.as_str().into()));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO identities (name, kind, roles, created_at, revoked_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET \
                 kind = EXCLUDED.kind, roles = EXCLUDED.roles, created_at = EXCLUDED.created_at, \
                 revoked_at = EXCLUDED.revoked_at, last_seen = EXCLUDED.last_seen",
                vec![
                    text(k.as_str()),
                    text(v.kind.as_str()),
                    Box::new(to_json(path, &v.roles)?),
                    big(v.created_at),
                    opt_big(v.revoked_at),
                    opt_big(v.last_seen),
                ],
            ));
            Ok(())
        },
    )?;
    sync(
        &certificates(old),
        &certificates(new),
        |k| {
            dels.push(("DELETE FROM certificates WHERE fingerprint = $1", k.clone()));
            Ok(())
        },
        |k, (identity, seq, c)| {
            ups.push(Write::new(
                "INSERT INTO certificates (fingerprint, identity, seq, issued_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO UPDATE SET \
                 identity = EXCLUDED.identity, seq = EXCLUDED.seq, \
                 issued_at = EXCLUDED.issued_at, expires_at = EXCLUDED.expires_at",
                vec![
                    text(k),
                    text(identity.as_str()),
                    big(*seq as u64),
                    big(c.issued_at),
                    big(c.expires_at),
                ],
            ));
            Ok(())
        },
    )?;
    sync(
        &old.services,
        &new.services,
        |k| {
            dels.push(("DELETE FROM services WHERE name = $1", k.as_str().into()));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO services (name, address, roles, protocol) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, \
                 roles = EXCLUDED.roles, protocol = EXCLUDED.protocol",
                vec![
                    text(k.as_str()),
                    text(&v.address),
                    Box::new(to_json(path, &v.roles)?),
                    Box::new(to_json(path, &v.protocol)?),
                ],
            ));
            Ok(())
        },
    )?;
    sync(
        &old.policies,
        &new.policies,
        |k| {
            dels.push((
                "DELETE FROM service_policies WHERE name = $1",
                k.as_str().into(),
            ));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO service_policies (name, services, identities, tags) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                 services = EXCLUDED.services, identities = EXCLUDED.identities, \
                 tags = EXCLUDED.tags",
                vec![
                    text(k.as_str()),
                    Box::new(to_json(path, &v.services)?),
                    Box::new(to_json(path, &v.identities)?),
                    Box::new(to_json(path, &v.tags)?),
                ],
            ));
            Ok(())
        },
    )?;
    sync(
        &old.router_policies,
        &new.router_policies,
        |k| {
            dels.push((
                "DELETE FROM router_policies WHERE name = $1",
                k.as_str().into(),
            ));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO router_policies (name, routers, services) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET routers = EXCLUDED.routers, \
                 services = EXCLUDED.services",
                vec![
                    text(k.as_str()),
                    Box::new(to_json(path, &v.routers)?),
                    Box::new(to_json(path, &v.services)?),
                ],
            ));
            Ok(())
        },
    )?;
    sync(
        &old.tokens,
        &new.tokens,
        |k| {
            dels.push(("DELETE FROM tokens WHERE id = $1", k.clone()));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO tokens (id, identity, expires_at, consumed_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET identity = EXCLUDED.identity, \
                 expires_at = EXCLUDED.expires_at, consumed_at = EXCLUDED.consumed_at",
                vec![
                    text(k),
                    text(v.identity.as_str()),
                    big(v.expires_at),
                    opt_big(v.consumed_at),
                ],
            ));
            Ok(())
        },
    )?;
    sync(
        &old.routers,
        &new.routers,
        |k| {
            dels.push(("DELETE FROM routers WHERE name = $1", k.as_str().into()));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO routers (name, advertise, last_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET advertise = EXCLUDED.advertise, \
                 last_seen = EXCLUDED.last_seen",
                vec![text(k.as_str()), text(&v.advertise), big(v.last_seen)],
            ));
            Ok(())
        },
    )?;
    sync(
        &old.controllers,
        &new.controllers,
        |k| {
            dels.push(("DELETE FROM controllers WHERE name = $1", k.as_str().into()));
            Ok(())
        },
        |k, v| {
            ups.push(Write::new(
                "INSERT INTO controllers (name, advertise, last_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET advertise = EXCLUDED.advertise, \
                 last_seen = EXCLUDED.last_seen",
                vec![text(k.as_str()), text(&v.advertise), big(v.last_seen)],
            ));
            Ok(())
        },
    )?;
    let mut w: Vec<Write> = dels
        .into_iter()
        .map(|(sql, key)| Write::new(sql, vec![text(&key)]))
        .collect();
    w.extend(ups);
    for a in audit {
        w.push(Write::new(
            "INSERT INTO audit (at, actor, action) VALUES ($1, $2, $3)",
            vec![big(a.at), text(&a.actor), text(&a.action)],
        ));
    }
    Ok(w)
}

impl PgBackend {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`
    /// or a `key=value` string, with libpq's `sslmode` and `sslrootcert`:
    /// see [`tls`]), creating or upgrading the schema, and starts the
    /// backend's database thread.
    ///
    /// Fails with [`StoreError::Unavailable`] when the database cannot be
    /// reached within the timeouts, [`StoreError::Corrupt`] for a schema
    /// newer than this build knows, [`StoreError::Db`] for a malformed URL,
    /// unusable TLS settings, a refused server certificate or a refused
    /// migration.
    pub fn connect(url: &str) -> Result<PgBackend, StoreError> {
        let path = redact(url);
        let tls_err = |e: tls::PgTlsError| StoreError::Db {
            path: path_buf(&path),
            reason: e.to_string(),
        };
        // tokio-postgres refuses verify-ca, verify-full and sslrootcert:
        // they are taken out here and enforced by the connector.
        let (url_rest, params) = tls::take_tls_params(url).map_err(tls_err)?;
        let policy =
            tls::TlsPolicy::decide(params.sslmode.as_deref(), params.sslrootcert.as_deref())
                .map_err(tls_err)?;
        let mut config =
            tokio_postgres::Config::from_str(&url_rest).map_err(|e| StoreError::Db {
                path: path_buf(&path),
                reason: format!("not a usable PostgreSQL URL: {e}"),
            })?;
        config.ssl_mode(policy.wire());
        if policy.mode.is_none() && !all_local(&config) {
            tracing::warn!(
                database = %path,
                "the connection to the state database is not encrypted (no sslmode in the store URL); \
                 add sslmode=verify-full&sslrootcert=CA.pem (docs/operations.md)"
            );
        }
        let connector = tls::Connector::new(policy).map_err(tls_err)?;
        let timeouts = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            JOB_TIMEOUT.as_millis() * 2
        );
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {timeouts}"),
            _ => timeouts,
        };
        config
            .options(options)
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("darkport-controller");
        }
        let (jobs, rx) = mpsc::unbounded_channel();
        let worker_path = path.clone();
        std::thread::Builder::new()
            .name("darkport-pg".into())
            .spawn(move || worker(config, connector, worker_path, rx))
            .map_err(|e| unavailable(&path, format!("cannot start the database thread: {e}")))?;
        let backend = PgBackend {
            path,
            jobs,
            changes_taken: false,
        };
        backend.call(Job::Migrate)?;
        Ok(backend)
    }

    /// Sends a job to the database thread and waits for its answer.
    fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send(job(tx))
            .map_err(|_| unavailable(&self.path, "the database thread has stopped"))?;
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(unavailable(
                &self.path,
                format!("no answer within {REPLY_TIMEOUT:?}"),
            )),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(unavailable(&self.path, "the database thread has stopped"))
            }
        }
    }
}

impl Backend for PgBackend {
    fn load(&mut self) -> Result<State, StoreError> {
        self.call(Job::Load)
    }

    fn commit(&mut self, old: &State, new: &State, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let job = CommitJob {
            seen: old.generation,
            generation: new.generation,
            version: new.version,
            writes: writes(&self.path, old, new, audit)?,
        };
        self.call(|reply| Job::Commit(Box::new(job), reply))
    }

    fn audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.call(|reply| Job::Audit(limit, reply))
    }

    /// A message whenever another controller (or this one) committed,
    /// and once each time the listener's connection is established (the
    /// first time too: commits made before it listened were not heard).
    /// Messages coalesce: the channel holds one.
    fn changes(&mut self) -> Option<mpsc::Receiver<()>> {
        if self.changes_taken {
            return None;
        }
        self.changes_taken = true;
        let (tx, rx) = mpsc::channel(1);
        // If the thread is gone, the receiver just never hears anything;
        // the jobs themselves report the failure.
        let _ = self.jobs.send(Job::Listen(tx));
        Some(rx)
    }

    fn describe(&self) -> String {
        self.path.clone()
    }
}

/// Whether every host of `config` is on this machine (a Unix socket or a
/// loopback address), where plaintext crosses no network.
fn all_local(config: &tokio_postgres::Config) -> bool {
    let local = |h: &tokio_postgres::config::Host| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    };
    // With `hostaddr`, that is where the connection goes.
    match config.get_hostaddrs() {
        [] => config.get_hosts().iter().all(local),
        addrs => addrs.iter().all(|ip| ip.is_loopback()),
    }
}

/// The database thread: a current-thread runtime running jobs one at a
/// time until the backend is dropped.
fn worker(
    config: tokio_postgres::Config,
    tls: tls::Connector,
    path: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            // Answer every job with the reason, until the backend is gone.
            let reason = format!("cannot start the database runtime: {e}");
            while let Some(job) = jobs.blocking_recv() {
                fail(job, unavailable(&path, reason.clone()));
            }
            return;
        }
    };
    rt.block_on(async move {
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = match Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
        {
            Ok(pool) => pool,
            Err(e) => {
                let reason = format!("cannot build the connection pool: {e}");
                while let Some(job) = jobs.recv().await {
                    fail(job, unavailable(&path, reason.clone()));
                }
                return;
            }
        };
        // When the database was last found unreachable, and why.
        let mut down: Option<(Instant, String)> = None;
        while let Some(job) = jobs.recv().await {
            if let Job::Listen(tx) = job {
                tokio::spawn(listen(config.clone(), tls.clone(), path.clone(), tx));
                continue;
            }
            if let Some((at, reason)) = &down {
                if at.elapsed() < FAIL_FAST {
                    fail(job, unavailable(&path, reason.clone()));
                    continue;
                }
            }
            let outcome = run(&pool, &path, job).await;
            match outcome {
                Some(reason) => down = Some((Instant::now(), reason)),
                None => down = None,
            }
        }
    });
}

/// Answers `job` with `err`.
fn fail(job: Job, err: StoreError) {
    match job {
        Job::Migrate(r) => drop(r.send(Err(err))),
        Job::Load(r) => drop(r.send(Err(err))),
        Job::Commit(_, r) => drop(r.send(Err(err))),
        Job::Audit(_, r) => drop(r.send(Err(err))),
        Job::Listen(_) => {}
    }
}

/// The reason, if `r` says the database is unreachable.
fn down_reason<T>(r: &Result<T, StoreError>) -> Option<String> {
    match r {
        Err(StoreError::Unavailable { reason, .. }) => Some(reason.clone()),
        _ => None,
    }
}

async fn timed<T>(
    path: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(JOB_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(unavailable(
                path,
                format!("no answer within {JOB_TIMEOUT:?}"),
            ))
        })
}

/// Runs one job and answers it; returns why the database is unreachable,
/// if it is.
async fn run(pool: &Pool, path: &str, job: Job) -> Option<String> {
    match job {
        Job::Migrate(reply) => {
            let r = timed(path, migrate(pool, path)).await;
            let down = down_reason(&r);
            let _ = reply.send(r);
            down
        }
        Job::Load(reply) => {
            let r = timed(path, load(pool, path)).await;
            let down = down_reason(&r);
            let _ = reply.send(r);
            down
        }
        Job::Commit(job, reply) => {
            let r = timed(path, commit(pool, path, *job)).await;
            let down = down_reason(&r);
            let _ = reply.send(r);
            down
        }
        Job::Audit(limit, reply) => {
            let r = timed(path, audit(pool, path, limit)).await;
            let down = down_reason(&r);
            let _ = reply.send(r);
            down
        }
        Job::Listen(_) => None,
    }
}

async fn migrate(pool: &Pool, path: &str) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(|e| pool_err(path, e))?;
    let err = |e| pg_err(path, e);
    let known = MIGRATIONS.len() as i64;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let tx = client.transaction().await.map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(err)?;
        let row = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await
            .map_err(err)?;
        let version: i64 = get(path, &row, 0)?;
        if version > known {
            return Err(corrupt(
                path,
                format!("schema version {version} is newer than this controller knows ({known}); upgrade darkport-controller"),
            ));
        }
        let step = i as i64 + 1;
        if version < step {
            tx.batch_execute(sql).await.map_err(err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) \
                 VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                &[&(step as i32)],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
    }
    Ok(())
}

async fn load(pool: &Pool, path: &str) -> Result<State, StoreError> {
    let mut client = pool.get().await.map_err(|e| pool_err(path, e))?;
    let err = |e| pg_err(path, e);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(err)?;
    let mut state = State::default();
    for row in tx
        .query("SELECT key, value FROM meta", &[])
        .await
        .map_err(err)?
    {
        let key: String = get(path, &row, 0)?;
        match key.as_str() {
            "snapshot_version" => state.version = get_u64(path, &row, 1)?,
            "generation" => state.generation = get_u64(path, &row, 1)?,
            _ => {}
        }
    }
    for row in tx
        .query(
            "SELECT name, kind, roles, created_at, revoked_at, last_seen FROM identities",
            &[],
        )
        .await
        .map_err(err)?
    {
        let n = get_name(path, &row, 0)?;
        let kind: String = get(path, &row, 1)?;
        let kind =
            Kind::parse(&kind).ok_or_else(|| corrupt(path, format!("unknown kind {kind:?}")))?;
        state.identities.insert(
            n.clone(),
            IdentityRecord {
                name: n,
                kind,
                roles: get_json(path, &row, 2)?,
                certificates: vec![],
                created_at: get_u64(path, &row, 3)?,
                revoked_at: get_opt_u64(path, &row, 4)?,
                last_seen: get_opt_u64(path, &row, 5)?,
            },
        );
    }
    for row in tx
        .query(
            "SELECT fingerprint, identity, issued_at, expires_at FROM certificates \
             ORDER BY identity, seq",
            &[],
        )
        .await
        .map_err(err)?
    {
        let identity = get_name(path, &row, 1)?;
        let rec = state
            .identities
            .get_mut(&identity)
            .ok_or_else(|| corrupt(path, format!("certificate of unknown identity {identity}")))?;
        rec.certificates.push(CertRecord {
            fingerprint: get(path, &row, 0)?,
            issued_at: get_u64(path, &row, 2)?,
            expires_at: get_u64(path, &row, 3)?,
        });
    }
    for row in tx
        .query("SELECT name, address, roles, protocol FROM services", &[])
        .await
        .map_err(err)?
    {
        let n = get_name(path, &row, 0)?;
        state.services.insert(
            n.clone(),
            ServiceEntry {
                name: n,
                address: get(path, &row, 1)?,
                roles: get_json(path, &row, 2)?,
                protocol: get_json(path, &row, 3)?,
            },
        );
    }
    for row in tx
        .query(
            "SELECT name, services, identities, tags FROM service_policies",
            &[],
        )
        .await
        .map_err(err)?
    {
        let n = get_name(path, &row, 0)?;
        state.policies.insert(
            n.clone(),
            PolicyEntry {
                name: n,
                services: get_json(path, &row, 1)?,
                identities: get_json(path, &row, 2)?,
                tags: get_json(path, &row, 3)?,
            },
        );
    }
    for row in tx
        .query("SELECT name, routers, services FROM router_policies", &[])
        .await
        .map_err(err)?
    {
        let n = get_name(path, &row, 0)?;
        state.router_policies.insert(
            n.clone(),
            RouterPolicyEntry {
                name: n,
                routers: get_json(path, &row, 1)?,
                services: get_json(path, &row, 2)?,
            },
        );
    }
    for row in tx
        .query(
            "SELECT id, identity, expires_at, consumed_at FROM tokens",
            &[],
        )
        .await
        .map_err(err)?
    {
        state.tokens.insert(
            get(path, &row, 0)?,
            TokenRecord {
                identity: get_name(path, &row, 1)?,
                expires_at: get_u64(path, &row, 2)?,
                consumed_at: get_opt_u64(path, &row, 3)?,
            },
        );
    }
    for row in tx
        .query("SELECT name, advertise, last_seen FROM routers", &[])
        .await
        .map_err(err)?
    {
        state.routers.insert(
            get_name(path, &row, 0)?,
            RouterRecord {
                advertise: get(path, &row, 1)?,
                last_seen: get_u64(path, &row, 2)?,
            },
        );
    }
    for row in tx
        .query("SELECT name, advertise, last_seen FROM controllers", &[])
        .await
        .map_err(err)?
    {
        state.controllers.insert(
            get_name(path, &row, 0)?,
            ControllerRecord {
                advertise: get(path, &row, 1)?,
                last_seen: get_u64(path, &row, 2)?,
            },
        );
    }
    tx.commit().await.map_err(err)?;
    Ok(state)
}

async fn commit(pool: &Pool, path: &str, job: CommitJob) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(|e| pool_err(path, e))?;
    let err = |e| pg_err(path, e);
    let tx = client.transaction().await.map_err(err)?;
    let row = tx
        .query_opt(
            "SELECT value FROM meta WHERE key = 'generation' FOR UPDATE",
            &[],
        )
        .await
        .map_err(err)?
        .ok_or_else(|| corrupt(path, "no generation in meta"))?;
    let found = get_u64(path, &row, 0)?;
    if found != job.seen {
        // Dropping the transaction rolls it back; say so explicitly so
        // the lock is released before the caller reloads.
        let _ = tx.rollback().await;
        return Err(StoreError::Conflict {
            path: path_buf(path),
            seen: job.seen,
            found,
        });
    }
    for w in &job.writes {
        let stmt = tx.prepare_cached(w.sql).await.map_err(err)?;
        let params: Vec<&(dyn ToSql + Sync)> = w
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        tx.execute(&stmt, &params).await.map_err(err)?;
    }
    tx.execute(
        "UPDATE meta SET value = $1 WHERE key = 'generation'",
        &[&int(job.generation)],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "UPDATE meta SET value = $1 WHERE key = 'snapshot_version'",
        &[&int(job.version)],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &job.generation.to_string()],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(|e| match pg_err(path, e) {
        StoreError::Unavailable { path, reason } => StoreError::Db {
            path,
            reason: format!(
                "the commit's outcome is unknown ({reason}); the next change reloads the state"
            ),
        },
        other => other,
    })
}

async fn audit(pool: &Pool, path: &str, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let client = pool.get().await.map_err(|e| pool_err(path, e))?;
    let rows = client
        .query(
            "SELECT at, actor, action FROM \
             (SELECT id, at, actor, action FROM audit ORDER BY id DESC LIMIT $1) newest \
             ORDER BY id",
            &[&i64::from(limit)],
        )
        .await
        .map_err(|e| pg_err(path, e))?;
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                at: get_u64(path, row, 0)?,
                actor: get(path, row, 1)?,
                action: get(path, row, 2)?,
            })
        })
        .collect()
}

/// Feeds `tx` from `LISTEN darkport_state` until the receiver is dropped
/// (or the database thread ends), reconnecting with backoff.
async fn listen(
    config: tokio_postgres::Config,
    tls: tls::Connector,
    path: String,
    tx: mpsc::Sender<()>,
) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    loop {
        let mut connected = false;
        match listen_once(&config, &tls, &tx, &mut connected).await {
            Ok(()) => return,
            Err(reason) => {
                tracing::warn!(database = %path, %reason, "state change listener lost its connection; reconnecting");
            }
        }
        if connected {
            backoff = LISTEN_BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// One listener connection: `Ok` when the receiver is gone, `Err` when
/// the connection failed.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &tls::Connector,
    tx: &mpsc::Sender<()>,
    connected: &mut bool,
) -> Result<(), String> {
    let (client, mut connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls.clone()))
            .await
            .map_err(|_| format!("connecting timed out after {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| chain(&e))?;
    // The connection must be polled for the client's queries to progress
    // and to hear notifications: a task of its own.
    let notify = tx.clone();
    let mut messages = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    // Full: a reload is already due; closed: the listener
                    // ends below.
                    let _ = notify.try_send(());
                }
                Ok(_) => {}
                Err(e) => return chain(&e),
            }
        }
        "connection closed".to_string()
    });
    let r = async {
        tokio::time::timeout(
            STATEMENT_TIMEOUT,
            client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")),
        )
        .await
        .map_err(|_| "LISTEN timed out".to_string())?
        .map_err(|e| chain(&e))?;
        *connected = true;
        // Commits made before this connection listened were not heard.
        let _ = tx.try_send(());
        loop {
            tokio::select! {
                end = &mut messages => {
                    return Err(end.unwrap_or_else(|e| format!("listener task failed: {e}")));
                }
                _ = tx.closed() => return Ok(()),
                _ = tokio::time::sleep(LISTEN_PING) => {
                    tokio::time::timeout(CONNECT_TIMEOUT, client.simple_query(""))
                        .await
                        .map_err(|_| "ping timed out".to_string())?
                        .map_err(|e| chain(&e))?;
                }
            }
        }
    }
    .await;
    messages.abort();
    r
}

pub mod tls {
    //! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert` on top of
    //! tokio-postgres, which knows only `disable`, `prefer` and `require`, no
    //! `sslrootcert`, and refuses options it does not know.
    //!
    //! What it does: takes the TLS options out of the store URL
    //! ([`take_tls_params`]), decides what the server's certificate is checked
    //! for ([`TlsPolicy::decide`], a pure function), and builds the connector
    //! the pool and the listener use ([`Connector`]): `tokio-postgres-rustls`'s
    //! glue (which also gives SCRAM its `tls-server-end-point` channel
    //! binding) over a rustls configuration with the ring provider and this
    //! module's [`ServerVerifier`]. A refused handshake becomes
    //! [`PgTlsError::CertificateRefused`], naming the host, the mode and what
    //! to check.
    //!
    //! What it does not do: client certificates (`sslcert`, `sslkey`),
    //! revocation lists, the system's or `~/.postgresql` roots, TLS 1.2 (the
    //! workspace's rustls has TLS 1.3 only; PostgreSQL 12 or newer built with
    //! OpenSSL 1.1.1 or newer speaks it), and libpq's fallback to plaintext
    //! when a `prefer` handshake fails (tokio-postgres fails the connection).
    //!
    //! # Modes
    //! | `sslmode` | TLS | the server's certificate |
    //! |---|---|---|
    //! | absent | no (as before TLS existed; libpq's default is `prefer`) | — |
    //! | `disable` | no | — |
    //! | `prefer` | if the server offers it | not checked; with `sslrootcert`, chain checked |
    //! | `require` | yes | not checked; with `sslrootcert`, chain checked (libpq: "like verify-ca") |
    //! | `verify-ca` | yes | chain to `sslrootcert`, which is required |
    //! | `verify-full` | yes | chain to `sslrootcert` and the URL's host in its subject alternative names |
    //!
    //! "Not checked" is libpq's `require`: encryption against eavesdroppers,
    //! no protection against an active attacker in the path. The handshake's
    //! signature is still verified, so the server holds the key of the
    //! certificate it sent. With `channel_binding=require` in the URL (passed
    //! to tokio-postgres as is) the login must be SCRAM-SHA-256-PLUS, bound to
    //! that certificate: a man in the middle can neither relay the login nor
    //! let the controller in without one, so the server proves it holds the
    //! role's SCRAM verifier even without a CA. Under the default
    //! (`channel_binding=prefer`) an attacker can avoid the binding.
    //! `sslrootcert` without `sslmode` is refused rather than
    //! read as libpq's `prefer` (which goes plaintext if the server does not
    //! offer TLS). Host names are matched against subject alternative names
    //! only, never the common name (libpq falls back to the common name when
    //! there are none).

    use std::convert::Infallible;
    use std::future::Future;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
    use tokio_postgres_rustls::MakeRustlsConnect;

    /// libpq's TLS options this controller does not implement: refused by
    /// name, so a URL written for psql does not quietly mean less here.
    const UNSUPPORTED: &[&str] = &[
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcertmode",
        "sslcrl",
        "sslcrldir",
        "sslcompression",
        "sslsni",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "requiressl",
    ];

    /// ALPN protocol name PostgreSQL 17 checks (libpq 17 sends it; older
    /// servers ignore it). It also makes `sslnegotiation=direct` work.
    const ALPN_POSTGRESQL: &[u8] = b"postgresql";

    /// Why a store URL's TLS settings cannot be used, or why TLS with the
    /// server failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum PgTlsError {
        /// `sslmode` has a value this controller does not implement.
        #[error("sslmode={0:?} is not supported; use disable, prefer, require, verify-ca or verify-full")]
        UnknownSslMode(String),
        /// `verify-ca` or `verify-full` without a CA to verify against.
        #[error("sslmode={mode} needs sslrootcert=FILE, the PEM file of the CA that signed the database server's certificate (this controller does not fall back to the system's roots or ~/.postgresql/root.crt); add it to the store URL, e.g. ?sslmode={mode}&sslrootcert=/etc/darkport/db-ca.pem")]
        NoRootCert {
            /// The mode asked for.
            mode: SslMode,
        },
        /// A CA given, but no mode: the connection would not use TLS.
        #[error("sslrootcert is given but sslmode is not, and without sslmode the connection is not encrypted; add sslmode=verify-full (or verify-ca) to the store URL")]
        RootCertWithoutMode,
        /// `sslrootcert=system`: libpq's system roots.
        #[error("sslrootcert=system (the system's trusted roots) is not supported; give the PEM file of the CA that signed the database server's certificate")]
        SystemRoots,
        /// A libpq TLS option this controller does not implement.
        #[error("{0} is not supported: of libpq's TLS options the controller reads sslmode and sslrootcert only (no client certificates, no revocation lists); remove it from the store URL")]
        Unsupported(String),
        /// A percent-escape in the URL is not UTF-8.
        #[error("the store URL's {0} is not valid UTF-8 once percent-decoded")]
        Encoding(&'static str),
        /// The `sslrootcert` file cannot be used.
        #[error("sslrootcert {path}: {reason}")]
        RootCert {
            /// The file.
            path: PathBuf,
            /// What is wrong with it.
            reason: String,
        },
        /// rustls refused the client configuration.
        #[error("TLS configuration: {0}")]
        Config(#[source] rustls::Error),
        /// The server's certificate was refused: the connection is not
        /// made. Retrying does not help until the certificate or the URL
        /// is changed.
        #[error(
            "the database server's TLS certificate was refused (host {host}, {mode}): {advice}"
        )]
        CertificateRefused {
            /// The host name the certificate was checked for.
            host: String,
            /// The mode, as the URL put it (see [`TlsPolicy::describe`]).
            mode: String,
            /// What to check.
            advice: String,
            /// rustls's reason.
            #[source]
            cause: Box<rustls::Error>,
        },
        /// The server and this controller have no TLS version or suite in
        /// common.
        #[error("TLS with the database server failed (host {host}, {mode}): the server and this controller share no TLS version or cipher suite; the controller speaks TLS 1.3 only, which PostgreSQL 12 or newer built with OpenSSL 1.1.1 or newer offers (check the server's ssl_min_protocol_version and ssl_max_protocol_version)")]
        Incompatible {
            /// The host.
            host: String,
            /// The mode, as the URL put it.
            mode: String,
            /// rustls's reason.
            #[source]
            cause: Box<rustls::Error>,
        },
        /// The handshake failed otherwise (the connection dropped, ...).
        #[error("TLS handshake with {host} failed")]
        Handshake {
            /// The host.
            host: String,
            /// Why.
            #[source]
            cause: io::Error,
        },
    }

    impl PgTlsError {
        /// Whether the failure is one of configuration (certificate, CA,
        /// versions), which waiting does not fix, rather than of the
        /// network.
        pub fn is_refusal(&self) -> bool {
            !matches!(self, PgTlsError::Handshake { .. })
        }
    }

    /// libpq's `sslmode`, the values this controller implements (not
    /// `allow`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum SslMode {
        /// No TLS.
        Disable,
        /// TLS if the server offers it.
        Prefer,
        /// TLS or no connection.
        Require,
        /// TLS, the chain verified against `sslrootcert`.
        VerifyCa,
        /// TLS, the chain verified and the host name checked.
        VerifyFull,
    }

    impl SslMode {
        /// Parses libpq's spelling.
        pub fn parse(s: &str) -> Result<SslMode, PgTlsError> {
            Ok(match s {
                "disable" => SslMode::Disable,
                "prefer" => SslMode::Prefer,
                "require" => SslMode::Require,
                "verify-ca" => SslMode::VerifyCa,
                "verify-full" => SslMode::VerifyFull,
                other => return Err(PgTlsError::UnknownSslMode(other.to_string())),
            })
        }

        /// libpq's spelling.
        pub fn as_str(self) -> &'static str {
            match self {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                SslMode::VerifyFull => "verify-full",
            }
        }
    }

    impl std::fmt::Display for SslMode {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// What the server's certificate is checked for.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Verification {
        /// Nothing but the handshake's signature (see the module docs).
        Off,
        /// A chain to the CA in this PEM file, whatever the host name.
        Chain(PathBuf),
        /// A chain to the CA in this PEM file, and the host name.
        ChainAndHost(PathBuf),
    }

    /// A store URL's TLS settings, decided.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TlsPolicy {
        /// The URL's `sslmode`; `None` when it has none (then no TLS).
        pub mode: Option<SslMode>,
        /// What the server's certificate is checked for.
        pub verification: Verification,
    }

    impl TlsPolicy {
        /// Decides from the URL's `sslmode` and `sslrootcert` (as
        /// written, percent-decoded); the table is in the module docs.
        pub fn decide(
            mode: Option<&str>,
            root_cert: Option<&str>,
        ) -> Result<TlsPolicy, PgTlsError> {
            let mode = mode.map(SslMode::parse).transpose()?;
            let root = match root_cert {
                Some("system") => return Err(PgTlsError::SystemRoots),
                // libpq reads an empty value as "the default file", which
                // this controller does not have: as if not given.
                Some("") | None => None,
                Some(p) => Some(PathBuf::from(p)),
            };
            let verification = match (mode, root) {
                (None, None) | (Some(SslMode::Disable), _) => Verification::Off,
                (None, Some(_)) => return Err(PgTlsError::RootCertWithoutMode),
                (Some(SslMode::Prefer | SslMode::Require), None) => Verification::Off,
                (Some(m @ (SslMode::VerifyCa | SslMode::VerifyFull)), None) => {
                    return Err(PgTlsError::NoRootCert { mode: m })
                }
                // libpq verifies the chain whenever a root certificate
                // file is there, `require` and `prefer` included.
                (Some(SslMode::Prefer | SslMode::Require | SslMode::VerifyCa), Some(p)) => {
                    Verification::Chain(p)
                }
                (Some(SslMode::VerifyFull), Some(p)) => Verification::ChainAndHost(p),
            };
            Ok(TlsPolicy { mode, verification })
        }

        /// What tokio-postgres is told: whether to ask for TLS, and
        /// whether to go on without it.
        pub fn wire(&self) -> tokio_postgres::config::SslMode {
            use tokio_postgres::config::SslMode as Wire;
            match self.mode {
                None | Some(SslMode::Disable) => Wire::Disable,
                Some(SslMode::Prefer) => Wire::Prefer,
                Some(SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => Wire::Require,
            }
        }

        /// The mode for messages, saying when `sslrootcert` made
        /// `require` or `prefer` verify the chain.
        pub fn describe(&self) -> String {
            match (&self.mode, &self.verification) {
                (None, _) => "no sslmode: not encrypted".to_string(),
                (Some(m @ (SslMode::Prefer | SslMode::Require)), Verification::Chain(_)) => {
                    format!(
                        "sslmode={m} with sslrootcert, so the chain is verified as under verify-ca"
                    )
                }
                (Some(m), _) => format!("sslmode={m}"),
            }
        }

        /// The CA file, when the chain is verified.
        pub fn root_cert(&self) -> Option<&Path> {
            match &self.verification {
                Verification::Off => None,
                Verification::Chain(p) | Verification::ChainAndHost(p) => Some(p),
            }
        }
    }

    /// The TLS options taken out of a store URL (percent-decoded, as
    /// written otherwise; the last of repeated ones wins, as in libpq).
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct TlsParams {
        /// `sslmode`.
        pub sslmode: Option<String>,
        /// `sslrootcert`.
        pub sslrootcert: Option<String>,
    }

    /// Splits a store URL (`postgres://…?…` or a `key=value` string) into
    /// the URL tokio-postgres is given, without `sslmode` and
    /// `sslrootcert`, and those two. Refuses libpq TLS options this
    /// controller does not implement. A string this cannot read is
    /// returned whole, for tokio-postgres to report what is wrong.
    pub fn take_tls_params(url: &str) -> Result<(String, TlsParams), PgTlsError> {
        if super::is_postgres_url(url) {
            from_url(url)
        } else {
            Ok(from_keywords(url)?.unwrap_or_else(|| (url.to_string(), TlsParams::default())))
        }
    }

    fn take(params: &mut TlsParams, key: &str, value: String) -> Result<bool, PgTlsError> {
        match key {
            "sslmode" => params.sslmode = Some(value),
            "sslrootcert" => params.sslrootcert = Some(value),
            k if UNSUPPORTED.contains(&k) => return Err(PgTlsError::Unsupported(k.to_string())),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn from_url(url: &str) -> Result<(String, TlsParams), PgTlsError> {
        let mut params = TlsParams::default();
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        // tokio-postgres (like libpq) reads the user info up to the first
        // '@' (a password may hold '?'), then host and database; the
        // parameters start at the next '?'.
        let host_start = after_scheme + url[after_scheme..].find('@').map_or(0, |i| i + 1);
        let Some(q) = url[host_start..].find('?').map(|i| host_start + i) else {
            return Ok((url.to_string(), params));
        };
        let mut kept: Vec<&str> = Vec::new();
        for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key).ok_or(PgTlsError::Encoding("parameter name"))?;
            let value = percent_decode(value).ok_or(PgTlsError::Encoding("parameter value"))?;
            if !take(&mut params, &key, value)? {
                kept.push(pair);
            }
        }
        let base = &url[..q];
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, params))
    }

    /// A `key=value` connection string, read as tokio-postgres reads it;
    /// `None` where it cannot be read.
    fn from_keywords(s: &str) -> Result<Option<(String, TlsParams)>, PgTlsError> {
        let mut params = TlsParams::default();
        let mut kept: Vec<&str> = Vec::new();
        let mut rest = s.trim_start();
        while !rest.is_empty() {
            let key_end = rest
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(rest.len());
            let key = &rest[..key_end];
            let Some(value) = rest[key_end..].trim_start().strip_prefix('=') else {
                return Ok(None);
            };
            let value = value.trim_start();
            let Some((decoded, len)) = keyword_value(value) else {
                return Ok(None);
            };
            let end = rest.len() - value.len() + len;
            if !take(&mut params, key, decoded)? {
                kept.push(&rest[..end]);
            }
            rest = rest[end..].trim_start();
        }
        Ok(Some((kept.join(" "), params)))
    }

    /// One value of a `key=value` string: quoted (`'…'`) or up to the
    /// next white space, backslash escaping the next character. The value
    /// and the bytes it took.
    fn keyword_value(s: &str) -> Option<(String, usize)> {
        let mut out = String::new();
        let quoted = s.starts_with('\'');
        let mut chars = s.char_indices().skip(usize::from(quoted));
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' if quoted => return Some((out, i + 1)),
                c if c.is_whitespace() && !quoted => return Some((out, i)),
                '\\' => out.extend(chars.next().map(|(_, c)| c)),
                c => out.push(c),
            }
        }
        // An unterminated quote, or an empty value: tokio-postgres says.
        (!quoted && !out.is_empty()).then_some((out, s.len()))
    }

    /// `%XX` escapes decoded (others left as they are, as libpq does);
    /// `None` when the result is not UTF-8.
    fn percent_decode(s: &str) -> Option<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            match (b[i], hex) {
                (b'%', Some(h)) => {
                    let h = std::str::from_utf8(h).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).ok()
    }

    /// The CA certificates in a PEM file.
    fn load_roots(path: &Path) -> Result<RootCertStore, PgTlsError> {
        let bad = |reason: String| PgTlsError::RootCert {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate in it is not usable as a CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(
                "holds no certificate (-----BEGIN CERTIFICATE-----); give the PEM file of the CA that signed the database server's certificate".into(),
            ));
        }
        Ok(roots)
    }

    /// Checks the database server's certificate as the [`Verification`]
    /// says. Built from rustls's own WebPKI functions (the ones its
    /// `WebPkiServerVerifier` calls), split so that `verify-ca` can skip
    /// the name.
    #[derive(Debug)]
    pub struct ServerVerifier {
        /// The CAs, when the chain is verified.
        roots: Option<Arc<RootCertStore>>,
        /// Whether the host name is checked too.
        check_host: bool,
        /// The ring provider: the signature algorithms.
        provider: Arc<CryptoProvider>,
    }

    impl ServerVerifier {
        /// The verifier for `verification`, reading its CA file.
        pub fn new(
            verification: &Verification,
            provider: Arc<CryptoProvider>,
        ) -> Result<ServerVerifier, PgTlsError> {
            let (roots, check_host) = match verification {
                Verification::Off => (None, false),
                Verification::Chain(p) => (Some(Arc::new(load_roots(p)?)), false),
                Verification::ChainAndHost(p) => (Some(Arc::new(load_roots(p)?)), true),
            };
            Ok(ServerVerifier {
                roots,
                check_host,
                provider,
            })
        }
    }

    impl ServerCertVerifier for ServerVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let Some(roots) = &self.roots else {
                // libpq's require: encryption without authentication.
                return Ok(ServerCertVerified::assertion());
            };
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_host {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
            Ok(ServerCertVerified::assertion())
        }

        // The handshake's signatures are checked in every mode: they prove
        // the server holds the key of the certificate it sent.
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// tokio-postgres's TLS connector for one store: the pool's
    /// connections and the listener's. A failed handshake becomes a
    /// [`PgTlsError`] that says what to check.
    #[derive(Clone)]
    pub struct Connector {
        /// tokio-postgres-rustls's glue over our rustls configuration.
        inner: MakeRustlsConnect,
        /// For the messages.
        policy: Arc<TlsPolicy>,
    }

    impl std::fmt::Debug for Connector {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Connector")
                .field("policy", &self.policy)
                .finish_non_exhaustive()
        }
    }

    impl Connector {
        /// The connector for `policy`, reading its CA file now, so a bad
        /// file is reported when the store is opened.
        pub fn new(policy: TlsPolicy) -> Result<Connector, PgTlsError> {
            // The one crypto provider (deny.toml), explicitly: never the
            // process default.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = ServerVerifier::new(&policy.verification, provider.clone())?;
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(PgTlsError::Config)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
            // Every connection verifies the certificate afresh: a resumed
            // session would skip it. Connections are pooled; a full
            // handshake is rare and cheap.
            config.resumption = rustls::client::Resumption::disabled();
            Ok(Connector {
                inner: MakeRustlsConnect::new(config),
                policy: Arc::new(policy),
            })
        }
    }

    impl<S> MakeTlsConnect<S> for Connector
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
        type TlsConnect = Connect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
        type Error = Infallible;

        fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Infallible> {
            let inner = MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, host)?;
            Ok(Connect {
                inner,
                host: host.to_string(),
                policy: self.policy.clone(),
            })
        }
    }

    /// One handshake, its failure explained.
    pub struct Connect<T> {
        /// tokio-postgres-rustls's handshake.
        inner: T,
        /// The host name the certificate is checked for.
        host: String,
        /// For the messages.
        policy: Arc<TlsPolicy>,
    }

    impl<S, T> TlsConnect<S> for Connect<T>
    where
        T: TlsConnect<S, Error = io::Error>,
        T::Future: Send + 'static,
        T::Stream: 'static,
    {
        type Stream = T::Stream;
        type Error = PgTlsError;
        type Future = Pin<Box<dyn Future<Output = Result<T::Stream, PgTlsError>> + Send>>;

        fn connect(self, stream: S) -> Self::Future {
            let Connect {
                inner,
                host,
                policy,
            } = self;
            let handshake = inner.connect(stream);
            Box::pin(async move {
                handshake
                    .await
                    .map_err(|e| handshake_error(host, &policy, e))
            })
        }
    }

    /// Turns a failed handshake into a [`PgTlsError`] that says what to
    /// check.
    pub fn handshake_error(host: String, policy: &TlsPolicy, e: io::Error) -> PgTlsError {
        let cause = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match cause {
            Some(cause @ rustls::Error::InvalidCertificate(_)) => PgTlsError::CertificateRefused {
                advice: advice(&cause, &host, policy),
                host,
                mode: policy.describe(),
                cause: Box::new(cause),
            },
            Some(
                cause @ (rustls::Error::PeerIncompatible(_)
                | rustls::Error::AlertReceived(
                    rustls::AlertDescription::ProtocolVersion
                    | rustls::AlertDescription::HandshakeFailure,
                )),
            ) => PgTlsError::Incompatible {
                host,
                mode: policy.describe(),
                cause: Box::new(cause),
            },
            _ => PgTlsError::Handshake { host, cause: e },
        }
    }

    /// What to check, by why the certificate was refused.
    fn advice(cause: &rustls::Error, host: &str, policy: &TlsPolicy) -> String {
        let ca = policy.root_cert().map_or_else(
            || "sslrootcert".to_string(),
            |p| format!("sslrootcert {}", p.display()),
        );
        let rustls::Error::InvalidCertificate(e) = cause else {
            return format!("check the server's certificate and {ca}");
        };
        match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "it is not signed by the CA in {ca}; check that this file is the CA that issued the server's certificate (the server's ssl_cert_file), and that the server sends any intermediate CA certificates with it"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "it is not valid for {host:?}: verify-full checks the URL's host against the certificate's subject alternative names (not its common name); connect by a name or address the certificate lists, or reissue it with {host:?} in its subject alternative names"
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "it is outside its validity period; renew the server's certificate, or check this host's clock".to_string()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "it is not a TLS server certificate (its extended key usage lacks serverAuth); reissue it for a server".to_string()
            }
            _ => format!("check the server's certificate and {ca}"),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn modes_decide_what_is_verified() {
            use Verification::*;
            let ca = || PathBuf::from("/ca.pem");
            // (sslmode, sslrootcert, what is verified or a part of the error)
            type Case<'a> = (
                Option<&'a str>,
                Option<&'a str>,
                Result<Verification, &'a str>,
            );
            let cases: &[Case] = &[
                (None, None, Ok(Off)),
                (Some("disable"), None, Ok(Off)),
                // libpq ignores sslrootcert when TLS is off.
                (Some("disable"), Some("/ca.pem"), Ok(Off)),
                (Some("prefer"), None, Ok(Off)),
                (Some("prefer"), Some("/ca.pem"), Ok(Chain(ca()))),
                (Some("require"), None, Ok(Off)),
                // libpq: require with a root certificate is verify-ca.
                (Some("require"), Some("/ca.pem"), Ok(Chain(ca()))),
                (Some("verify-ca"), Some("/ca.pem"), Ok(Chain(ca()))),
                (Some("verify-full"), Some("/ca.pem"), Ok(ChainAndHost(ca()))),
                (Some("verify-ca"), None, Err("needs sslrootcert=FILE")),
                (Some("verify-full"), None, Err("needs sslrootcert=FILE")),
                (Some("verify-full"), Some(""), Err("needs sslrootcert=FILE")),
                (Some("verify-full"), Some("system"), Err("not supported")),
                (None, Some("/ca.pem"), Err("add sslmode=verify-full")),
                (Some("allow"), None, Err("\"allow\" is not supported")),
                (
                    Some("VERIFY-FULL"),
                    Some("/ca.pem"),
                    Err("is not supported"),
                ),
            ];
            for (mode, root, want) in cases {
                let got = TlsPolicy::decide(*mode, *root);
                match (want, got) {
                    (Ok(v), Ok(p)) => assert_eq!(&p.verification, v, "{mode:?} {root:?}"),
                    (Err(text), Err(e)) => {
                        assert!(e.to_string().contains(text), "{mode:?} {root:?}: {e}")
                    }
                    (want, got) => panic!("{mode:?} {root:?}: want {want:?}, got {got:?}"),
                }
            }
        }

        #[test]
        fn only_the_verifying_modes_and_require_insist_on_tls() {
            use tokio_postgres::config::SslMode as Wire;
            let wire =
                |m: Option<&str>, r: Option<&str>| TlsPolicy::decide(m, r).map(|p| p.wire()).ok();
            // No sslmode: plaintext, as before TLS was supported.
            assert_eq!(wire(None, None), Some(Wire::Disable));
            assert_eq!(wire(Some("disable"), None), Some(Wire::Disable));
            assert_eq!(wire(Some("prefer"), None), Some(Wire::Prefer));
            assert_eq!(wire(Some("require"), None), Some(Wire::Require));
            assert_eq!(wire(Some("verify-ca"), Some("/c")), Some(Wire::Require));
            assert_eq!(wire(Some("verify-full"), Some("/c")), Some(Wire::Require));
        }

        #[test]
        fn tls_options_are_taken_out_of_urls() {
            let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
                ("postgres://h/db", "postgres://h/db", None, None),
                (
                    "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                    "postgres://u:p@h:5432/db",
                    Some("verify-full"),
                    Some("/etc/ca.pem"),
                ),
                (
                    "postgres://h/db?application_name=x&sslmode=require&connect_timeout=3",
                    "postgres://h/db?application_name=x&connect_timeout=3",
                    Some("require"),
                    None,
                ),
                // Percent-encoded names and values; the last one wins.
                (
                    "postgresql://h/db?ssl%6dode=prefer&sslmode=verify-ca&sslrootcert=%2Fa%20b.pem",
                    "postgresql://h/db",
                    Some("verify-ca"),
                    Some("/a b.pem"),
                ),
                // A '?' in the password is not where the parameters start.
                (
                    "postgres://u:a?b@h/db?sslmode=disable",
                    "postgres://u:a?b@h/db",
                    Some("disable"),
                    None,
                ),
                (
                    "postgres://h?sslmode=require&&",
                    "postgres://h",
                    Some("require"),
                    None,
                ),
            ];
            for (url, rest, mode, root) in cases {
                let (got, params) = take_tls_params(url).expect(url);
                assert_eq!(&got, rest, "{url}");
                assert_eq!(params.sslmode.as_deref(), *mode, "{url}");
                assert_eq!(params.sslrootcert.as_deref(), *root, "{url}");
            }
        }

        #[test]
        fn tls_options_are_taken_out_of_keyword_strings() {
            let (rest, p) = take_tls_params(
                "host=db user=dp  sslmode = verify-full sslrootcert='/etc/my ca.pem' password='a \\' b' dbname=x",
            )
            .expect("parse");
            assert_eq!(rest, "host=db user=dp password='a \\' b' dbname=x");
            assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
            assert_eq!(p.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
            let (rest, p) =
                take_tls_params("sslrootcert=/c\\ d.pem sslmode=require").expect("parse");
            assert_eq!(rest, "");
            assert_eq!(p.sslrootcert.as_deref(), Some("/c d.pem"));
            // What cannot be read goes to tokio-postgres whole.
            let (rest, p) = take_tls_params("host=db sslmode='verify-full").expect("parse");
            assert_eq!(rest, "host=db sslmode='verify-full");
            assert_eq!(p, TlsParams::default());
        }

        #[test]
        fn libpq_tls_options_not_implemented_are_refused_by_name() {
            for url in [
                "postgres://h/db?sslcert=/c.pem&sslkey=/k.pem",
                "host=h sslcrl=/crl.pem",
            ] {
                let e = take_tls_params(url).expect_err(url);
                assert!(matches!(e, PgTlsError::Unsupported(_)), "{url}: {e}");
                assert!(
                    e.to_string().contains("remove it from the store URL"),
                    "{e}"
                );
            }
        }

        #[test]
        fn percent_decoding_is_libpqs() {
            assert_eq!(percent_decode("a%20b%2fc").as_deref(), Some("a b/c"));
            // Not an escape: left alone.
            assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
            assert_eq!(percent_decode("%+1x").as_deref(), Some("%+1x"));
            assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
            assert_eq!(percent_decode("%ff"), None);
        }

        #[test]
        fn refusals_name_the_host_the_mode_and_what_to_check() {
            let policy =
                TlsPolicy::decide(Some("verify-full"), Some("/etc/db-ca.pem")).expect("policy");
            let refuse = |e: CertificateError| {
                let io = io::Error::new(
                    io::ErrorKind::InvalidData,
                    rustls::Error::InvalidCertificate(e),
                );
                handshake_error("db.internal".into(), &policy, io)
            };
            let e = refuse(CertificateError::UnknownIssuer);
            assert!(e.is_refusal());
            let text = e.to_string();
            for part in [
                "db.internal",
                "sslmode=verify-full",
                "not signed by the CA in sslrootcert /etc/db-ca.pem",
            ] {
                assert!(text.contains(part), "{part:?} missing in {text}");
            }
            let text = refuse(CertificateError::NotValidForName).to_string();
            assert!(text.contains("not valid for \"db.internal\""), "{text}");
            let text = refuse(CertificateError::Expired).to_string();
            assert!(text.contains("validity period"), "{text}");
            // require with a CA says it verified the chain because of it.
            let policy = TlsPolicy::decide(Some("require"), Some("/ca.pem")).expect("policy");
            assert!(
                policy.describe().contains("as under verify-ca"),
                "{}",
                policy.describe()
            );
            // A dropped connection is not a refusal: the network, not the
            // configuration.
            let e = handshake_error(
                "h".into(),
                &policy,
                io::Error::from(io::ErrorKind::ConnectionReset),
            );
            assert!(!e.is_refusal());
        }

        #[test]
        fn a_bad_ca_file_is_reported_when_the_connector_is_built() {
            let dir = tempfile::tempdir().expect("tempdir");
            let missing = dir.path().join("missing.pem");
            let empty = dir.path().join("empty.pem");
            std::fs::write(&empty, "not a certificate\n").expect("write");
            for (path, text) in [
                (&missing, "cannot read it"),
                (&empty, "holds no certificate"),
            ] {
                let policy = TlsPolicy::decide(Some("verify-full"), path.to_str()).expect("policy");
                let e = Connector::new(policy).expect_err("a bad CA file");
                assert!(matches!(e, PgTlsError::RootCert { .. }), "{e}");
                assert!(e.to_string().contains(text), "{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_postgres_url("postgres://h/db"));
        assert!(is_postgres_url("postgresql://u@h:5432/db"));
        assert!(is_postgres_url("PostgreSQL://h"));
        assert!(!is_postgres_url("/var/lib/darkport/state.db"));
        assert!(!is_postgres_url("postgres"));
        assert!(!is_postgres_url(""));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://dp:s3cr%40t@db.example:5432/darkport"),
            "postgres://dp:***@db.example:5432/darkport"
        );
        assert_eq!(
            redact("postgres://dp@db/darkport?sslmode=disable&password=x&a=b"),
            "postgres://dp@db/darkport?sslmode=disable&password=***&a=b"
        );
        assert_eq!(
            redact("host=db user=dp password='a b' dbname=x"),
            "host=db user=dp password=*** dbname=x"
        );
        assert_eq!(redact("postgres://db/darkport"), "postgres://db/darkport");
        // A user with no password, a path containing '@' and ':'.
        assert_eq!(
            redact("postgres://u@h/d?x=a:b@c"),
            "postgres://u@h/d?x=a:b@c"
        );
    }

    #[test]
    fn a_pool_timeout_is_unavailable() {
        // Waiting for a pooled connection too long means the database is
        // not answering: retry later, not a database error.
        let e = pool_err(
            "p",
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait),
        );
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    }
}
