//! Structured fuzzing on stable Rust (cargo-fuzz needs nightly): arbitrary
//! values of every wire type (the `arbitrary` crate), encoded, then
//! mutated (bit flips, truncation, extension, overwritten lengths), and
//! fed to every decoder that reads peer input.
//!
//! Properties:
//! - no decoder panics, whatever the bytes;
//! - a value encodes and decodes back to itself (or is refused as too
//!   large);
//! - the encoding is canonical: whatever a decoder accepts re-encodes to
//!   exactly the bytes it read, so no message has two spellings;
//! - a token whose text was changed never verifies.
//!
//! `DARKPORT_FUZZ_CASES` sets the number of cases (default 20,000, a few
//! seconds); `DARKPORT_FUZZ_SEED` the seed. The long run:
//! `DARKPORT_FUZZ_CASES=1000000 cargo test --release -p darkport-proto --test fuzz`.

use arbitrary::{Arbitrary, Unstructured};
use rand::{Rng, RngCore, SeedableRng};
use serde::{de::DeserializeOwned, Serialize};

use darkport_proto::codec::{
    decode_frame, encode_frame, from_bytes, from_bytes_within, to_bytes, ProtoError,
    MAX_CONTROL_FRAME, MAX_DIAL_FRAME, MAX_UNAUTHENTICATED_FRAME,
};
use darkport_proto::msg::{
    CloseNotice, ControlRequest, ControlResponse, DialRequest, DialResponse,
};
use darkport_proto::policy::PolicySnapshot;
use darkport_proto::token::{SignedToken, TokenClaims, TokenKey};

fn cases() -> u64 {
    std::env::var("DARKPORT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("DARKPORT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x05ee_dda4_c0de)
}

/// Changes `bytes` the way a hostile or broken peer might.
fn mutate(rng: &mut impl Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..6) {
            0 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            2 => {
                let cut = rng.random_range(0..=bytes.len());
                bytes.truncate(cut);
            }
            3 => {
                let n = rng.random_range(1..16);
                let mut extra = vec![0u8; n];
                rng.fill_bytes(&mut extra);
                let at = rng.random_range(0..=bytes.len());
                bytes.splice(at..at, extra);
            }
            4 if bytes.len() >= 8 => {
                // A length or count field set to something large.
                let i = rng.random_range(0..=bytes.len() - 8);
                let v: u64 = match rng.random_range(0..3) {
                    0 => u64::MAX,
                    1 => u64::from(u32::MAX),
                    _ => rng.random_range(0..1 << 24),
                };
                bytes[i..i + 8].copy_from_slice(&v.to_be_bytes());
            }
            _ => bytes.reverse(),
        }
    }
}

/// Round trip, canonical encoding, and mutated input for one type.
fn exercise<T>(u: &mut Unstructured<'_>, rng: &mut impl Rng, max: usize) -> arbitrary::Result<()>
where
    T: for<'a> Arbitrary<'a> + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = u.arbitrary()?;
    let frame = match encode_frame(&value, max) {
        Ok(f) => f,
        Err(ProtoError::TooLarge { .. }) => return Ok(()),
        Err(e) => panic!("encoding {value:?} failed: {e}"),
    };
    let (back, used) = decode_frame::<T>(&frame, max).expect("a frame decodes");
    assert_eq!(used, frame.len());
    assert_eq!(back, value, "round trip");
    let mut bytes = frame;
    mutate(rng, &mut bytes);
    if let Ok((decoded, used)) = decode_frame::<T>(&bytes, max) {
        // Canonical: what was accepted re-encodes to the same bytes.
        let again = encode_frame(&decoded, max).expect("re-encode");
        assert_eq!(again, bytes[..used], "two encodings of {decoded:?}");
    }
    Ok(())
}

/// Every decoder at once, on bytes of any shape.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_frame::<DialRequest>(bytes, MAX_DIAL_FRAME);
    let _ = decode_frame::<DialResponse>(bytes, MAX_DIAL_FRAME);
    let _ = decode_frame::<CloseNotice>(bytes, MAX_DIAL_FRAME);
    let _ = decode_frame::<ControlRequest>(bytes, MAX_UNAUTHENTICATED_FRAME);
    let _ = decode_frame::<ControlRequest>(bytes, MAX_CONTROL_FRAME);
    let _ = decode_frame::<ControlResponse>(bytes, MAX_CONTROL_FRAME);
    let _ = from_bytes::<PolicySnapshot>(bytes);
    let _ = from_bytes_within::<DialRequest>(bytes, MAX_DIAL_FRAME);
    let _ = SignedToken::parse(&String::from_utf8_lossy(bytes));
}

#[test]
fn structured_fuzzing_of_every_decoder() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let key = TokenKey::new(b"fuzzing key, 32 bytes long......");
    let mut raw = vec![0u8; 8192];
    for case in 0..cases() {
        let len = rng.random_range(0..raw.len());
        rng.fill_bytes(&mut raw[..len]);
        decode_everything(&raw[..len]);
        let mut u = Unstructured::new(&raw[..len]);
        let kind: u8 = rng.random_range(0..8);
        let r = match kind {
            0 => exercise::<DialRequest>(&mut u, &mut rng, MAX_DIAL_FRAME),
            1 => exercise::<DialResponse>(&mut u, &mut rng, MAX_DIAL_FRAME),
            2 => exercise::<ControlRequest>(&mut u, &mut rng, MAX_UNAUTHENTICATED_FRAME),
            3 => exercise::<ControlRequest>(&mut u, &mut rng, MAX_CONTROL_FRAME),
            4 => exercise::<ControlResponse>(&mut u, &mut rng, MAX_CONTROL_FRAME),
            5 => exercise::<PolicySnapshot>(&mut u, &mut rng, MAX_CONTROL_FRAME),
            6 => exercise::<CloseNotice>(&mut u, &mut rng, MAX_DIAL_FRAME),
            _ => (|| {
                let mut claims: TokenClaims = u.arbitrary()?;
                claims.expires_at = claims.expires_at.max(1);
                let Ok(token) = SignedToken::sign(claims.clone(), &key) else {
                    return Ok(());
                };
                let Ok(text) = token.encode() else {
                    return Ok(());
                };
                let parsed = SignedToken::parse(&text).expect("a signed token parses");
                assert_eq!(parsed.verify(&key, 0).expect("and verifies"), &claims);
                let mut bytes = text.clone().into_bytes();
                mutate(&mut rng, &mut bytes);
                let changed = String::from_utf8_lossy(&bytes).into_owned();
                if changed.trim() != text {
                    if let Ok(t) = SignedToken::parse(&changed) {
                        assert!(
                            t.verify(&key, 0).is_err(),
                            "case {case}: a changed token verified: {changed:?}"
                        );
                    }
                }
                Ok(())
            })(),
        };
        // Running out of input is not a failure: the case is just smaller.
        match r {
            Ok(()) | Err(arbitrary::Error::NotEnoughData) => {}
            Err(e) => panic!("case {case}: {e}"),
        }
    }
    // The canonical-encoding check must have had something to check.
    let sample = to_bytes(&DialRequest::new("fluentd")).expect("encode");
    assert!(from_bytes::<DialRequest>(&sample).is_ok());
}
