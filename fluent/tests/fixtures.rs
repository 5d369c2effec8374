//! Real peers' wire bytes (fixtures/forward-wire, captured from Fluent Bit
//! 5.1.1 and Fluentd 1.16.11; its README says what each file holds)
//! through the router's filter and handshake code.

use darkport_fluent::handshake::{Helo, Ping, Refusal, ServerAuth};
use darkport_fluent::{DenialReason, EventTime, Filter, Limits, Stamp, StampValue};
use rmpv::Value as V;

fn fixture(path: &str) -> Vec<u8> {
    let full = format!(
        "{}/tests/fixtures/forward-wire/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The Fluent Bit files that carry records, and whether they ask for acks.
const RECORD_FILES: [(&str, bool); 4] = [
    ("fluent-bit-5.1.1/forward-default.bin", false),
    ("fluent-bit-5.1.1/forward-ack.bin", true),
    ("fluent-bit-5.1.1/gzip-ack.bin", true),
    ("fluent-bit-5.1.1/no-metadata-ack.bin", true),
];

fn filter(form: EventTime) -> Filter {
    let stamp = Stamp::new(&[("darkport_identity".into(), StampValue::Str("fb-1".into()))]);
    Filter::new(stamp, None, Limits::default()).with_event_time(form)
}

fn decode_one(mut b: &[u8]) -> V {
    let v = rmpv::decode::read_value(&mut b).expect("valid msgpack");
    assert!(b.is_empty(), "one value");
    v
}

/// Every `[time, record]` of a message, whatever its mode (the test's own
/// reading, with rmpv: independent of the filter's scanner).
fn entries(msg: &V) -> Vec<(V, V)> {
    let a = msg.as_array().expect("message is an array");
    let options = a.get(2).and_then(V::as_map).cloned().unwrap_or_default();
    let gzip = options
        .iter()
        .any(|(k, v)| k.as_str() == Some("compressed") && v.as_str() == Some("gzip"));
    let payload: Vec<u8> = match &a[1] {
        V::Array(list) => {
            return list
                .iter()
                .map(|e| {
                    let e = e.as_array().expect("entry");
                    (e[0].clone(), e[1].clone())
                })
                .collect()
        }
        V::Binary(b) if gzip => {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&b[..]), &mut plain)
                .expect("gunzip");
            plain
        }
        V::Binary(b) => b.clone(),
        other => panic!("unexpected body {other:?}"),
    };
    let mut rest = &payload[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let e = rmpv::decode::read_value(&mut rest).expect("entry");
        let e = e.as_array().expect("entry");
        out.push((e[0].clone(), e[1].clone()));
    }
    out
}

fn option<'a>(msg: &'a V, key: &str) -> Option<&'a V> {
    msg.as_array()?
        .get(2)?
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// The plain EventTime of a time as the sender wrote it.
fn plain_time(t: &V) -> V {
    match t {
        V::Array(a) => a[0].clone(),
        other => other.clone(),
    }
}

#[test]
fn fluent_bit_entries_come_out_with_plain_event_times_stamped_with_options_kept() {
    for (file, acked) in RECORD_FILES {
        let wire = fixture(file);
        let sent = decode_one(&wire);
        let sent_entries = entries(&sent);
        assert_eq!(sent_entries.len(), 3, "{file}");
        let mut f = filter(EventTime::default());
        let mut out = Vec::new();
        // Byte by byte: the framing holds across any split.
        for b in &wire {
            assert!(f
                .feed(std::slice::from_ref(b), &mut out)
                .expect(file)
                .is_empty());
        }
        f.finish().expect("whole");
        let got = decode_one(&out);
        let got_entries = entries(&got);
        assert_eq!(got_entries.len(), 3, "{file}");
        for ((t0, r0), (t1, r1)) in sent_entries.iter().zip(&got_entries) {
            // The original EventTime, nanoseconds and all, not an array.
            assert_eq!(*t1, plain_time(t0), "{file}");
            assert!(matches!(t1, V::Ext(0, d) if d.len() == 8), "{file}: {t1:?}");
            let mut want = r0.as_map().expect("record").clone();
            want.push((V::from("darkport_identity"), V::from("fb-1")));
            assert_eq!(r1.as_map().expect("record"), &want, "{file}");
        }
        assert_eq!(option(&got, "size"), Some(&V::from(3)), "{file}");
        assert_eq!(option(&got, "chunk"), option(&sent, "chunk"), "{file}");
        assert_eq!(option(&got, "chunk").is_some(), acked, "{file}");
        assert_eq!(
            option(&got, "fluent_signal"),
            option(&sent, "fluent_signal"),
            "{file}: fluent_signal passes through"
        );
        assert_eq!(option(&got, "compressed"), None, "{file}: sent on plain");
        assert_eq!(f.counts().records, 3);
    }
}

#[test]
fn keep_leaves_fluent_bit_times_as_sent() {
    let wire = fixture("fluent-bit-5.1.1/forward-ack.bin");
    let mut f = filter(EventTime::Keep);
    let mut out = Vec::new();
    f.feed(&wire, &mut out).expect("filter");
    let got = entries(&decode_one(&out));
    for (t, _) in got {
        let a = t.as_array().expect("[EventTime, {}] kept");
        assert!(matches!(&a[0], V::Ext(0, _)));
        assert_eq!(a[1], V::Map(vec![]));
    }
}

