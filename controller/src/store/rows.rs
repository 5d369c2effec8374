//! The state as rows of tables, described once for every SQL backend.
//!
//! Each [`Table`] names its columns (the key first) and says how the part
//! of the [`State`] it holds becomes rows and how a row read back goes
//! into a state. [`changes`] turns a commit (old state, new state, audit
//! entries) into the row [`Change`]s to write; [`Table::load`] reads a row
//! through [`StoredRow`], which each backend implements over its driver's
//! row. A backend adds only its dialect: placeholders, column types,
//! upserts, transactions, the `meta` rows.
//!
//! So a new column is one edit here (plus each backend's migration), and
//! the two backends cannot drift apart on how a value is encoded: JSON
//! text for lists, selectors and protocols, the CLI's names for unit
//! enums (an identity's kind, a policy's kind, a service's terminator
//! strategy), integers for times. A name this version does not know (a
//! newer controller wrote it) fails the load with
//! [`StoreError::Corrupt`] naming the value, rather than being read as
//! something else.

use std::collections::BTreeMap;
use std::fmt::Display;

use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{
    PolicyEntry, PolicyKind, RouterPolicyEntry, ServiceEntry, TerminatorStrategy,
};

use super::model::{
    CertRecord, ControllerRecord, IdentityRecord, RouterRecord, State, StoreError, TokenRecord,
};

/// A value bound to a statement's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    /// A TEXT column (names, addresses, JSON).
    Text(String),
    /// An INTEGER (SQLite) or BIGINT (PostgreSQL) column; `None` is NULL.
    /// Every nullable column is one of these.
    Int(Option<i64>),
}

impl SqlValue {
    fn text(s: impl Into<String>) -> SqlValue {
        SqlValue::Text(s.into())
    }

    /// Unix seconds or a count, stored as a signed integer (saturating).
    fn int(v: u64) -> SqlValue {
        SqlValue::opt_int(Some(v))
    }

    fn opt_int(v: Option<u64>) -> SqlValue {
        SqlValue::Int(v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    }

    /// Lists, selectors and protocols are JSON in a TEXT column.
    fn json<T: serde::Serialize>(v: &T) -> Result<SqlValue, serde_json::Error> {
        serde_json::to_string(v).map(SqlValue::Text)
    }
}

/// A row read back, as a backend's driver gives it. The backend decides
/// what a value it cannot read is (its error kinds and messages).
pub trait StoredRow {
    /// A TEXT column.
    fn text(&self, col: usize) -> Result<String, StoreError>;
    /// An integer column holding a time or a count.
    fn u64(&self, col: usize) -> Result<u64, StoreError>;
    /// A nullable one.
    fn opt_u64(&self, col: usize) -> Result<Option<u64>, StoreError>;
    /// The error for something this version cannot read, found in column
    /// `col` when that is where it was.
    fn corrupt(&self, col: Option<usize>, reason: String) -> StoreError;
}

fn name(row: &dyn StoredRow, col: usize) -> Result<IdentityName, StoreError> {
    IdentityName::new(row.text(col)?).map_err(|e| row.corrupt(None, e.to_string()))
}

fn json<T: serde::de::DeserializeOwned>(row: &dyn StoredRow, col: usize) -> Result<T, StoreError> {
    serde_json::from_str(&row.text(col)?).map_err(|e| row.corrupt(Some(col), e.to_string()))
}

/// A unit enum stored by its CLI name (`what` names it in the error): a
/// name `parse` does not know is an error, never a default.
fn named<T>(
    row: &dyn StoredRow,
    col: usize,
    what: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    let text = row.text(col)?;
    parse(&text).ok_or_else(|| {
        row.corrupt(
            Some(col),
            format!("unknown {what} {text:?} (written by a newer controller?); upgrade darkport-controller"),
        )
    })
}

/// One table of the state.
pub struct Table {
    /// Its SQL name.
    pub name: &'static str,
    /// Its columns, the key first: the order of a row's values, written
    /// and read.
    pub columns: &'static [&'static str],
    /// Rows are loaded in this order (SQL after `ORDER BY`), when it
    /// matters: certificates in their order within the identity.
    pub order_by: Option<&'static str>,
    /// Adds the rows to delete and to write to turn `old` into `new`.
    diff: fn(&'static Table, &State, &State, &mut Changes) -> Result<(), serde_json::Error>,
    /// Puts a row (every column, in order) into the state.
    read: fn(&mut State, &dyn StoredRow) -> Result<(), StoreError>,
}

impl Table {
    /// The query that loads the table: every column, in order.
    pub fn select(&self) -> String {
        let order = self
            .order_by
            .map(|o| format!(" ORDER BY {o}"))
            .unwrap_or_default();
        format!(
            "SELECT {} FROM {}{order}",
            self.columns.join(", "),
            self.name
        )
    }

