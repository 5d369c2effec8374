//! Hardening: what a peer on the network, or a careless file mode, must
//! not be able to do (issue 8). Real processes or real library entry
//! points, real QUIC, real certificates.

use std::time::Duration;

use darkport_controller::ca::Ca;
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::ALPN_DATA;
use darkport_tests::{init_logging, wait_until, Fixture};
use darkport_transport::identity::{Identity, IdentityFile, IDENTITY_FILE_VERSION};
use darkport_transport::tls::{self, ClientAuth, Trust};

fn contains(err: &dyn std::fmt::Display, needle: &str) {
    let text = err.to_string();
    assert!(
        text.contains(needle),
        "expected {needle:?} in the error, got: {text}"
    );
}

fn identity(ca: &Ca, kind: Kind, name: &str, ttl: Duration) -> Identity {
    let name = IdentityName::new(name).expect("name");
    let (cert_pem, key_pem, _) = ca.issue_local(kind, &name, ttl).expect("issue");
    Identity::from_file(IdentityFile {
        version: IDENTITY_FILE_VERSION,
        name,
        kind,
        controller: "127.0.0.1:1".into(),
        key_pem,
        cert_pem,
        ca_pem: ca.cert_pem.clone(),
    })
    .expect("identity")
}

/// TLS 1.3 resumption restores the client's certificate without verifying
/// it again. With resumption on, the second handshake below succeeds with
/// an expired certificate.
#[tokio::test]
async fn an_expired_certificate_cannot_resume_a_session() {
    init_logging();
    let (ca, _) = Ca::generate().expect("ca");
    let router = identity(&ca, Kind::Router, "router-1", Duration::from_secs(3600));
    let app = identity(&ca, Kind::Client, "app-1", Duration::from_secs(2));
    let expires = darkport_transport::tls::cert_validity(&app.chain[0])
        .expect("validity")
        .1;

    let server_config = tls::server_config(&router, ClientAuth::Required, ALPN_DATA).expect("cfg");
    let socket = darkport_transport::endpoint::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let server = darkport_transport::endpoint::server(socket, server_config).expect("server");
    let accepting = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    // Echo one stream so the client sees the whole
                    // handshake, tickets included (if any were sent).
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let _ = tokio::io::copy(&mut recv, &mut send).await;
                        let _ = send.finish();
                    }
                    conn.closed().await;
                }
            });
        }
    });

    let client_config =
        tls::client_config(Some(&app), Trust::Ca(ca_der(&ca)), Kind::Router, ALPN_DATA)
            .expect("client cfg");
    let mut endpoint = darkport_transport::endpoint::client(Some(addr)).expect("client");
    endpoint.set_default_client_config(client_config);

    let first = endpoint
        .connect(addr, "darkport-router")
        .expect("connect")
        .await
        .expect("the first handshake, with a valid certificate, succeeds");
    let (mut send, mut recv) = first.open_bi().await.expect("stream");
    send.write_all(b"ping").await.expect("write");
    send.finish().expect("finish");
    let back = recv.read_to_end(64).await.expect("echo");
    assert_eq!(back, b"ping");
    // A session ticket, were the server to send one, leaves with its
    // HANDSHAKE_DONE: once that has arrived, any ticket has too.
    wait_until(
        "the server's HANDSHAKE_DONE",
        Duration::from_secs(5),
        || async { first.stats().frame_rx.handshake_done > 0 },
    )
    .await;
    first.close(0u32.into(), b"done");

    // Wait until the certificate has expired.
    while darkport_transport::unix_now() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        endpoint.connect(addr, "darkport-router").expect("connect"),
    )
    .await
    .expect("the second handshake ends");
    let outcome = match second {
        Ok(conn) => {
            // The server's refusal can arrive after the client's side of
            // the handshake completed: a stream must not work either.
            let echoed = match conn.open_bi().await {
                Ok((mut send, mut recv)) => {
                    let _ = send.write_all(b"ping").await;
                    let _ = send.finish();
                    recv.read_to_end(64).await.is_ok()
                }
                Err(_) => false,
            };
            if echoed {
                Ok(())
            } else {
                Err(darkport_transport::describe_connection_error(
                    &conn.closed().await,
                ))
            }
        }
        Err(e) => Err(darkport_transport::describe_connection_error(&e)),
    };
    let e = outcome.expect_err("an expired certificate must not get a working connection");
    assert!(
        e.contains("certificate has expired"),
        "the refusal names the expiry: {e}"
    );
    accepting.abort();
}

