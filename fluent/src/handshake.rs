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
//!
//! How real peers differ from a first reading of the spec (the fixtures in
//! `tests/fixtures/forward-wire` show each):
//! - Fluentd's `in_forward` sends a fresh user-auth salt in **every** HELO
//!   once `<security>` is on, with or without `<user>` sections. It checks
//!   the username and password only when users are configured, so a client
//!   without users answers with an empty username ([`Ping::new`]).
//! - Fluent Bit sends its salt as a msgpack str of random bytes, not valid
//!   UTF-8, and still sends a password digest with an empty username. Every
//!   field is therefore kept as bytes, and digests are computed over the
//!   bytes as sent.
//! - Fluent Bit does not check the PONG digest; Fluentd's `out_forward`
//!   does.
//!
//! Nonces and salts come from the caller (this crate does no I/O and draws
//! no randomness).

use sha2::{Digest, Sha512};

use crate::scan::{self, split_value};
use crate::FluentError;

/// Largest handshake message accepted.
pub const MAX_HANDSHAKE: usize = 4096;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A handshake message that is not what the protocol allows here.
    #[error("{0}")]
    Malformed(&'static str),
    /// The server answered PONG with `false`.
    #[error("the service refused our PING: {0}")]
    Refused(Refusal),
    /// The server's PONG digest is wrong: it does not hold our key.
    #[error("the service's PONG digest is wrong: it does not hold the same shared_key")]
    WrongDigest,
    /// The PONG names our own hostname: a PING reflected back at us.
    #[error("the service's PONG carries our own hostname (a reflected PING, or two peers configured with one name)")]
    Reflected,
}

/// Why a server refused a PING, as Fluentd words it in the PONG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The PING digest does not match the server's key.
    #[error("shared_key mismatch: the shared keys differ")]
    SharedKeyMismatch,
    /// User authentication is on, and no configured user matches.
    #[error("username/password mismatch: the service has <user> sections, and these credentials match none")]
    UserMismatch,
    /// `<client>` sections are on and this source is not listed.
    #[error("anonymous source denied: the service allows only listed <client> hosts")]
    AnonymousDenied,
    /// The PING itself was not valid.
    #[error("invalid ping message")]
    InvalidPing,
    /// Any other reason, as the server gave it.
    #[error("{0}")]
    Other(String),
}

impl Refusal {
    /// The reason text a PONG carries (Fluentd's wording).
    pub fn reason(&self) -> String {
        match self {
            Refusal::SharedKeyMismatch => "shared_key mismatch".into(),
            Refusal::UserMismatch => "username/password mismatch".into(),
            Refusal::AnonymousDenied => "anonymous source host denied".into(),
            Refusal::InvalidPing => "invalid ping message".into(),
            Refusal::Other(s) => s.clone(),
        }
    }

    /// Reads a PONG's reason text.
    pub fn from_reason(reason: &[u8]) -> Refusal {
        let text = String::from_utf8_lossy(reason);
        match &*text {
            "shared_key mismatch" => Refusal::SharedKeyMismatch,
            "username/password mismatch" => Refusal::UserMismatch,
            "invalid ping message" => Refusal::InvalidPing,
            t if t.starts_with("anonymous source host") => Refusal::AnonymousDenied,
            _ => Refusal::Other(text.chars().take(200).collect()),
        }
    }
}

fn bad(what: &'static str) -> FluentError {
    FluentError::Handshake(HandshakeError::Malformed(what))
}

/// The digest both sides compute: hex(sha512(salt + hostname + nonce + key)).
pub fn digest(salt: &[u8], hostname: &[u8], nonce: &[u8], shared_key: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(shared_key);
    hex::encode(h.finalize())
}

/// The password digest of user authentication:
/// hex(sha512(auth salt + username + password)).
pub fn password_digest(auth_salt: &[u8], username: &[u8], password: &[u8]) -> String {
    digest(auth_salt, username, password, b"")
}

/// A `<user>` of the server's `<security>`: a name and its password (the
/// policy's type, whose `Debug` leaves the password out).
pub use darkport_proto::policy::FluentUser as User;

