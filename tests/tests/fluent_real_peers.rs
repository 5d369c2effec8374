//! Fluent Bit and Fluentd as they really are: real peers' wire bytes
//! (fluent/tests/fixtures/forward-wire: Fluent Bit 5.1.1's forward output
//! in each mode, Fluentd 1.16.11's HELO) through a real controller, router
//! and client to the receiver, which is as strict as Fluentd 1.16's
//! `in_forward` (it refuses array event times, sends a user-auth salt in
//! every HELO, checks PING exactly).

use std::net::SocketAddr;
use std::time::Duration;

use darkport_fluent::handshake::{digest, Helo, Pong};
use darkport_proto::identity::Kind;
use darkport_proto::msg::AdminRequest;
use darkport_proto::policy::{
    AppHandshake, EventTimeForm, FluentSettings, FluentUser, ServiceProtocol,
};
use darkport_tests::fluent::{read_value, FluentReceiver, Record, ValueReader};
use darkport_tests::{assert_eventually, n, Fixture};
use edge_client::{DialError, DialStream};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(path: &str) -> Vec<u8> {
    let full = format!(
        "{}/../fluent/tests/fixtures/forward-wire/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Fluent Bit's record files: (file, asks for acks).
const RECORD_FILES: [(&str, bool); 4] = [
    ("fluent-bit-5.1.1/forward-default.bin", false),
    ("fluent-bit-5.1.1/forward-ack.bin", true),
    ("fluent-bit-5.1.1/gzip-ack.bin", true),
    ("fluent-bit-5.1.1/no-metadata-ack.bin", true),
];

fn decode(bytes: &[u8]) -> Value {
    rmpv::decode::read_value(&mut &bytes[..]).expect("fixture is msgpack")
}

fn option(msg: &Value, key: &str) -> Option<Value> {
    msg.as_array()?
        .get(2)?
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v.clone())
}

/// (seconds, nanoseconds) of each entry's time in a fixture, read
/// independently of the router's code (rmpv, flate2).
fn sent_times(msg: &Value) -> Vec<(u64, u32)> {
    let a = msg.as_array().expect("array");
    let entries: Vec<Value> = match &a[1] {
        Value::Array(e) => e.clone(),
        Value::Binary(gz) => {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut plain)
                .expect("gunzip");
            let mut rest = &plain[..];
            let mut out = Vec::new();
            while !rest.is_empty() {
                out.push(rmpv::decode::read_value(&mut rest).expect("entry"));
            }
            out
        }
        other => panic!("unexpected {other:?}"),
    };
    entries
        .iter()
        .map(|e| {
            let t = &e.as_array().expect("entry")[0];
            let t = match t {
                Value::Array(inner) => &inner[0],
                plain => plain,
            };
            let Value::Ext(0, d) = t else {
                panic!("EventTime, got {t:?}")
            };
            (
                u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]])),
                u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
            )
        })
        .collect()
}

/// A fluent-forward service `fluentd` at `service` for role `writers`, and
/// a client `fb-1` in it.
async fn setup(
    service: SocketAddr,
    settings: FluentSettings,
) -> (Fixture, std::sync::Arc<edge_client::Client>) {
    let fx = Fixture::start().await.expect("fixture");
    fx.service_with("fluentd", service, ServiceProtocol::FluentForward(settings))
        .await
        .expect("service");
    fx.policy_with_tags("writers", &["fluentd"], &["#writers"], &[])
        .await
        .expect("policy");
    let id = fx
        .enroll("fb-1", Kind::Client, &["writers"])
        .await
        .expect("enroll");
    let client = fx.client(&id).expect("client");
    (fx, client)
}

/// A dialed stream, read value by value.
type Peer = ValueReader<DialStream>;

fn ack_of(chunk: Value) -> Value {
    Value::Map(vec![(Value::from("ack"), chunk)])
}

