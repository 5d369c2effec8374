//! What one TCP (HTTP/2) connection may hold queued to send, against a
//! hostile peer: one that grants the largest HTTP/2 windows there are
//! (2^31-1 per stream and for the connection) and then stops reading its
//! socket. h2 alone would queue up to 1 MiB per stream for it; the
//! connection's send queue (`mux::SEND_QUEUE`, as QUIC's send window)
//! holds writers back instead, and lets them go on once the peer reads.
//!
//! The peer is written with h2 directly over tokio-rustls, with a client
//! certificate from a CA made here; the server side is the router's
//! `accept_tcp`. Real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use darkport_proto::codes::StreamCode;
use darkport_proto::identity::{identity_uri, IdentityName, Kind};
use darkport_proto::ALPN_DATA_TCP;
use darkport_transport::identity::Identity;
use darkport_transport::mux::{
    accept_tcp, Conn, SendHalf, TlsAcceptor, ACCEPT_QUEUE, MAX_REFUSED_STREAMS, SEND_QUEUE,
};
use darkport_transport::tls::{rustls_client_config, rustls_server_config, ClientAuth, Trust};

const MIB: u64 = 1024 * 1024;
/// The largest HTTP/2 window (RFC 9113 §6.9.1).
const HUGE_WINDOW: u32 = (1 << 31) - 1;
/// What a writer hands the connection at a time.
const CHUNK: usize = 64 * 1024;

/// A CA, and identities it issued for a router and a client.
fn identities() -> (Identity, Identity) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let ca = CertificateDer::from(ca_cert.der().to_vec());
    let issuer = Issuer::new(ca_params, ca_key);
    let issue = |kind: Kind, name: &str| {
        let name = IdentityName::new(name).expect("name");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity_uri(kind, &name).try_into().expect("URI"),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        Identity {
            name,
            kind,
            controller: "127.0.0.1:1".into(),
            chain: vec![CertificateDer::from(cert.der().to_vec()), ca.clone()],
            ca: ca.clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    };
    (
        issue(Kind::Router, "router-1"),
        issue(Kind::Client, "hostile"),
    )
}

/// A client that grants the largest windows and can stop reading.
struct Hostile {
    requests: h2::client::SendRequest<Bytes>,
    /// Stops driving the connection: nothing more is read (or written).
    pause: Option<oneshot::Sender<()>>,
    /// Drives it again.
    resume: Option<oneshot::Sender<()>>,
    driver: JoinHandle<Result<(), h2::Error>>,
}

impl Hostile {
    async fn connect(addr: SocketAddr, id: &Identity) -> Hostile {
        let tls = rustls_client_config(
            Some(id),
            Trust::Ca(id.ca.clone()),
            Kind::Router,
            ALPN_DATA_TCP,
        )
        .expect("client TLS configuration");
        let socket = TcpSocket::new_v4().expect("socket");
        // A small receive buffer: what the kernel takes for a peer that
        // does not read is small next to what is measured.
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("router").expect("server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (requests, connection) = h2::client::Builder::new()
            .initial_window_size(HUGE_WINDOW)
            .initial_connection_window_size(HUGE_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
            .expect("HTTP/2 handshake");
        let (pause, paused) = oneshot::channel::<()>();
        let (resume, resumed) = oneshot::channel::<()>();
        let driver = tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                r = &mut connection => return r,
                _ = paused => {}
            }
            // Not polled: the socket is not read.
            let _ = resumed.await;
            connection.await
        });
        Hostile {
            requests,
            pause: Some(pause),
            resume: Some(resume),
            driver,
        }
    }

    /// Opens a stream (its HEADERS go out while the connection is driven).
    async fn open(&mut self) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut ready = self.requests.clone().ready().await.expect("stream credit");
        ready
            .send_request(http::Request::new(()), false)
            .expect("open a stream")
    }

    fn stop_reading(&mut self) {
        let _ = self.pause.take().expect("once").send(());
    }

    fn read_again(&mut self) {
        let _ = self.resume.take().expect("once").send(());
    }
}