    /// The key column.
    pub fn key(&self) -> &'static str {
        self.columns[0]
    }

    /// `{verb} INTO table (columns) VALUES (placeholders)`, the
    /// placeholders `?1, ?2, …` (`mark` `?`) or `$1, $2, …` (`mark` `$`).
    pub fn insert(&self, verb: &str, mark: char) -> String {
        let marks: Vec<String> = (1..=self.columns.len())
            .map(|i| format!("{mark}{i}"))
            .collect();
        format!(
            "{verb} INTO {} ({}) VALUES ({})",
            self.name,
            self.columns.join(", "),
            marks.join(", ")
        )
    }

    /// `DELETE FROM table WHERE key = {mark}1`.
    pub fn delete(&self, mark: char) -> String {
        format!("DELETE FROM {} WHERE {} = {mark}1", self.name, self.key())
    }

    /// Puts `row` (read with [`Table::select`]) into `state`.
    pub fn load(&self, state: &mut State, row: &dyn StoredRow) -> Result<(), StoreError> {
        (self.read)(state, row)
    }
}

/// One row written by a commit.
#[derive(Debug)]
pub enum Change {
    /// Delete the row whose key is this.
    Delete(&'static Table, SqlValue),
    /// Insert the row, or replace the one with its key.
    Upsert(&'static Table, Vec<SqlValue>),
    /// Insert the row (the audit log: the database numbers it).
    Insert(&'static Table, Vec<SqlValue>),
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Change {
    /// The statement's parameters, in column order.
    pub fn values(&self) -> &[SqlValue] {
        match self {
            Change::Delete(_, key) => std::slice::from_ref(key),
            Change::Upsert(_, row) | Change::Insert(_, row) => row,
        }
    }
}

/// The changes of one commit, sorted as they are written.
#[derive(Default)]
struct Changes {
    deletes: Vec<Change>,
    upserts: Vec<Change>,
}

/// The rows that turn `old` into `new`, then the audit rows. Deletes of
/// every table come first, then upserts: a certificate that moved is
/// deleted and inserted again, never the other way round.
pub fn changes(
    old: &State,
    new: &State,
    audit: &[AuditEntry],
) -> Result<Vec<Change>, serde_json::Error> {
    let mut c = Changes::default();
    for table in TABLES {
        (table.diff)(table, old, new, &mut c)?;
    }
    let mut out = c.deletes;
    out.extend(c.upserts);
    out.extend(audit.iter().map(|a| {
        Change::Insert(
            &AUDIT,
            vec![
                SqlValue::int(a.at),
                SqlValue::text(&a.actor),
                SqlValue::text(&a.action),
            ],
        )
    }));
    Ok(out)
}

/// Adds to `out` the rows of `table` that differ between two maps: keys
/// gone are deleted, rows new or changed are written whole.
fn diff<K: Ord + Display, V: PartialEq>(
    table: &'static Table,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    row: impl Fn(&K, &V) -> Result<Vec<SqlValue>, serde_json::Error>,
    out: &mut Changes,
) -> Result<(), serde_json::Error> {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.deletes
            .push(Change::Delete(table, SqlValue::text(k.to_string())));
    }
    for (k, v) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
        out.upserts.push(Change::Upsert(table, row(k, v)?));
    }
    Ok(())
}

/// Every certificate of `state` by fingerprint, with its identity and its
/// place among the identity's certificates (the `certificates` table).
fn certificates(state: &State) -> BTreeMap<String, (IdentityName, usize, CertRecord)> {
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

/// The tables of the state, in the order they are loaded (identities
/// before their certificates).
pub static TABLES: [&Table; 8] = [
    &IDENTITIES,
    &CERTIFICATES,
    &SERVICES,
    &SERVICE_POLICIES,
    &ROUTER_POLICIES,
    &TOKENS,
    &ROUTERS,
    &CONTROLLERS,
];

static IDENTITIES: Table = Table {
    name: "identities",
    columns: &[
        "name",
        "kind",
        "roles",
        "created_at",
        "revoked_at",
        "last_seen",
    ],
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.identities,
            &new.identities,
            |k, v| {
                Ok(vec![
                    SqlValue::text(k.as_str()),
                    SqlValue::text(v.kind.as_str()),
                    SqlValue::json(&v.roles)?,
                    SqlValue::int(v.created_at),
                    SqlValue::opt_int(v.revoked_at),
                    SqlValue::opt_int(v.last_seen),
                ])
            },
            out,
        )
    },
    read: |state, row| {
        let n = name(row, 0)?;
        let record = IdentityRecord {
            name: n.clone(),
            kind: named(row, 1, "identity kind", Kind::parse)?,
            roles: json(row, 2)?,
            certificates: vec![],
            created_at: row.u64(3)?,
            revoked_at: row.opt_u64(4)?,
            last_seen: row.opt_u64(5)?,
        };
        state.identities.insert(n, record);
        Ok(())
    },
};

/// An identity's certificates, `seq` their order (not part of the record:
/// it is the place in [`IdentityRecord::certificates`]).
static CERTIFICATES: Table = Table {
    name: "certificates",
    columns: &["fingerprint", "identity", "seq", "issued_at", "expires_at"],
    order_by: Some("identity, seq"),
    diff: |t, old, new, out| {
        diff(
            t,
            &certificates(old),
            &certificates(new),
            |k, (identity, seq, c)| {
                Ok(vec![
                    SqlValue::text(k),
                    SqlValue::text(identity.as_str()),
                    SqlValue::int(*seq as u64),
                    SqlValue::int(c.issued_at),
                    SqlValue::int(c.expires_at),
                ])
            },
            out,
        )
    },
    read: |state, row| {
        let identity = name(row, 1)?;
        let cert = CertRecord {
            fingerprint: row.text(0)?,
            issued_at: row.u64(3)?,
            expires_at: row.u64(4)?,
        };
        state
            .identities
            .get_mut(&identity)
            .ok_or_else(|| {
                row.corrupt(None, format!("certificate of unknown identity {identity}"))
            })?
            .certificates
            .push(cert);
        Ok(())
    },
};

static SERVICES: Table = Table {
    name: "services",
    columns: &["name", "address", "roles", "protocol", "strategy"],
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.services,
            &new.services,
            |k, v| {
                Ok(vec![
                    SqlValue::text(k.as_str()),
                    SqlValue::text(&v.address),
                    SqlValue::json(&v.roles)?,
                    SqlValue::json(&v.protocol)?,
                    SqlValue::text(v.strategy.name()),
                ])
            },
            out,
        )
    },
    read: |state, row| {
        let n = name(row, 0)?;
        let entry = ServiceEntry {
            name: n.clone(),
            address: row.text(1)?,
            roles: json(row, 2)?,
            protocol: json(row, 3)?,
            strategy: named(row, 4, "terminator strategy", TerminatorStrategy::parse)?,
        };
        state.services.insert(n, entry);
        Ok(())
    },
};

