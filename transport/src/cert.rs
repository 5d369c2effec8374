//! What a certificate says: the Darkport identity in its URI SAN, its
//! validity, and the identity of a verified chain. Pure parsing, with no
//! TLS configuration, so the identity file can check its own certificate
//! without depending on [`crate::tls`] (which depends on it).

use rustls::pki_types::CertificateDer;

use darkport_proto::identity::{fingerprint, parse_identity_uri, IdentityName, Kind};
use darkport_proto::PeerIdentity;

/// Why a TLS configuration or peer identity could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC refused the TLS configuration.
    #[error("quic tls configuration: {0}")]
    Quic(String),
    /// A certificate does not carry a usable identity.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The connection has no verified peer certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
}

/// Reads the identity URI and expiry (Unix seconds) from a certificate.
///
/// Exactly one URI SAN must be present, naming a Darkport identity.
pub fn cert_identity(der: &CertificateDer<'_>) -> Result<(Kind, IdentityName, u64), TlsError> {
    let bad = |m: String| TlsError::Certificate(m);
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| bad(format!("cannot parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("bad subject alternative names: {e}")))?
        .ok_or_else(|| bad("no subject alternative names; not a Darkport identity".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(bad(format!(
            "expected exactly one identity URI, found {}",
            uris.len()
        )));
    };
    let (kind, name) = parse_identity_uri(uri).map_err(|e| bad(e.to_string()))?;
    let not_after = cert.validity().not_after.timestamp().max(0) as u64;
    Ok((kind, name, not_after))
}

/// A certificate's validity period, Unix seconds (not before, not after).
pub fn cert_validity(der: &CertificateDer<'_>) -> Result<(u64, u64), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(format!("cannot parse: {e}")))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().max(0) as u64,
        v.not_after.timestamp().max(0) as u64,
    ))
}

/// The identity of a verified peer certificate chain (leaf first).
pub fn identity_from_chain(certs: &[CertificateDer<'_>]) -> Result<PeerIdentity, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    let (kind, name, _) = cert_identity(leaf)?;
    Ok(PeerIdentity {
        kind,
        name,
        fingerprint: fingerprint(leaf),
    })
}
