//! What the backend tests share: a state with something in every table
//! and a sequence of changes to it, so every backend is checked against
//! [`MemoryBackend`](darkport_controller::store::MemoryBackend) on the
//! same data.
#![allow(dead_code)]

use darkport_controller::store::{
    Backend, CertRecord, ControllerRecord, IdentityRecord, MemoryBackend, RouterRecord, State,
    TokenRecord,
};
use darkport_proto::identity::{IdentityName, Kind};
use darkport_proto::msg::AuditEntry;
use darkport_proto::policy::{
    FluentSettings, PolicyEntry, PolicyKind, RouterPolicyEntry, Selector, ServiceEntry,
    ServiceProtocol, TerminatorStrategy,
};

pub fn n(s: &str) -> IdentityName {
    IdentityName::new(s).expect("name")
}

pub fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("selector")
}

pub fn cert(fp: &str, issued: u64) -> CertRecord {
    CertRecord {
        fingerprint: fp.into(),
        issued_at: issued,
        expires_at: issued + 86_400,
    }
}

pub fn entry(at: u64, action: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: "root".into(),
        action: action.into(),
    }
}

/// A state with something in every table.
pub fn rich_state() -> State {
    let mut s = State {
        version: 3,
        generation: 1,
        ..State::default()
    };
    s.identities.insert(
        n("app1"),
        IdentityRecord {
            name: n("app1"),
            kind: Kind::Client,
            roles: vec![n("web"), n("logs")],
            certificates: vec![cert("aa11", 1_000), cert("bb22", 2_000)],
            created_at: 900,
            revoked_at: None,
            last_seen: Some(2_100),
        },
    );
    s.identities.insert(
        n("router1"),
        IdentityRecord {
            name: n("router1"),
            kind: Kind::Router,
            roles: vec![],
            certificates: vec![cert("cc33", 1_500)],
            created_at: 950,
            revoked_at: Some(5_000),
            last_seen: None,
        },
    );
    s.services.insert(
        n("fluentd"),
        ServiceEntry {
            name: n("fluentd"),
            address: "127.0.0.1:24224".into(),
            roles: vec![n("logs")],
            protocol: ServiceProtocol::FluentForward(FluentSettings {
                roles_key: Some("roles".into()),
                shared_key: Some("k3y".into()),
                ..FluentSettings::default()
            }),
            strategy: Default::default(),
        },
    );
    s.services.insert(
        n("web"),
        ServiceEntry {
            name: n("web"),
            address: "10.0.0.1:80".into(),
            roles: vec![],
            protocol: ServiceProtocol::Tcp,
            strategy: Default::default(),
        },
    );
    // Hosted: no address, reached through terminators only.
    s.services.insert(
        n("api"),
        ServiceEntry {
            name: n("api"),
            address: String::new(),
            roles: vec![],
            protocol: ServiceProtocol::Tcp,
            strategy: TerminatorStrategy::Weighted,
        },
    );
    s.policies.insert(
        n("api-hosts"),
        PolicyEntry {
            name: n("api-hosts"),
            services: vec![sel("api")],
            identities: vec![sel("#hosters")],
            tags: vec![],
            kind: PolicyKind::Bind,
        },
    );
    s.policies.insert(
        n("logs-in"),
        PolicyEntry {
            name: n("logs-in"),
            services: vec![sel("#logs")],
            identities: vec![sel("@app1"), sel("#all")],
            tags: vec!["app.**".into(), "sys.*".into()],
            kind: Default::default(),
        },
    );
    s.router_policies.insert(
        n("everywhere"),
        RouterPolicyEntry {
            name: n("everywhere"),
            routers: vec![sel("#all")],
            services: vec![sel("fluentd")],
        },
    );
    s.tokens.insert(
        "tok-used".into(),
        TokenRecord {
            identity: n("app1"),
            expires_at: 9_999,
            consumed_at: Some(1_000),
        },
    );
    s.tokens.insert(
        "tok-free".into(),
        TokenRecord {
            identity: n("router1"),
            expires_at: 9_999,
            consumed_at: None,
        },
    );
    s.routers.insert(
        n("router1"),
        RouterRecord {
            advertise: "127.0.0.1:4433".into(),
            last_seen: 2_000,
        },
    );
    s.controllers.insert(
        n("ctl-a"),
        ControllerRecord {
            advertise: "ctl-a:4430".into(),
            last_seen: 2_000,
        },
    );
    s
}