fn field<'a>(r: &'a Record, key: &str) -> Option<&'a Value> {
    r.record
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Sends one fixture file on a new stream; for an acked file, waits for
/// the service's ack of its chunk.
async fn send_fixture(client: &edge_client::Client, file: &str, acked: bool) {
    let wire = fixture(file);
    let mut s = client.dial("fluentd").await.expect("dial");
    s.write_all(&wire).await.expect("write");
    if acked {
        let chunk = option(&decode(&wire), "chunk").expect("chunk");
        assert_eq!(
            read_value(&mut s, Duration::from_secs(10)).await,
            Some(Ok(ack_of(chunk))),
            "{file}: the service's ack"
        );
    }
    s.shutdown().await.expect("finish");
    // The service closes after our end: wait for it, so the stream is
    // not dropped (reset) with our data still in flight.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the stream ends after ours")
        .expect("a clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluent_bit_5_records_reach_a_strict_fluentd_with_their_original_times() {
    let receiver = FluentReceiver::start().await.expect("receiver");
    let (_fx, client) = setup(receiver.addr, FluentSettings::default()).await;
    let mut expected = Vec::new();
    for (file, acked) in RECORD_FILES {
        send_fixture(&client, file, acked).await;
        expected.extend(sent_times(&decode(&fixture(file))));
        assert_eventually!(
            receiver.records().len() == expected.len(),
            Duration::from_secs(10),
            "{file}: {} of {} records arrived",
            receiver.records().len(),
            expected.len()
        );
    }
    let got = receiver.records();
    for (r, (secs, nanos)) in got.iter().zip(&expected) {
        assert_eq!(r.tag, "app.fb");
        assert_eq!((r.time, r.nanos), (*secs, *nanos), "the original time");
        assert_eq!(field(r, "msg"), Some(&Value::from("hello")));
        assert_eq!(field(r, "n"), Some(&Value::from(1)));
        assert_eq!(
            field(r, "darkport_identity"),
            Some(&Value::from("fb-1")),
            "stamped"
        );
    }
    assert_eq!(receiver.acks_sent(), 3);
}

/// The negative of the above: with times kept as Fluent Bit 5 sends them,
/// the strict receiver drops them, as Fluentd 1.16 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_array_times_are_what_fluentd_refuses() {
    let receiver = FluentReceiver::start().await.expect("receiver");
    let keep = FluentSettings {
        event_time: EventTimeForm::Keep,
        ..FluentSettings::default()
    };
    let (_fx, client) = setup(receiver.addr, keep).await;
    let mut s = client.dial("fluentd").await.expect("dial");
    s.write_all(&fixture("fluent-bit-5.1.1/forward-ack.bin"))
        .await
        .expect("write");
    match read_value(&mut s, Duration::from_secs(10)).await {
        Some(Ok(v)) => panic!("acked {v:?}: the receiver is kinder than Fluentd"),
        other => eprintln!("kept array times: {other:?}"),
    }
    assert!(receiver.records().is_empty());
    // The plain-time file goes through the same service.
    send_fixture(&client, "fluent-bit-5.1.1/no-metadata-ack.bin", true).await;
    assert_eq!(receiver.records().len(), 3);
}

/// A PING as Fluent Bit encodes it (every field a str, the salt raw
/// bytes), answering `helo` with `key`.
fn fluent_bit_ping(helo: &Helo, hostname: &str, key: &str) -> (Vec<u8>, [u8; 16]) {
    let salt: [u8; 16] = rand::random();
    let digest = digest(&salt, hostname.as_bytes(), &helo.nonce, key.as_bytes());
    let mut out = vec![0x96];
    for field in [
        b"PING".as_slice(),
        hostname.as_bytes(),
        &salt,
        digest.as_bytes(),
        b"",
        b"",
    ] {
        rmp::encode::write_str_len(&mut out, field.len() as u32).expect("encode");
        out.extend_from_slice(field);
    }
    (out, salt)
}

