//! Enrollment: redeem a token for an identity file.
//!
//! The key pair is made here and never leaves this host; the controller
//! sees only a CSR. The controller is trusted only if its certificate
//! chains to a CA whose SHA-256 fingerprint is the one pinned in the token.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use darkport_proto::identity::{fingerprint, Kind};
use darkport_proto::msg::{ControlBody, ControlResponse, EnrollRequest};
use darkport_proto::token::{SignedToken, TokenClaims, TokenError, TOKEN_PREFIX};
use darkport_proto::ALPN_CONTROL;

use crate::control::{one_shot, ControlClientError};
use crate::identity::{
    write_private_file, Identity, IdentityError, IdentityFile, IDENTITY_FILE_VERSION,
};
use crate::tls::{client_config, TlsError, Trust};

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The token could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The token is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token is for another kind of identity.
    #[error("this token enrolls a {actual} identity, not a {expected}; use darkport-edge-{actual_cmd} enroll")]
    WrongKind {
        /// What this program enrolls.
        expected: Kind,
        /// What the token is for.
        actual: Kind,
        /// Program suffix for the right command.
        actual_cmd: &'static str,
    },
    /// Key or CSR generation failed.
    #[error("cannot make a key pair: {0}")]
    Key(#[from] rcgen::Error),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Talking to the controller failed or it refused.
    #[error(transparent)]
    Control(#[from] ControlClientError),
    /// The controller's answer does not fit what was asked.
    #[error("the controller's answer is invalid: {0}")]
    BadAnswer(String),
    /// The identity file could not be written.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Reads a token given as text (`dpt1.…`) or as a path to a file holding it.
pub fn read_token(arg: &str) -> Result<String, EnrollError> {
    let is_token = arg
        .trim_start()
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'));
    if is_token {
        return Ok(arg.trim().to_string());
    }
    std::fs::read_to_string(arg)
        .map(|s| s.trim().to_string())
        .map_err(|source| EnrollError::TokenFile {
            path: arg.to_string(),
            source,
        })
}

/// Enrolls with `token` (text), expecting it to be for `expected`, and
/// writes the identity file to `out` (mode 0600; refuses to overwrite).
pub async fn enroll(token: &str, expected: Kind, out: &Path) -> Result<IdentityFile, EnrollError> {
    let parsed = SignedToken::parse(token)?;
    let claims = parsed.claims.clone();
    if claims.kind != expected {
        return Err(EnrollError::WrongKind {
            expected,
            actual: claims.kind,
            actual_cmd: if claims.kind == Kind::Router {
                "router"
            } else {
                "client"
            },
        });
    }
    parsed.check_expiry(crate::unix_now())?;
    if out.exists() {
        return Err(IdentityError::Exists(out.to_path_buf()).into());
    }
    // The token is spent once the controller answers: find out now, not
    // then, whether the identity file can be written.
    write_private_file(out, b"", false)?;
    let result = redeem(token, &claims, out).await;
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

async fn redeem(
    token: &str,
    claims: &TokenClaims,
    out: &Path,
) -> Result<IdentityFile, EnrollError> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;

    let config = client_config(
        None,
        Trust::Pinned(claims.ca_fingerprint.clone()),
        Kind::Controller,
        ALPN_CONTROL,
    )?;
    let body = ControlBody::Enroll(EnrollRequest {
        token: token.trim().to_string(),
        csr_der: csr.der().to_vec(),
    });
    let (cert_pem, ca_pem) = match one_shot(&claims.controller, config, body).await? {
        ControlResponse::Enrolled { cert_pem, ca_pem } => (cert_pem, ca_pem),
        _ => return Err(EnrollError::BadAnswer("not an enrollment result".into())),
    };
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| EnrollError::BadAnswer(format!("CA certificate: {e}")))?;
    if fingerprint(&ca) != claims.ca_fingerprint {
        return Err(EnrollError::BadAnswer(
            "the CA returned is not the pinned CA".into(),
        ));
    }
    let file = IdentityFile {
        version: IDENTITY_FILE_VERSION,
        name: claims.identity.clone(),
        kind: claims.kind,
        controller: claims.controller.clone(),
        key_pem: key.serialize_pem(),
        cert_pem,
        ca_pem,
    };
    // Parse it back before saving: the certificate must name this identity
    // and carry our public key.
    let parsed = Identity::from_file(file.clone()).map_err(EnrollError::BadAnswer)?;
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(parsed.key.clone_key())
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    rustls::sign::CertifiedKey::new(parsed.chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| EnrollError::BadAnswer(format!("certificate does not match our key: {e}")))?;
    file.save(out, true)?;
    Ok(file)
}
