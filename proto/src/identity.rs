//! Identity kinds and names, and the URI a certificate carries.
//!
//! Every certificate the controller issues names exactly one identity in a
//! URI subject alternative name: `spiffe://darkport/<kind>/<name>`. Routers
//! and clients derive who a peer is from that URI in the *verified* leaf
//! certificate and from nothing else.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::TRUST_DOMAIN;

/// What an identity is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Kind {
    /// An app-side identity that dials services (edge client, SDK).
    Client,
    /// An edge router that accepts dials and reaches private services.
    Router,
    /// The operator identity that drives the controller's admin API.
    Admin,
    /// The controller itself (its TLS server certificate).
    Controller,
}

impl Kind {
    /// The path segment used in identity URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Router => "router",
            Kind::Admin => "admin",
            Kind::Controller => "controller",
        }
    }

    /// Parses the path segment form (`client`, `router`, ...).
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "client" => Kind::Client,
            "router" => Kind::Router,
            "admin" => Kind::Admin,
            "controller" => Kind::Controller,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a name or identity URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name breaks the naming rules.
    #[error("invalid name {0:?}: use 1 to 64 characters from a-z, A-Z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    Invalid(String),
    /// The URI is not a Darkport identity URI.
    #[error("{0:?} is not a Darkport identity URI (expected spiffe://{TRUST_DOMAIN}/<client|router|admin|controller>/<name>)")]
    NotIdentityUri(String),
}

/// A validated name of an identity, service, policy or role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentityName(String);

/// Arbitrary names for structured fuzzing: mostly valid ones (from the
/// allowed characters, 1 to 64 long), so generated messages get past name
/// checks and exercise what lies behind them.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for IdentityName {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
        let len = u.int_in_range(1..=64)?;
        let mut s = String::with_capacity(len);
        for _ in 0..len {
            s.push(char::from(*u.choose(CHARS)?));
        }
        Ok(IdentityName::new(s).unwrap_or_else(|_| IdentityName("a".into())))
    }
}

impl IdentityName {
    /// Validates a name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let ok_len = (1..=64).contains(&name.len());
        let ok_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok_len && ok_first && ok_chars {
            Ok(IdentityName(name))
        } else {
            Err(NameError::Invalid(name))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdentityName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        IdentityName::new(s)
    }
}

impl From<IdentityName> for String {
    fn from(n: IdentityName) -> String {
        n.0
    }
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Builds the URI naming an identity in its certificate.
pub fn identity_uri(kind: Kind, name: &IdentityName) -> String {
    format!(
        "spiffe://{TRUST_DOMAIN}/{}/{}",
        kind.as_str(),
        name.as_str()
    )
}

/// Parses an identity URI back into kind and name.
pub fn parse_identity_uri(uri: &str) -> Result<(Kind, IdentityName), NameError> {
    let bad = || NameError::NotIdentityUri(uri.to_string());
    let rest = uri
        .strip_prefix("spiffe://")
        .and_then(|r| r.strip_prefix(TRUST_DOMAIN))
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad)?;
    let (kind, name) = rest.split_once('/').ok_or_else(bad)?;
    let kind = Kind::parse(kind).ok_or_else(bad)?;
    let name = IdentityName::new(name).map_err(|_| bad())?;
    Ok((kind, name))
}

/// Who is on the other end of a verified TLS session.
///
/// Built at the TLS boundary from the verified leaf certificate; protocol
/// and policy code never see certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Kind named in the certificate URI.
    pub kind: Kind,
    /// Name named in the certificate URI.
    pub name: IdentityName,
    /// Lowercase hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// Lowercase hex SHA-256 of some bytes, the fingerprint format used
/// everywhere (certificates, CA pins).
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "app-1", "router_1.eu", &"x".repeat(64)] {
            assert!(IdentityName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a/b",
            "#role",
            "@x",
            &"x".repeat(65),
            "é",
        ] {
            assert!(IdentityName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uri_roundtrip_and_rejects() {
        let name = IdentityName::new("app-1").expect("name");
        let uri = identity_uri(Kind::Client, &name);
        assert_eq!(uri, "spiffe://darkport/client/app-1");
        assert_eq!(parse_identity_uri(&uri), Ok((Kind::Client, name)));
        for bad in [
            "spiffe://other/client/app-1",
            "spiffe://darkport/wizard/app-1",
            "spiffe://darkport/client/",
            "spiffe://darkport/client/a/b",
            "https://darkport/client/a",
            "spiffe://darkportx/client/a",
        ] {
            assert!(parse_identity_uri(bad).is_err(), "{bad}");
        }
    }
}
