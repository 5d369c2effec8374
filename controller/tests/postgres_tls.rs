//! TLS to PostgreSQL (`sslmode`, `sslrootcert`) against a real server with
//! `ssl=on`: a CA and a server certificate for `localhost` and 127.0.0.1
//! made with rcgen, the server started by `scripts/postgres.sh start DIR
//! --ssl CERT KEY` (it still allows plaintext, so one server serves every
//! mode). What a connection really used is read from the server's
//! `pg_stat_ssl`, not assumed.
//!
//! Needs PostgreSQL's server binaries (Debian: `postgresql`). Without them
//! the tests say SKIPPED and pass, except under `CI=true`, where they fail.
//! Run as root, the script runs the server as the `postgres` user.
//!
//! ```text
//! cargo test -p darkport-controller --test postgres_tls
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use darkport_controller::store::postgres::{redact, PgBackend};
use darkport_controller::store::{Backend, RouterRecord, State, StoreError};
use darkport_proto::identity::IdentityName;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A password in every URL: the server trusts 127.0.0.1 and ignores it;
/// the tests check that no error shows it.
const PASSWORD: &str = "s3cret-pw";

/// Whether PostgreSQL's server binaries are here (where the script looks).
fn have_postgres() -> bool {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| d.path().join("bin/initdb").is_file());
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("initdb").is_file()));
    debian || on_path
}

/// Says SKIPPED once per test binary (straight to stderr: libtest captures
/// eprintln! of passing tests, and a skip must be seen), or panics under
/// `CI=true`.
fn skip() {
    let msg = "SKIPPED: PostgreSQL TLS tests need PostgreSQL's server binaries \
               (apt-get install postgresql); scripts/postgres.sh starts them";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: not skipping)");
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
    });
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

/// A CA: its certificate (PEM) and what signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    (cert.pem(), Issuer::new(params, key))
}