/// A router side and a hostile client connected to it, with `streams`
/// streams open (besides the close-notice stream) and accepted.
async fn setup(
    streams: usize,
) -> (
    Conn,
    Hostile,
    Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
    Vec<SendHalf>,
) {
    let (router, client) = identities();
    let acceptor = TlsAcceptor::from(Arc::new(
        rustls_server_config(&router, ClientAuth::Required, ALPN_DATA_TCP).expect("server TLS"),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        accept_tcp(tcp, acceptor).await.expect("accept_tcp")
    });
    let mut hostile = Hostile::connect(addr, &client).await;
    let conn = server.await.expect("server task");
    // The first stream is the close-notice stream, which the router keeps.
    let mut opened = vec![hostile.open().await];
    for _ in 0..streams {
        opened.push(hostile.open().await);
    }
    let mut sends = Vec::new();
    for _ in 0..streams {
        let (send, recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
            .await
            .expect("streams accepted in time")
            .expect("a stream");
        // The router does not read them; h2 credits what arrives anyway.
        drop(recv);
        sends.push(send);
    }
    (conn, hostile, opened, sends)
}

/// Samples `accepted` until it stops growing (for `quiet`), or is over
/// `over`, or `within` has passed; returns its highest value and the
/// highest queued-to-send count seen.
async fn plateau(
    conn: &Conn,
    accepted: &AtomicU64,
    quiet: Duration,
    over: u64,
    within: Duration,
) -> (u64, u64) {
    let start = Instant::now();
    let (mut last, mut since) = (u64::MAX, Instant::now());
    let mut queued = 0;
    loop {
        let now = accepted.load(Ordering::Relaxed);
        queued = queued.max(conn.queued_to_send().expect("a TCP connection"));
        if now != last {
            (last, since) = (now, Instant::now());
        }
        if since.elapsed() >= quiet || now > over || start.elapsed() >= within {
            return (now, queued);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (at most `within`) until the connection has nothing queued.
async fn drained(conn: &Conn, within: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let q = conn.queued_to_send().expect("a TCP connection");
        if q == 0 || start.elapsed() >= within {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_holds_at_most_the_send_queue_then_gets_everything() {
    const STREAMS: usize = 200;
    // More than h2's own per-stream buffer (1 MiB): without the send queue
    // the router would queue 200 MiB for this peer.
    const PER_STREAM: u64 = 5 * MIB / 4;
    // The send queue, and what the kernel (socket buffers) and TLS hold
    // beyond it.
    const BOUND: u64 = SEND_QUEUE + 16 * MIB;

    let (conn, mut hostile, opened, sends) = setup(STREAMS).await;
    hostile.stop_reading();

    let accepted = Arc::new(AtomicU64::new(0));
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let writers: Vec<JoinHandle<()>> = sends
        .into_iter()
        .map(|mut send| {
            let (accepted, chunk) = (accepted.clone(), chunk.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < PER_STREAM {
                    send.write_chunk(chunk.clone()).await.expect("write");
                    sent += CHUNK as u64;
                    accepted.fetch_add(CHUNK as u64, Ordering::Relaxed);
                }
                send.finish();
            })
        })
        .collect();

    let (held, queued) = plateau(
        &conn,
        &accepted,
        Duration::from_millis(750),
        BOUND,
        Duration::from_secs(6),
    )
    .await;
    println!(
        "accepted from writers while the peer did not read: {} MiB (queued at most {} MiB)",
        held / MIB,
        queued / MIB
    );
    assert!(
        held <= BOUND,
        "the router took {} MiB for a peer that does not read (bound {} MiB)",
        held / MIB,
        BOUND / MIB
    );
    assert!(queued <= SEND_QUEUE, "queued {queued} bytes");
    // Writers were held back, not failed: the queue is full.
    assert!(queued > SEND_QUEUE / 2, "queued only {queued} bytes");

    // The peer reads again: every writer goes on, and every byte arrives.
    hostile.read_again();
    let readers: Vec<JoinHandle<u64>> = opened
        .into_iter()
        .skip(1)
        .map(|(response, _send)| {
            tokio::spawn(async move {
                let _keep = _send;
                let mut body = response.await.expect("response").into_body();
                let mut got = 0;
                while let Some(data) = body.data().await {
                    let data = data.expect("data");
                    got += data.len() as u64;
                    let _ = body.flow_control().release_capacity(data.len());
                }
                got
            })
        })
        .collect();
    let all = async {
        for w in writers {
            w.await.expect("writer");
        }
        let mut got = Vec::new();
        for r in readers {
            got.push(r.await.expect("reader"));
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("everything delivered in time");
    assert!(got.iter().all(|&g| g == PER_STREAM), "{got:?}");
    // Every byte counted was given back as it was written.
    assert_eq!(drained(&conn, Duration::from_secs(5)).await, 0);
    drop(hostile.driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_either_way_give_back_their_share_of_the_send_queue() {
    const STREAMS: usize = 100;

    let (conn, mut hostile, mut opened, sends) = setup(STREAMS).await;
    hostile.stop_reading();

    // Writers write until their stream ends; the first half are reset
    // here when told.
    let (reset_here, told) = watch::channel(false);
    let accepted = Arc::new(AtomicU64::new(0));
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let writers: Vec<JoinHandle<bool>> = sends
        .into_iter()
        .enumerate()
        .map(|(i, mut send)| {
            let (accepted, chunk, mut told) = (accepted.clone(), chunk.clone(), told.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = send.write_chunk(chunk.clone()) => match r {
                            Ok(()) => { accepted.fetch_add(CHUNK as u64, Ordering::Relaxed); }
                            // Reset by the peer.
                            Err(_) => return false,
                        },
                        _ = told.wait_for(|t| *t), if i < STREAMS / 2 => {
                            send.reset(StreamCode::Reset);
                            return true;
                        }
                    }
                }
            })
        })
        .collect();

    let (_, queued) = plateau(
        &conn,
        &accepted,
        Duration::from_millis(750),
        u64::MAX,
        Duration::from_secs(6),
    )
    .await;
    assert!(queued > SEND_QUEUE / 2, "the queue filled: {queued} bytes");
    assert!(queued <= SEND_QUEUE, "queued {queued} bytes");

    // Half reset here: h2 drops their data at once, the queue gives back
    // their share (and the other writers take it).
    reset_here.send_replace(true);
    // The other half reset by the peer, once it reads (and writes) again.
    for (_, send) in opened.iter_mut().skip(1 + STREAMS / 2) {
        send.send_reset(h2::Reason::CANCEL);
    }
    hostile.read_again();

    let ended = async {
        let mut here = 0;
        for w in writers {
            here += usize::from(w.await.expect("writer"));
        }
        here
    };
    let here = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("every writer ends: a reset wakes one waiting for room");
    assert_eq!(here, STREAMS / 2);
    assert_eq!(
        drained(&conn, Duration::from_secs(5)).await,
        0,
        "nothing is left counted for streams that were reset"
    );
    drop(opened);
    drop(hostile.driver);
}

/// What a stream flood did to a connection.
struct Flooded {
    /// Streams the peer got out before the connection ended.
    went_out: usize,
    /// Why the router says the connection ended.
    end: String,
    /// Streams the router queued for its accept loop.
    queued: usize,
    /// Streams the peer saw refused (REFUSED_STREAM).
    refused: usize,
}

/// A peer that opens streams while the router takes none (and resets each
/// at once, if `reset`), until the connection ends.
async fn flood(reset: bool) -> Flooded {
    let (conn, mut hostile, _opened, _) = setup(0).await;
    let mut responses = Vec::new();
    let most = ACCEPT_QUEUE + MAX_REFUSED_STREAMS as usize + 64;
    let mut went_out = 0;
    for _ in 0..most {
        let Ok(mut ready) = hostile.requests.clone().ready().await else {
            break;
        };
        let Ok((response, mut send)) = ready.send_request(http::Request::new(()), false) else {
            break;
        };
        went_out += 1;
        if reset {
            send.send_reset(h2::Reason::CANCEL);
        }
        responses.push((response, send));
    }
    let end = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the router ends the connection in time")
        .to_string();
    // GOAWAY ENHANCE_YOUR_CALM, then the socket is closed (the peer, still
    // writing, may see that first).
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut hostile.driver)
        .await
        .expect("the peer's connection ends")
        .expect("driver task");
    let e = ended.expect_err("the connection ends with an error");
    assert!(
        e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(),
        "ended by GOAWAY ENHANCE_YOUR_CALM or the close after it: {e}"
    );
    let mut queued = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), conn.accept_bi()).await {
        queued += 1;
    }
    let mut refused = 0;
    for (r, _send) in responses {
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), r).await {
            if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                refused += 1;
            }
        }
    }
    Flooded {
        went_out,
        end,
        queued,
        refused,
    }
}

