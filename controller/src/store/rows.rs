//! The state as rows of tables, the same for every SQL backend.

use std::collections::BTreeMap;

use darkport_proto::identity::IdentityName;

use super::model::{CertRecord, State, StoreError};

/// Applies the difference between two maps: deletes, then upserts (how
/// the SQL backends write a change as row differences).
pub(crate) fn sync<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    mut delete: impl FnMut(&K) -> Result<(), StoreError>,
    mut upsert: impl FnMut(&K, &V) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        delete(k)?;
    }
    for (k, v) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
        upsert(k, v)?;
    }
    Ok(())
}

/// Every certificate of `state` by fingerprint, with its identity and its
/// place among the identity's certificates (the `certificates` table).
pub(crate) fn certificates(state: &State) -> BTreeMap<String, (IdentityName, usize, CertRecord)> {
    state
        .identities
        .values()
        .flat_map(|i| {
            i.certificates
                .iter()
                .enumerate()
                .map(|(seq, c)| (c.fingerprint.clone(), (i.name.clone(), seq, c.clone())))
        })
        .collect()
}
