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

/// Reads the cached snapshot, if there is a usable one.
pub fn load(path: &Path) -> Option<Arc<PolicySnapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(
                "cannot read the snapshot cache {}: {e}; waiting for the controller",
                path.display()
            );
            return None;
        }
    };
    if bytes.len() > MAX_CONTROL_FRAME {
        warn!(
            "snapshot cache {} is too large; ignoring it",
            path.display()
        );
        return None;
    }
    match from_bytes::<PolicySnapshot>(&bytes) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            warn!(
                "snapshot cache {} is unreadable ({e}); waiting for the controller",
                path.display()
            );
            None
        }
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