/// What an app that keeps `Shared_Key` sees: a HELO; its PING, with its
/// first events right behind it; a PONG. Returns the PONG.
async fn app_handshake(p: &mut Peer, key: &str, events: &[u8]) -> (Helo, Pong) {
    let encoded = |v: Value| {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).expect("encode");
        b
    };
    let helo = match p.next(Duration::from_secs(10)).await {
        Some(Ok(v)) => Helo::parse(&encoded(v)).expect("a HELO"),
        other => panic!("expected a HELO from the router, got {other:?}"),
    };
    assert!(helo.auth.is_empty(), "apps are not asked for users");
    let (mut ping, _) = fluent_bit_ping(&helo, "fb-host", key);
    ping.extend_from_slice(events);
    p.stream.write_all(&ping).await.expect("PING");
    let pong = match p.next(Duration::from_secs(10)).await {
        Some(Ok(v)) => Pong::parse(&encoded(v)).expect("a PONG"),
        other => panic!("expected a PONG from the router, got {other:?}"),
    };
    (helo, pong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_that_keep_their_own_shared_key_are_answered_and_checked() {
    let receiver = FluentReceiver::start().await.expect("receiver");
    let settings = FluentSettings {
        app_handshake: AppHandshake::SharedKey("sekret-123".into()),
        ..FluentSettings::default()
    };
    let (fx, client) = setup(receiver.addr, settings).await;
    let wire = fixture("fluent-bit-5.1.1/forward-ack.bin");
    let chunk = option(&decode(&wire), "chunk").expect("chunk");

    // The right key: PONG true, and the events sent right behind the PING
    // arrive.
    let mut p = Peer::new(client.dial("fluentd").await.expect("dial"));
    let (_, pong) = app_handshake(&mut p, "sekret-123", &wire).await;
    assert!(pong.ok, "{pong:?}");
    assert_eq!(
        p.next(Duration::from_secs(10)).await,
        Some(Ok(ack_of(chunk.clone())))
    );
    assert_eq!(receiver.records().len(), 3);

    // The wrong key: PONG false with Fluentd's reason, and nothing passes.
    let mut p = Peer::new(client.dial("fluentd").await.expect("dial"));
    let (_, pong) = app_handshake(&mut p, "sekret-124", &wire).await;
    assert!(!pong.ok);
    assert_eq!(pong.reason, b"shared_key mismatch");
    match p.next(Duration::from_secs(10)).await {
        Some(Err(e)) => eprintln!("after a refused PING: {e}"),
        other => panic!("the stream must end after a refused PING, got {other:?}"),
    }
    assert_eq!(receiver.records().len(), 3, "nothing of the refused app");

    // Any key: whatever the app holds, it gets in.
    fx.admin(AdminRequest::UpdateService {
        name: n("fluentd"),
        address: None,
        strategy: None,
        protocol: Some(ServiceProtocol::FluentForward(FluentSettings {
            app_handshake: AppHandshake::AnyKey,
            ..FluentSettings::default()
        })),
    })
    .await
    .expect("update");
    assert_eventually!(
        {
            let mut p = Peer::new(client.dial("fluentd").await.expect("dial"));
            let (_, pong) = app_handshake(&mut p, "whatever", &wire).await;
            pong.ok && p.next(Duration::from_secs(10)).await == Some(Ok(ack_of(chunk.clone())))
        },
        Duration::from_secs(10),
        "any-key lets any key in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluentd_with_users_names_the_refusal_and_takes_the_configured_user() {
    let receiver = FluentReceiver::start_with_security("k3y", &[("fluent", "pa55")])
        .await
        .expect("receiver");
    let no_user = FluentSettings {
        shared_key: Some("k3y".into()),
        ..FluentSettings::default()
    };
    let (fx, client) = setup(receiver.addr, no_user).await;
    match client.dial("fluentd").await {
        Err(DialError::ServiceUnreachable { message, .. }) => {
            assert!(
                message.contains("username/password mismatch")
                    && message.contains("--service-username")
                    && message.contains("fluentd"),
                "{message}"
            );
        }
        other => panic!("expected the user refusal, got {:?}", other.map(|_| ())),
    }
    fx.admin(AdminRequest::UpdateService {
        name: n("fluentd"),
        address: None,
        strategy: None,
        protocol: Some(ServiceProtocol::FluentForward(FluentSettings {
            shared_key: Some("k3y".into()),
            service_user: Some(FluentUser {
                username: "fluent".into(),
                password: "pa55".into(),
            }),
            ..FluentSettings::default()
        })),
    })
    .await
    .expect("update");
    assert_eventually!(
        client.dial("fluentd").await.is_ok(),
        Duration::from_secs(10),
        "the configured user gets in"
    );
    send_fixture(&client, "fluent-bit-5.1.1/gzip-ack.bin", true).await;
    assert_eq!(receiver.records().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_traces_are_refused_not_passed_unstamped() {
    let receiver = FluentReceiver::start().await.expect("receiver");
    let (_fx, client) = setup(receiver.addr, FluentSettings::default()).await;
    let mut wire = fixture("fluent-bit-5.1.1/gzip-ack.bin");
    let last = wire.len() - 1;
    assert_eq!(wire[last], 0, "fluent_signal 0 ends the fixture");
    wire[last] = 1;
    let mut s = client.dial("fluentd").await.expect("dial");
    s.write_all(&wire).await.expect("write");
    match read_value(&mut s, Duration::from_secs(10)).await {
        Some(Ok(v)) => panic!("a metrics chunk was acked: {v:?}"),
        other => eprintln!("metrics: {other:?}"),
    }
    assert!(receiver.records().is_empty());
}

/// Sections of a Fluent Bit classic config: (name, [(key, value)]), keys
/// lowercased (Fluent Bit's keys are case-insensitive).
fn fluent_bit_sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.to_string(), Vec::new()));
            continue;
        }
        let (k, v) = line
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("not `Key Value`: {line:?}"));
        let section = out
            .last_mut()
            .unwrap_or_else(|| panic!("{line:?} outside a section"));
        section.1.push((k.to_lowercase(), v.trim().to_string()));
    }
    out
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// packaging/config/fluent-bit.conf points at the edge client of
/// packaging/config/edge-client.toml, asks for acks, carries no TLS, and
/// its Shared_Key and Self_Hostname pass the router's app handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_fluent_bit_config_fits_the_edge_client_and_the_router() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config");
    let text = std::fs::read_to_string(dir.join("fluent-bit.conf")).expect("fluent-bit.conf");
    let sections = fluent_bit_sections(&text);
    let outputs: Vec<_> = sections.iter().filter(|(n, _)| n == "OUTPUT").collect();
    assert_eq!(outputs.len(), 1);
    let out = &outputs[0].1;
    assert_eq!(get(out, "name"), Some("forward"));
    assert_eq!(get(out, "require_ack_response"), Some("true"));
    assert!(
        out.iter().all(|(k, _)| !k.starts_with("tls")),
        "TLS is the edge client's job: {out:?}"
    );
    let toml: toml::Table = toml::from_str(
        &std::fs::read_to_string(dir.join("edge-client.toml")).expect("edge-client.toml"),
    )
    .expect("toml");
    let forward = toml["forward"][0].as_str().expect("forward entry");
    let (local, service) = forward.split_once('=').expect("ADDR=SERVICE");
    assert_eq!(
        format!(
            "{}:{}",
            get(out, "host").expect("Host"),
            get(out, "port").expect("Port")
        ),
        local
    );
    assert_eq!(service, "fluentd");
    let upstream = fluent_bit_sections(
        &std::fs::read_to_string(dir.join("fluent-bit-upstream.conf")).expect("upstream"),
    );
    let nodes: Vec<String> = upstream
        .iter()
        .filter(|(n, _)| n == "NODE")
        .map(|(_, p)| {
            format!(
                "{}:{}",
                get(p, "host").expect("host"),
                get(p, "port").expect("port")
            )
        })
        .collect();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.contains(&local.to_string()));

    // Its handshake settings, against a service whose app-side key is
    // the config's Shared_Key.
    let key = get(out, "shared_key").expect("Shared_Key");
    let receiver = FluentReceiver::start().await.expect("receiver");
    let settings = FluentSettings {
        app_handshake: AppHandshake::SharedKey(key.into()),
        ..FluentSettings::default()
    };
    let (_fx, client) = setup(receiver.addr, settings).await;
    let mut p = Peer::new(client.dial("fluentd").await.expect("dial"));
    let wire = fixture("fluent-bit-5.1.1/gzip-ack.bin");
    let (_, pong) = app_handshake(&mut p, key, &wire).await;
    assert!(pong.ok);
    assert_eq!(
        p.next(Duration::from_secs(10)).await,
        Some(Ok(ack_of(option(&decode(&wire), "chunk").expect("chunk"))))
    );
    assert_eq!(receiver.records().len(), 3);
}