static SERVICE_POLICIES: Table = Table {
    name: "service_policies",
    columns: &["name", "services", "identities", "tags", "kind"],
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.policies,
            &new.policies,
            |k, v| {
                Ok(vec![
                    SqlValue::text(k.as_str()),
                    SqlValue::json(&v.services)?,
                    SqlValue::json(&v.identities)?,
                    SqlValue::json(&v.tags)?,
                    SqlValue::text(v.kind.name()),
                ])
            },
            out,
        )
    },
    read: |state, row| {
        let n = name(row, 0)?;
        let entry = PolicyEntry {
            name: n.clone(),
            services: json(row, 1)?,
            identities: json(row, 2)?,
            tags: json(row, 3)?,
            kind: named(row, 4, "policy kind", PolicyKind::parse)?,
        };
        state.policies.insert(n, entry);
        Ok(())
    },
};

static ROUTER_POLICIES: Table = Table {
    name: "router_policies",
    columns: &["name", "routers", "services"],
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.router_policies,
            &new.router_policies,
            |k, v| {
                Ok(vec![
                    SqlValue::text(k.as_str()),
                    SqlValue::json(&v.routers)?,
                    SqlValue::json(&v.services)?,
                ])
            },
            out,
        )
    },
    read: |state, row| {
        let n = name(row, 0)?;
        let entry = RouterPolicyEntry {
            name: n.clone(),
            routers: json(row, 1)?,
            services: json(row, 2)?,
        };
        state.router_policies.insert(n, entry);
        Ok(())
    },
};

