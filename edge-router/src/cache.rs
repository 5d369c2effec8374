//! The on-disk policy snapshot.
//!
//! Written atomically with mode 0600 after every snapshot received, read at
//! start. A missing or unreadable cache only means waiting for the
//! controller; it never stops the router.

use std::path::Path;

use tracing::warn;

use darkport_proto::codec::{from_bytes, to_bytes, MAX_CONTROL_FRAME};
use darkport_proto::policy::PolicySnapshot;
use std::sync::Arc;

/// Reads the cached snapshot, if there is a usable one, with the time it
/// was written (Unix seconds): the policy is as old as the file. A cache
/// that group or others can access is not used (anyone who can write it
/// could widen policy).
pub fn load(path: &Path) -> Option<(Arc<PolicySnapshot>, u64)> {
    use darkport_transport::identity::{read_private_file, PrivateFileError};
    let bytes = match read_private_file(path, MAX_CONTROL_FRAME as u64) {
        Ok(b) => b,
        Err(PrivateFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return None
        }
        Err(e) => {
            warn!("cannot use the snapshot cache: {e}; waiting for the controller");
            return None;
        }
    };
    let written = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    match from_bytes::<PolicySnapshot>(&bytes) {
        Ok(s) => Some((Arc::new(s), written)),
        Err(e) => {
            warn!(
                "snapshot cache {} is unreadable ({e}); waiting for the controller",
                path.display()
            );
            None
        }
    }
}

/// Deletes the cache: a revoked router must not serve from it after a
/// restart.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot delete the snapshot cache {}: {e}", path.display()),
    }
}

/// Writes the snapshot (0600, atomic). Failures are logged, not fatal.
pub fn store(path: &Path, snapshot: &PolicySnapshot) {
    let result = to_bytes(snapshot).map_err(|e| e.to_string()).and_then(|b| {
        darkport_transport::identity::write_private_file(path, &b, true).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        warn!("cannot write the snapshot cache {}: {e}", path.display());
    }
}
