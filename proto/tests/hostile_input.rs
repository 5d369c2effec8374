//! Decoders meet hostile input: random bytes and mutated valid messages
//! must give errors, never panics, and never allocations beyond the limit.
//! (A coverage-guided fuzzer needs a nightly toolchain; this runs on stable
//! in every `cargo test`.)

use darkport_proto::codec::{
    decode_frame, encode_frame, from_bytes, MAX_CONTROL_FRAME, MAX_DIAL_FRAME,
};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::*;
use darkport_proto::policy::{PolicyEntry, PolicySnapshot, Selector, ServiceEntry};
use darkport_proto::token::SignedToken;
use rand::{Rng, RngCore, SeedableRng};

fn decode_all(bytes: &[u8]) {
    let _ = from_bytes::<DialRequest>(bytes);
    let _ = from_bytes::<DialResponse>(bytes);
    let _ = from_bytes::<ControlRequest>(bytes);
    let _ = from_bytes::<ControlResponse>(bytes);
    let _ = decode_frame::<DialRequest>(bytes, MAX_DIAL_FRAME);
    let _ = decode_frame::<ControlRequest>(bytes, MAX_CONTROL_FRAME);
    let _ = SignedToken::parse(&String::from_utf8_lossy(bytes));
}

fn samples() -> Vec<Vec<u8>> {
    let n = |s: &str| IdentityName::new(s).expect("name");
    let snapshot = PolicySnapshot {
        version: 3,
        identities: vec![],
        services: vec![ServiceEntry {
            name: n("fluentd"),
            address: "127.0.0.1:24224".into(),
            roles: vec![n("logs")],
            protocol: Default::default(),
            strategy: Default::default(),
        }],
        policies: vec![PolicyEntry {
            name: n("p"),
            services: vec![Selector::All],
            identities: vec![Selector::Role(n("w"))],
            tags: vec![],
            kind: Default::default(),
        }],
        router_policies: vec![],
    };
    vec![
        encode_frame(&DialRequest::new("fluentd"), MAX_DIAL_FRAME).expect("enc"),
        encode_frame(
            &ControlRequest::new(ControlBody::Admin(AdminRequest::CreateIdentity {
                name: n("app-1"),
                kind: Kind::Client,
                roles: vec![n("a")],
                token_ttl_secs: 60,
            })),
            MAX_CONTROL_FRAME,
        )
        .expect("enc"),
        encode_frame(&ControlResponse::Snapshot(snapshot), MAX_CONTROL_FRAME).expect("enc"),
    ]
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(dark_u64_seed());
    for _ in 0..20_000 {
        let len = rng.random_range(0..256);
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        decode_all(&buf);
    }
}

#[test]
fn mutated_messages_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for sample in samples() {
        for _ in 0..5_000 {
            let mut buf = sample.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..buf.len());
                buf[i] = rng.random();
            }
            if rng.random_bool(0.2) {
                buf.truncate(rng.random_range(0..buf.len()));
            }
            decode_all(&buf);
            // Bodies too, without the frame header.
            if buf.len() > 4 {
                decode_all(&buf[4..]);
            }
        }
    }
}

/// A body claiming a huge string length is refused without allocating it.
#[test]
fn huge_length_prefixes_are_refused() {
    let mut body = vec![0, 1]; // version
    body.extend_from_slice(&u64::MAX.to_be_bytes()); // string length
    assert!(from_bytes::<DialRequest>(&body).is_err());
    let mut body = vec![0, 1];
    body.extend_from_slice(&((MAX_CONTROL_FRAME as u64) * 4).to_be_bytes());
    body.extend_from_slice(b"abc");
    assert!(from_bytes::<DialRequest>(&body).is_err());
}

const fn dark_u64_seed() -> u64 {
    0xda7c_0de5
}