/// HELO, from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// The nonce both digests include.
    pub nonce: Vec<u8>,
    /// The user-auth salt. Fluentd sends one whenever `<security>` is on;
    /// it asks for users only if it has `<user>` sections.
    pub auth: Vec<u8>,
    /// Whether the server keeps the connection open for more messages.
    pub keepalive: bool,
}

impl Helo {
    /// Encodes it as Fluentd does: nonce and auth as msgpack bin.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x92];
        put_str(&mut out, b"HELO");
        out.push(0x83);
        put_str(&mut out, b"nonce");
        let _ = rmp::encode::write_bin(&mut out, &self.nonce);
        put_str(&mut out, b"auth");
        let _ = rmp::encode::write_bin(&mut out, &self.auth);
        put_str(&mut out, b"keepalive");
        let _ = rmp::encode::write_bool(&mut out, self.keepalive);
        out
    }

    /// Parses one whole message.
    pub fn parse(v: &[u8]) -> Result<Helo, FluentError> {
        let (n, rest) = scan::as_array(v).ok_or_else(|| bad("HELO must be an array"))?;
        let (kind, rest) = split_value(rest)?;
        if n != 2 || scan::as_str(kind) != Some(b"HELO") {
            return Err(bad("expected [\"HELO\", options] from the service; is <security> on there, and is this a Fluentd forward port?"));
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

/// PING, from the client. Every field is kept as the bytes sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The client's hostname.
    pub hostname: Vec<u8>,
    /// The client's shared-key salt.
    pub salt: Vec<u8>,
    /// hex(sha512(salt + hostname + nonce + key)).
    pub digest: Vec<u8>,
    /// User name, or empty.
    pub username: Vec<u8>,
    /// hex(sha512(auth salt + username + password)), or empty.
    pub password_digest: Vec<u8>,
}

impl Ping {
    /// The PING answering `helo` with `shared_key`, as `hostname`, with a
    /// fresh `salt` from the caller. With `user`, and a HELO that carries
    /// an auth salt, it carries the user's credentials; otherwise the
    /// username and password digest are empty, which Fluentd accepts when
    /// it has no `<user>` sections (it sends an auth salt regardless).
    pub fn new(
        helo: &Helo,
        hostname: &str,
        salt: &[u8],
        shared_key: &str,
        user: Option<&User>,
    ) -> Ping {
        let (username, password_digest) = match user {
            Some(u) if !helo.auth.is_empty() => (
                u.username.as_bytes().to_vec(),
                password_digest(&helo.auth, u.username.as_bytes(), u.password.as_bytes())
                    .into_bytes(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        Ping {
            hostname: hostname.as_bytes().to_vec(),
            salt: salt.to_vec(),
            digest: digest(
                salt,
                hostname.as_bytes(),
                &helo.nonce,
                shared_key.as_bytes(),
            )
            .into_bytes(),
            username,
            password_digest,
        }
    }

    /// The client's hostname, for messages.
    pub fn hostname_lossy(&self) -> String {
        String::from_utf8_lossy(&self.hostname)
            .chars()
            .take(100)
            .collect()
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x96];
        put_str(&mut out, b"PING");
        put_str(&mut out, &self.hostname);
        let _ = rmp::encode::write_bin(&mut out, &self.salt);
        put_str(&mut out, &self.digest);
        put_str(&mut out, &self.username);
        put_str(&mut out, &self.password_digest);
        out
    }

    /// Parses one whole message. As Fluentd: exactly 6 elements, the
    /// first "PING"; str or bin fields, any bytes.
    pub fn parse(v: &[u8]) -> Result<Ping, FluentError> {
        let f = fields::<6>(
            v,
            b"PING",
            "PING must be [\"PING\", hostname, salt, digest, username, password digest]",
        )?;
        let field = |x: &[u8]| -> Result<Vec<u8>, FluentError> {
            scan::as_bytes(x)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad("PING fields must be strings"))
        };
        Ok(Ping {
            hostname: field(f[1])?,
            salt: field(f[2])?,
            digest: field(f[3])?,
            username: field(f[4])?,
            password_digest: field(f[5])?,
        })
    }
}

/// The server side of the handshake: what a PING must prove.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAuth {
    /// The shared key.
    pub shared_key: String,
    /// `<user>` sections; empty: no user authentication (the username and
    /// password digest are not checked, as in Fluentd).
    pub users: Vec<User>,
}

impl std::fmt::Debug for ServerAuth {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAuth")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl ServerAuth {
    /// Whether `ping`, answering `helo`, holds the key (and, with users,
    /// one user's credentials); in Fluentd's order: key first.
    pub fn check(&self, helo: &Helo, ping: &Ping) -> Result<(), Refusal> {
        let expected = digest(
            &ping.salt,
            &ping.hostname,
            &helo.nonce,
            self.shared_key.as_bytes(),
        );
        if ping.digest != expected.as_bytes() {
            return Err(Refusal::SharedKeyMismatch);
        }
        if self.users.is_empty() {
            return Ok(());
        }
        let ok = self.users.iter().any(|u| {
            u.username.as_bytes() == ping.username
                && password_digest(&helo.auth, &ping.username, u.password.as_bytes()).as_bytes()
                    == ping.password_digest
        });
        if ok {
            Ok(())
        } else {
            Err(Refusal::UserMismatch)
        }
    }

    /// The server's answer to `ping`.
    pub fn answer(&self, helo: &Helo, ping: &Ping, hostname: &str) -> Pong {
        match self.check(helo, ping) {
            Ok(()) => Pong::accept(helo, ping, hostname, &self.shared_key),
            Err(why) => Pong::refuse(&why),
        }
    }
}

/// PONG, from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// Whether the client was let in.
    pub ok: bool,
    /// Why not, when not.
    pub reason: Vec<u8>,
    /// The server's hostname.
    pub hostname: Vec<u8>,
    /// hex(sha512(client salt + server hostname + nonce + key)), or empty
    /// on failure.
    pub digest: Vec<u8>,
}

