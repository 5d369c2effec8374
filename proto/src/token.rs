//! One-time enrollment tokens.
//!
//! A token is one line of text: `dpt1.<claims>.<mac>`, both parts base64url
//! without padding. The claims name the identity, its kind, the controller's
//! address, the SHA-256 fingerprint of the CA certificate (so the enrolling
//! host can pin the CA with no trust on first use), an expiry and a unique
//! id. The MAC is HMAC-SHA256 under a secret that never leaves the
//! controller, so only the controller can issue or check tokens. Single use
//! is enforced by the controller, which records consumed token ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use crate::identity::{IdentityName, Kind};

/// The first part of every token's text, before the first `.`: names the
/// token format, so text that is not a token is told apart at once (and a
/// future format gets another prefix).
pub const TOKEN_PREFIX: &str = "dpt1";

/// Longest token text accepted, to bound work on hostile input.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TokenClaims {
    /// Unique id (hex), consumed on use.
    pub token_id: String,
    /// Identity to enroll.
    pub identity: IdentityName,
    /// Client or router.
    pub kind: Kind,
    /// Controller `host:port` to enroll with.
    pub controller: String,
    /// Lowercase hex SHA-256 of the CA certificate (DER).
    pub ca_fingerprint: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// A token: claims plus the controller's MAC over their encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    /// The claims, as carried.
    pub claims: TokenClaims,
    /// HMAC-SHA256 tag over the encoded claims.
    pub mac: Vec<u8>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text is not a Darkport token.
    #[error("enrollment token is malformed ({0}); copy the whole line that darkport-controller identity create printed")]
    Malformed(String),
    /// The MAC does not match.
    #[error("enrollment token signature is invalid: it was altered or not issued by this controller; create a new one with darkport-controller identity create")]
    BadSignature,
    /// Past its expiry.
    #[error("enrollment token for {identity} expired at {}; create a new one with darkport-controller identity create", fmt_time(*.at))]
    Expired {
        /// Identity named by the token.
        identity: IdentityName,
        /// Expiry, Unix seconds.
        at: u64,
    },
}

/// Formats Unix seconds as RFC 3339 UTC.
pub fn fmt_time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The controller's token secret.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    /// Builds a key from secret bytes (32 random bytes kept by the controller).
    pub fn new(secret: &[u8]) -> Self {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl SignedToken {
    /// Signs claims.
    pub fn sign(claims: TokenClaims, key: &TokenKey) -> Result<Self, crate::ProtoError> {
        let body = crate::codec::to_bytes(&claims)?;
        let mac = hmac::sign(&key.0, &body).as_ref().to_vec();
        Ok(SignedToken { claims, mac })
    }

    /// The one-line text form.
    pub fn encode(&self) -> Result<String, crate::ProtoError> {
        let body = crate::codec::to_bytes(&self.claims)?;
        Ok(format!(
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(body),
            URL_SAFE_NO_PAD.encode(&self.mac)
        ))
    }

    /// Parses the text form. Does not check the MAC: only the controller
    /// can, with [`SignedToken::verify`].
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} characters"
            )));
        }
        let mut parts = text.split('.');
        let (Some(prefix), Some(body), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::Malformed(format!(
                "unknown prefix {prefix:?}, expected {TOKEN_PREFIX:?}"
            )));
        }
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|e| TokenError::Malformed(format!("signature: {e}")))?;
        let claims = crate::codec::from_bytes(&body)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        Ok(SignedToken { claims, mac })
    }

    /// Checks the MAC, then the expiry against `now` (Unix seconds).
    pub fn verify(&self, key: &TokenKey, now: u64) -> Result<&TokenClaims, TokenError> {
        let body = crate::codec::to_bytes(&self.claims).map_err(|_| TokenError::BadSignature)?;
        hmac::verify(&key.0, &body, &self.mac).map_err(|_| TokenError::BadSignature)?;
        self.check_expiry(now)?;
        Ok(&self.claims)
    }

    /// Checks only the expiry; the enrolling host does this before it
    /// connects, for a clearer error.
    pub fn check_expiry(&self, now: u64) -> Result<(), TokenError> {
        if now >= self.claims.expires_at {
            return Err(TokenError::Expired {
                identity: self.claims.identity.clone(),
                at: self.claims.expires_at,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TokenClaims {
        TokenClaims {
            token_id: "00112233445566778899aabbccddeeff".into(),
            identity: IdentityName::new("app-1").expect("name"),
            kind: Kind::Client,
            controller: "127.0.0.1:7443".into(),
            ca_fingerprint: "ab".repeat(32),
            expires_at: 2_000_000_000,
        }
    }

    #[test]
    fn sign_parse_verify() {
        let key = TokenKey::new(&[7; 32]);
        let text = SignedToken::sign(claims(), &key)
            .expect("sign")
            .encode()
            .expect("encode");
        assert!(!text.contains(char::is_whitespace));
        let tok = SignedToken::parse(&format!("  {text}\n")).expect("parse");
        assert_eq!(tok.verify(&key, 1_000).expect("verify"), &claims());
    }

    #[test]
    fn refusals() {
        let key = TokenKey::new(&[7; 32]);
        let tok = SignedToken::sign(claims(), &key).expect("sign");
        // Expired.
        let err = tok.verify(&key, 2_000_000_000).expect_err("expired");
        assert!(
            err.to_string().contains("expired at 2033-05-18T03:33:20Z"),
            "{err}"
        );
        // Other key.
        assert_eq!(
            tok.verify(&TokenKey::new(&[8; 32]), 1),
            Err(TokenError::BadSignature)
        );
        // Altered claims keep the old MAC.
        let mut altered = tok.clone();
        altered.claims.kind = Kind::Router;
        let altered = SignedToken::parse(&altered.encode().expect("encode")).expect("parse");
        assert_eq!(altered.verify(&key, 1), Err(TokenError::BadSignature));
        // Garbage.
        for bad in [
            "",
            "dpt1",
            "dpt2.a.b",
            "dpt1.!!.aa",
            "dpt1.aa.bb.cc",
            &"a".repeat(5000),
        ] {
            assert!(
                matches!(SignedToken::parse(bad), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
