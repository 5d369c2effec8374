//! Hosting at the wire: a hoster written against docs/protocol.md
//! section 4.4 (raw QUIC streams, no SDK), so each router rule is checked
//! on its own: bind policies, offers, terminators winning over the
//! address, cuts when a bind policy narrows, failover past a terminator
//! that does not answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{
    AdminRequest, AdminResponse, DialRequest, DialResponse, DialStatus, HostRequest, HostResponse,
    HostedService, Incoming, Precedence, HOST_STREAM, MAX_HOST_FRAME, OFFER_STREAM,
};
use darkport_proto::ALPN_DATA;
use darkport_tests::{
    echo_server, echo_through, hosting_setup, n, payload, sha256, wait_until, Fixture,
};
use darkport_transport::identity::Identity;
use darkport_transport::tls::{self, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hoster connection made by hand.
async fn connect(fx: &Fixture, identity: &std::path::Path) -> quinn::Connection {
    let id = Identity::load(identity).expect("load");
    let config = tls::client_config(Some(&id), Trust::Ca(id.ca.clone()), Kind::Router, ALPN_DATA)
        .expect("config");
    let endpoint = darkport_transport::endpoint::client(None).expect("endpoint");
    endpoint
        .connect_with(config, fx.router_addr, "router")
        .expect("connect")
        .await
        .expect("handshake")
}

/// Opens a stream with a dial request for `service` (a reserved name).
async fn open(conn: &quinn::Connection, service: &str) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    write_frame(&mut send, &DialRequest::new(service), MAX_DIAL_FRAME)
        .await
        .expect("request");
    (send, recv)
}

/// A host stream registering `services` (cost 0, default precedence):
/// the stream and the router's first verdicts.
async fn host(
    conn: &quinn::Connection,
    services: &[(&str, u16)],
) -> (quinn::SendStream, quinn::RecvStream, HostResponse) {
    let (mut send, mut recv) = open(conn, HOST_STREAM).await;
    let ok: DialResponse = read_frame(&mut recv, MAX_DIAL_FRAME).await.expect("answer");
    assert_eq!(ok.status, DialStatus::Ok, "{ok:?}");
    let req = HostRequest {
        instance: "raw-1".into(),
        services: services
            .iter()
            .map(|(name, cost)| HostedService {
                name: name.to_string(),
                cost: *cost,
                precedence: Precedence::Default,
            })
            .collect(),
    };
    write_frame(&mut send, &req, MAX_HOST_FRAME)
        .await
        .expect("host request");
    let resp: HostResponse = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut recv, MAX_HOST_FRAME),
    )
    .await
    .expect("verdicts within 10 s")
    .expect("verdicts");
    (send, recv, resp)
}

