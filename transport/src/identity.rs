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
    /// A private file that others can read, or too large to be one.
    #[error(transparent)]
    Private(#[from] PrivateFileError),
}

/// Why a private file (key, identity, secret) was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivateFileError {
    /// Opening or reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Group or others may read or write the file: the key may already
    /// have leaked, and Darkport will not use it until it is private.
    #[error("{path} is accessible to group or others (mode {mode:04o}); it holds a private key: run chmod 600 {path} (and consider the key exposed)")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Larger than any file of its kind.
    #[error("{path} is larger than {max} bytes; it is not the file Darkport wrote")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound.
        max: u64,
    },
}

/// Reads a file that holds a secret: refuses it when group or others have
/// any access to it (the mode is taken from the open handle, so the file
/// checked is the file read) or when it is larger than `max` bytes.
pub fn read_private_file(path: &Path, max: u64) -> Result<Vec<u8>, PrivateFileError> {
    use std::io::Read;
    let io = |source| PrivateFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() > max {
        return Err(PrivateFileError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(PrivateFileError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(bytes)
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
        let bytes = read_private_file(path, MAX_IDENTITY_FILE)?;
        let file: IdentityFile =
            serde_json::from_slice(&bytes).map_err(|e| IdentityError::Invalid {
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
            crate::cert::cert_identity(&leaf).map_err(|e| format!("certificate: {e}"))?;
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

/// Writes `contents` to `path` with mode 0600, atomically: a temporary
/// file in the same directory, fsync, then a rename (`overwrite`) or a hard
/// link, which fails if `path` exists (`!overwrite`: there is no window in
/// which a file created by someone else is replaced), then an fsync of the
/// directory so the new name survives a crash.
pub fn write_private_file(
    path: &Path,
    contents: &[u8],
    overwrite: bool,
) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
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
        if overwrite {
            std::fs::rename(&tmp, path)
        } else {
            // link(2) is the O_EXCL of renames: it fails if `path` exists.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            linked
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    match result {
        Ok(()) => {}
        Err(e) if !overwrite && e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(IdentityError::Exists(path.to_path_buf()))
        }
        Err(e) => return Err(io(e)),
    }
    sync_dir(&dir).map_err(io)
}

/// Makes a rename or link in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
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
