//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert` on top of
//! tokio-postgres, which knows only `disable`, `prefer` and `require`, no
//! `sslrootcert`, and refuses options it does not know.
//!
//! What it does: takes the TLS options out of the store URL
//! ([`take_tls_params`]), decides what the server's certificate is checked
//! for ([`TlsPolicy::decide`], a pure function), and builds the connector
//! the pool and the listener use ([`Connector`]): `tokio-postgres-rustls`'s
//! glue (which also gives SCRAM its `tls-server-end-point` channel
//! binding) over a rustls configuration with the ring provider and this
//! module's [`ServerVerifier`]. A refused handshake becomes
//! [`PgTlsError::CertificateRefused`], naming the host, the mode and what
//! to check.
//!
//! What it does not do: client certificates (`sslcert`, `sslkey`),
//! revocation lists, the system's or `~/.postgresql` roots, TLS 1.2 (the
//! workspace's rustls has TLS 1.3 only; PostgreSQL 12 or newer built with
//! OpenSSL 1.1.1 or newer speaks it), and libpq's fallback to plaintext
//! when a `prefer` handshake fails (tokio-postgres fails the connection).
//!
//! # Modes
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | absent | no (as before TLS existed; libpq's default is `prefer`) | — |
//! | `disable` | no | — |
//! | `prefer` | if the server offers it | not checked; with `sslrootcert`, chain checked |
//! | `require` | yes | not checked; with `sslrootcert`, chain checked (libpq: "like verify-ca") |
//! | `verify-ca` | yes | chain to `sslrootcert`, which is required |
//! | `verify-full` | yes | chain to `sslrootcert` and the URL's host in its subject alternative names |
//!
//! "Not checked" is libpq's `require`: encryption against eavesdroppers,
//! no protection against an active attacker in the path. The handshake's
//! signature is still verified, so the server holds the key of the
//! certificate it sent. With `channel_binding=require` in the URL (passed
//! to tokio-postgres as is) the login must be SCRAM-SHA-256-PLUS, bound to
//! that certificate: a man in the middle can neither relay the login nor
//! let the controller in without one, so the server proves it holds the
//! role's SCRAM verifier even without a CA. Under the default
//! (`channel_binding=prefer`) an attacker can avoid the binding.
//! `sslrootcert` without `sslmode` is refused rather than
//! read as libpq's `prefer` (which goes plaintext if the server does not
//! offer TLS). Host names are matched against subject alternative names
//! only, never the common name (libpq falls back to the common name when
//! there are none).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's TLS options this controller does not implement: refused by
/// name, so a URL written for psql does not quietly mean less here.
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslcompression",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
];

/// ALPN protocol name PostgreSQL 17 checks (libpq 17 sends it; older
/// servers ignore it). It also makes `sslnegotiation=direct` work.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a store URL's TLS settings cannot be used, or why TLS with the
/// server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgTlsError {
    /// `sslmode` has a value this controller does not implement.
    #[error(
        "sslmode={0:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
    )]
    UnknownSslMode(String),
    /// `verify-ca` or `verify-full` without a CA to verify against.
    #[error("sslmode={mode} needs sslrootcert=FILE, the PEM file of the CA that signed the database server's certificate (this controller does not fall back to the system's roots or ~/.postgresql/root.crt); add it to the store URL, e.g. ?sslmode={mode}&sslrootcert=/etc/darkport/db-ca.pem")]
    NoRootCert {
        /// The mode asked for.
        mode: SslMode,
    },
    /// A CA given, but no mode: the connection would not use TLS.
    #[error("sslrootcert is given but sslmode is not, and without sslmode the connection is not encrypted; add sslmode=verify-full (or verify-ca) to the store URL")]
    RootCertWithoutMode,
    /// `sslrootcert=system`: libpq's system roots.
    #[error("sslrootcert=system (the system's trusted roots) is not supported; give the PEM file of the CA that signed the database server's certificate")]
    SystemRoots,
    /// A libpq TLS option this controller does not implement.
    #[error("{0} is not supported: of libpq's TLS options the controller reads sslmode and sslrootcert only (no client certificates, no revocation lists); remove it from the store URL")]
    Unsupported(String),
    /// A percent-escape in the URL is not UTF-8.
    #[error("the store URL's {0} is not valid UTF-8 once percent-decoded")]
    Encoding(&'static str),
    /// The `sslrootcert` file cannot be used.
    #[error("sslrootcert {path}: {reason}")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The server's certificate was refused: the connection is not
    /// made. Retrying does not help until the certificate or the URL
    /// is changed.
    #[error("the database server's TLS certificate was refused (host {host}, {mode}): {advice}")]
    CertificateRefused {
        /// The host name the certificate was checked for.
        host: String,
        /// The mode, as the URL put it (see [`TlsPolicy::describe`]).
        mode: String,
        /// What to check.
        advice: String,
        /// rustls's reason.
        #[source]
        cause: Box<rustls::Error>,
    },
    /// The server and this controller have no TLS version or suite in
    /// common.
    #[error("TLS with the database server failed (host {host}, {mode}): the server and this controller share no TLS version or cipher suite; the controller speaks TLS 1.3 only, which PostgreSQL 12 or newer built with OpenSSL 1.1.1 or newer offers (check the server's ssl_min_protocol_version and ssl_max_protocol_version)")]
    Incompatible {
        /// The host.
        host: String,
        /// The mode, as the URL put it.
        mode: String,
        /// rustls's reason.
        #[source]
        cause: Box<rustls::Error>,
    },
    /// The handshake failed otherwise (the connection dropped, ...).
    #[error("TLS handshake with {host} failed")]
    Handshake {
        /// The host.
        host: String,
        /// Why.
        #[source]
        cause: io::Error,
    },
}

