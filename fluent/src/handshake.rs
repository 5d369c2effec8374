//! The handshake of `<security> shared_key` (forward protocol v1,
//! "Handshake Messages"). The server speaks first:
//!
//! ```text
//! server: ["HELO", {"nonce": NONCE, "auth": USER_AUTH_SALT or "", "keepalive": BOOL}]
//! client: ["PING", CLIENT_HOSTNAME, SHARED_KEY_SALT,
//!          hex(sha512(SHARED_KEY_SALT + CLIENT_HOSTNAME + NONCE + SHARED_KEY)),
//!          USERNAME or "", hex(sha512(USER_AUTH_SALT + USERNAME + PASSWORD)) or ""]
//! server: ["PONG", AUTH_OK, REASON or "", SERVER_HOSTNAME,
//!          hex(sha512(SHARED_KEY_SALT + SERVER_HOSTNAME + NONCE + SHARED_KEY))]
//! ```
//!
//! Both sides prove they hold the key: the server checks the PING digest,
//! the client the PONG digest. Then events flow as without security.
//! Nonces and salts come from the caller (this crate does no I/O and draws
//! no randomness).

use sha2::{Digest, Sha512};

use crate::scan::{self, split_value};
use crate::stamp::put_str;
use crate::FluentError;

/// Largest handshake message accepted.
pub const MAX_HANDSHAKE: usize = 4096;

fn bad(what: &str) -> FluentError {
    FluentError::Handshake(what.to_string())
}

/// The digest both sides compute: hex(sha512(salt + hostname + nonce + key)).
pub fn digest(salt: &[u8], hostname: &str, nonce: &[u8], shared_key: &str) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname.as_bytes());
    h.update(nonce);
    h.update(shared_key.as_bytes());
    hex::encode(h.finalize())
}

/// HELO, from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// The nonce both digests include.
    pub nonce: Vec<u8>,
    /// The user-auth salt; empty when the server does not ask for users.
    pub auth: Vec<u8>,
    /// Whether the server keeps the connection open for more messages.
    pub keepalive: bool,
}

impl Helo {
    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x92];
        put_str(&mut out, "HELO");
        out.push(0x83);
        put_str(&mut out, "nonce");
        let _ = rmp::encode::write_bin(&mut out, &self.nonce);
        put_str(&mut out, "auth");
        let _ = rmp::encode::write_bin(&mut out, &self.auth);
        put_str(&mut out, "keepalive");
        let _ = rmp::encode::write_bool(&mut out, self.keepalive);
        out
    }

    /// Parses one whole message.
    pub fn parse(v: &[u8]) -> Result<Helo, FluentError> {
        let (n, rest) = scan::as_array(v).ok_or_else(|| bad("HELO must be an array"))?;
        let (kind, rest) = split_value(rest)?;
        if n != 2 || scan::as_str(kind) != Some(b"HELO") {
            return Err(bad("expected [\"HELO\", options] from the server; is <security> on, and is this a Fluentd forward port?"));
        }
        let (opts, _) = split_value(rest)?;
        let (pairs, mut rest) =
            scan::as_map(opts).ok_or_else(|| bad("HELO options must be a map"))?;
        let mut helo = Helo {
            nonce: Vec::new(),
            auth: Vec::new(),
            keepalive: true,
        };
        for _ in 0..pairs {
            let (k, r) = split_value(rest)?;
            let (val, r) = split_value(r)?;
            rest = r;
            match scan::as_str(k) {
                Some(b"nonce") => {
                    helo.nonce = scan::as_bytes(val)
                        .ok_or_else(|| bad("HELO nonce must be bytes"))?
                        .to_vec()
                }
                Some(b"auth") => helo.auth = scan::as_bytes(val).unwrap_or_default().to_vec(),
                Some(b"keepalive") => helo.keepalive = val != [0xc2],
                _ => {}
            }
        }
        if helo.nonce.is_empty() {
            return Err(bad("HELO has no nonce"));
        }
        Ok(helo)
    }
}

/// PING, from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The client's hostname.
    pub hostname: String,
    /// The client's shared-key salt.
    pub salt: Vec<u8>,
    /// hex(sha512(salt + hostname + nonce + key)).
    pub digest: String,
    /// User name, or empty.
    pub username: String,
    /// hex(sha512(auth salt + username + password)), or empty.
    pub password_digest: String,
}

impl Ping {
    /// The PING answering `helo` with `shared_key`, as `hostname`, with a
    /// fresh `salt` from the caller (no user authentication).
    pub fn new(helo: &Helo, hostname: &str, salt: &[u8], shared_key: &str) -> Ping {
        Ping {
            hostname: hostname.to_string(),
            salt: salt.to_vec(),
            digest: digest(salt, hostname, &helo.nonce, shared_key),
            username: String::new(),
            password_digest: String::new(),
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x96];
        put_str(&mut out, "PING");
        put_str(&mut out, &self.hostname);
        let _ = rmp::encode::write_bin(&mut out, &self.salt);
        put_str(&mut out, &self.digest);
        put_str(&mut out, &self.username);
        put_str(&mut out, &self.password_digest);
        out
    }