impl Pong {
    /// The PONG letting `ping` in, proving `shared_key`.
    pub fn accept(helo: &Helo, ping: &Ping, hostname: &str, shared_key: &str) -> Pong {
        Pong {
            ok: true,
            reason: Vec::new(),
            hostname: hostname.as_bytes().to_vec(),
            digest: digest(
                &ping.salt,
                hostname.as_bytes(),
                &helo.nonce,
                shared_key.as_bytes(),
            )
            .into_bytes(),
        }
    }

    /// The PONG refusing a PING, as Fluentd answers a failure: no
    /// hostname, no digest.
    pub fn refuse(why: &Refusal) -> Pong {
        Pong {
            ok: false,
            reason: why.reason().into_bytes(),
            hostname: Vec::new(),
            digest: Vec::new(),
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x95];
        put_str(&mut out, b"PONG");
        let _ = rmp::encode::write_bool(&mut out, self.ok);
        put_str(&mut out, &self.reason);
        put_str(&mut out, &self.hostname);
        put_str(&mut out, &self.digest);
        out
    }

    /// Parses one whole message.
    pub fn parse(v: &[u8]) -> Result<Pong, FluentError> {
        let f = fields::<5>(
            v,
            b"PONG",
            "PONG must be [\"PONG\", ok, reason, hostname, digest]",
        )?;
        let text = |x: &[u8]| scan::as_bytes(x).unwrap_or_default().to_vec();
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
    pub fn check(&self, helo: &Helo, ping: &Ping, shared_key: &str) -> Result<(), HandshakeError> {
        if !self.ok {
            return Err(HandshakeError::Refused(Refusal::from_reason(&self.reason)));
        }
        if self.hostname == ping.hostname {
            return Err(HandshakeError::Reflected);
        }
        let expected = digest(
            &ping.salt,
            &self.hostname,
            &helo.nonce,
            shared_key.as_bytes(),
        );
        if self.digest != expected.as_bytes() {
            return Err(HandshakeError::WrongDigest);
        }
        Ok(())
    }
}

/// The `N` elements of a handshake array whose first is `kind`.
fn fields<'a, const N: usize>(
    v: &'a [u8],
    kind: &[u8],
    shape: &'static str,
) -> Result<[&'a [u8]; N], FluentError> {
    let (n, mut rest) = scan::as_array(v).ok_or_else(|| bad(shape))?;
    if n as usize != N {
        return Err(bad(shape));
    }
    let mut f: [&[u8]; N] = [&[]; N];
    for x in f.iter_mut() {
        let (value, r) = split_value(rest)?;
        *x = value;
        rest = r;
    }
    if scan::as_str(f[0]) != Some(kind) {
        return Err(bad(shape));
    }
    Ok(f)
}