impl PgTlsError {
    /// Whether the failure is one of configuration (certificate, CA,
    /// versions), which waiting does not fix, rather than of the
    /// network.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, PgTlsError::Handshake { .. })
    }
}

/// libpq's `sslmode`, the values this controller implements (not
/// `allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, the chain verified against `sslrootcert`.
    VerifyCa,
    /// TLS, the chain verified and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Result<SslMode, PgTlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PgTlsError::UnknownSslMode(other.to_string())),
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server's certificate is checked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Nothing but the handshake's signature (see the module docs).
    Off,
    /// A chain to the CA in this PEM file, whatever the host name.
    Chain(PathBuf),
    /// A chain to the CA in this PEM file, and the host name.
    ChainAndHost(PathBuf),
}

/// A store URL's TLS settings, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The URL's `sslmode`; `None` when it has none (then no TLS).
    pub mode: Option<SslMode>,
    /// What the server's certificate is checked for.
    pub verification: Verification,
}

impl TlsPolicy {
    /// Decides from the URL's `sslmode` and `sslrootcert` (as
    /// written, percent-decoded); the table is in the module docs.
    pub fn decide(mode: Option<&str>, root_cert: Option<&str>) -> Result<TlsPolicy, PgTlsError> {
        let mode = mode.map(SslMode::parse).transpose()?;
        let root = match root_cert {
            Some("system") => return Err(PgTlsError::SystemRoots),
            // libpq reads an empty value as "the default file", which
            // this controller does not have: as if not given.
            Some("") | None => None,
            Some(p) => Some(PathBuf::from(p)),
        };
        let verification = match (mode, root) {
            (None, None) | (Some(SslMode::Disable), _) => Verification::Off,
            (None, Some(_)) => return Err(PgTlsError::RootCertWithoutMode),
            (Some(SslMode::Prefer | SslMode::Require), None) => Verification::Off,
            (Some(m @ (SslMode::VerifyCa | SslMode::VerifyFull)), None) => {
                return Err(PgTlsError::NoRootCert { mode: m })
            }
            // libpq verifies the chain whenever a root certificate
            // file is there, `require` and `prefer` included.
            (Some(SslMode::Prefer | SslMode::Require | SslMode::VerifyCa), Some(p)) => {
                Verification::Chain(p)
            }
            (Some(SslMode::VerifyFull), Some(p)) => Verification::ChainAndHost(p),
        };
        Ok(TlsPolicy { mode, verification })
    }