/// The same changes, in order, as (new state, audit) pairs.
pub fn changes() -> Vec<(State, Vec<AuditEntry>)> {
    let s1 = rich_state();
    let mut s2 = s1.clone();
    s2.generation += 1;
    s2.version += 1;
    // A renewal, a moved token, a deleted service, a changed strategy, a
    // changed policy.
    if let Some(i) = s2.identities.get_mut(&n("app1")) {
        i.certificates.push(cert("dd44", 3_000));
        i.certificates.remove(0);
        i.roles.push(n("extra"));
    }
    if let Some(t) = s2.tokens.get_mut("tok-free") {
        t.consumed_at = Some(3_000);
    }
    s2.services.remove(&n("web"));
    if let Some(svc) = s2.services.get_mut(&n("api")) {
        svc.strategy = TerminatorStrategy::Sticky;
    }
    if let Some(p) = s2.policies.get_mut(&n("logs-in")) {
        p.tags = vec!["other".into()];
    }
    s2.controllers.insert(
        n("ctl-b"),
        ControllerRecord {
            advertise: "ctl-b:4430".into(),
            last_seen: 3_000,
        },
    );
    let mut s3 = s2.clone();
    s3.generation += 1;
    // An identity deleted with its certificates, a router gone, a router
    // policy gone, nothing routers care about otherwise.
    s3.identities.remove(&n("router1"));
    s3.routers.remove(&n("router1"));
    s3.router_policies.clear();
    s3.tokens.remove("tok-used");
    vec![
        (s1, vec![entry(10, "create all"), entry(11, "and more")]),
        (s2, vec![entry(20, "change")]),
        (s3, vec![]),
        (State::default().with_generation(4), vec![entry(40, "wipe")]),
    ]
}

pub trait WithGeneration {
    fn with_generation(self, g: u64) -> State;
}

impl WithGeneration for State {
    fn with_generation(mut self, g: u64) -> State {
        self.generation = g;
        self
    }
}

/// The tables a backend stores, for dumping every row.
pub const TABLES: [&str; 10] = [
    "meta",
    "identities",
    "certificates",
    "services",
    "service_policies",
    "router_policies",
    "tokens",
    "routers",
    "controllers",
    "audit",
];

/// Runs [`changes`] on `db` and on a [`MemoryBackend`]: after each, both
/// load the same state (the one committed) and return the same audit log.
/// Returns the last state.
pub fn same_as_memory(db: &mut dyn Backend) -> State {
    let mut mem = MemoryBackend::default();
    assert_eq!(db.load().expect("load"), mem.load().expect("load"));
    let mut old = State::default();
    for (i, (new, audit)) in changes().into_iter().enumerate() {
        mem.commit(&old, &new, &audit).expect("memory commit");
        db.commit(&old, &new, &audit).expect("commit");
        let loaded = db.load().expect("load");
        assert_eq!(loaded, mem.load().expect("load"), "after change {i}");
        assert_eq!(loaded, new, "after change {i}");
        for limit in [0, 1, 2, 100, u32::MAX] {
            assert_eq!(
                db.audit(limit).expect("audit"),
                mem.audit(limit).expect("audit"),
                "audit({limit}) after change {i}"
            );
        }
        old = new;
    }
    old
}

/// Commits the first two of [`changes`] to `db`: what the pinned rows of
/// each backend's test hold.
pub fn commit_two_changes(db: &mut dyn Backend) {
    let changes = changes();
    db.commit(&State::default(), &changes[0].0, &changes[0].1)
        .expect("commit");
    db.commit(&changes[0].0, &changes[1].0, &changes[1].1)
        .expect("commit");
}