/// Appends a msgpack str of any bytes (as Fluent Bit sends them).
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_str_len(out, s.len() as u32);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(key: &str) -> ServerAuth {
        ServerAuth {
            shared_key: key.into(),
            users: vec![],
        }
    }

    #[test]
    fn both_sides_agree_and_a_wrong_key_fails_both_ways() {
        let helo = Helo {
            nonce: vec![7; 16],
            auth: vec![9; 16],
            keepalive: true,
        };
        let helo2 = Helo::parse(&helo.encode()).expect("helo");
        assert_eq!(helo2, helo);
        let ping = Ping::new(&helo2, "router-1", &[3; 16], "secret", None);
        assert!(ping.username.is_empty() && ping.password_digest.is_empty());
        let ping2 = Ping::parse(&ping.encode()).expect("ping");
        assert_eq!(ping2, ping);
        let pong = auth("secret").answer(&helo, &ping2, "fluentd-1");
        let pong2 = Pong::parse(&pong.encode()).expect("pong");
        pong2.check(&helo2, &ping, "secret").expect("accepted");

        let wrong = auth("other").answer(&helo, &ping2, "fluentd-1");
        assert!(!wrong.ok);
        assert_eq!(
            Pong::parse(&wrong.encode())
                .expect("pong")
                .check(&helo2, &ping, "secret"),
            Err(HandshakeError::Refused(Refusal::SharedKeyMismatch))
        );
        // A server that answers OK without the key is caught too.
        let liar = Pong {
            ok: true,
            reason: vec![],
            hostname: b"x".to_vec(),
            digest: b"00".to_vec(),
        };
        assert_eq!(
            liar.check(&helo, &ping, "secret"),
            Err(HandshakeError::WrongDigest)
        );
        let mirror = Pong::accept(&helo, &ping, "router-1", "secret");
        assert_eq!(
            mirror.check(&helo, &ping, "secret"),
            Err(HandshakeError::Reflected)
        );
        assert!(Helo::parse(&[0x92, 0xa1, b'X', 0x80]).is_err());
    }

    #[test]
    fn users_are_checked_only_when_configured() {
        let helo = Helo {
            nonce: vec![1; 16],
            auth: vec![2; 16],
            keepalive: true,
        };
        let alice = User {
            username: "alice".into(),
            password: "pw".into(),
        };
        let with_users = ServerAuth {
            shared_key: "k".into(),
            users: vec![alice.clone()],
        };
        let anonymous = Ping::new(&helo, "app", &[5; 16], "k", None);
        assert_eq!(
            with_users.check(&helo, &anonymous),
            Err(Refusal::UserMismatch)
        );
        auth("k")
            .check(&helo, &anonymous)
            .expect("no users: not checked");
        let ping = Ping::new(&helo, "app", &[5; 16], "k", Some(&alice));
        assert_eq!(ping.username, b"alice");
        with_users.check(&helo, &ping).expect("alice");
        let wrong = User {
            password: "nope".into(),
            ..alice
        };
        let ping = Ping::new(&helo, "app", &[5; 16], "k", Some(&wrong));
        assert_eq!(with_users.check(&helo, &ping), Err(Refusal::UserMismatch));
        // The key is checked first, as Fluentd does.
        let ping = Ping::new(&helo, "app", &[5; 16], "other", Some(&wrong));
        assert_eq!(
            with_users.check(&helo, &ping),
            Err(Refusal::SharedKeyMismatch)
        );
        assert!(!format!("{wrong:?}").contains("nope"));
    }

    #[test]
    fn refusal_reasons_round_trip() {
        for r in [
            Refusal::SharedKeyMismatch,
            Refusal::UserMismatch,
            Refusal::AnonymousDenied,
            Refusal::InvalidPing,
            Refusal::Other("something else".into()),
        ] {
            assert_eq!(Refusal::from_reason(r.reason().as_bytes()), r);
        }
    }
}