    /// What tokio-postgres is told: whether to ask for TLS, and
    /// whether to go on without it.
    pub fn wire(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Wire;
        match self.mode {
            None | Some(SslMode::Disable) => Wire::Disable,
            Some(SslMode::Prefer) => Wire::Prefer,
            Some(SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => Wire::Require,
        }
    }

    /// The mode for messages, saying when `sslrootcert` made
    /// `require` or `prefer` verify the chain.
    pub fn describe(&self) -> String {
        match (&self.mode, &self.verification) {
            (None, _) => "no sslmode: not encrypted".to_string(),
            (Some(m @ (SslMode::Prefer | SslMode::Require)), Verification::Chain(_)) => {
                format!("sslmode={m} with sslrootcert, so the chain is verified as under verify-ca")
            }
            (Some(m), _) => format!("sslmode={m}"),
        }
    }

    /// The CA file, when the chain is verified.
    pub fn root_cert(&self) -> Option<&Path> {
        match &self.verification {
            Verification::Off => None,
            Verification::Chain(p) | Verification::ChainAndHost(p) => Some(p),
        }
    }
}

/// The TLS options taken out of a store URL (percent-decoded, as
/// written otherwise; the last of repeated ones wins, as in libpq).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`.
    pub sslmode: Option<String>,
    /// `sslrootcert`.
    pub sslrootcert: Option<String>,
}

/// Splits a store URL (`postgres://…?…` or a `key=value` string) into
/// the URL tokio-postgres is given, without `sslmode` and
/// `sslrootcert`, and those two. Refuses libpq TLS options this
/// controller does not implement. A string this cannot read is
/// returned whole, for tokio-postgres to report what is wrong.
pub fn take_tls_params(url: &str) -> Result<(String, TlsParams), PgTlsError> {
    if super::is_postgres_url(url) {
        from_url(url)
    } else {
        Ok(from_keywords(url)?.unwrap_or_else(|| (url.to_string(), TlsParams::default())))
    }
}

fn take(params: &mut TlsParams, key: &str, value: String) -> Result<bool, PgTlsError> {
    match key {
        "sslmode" => params.sslmode = Some(value),
        "sslrootcert" => params.sslrootcert = Some(value),
        k if UNSUPPORTED.contains(&k) => return Err(PgTlsError::Unsupported(k.to_string())),
        _ => return Ok(false),
    }
    Ok(true)
}

fn from_url(url: &str) -> Result<(String, TlsParams), PgTlsError> {
    let mut params = TlsParams::default();
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    // tokio-postgres (like libpq) reads the user info up to the first
    // '@' (a password may hold '?'), then host and database; the
    // parameters start at the next '?'.
    let host_start = after_scheme + url[after_scheme..].find('@').map_or(0, |i| i + 1);
    let Some(q) = url[host_start..].find('?').map(|i| host_start + i) else {
        return Ok((url.to_string(), params));
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).ok_or(PgTlsError::Encoding("parameter name"))?;
        let value = percent_decode(value).ok_or(PgTlsError::Encoding("parameter value"))?;
        if !take(&mut params, &key, value)? {
            kept.push(pair);
        }
    }
    let base = &url[..q];
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// A `key=value` connection string, read as tokio-postgres reads it;
/// `None` where it cannot be read.
fn from_keywords(s: &str) -> Result<Option<(String, TlsParams)>, PgTlsError> {
    let mut params = TlsParams::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let Some(value) = rest[key_end..].trim_start().strip_prefix('=') else {
            return Ok(None);
        };
        let value = value.trim_start();
        let Some((decoded, len)) = keyword_value(value) else {
            return Ok(None);
        };
        let end = rest.len() - value.len() + len;
        if !take(&mut params, key, decoded)? {
            kept.push(&rest[..end]);
        }
        rest = rest[end..].trim_start();
    }
    Ok(Some((kept.join(" "), params)))
}

/// One value of a `key=value` string: quoted (`'…'`) or up to the
/// next white space, backslash escaping the next character. The value
/// and the bytes it took.
fn keyword_value(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let quoted = s.starts_with('\'');
    let mut chars = s.char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' if quoted => return Some((out, i + 1)),
            c if c.is_whitespace() && !quoted => return Some((out, i)),
            '\\' => out.extend(chars.next().map(|(_, c)| c)),
            c => out.push(c),
        }
    }
    // An unterminated quote, or an empty value: tokio-postgres says.
    (!quoted && !out.is_empty()).then_some((out, s.len()))
}

