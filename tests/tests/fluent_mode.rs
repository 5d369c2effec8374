//! fluent-forward services end to end: a real controller and router, the
//! SDK as the sender (raw forward-protocol bytes, so every mode and option
//! is exercised), and the forward-protocol receiver as Fluentd.

use std::net::SocketAddr;
use std::time::Duration;

use darkport_proto::identity::Kind;
use darkport_proto::msg::{AdminRequest, AdminResponse};
use darkport_proto::policy::{FluentSettings, ServiceProtocol};
use darkport_tests::fluent::{read_value, FluentReceiver, Record};
use darkport_tests::{assert_eventually, n, Fixture};
use edge_client::DialError;
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn enc(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("encode");
    out
}

fn s(x: &str) -> Value {
    Value::from(x)
}

fn rec(pairs: &[(&str, &str)]) -> Value {
    Value::Map(pairs.iter().map(|(k, v)| (s(k), s(v))).collect())
}

fn chunk(id: &str) -> Value {
    Value::Map(vec![(s("chunk"), s(id))])
}

fn field<'a>(r: &'a Record, key: &str) -> Option<&'a Value> {
    r.record
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// A fluent-forward service `fluentd` at `service`, open to `#writers`
/// with `tags` (empty: any), and clients app-1 and app-2 (role writers).
async fn setup(
    service: SocketAddr,
    settings: FluentSettings,
    tags: &[&str],
) -> (Fixture, DialStreams) {
    let fx = Fixture::start().await.expect("fixture");
    fx.service_with("fluentd", service, ServiceProtocol::FluentForward(settings))
        .await
        .expect("service");
    fx.policy_with_tags("writers", &["fluentd"], &["#writers"], tags)
        .await
        .expect("policy");
    let app1 = fx
        .enroll("app-1", Kind::Client, &["writers"])
        .await
        .expect("app-1");
    let app2 = fx
        .enroll("app-2", Kind::Client, &["writers"])
        .await
        .expect("app-2");
    let clients = DialStreams {
        app1: fx.client(&app1).expect("client"),
        app2: fx.client(&app2).expect("client"),
    };
    (fx, clients)
}

struct DialStreams {
    app1: std::sync::Arc<edge_client::Client>,
    app2: std::sync::Arc<edge_client::Client>,
}

