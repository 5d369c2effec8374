//! Negative tests: every check refuses what it must, with a clear error.

use std::time::Duration;

use darkport_proto::codec::{encode_frame, read_frame, MAX_DIAL_FRAME};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, ControlBody, DialResponse, DialStatus, EnrollRequest};
use darkport_proto::token::SignedToken;
use darkport_proto::{ALPN_CONTROL, ALPN_DATA, ALPN_DATA_TCP};
use darkport_tests::{n, Fixture};
use darkport_transport::identity::Identity;
use darkport_transport::tls::{self, ClientAuth, Trust};
use edge_client::{Client, ClientOptions, DialError, EnrollError};

fn contains(err: &dyn std::fmt::Display, needle: &str) {
    let text = err.to_string();
    assert!(
        text.contains(needle),
        "error {text:?} should mention {needle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use_expire_and_cannot_be_altered() {
    let fx = Fixture::start().await.expect("fixture");
    let dir = fx.dir.path();

    // Reused token.
    let token = fx
        .token("app-1", Kind::Client, &[], 3600)
        .await
        .expect("token");
    edge_client::enroll(&token, Kind::Client, &dir.join("a.id"))
        .await
        .expect("first use");
    let err = edge_client::enroll(&token, Kind::Client, &dir.join("b.id"))
        .await
        .expect_err("second use");
    contains(&err, "already used");
    assert!(!dir.join("b.id").exists(), "no identity file on failure");

    // Tampered token: claims changed, MAC kept.
    let token = fx
        .token("app-2", Kind::Client, &[], 3600)
        .await
        .expect("token");
    let mut t = SignedToken::parse(&token).expect("parse");
    t.claims.identity = n("app-1");
    let tampered = t.encode().expect("encode");
    let err = edge_client::enroll(&tampered, Kind::Client, &dir.join("c.id"))
        .await
        .expect_err("tampered");
    contains(&err, "signature is invalid");
    // Kind escalation through tampering fails too.
    let mut t = SignedToken::parse(&token).expect("parse");
    t.claims.kind = Kind::Router;
    let err = edge_client::enroll(
        &t.encode().expect("encode"),
        Kind::Router,
        &dir.join("d.id"),
    )
    .await
    .expect_err("tampered kind");
    contains(&err, "signature is invalid");
    // The untouched token still works once.
    edge_client::enroll(&token, Kind::Client, &dir.join("e.id"))
        .await
        .expect("untampered");

    // An identity file that cannot be written does not spend the token.
    let token = fx
        .token("app-5", Kind::Client, &[], 3600)
        .await
        .expect("token");
    let err = edge_client::enroll(&token, Kind::Client, &dir.join("missing-dir").join("h.id"))
        .await
        .expect_err("unwritable path");
    contains(&err, "missing-dir");
    edge_client::enroll(&token, Kind::Client, &dir.join("h.id"))
        .await
        .expect("token still valid");

    // Deleting an identity voids its unused tokens, even if the name is
    // created again.
    let old = fx
        .token("app-6", Kind::Client, &[], 3600)
        .await
        .expect("token");
    fx.admin(AdminRequest::DeleteIdentity { name: n("app-6") })
        .await
        .expect("delete");
    let _new = fx
        .token("app-6", Kind::Client, &[], 3600)
        .await
        .expect("token");
    let err = edge_client::enroll(&old, Kind::Client, &dir.join("i.id"))
        .await
        .expect_err("stale token");
    contains(&err, "unknown to this controller");

    // Wrong program for the token's kind.
    let token = fx
        .token("app-3", Kind::Client, &[], 3600)
        .await
        .expect("token");
    let err = edge_client::enroll(&token, Kind::Router, &dir.join("f.id"))
        .await
        .expect_err("kind");
    assert!(matches!(err, EnrollError::WrongKind { .. }), "{err}");

    // Expired token: refused locally, and by the controller if sent anyway.
    let token = fx
        .token("app-4", Kind::Client, &[], 1)
        .await
        .expect("token");
    let expires = SignedToken::parse(&token).expect("parse").claims.expires_at;
    while darkport_transport::unix_now() < expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = edge_client::enroll(&token, Kind::Client, &dir.join("g.id"))
        .await
        .expect_err("expired");
    contains(&err, "expired at");
    contains(&err, "darkport-controller identity create");
    let claims = SignedToken::parse(&token).expect("parse").claims;
    let config = tls::client_config(
        None,
        Trust::Pinned(claims.ca_fingerprint),
        Kind::Controller,
        ALPN_CONTROL,
    )
    .expect("config");
    let body = ControlBody::Enroll(EnrollRequest {
        token,
        csr_der: vec![1, 2, 3],
    });
    let err = darkport_transport::control::one_shot(&claims.controller, config, body)
        .await
        .expect_err("controller refuses expired");
    contains(&err, "expired at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ca_is_refused_everywhere() {
    let a = Fixture::start().await.expect("fixture a");
    let b = Fixture::start().await.expect("fixture b");

    // A token of A redirected to controller B: B's CA does not match the pin.
    let token = a
        .token("app-1", Kind::Client, &[], 3600)
        .await
        .expect("token");
    let mut t = SignedToken::parse(&token).expect("parse");
    t.claims.controller = b.controller_addr.to_string();
    let err = edge_client::enroll(
        &t.encode().expect("encode"),
        Kind::Client,
        &a.dir.path().join("x.id"),
    )
    .await
    .expect_err("pinned CA mismatch");
    contains(&err, "does not match the CA fingerprint");

    // A client certificate from B's CA at A's router.
    let echo = darkport_tests::echo_server().await.expect("echo");
    a.service("echo", echo).await.expect("service");
    a.policy("p", &["echo"], &["#all"]).await.expect("policy");
    let b_id = b
        .enroll("app-1", Kind::Client, &[])
        .await
        .expect("enroll at b");
    let mut b_identity = Identity::load(&b_id).expect("load");
    // Trust A's CA for the router so the failure is A refusing B's client cert.
    let a_ca = Identity::load(&a.data_dir.admin_identity())
        .expect("admin")
        .ca;
    b_identity.ca = a_ca;
    let client = Client::new(
        b_identity,
        ClientOptions {
            routers: vec![a.router_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let err = client.dial("echo").await.expect_err("foreign client cert");
    assert!(matches!(err, DialError::Router { .. }), "{err}");
    eprintln!("foreign client certificate: {err}");
    contains(&err, "not issued by the peer's Darkport CA");

    // B's client trusting B's CA does not accept A's router.
    let client = Client::new(
        Identity::load(&b_id).expect("load"),
        ClientOptions {
            routers: vec![a.router_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let err = client.dial("echo").await.expect_err("foreign router");
    contains(&err, "UnknownIssuer");
    contains(&err, "not issued by this Darkport CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_must_be_of_the_right_kind() {
    let fx = Fixture::start().await.expect("fixture");
    let echo = darkport_tests::echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("p", &["echo"], &["#all"]).await.expect("policy");
    let app = fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll");

    // A router certificate used as a client.
    let router_id = fx.dir.path().join("router-1.id");
    let client = Client::from_identity_file(
        &router_id,
        ClientOptions {
            routers: vec![fx.router_addr.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let err = client.dial("echo").await.expect_err("router as client");
    contains(&err, "router identities cannot dial services");

    // A client certificate posing as a router: refused by the client.
    let fake = serve_as_router(&Identity::load(&app).expect("load")).await;
    let client = fx.client(&app).expect("client");
    let client2 = Client::new(
        Identity::load(&app).expect("load"),
        ClientOptions {
            routers: vec![fake.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let err = client2
        .dial("echo")
        .await
        .expect_err("client posing as router");
    eprintln!("client posing as router: {err}");
    assert!(matches!(err, DialError::Router { .. }), "{err}");
    // The controller's own certificate is a server certificate but not a
    // router's: refused by the identity check.
    let ctl = Identity::load(&fx.data_dir.controller_identity()).expect("controller id");
    let fake = serve_as_router(&ctl).await;
    let client3 = Client::new(
        Identity::load(&app).expect("load"),
        ClientOptions {
            routers: vec![fake.to_string()],
            ..darkport_tests::client_options()
        },
    )
    .expect("client");
    let err = client3
        .dial("echo")
        .await
        .expect_err("controller posing as router");
    contains(&err, "names controller identity");
    // The real router still works for this client.
    client.dial("echo").await.expect("real router");
}

/// A QUIC server on the data-plane ALPN with someone else's identity, and
/// a TLS over TCP one on the same port.
async fn serve_as_router(identity: &Identity) -> std::net::SocketAddr {
    let config =
        tls::server_config(identity, ClientAuth::Required, ALPN_DATA).expect("server config");
    let (socket, tcp) =
        darkport_transport::endpoint::bind_udp_and_tcp("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
    let endpoint = darkport_transport::endpoint::server(socket, config).expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    let tls = tls::rustls_server_config(identity, ClientAuth::Required, ALPN_DATA_TCP)
        .expect("TCP server config");
    let acceptor = darkport_transport::mux::TlsAcceptor::from(std::sync::Arc::new(tls));
    tcp.set_nonblocking(true).expect("nonblocking");
    let tcp = tokio::net::TcpListener::from_std(tcp).expect("listener");
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(conn) = darkport_transport::mux::accept_tcp(stream, acceptor).await {
                    let _ = conn.closed().await;
                }
            });
        }
    });
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = conn.closed().await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_are_refused_with_typed_reasons() {
    let fx = Fixture::start().await.expect("fixture");
    let echo = darkport_tests::echo_server().await.expect("echo");
    fx.service("echo", echo).await.expect("service");
    fx.policy("p", &["echo"], &["#writers"])
        .await
        .expect("policy");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    fx.service("down", closed).await.expect("service");
    fx.policy("p2", &["down"], &["#writers"])
        .await
        .expect("policy");
    let writer = fx
        .enroll("app-1", Kind::Client, &["writers"])
        .await
        .expect("enroll");
    let outsider = fx.enroll("app-2", Kind::Client, &[]).await.expect("enroll");

    let c = fx.client(&outsider).expect("client");
    let err = c.dial("echo").await.expect_err("no policy");
    assert!(matches!(err, DialError::NotAuthorized { .. }), "{err}");
    contains(&err, "no service policy allows it");
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::PermissionDenied
    );

    let c = fx.client(&writer).expect("client");
    let err = c.dial("nope").await.expect_err("unknown service");
    assert!(matches!(err, DialError::UnknownService { .. }), "{err}");
    let err = c.dial("down").await.expect_err("service down");
    assert!(matches!(err, DialError::ServiceUnreachable { .. }), "{err}");
    contains(&err, &closed.to_string());
    c.dial("echo").await.expect("allowed");

    // Deleted identity: its certificate still chains to the CA, but the
    // router no longer knows it.
    fx.admin(AdminRequest::DeleteIdentity { name: n("app-1") })
        .await
        .expect("delete");
    darkport_tests::assert_eventually!(
        matches!(c.dial("echo").await, Err(DialError::IdentityRefused { .. })),
        Duration::from_secs(1),
        "deleted identity still allowed after 1 s"
    );
    let err = c.dial("echo").await.expect_err("deleted");
    contains(&err, "not known to the controller");
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::PermissionDenied
    );
    // And the controller refuses its certificate too.
    let c2 = Client::from_identity_file(&writer, darkport_tests::client_options()).expect("client");
    let err = c2
        .routers()
        .await
        .expect_err("deleted identity at controller");
    contains(&err, "not known to this controller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_first_messages_are_refused() {
    let fx = Fixture::start().await.expect("fixture");
    let id = Identity::load(&fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll"))
        .expect("load");
    let config = tls::client_config(Some(&id), Trust::Ca(id.ca.clone()), Kind::Router, ALPN_DATA)
        .expect("config");
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    let conn = endpoint
        .connect_with(config, fx.router_addr, "router")
        .expect("connect")
        .await
        .expect("handshake");

    let cases: Vec<(Vec<u8>, &str)> = vec![
        // A frame whose body is not a DialRequest.
        (
            {
                let mut f = 5u32.to_be_bytes().to_vec();
                f.extend_from_slice(b"\xff\xff\xff\xff\xff");
                f
            },
            "malformed",
        ),
        // Valid request followed by trailing bytes inside the frame.
        (
            {
                let mut body =
                    darkport_proto::codec::to_bytes(&darkport_proto::msg::DialRequest::new("x"))
                        .expect("enc");
                body.extend_from_slice(b"junk");
                let mut f = (body.len() as u32).to_be_bytes().to_vec();
                f.extend_from_slice(&body);
                f
            },
            "trailing bytes",
        ),
        // A header announcing 1 MiB.
        ((1024u32 * 1024).to_be_bytes().to_vec(), "exceeds the limit"),
        // Wrong version.
        (
            encode_frame(
                &darkport_proto::msg::DialRequest {
                    version: 99,
                    service: "x".into(),
                },
                MAX_DIAL_FRAME,
            )
            .expect("enc"),
            "version 99",
        ),
    ];
    for (bytes, needle) in cases {
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&bytes).await.expect("write");
        let resp: DialResponse = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(&mut recv, MAX_DIAL_FRAME),
        )
        .await
        .expect("answer within 10 s")
        .expect("answer");
        assert_eq!(resp.status, DialStatus::BadRequest, "{needle}: {resp:?}");
        assert!(resp.message.contains(needle), "{needle}: {resp:?}");
    }
    // The connection is still usable after bad streams.
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(
        &encode_frame(
            &darkport_proto::msg::DialRequest::new("nope"),
            MAX_DIAL_FRAME,
        )
        .expect("enc"),
    )
    .await
    .expect("write");
    let resp: DialResponse = read_frame(&mut recv, MAX_DIAL_FRAME).await.expect("answer");
    assert_eq!(resp.status, DialStatus::UnknownService);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_admin_identity() {
    let fx = Fixture::start().await.expect("fixture");
    let app = Identity::load(&fx.enroll("app-1", Kind::Client, &[]).await.expect("enroll"))
        .expect("load");
    let config = tls::client_config(
        Some(&app),
        Trust::Ca(app.ca.clone()),
        Kind::Controller,
        ALPN_CONTROL,
    )
    .expect("config");
    let err = darkport_transport::control::one_shot(
        &fx.controller_addr.to_string(),
        config,
        ControlBody::Admin(AdminRequest::ListIdentities),
    )
    .await
    .expect_err("client identity doing admin");
    contains(&err, "may not make a admin request");
    // Without any certificate.
    let config = tls::client_config(
        None,
        Trust::Ca(app.ca.clone()),
        Kind::Controller,
        ALPN_CONTROL,
    )
    .expect("config");
    let err = darkport_transport::control::one_shot(
        &fx.controller_addr.to_string(),
        config,
        ControlBody::Admin(AdminRequest::ListIdentities),
    )
    .await
    .expect_err("anonymous admin");
    contains(&err, "without a certificate");
}

/// Bytes an app sends before the router has answered (they travel behind
/// the dial request) never reach a service the identity may not dial: the
/// router refuses before it connects, and drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_of_a_refused_dial_never_reach_the_service() {
    let mut fx = Fixture::start().await.expect("fixture");
    let tripwire = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    fx.service("guarded", tripwire.local_addr().expect("addr"))
        .await
        .expect("service");
    fx.policy("p", &["guarded"], &["#admins"])
        .await
        .expect("policy");
    let outsider = fx.enroll("app-2", Kind::Client, &[]).await.expect("enroll");
    let client = fx.client(&outsider).expect("client");

    // Through the SDK.
    let mut early = &b"DROP TABLE logs;"[..];
    let err = client
        .dial_from("guarded", &mut early)
        .await
        .expect_err("not authorized");
    assert!(matches!(err, DialError::NotAuthorized { .. }), "{err}");

    // Through the forwarder: the app writes at once, then sees a reset.
    let fwd = fx.forward(client, "guarded").await.expect("forward");
    match tokio::net::TcpStream::connect(fwd).await {
        Ok(mut app) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // The write may already meet the reset if the router was quick.
            let _ = app.write_all(b"DROP TABLE logs;").await;
            let mut buf = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut buf))
                .await
                .expect("refused connection ends within 5 s");
            assert!(
                ended.is_err() && buf.is_empty(),
                "a refused connection must end with a reset and no data: {ended:?} {buf:?}"
            );
        }
        // So quick that the reset arrived before `connect` returned (the
        // socket's pending error is read there): the same outcome, a reset
        // and no data.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connect: {e}"),
    }

    assert!(
        tokio::time::timeout(Duration::from_millis(500), tripwire.accept())
            .await
            .is_err(),
        "the guarded service was connected to"
    );
}

/// TLS over TCP: a client with a valid certificate that offers no ALPN is
/// closed after the TLS handshake (rustls alone would let it on to HTTP/2);
/// the same client offering `darkport-tcp/1` gets the server's HTTP/2
/// SETTINGS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_clients_must_offer_the_darkport_alpn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::start().await.expect("fixture");
    let id_path = fx.enroll("app-1", Kind::Client, &[]).await.expect("app");
    let identity = Identity::load(&id_path).expect("identity");
    let ca = identity.ca.clone();
    for offer in [false, true] {
        let mut config = tls::rustls_client_config(
            Some(&identity),
            Trust::Ca(ca.clone()),
            Kind::Router,
            ALPN_DATA_TCP,
        )
        .expect("config");
        if !offer {
            config.alpn_protocols.clear();
        }
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(fx.router_addr)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("darkport-router").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        // The HTTP/2 client preface and an empty SETTINGS frame.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("preface");
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("an answer or a close within 5 s");
        match (offer, got) {
            (true, Ok(n)) => assert!(n >= 9 && buf[3] == 4, "SETTINGS expected: {:?}", &buf[..n]),
            (true, Err(e)) => panic!("with the ALPN: {e}"),
            (false, Ok(0) | Err(_)) => {}
            (false, Ok(n)) => panic!("served without ALPN: {:?}", &buf[..n]),
        }
    }
}