/// Serves offers of `conn` forever: each `Incoming` is connected to
/// `target` and spliced; the `Incoming`s go to `seen`.
fn serve_offers(
    conn: quinn::Connection,
    target: SocketAddr,
    offers: usize,
    seen: tokio::sync::mpsc::UnboundedSender<Incoming>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..offers {
            let (conn, seen) = (conn.clone(), seen.clone());
            tasks.spawn(async move {
                loop {
                    let (mut send, mut recv) = open(&conn, OFFER_STREAM).await;
                    let Ok(incoming) = read_frame::<_, Incoming>(&mut recv, MAX_DIAL_FRAME).await
                    else {
                        return;
                    };
                    let _ = seen.send(incoming);
                    let tcp = tokio::net::TcpStream::connect(target)
                        .await
                        .expect("service");
                    let ok = DialResponse {
                        status: DialStatus::Ok,
                        message: String::new(),
                    };
                    write_frame(&mut send, &ok, MAX_DIAL_FRAME)
                        .await
                        .expect("ok");
                    tokio::spawn(async move {
                        let (mut r, mut w) = tcp.into_split();
                        let up = async {
                            let _ = tokio::io::copy(&mut recv, &mut w).await;
                            let _ = w.shutdown().await;
                        };
                        let down = async {
                            let _ = tokio::io::copy(&mut r, &mut send).await;
                            let _ = send.finish();
                        };
                        tokio::join!(up, down);
                    });
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_service_is_reached_through_its_terminator_byte_exact_with_the_callers_identity() {
    let (fx, app, hoster) = hosting_setup().await;
    let echo = echo_server().await.expect("echo");
    let conn = connect(&fx, &hoster).await;
    let (_hs, _hr, verdicts) = host(&conn, &[("echo-h", 0)]).await;
    assert_eq!(verdicts.verdicts.len(), 1);
    assert_eq!(verdicts.verdicts[0].status, DialStatus::Ok, "{verdicts:?}");
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _offers = serve_offers(conn.clone(), echo, 2, tx);
    // The controller lists the terminator (router reports).
    wait_until(
        "service show lists the terminator",
        Duration::from_secs(10),
        || async {
            match fx
                .admin(AdminRequest::ShowService { name: n("echo-h") })
                .await
            {
                Ok(AdminResponse::Service(d)) => d.terminators.iter().any(|t| {
                    t.hoster == n("host-1") && t.router == n("router-1") && t.instance == "raw-1"
                }),
                _ => false,
            }
        },
    )
    .await;

    let client = fx.client(&app).expect("client");
    let data = payload(3 << 20, 21);
    let back = echo_through(&client, "echo-h", &data).await;
    // The service's address is dead: only the terminator could carry it.
    assert_eq!(sha256(&back), sha256(&data));
    let incoming = seen.recv().await.expect("incoming");
    assert_eq!(incoming.service, "echo-h");
    assert_eq!(incoming.caller, n("app-1"));
    assert_eq!(incoming.caller_roles, vec![n("writers")]);
    assert_eq!(incoming.router, n("router-1"));
    assert!(incoming.caller_address.parse::<SocketAddr>().is_ok());

    // Several at once, each byte-exact.
    let mut all = tokio::task::JoinSet::new();
    for i in 0..6u64 {
        let client = client.clone();
        all.spawn(async move {
            let data = payload(200_000 + i as usize * 7, 100 + i);
            let back = echo_through(&client, "echo-h", &data).await;
            assert_eq!(sha256(&back), sha256(&data), "stream {i}");
        });
    }
    while let Some(r) = all.join_next().await {
        r.expect("stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosting_needs_a_bind_policy_and_offers_need_a_host_stream() {
    let (fx, app, _hoster) = hosting_setup().await;
    // app-1 may dial echo-h, but no bind policy lets it host it.
    let conn = connect(&fx, &app).await;
    let (mut send, mut recv) = open(&conn, OFFER_STREAM).await;
    let refused: DialResponse = read_frame(&mut recv, MAX_DIAL_FRAME).await.expect("answer");
    assert_eq!(refused.status, DialStatus::BadRequest, "{refused:?}");
    assert!(refused.message.contains("host stream"), "{refused:?}");
    let _ = send.finish();

    let (_s, _r, verdicts) = host(&conn, &[("echo-h", 0), ("nope", 0)]).await;
    let v = &verdicts.verdicts;
    assert_eq!(v[0].status, DialStatus::NotAuthorized, "{v:?}");
    assert!(v[0].message.contains("bind policy"), "{v:?}");
    assert_eq!(v[1].status, DialStatus::UnknownService, "{v:?}");
    // A second host stream on the same connection is refused.
    let (_s2, mut r2) = open(&conn, HOST_STREAM).await;
    let second: DialResponse = read_frame(&mut r2, MAX_DIAL_FRAME).await.expect("answer");
    assert_eq!(second.status, DialStatus::BadRequest, "{second:?}");

    // With no terminator, the dial goes to the (dead) address.
    let client = fx.client(&app).expect("client");
    let err = client.dial("echo-h").await.expect_err("no terminator");
    assert!(
        err.to_string().contains("cannot reach service echo-h"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_the_bind_policy_cuts_hosted_streams_within_a_second() {
    let (fx, app, hoster) = hosting_setup().await;
    let echo = echo_server().await.expect("echo");
    let conn = connect(&fx, &hoster).await;
    let (_hs, mut hr, _) = host(&conn, &[("echo-h", 0)]).await;
    let (tx, _seen) = tokio::sync::mpsc::unbounded_channel();
    let _offers = serve_offers(conn.clone(), echo, 2, tx);
    let client = fx.client(&app).expect("client");
    let mut open_stream = client.dial("echo-h").await.expect("dial");
    open_stream.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    open_stream.read_exact(&mut buf).await.expect("echo");

    let started = Instant::now();
    fx.admin(AdminRequest::DeletePolicy { name: n("hosts") })
        .await
        .expect("delete bind policy");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), open_stream.read_to_end(&mut rest))
        .await
        .expect("cut within 5 s");
    let took = started.elapsed();
    assert!(end.is_err(), "a cut is a reset, not a clean end: {end:?}");
    assert!(took < Duration::from_secs(1), "cut after {took:?}");
    // The hoster is told, unasked.
    let told: HostResponse =
        tokio::time::timeout(Duration::from_secs(5), read_frame(&mut hr, MAX_HOST_FRAME))
            .await
            .expect("told within 5 s")
            .expect("verdicts");
    assert_eq!(
        told.verdicts[0].status,
        DialStatus::NotAuthorized,
        "{told:?}"
    );
    // New dials no longer reach it.
    assert!(client.dial("echo-h").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminator_that_does_not_answer_is_passed_over_before_the_client_sees_an_error() {
    let (fx, app, hoster) = hosting_setup().await;
    let echo = echo_server().await.expect("echo");
    // The preferred terminator (cost 0) takes offers and never answers.
    let stalled = connect(&fx, &hoster).await;
    let (_s1, _r1, v) = host(&stalled, &[("echo-h", 0)]).await;
    assert_eq!(v.verdicts[0].status, DialStatus::Ok);
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(open(&stalled, OFFER_STREAM).await);
    }
    // A second instance of the same hoster, more expensive, that works.
    let good = connect(&fx, &hoster).await;
    let (_s2, _r2, v) = host(&good, &[("echo-h", 5000)]).await;
    assert_eq!(v.verdicts[0].status, DialStatus::Ok);
    let (tx, _seen) = tokio::sync::mpsc::unbounded_channel();
    let _offers = serve_offers(good.clone(), echo, 2, tx);

    let client = fx.client(&app).expect("client");
    let data = payload(100_000, 5);
    let started = Instant::now();
    let back = echo_through(&client, "echo-h", &data).await;
    assert_eq!(sha256(&back), sha256(&data));
    let first = started.elapsed();
    assert!(
        first >= Duration::from_secs(5),
        "the stalled terminator was tried first: {first:?}"
    );
    // Now suspect: the next dials go straight to the good one.
    let started = Instant::now();
    for i in 0..5 {
        let data = payload(10_000, i);
        assert_eq!(
            sha256(&echo_through(&client, "echo-h", &data).await),
            sha256(&data)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "suspect terminator skipped"
    );
    drop(idle);
}