fn ca_der(ca: &Ca) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca pem")
}

#[cfg(unix)]
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(unix)]
#[tokio::test]
async fn private_keys_readable_by_others_are_refused_at_start() {
    let fx = Fixture::start().await.expect("fixture");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    Identity::load(&app).expect("a 0600 identity file loads");

    chmod(&app, 0o644);
    let e = Identity::load(&app).expect_err("a world-readable identity file");
    contains(&e, "chmod 600");
    contains(&e, &app.display().to_string());
    let e = edge_client::Client::from_identity_file(&app, edge_client::ClientOptions::default())
        .expect_err("the client refuses it at start");
    contains(&e, "chmod 600");
    chmod(&app, 0o640);
    contains(
        &Identity::load(&app).expect_err("group-readable"),
        "mode 0640",
    );

    let router = fx
        .enroll("router-2", Kind::Router, &[])
        .await
        .expect("enroll");
    chmod(&router, 0o604);
    let e = darkport_edge_router::RouterConfig::from_identity_file(
        router.clone(),
        "127.0.0.1:1".into(),
    )
    .expect_err("the router refuses it at start");
    contains(&e, "chmod 600");

    // The controller's CA key and token secret.
    for secret in [fx.data_dir.ca_key(), fx.data_dir.token_key()] {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = darkport_controller::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let data_dir = darkport_controller::DataDir::new(dir.path().join("ctl"));
        darkport_controller::init(
            &data_dir,
            &darkport_controller::InitOptions {
                advertise: socket.local_addr().unwrap().to_string(),
                cert_ttl: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .expect("init");
        let path = data_dir.root().join(secret.file_name().expect("name"));
        chmod(&path, 0o644);
        let e = darkport_controller::run(data_dir, socket, std::future::pending())
            .await
            .expect_err("the controller refuses an exposed secret");
        contains(&e, "chmod 600");
        contains(&e, &path.display().to_string());
    }
}

#[test]
fn write_private_file_never_replaces_an_existing_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("key");
    darkport_transport::identity::write_private_file(&path, b"first", false).expect("write");
    let e = darkport_transport::identity::write_private_file(&path, b"second", false)
        .expect_err("exists");
    contains(&e, "exists already");
    assert_eq!(std::fs::read(&path).expect("read"), b"first");
    // Nothing is left behind in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("key")]);
    darkport_transport::identity::write_private_file(&path, b"third", true).expect("overwrite");
    assert_eq!(std::fs::read(&path).expect("read"), b"third");
}

/// The controller address of `token`, and the configuration an enrolling
/// host uses for it (no certificate, the CA pinned by the token).
fn enrollment_config(token: &str) -> (String, quinn::ClientConfig) {
    let claims = darkport_proto::token::SignedToken::parse(token)
        .expect("token")
        .claims;
    let config = tls::client_config(
        None,
        Trust::Pinned(claims.ca_fingerprint.clone()),
        Kind::Controller,
        darkport_proto::ALPN_CONTROL,
    )
    .expect("config");
    (claims.controller, config)
}

/// Sends an enrollment request with the CSR `csr_der`.
async fn enroll_with_key(
    token: &str,
    csr_der: Vec<u8>,
) -> Result<darkport_proto::msg::ControlResponse, darkport_transport::control::ControlClientError> {
    let (controller, config) = enrollment_config(token);
    let body = darkport_proto::msg::ControlBody::Enroll(darkport_proto::msg::EnrollRequest {
        token: token.to_string(),
        csr_der,
    });
    darkport_transport::control::one_shot(&controller, config, body).await
}

fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec()
}

