//! The certificate authority.
//!
//! The CA key (ECDSA P-256) lives in the data dir with mode 0600 and signs
//! every identity certificate. Certificates name their identity in exactly
//! one URI SAN (`spiffe://darkport/<kind>/<name>`); whatever else a CSR asks
//! for is ignored. Only the public key is taken from a CSR, after its
//! signature proves the requester holds the private key.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::time::Duration;
use time::OffsetDateTime;

use darkport_proto::identity::{identity_uri, IdentityName, Kind};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// rcgen failed (bad key, bad CSR, ...).
    #[error("certificate authority: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CSR was refused.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
}

/// Lifetime of the CA certificate.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Tolerated clock skew: certificates are valid from this long ago.
const BACKDATE: Duration = Duration::from_secs(darkport_proto::CERT_BACKDATE_SECS);

/// A loaded CA: certificate and signing key.
pub struct Ca {
    /// CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(..)")
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // ring's system RNG; fall back to time only if the OS RNG fails, which
    // rcgen would have failed on already.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// Makes a new CA. Returns it and the key PEM to store.
    pub fn generate() -> Result<(Ca, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A unique name per CA: certificates from another Darkport CA then
        // fail as "unknown issuer" rather than as a bad signature.
        let id = random_serial().to_bytes();
        let suffix: String = id.iter().take(4).map(|b| format!("{b:02x}")).collect();
        dn.push(DnType::CommonName, format!("Darkport CA {suffix}"));
        dn.push(DnType::OrganizationName, "Darkport");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_TTL;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok((
            Ca {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    fn leaf_params(
        kind: Kind,
        name: &IdentityName,
        ttl: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        dn.push(DnType::OrganizationalUnitName, kind.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity_uri(kind, name).try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            Kind::Client | Kind::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
            // Routers serve clients and are clients of the controller.
            Kind::Router => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Controller => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Issues a certificate for a key pair made here (controller and admin
    /// identities, which live on the controller host). Returns cert PEM,
    /// key PEM and cert DER.
    pub fn issue_local(
        &self,
        kind: Kind,
        name: &IdentityName,
        ttl: Duration,
    ) -> Result<(String, String, Vec<u8>), CaError> {
        let key = KeyPair::generate()?;
        let cert = Self::leaf_params(kind, name, ttl)?.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
    }

    /// Signs a CSR (DER) for `kind`/`name`. Only the CSR's public key is
    /// used. Returns the certificate as PEM and DER.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        kind: Kind,
        name: &IdentityName,
        ttl: Duration,
    ) -> Result<(String, Vec<u8>), CaError> {
        check_csr_key(csr_der)?;
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::BadCsr(format!("{e}; the enrolling host sent an invalid CSR")))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::BadCsr(CSR_KEY_POLICY.into()));
        }
        let cert = Self::leaf_params(kind, name, ttl)?.signed_by(&csr.public_key, &self.issuer)?;
        Ok((cert.pem(), cert.der().to_vec()))
    }
}

/// What the CA signs, in the words its refusals use.
const CSR_KEY_POLICY: &str =
    "only ECDSA P-256 keys with ecdsa-with-SHA256 CSRs are accepted (what darkport enroll makes); generate the key with darkport enroll";

/// Accepts only the documented key type: an uncompressed ECDSA P-256
/// public key, and a CSR signed with ecdsa-with-SHA256. rcgen takes the
/// certificate's key algorithm from the CSR's *signature* algorithm, so a
/// P-384 key in a CSR that claims SHA-256 would yield a malformed
/// certificate; checking the key itself closes that.
pub fn check_csr_key(csr_der: &[u8]) -> Result<(), CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
    };
    use x509_parser::prelude::FromDer;
    let bad = |what: String| CaError::BadCsr(format!("{what}; {CSR_KEY_POLICY}"));
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CaError::BadCsr(format!("{e}; the enrolling host sent an invalid CSR")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr(format!(
            "{} bytes after the CSR; the enrolling host sent an invalid CSR",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(bad(format!(
            "the CSR's key is of type {}",
            spki.algorithm.algorithm
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(bad(match curve {
            Some(c) => format!("the CSR's key is on curve {c}"),
            None => "the CSR's key names no curve".into(),
        }));
    }
    let point = &spki.subject_public_key.data;
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(bad(format!(
            "the CSR's P-256 key is not an uncompressed point ({} bytes)",
            point.len()
        )));
    }
    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(bad(format!(
            "the CSR is signed with {}",
            csr.signature_algorithm.algorithm
        )));
    }
    Ok(())
}