fn ack_of(id: &str) -> Value {
    Value::Map(vec![(s("ack"), s(id))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_two_identities_arrive_stamped_and_forgeries_are_overwritten() {
    let receiver = FluentReceiver::start().await.expect("receiver");
    let settings = FluentSettings {
        roles_key: Some("darkport_roles".into()),
        router_key: Some("darkport_router".into()),
        ..FluentSettings::default()
    };
    let (_fx, c) = setup(receiver.addr, settings, &[]).await;

    // app-1: Forward mode, two records, one forging app-2's name.
    let mut a = c.app1.dial("fluentd").await.expect("dial");
    let entries = Value::Array(vec![
        Value::Array(vec![Value::from(1_700_000_000u64), rec(&[("msg", "one")])]),
        Value::Array(vec![
            Value::from(1_700_000_001u64),
            rec(&[("msg", "two"), ("darkport_identity", "app-2")]),
        ]),
    ]);
    a.write_all(&enc(&Value::Array(vec![s("logs.a"), entries, chunk("c1")])))
        .await
        .expect("write");
    assert_eq!(
        read_value(&mut a, Duration::from_secs(10)).await,
        Some(Ok(ack_of("c1"))),
        "the service's ack, chunk id kept"
    );
    // app-2: Message mode.
    let mut b = c.app2.dial("fluentd").await.expect("dial");
    b.write_all(&enc(&Value::Array(vec![
        s("logs.b"),
        Value::from(1_700_000_002u64),
        rec(&[("msg", "three")]),
    ])))
    .await
    .expect("write");
    b.shutdown().await.expect("finish");
    assert_eventually!(
        receiver.records().len() == 3,
        Duration::from_secs(10),
        "three records: {:?}",
        receiver.records()
    );
    for r in receiver.records() {
        let who = if r.tag == "logs.a" { "app-1" } else { "app-2" };
        assert_eq!(field(&r, "darkport_identity"), Some(&s(who)), "{r:?}");
        assert_eq!(
            field(&r, "darkport_roles"),
            Some(&Value::Array(vec![s("writers")]))
        );
        assert_eq!(field(&r, "darkport_router"), Some(&s("router-1")));
        let ids = r
            .record
            .as_map()
            .expect("map")
            .iter()
            .filter(|(k, _)| k.as_str() == Some("darkport_identity"))
            .count();
        assert_eq!(ids, 1, "one identity key, the verified one: {r:?}");
    }
    let two = receiver
        .records()
        .into_iter()
        .find(|r| field(r, "msg") == Some(&s("two")))
        .expect("record two");
    assert_eq!(
        field(&two, "darkport_identity"),
        Some(&s("app-1")),
        "forgery overwritten"
    );
    assert_eq!(two.time, 1_700_000_001, "time kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tag_never_reaches_the_service() {
    let receiver = FluentReceiver::start().await.expect("receiver");
    let (fx, c) = setup(
        receiver.addr,
        FluentSettings::default(),
        &["app.${identity}.**"],
    )
    .await;

    // Without acks: the denied message is dropped, the stream goes on.
    let mut a = c.app1.dial("fluentd").await.expect("dial");
    let denied = enc(&Value::Array(vec![
        s("app.app-2.audit"),
        Value::from(1),
        rec(&[("m", "forged")]),
    ]));
    let allowed = enc(&Value::Array(vec![
        s("app.app-1.web"),
        Value::from(2),
        rec(&[("m", "mine")]),
        chunk("ok-1"),
    ]));
    a.write_all(&[denied, allowed].concat())
        .await
        .expect("write");
    assert_eq!(
        read_value(&mut a, Duration::from_secs(10)).await,
        Some(Ok(ack_of("ok-1"))),
        "the allowed message after a denied one is carried and acked"
    );

    // With an ack asked for: no ack, and the stream ends.
    let denied_chunk = enc(&Value::Array(vec![
        s("other.tag"),
        Value::from(3),
        rec(&[("m", "denied")]),
        chunk("no-1"),
    ]));
    a.write_all(&denied_chunk).await.expect("write");
    match read_value(&mut a, Duration::from_secs(10)).await {
        Some(Err(e)) => eprintln!("the sender sees: {e}"),
        other => panic!("a denied chunk must end the stream without an ack, got {other:?}"),
    }
    // The router's connection to the service for that stream ends too;
    // once the receiver has read it to its end, nothing more can arrive.
    assert_eventually!(
        receiver.connections_open() == 0,
        Duration::from_secs(10),
        "the service's connection for the ended stream closes"
    );
    let tags: Vec<String> = receiver.records().into_iter().map(|r| r.tag).collect();
    assert_eq!(tags, ["app.app-1.web"], "only the allowed record arrived");

    // `policy explain --tag` says the same.
    for (tag, want) in [
        ("app.app-1.x", true),
        ("app.app-2.x", false),
        ("other.tag", false),
    ] {
        let AdminResponse::Explanation(e) = fx
            .admin(AdminRequest::Explain {
                identity: n("app-1"),
                service: "fluentd".into(),
                tag: Some(tag.into()),
            })
            .await
            .expect("explain")
        else {
            panic!("an explanation")
        };
        assert_eq!(e.tag_allowed, Some(want), "{tag}: {e:?}");
        assert_eq!(e.allowed, want, "{tag}: {e:?}");
    }
    // A bad pattern is refused at policy creation, naming it.
    let e = fx
        .policy_with_tags("bad", &["fluentd"], &["#writers"], &["app.{web"])
        .await
        .expect_err("unbalanced braces");
    assert!(e.to_string().contains("app.{web"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_come_only_from_the_service() {
    // A service that takes everything and never acks.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = silent.accept().await {
            let tx = got_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = tx.send(n);
                }
            });
        }
    });
    let (_fx, c) = setup(addr, FluentSettings::default(), &[]).await;
    let mut a = c.app1.dial("fluentd").await.expect("dial");
    a.write_all(&enc(&Value::Array(vec![
        s("t"),
        Value::from(1),
        rec(&[("m", "x")]),
        chunk("c-silent"),
    ])))
    .await
    .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
        .await
        .expect("the service got the message")
        .expect("bytes");
    assert!(n > 0);
    assert_eq!(
        read_value(&mut a, Duration::from_secs(2)).await,
        None,
        "no ack: the service did not give one, and the router never acks for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_chunks_pass_and_gzip_bombs_are_refused() {
    use std::io::Write;
    let receiver = FluentReceiver::start().await.expect("receiver");
    let (_fx, c) = setup(receiver.addr, FluentSettings::default(), &[]).await;
    let gzip = |data: &[u8]| {
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        g.write_all(data).expect("gzip");
        g.finish().expect("gzip")
    };
    let packed: Vec<u8> = (0..3)
        .flat_map(|i| enc(&Value::Array(vec![Value::from(i), rec(&[("m", "z")])])))
        .collect();
    let opts = Value::Map(vec![
        (s("compressed"), s("gzip")),
        (s("size"), Value::from(3)),
        (s("chunk"), s("gz-1")),
    ]);
    let mut a = c.app1.dial("fluentd").await.expect("dial");
    a.write_all(&enc(&Value::Array(vec![
        s("gz"),
        Value::Binary(gzip(&packed)),
        opts,
    ])))
    .await
    .expect("write");
    assert_eq!(
        read_value(&mut a, Duration::from_secs(10)).await,
        Some(Ok(ack_of("gz-1")))
    );
    assert_eq!(receiver.records().len(), 3);
    assert!(receiver
        .records()
        .iter()
        .all(|r| field(r, "darkport_identity") == Some(&s("app-1"))));

    // 80 MiB of zeros in well under a megabyte: refused, nothing passes.
    let bomb = gzip(&vec![0u8; 80 << 20]);
    assert!(bomb.len() < 1 << 20);
    let opts = Value::Map(vec![(s("compressed"), s("gzip")), (s("chunk"), s("bomb"))]);
    let mut b = c.app1.dial("fluentd").await.expect("dial");
    b.write_all(&enc(&Value::Array(vec![
        s("gz"),
        Value::Binary(bomb),
        opts,
    ])))
    .await
    .expect("write");
    match read_value(&mut b, Duration::from_secs(10)).await {
        Some(Err(e)) => eprintln!("the bomb's sender sees: {e}"),
        other => panic!("a gzip bomb must end the stream, got {other:?}"),
    }
    assert_eq!(receiver.records().len(), 3, "nothing of the bomb arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_key_handshake_works_and_a_wrong_key_fails() {
    let receiver = FluentReceiver::start_with_shared_key("s3cret")
        .await
        .expect("receiver");
    let right = FluentSettings {
        shared_key: Some("s3cret".into()),
        ..FluentSettings::default()
    };
    let (fx, c) = setup(receiver.addr, right, &[]).await;
    let mut a = c
        .app1
        .dial("fluentd")
        .await
        .expect("dial through the handshake");
    a.write_all(&enc(&Value::Array(vec![
        s("secure"),
        Value::from(1),
        rec(&[("m", "x")]),
        chunk("k-1"),
    ])))
    .await
    .expect("write");
    assert_eq!(
        read_value(&mut a, Duration::from_secs(10)).await,
        Some(Ok(ack_of("k-1")))
    );
    assert_eq!(receiver.records().len(), 1);

    // The wrong key: the dial fails, naming the handshake.
    fx.admin(AdminRequest::UpdateService {
        name: n("fluentd"),
        address: None,
        strategy: None,
        protocol: Some(ServiceProtocol::FluentForward(FluentSettings {
            shared_key: Some("wrong".into()),
            ..FluentSettings::default()
        })),
    })
    .await
    .expect("update");
    assert_eventually!(
        matches!(
            c.app1.dial("fluentd").await,
            Err(DialError::ServiceUnreachable { ref message, .. }) if message.contains("handshake")
        ),
        Duration::from_secs(10),
        "a wrong shared key fails the dial with the handshake named"
    );
    assert_eq!(receiver.records().len(), 1);
    // Listing services shows that a key is set, never the key.
    let AdminResponse::Services(list) = fx.admin(AdminRequest::ListServices).await.expect("list")
    else {
        panic!("services")
    };
    let text = format!("{list:?}");
    assert!(
        !text.contains("wrong") && !text.contains("s3cret"),
        "{text}"
    );
}