/// `%XX` escapes decoded (others left as they are, as libpq does);
/// `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (b[i], hex) {
            (b'%', Some(h)) => {
                let h = std::str::from_utf8(h).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The CA certificates in a PEM file.
fn load_roots(path: &Path) -> Result<RootCertStore, PgTlsError> {
    let bad = |reason: String| PgTlsError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate in it is not usable as a CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(
            "holds no certificate (-----BEGIN CERTIFICATE-----); give the PEM file of the CA that signed the database server's certificate".into(),
        ));
    }
    Ok(roots)
}

/// Checks the database server's certificate as the [`Verification`]
/// says. Built from rustls's own WebPKI functions (the ones its
/// `WebPkiServerVerifier` calls), split so that `verify-ca` can skip
/// the name.
#[derive(Debug)]
pub struct ServerVerifier {
    /// The CAs, when the chain is verified.
    roots: Option<Arc<RootCertStore>>,
    /// Whether the host name is checked too.
    check_host: bool,
    /// The ring provider: the signature algorithms.
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    /// The verifier for `verification`, reading its CA file.
    pub fn new(
        verification: &Verification,
        provider: Arc<CryptoProvider>,
    ) -> Result<ServerVerifier, PgTlsError> {
        let (roots, check_host) = match verification {
            Verification::Off => (None, false),
            Verification::Chain(p) => (Some(Arc::new(load_roots(p)?)), false),
            Verification::ChainAndHost(p) => (Some(Arc::new(load_roots(p)?)), true),
        };
        Ok(ServerVerifier {
            roots,
            check_host,
            provider,
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            // libpq's require: encryption without authentication.
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check_host {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    // The handshake's signatures are checked in every mode: they prove
    // the server holds the key of the certificate it sent.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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

/// tokio-postgres's TLS connector for one store: the pool's
/// connections and the listener's. A failed handshake becomes a
/// [`PgTlsError`] that says what to check.
#[derive(Clone)]
pub struct Connector {
    /// tokio-postgres-rustls's glue over our rustls configuration.
    inner: MakeRustlsConnect,
    /// For the messages.
    policy: Arc<TlsPolicy>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The connector for `policy`, reading its CA file now, so a bad
    /// file is reported when the store is opened.
    pub fn new(policy: TlsPolicy) -> Result<Connector, PgTlsError> {
        // The one crypto provider (deny.toml), explicitly: never the
        // process default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ServerVerifier::new(&policy.verification, provider.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(PgTlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        // Every connection verifies the certificate afresh: a resumed
        // session would skip it. Connections are pooled; a full
        // handshake is rare and cheap.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Connector {
            inner: MakeRustlsConnect::new(config),
            policy: Arc::new(policy),
        })
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Connect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Infallible> {
        let inner = MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, host)?;
        Ok(Connect {
            inner,
            host: host.to_string(),
            policy: self.policy.clone(),
        })
    }
}

/// One handshake, its failure explained.
pub struct Connect<T> {
    /// tokio-postgres-rustls's handshake.
    inner: T,
    /// The host name the certificate is checked for.
    host: String,
    /// For the messages.
    policy: Arc<TlsPolicy>,
}

impl<S, T> TlsConnect<S> for Connect<T>
where
    T: TlsConnect<S, Error = io::Error>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = T::Stream;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, PgTlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Connect {
            inner,
            host,
            policy,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake
                .await
                .map_err(|e| handshake_error(host, &policy, e))
        })
    }
}

/// Turns a failed handshake into a [`PgTlsError`] that says what to
/// check.
pub fn handshake_error(host: String, policy: &TlsPolicy, e: io::Error) -> PgTlsError {
    let cause = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match cause {
        Some(cause @ rustls::Error::InvalidCertificate(_)) => PgTlsError::CertificateRefused {
            advice: advice(&cause, &host, policy),
            host,
            mode: policy.describe(),
            cause: Box::new(cause),
        },
        Some(
            cause @ (rustls::Error::PeerIncompatible(_)
            | rustls::Error::AlertReceived(
                rustls::AlertDescription::ProtocolVersion
                | rustls::AlertDescription::HandshakeFailure,
            )),
        ) => PgTlsError::Incompatible {
            host,
            mode: policy.describe(),
            cause: Box::new(cause),
        },
        _ => PgTlsError::Handshake { host, cause: e },
    }
}

