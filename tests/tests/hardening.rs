//! Hardening: what a peer on the network, or a careless file mode, must
//! not be able to do (issue 8). Real processes or real library entry
//! points, real QUIC, real certificates.

use std::time::Duration;

use darkport_controller::ca::Ca;
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::ALPN_DATA;
use darkport_tests::{init_logging, Fixture};
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
    tokio::time::sleep(Duration::from_millis(100)).await;
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

/// Sends an enrollment request with a CSR made from `key`.
async fn enroll_with_key(
    token: &str,
    csr_der: Vec<u8>,
) -> Result<darkport_proto::msg::ControlResponse, darkport_transport::control::ControlClientError> {
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
    let body = darkport_proto::msg::ControlBody::Enroll(darkport_proto::msg::EnrollRequest {
        token: token.to_string(),
        csr_der,
    });
    darkport_transport::control::one_shot(&claims.controller, config, body).await
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
