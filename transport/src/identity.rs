//! The identity file.
//!
//! One JSON file holds what a router or client needs to prove who it is:
//! its private key (made on this host, never sent anywhere), its
//! certificate, the CA certificate, and the controller's address. The file
//! is created with mode 0600 through a temporary file and a rename, so a
//! crash never leaves half a key behind.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

use darkport_proto::identity::{IdentityName, Kind};

/// Current identity file format.
pub const IDENTITY_FILE_VERSION: u32 = 1;

/// Largest identity file read, to bound work on a wrong path.
const MAX_IDENTITY_FILE: u64 = 1024 * 1024;

/// Why an identity file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not a valid identity file.
    #[error("identity file {path} is not valid: {reason}; enroll again to create a new one")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Refusing to overwrite.
    #[error("identity file {0} exists already; choose another path or delete it first")]
    Exists(PathBuf),
}

/// The on-disk form.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// Format version.
    pub version: u32,
    /// Identity name.
    pub name: IdentityName,
    /// Identity kind.
    pub kind: Kind,
    /// Controller `host:port`.
    pub controller: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Certificate, PEM.
    pub cert_pem: String,
    /// CA certificate, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFile")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

/// A loaded, parsed identity, ready to build TLS configurations.
#[derive(Debug)]
pub struct Identity {
    /// Identity name.
    pub name: IdentityName,
    /// Identity kind.
    pub kind: Kind,
    /// Controller `host:port`.
    pub controller: String,
    /// Certificate chain sent to peers: leaf, then CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The CA certificate.
    pub ca: CertificateDer<'static>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            kind: self.kind,
            controller: self.controller.clone(),
            chain: self.chain.clone(),
            ca: self.ca.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Reads and parses an identity file.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_IDENTITY_FILE {
            return Err(IdentityError::Invalid {
                path: path.to_path_buf(),
                reason: format!("larger than {MAX_IDENTITY_FILE} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(|e| IdentityError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Identity::from_file(file).map_err(|reason| IdentityError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the PEM parts of an identity file.
    pub fn from_file(file: IdentityFile) -> Result<Identity, String> {
        if file.version != IDENTITY_FILE_VERSION {
            return Err(format!(
                "format version {} is not supported (expected {IDENTITY_FILE_VERSION})",
                file.version
            ));
        }
        let leaf = CertificateDer::from_pem_slice(file.cert_pem.as_bytes())
            .map_err(|e| format!("certificate: {e}"))?;
        let ca = CertificateDer::from_pem_slice(file.ca_pem.as_bytes())
            .map_err(|e| format!("CA certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(file.key_pem.as_bytes())
            .map_err(|e| format!("private key: {e}"))?;
        let (kind, name, _) =
            crate::tls::cert_identity(&leaf).map_err(|e| format!("certificate: {e}"))?;
        if kind != file.kind || name != file.name {
            return Err(format!(
                "certificate names {kind} {name} but the file says {} {}",
                file.kind, file.name
            ));
        }
        Ok(Identity {
            name: file.name,
            kind: file.kind,
            controller: file.controller,
            chain: vec![leaf, ca.clone()],
            ca,
            key,
        })
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file
/// in the same directory, fsync, rename). With `overwrite` false, an
/// existing file is an error.
pub fn write_private_file(
    path: &Path,
    contents: &[u8],
    overwrite: bool,
) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !overwrite && path.exists() {
        return Err(IdentityError::Exists(path.to_path_buf()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "identity".into());
    let mut nonce = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
    let tmp = dir.join(format!(
        ".{file_name}.tmp{}-{}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

impl IdentityFile {
    /// Saves the file (0600, atomic); refuses to overwrite unless told to.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), IdentityError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| IdentityError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_private_file(path, text.as_bytes(), overwrite)
    }
}
