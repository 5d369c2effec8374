//! PostgreSQL persistence for [`crate::store`]: one state shared by several
//! controllers (high availability).
//!
//! What it does: the same tables as [`super::sqlite`], written as row-level
//! differences between the old and new in-memory state (the rows as
//! [`super::rows`] describes them; this module adds PostgreSQL's dialect:
//! `$N` placeholders, `INSERT ... ON CONFLICT DO UPDATE`); optimistic
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
//! Versions are rows of `schema_migrations`; `MIGRATIONS` entry `i`
//! upgrades version `i` to `i + 1`, each in its own transaction holding a
//! transaction-level advisory lock, so two controllers starting together
//! migrate once. A schema newer than this build knows is refused. Version
//! 1 is SQLite's version 3 (JSON in text columns, the same encoding),
//! version 2 SQLite's version 4.
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

use darkport_proto::msg::AuditEntry;

use super::model::{Backend, State, StoreError};
use super::rows::{self, Change, SqlValue, StoredRow, TABLES};

/// Schema migrations; entry `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // Version 2 (SQLite's version 4): hosting. Bind policies beside dial
    // policies, and how routers choose among a service's terminators.
    r#"
ALTER TABLE services ADD COLUMN strategy TEXT NOT NULL DEFAULT 'lowest-cost';
ALTER TABLE service_policies ADD COLUMN kind TEXT NOT NULL DEFAULT 'dial';
"#,
];

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
    changes: Vec<Change>,
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

/// A row of a query, for [`rows`].
struct PgRow<'a> {
    row: &'a Row,
    path: &'a str,
}

impl StoredRow for PgRow<'_> {
    fn text(&self, col: usize) -> Result<String, StoreError> {
        get(self.path, self.row, col)
    }

    fn u64(&self, col: usize) -> Result<u64, StoreError> {
        get_u64(self.path, self.row, col)
    }

    fn opt_u64(&self, col: usize) -> Result<Option<u64>, StoreError> {
        get_opt_u64(self.path, self.row, col)
    }

    fn corrupt(&self, col: Option<usize>, reason: String) -> StoreError {
        match col {
            Some(i) => corrupt(self.path, format!("column {i}: {reason}")),
            None => corrupt(self.path, reason),
        }
    }
}

/// A parameter as tokio-postgres binds it.
fn param(v: &SqlValue) -> &(dyn ToSql + Sync) {
    match v {
        SqlValue::Text(s) => s,
        SqlValue::Int(i) => i,
    }
}

/// PostgreSQL's statement for a change: an upsert replaces every column
/// but the key.
fn statement(change: &Change) -> String {
    match change {
        Change::Delete(t, _) => t.delete('$'),
        Change::Upsert(t, _) => {
            let set: Vec<String> = t.columns[1..]
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            format!(
                "{} ON CONFLICT ({}) DO UPDATE SET {}",
                t.insert("INSERT", '$'),
                t.key(),
                set.join(", ")
            )
        }
        Change::Insert(t, _) => t.insert("INSERT", '$'),
    }
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
            changes: rows::changes(old, new, audit)
                .map_err(|e| corrupt(&self.path, e.to_string()))?,
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
    for table in TABLES {
        for row in tx.query(&table.select(), &[]).await.map_err(err)? {
            table.load(&mut state, &PgRow { row: &row, path })?;
        }
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
    for change in &job.changes {
        let stmt = tx.prepare_cached(&statement(change)).await.map_err(err)?;
        let params: Vec<_> = change.values().iter().map(param).collect();
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
        .query(&rows::audit_query('$'), &[&i64::from(limit)])
        .await
        .map_err(|e| pg_err(path, e))?;
    rows.iter()
        .map(|row| rows::audit_entry(&PgRow { row, path }))
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

pub mod tls;

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