/// The test's PKI: the server's CA, another CA, the server's certificate
/// (for `localhost` and 127.0.0.1, signed by the first) and key, as files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("dp-pg-pki")
            .tempdir()
            .expect("tempdir");
        let (ca_pem, issuer) = ca("darkport test database CA");
        let (other_pem, _) = ca("another CA");
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let write = |name: &str, pem: &str| {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        };
        write("ca.pem", &ca_pem);
        write("other-ca.pem", &other_pem);
        write("server.crt", &cert.pem());
        write("server.key", &key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A PostgreSQL server with `ssl=on` of this test binary's own, stopped
/// when the last test using it is done.
struct TlsServer {
    /// The server's directory (scripts/postgres.sh DIR).
    dir: tempfile::TempDir,
    pki: Pki,
    port: u16,
}

impl TlsServer {
    /// The server the running tests share, started if none is running:
    /// one initdb instead of one per test on a 2-core machine. `None`
    /// (after SKIPPED) without PostgreSQL.
    fn shared() -> Option<Arc<TlsServer>> {
        static SHARED: Mutex<Weak<TlsServer>> = Mutex::new(Weak::new());
        if !have_postgres() {
            skip();
            return None;
        }
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = slot.upgrade() {
            return Some(server);
        }
        let server = Arc::new(TlsServer::start());
        *slot = Arc::downgrade(&server);
        Some(server)
    }

    fn start() -> TlsServer {
        let pki = Pki::new();
        let dir = tempfile::Builder::new()
            .prefix("dp-pg-tls")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .args(["--ssl", &pki.path("server.crt"), &pki.path("server.key")])
            .output()
            .expect("running scripts/postgres.sh");
        assert!(
            out.status.success(),
            "scripts/postgres.sh start --ssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = url
            .rsplit_once(':')
            .and_then(|(_, tail)| tail.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url:?}"));
        TlsServer { dir, pki, port }
    }

    /// A fresh, empty database: its name.
    fn fresh_db(&self) -> String {
        let db = format!("dp_tls_{:016x}", rand::random::<u64>());
        self.admin(&format!("CREATE DATABASE {db}"));
        db
    }

    /// `postgres://` for `db` at `host` (which must reach 127.0.0.1, or
    /// say so with `hostaddr` in `params`), with `params`.
    fn url(&self, host: &str, db: &str, params: &str) -> String {
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/{db}{query}",
            self.port
        )
    }

    /// Runs SQL as the administrator over a plaintext connection, on a
    /// thread and runtime of its own (so it works from any test); returns
    /// the first column of every row as text.
    fn admin(&self, sql: &str) -> Vec<String> {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        );
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("admin connection");
                let conn = tokio::spawn(conn);
                let rows = client.simple_query(&sql).await.expect("admin sql");
                drop(client);
                let _ = conn.await;
                rows.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap_or("").to_string())
                        }
                        _ => None,
                    })
                    .collect()
            })
        })
        .join()
        .expect("admin thread")
    }

    /// For each of the controller's connections to `db` now open: whether
    /// it is TLS, as the server sees it.
    fn tls_of(&self, db: &str) -> Vec<bool> {
        self.admin(&format!(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{db}' AND a.application_name = 'darkport-controller'"
        ))
        .iter()
        .map(|v| v == "t")
        .collect()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn connect(url: &str) -> PgBackend {
    PgBackend::connect(url).unwrap_or_else(|e| panic!("connect {}: {e}", redact(url)))
}

/// The refusal `PgBackend::connect` gives for `url`, checked to be a
/// database error (not "unavailable, try again") that shows no password,
/// and to come at once rather than after the timeouts.
fn refusal(url: &str) -> String {
    let start = Instant::now();
    let err = match PgBackend::connect(url) {
        Ok(_) => panic!("{} connected; it should be refused", redact(url)),
        Err(e) => e,
    };
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refused after {:?}: {err}",
        start.elapsed()
    );
    assert!(matches!(err, StoreError::Db { .. }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    assert!(text.contains(":***@"), "the URL is not named: {text}");
    text
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing in: {text}");
    }
}

/// Load, commit a change, load it back: the backend works.
fn round_trip(pg: &mut PgBackend) {
    let old = pg.load().expect("load");
    let mut new = State {
        generation: old.generation + 1,
        version: old.version + 1,
        ..old.clone()
    };
    new.routers.insert(
        IdentityName::new("router-tls").expect("name"),
        RouterRecord {
            advertise: "r.example:4433".into(),
            last_seen: 1,
        },
    );
    pg.commit(&old, &new, &[]).expect("commit");
    assert_eq!(pg.load().expect("load"), new);
}

#[test]
fn verify_full_with_the_right_ca_connects_encrypted_and_works() {
    let Some(server) = TlsServer::shared() else {
        return;
    };
    let db = server.fresh_db();
    let ca = server.pki.path("ca.pem");
    let params = format!("sslmode=verify-full&sslrootcert={ca}");
    let mut pg = connect(&server.url("127.0.0.1", &db, &params));
    round_trip(&mut pg);
    // The listener's connection goes through TLS too: its first message
    // says it is listening.
    let mut rx = pg.changes().expect("changes");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("listener up within 5 s")
            .expect("channel open");
    });
    let tls = server.tls_of(&db);
    assert!(tls.len() >= 2, "pool and listener connections: {tls:?}");
    assert!(tls.iter().all(|t| *t), "every connection is TLS: {tls:?}");
    // The DNS name in the certificate works as well as its address.
    let mut by_name = connect(&server.url("localhost", &db, &params));
    assert_eq!(by_name.load().expect("load").routers.len(), 1);
}

#[test]
fn verify_full_with_another_ca_is_refused_clearly() {
    let Some(server) = TlsServer::shared() else {
        return;
    };
    let db = server.fresh_db();
    let other = server.pki.path("other-ca.pem");
    for mode in ["verify-full", "verify-ca"] {
        let url = server.url(
            "127.0.0.1",
            &db,
            &format!("sslmode={mode}&sslrootcert={other}"),
        );
        let text = refusal(&url);
        assert_contains(
            &text,
            &[
                "TLS certificate was refused",
                "host 127.0.0.1",
                &format!("sslmode={mode}"),
                &format!("not signed by the CA in sslrootcert {other}"),
                "the server's ssl_cert_file",
            ],
        );
    }
}

#[test]
fn verify_full_refuses_a_host_not_in_the_certificate_and_verify_ca_does_not_check_it() {
    let Some(server) = TlsServer::shared() else {
        return;
    };
    let db = server.fresh_db();
    let ca = server.pki.path("ca.pem");
    // The TCP connection goes to 127.0.0.1 (hostaddr); the certificate is
    // checked for the URL's host, which it does not list.
    let wrong = |mode: &str| {
        server.url(
            "db.invalid",
            &db,
            &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}"),
        )
    };
    let text = refusal(&wrong("verify-full"));
    assert_contains(
        &text,
        &[
            "host db.invalid",
            "sslmode=verify-full",
            "not valid for \"db.invalid\"",
            "subject alternative names",
        ],
    );
    // verify-ca checks the chain only, as libpq does.
    let mut pg = connect(&wrong("verify-ca"));
    round_trip(&mut pg);
    let tls = server.tls_of(&db);
    assert!(!tls.is_empty() && tls.iter().all(|t| *t), "{tls:?}");
}