static TOKENS: Table = Table {
    name: "tokens",
    columns: &["id", "identity", "expires_at", "consumed_at"],
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.tokens,
            &new.tokens,
            |k, v| {
                Ok(vec![
                    SqlValue::text(k),
                    SqlValue::text(v.identity.as_str()),
                    SqlValue::int(v.expires_at),
                    SqlValue::opt_int(v.consumed_at),
                ])
            },
            out,
        )
    },
    read: |state, row| {
        let token = TokenRecord {
            identity: name(row, 1)?,
            expires_at: row.u64(2)?,
            consumed_at: row.opt_u64(3)?,
        };
        state.tokens.insert(row.text(0)?, token);
        Ok(())
    },
};

static ROUTERS: Table = Table {
    name: "routers",
    columns: ADDRESS_COLUMNS,
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.routers,
            &new.routers,
            |k, v| address_row(k, &v.advertise, v.last_seen),
            out,
        )
    },
    read: |state, row| {
        let (name, advertise, last_seen) = address(row)?;
        let router = RouterRecord {
            advertise,
            last_seen,
        };
        state.routers.insert(name, router);
        Ok(())
    },
};

static CONTROLLERS: Table = Table {
    name: "controllers",
    columns: ADDRESS_COLUMNS,
    order_by: None,
    diff: |t, old, new, out| {
        diff(
            t,
            &old.controllers,
            &new.controllers,
            |k, v| address_row(k, &v.advertise, v.last_seen),
            out,
        )
    },
    read: |state, row| {
        let (name, advertise, last_seen) = address(row)?;
        let controller = ControllerRecord {
            advertise,
            last_seen,
        };
        state.controllers.insert(name, controller);
        Ok(())
    },
};

/// Routers and controllers: where they are, when they were last seen.
const ADDRESS_COLUMNS: &[&str] = &["name", "advertise", "last_seen"];

/// A router's or controller's row.
fn address_row(
    name: &IdentityName,
    advertise: &str,
    last_seen: u64,
) -> Result<Vec<SqlValue>, serde_json::Error> {
    Ok(vec![
        SqlValue::text(name.as_str()),
        SqlValue::text(advertise),
        SqlValue::int(last_seen),
    ])
}

/// A router's or controller's name, advertised address and last time seen.
fn address(row: &dyn StoredRow) -> Result<(IdentityName, String, u64), StoreError> {
    Ok((name(row, 0)?, row.text(1)?, row.u64(2)?))
}

/// The audit log: appended by [`changes`], its newest rows read with
/// [`audit_query`] and [`audit_entry`]; not part of the [`State`], so not
/// in [`TABLES`]. The database numbers its rows (`id`).
pub static AUDIT: Table = Table {
    name: "audit",
    columns: &["at", "actor", "action"],
    order_by: Some("id"),
    diff: |_, _, _, _| Ok(()),
    read: |_, _| Ok(()),
};

/// The newest audit rows, oldest first; its one parameter (`{mark}1`) is
/// how many.
pub fn audit_query(mark: char) -> String {
    let columns = AUDIT.columns.join(", ");
    format!(
        "SELECT {columns} FROM (SELECT id, {columns} FROM {} ORDER BY id DESC LIMIT {mark}1) newest ORDER BY id",
        AUDIT.name
    )
}

/// An audit row (the columns of [`AUDIT`], in order).
pub fn audit_entry(row: &dyn StoredRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        at: row.u64(0)?,
        actor: row.text(1)?,
        action: row.text(2)?,
    })
}