/// What to check, by why the certificate was refused.
fn advice(cause: &rustls::Error, host: &str, policy: &TlsPolicy) -> String {
    let ca = policy.root_cert().map_or_else(
        || "sslrootcert".to_string(),
        |p| format!("sslrootcert {}", p.display()),
    );
    let rustls::Error::InvalidCertificate(e) = cause else {
        return format!("check the server's certificate and {ca}");
    };
    match e {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "it is not signed by the CA in {ca}; check that this file is the CA that issued the server's certificate (the server's ssl_cert_file), and that the server sends any intermediate CA certificates with it"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            "it is not valid for {host:?}: verify-full checks the URL's host against the certificate's subject alternative names (not its common name); connect by a name or address the certificate lists, or reissue it with {host:?} in its subject alternative names"
        ),
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => {
            "it is outside its validity period; renew the server's certificate, or check this host's clock".to_string()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "it is not a TLS server certificate (its extended key usage lacks serverAuth); reissue it for a server".to_string()
        }
        _ => format!("check the server's certificate and {ca}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_decide_what_is_verified() {
        use Verification::*;
        let ca = || PathBuf::from("/ca.pem");
        // (sslmode, sslrootcert, what is verified or a part of the error)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Result<Verification, &'a str>,
        );
        let cases: &[Case] = &[
            (None, None, Ok(Off)),
            (Some("disable"), None, Ok(Off)),
            // libpq ignores sslrootcert when TLS is off.
            (Some("disable"), Some("/ca.pem"), Ok(Off)),
            (Some("prefer"), None, Ok(Off)),
            (Some("prefer"), Some("/ca.pem"), Ok(Chain(ca()))),
            (Some("require"), None, Ok(Off)),
            // libpq: require with a root certificate is verify-ca.
            (Some("require"), Some("/ca.pem"), Ok(Chain(ca()))),
            (Some("verify-ca"), Some("/ca.pem"), Ok(Chain(ca()))),
            (Some("verify-full"), Some("/ca.pem"), Ok(ChainAndHost(ca()))),
            (Some("verify-ca"), None, Err("needs sslrootcert=FILE")),
            (Some("verify-full"), None, Err("needs sslrootcert=FILE")),
            (Some("verify-full"), Some(""), Err("needs sslrootcert=FILE")),
            (Some("verify-full"), Some("system"), Err("not supported")),
            (None, Some("/ca.pem"), Err("add sslmode=verify-full")),
            (Some("allow"), None, Err("\"allow\" is not supported")),
            (
                Some("VERIFY-FULL"),
                Some("/ca.pem"),
                Err("is not supported"),
            ),
        ];
        for (mode, root, want) in cases {
            let got = TlsPolicy::decide(*mode, *root);
            match (want, got) {
                (Ok(v), Ok(p)) => assert_eq!(&p.verification, v, "{mode:?} {root:?}"),
                (Err(text), Err(e)) => {
                    assert!(e.to_string().contains(text), "{mode:?} {root:?}: {e}")
                }
                (want, got) => panic!("{mode:?} {root:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn only_the_verifying_modes_and_require_insist_on_tls() {
        use tokio_postgres::config::SslMode as Wire;
        let wire =
            |m: Option<&str>, r: Option<&str>| TlsPolicy::decide(m, r).map(|p| p.wire()).ok();
        // No sslmode: plaintext, as before TLS was supported.
        assert_eq!(wire(None, None), Some(Wire::Disable));
        assert_eq!(wire(Some("disable"), None), Some(Wire::Disable));
        assert_eq!(wire(Some("prefer"), None), Some(Wire::Prefer));
        assert_eq!(wire(Some("require"), None), Some(Wire::Require));
        assert_eq!(wire(Some("verify-ca"), Some("/c")), Some(Wire::Require));
        assert_eq!(wire(Some("verify-full"), Some("/c")), Some(Wire::Require));
    }

    #[test]
    fn tls_options_are_taken_out_of_urls() {
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            ("postgres://h/db", "postgres://h/db", None, None),
            (
                "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgres://u:p@h:5432/db",
                Some("verify-full"),
                Some("/etc/ca.pem"),
            ),
            (
                "postgres://h/db?application_name=x&sslmode=require&connect_timeout=3",
                "postgres://h/db?application_name=x&connect_timeout=3",
                Some("require"),
                None,
            ),
            // Percent-encoded names and values; the last one wins.
            (
                "postgresql://h/db?ssl%6dode=prefer&sslmode=verify-ca&sslrootcert=%2Fa%20b.pem",
                "postgresql://h/db",
                Some("verify-ca"),
                Some("/a b.pem"),
            ),
            // A '?' in the password is not where the parameters start.
            (
                "postgres://u:a?b@h/db?sslmode=disable",
                "postgres://u:a?b@h/db",
                Some("disable"),
                None,
            ),
            (
                "postgres://h?sslmode=require&&",
                "postgres://h",
                Some("require"),
                None,
            ),
        ];
        for (url, rest, mode, root) in cases {
            let (got, params) = take_tls_params(url).expect(url);
            assert_eq!(&got, rest, "{url}");
            assert_eq!(params.sslmode.as_deref(), *mode, "{url}");
            assert_eq!(params.sslrootcert.as_deref(), *root, "{url}");
        }
    }

    #[test]
    fn tls_options_are_taken_out_of_keyword_strings() {
        let (rest, p) = take_tls_params(
            "host=db user=dp  sslmode = verify-full sslrootcert='/etc/my ca.pem' password='a \\' b' dbname=x",
        )
        .expect("parse");
        assert_eq!(rest, "host=db user=dp password='a \\' b' dbname=x");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
        let (rest, p) = take_tls_params("sslrootcert=/c\\ d.pem sslmode=require").expect("parse");
        assert_eq!(rest, "");
        assert_eq!(p.sslrootcert.as_deref(), Some("/c d.pem"));
        // What cannot be read goes to tokio-postgres whole.
        let (rest, p) = take_tls_params("host=db sslmode='verify-full").expect("parse");
        assert_eq!(rest, "host=db sslmode='verify-full");
        assert_eq!(p, TlsParams::default());
    }

    #[test]
    fn libpq_tls_options_not_implemented_are_refused_by_name() {
        for url in [
            "postgres://h/db?sslcert=/c.pem&sslkey=/k.pem",
            "host=h sslcrl=/crl.pem",
        ] {
            let e = take_tls_params(url).expect_err(url);
            assert!(matches!(e, PgTlsError::Unsupported(_)), "{url}: {e}");
            assert!(
                e.to_string().contains("remove it from the store URL"),
                "{e}"
            );
        }
    }

    #[test]
    fn percent_decoding_is_libpqs() {
        assert_eq!(percent_decode("a%20b%2fc").as_deref(), Some("a b/c"));
        // Not an escape: left alone.
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%+1x").as_deref(), Some("%+1x"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn refusals_name_the_host_the_mode_and_what_to_check() {
        let policy =
            TlsPolicy::decide(Some("verify-full"), Some("/etc/db-ca.pem")).expect("policy");
        let refuse = |e: CertificateError| {
            let io = io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(e),
            );
            handshake_error("db.internal".into(), &policy, io)
        };
        let e = refuse(CertificateError::UnknownIssuer);
        assert!(e.is_refusal());
        let text = e.to_string();
        for part in [
            "db.internal",
            "sslmode=verify-full",
            "not signed by the CA in sslrootcert /etc/db-ca.pem",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
        let text = refuse(CertificateError::NotValidForName).to_string();
        assert!(text.contains("not valid for \"db.internal\""), "{text}");
        let text = refuse(CertificateError::Expired).to_string();
        assert!(text.contains("validity period"), "{text}");
        // require with a CA says it verified the chain because of it.
        let policy = TlsPolicy::decide(Some("require"), Some("/ca.pem")).expect("policy");
        assert!(
            policy.describe().contains("as under verify-ca"),
            "{}",
            policy.describe()
        );
        // A dropped connection is not a refusal: the network, not the
        // configuration.
        let e = handshake_error(
            "h".into(),
            &policy,
            io::Error::from(io::ErrorKind::ConnectionReset),
        );
        assert!(!e.is_refusal());
    }

    #[test]
    fn a_bad_ca_file_is_reported_when_the_connector_is_built() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        for (path, text) in [
            (&missing, "cannot read it"),
            (&empty, "holds no certificate"),
        ] {
            let policy = TlsPolicy::decide(Some("verify-full"), path.to_str()).expect("policy");
            let e = Connector::new(policy).expect_err("a bad CA file");
            assert!(matches!(e, PgTlsError::RootCert { .. }), "{e}");
            assert!(e.to_string().contains(text), "{e}");
        }
    }
}