#[tokio::test]
async fn only_p256_csrs_are_signed_and_tokens_are_checked_first() {
    let fx = Fixture::start().await.expect("fixture");
    let token = fx
        .token("app-1", Kind::Client, &[], 3600)
        .await
        .expect("token");
    for (alg, what) in [
        (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
        (&rcgen::PKCS_ED25519, "Ed25519"),
    ] {
        let e = enroll_with_key(&token, csr(alg))
            .await
            .expect_err(&format!("a {what} CSR is refused"));
        contains(&e, "only ECDSA P-256 keys");
    }
    // Refused CSRs did not spend the token.
    let path = fx.dir.path().join("app-1.id");
    edge_client::enroll(&token, Kind::Client, &path)
        .await
        .expect("the token still works with a P-256 key");
    // A spent token costs no signature: it is refused before the CSR is
    // even parsed.
    let e = enroll_with_key(&token, b"not a csr".to_vec())
        .await
        .expect_err("spent token");
    contains(&e, "already used");
}

use darkport_proto::msg::{
    AdminRequest, AdminResponse, ControlBody, ControlErrorCode, ControlResponse,
};
use darkport_tests::{assert_eventually, echo_server, n};
use darkport_transport::control::{self, ControlClientError};
use edge_client::{Client, ClientOptions, DialError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn control_code(e: &ControlClientError) -> Option<ControlErrorCode> {
    match e {
        ControlClientError::Refused(c) => Some(c.code),
        _ => None,
    }
}

/// One echo round trip through `client`.
async fn echo_once(client: &Client) -> Result<(), DialError> {
    let mut s = client.dial("echo").await?;
    s.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await?;
    assert_eq!(&back, b"ping");
    Ok(())
}

/// A fixture with a second router, `router-2`, tuned by `tune`, an echo
/// service and a policy letting everyone dial it; `router-2`'s address.
async fn router_with_echo(
    tune: impl FnOnce(&mut darkport_edge_router::RouterConfig),
) -> (Fixture, std::net::SocketAddr) {
    let mut fx = Fixture::start().await.expect("fixture");
    let r2 = fx
        .enroll("router-2", Kind::Router, &[])
        .await
        .expect("enroll");
    let r2_addr = fx.start_router_with(&r2, tune).await.expect("router-2");
    let echo = echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("all", &["#all"], &["#all"])
        .await
        .expect("policy");
    (fx, r2_addr)
}

fn client_via(id: &std::path::Path, routers: Vec<String>) -> Client {
    Client::from_identity_file(
        id,
        ClientOptions {
            routers,
            ..darkport_tests::client_options()
        },
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_router_stops_serving_and_clients_move_to_another() {
    let mut fx = Fixture::start().await.expect("fixture");
    let r2 = fx
        .enroll("router-2", Kind::Router, &[])
        .await
        .expect("enroll");
    let r2_addr = fx.start_router(&r2).await.expect("router-2");
    let echo = echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("all", &["#all"], &["#all"])
        .await
        .expect("policy");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    // Pinned to router-1, as with --router.
    let pinned = client_via(&app, vec![fx.router_addr.to_string()]);
    // With the controller's router list: connected to both routers.
    let listed = client_via(&app, vec![]);
    echo_once(&pinned).await.expect("pinned client works");
    echo_once(&listed).await.expect("listed client works");
    assert_eventually!(
        listed.connections().len() == 2,
        Duration::from_secs(5),
        "the listed client connects to both routers"
    );
    // A live stream through router-1.
    let mut live = pinned.dial("echo").await.expect("dial");
    live.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    live.read_exact(&mut one).await.expect("echo");

    let revoked_at = tokio::time::Instant::now();
    fx.admin(AdminRequest::RevokeIdentity {
        name: n("router-1"),
    })
    .await
    .expect("revoke");
    // The live stream through router-1 ends.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(1), live.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "a stream through the revoked router ends within 1 s"
    );
    // The pinned client is refused, saying why, within 1 s.
    loop {
        match echo_once(&pinned).await {
            Err(DialError::RouterRevoked { reason, .. }) => {
                assert!(reason.contains("revoked"), "{reason}");
                break;
            }
            other => assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "the pinned client is refused within 1 s; still got {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The listed client goes on through router-2 only.
    for _ in 0..5 {
        echo_once(&listed)
            .await
            .expect("the listed client moves to router-2");
    }
    assert_eventually!(
        listed
            .connections()
            .iter()
            .all(|c| c.router == r2_addr.to_string()),
        Duration::from_secs(2),
        "the listed client keeps no connection to the revoked router"
    );
    // A new client pinned to router-1 is refused at once.
    let late = client_via(&app, vec![fx.router_addr.to_string()]);
    assert!(matches!(
        echo_once(&late).await,
        Err(DialError::RouterRevoked { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_over_its_stream_cap_is_refused_and_others_are_not() {
    let (fx, r2_addr) = router_with_echo(|c| c.limits.max_streams_per_identity = 4).await;
    let greedy = client_via(
        &fx.enroll("greedy", Kind::Client, &[])
            .await
            .expect("enroll"),
        vec![r2_addr.to_string()],
    );
    let modest = client_via(
        &fx.enroll("modest", Kind::Client, &[])
            .await
            .expect("enroll"),
        vec![r2_addr.to_string()],
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = greedy.dial("echo").await.expect("within the cap");
        s.write_all(b"a").await.expect("write");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.expect("echo");
        held.push(s);
    }
    match greedy.dial("echo").await {
        Err(DialError::LimitReached { message, .. }) => {
            assert!(message.contains("at most 4 per identity"), "{message}")
        }
        other => panic!("expected LimitReached, got {other:?}"),
    }
    for _ in 0..3 {
        echo_once(&modest)
            .await
            .expect("another identity is unaffected");
    }
    // A stream given back is a stream that can be dialed again.
    drop(held.pop());
    assert_eventually!(
        echo_once(&greedy).await.is_ok(),
        Duration::from_secs(2),
        "a freed slot is usable again"
    );
}

/// The streams one QUIC client connection may have open at once
/// (`--max-streams-per-connection`) are what quinn grants the client: past
/// them a dial waits for a stream to end, and gives up with LimitReached
/// after the dial timeout rather than waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_connection_cap_wait_then_are_refused() {
    let (fx, r2_addr) = router_with_echo(|c| c.limits.max_streams_per_connection = 2).await;
    let client = Client::from_identity_file(
        &fx.enroll("busy", Kind::Client, &[]).await.expect("enroll"),
        ClientOptions {
            routers: vec![r2_addr.to_string()],
            // The cap is QUIC's stream credit; HTTP/2 has its own.
            transport: darkport_transport::mux::TransportMode::Quic,
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    // A connection is granted `PENDING_STREAMS` (64) streams during its
    // handshake, before the router knows who it is; QUIC credit cannot be
    // taken back, so the cap holds from the 65th stream on.
    for _ in 0..=darkport_transport::endpoint::PENDING_STREAMS {
        echo_once(&client).await.expect("a short stream");
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = client.dial("echo").await.expect("within the cap");
        s.write_all(b"a").await.expect("write");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.expect("echo");
        held.push(s);
    }
    // A third waits for credit: freed by a stream that ends, it goes on.
    let client = std::sync::Arc::new(client);
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { echo_once(&client).await })
    };
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a stream that ended makes room")
        .expect("task")
        .expect("the waiting dial goes on");
    // With both held, one gives up after the dial timeout, with a reason.
    let mut s = client.dial("echo").await.expect("within the cap again");
    s.write_all(b"a").await.expect("write");
    held.push(s);
    let started = std::time::Instant::now();
    match client.dial("echo").await {
        Err(DialError::LimitReached { message, .. }) => {
            assert!(
                message.contains("--max-streams-per-connection"),
                "{message}"
            )
        }
        other => panic!("expected LimitReached, got {other:?}"),
    }
    assert!(
        started.elapsed() < edge_client::client::DIAL_TIMEOUT + Duration::from_secs(5),
        "gave up within the dial timeout"
    );
}

#[tokio::test]
async fn a_control_connection_held_across_revocation_is_refused_on_its_next_request() {
    let fx = Fixture::start().await.expect("fixture");
    let app = Identity::load(&fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll"))
        .expect("load");
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    let config = tls::controller_client_config(&app).expect("config");
    let conn = control::connect(&endpoint, &fx.controller_addr.to_string(), config)
        .await
        .expect("connect");
    let (first, _) = control::request(&conn, ControlBody::ListRouters)
        .await
        .expect("a current client may list routers");
    assert!(matches!(first, ControlResponse::Routers(_)));
    fx.admin(AdminRequest::RevokeIdentity { name: n("app-1") })
        .await
        .expect("revoke");
    let e = control::request(&conn, ControlBody::ListRouters)
        .await
        .expect_err("the same connection is refused now");
    assert_eq!(control_code(&e), Some(ControlErrorCode::Revoked), "{e}");
    contains(&e, "revoked");
}

#[tokio::test]
async fn a_bad_advertise_address_is_refused_and_router_lists_still_work() {
    let fx = Fixture::start().await.expect("fixture");
    let router = Identity::load(
        &fx.enroll("router-9", Kind::Router, &[])
            .await
            .expect("enroll"),
    )
    .expect("load");
    let huge = format!("{}:4433", "a".repeat(1024 * 1024));
    for advertise in [
        huge,
        "evil\u{1b}[31m.example:4433".to_string(),
        "a b:1".into(),
    ] {
        let config = tls::controller_client_config(&router).expect("config");
        let e = control::one_shot(
            &fx.controller_addr.to_string(),
            config,
            ControlBody::RouterSync { advertise },
        )
        .await
        .expect_err("refused");
        assert_eq!(control_code(&e), Some(ControlErrorCode::BadRequest), "{e}");
    }
    let app = Identity::load(&fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll"))
        .expect("load");
    let resp = control::one_shot(
        &fx.controller_addr.to_string(),
        tls::controller_client_config(&app).expect("config"),
        ControlBody::ListRouters,
    )
    .await
    .expect("ListRouters still works");
    let ControlResponse::Routers(list) = resp else {
        panic!("not a router list")
    };
    assert_eq!(list.len(), 1, "only the fixture's router is listed");
    assert_eq!(list[0].advertise, fx.router_addr.to_string());
}

/// Renews `identity`'s certificate for a fresh key, as the renewal task
/// does; returns the new identity, or the controller's refusal.
async fn renew_once(
    identity: &Identity,
    path: &std::path::Path,
) -> Result<Identity, ControlClientError> {
    match darkport_transport::renew::renew(identity, path).await {
        Ok(next) => Ok(next),
        Err(darkport_transport::renew::RenewError::Control(e)) => Err(e),
        Err(e) => panic!("renewal failed locally: {e}"),
    }
}

async fn router_snapshot_version(fx: &Fixture) -> Option<u64> {
    match fx.admin(AdminRequest::ListRouters).await.ok()? {
        AdminResponse::Routers(rs) => rs.first()?.snapshot_version,
        _ => None,
    }
}

#[tokio::test]
async fn a_renewal_loop_is_refused_after_the_limit_and_routers_see_only_what_it_allowed() {
    let fx = Fixture::start().await.expect("fixture");
    let path = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");
    let mut app = Identity::load(&path).expect("load");
    let rate = darkport_controller::server::renew_rate(3600);
    assert_eventually!(
        router_snapshot_version(&fx).await.is_some(),
        Duration::from_secs(5),
        "the router reports its snapshot"
    );
    let before = router_snapshot_version(&fx).await.unwrap_or(0);
    let mut renewed = 0;
    let mut refusal = None;
    for _ in 0..(rate.burst + 5) {
        match renew_once(&app, &path).await {
            Ok(next) => {
                renewed += 1;
                app = next;
            }
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    assert_eq!(renewed, rate.burst, "the burst is allowed, no more");
    let e = refusal.expect("a refusal");
    assert_eq!(control_code(&e), Some(ControlErrorCode::RateLimited), "{e}");
    contains(&e, "try again in");
    // Each renewal pushed one snapshot; the refused ones pushed none.
    let expected = before + u64::from(rate.burst);
    assert_eventually!(
        router_snapshot_version(&fx).await == Some(expected),
        Duration::from_secs(5),
        "the router reaches snapshot {expected}"
    );
    // And no late one: a client connected now is named only by a router
    // report sent after every renewal was answered; that report still
    // gives the same version.
    let client = fx.client(&path).expect("client");
    let _ = client.dial("no-such-service").await;
    assert!(!client.connections().is_empty(), "the client is connected");
    wait_until(
        "a router report naming app-1",
        Duration::from_secs(12),
        || async {
            matches!(
                fx.admin(AdminRequest::ShowIdentity { name: n("app-1") }).await,
                Ok(AdminResponse::Identity(i)) if !i.connected_to.is_empty()
            )
        },
    )
    .await;
    assert_eq!(router_snapshot_version(&fx).await, Some(expected));
}

#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_source_address() {
    let fx = Fixture::start().await.expect("fixture");
    let token = fx
        .token("app-1", Kind::Client, &[], 3600)
        .await
        .expect("token");
    // A bad CSR is refused (and spends nothing); it still counts as an
    // attempt. Sixty at once on one connection:
    let (controller, config) = enrollment_config(&token);
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    let conn = control::connect(&endpoint, &controller, config)
        .await
        .expect("connect");
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (conn, token) = (conn.clone(), token.clone());
        attempts.spawn(async move {
            let body = ControlBody::Enroll(darkport_proto::msg::EnrollRequest {
                token,
                csr_der: b"not a csr".to_vec(),
            });
            control::request(&conn, body).await.map(|(r, _)| r)
        });
    }
    let (mut limited, mut answered) = (0, 0);
    while let Some(r) = attempts.join_next().await {
        let e = r.expect("task").expect_err("a bad CSR");
        match control_code(&e) {
            Some(ControlErrorCode::RateLimited) => {
                contains(&e, "too many enrollment attempts from 127.0.0.1");
                limited += 1;
            }
            Some(ControlErrorCode::BadRequest) => answered += 1,
            other => panic!("unexpected answer {other:?}: {e}"),
        }
    }
    let burst = darkport_controller::server::ENROLL_RATE.burst as usize;
    assert!(limited > 0, "some attempts are rate limited");
    assert!(answered >= burst, "the burst is answered ({answered})");
    // The limit is per address and refills: a little later the real token
    // still works.
    assert_eventually!(
        edge_client::enroll(&token, Kind::Client, &fx.dir.path().join("app-1.id"))
            .await
            .is_ok(),
        Duration::from_secs(3),
        "a real enrollment succeeds once the bucket refills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_cut_off_longer_than_the_policy_age_refuses_new_dials() {
    use darkport_tests::{controller_process_with_echo, enroll_at, run_router_at};
    const NODE: &str = env!("CARGO_BIN_EXE_darkport-test-node");
    let (dir, dd, _, mut ctl) = controller_process_with_echo(NODE).await;
    let router_id = enroll_at(&dd, dir.path(), "router-1", Kind::Router, &[])
        .await
        .expect("router");
    let (router_addr, router) = run_router_at(
        &dd,
        &router_id,
        "127.0.0.1:0".parse().unwrap(),
        |c| {
            // From the certificate lifetime by default.
            assert_eq!(c.limits.max_policy_age, Some(Duration::from_secs(3600)));
            c.limits.max_policy_age = Some(Duration::from_secs(2));
        },
        std::future::pending(),
    )
    .await
    .expect("router");
    let app = enroll_at(&dd, dir.path(), "app-1", Kind::Client, &[])
        .await
        .expect("app");
    let client = client_via(&app, vec![router_addr.to_string()]);
    assert_eventually!(
        echo_once(&client).await.is_ok(),
        Duration::from_secs(5),
        "the router serves while its controller is up"
    );
    // Live for longer than the age limit: a synced router's policy is
    // current however long ago the last snapshot came. This sleep is the
    // subject, not a wait: the router measures the policy's age on its
    // own clock, so only real time passing beyond the limit shows it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    echo_once(&client).await.expect("still served");
    let mut live = client
        .dial("echo")
        .await
        .expect("a stream opened before the cut");

    ctl.kill9();
    let cut = tokio::time::Instant::now();
    let message = loop {
        match echo_once(&client).await {
            Err(DialError::NotReady(m)) => break m,
            other => assert!(
                cut.elapsed() < Duration::from_secs(25),
                "no refusal {:?} after the controller died; last: {other:?}",
                cut.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        message.contains("has not heard from its controller"),
        "{message}"
    );
    assert!(message.contains("--max-policy-age"), "{message}");
    // A stream opened before goes on.
    live.write_all(b"still").await.expect("write");
    let mut back = [0u8; 5];
    live.read_exact(&mut back)
        .await
        .expect("the old stream still carries");
    assert_eq!(&back, b"still");
    router.abort();
}
