//! TLS configurations and the identity check at the TLS boundary.
//!
//! All TLS here is TLS 1.3 with the ring provider and mutual authentication
//! against the Darkport CA. Servers (router, controller) verify client
//! certificates with rustls's WebPKI verifier; clients verify servers with
//! [`PeerVerifier`], which checks the chain to the CA exactly like WebPKI
//! but, instead of a DNS name, requires the identity URI in the leaf to name
//! the expected kind (router or controller). This is how SPIFFE-style
//! identities are verified; it is not a "trust everything" verifier.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

use darkport_proto::identity::{fingerprint, Kind};
use darkport_proto::PeerIdentity;

pub use crate::cert::{cert_identity, cert_validity, identity_from_chain, TlsError};
use crate::identity::Identity;

/// The one crypto provider Darkport uses: ring, TLS 1.3 suites only, with
/// AES-128-GCM first. rustls (like OpenSSL, so stunnel too) prefers
/// AES-256-GCM; AES-128-GCM does 10 AES rounds instead of 14 for the same
/// GHASH, and at MTU 1500 QUIC pays it on every 1,452-byte packet
/// (docs/benchmarks.md, "What bounds QUIC at MTU 1500"). AES-128-GCM is
/// TLS 1.3's mandatory suite and the one QUIC's Initial packets use; the
/// other two stay for peers that want them.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    store.add(ca.clone())?;
    Ok(Arc::new(store))
}

/// How a client decides to trust the server's CA.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The CA certificate from an identity file.
    Ca(CertificateDer<'static>),
    /// Only a CA certificate with this SHA-256 fingerprint (hex), found in
    /// the chain the server sends: used by enrollment, where the host has
    /// nothing but the token.
    Pinned(String),
}

/// Server certificate verifier for Darkport peers; see the module docs.
#[derive(Debug)]
pub struct PeerVerifier {
    trust: Trust,
    expected: Kind,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    /// A verifier requiring a chain to `trust` and a leaf of kind `expected`.
    pub fn new(trust: Trust, expected: Kind) -> Self {
        PeerVerifier {
            trust,
            expected,
            provider: provider(),
        }
    }

    fn reject(msg: String) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(PeerRejected(msg)),
        )))
    }
}

/// A verifier's reason for refusing a server, in plain words.
#[derive(Debug)]
struct PeerRejected(String);

impl std::fmt::Display for PeerRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerRejected {}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = match &self.trust {
            Trust::Ca(ca) => roots(ca).map_err(|e| Self::reject(e.to_string()))?,
            Trust::Pinned(fp) => {
                let ca = intermediates
                    .iter()
                    .find(|c| fingerprint(c) == *fp)
                    .ok_or_else(|| {
                        Self::reject(format!(
                            "the server's CA does not match the CA fingerprint {fp} pinned in the token; \
                             the token was made for another controller, or someone is intercepting the connection"
                        ))
                    })?;
                roots(&ca.clone().into_owned()).map_err(|e| Self::reject(e.to_string()))?
            }
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let (kind, name, _) = cert_identity(end_entity)
            .map_err(|e| Self::reject(format!("server certificate: {e}")))?;
        if kind != self.expected {
            return Err(Self::reject(format!(
                "the server's certificate names {kind} identity {name:?}, not a {}; refusing to connect",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled; a TLS 1.2 signature is never acceptable.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a server requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate chaining to the CA (routers).
    Required,
    /// Clients may connect without a certificate (the controller, for
    /// enrollment); one that presents a certificate must chain to the CA.
    Optional,
}

/// A QUIC server configuration for `identity`.
pub fn server_config(
    identity: &Identity,
    client_auth: ClientAuth,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = rustls_server_config(identity, client_auth, alpn)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // Few streams until the peer is admitted: see PENDING_STREAMS.
    cfg.transport_config(crate::endpoint::pending_transport_config());
    Ok(cfg)
}

/// The rustls server configuration under [`server_config`], also used
/// as is for TLS over TCP.
pub fn rustls_server_config(
    identity: &Identity,
    client_auth: ClientAuth,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(&identity.ca)?, provider());
    let verifier = match client_auth {
        ClientAuth::Required => builder.build()?,
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    // No session resumption: a resumed TLS 1.3 session restores the
    // client's certificate chain without verifying it again, so an expired
    // certificate could come back. A full handshake costs ~0.7 ms, and
    // tunnels keep their connections for hours.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
}

/// A QUIC client configuration: trust `trust`, expect a server of kind
/// `expected`, present `identity` if given.
pub fn client_config(
    identity: Option<&Identity>,
    trust: Trust,
    expected: Kind,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = rustls_client_config(identity, trust, expected, alpn)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(crate::endpoint::transport_config());
    Ok(cfg)
}

/// The rustls client configuration under [`client_config`], also used
/// as is for TLS over TCP.
pub fn rustls_client_config(
    identity: Option<&Identity>,
    trust: Trust,
    expected: Kind,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(trust, expected)));
    let mut tls = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    // See server_config: every handshake verifies both certificates.
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(tls)
}

/// The configuration every enrolled identity uses to talk to its
/// controller: present the identity, trust its CA, expect a controller.
pub fn controller_client_config(identity: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    client_config(
        Some(identity),
        Trust::Ca(identity.ca.clone()),
        Kind::Controller,
        darkport_proto::ALPN_CONTROL,
    )
}

/// The verified identity of a QUIC peer, from its leaf certificate.
///
/// Call only on connections whose handshake verified the certificate
/// (every Darkport server and client configuration does).
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, TlsError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TlsError::NoPeerCertificate)?;
    identity_from_chain(&certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends use [`provider`], and a rustls server takes the client's
    /// order, so the first suite is the one every Darkport connection
    /// negotiates: AES-128-GCM, and only TLS 1.3 suites.
    #[test]
    fn aes_128_gcm_is_preferred_and_only_tls13_suites_are_offered() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            vec![
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
    }
}