    /// Parses one whole message.
    pub fn parse(v: &[u8]) -> Result<Ping, FluentError> {
        let (n, mut rest) = scan::as_array(v).ok_or_else(|| bad("PING must be an array"))?;
        if n != 6 {
            return Err(bad("PING must have 6 elements"));
        }
        let mut f: Vec<&[u8]> = Vec::with_capacity(6);
        for _ in 0..6 {
            let (x, r) = split_value(rest)?;
            f.push(x);
            rest = r;
        }
        let text = |x: &[u8]| -> Result<String, FluentError> {
            let b = scan::as_bytes(x).ok_or_else(|| bad("PING fields must be strings"))?;
            Ok(String::from_utf8_lossy(b).into_owned())
        };
        if scan::as_str(f[0]) != Some(b"PING") {
            return Err(bad("expected PING"));
        }
        Ok(Ping {
            hostname: text(f[1])?,
            salt: scan::as_bytes(f[2])
                .ok_or_else(|| bad("PING salt must be bytes"))?
                .to_vec(),
            digest: text(f[3])?,
            username: text(f[4])?,
            password_digest: text(f[5])?,
        })
    }

    /// Server side: whether the client holds `shared_key`.
    pub fn check(&self, helo: &Helo, shared_key: &str) -> Result<(), FluentError> {
        if self.digest == digest(&self.salt, &self.hostname, &helo.nonce, shared_key) {
            Ok(())
        } else {
            Err(bad("shared_key mismatch"))
        }
    }
}

/// PONG, from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// Whether the client was let in.
    pub ok: bool,
    /// Why not, when not.
    pub reason: String,
    /// The server's hostname.
    pub hostname: String,
    /// hex(sha512(client salt + server hostname + nonce + key)), or empty
    /// on failure.
    pub digest: String,
}

impl Pong {
    /// The server's answer to `ping`.
    pub fn answer(helo: &Helo, ping: &Ping, hostname: &str, shared_key: &str) -> Pong {
        match ping.check(helo, shared_key) {
            Ok(()) => Pong {
                ok: true,
                reason: String::new(),
                hostname: hostname.to_string(),
                digest: digest(&ping.salt, hostname, &helo.nonce, shared_key),
            },
            // As Fluentd answers a failure: no hostname, no digest.
            Err(_) => Pong {
                ok: false,
                reason: "shared_key mismatch".into(),
                hostname: String::new(),
                digest: String::new(),
            },
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x95];
        put_str(&mut out, "PONG");
        let _ = rmp::encode::write_bool(&mut out, self.ok);
        put_str(&mut out, &self.reason);
        put_str(&mut out, &self.hostname);
        put_str(&mut out, &self.digest);
        out
    }

    /// Parses one whole message.
    pub fn parse(v: &[u8]) -> Result<Pong, FluentError> {
        let (n, mut rest) = scan::as_array(v).ok_or_else(|| bad("PONG must be an array"))?;
        if n != 5 {
            return Err(bad("PONG must have 5 elements"));
        }
        let mut f: Vec<&[u8]> = Vec::with_capacity(5);
        for _ in 0..5 {
            let (x, r) = split_value(rest)?;
            f.push(x);
            rest = r;
        }
        let text =
            |x: &[u8]| String::from_utf8_lossy(scan::as_bytes(x).unwrap_or_default()).into_owned();
        if scan::as_str(f[0]) != Some(b"PONG") {
            return Err(bad("expected PONG"));
        }
        Ok(Pong {
            ok: f[1] == [0xc3],
            reason: text(f[2]),
            hostname: text(f[3]),
            digest: text(f[4]),
        })
    }

    /// Client side: whether the server let us in and holds the key too.
    /// A PONG naming the client's own hostname is refused, as Fluentd's
    /// client does (a reflected PING).
    pub fn check(&self, helo: &Helo, ping: &Ping, shared_key: &str) -> Result<(), FluentError> {
        if !self.ok {
            return Err(FluentError::Handshake(format!(
                "the service refused the shared key: {}",
                self.reason
            )));
        }
        if self.hostname == ping.hostname {
            return Err(bad("the service's PONG carries our own hostname"));
        }
        if self.digest != digest(&ping.salt, &self.hostname, &helo.nonce, shared_key) {
            return Err(bad(
                "the service's PONG digest is wrong: it does not hold the same shared_key",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_a_wrong_key_fails_both_ways() {
        let helo = Helo {
            nonce: vec![7; 16],
            auth: vec![],
            keepalive: true,
        };
        let helo2 = Helo::parse(&helo.encode()).expect("helo");
        assert_eq!(helo2, helo);
        let ping = Ping::new(&helo2, "router-1", &[3; 16], "secret");
        let ping2 = Ping::parse(&ping.encode()).expect("ping");
        assert_eq!(ping2, ping);
        let pong = Pong::answer(&helo, &ping2, "fluentd-1", "secret");
        let pong2 = Pong::parse(&pong.encode()).expect("pong");
        pong2.check(&helo2, &ping, "secret").expect("accepted");

        let wrong = Pong::answer(&helo, &ping2, "fluentd-1", "other");
        assert!(!wrong.ok);
        assert!(Pong::parse(&wrong.encode())
            .expect("pong")
            .check(&helo2, &ping, "secret")
            .is_err());
        // A server that answers OK without the key is caught too.
        let liar = Pong {
            ok: true,
            reason: String::new(),
            hostname: "x".into(),
            digest: "00".into(),
        };
        assert!(liar.check(&helo, &ping, "secret").is_err());
        assert!(Helo::parse(&[0x92, 0xa1, b'X', 0x80]).is_err());
    }
}
