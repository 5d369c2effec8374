//! The audit log.

use darkport_proto::msg::{AdminResponse, ControlError};

use crate::store::Store;

/// Most entries one request returns, whatever it asks, so one request
/// cannot make the controller read and send the whole log.
pub const MAX_AUDIT_ENTRIES: u32 = 10_000;

/// The newest `limit` entries (at most [`MAX_AUDIT_ENTRIES`]), oldest
/// first.
pub fn list(store: &Store, limit: u32) -> Result<AdminResponse, ControlError> {
    Ok(AdminResponse::Audit(
        store.audit(limit.min(MAX_AUDIT_ENTRIES))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{name, Fixture, T0};
    use darkport_proto::msg::AdminRequest;

    #[test]
    fn returns_the_newest_entries_oldest_first() {
        let f = Fixture::new();
        for (i, svc) in ["a", "b", "c"].into_iter().enumerate() {
            f.run(
                T0 + i as u64,
                AdminRequest::DeleteService { name: name(svc) },
            )
            .expect_err("no such service: not audited");
            f.run(
                T0 + i as u64,
                AdminRequest::CreatePolicy {
                    name: name(svc),
                    services: vec![darkport_proto::policy::Selector::All],
                    identities: vec![darkport_proto::policy::Selector::All],
                    tags: vec![],
                    kind: Default::default(),
                },
            )
            .expect("policy created");
        }
        let Ok(AdminResponse::Audit(entries)) = f.run(T0 + 9, AdminRequest::Audit { limit: 2 })
        else {
            panic!("expected audit entries");
        };
        let got: Vec<(u64, &str)> = entries.iter().map(|e| (e.at, e.action.as_str())).collect();
        assert_eq!(
            got,
            [
                (T0 + 1, "created service policy b"),
                (T0 + 2, "created service policy c")
            ]
        );
        assert_eq!(
            f.run(T0, AdminRequest::Audit { limit: 0 }),
            Ok(AdminResponse::Audit(vec![]))
        );
    }

    #[test]
    fn a_huge_limit_is_capped() {
        let f = Fixture::new();
        let n = MAX_AUDIT_ENTRIES as usize + 5;
        for i in 0..n {
            f.store
                .update(
                    false,
                    crate::handlers::Caller {
                        actor: "root",
                        now: T0 + i as u64,
                    }
                    .audit("x"),
                    |_| Ok::<_, ControlError>(()),
                )
                .expect("memory commit");
        }
        let Ok(AdminResponse::Audit(entries)) = f.run(T0, AdminRequest::Audit { limit: u32::MAX })
        else {
            panic!("expected audit entries");
        };
        assert_eq!(entries.len(), MAX_AUDIT_ENTRIES as usize);
        assert_eq!(entries.last().map(|e| e.at), Some(T0 + n as u64 - 1));
    }
}
