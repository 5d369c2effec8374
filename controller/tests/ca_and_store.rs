//! The CA and the state store, without sockets.

use std::time::Duration;

use darkport_controller::ca::Ca;
use darkport_controller::store::{Store, TokenRecord};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_transport::tls::cert_identity;
use rustls::pki_types::CertificateDer;

fn n(s: &str) -> IdentityName {
    IdentityName::new(s).expect("name")
}

#[test]
fn csr_requests_cannot_choose_their_identity() {
    let (ca, key_pem) = Ca::generate().expect("ca");
    let ca = Ca::load(&ca.cert_pem, &key_pem).expect("reload");
    // The requester asks for a router URI and a DNS name; it gets neither.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://darkport/router/evil".try_into().expect("uri"),
    ));
    let csr = params.serialize_request(&key).expect("csr");
    let (_, der) = ca
        .sign_csr(
            csr.der(),
            Kind::Client,
            &n("app-1"),
            Duration::from_secs(60),
        )
        .expect("sign");
    let (kind, name, not_after) = cert_identity(&CertificateDer::from(der)).expect("identity");
    assert_eq!((kind, name), (Kind::Client, n("app-1")));
    assert!(not_after <= darkport_transport::unix_now() + 61);

    // A CSR whose signature does not verify is refused.
    let mut bad = csr.der().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(ca
        .sign_csr(&bad, Kind::Client, &n("app-1"), Duration::from_secs(60))
        .is_err());
    assert!(ca
        .sign_csr(
            b"garbage",
            Kind::Client,
            &n("app-1"),
            Duration::from_secs(60)
        )
        .is_err());
}

#[test]
fn state_survives_reopen_and_failed_updates_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.db");
    let store = Store::open(&path).expect("open");
    let mut rx = store.subscribe();
    store
        .update(true, None, |s| {
            s.tokens.insert(
                "t1".into(),
                TokenRecord {
                    identity: n("app-1"),
                    expires_at: 10,
                    consumed_at: Some(5),
                },
            );
            Ok::<_, darkport_controller::store::StoreError>(())
        })
        .expect("update");
    assert!(rx.has_changed().expect("channel"));
    assert_eq!(rx.borrow_and_update().version, 1);

    // A failing change leaves state and file untouched.
    let before = std::fs::read(&path).expect("read");
    let r: Result<(), StoreErr> = store.update(true, None, |s| {
        s.tokens.clear();
        Err(StoreErr("nope"))
    });
    assert!(matches!(r, Err(StoreErr("nope"))));
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert_eq!(store.read().tokens.len(), 1);
    assert!(!rx.has_changed().expect("channel"));

    // Consumed tokens stay consumed across a restart.
    drop(store);
    let store = Store::open(&path).expect("reopen");
    let state = store.read();
    assert_eq!(state.version, 1);
    assert_eq!(state.tokens["t1"].consumed_at, Some(5));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // A corrupt file is an error, not a panic and not an empty state.
    drop(store);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("state.db{suffix}")));
    }
    std::fs::write(&path, vec![b'x'; 8192]).expect("write");
    let err = Store::open(&path).expect_err("corrupt");
    assert!(err.to_string().contains("state.db"), "{err}");
}

#[derive(Debug)]
struct StoreErr(&'static str);
impl From<darkport_controller::store::StoreError> for StoreErr {
    fn from(_: darkport_controller::store::StoreError) -> Self {
        StoreErr("store")
    }
}

/// Mutated CSRs (bit flips, truncation, junk) never panic the CA, and
/// whatever it signs carries a P-256 key and the identity it was asked for.
#[test]
fn mutated_csrs_never_panic_and_never_yield_other_keys() {
    use rand::{Rng, SeedableRng};
    let (ca, _) = Ca::generate().expect("ca");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let p256 = rcgen::KeyPair::generate().expect("key");
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let csrs: Vec<Vec<u8>> = [&p256, &p384]
        .iter()
        .map(|k| {
            rcgen::CertificateParams::new(Vec::<String>::new())
                .expect("params")
                .serialize_request(k)
                .expect("csr")
                .der()
                .to_vec()
        })
        .collect();
    let mut signed = 0;
    for case in 0..3000 {
        let mut der = csrs[case % 2].clone();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..3) {
                0 if !der.is_empty() => {
                    let i = rng.random_range(0..der.len());
                    der[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !der.is_empty() => der.truncate(rng.random_range(0..der.len())),
                _ => der.push(rng.random()),
            }
        }
        if let Ok((_, cert)) = ca.sign_csr(&der, Kind::Client, &n("app-1"), Duration::from_secs(60))
        {
            signed += 1;
            let cert = CertificateDer::from(cert);
            let (kind, name, _) = cert_identity(&cert).expect("a usable certificate");
            assert_eq!((kind, name), (Kind::Client, n("app-1")));
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("parses");
            let spki = &parsed.tbs_certificate.subject_pki;
            assert_eq!(
                spki.subject_public_key.data.len(),
                65,
                "case {case}: a P-256 point"
            );
        }
    }
    // Flips in the signature or padding are caught by the signature check;
    // a few mutations leave the CSR valid (unused bits): fine either way.
    assert!(signed < 3000);
}