/// A peer that opens streams faster than the router takes them does not
/// queue them without bound: the accept queue holds `ACCEPT_QUEUE`,
/// streams past it are refused (REFUSED_STREAM) at once instead of
/// waiting for a task, and after `MAX_REFUSED_STREAMS` refusals the
/// connection ends with GOAWAY ENHANCE_YOUR_CALM. Before the bound, every
/// stream was queued, whatever the peer did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_opens_streams_faster_than_they_are_taken_is_refused_then_ended() {
    let f = flood(false).await;
    assert!(f.end.contains("too many streams refused"), "{}", f.end);
    assert!(
        f.went_out >= ACCEPT_QUEUE + MAX_REFUSED_STREAMS as usize,
        "the peer got {} streams out",
        f.went_out
    );
    assert!(f.queued <= ACCEPT_QUEUE, "{} streams queued", f.queued);
    assert!(
        f.refused >= MAX_REFUSED_STREAMS as usize / 2,
        "only {} of {} streams were seen refused",
        f.refused,
        f.went_out
    );
}

/// Open-then-reset (the HTTP/2 rapid-reset class, CVE-2023-44487): streams
/// the peer resets before the router takes them are counted against it
/// (h2's `max_pending_accept_reset_streams`, or the accept queue's
/// refusals, whichever comes first), and the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_opens_and_resets_streams_is_ended() {
    let f = flood(true).await;
    assert!(
        f.end.contains("excessive load") || f.end.contains("too many streams refused"),
        "{}",
        f.end
    );
    assert!(f.queued <= ACCEPT_QUEUE, "{} streams queued", f.queued);
}