#[test]
fn require_encrypts_without_a_ca_and_verifies_the_chain_when_given_one() {
    let Some(server) = TlsServer::shared() else {
        return;
    };
    let db = server.fresh_db();
    let mut pg = connect(&server.url("127.0.0.1", &db, "sslmode=require"));
    round_trip(&mut pg);
    let tls = server.tls_of(&db);
    assert!(!tls.is_empty() && tls.iter().all(|t| *t), "{tls:?}");
    // With sslrootcert, require verifies the chain (libpq: "like
    // verify-ca"): another CA is refused, and says why it was checked...
    let other = server.pki.path("other-ca.pem");
    let text = refusal(&server.url(
        "127.0.0.1",
        &db,
        &format!("sslmode=require&sslrootcert={other}"),
    ));
    assert_contains(
        &text,
        &[
            "sslmode=require with sslrootcert",
            "as under verify-ca",
            "not signed by the CA",
        ],
    );
    // ...and the right CA is accepted whatever the host name.
    let ca = server.pki.path("ca.pem");
    connect(&server.url(
        "db.invalid",
        &db,
        &format!("hostaddr=127.0.0.1&sslmode=require&sslrootcert={ca}"),
    ));
}

#[test]
fn disable_and_no_sslmode_stay_plaintext_and_prefer_takes_tls_when_offered() {
    let Some(server) = TlsServer::shared() else {
        return;
    };
    for (params, want_tls) in [
        ("sslmode=disable", false),
        // No sslmode: plaintext, as before TLS was supported.
        ("", false),
        ("sslmode=prefer", true),
    ] {
        let db = server.fresh_db();
        let mut pg = connect(&server.url("127.0.0.1", &db, params));
        round_trip(&mut pg);
        let tls = server.tls_of(&db);
        assert!(!tls.is_empty(), "{params:?}: no connection seen");
        assert!(
            tls.iter().all(|t| *t == want_tls),
            "{params:?}: TLS {tls:?}, want {want_tls}"
        );
    }
}

/// No server needed: the settings are refused before any connection.
#[test]
fn verify_modes_without_a_ca_are_refused_before_connecting() {
    for mode in ["verify-ca", "verify-full"] {
        // Port 1: nothing listens there; the refusal must come first.
        let url = format!("postgres://dp:{PASSWORD}@127.0.0.1:1/darkport?sslmode={mode}");
        let text = refusal(&url);
        assert_contains(
            &text,
            &[
                &format!("sslmode={mode} needs sslrootcert=FILE"),
                "does not fall back",
            ],
        );
    }
    let text = refusal(&format!(
        "postgres://dp:{PASSWORD}@127.0.0.1:1/darkport?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
    ));
    assert_contains(&text, &["sslrootcert /nonexistent/ca.pem: cannot read it"]);
}

/// With `channel_binding=require`, even `require` (no CA) authenticates
/// the server: SCRAM-SHA-256-PLUS ties the login to the certificate the
/// controller saw (the connector supplies the binding), and a server that
/// lets the controller in without SCRAM is refused.
#[test]
fn channel_binding_require_uses_scram_plus_over_the_connector() {
    let Some(server) = TlsServer::shared() else {
        return;
    };
    let role = format!("dp_scram_{:08x}", rand::random::<u32>());
    let db = format!("{role}_db");
    server.admin(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"
    ));
    server.admin(&format!("CREATE DATABASE {db} OWNER {role}"));
    // The role logs in by SCRAM; everyone else is still trusted (other
    // tests share this server). COPY writes the file as the server.
    let hba = server.admin("SHOW hba_file").concat();
    server.admin(&format!(
        "COPY (VALUES ('host all {role} 127.0.0.1/32 scram-sha-256'), \
         ('local all all trust'), ('host all all 127.0.0.1/32 trust')) TO '{hba}'"
    ));
    server.admin("SELECT pg_reload_conf()");
    let url = format!(
        "postgres://{role}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=require&channel_binding=require",
        server.port
    );
    // The reload is asynchronous: until it lands, the role is trusted,
    // which channel_binding=require refuses.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pg = loop {
        match PgBackend::connect(&url) {
            Ok(pg) => break pg,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("channel binding"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no SCRAM-SHA-256-PLUS login within 5 s: {e}"),
        }
    };
    round_trip(&mut pg);
    // A trusted login has no SCRAM to bind: refused.
    let trusted = server.url("127.0.0.1", &db, "sslmode=require&channel_binding=require");
    match PgBackend::connect(&trusted) {
        Ok(_) => panic!("a login without SCRAM passed channel_binding=require"),
        Err(e) => assert!(
            e.to_string().contains("server did not use channel binding"),
            "{e}"
        ),
    }
}