/// The Fluent Bit default entry with metadata set (as a Lua or
/// processor filter can): carried under the key, or dropped.
#[test]
fn metadata_is_carried_under_its_key_or_dropped() {
    let time = V::Ext(0, vec![0x6b, 0x14, 0xa6, 0x3d, 0, 0, 0, 7]);
    let meta = V::Map(vec![(V::from("trace_id"), V::from("abc"))]);
    let record = V::Map(vec![
        (V::from("msg"), V::from("hello")),
        (V::from("fb_meta"), V::from("the app's own")),
    ]);
    let msg = V::Array(vec![
        V::from("app.fb"),
        V::Array(vec![V::Array(vec![
            V::Array(vec![time.clone(), meta.clone()]),
            record,
        ])]),
    ]);
    let mut wire = Vec::new();
    rmpv::encode::write_value(&mut wire, &msg).expect("encode");

    let mut f = filter(EventTime::Unwrap {
        metadata_key: Some("fb_meta".into()),
    });
    let mut out = Vec::new();
    f.feed(&wire, &mut out).expect("filter");
    let got = entries(&decode_one(&out));
    assert_eq!(got[0].0, time);
    let rec = got[0].1.as_map().expect("map");
    let metas: Vec<_> = rec
        .iter()
        .filter(|(k, _)| k.as_str() == Some("fb_meta"))
        .collect();
    assert_eq!(metas.len(), 1, "one key: {rec:?}");
    assert_eq!(metas[0].1, meta);
    assert_eq!(f.counts().overwritten, 0, "not a forged stamp key");

    let mut f = filter(EventTime::default());
    let mut out = Vec::new();
    f.feed(&wire, &mut out).expect("filter");
    let got = entries(&decode_one(&out));
    assert_eq!(got[0].0, time);
    assert_eq!(
        got[0].1.as_map().expect("map").len(),
        3,
        "msg, the app's fb_meta, stamp"
    );
}

#[test]
fn metrics_and_traces_are_refused_with_their_signal() {
    // The gzip fixture with fluent_signal 1 (metrics) instead of 0.
    let mut wire = fixture("fluent-bit-5.1.1/gzip-ack.bin");
    let at = wire.len() - 1;
    assert_eq!(wire[at], 0, "the fixture ends with fluent_signal 0");
    wire[at] = 1;
    let mut f = filter(EventTime::default());
    let mut out = Vec::new();
    let denied = f.feed(&wire, &mut out).expect("refused, not an error");
    assert!(out.is_empty(), "nothing of it goes out");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].reason, DenialReason::Signal(1));
    assert!(denied[0].chunked);
    assert!(f.stopped(), "its chunk is never acked: the stream ends");
    assert!(denied[0].reason.to_string().contains("metrics"));
}

#[test]
fn fluentd_helo_carries_an_auth_salt_without_users_and_we_answer_without_users() {
    let helo = Helo::parse(&fixture("fluentd-1.16.11/helo-shared-key-only.bin")).expect("HELO");
    assert_eq!(helo.nonce.len(), 16);
    assert_eq!(helo.auth.len(), 16, "an auth salt although no <user>");
    assert!(helo.keepalive);
    let ping = Ping::new(&helo, "router-1", &[1; 16], "k", None);
    assert!(ping.username.is_empty());
    assert!(ping.password_digest.is_empty());
    // A Fluentd without users lets that in; one with users refuses it.
    let no_users = ServerAuth {
        shared_key: "k".into(),
        users: vec![],
    };
    no_users.check(&helo, &ping).expect("no users configured");
}

#[test]
fn fluent_bit_ping_is_checked_exactly() {
    let helo =
        Helo::parse(&fixture("fluent-bit-5.1.1/shared-key-helo-from-server.bin")).expect("HELO");
    let ping = Ping::parse(&fixture("fluent-bit-5.1.1/shared-key-ping.bin")).expect("PING");
    assert_eq!(ping.hostname, b"fb-host");
    assert_eq!(ping.salt.len(), 16);
    assert!(
        std::str::from_utf8(&ping.salt).is_err(),
        "the salt is a str of raw bytes"
    );
    assert!(ping.username.is_empty());
    assert_eq!(ping.password_digest.len(), 128, "a digest all the same");
    let right = ServerAuth {
        shared_key: "sekret-123".into(),
        users: vec![],
    };
    right.check(&helo, &ping).expect("the key Fluent Bit used");
    let wrong = ServerAuth {
        shared_key: "sekret-124".into(),
        users: vec![],
    };
    assert_eq!(wrong.check(&helo, &ping), Err(Refusal::SharedKeyMismatch));
    // Against another HELO (another nonce) the same PING fails: no replay.
    let other = Helo::parse(&fixture("fluentd-1.16.11/helo-shared-key-only.bin")).expect("HELO");
    assert_eq!(right.check(&other, &ping), Err(Refusal::SharedKeyMismatch));
    // The PONG Fluent Bit gets.
    let pong = right.answer(&helo, &ping, "darkport-router");
    assert!(pong.ok);
    assert_eq!(pong.hostname, b"darkport-router");
}
