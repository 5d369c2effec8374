//! Structured fuzzing of the router's filter, in the style of
//! proto/tests/fuzz.rs: valid messages of every mode, mutated, fed in
//! random pieces. The filter must never panic; whatever it lets through
//! must be valid PackedForward whose every record carries the stamp once;
//! and unmutated input must pass whole.
//!
//! `DARKPORT_FUZZ_CASES=1000000 cargo test --release -p darkport-fluent --test fuzz`
//! for a long run (the default is 3,000 cases).

use std::io::Write;

use darkport_fluent::{Filter, Limits, Stamp, StampValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmpv::Value as V;

fn cases() -> u64 {
    std::env::var("DARKPORT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

fn enc(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("encode");
    out
}

fn value(rng: &mut StdRng, depth: u32) -> V {
    match rng.random_range(0..if depth > 2 { 6 } else { 8 }) {
        0 => V::Nil,
        1 => V::from(rng.random::<bool>()),
        2 => V::from(rng.random::<i64>()),
        3 => V::from(rng.random::<f64>()),
        4 => V::from("x".repeat(rng.random_range(0..40))),
        5 => V::Binary(vec![7; rng.random_range(0..40)]),
        6 => V::Array(
            (0..rng.random_range(0..4))
                .map(|_| value(rng, depth + 1))
                .collect(),
        ),
        _ => record(rng, depth + 1),
    }
}

fn record(rng: &mut StdRng, depth: u32) -> V {
    let mut pairs: Vec<(V, V)> = (0..rng.random_range(0..5))
        .map(|i| (V::from(format!("k{i}")), value(rng, depth + 1)))
        .collect();
    if rng.random_range(0..4) == 0 {
        pairs.push((V::from("darkport_identity"), V::from("forged")));
    }
    V::Map(pairs)
}

fn time(rng: &mut StdRng) -> V {
    if rng.random::<bool>() {
        V::from(rng.random::<u32>())
    } else {
        let mut b = rng.random::<u32>().to_be_bytes().to_vec();
        b.extend_from_slice(&rng.random::<u32>().to_be_bytes());
        V::Ext(0, b)
    }
}

/// A valid message of a random mode, and how many records it holds.
fn message(rng: &mut StdRng) -> (Vec<u8>, usize) {
    let n = rng.random_range(0..6);
    let entries: Vec<V> = (0..n)
        .map(|_| V::Array(vec![time(rng), record(rng, 0)]))
        .collect();
    let mut opts = vec![];
    if rng.random::<bool>() {
        opts.push((
            V::from("chunk"),
            V::from(format!("c{}", rng.random::<u32>())),
        ));
    }
    let tag = V::from("app.fuzz");
    if rng.random_range(0..8) == 0 {
        // A batch large enough to be passed on as it arrives (cut-through).
        let n = rng.random_range(300..450);
        let packed: Vec<u8> = (0..n)
            .flat_map(|i| {
                enc(&V::Array(vec![
                    time(rng),
                    V::Map(vec![(V::from("m"), V::from(format!("{i:0>100}")))]),
                ]))
            })
            .collect();
        return (
            enc(&V::Array(vec![tag, V::Binary(packed), V::Map(opts)])),
            n,
        );
    }
    let v = match rng.random_range(0..4) {
        0 => {
            let mut a = vec![tag, time(rng), record(rng, 0)];
            if !opts.is_empty() {
                a.push(V::Map(opts));
            }
            return (enc(&V::Array(a)), 1);
        }
        1 => V::Array(vec![tag, V::Array(entries), V::Map(opts)]),
        2 => {
            let packed: Vec<u8> = entries.iter().flat_map(enc).collect();
            V::Array(vec![tag, V::Binary(packed), V::Map(opts)])
        }
        _ => {
            let packed: Vec<u8> = entries.iter().flat_map(enc).collect();
            let (codec, data) = if rng.random::<bool>() {
                let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                g.write_all(&packed).expect("gzip");
                ("gzip", g.finish().expect("gzip"))
            } else {
                ("zstd", zstd::encode_all(&packed[..], 1).expect("zstd"))
            };
            opts.push((V::from("compressed"), V::from(codec)));
            V::Array(vec![tag, V::Binary(data), V::Map(opts)])
        }
    };
    (enc(&v), n)
}

fn filter() -> Filter {
    let stamp = Stamp::new(&[("darkport_identity".into(), StampValue::Str("app-1".into()))]);
    Filter::new(
        stamp,
        None,
        Limits {
            max_message: 1 << 16,
            max_decompressed: 1 << 16,
            max_record: 1 << 14,
            ..Limits::default()
        },
    )
}

/// Checks the filter's output: PackedForward messages, every record
/// stamped exactly once with app-1. Returns the number of records.
fn check_output(mut out: &[u8]) -> usize {
    let mut records = 0;
    while !out.is_empty() {
        let v = rmpv::decode::read_value(&mut out).expect("the output is valid msgpack");
        let a = v.as_array().expect("a message");
        assert_eq!(a.len(), 3);
        let V::Binary(payload) = &a[1] else {
            panic!("PackedForward out")
        };
        let mut p = &payload[..];
        let mut n = 0;
        while !p.is_empty() {
            let e = rmpv::decode::read_value(&mut p).expect("an entry");
            let r = e.as_array().expect("entry")[1]
                .as_map()
                .expect("map")
                .clone();
            let ids: Vec<_> = r
                .iter()
                .filter(|(k, _)| k.as_str() == Some("darkport_identity"))
                .collect();
            assert_eq!(ids.len(), 1);
            assert_eq!(ids[0].1, V::from("app-1"));
            n += 1;
        }
        let size = a[2]
            .as_map()
            .expect("options")
            .iter()
            .find(|(k, _)| k.as_str() == Some("size"))
            .and_then(|(_, v)| v.as_u64());
        assert_eq!(size, Some(n as u64), "size recounted");
        records += n;
    }
    records
}

#[test]
fn valid_streams_pass_whole_in_any_pieces() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..cases() / 10 {
        let mut wire = Vec::new();
        let mut want = 0;
        for _ in 0..rng.random_range(1..5) {
            let (m, n) = message(&mut rng);
            wire.extend(m);
            want += n;
        }
        let mut f = filter();
        let mut out = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let k = rng.random_range(1..=rest.len());
            let denied = if rng.random::<bool>() {
                f.feed(&rest[..k], &mut out)
            } else {
                f.push(&rest[..k]);
                f.process(&mut out)
            };
            assert!(denied.expect("valid input").is_empty());
            rest = &rest[k..];
        }
        f.finish().expect("complete");
        assert_eq!(check_output(&out), want);
    }
}

#[test]
fn mutated_streams_never_panic_and_never_leak_unstamped_records() {
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..cases() {
        let (mut wire, _) = message(&mut rng);
        for _ in 0..rng.random_range(1..4) {
            if wire.is_empty() {
                break;
            }
            let i = rng.random_range(0..wire.len());
            match rng.random_range(0..4) {
                0 => wire[i] = rng.random(),
                1 => wire.truncate(i),
                2 => wire.insert(i, rng.random()),
                _ => {
                    let j = rng.random_range(i..wire.len());
                    wire.drain(i..j);
                }
            }
        }
        let mut f = filter();
        let mut out = Vec::new();
        f.push(&wire);
        let _ = f.process(&mut out);
        // Whatever passed is valid and stamped.
        check_output(&out);
    }
}
