//! Selectors, the policy snapshot, and the authorization decision.
//!
//! [`authorize`] is a pure function of (snapshot, peer identity, service
//! name): the router calls it for every new stream, and tests table-drive it
//! without sockets.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::identity::{IdentityName, Kind, NameError, PeerIdentity};

/// Picks identities or services by role or name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Selector {
    /// `#all`: everything.
    All,
    /// `#role`: everything carrying the role.
    Role(IdentityName),
    /// `@name` or a bare name: that one object.
    Name(IdentityName),
}

impl Selector {
    /// Parses `#all`, `#role`, `@name` or `name`.
    pub fn parse(s: &str) -> Result<Selector, NameError> {
        if s == "#all" {
            Ok(Selector::All)
        } else if let Some(role) = s.strip_prefix('#') {
            Ok(Selector::Role(IdentityName::new(role)?))
        } else if let Some(name) = s.strip_prefix('@') {
            Ok(Selector::Name(IdentityName::new(name)?))
        } else {
            Ok(Selector::Name(IdentityName::new(s)?))
        }
    }

    /// Whether an object with this name and these roles is selected.
    pub fn matches(&self, name: &IdentityName, roles: &[IdentityName]) -> bool {
        match self {
            Selector::All => true,
            Selector::Role(r) => roles.contains(r),
            Selector::Name(n) => n == name,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("#all"),
            Selector::Role(r) => write!(f, "#{r}"),
            Selector::Name(n) => write!(f, "@{n}"),
        }
    }
}

/// An identity as routers know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IdentityEntry {
    /// Name.
    pub name: IdentityName,
    /// Kind.
    pub kind: Kind,
    /// Roles.
    pub roles: Vec<IdentityName>,
    /// The certificates currently valid for it (the newest, and older ones
    /// not yet expired, so connections survive a renewal). A certificate
    /// not listed here is refused even if it chains to the CA.
    pub certificates: Vec<CertEntry>,
}

/// One issued, unrevoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CertEntry {
    /// Lowercase hex SHA-256 of the certificate (DER).
    pub fingerprint: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl IdentityEntry {
    /// Whether `fingerprint` is one of its certificates and unexpired at `now`.
    pub fn holds(&self, fingerprint: &str, now: u64) -> bool {
        self.certificates
            .iter()
            .any(|c| c.fingerprint == fingerprint && now < c.expires_at)
    }
}

/// A private service reachable through routers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServiceEntry {
    /// Name clients dial.
    pub name: IdentityName,
    /// Private `host:port` the router connects to.
    pub address: String,
    /// Roles, for policy selectors.
    pub roles: Vec<IdentityName>,
    /// What the router speaks with it.
    #[serde(default)]
    pub protocol: ServiceProtocol,
    /// How a router picks among the service's terminators (hosted
    /// services, docs/architecture.md "Hosting").
    #[serde(default)]
    pub strategy: TerminatorStrategy,
}

impl ServiceEntry {
    /// Whether routers may dial the service at its address; a service
    /// with no address is reached through its terminators only.
    pub fn has_address(&self) -> bool {
        !self.address.is_empty()
    }
}

/// How a router chooses among the terminators of a hosted service.
/// Precedence comes first whatever the strategy: `required` terminators
/// before `default` ones, `failed` ones only when nothing else is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum TerminatorStrategy {
    /// The lowest cost: the hoster's static cost plus the router's view of
    /// its latency and open streams.
    #[default]
    LowestCost,
    /// At random, each terminator weighted by the inverse of its cost.
    Weighted,
    /// Uniformly at random.
    Random,
    /// The same terminator for the same client identity while it is up
    /// (a hash of the identity over the terminators).
    Sticky,
}

impl TerminatorStrategy {
    /// Every strategy, in the order the CLI lists them.
    pub const ALL: [TerminatorStrategy; 4] = [
        TerminatorStrategy::LowestCost,
        TerminatorStrategy::Weighted,
        TerminatorStrategy::Random,
        TerminatorStrategy::Sticky,
    ];

    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            TerminatorStrategy::LowestCost => "lowest-cost",
            TerminatorStrategy::Weighted => "weighted",
            TerminatorStrategy::Random => "random",
            TerminatorStrategy::Sticky => "sticky",
        }
    }

    /// The strategy a CLI name stands for.
    pub fn parse(s: &str) -> Option<TerminatorStrategy> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// What a router does with a service's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ServiceProtocol {
    /// Copies bytes both ways, untouched.
    #[default]
    Tcp,
    /// Speaks Fluentd's forward protocol: stamps the verified sender into
    /// every record and enforces the policies' tag patterns.
    FluentForward(FluentSettings),
}

impl ServiceProtocol {
    /// The name the CLI uses.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceProtocol::Tcp => "tcp",
            ServiceProtocol::FluentForward(_) => "fluent-forward",
        }
    }
}

/// How a fluent-forward service stamps records, and its handshake.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FluentSettings {
    /// Key naming the sending identity (default `darkport_identity`).
    pub identity_key: String,
    /// Key listing the identity's roles, if wanted.
    pub roles_key: Option<String>,
    /// Key naming the router that carried the record, if wanted.
    pub router_key: Option<String>,
    /// The service's `<security> shared_key`: the router speaks the
    /// handshake with the service; clients never see the key.
    pub shared_key: Option<String>,
    /// The service's `<user>` credentials, for a Fluentd with user
    /// authentication (with `shared_key` only).
    #[serde(default)]
    pub service_user: Option<FluentUser>,
    /// What the router does with `[EventTime, {metadata}]` times (Fluent
    /// Bit 5), which Fluentd up to 1.19.3 cannot read.
    #[serde(default)]
    pub event_time: EventTimeForm,
    /// With `event_time` unwrap: the record key that carries a non-empty
    /// metadata map; `None` drops it.
    #[serde(default)]
    pub metadata_key: Option<String>,
    /// Whether the router answers the app's own `<security>` handshake
    /// (apps whose config keeps a `shared_key`).
    #[serde(default)]
    pub app_handshake: AppHandshake,
}

/// A `<user>` of a Fluentd `<security>` section.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FluentUser {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for FluentUser {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluentUser")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the router does with Fluent Bit's `[EventTime, {metadata}]` times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum EventTimeForm {
    /// Send the plain EventTime on (what every Fluentd reads).
    #[default]
    Unwrap,
    /// Send times on as the app sent them.
    Keep,
}

impl EventTimeForm {
    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            EventTimeForm::Unwrap => "unwrap",
            EventTimeForm::Keep => "keep",
        }
    }
}

/// Whether the router speaks the server side of `<security>` to apps.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum AppHandshake {
    /// Apps speak the protocol without security (the default): their
    /// identity is their certificate.
    #[default]
    Off,
    /// The router sends HELO and lets in any PING, whatever key the app
    /// holds (logged once per service). Its PONG cannot prove a key it
    /// does not know: apps that check it (Fluentd's out_forward) need
    /// `SharedKey`.
    AnyKey,
    /// The router sends HELO and lets in only a PING made with this key.
    SharedKey(String),
}

impl AppHandshake {
    /// The name the CLI uses.
    pub fn name(&self) -> &'static str {
        match self {
            AppHandshake::Off => "off",
            AppHandshake::AnyKey => "any-key",
            AppHandshake::SharedKey(_) => "shared-key",
        }
    }
}

impl std::fmt::Debug for AppHandshake {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The default identity key.
pub const DEFAULT_IDENTITY_KEY: &str = "darkport_identity";

impl Default for FluentSettings {
    fn default() -> Self {
        FluentSettings {
            identity_key: DEFAULT_IDENTITY_KEY.into(),
            roles_key: None,
            router_key: None,
            shared_key: None,
            service_user: None,
            event_time: EventTimeForm::Unwrap,
            metadata_key: None,
            app_handshake: AppHandshake::Off,
        }
    }
}

impl std::fmt::Debug for FluentSettings {
    // The shared key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluentSettings")
            .field("identity_key", &self.identity_key)
            .field("roles_key", &self.roles_key)
            .field("router_key", &self.router_key)
            .field("shared_key", &self.shared_key.as_ref().map(|_| "(set)"))
            .field("service_user", &self.service_user)
            .field("event_time", &self.event_time)
            .field("metadata_key", &self.metadata_key)
            .field("app_handshake", &self.app_handshake)
            .finish()
    }
}

/// A router policy: these routers may serve (dial) these services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RouterPolicyEntry {
    /// Name.
    pub name: IdentityName,
    /// Routers covered.
    pub routers: Vec<Selector>,
    /// Services they may serve.
    pub services: Vec<Selector>,
}

/// What a service policy grants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PolicyKind {
    /// The identities may dial the services.
    #[default]
    Dial,
    /// The identities may host the services: serve them through
    /// terminators on connections they dialed out to routers.
    Bind,
}

impl PolicyKind {
    /// The name the CLI uses (`policy create --type`).
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Dial => "dial",
            PolicyKind::Bind => "bind",
        }
    }

    /// The kind a CLI name stands for.
    pub fn parse(s: &str) -> Option<PolicyKind> {
        match s {
            "dial" => Some(PolicyKind::Dial),
            "bind" => Some(PolicyKind::Bind),
            _ => None,
        }
    }
}

/// A service policy: these identities may dial (or, with
/// [`PolicyKind::Bind`], host) these services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PolicyEntry {
    /// Name.
    pub name: IdentityName,
    /// Services covered.
    pub services: Vec<Selector>,
    /// Identities allowed to dial them.
    pub identities: Vec<Selector>,
    /// For fluent-forward services: the tags these identities may write
    /// (`crate::tags` patterns, `${identity}` allowed); empty: any tag.
    /// Bind policies have none.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Dial or bind.
    #[serde(default)]
    pub kind: PolicyKind,
}

impl PolicyEntry {
    /// Whether the policy covers `service` and `identity`, and grants `kind`.
    pub fn selects(
        &self,
        kind: PolicyKind,
        identity: &IdentityEntry,
        service: &ServiceEntry,
    ) -> bool {
        self.kind == kind
            && self
                .services
                .iter()
                .any(|s| s.matches(&service.name, &service.roles))
            && self
                .identities
                .iter()
                .any(|s| s.matches(&identity.name, &identity.roles))
    }
}

/// Everything a router needs to decide dials, as pushed by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PolicySnapshot {
    /// Increases with every change at the controller.
    pub version: u64,
    /// Known identities.
    pub identities: Vec<IdentityEntry>,
    /// Services.
    pub services: Vec<ServiceEntry>,
    /// Service policies.
    pub policies: Vec<PolicyEntry>,
    /// Router policies.
    pub router_policies: Vec<RouterPolicyEntry>,
}

impl PolicySnapshot {
    /// An identity by kind and name.
    pub fn identity(&self, kind: Kind, name: &IdentityName) -> Option<&IdentityEntry> {
        self.identities
            .iter()
            .find(|i| i.kind == kind && i.name == *name)
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }

    /// Names of the service policies that let `identity` dial `service`.
    pub fn dial_policies<'a>(
        &'a self,
        identity: &'a IdentityEntry,
        service: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a IdentityName> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.selects(PolicyKind::Dial, identity, service))
            .map(|p| &p.name)
    }

    /// Names of the bind policies that let `identity` host `service`.
    pub fn bind_policies<'a>(
        &'a self,
        identity: &'a IdentityEntry,
        service: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a IdentityName> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.selects(PolicyKind::Bind, identity, service))
            .map(|p| &p.name)
    }

    /// Names of the router policies that let `router` serve `service`.
    pub fn serve_policies<'a>(
        &'a self,
        router: &'a IdentityEntry,
        service: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a IdentityName> + 'a {
        self.router_policies
            .iter()
            .filter(move |p| {
                p.services
                    .iter()
                    .any(|s| s.matches(&service.name, &service.roles))
                    && p.routers
                        .iter()
                        .any(|s| s.matches(&router.name, &router.roles))
            })
            .map(|p| &p.name)
    }

    /// Routers that may serve `service`.
    pub fn routers_serving<'a>(
        &'a self,
        service: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a IdentityEntry> + 'a {
        self.identities
            .iter()
            .filter(|i| i.kind == Kind::Router)
            .filter(move |r| self.serve_policies(r, service).next().is_some())
    }
}

/// An allowed dial: where to connect, and which policy allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit<'a> {
    /// The service to connect to.
    pub service: &'a ServiceEntry,
    /// The first service policy that allowed the dial.
    pub policy: &'a IdentityName,
    /// The identity, as the snapshot knows it (roles, for stamping).
    pub identity: &'a IdentityEntry,
    /// The tag patterns of every policy that allowed the dial; `None` when
    /// one of them allows any tag.
    pub tags: Option<Vec<&'a str>>,
}

/// Why a peer or a dial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// Only client identities dial services.
    #[error("{0} identities cannot dial services; use a client identity")]
    WrongKind(Kind),
    /// The identity is not (or no longer) known to the controller.
    #[error("identity {0} is not known to the controller (deleted or revoked); ask the admin for a new identity")]
    UnknownIdentity(IdentityName),
    /// The certificate is not one of the identity's current ones.
    #[error("the certificate presented for {0} is expired, replaced or revoked; renew or re-enroll the identity")]
    StaleCertificate(IdentityName),
    /// No such service.
    #[error("no service named {0:?}; list services with darkport-controller service list")]
    UnknownService(String),
    /// No service policy allows it.
    #[error("identity {identity} may not dial service {service}: no service policy allows it; add one with darkport-controller policy create")]
    NotAuthorized {
        /// Who asked.
        identity: IdentityName,
        /// For what.
        service: IdentityName,
    },
    /// No bind policy lets the identity host the service.
    #[error("identity {identity} may not host service {service}: no bind policy allows it; add one with darkport-controller policy create NAME --type bind")]
    NotAllowedToHost {
        /// Who asked.
        identity: IdentityName,
        /// For what.
        service: IdentityName,
    },
    /// This router may not serve the service.
    #[error("router {router} may not serve service {service}: no router policy allows it; use another router or add one with darkport-controller router-policy create")]
    RouterNotAllowed {
        /// This router.
        router: IdentityName,
        /// The service.
        service: IdentityName,
    },
}

/// Whether `peer` may use the data plane at all under `snapshot` at `now`:
/// a client identity known to the controller, presenting one of its
/// current certificates. Routers check this at connection time and again
/// on every snapshot change, closing connections that fail it.
pub fn check_peer<'a>(
    snapshot: &'a PolicySnapshot,
    peer: &PeerIdentity,
    now: u64,
) -> Result<&'a IdentityEntry, Denied> {
    if peer.kind != Kind::Client {
        return Err(Denied::WrongKind(peer.kind));
    }
    let identity = snapshot
        .identity(Kind::Client, &peer.name)
        .ok_or_else(|| Denied::UnknownIdentity(peer.name.clone()))?;
    if !identity.holds(&peer.fingerprint, now) {
        return Err(Denied::StaleCertificate(peer.name.clone()));
    }
    Ok(identity)
}

/// Decides whether `peer` may dial `service` through `router` under
/// `snapshot` at `now`.
pub fn authorize<'a>(
    snapshot: &'a PolicySnapshot,
    router: &IdentityName,
    peer: &PeerIdentity,
    service: &str,
    now: u64,
) -> Result<Permit<'a>, Denied> {
    let (identity, svc) = peer_and_service(snapshot, peer, service, now)?;
    let policy = first_policy(snapshot, PolicyKind::Dial, identity, svc)?;
    let tags = tag_patterns(snapshot, identity, svc);
    check_router_serves(snapshot, router, svc)?;
    Ok(Permit {
        service: svc,
        policy,
        identity,
        tags,
    })
}

/// An allowed terminator: which service, which bind policy allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPermit<'a> {
    /// The hosted service.
    pub service: &'a ServiceEntry,
    /// The first bind policy that allowed it.
    pub policy: &'a IdentityName,
}

/// Decides whether `peer` may host `service` through `router` under
/// `snapshot` at `now`: a current client identity, a bind policy that
/// selects it and the service, and a router policy that lets this router
/// serve the service. Routers check it when a hoster registers and again
/// on every snapshot change, removing terminators that fail it.
pub fn authorize_bind<'a>(
    snapshot: &'a PolicySnapshot,
    router: &IdentityName,
    peer: &PeerIdentity,
    service: &str,
    now: u64,
) -> Result<BindPermit<'a>, Denied> {
    let (identity, svc) = peer_and_service(snapshot, peer, service, now)?;
    let policy = first_policy(snapshot, PolicyKind::Bind, identity, svc)?;
    check_router_serves(snapshot, router, svc)?;
    Ok(BindPermit {
        service: svc,
        policy,
    })
}

/// The first checks of a dial and of a terminator: the peer is current
/// ([`check_peer`]) and the service exists.
fn peer_and_service<'a>(
    snapshot: &'a PolicySnapshot,
    peer: &PeerIdentity,
    service: &str,
    now: u64,
) -> Result<(&'a IdentityEntry, &'a ServiceEntry), Denied> {
    let identity = check_peer(snapshot, peer, now)?;
    let svc = snapshot
        .service(service)
        .ok_or_else(|| Denied::UnknownService(service.to_string()))?;
    Ok((identity, svc))
}

/// The first policy of `kind` that selects `identity` and `svc`, or the
/// denial that names what is missing.
fn first_policy<'a>(
    snapshot: &'a PolicySnapshot,
    kind: PolicyKind,
    identity: &IdentityEntry,
    svc: &ServiceEntry,
) -> Result<&'a IdentityName, Denied> {
    let found = snapshot
        .policies
        .iter()
        .find(|p| p.selects(kind, identity, svc));
    found.map(|p| &p.name).ok_or_else(|| {
        let (identity, service) = (identity.name.clone(), svc.name.clone());
        match kind {
            PolicyKind::Dial => Denied::NotAuthorized { identity, service },
            PolicyKind::Bind => Denied::NotAllowedToHost { identity, service },
        }
    })
}

/// The last check of a dial and of a terminator: a router policy lets
/// `router` serve `svc`.
fn check_router_serves(
    snapshot: &PolicySnapshot,
    router: &IdentityName,
    svc: &ServiceEntry,
) -> Result<(), Denied> {
    let serves = snapshot
        .identity(Kind::Router, router)
        .is_some_and(|r| snapshot.serve_policies(r, svc).next().is_some());
    if serves {
        Ok(())
    } else {
        Err(Denied::RouterNotAllowed {
            router: router.clone(),
            service: svc.name.clone(),
        })
    }
}

/// The tag patterns that the policies letting `identity` dial `service`
/// give it: `None` if any of them allows every tag.
fn tag_patterns<'a>(
    snapshot: &'a PolicySnapshot,
    identity: &IdentityEntry,
    service: &ServiceEntry,
) -> Option<Vec<&'a str>> {
    let mut out = Vec::new();
    for p in snapshot
        .policies
        .iter()
        .filter(|p| p.selects(PolicyKind::Dial, identity, service))
    {
        if p.tags.is_empty() {
            return None;
        }
        out.extend(p.tags.iter().map(String::as_str));
    }
    Some(out)
}

/// The snapshot as `router` receives it: a fluent-forward service's shared
/// key only goes to routers that may serve the service (the key is a
/// credential for that service alone; a router that may not dial it has
/// no use for it).
pub fn for_router(snapshot: &PolicySnapshot, router: &IdentityName) -> PolicySnapshot {
    let mut out = snapshot.clone();
    let entry = snapshot.identity(Kind::Router, router);
    for svc in &mut out.services {
        if let ServiceProtocol::FluentForward(f) = &mut svc.protocol {
            let serves = entry.is_some_and(|r| {
                snapshot
                    .services
                    .iter()
                    .find(|s| s.name == svc.name)
                    .is_some_and(|s| snapshot.serve_policies(r, s).next().is_some())
            });
            if !serves {
                f.shared_key = None;
            }
        }
    }
    out
}

/// What `policy explain` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Explanation {
    /// Whether a dial would be allowed (through at least one router).
    pub allowed: bool,
    /// Service policies that allow the dial.
    pub dial_policies: Vec<IdentityName>,
    /// Routers that may serve the service, each with the router policies
    /// that allow it.
    pub routers: Vec<(IdentityName, Vec<IdentityName>)>,
    /// Plain-words reasons, one per finding.
    pub reasons: Vec<String>,
    /// With a tag asked about: whether the policies let the identity
    /// write it.
    pub tag_allowed: Option<bool>,
    /// Bind policies that let the identity host the service.
    #[serde(default)]
    pub bind_policies: Vec<IdentityName>,
    /// Whether the identity may host the service (serve it through
    /// terminators) through at least one router: a valid certificate, a
    /// bind policy, and a router that may serve the service.
    #[serde(default)]
    pub may_host: bool,
}

/// Explains whether `identity` may dial `service`, and whether it may
/// host it, and which policies decide it. Pure; the controller runs it on
/// its current snapshot.
pub fn explain(
    snapshot: &PolicySnapshot,
    identity: &IdentityName,
    service: &str,
    tag: Option<&str>,
) -> Explanation {
    let mut out = Explanation {
        allowed: false,
        dial_policies: vec![],
        routers: vec![],
        reasons: vec![],
        tag_allowed: None,
        bind_policies: vec![],
        may_host: false,
    };
    let Some(id) = snapshot.identity(Kind::Client, identity) else {
        out.reasons.push(format!(
            "no client identity named {identity} (unknown, revoked, or not a client)"
        ));
        return out;
    };
    let Some(svc) = snapshot.service(service) else {
        out.reasons.push(format!("no service named {service:?}"));
        return out;
    };
    let has_certificate = !id.certificates.is_empty();
    if !has_certificate {
        out.reasons.push(format!(
            "{identity} has no valid certificate (not enrolled yet, or it expired without renewal)"
        ));
    }
    out.dial_policies = snapshot.dial_policies(id, svc).cloned().collect();
    if out.dial_policies.is_empty() {
        out.reasons.push(format!(
            "no service policy selects both identity {identity} (roles: {}) and service {} (roles: {})",
            roles(&id.roles),
            svc.name,
            roles(&svc.roles)
        ));
    }
    out.routers = serving_routers(snapshot, svc);
    if out.routers.is_empty() {
        out.reasons.push(format!(
            "no router policy lets any router serve service {}",
            svc.name
        ));
    }
    out.allowed = has_certificate && !out.dial_policies.is_empty() && !out.routers.is_empty();
    if let (Some(tag), false) = (tag, out.dial_policies.is_empty()) {
        let ok = explain_tag(snapshot, id, svc, tag, &mut out.reasons);
        out.tag_allowed = Some(ok);
        out.allowed &= ok;
    }
    if out.allowed {
        out.reasons.push(format!(
            "allowed by service policy {} through {} router(s)",
            out.dial_policies
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            out.routers.len()
        ));
    }
    explain_bind(snapshot, id, svc, has_certificate, &mut out);
    out
}

/// The hosting half of [`explain`]: fills `bind_policies` and `may_host`
/// (the certificate and router findings are the dial half's) and says
/// why.
fn explain_bind(
    snapshot: &PolicySnapshot,
    id: &IdentityEntry,
    svc: &ServiceEntry,
    has_certificate: bool,
    out: &mut Explanation,
) {
    out.bind_policies = snapshot.bind_policies(id, svc).cloned().collect();
    out.may_host = has_certificate && !out.bind_policies.is_empty() && !out.routers.is_empty();
    let policies = out
        .bind_policies
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    out.reasons.push(if out.may_host {
        format!(
            "may host service {} by bind policy {policies} through {} router(s)",
            svc.name,
            out.routers.len()
        )
    } else if out.bind_policies.is_empty() {
        format!(
            "no bind policy lets identity {} (roles: {}) host service {} (roles: {})",
            id.name,
            roles(&id.roles),
            svc.name,
            roles(&svc.roles)
        )
    } else {
        format!(
            "bind policy {policies} selects {} and service {}, but it may not host it without a valid certificate and a router that may serve the service",
            id.name, svc.name
        )
    });
    if !svc.has_address() {
        out.reasons.push(format!(
            "service {} is hosted (no address): dials reach it only through a hoster's terminators",
            svc.name
        ));
    }
}

/// The routers that may serve `svc`, each with the router policies that
/// let it.
fn serving_routers(
    snapshot: &PolicySnapshot,
    svc: &ServiceEntry,
) -> Vec<(IdentityName, Vec<IdentityName>)> {
    snapshot
        .identities
        .iter()
        .filter(|r| r.kind == Kind::Router)
        .filter_map(|r| {
            let ps: Vec<_> = snapshot.serve_policies(r, svc).cloned().collect();
            (!ps.is_empty()).then(|| (r.name.clone(), ps))
        })
        .collect()
}

/// Whether the policies letting `id` dial `svc` let it write `tag`, with
/// the reasons why pushed onto `reasons`.
fn explain_tag(
    snapshot: &PolicySnapshot,
    id: &IdentityEntry,
    svc: &ServiceEntry,
    tag: &str,
    reasons: &mut Vec<String>,
) -> bool {
    let identity = &id.name;
    let ok = match tag_patterns(snapshot, id, svc) {
        None => {
            reasons.push(format!("tag {tag:?}: a policy allows every tag"));
            true
        }
        Some(patterns) => {
            let ok = crate::tags::TagRules::new(patterns.iter().copied(), identity.as_str())
                .map(|r| r.allows(tag))
                .unwrap_or(false);
            if patterns
                .iter()
                .any(|p| p.contains(crate::tags::IDENTITY_PLACEHOLDER))
            {
                if let Err(e) = crate::tags::check_identity_for_tags(identity.as_str()) {
                    reasons.push(e.to_string());
                }
            }
            reasons.push(format!(
                "tag {tag:?} is {} by the tag patterns {}",
                if ok { "allowed" } else { "DENIED" },
                patterns.join(", ")
            ));
            ok
        }
    };
    if !matches!(svc.protocol, ServiceProtocol::FluentForward(_)) {
        reasons.push(format!(
            "service {} is plain TCP: tags are only enforced on fluent-forward services",
            svc.name
        ));
    }
    ok
}

fn roles(r: &[IdentityName]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    r.iter()
        .map(|r| format!("#{r}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IdentityName {
        IdentityName::new(s).expect("name")
    }

    fn cert(fp: &str) -> CertEntry {
        CertEntry {
            fingerprint: fp.into(),
            expires_at: 1_000,
        }
    }

    const NOW: u64 = 100;

    fn snapshot() -> PolicySnapshot {
        PolicySnapshot {
            version: 7,
            identities: vec![
                IdentityEntry {
                    name: n("app-1"),
                    kind: Kind::Client,
                    roles: vec![n("log-writers")],
                    certificates: vec![cert("aa")],
                },
                IdentityEntry {
                    name: n("app-2"),
                    kind: Kind::Client,
                    roles: vec![],
                    certificates: vec![cert("bb")],
                },
                IdentityEntry {
                    name: n("router-1"),
                    kind: Kind::Router,
                    roles: vec![],
                    certificates: vec![cert("cc")],
                },
            ],
            services: vec![
                ServiceEntry {
                    name: n("fluentd"),
                    address: "127.0.0.1:24224".into(),
                    roles: vec![n("logs")],
                    protocol: Default::default(),
                    strategy: Default::default(),
                },
                ServiceEntry {
                    name: n("db"),
                    address: "127.0.0.1:5432".into(),
                    roles: vec![],
                    protocol: Default::default(),
                    strategy: Default::default(),
                },
            ],
            policies: vec![
                PolicyEntry {
                    name: n("writers"),
                    services: vec![Selector::Role(n("logs"))],
                    identities: vec![Selector::Role(n("log-writers"))],
                    tags: vec![],
                    kind: Default::default(),
                },
                PolicyEntry {
                    name: n("app2-db"),
                    services: vec![Selector::Name(n("db"))],
                    identities: vec![Selector::Name(n("app-2"))],
                    tags: vec![],
                    kind: Default::default(),
                },
            ],
            router_policies: vec![RouterPolicyEntry {
                name: n("edge-logs"),
                routers: vec![Selector::Name(n("router-1"))],
                services: vec![Selector::Role(n("logs")), Selector::Name(n("db"))],
            }],
        }
    }

    fn peer(kind: Kind, name: &str, fp: &str) -> PeerIdentity {
        PeerIdentity {
            kind,
            name: n(name),
            fingerprint: fp.into(),
        }
    }

    #[test]
    fn table() {
        let s = snapshot();
        let cases: Vec<(PeerIdentity, &str, Result<&str, Denied>)> = vec![
            (peer(Kind::Client, "app-1", "aa"), "fluentd", Ok("writers")),
            (peer(Kind::Client, "app-2", "bb"), "db", Ok("app2-db")),
            (
                peer(Kind::Client, "app-1", "aa"),
                "db",
                Err(Denied::NotAuthorized {
                    identity: n("app-1"),
                    service: n("db"),
                }),
            ),
            (
                peer(Kind::Client, "app-2", "bb"),
                "fluentd",
                Err(Denied::NotAuthorized {
                    identity: n("app-2"),
                    service: n("fluentd"),
                }),
            ),
            (
                peer(Kind::Client, "app-1", "aa"),
                "nope",
                Err(Denied::UnknownService("nope".into())),
            ),
            (
                peer(Kind::Client, "app-1", "zz"),
                "fluentd",
                Err(Denied::StaleCertificate(n("app-1"))),
            ),
            (
                peer(Kind::Client, "ghost", "aa"),
                "fluentd",
                Err(Denied::UnknownIdentity(n("ghost"))),
            ),
            (
                peer(Kind::Router, "router-1", "cc"),
                "fluentd",
                Err(Denied::WrongKind(Kind::Router)),
            ),
            // A client certificate naming a router identity's name is not that router.
            (
                peer(Kind::Client, "router-1", "cc"),
                "fluentd",
                Err(Denied::UnknownIdentity(n("router-1"))),
            ),
        ];
        for (p, svc, want) in cases {
            let got =
                authorize(&s, &n("router-1"), &p, svc, NOW).map(|permit| permit.policy.as_str());
            assert_eq!(got, want, "{p} -> {svc}");
        }
    }

    #[test]
    fn all_selector_and_empty_snapshot() {
        let mut s = snapshot();
        s.policies = vec![PolicyEntry {
            name: n("open"),
            services: vec![Selector::All],
            identities: vec![Selector::All],
            tags: vec![],
            kind: Default::default(),
        }];
        let r = n("router-1");
        assert!(authorize(&s, &r, &peer(Kind::Client, "app-2", "bb"), "fluentd", NOW).is_ok());
        let empty = PolicySnapshot::default();
        assert!(authorize(
            &empty,
            &r,
            &peer(Kind::Client, "app-1", "aa"),
            "fluentd",
            NOW
        )
        .is_err());
    }

    #[test]
    fn shared_keys_go_only_to_routers_that_may_serve_the_service() {
        let mut s = snapshot();
        for svc in &mut s.services {
            svc.protocol = ServiceProtocol::FluentForward(FluentSettings {
                shared_key: Some("k".into()),
                ..FluentSettings::default()
            });
        }
        let key = |s: &PolicySnapshot, name: &str| match &s
            .services
            .iter()
            .find(|x| x.name.as_str() == name)
            .expect("service")
            .protocol
        {
            ServiceProtocol::FluentForward(f) => f.shared_key.clone(),
            ServiceProtocol::Tcp => None,
        };
        for r in s.identities.iter().filter(|i| i.kind == Kind::Router) {
            let mine = for_router(&s, &r.name);
            for svc in &s.services {
                let serves = s.serve_policies(r, svc).next().is_some();
                assert_eq!(
                    key(&mine, svc.name.as_str()).is_some(),
                    serves,
                    "router {} service {}",
                    r.name,
                    svc.name
                );
            }
        }
        assert_eq!(key(&for_router(&s, &n("no-such-router")), "fluentd"), None);
    }

    #[test]
    fn expiry_router_policies_and_explain() {
        let mut s = snapshot();
        let app1 = peer(Kind::Client, "app-1", "aa");
        let r = n("router-1");
        // An expired certificate is stale.
        assert_eq!(
            authorize(&s, &r, &app1, "fluentd", 1_000).map(|p| p.policy.clone()),
            Err(Denied::StaleCertificate(n("app-1")))
        );
        // Another router that no router policy covers may not serve.
        assert_eq!(
            authorize(&s, &n("router-2"), &app1, "fluentd", NOW).map(|p| p.policy.clone()),
            Err(Denied::RouterNotAllowed {
                router: n("router-2"),
                service: n("fluentd")
            })
        );
        let e = explain(&s, &n("app-1"), "fluentd", None);
        assert!(e.allowed, "{e:?}");
        assert_eq!(e.dial_policies, vec![n("writers")]);
        assert_eq!(e.routers, vec![(n("router-1"), vec![n("edge-logs")])]);
        let e = explain(&s, &n("app-2"), "fluentd", None);
        assert!(!e.allowed);
        assert!(e.reasons[0].contains("no service policy"), "{e:?}");
        let e = explain(&s, &n("nobody"), "fluentd", None);
        assert!(!e.allowed && e.reasons[0].contains("no client identity"));
        s.router_policies.clear();
        let e = explain(&s, &n("app-1"), "fluentd", None);
        assert!(!e.allowed && e.reasons.iter().any(|r| r.contains("no router policy")));
        assert!(matches!(
            authorize(&s, &r, &app1, "fluentd", NOW),
            Err(Denied::RouterNotAllowed { .. })
        ));
    }

    /// [`snapshot`] plus a hoster: client `hoster-1` (role `hosters`)
    /// that bind policy `host-logs` lets host the `#logs` services, and a
    /// second router that no router policy covers.
    fn hosting_snapshot() -> PolicySnapshot {
        let mut s = snapshot();
        s.identities.push(IdentityEntry {
            name: n("hoster-1"),
            kind: Kind::Client,
            roles: vec![n("hosters")],
            certificates: vec![cert("hh")],
        });
        s.identities.push(IdentityEntry {
            name: n("router-2"),
            kind: Kind::Router,
            roles: vec![],
            certificates: vec![cert("dd")],
        });
        s.policies.push(PolicyEntry {
            name: n("host-logs"),
            services: vec![Selector::Role(n("logs"))],
            identities: vec![Selector::Role(n("hosters"))],
            tags: vec![],
            kind: PolicyKind::Bind,
        });
        s
    }

    #[test]
    fn authorize_bind_table() {
        let s = hosting_snapshot();
        let hoster = peer(Kind::Client, "hoster-1", "hh");
        let (r1, r2, r9) = (n("router-1"), n("router-2"), n("router-9"));
        // What the row checks, who, through which router, which service,
        // when, and the verdict (the bind policy's name, or why not).
        type Case<'a> = (
            &'a str,
            PeerIdentity,
            &'a IdentityName,
            &'a str,
            u64,
            Result<&'a str, Denied>,
        );
        let cases: Vec<Case> = vec![
            (
                "allowed",
                hoster.clone(),
                &r1,
                "fluentd",
                NOW,
                Ok("host-logs"),
            ),
            (
                "no bind policy for the service",
                hoster.clone(),
                &r1,
                "db",
                NOW,
                Err(Denied::NotAllowedToHost {
                    identity: n("hoster-1"),
                    service: n("db"),
                }),
            ),
            (
                "a dial policy does not allow hosting",
                peer(Kind::Client, "app-1", "aa"),
                &r1,
                "fluentd",
                NOW,
                Err(Denied::NotAllowedToHost {
                    identity: n("app-1"),
                    service: n("fluentd"),
                }),
            ),
            (
                "no router policy lets this router serve it",
                hoster.clone(),
                &r2,
                "fluentd",
                NOW,
                Err(Denied::RouterNotAllowed {
                    router: n("router-2"),
                    service: n("fluentd"),
                }),
            ),
            (
                "a router the snapshot does not know",
                hoster.clone(),
                &r9,
                "fluentd",
                NOW,
                Err(Denied::RouterNotAllowed {
                    router: n("router-9"),
                    service: n("fluentd"),
                }),
            ),
            (
                "revoked or unknown identity (absent from the snapshot)",
                peer(Kind::Client, "ghost", "hh"),
                &r1,
                "fluentd",
                NOW,
                Err(Denied::UnknownIdentity(n("ghost"))),
            ),
            (
                "a certificate not among the identity's",
                peer(Kind::Client, "hoster-1", "zz"),
                &r1,
                "fluentd",
                NOW,
                Err(Denied::StaleCertificate(n("hoster-1"))),
            ),
            (
                "an expired certificate",
                hoster.clone(),
                &r1,
                "fluentd",
                1_000,
                Err(Denied::StaleCertificate(n("hoster-1"))),
            ),
            (
                "routers do not host",
                peer(Kind::Router, "router-1", "cc"),
                &r1,
                "fluentd",
                NOW,
                Err(Denied::WrongKind(Kind::Router)),
            ),
            (
                "unknown service",
                hoster.clone(),
                &r1,
                "nope",
                NOW,
                Err(Denied::UnknownService("nope".into())),
            ),
        ];
        for (what, p, router, svc, now, want) in cases {
            let got = authorize_bind(&s, router, &p, svc, now).map(|permit| permit.policy.as_str());
            assert_eq!(got, want, "{what}: {p} hosts {svc} via {router}");
        }
        // A bind policy does not allow dialing.
        assert_eq!(
            authorize(&s, &r1, &hoster, "fluentd", NOW).map(|p| p.policy.clone()),
            Err(Denied::NotAuthorized {
                identity: n("hoster-1"),
                service: n("fluentd"),
            })
        );
    }

    #[test]
    fn explain_covers_hosting() {
        let mut s = hosting_snapshot();
        let e = explain(&s, &n("hoster-1"), "fluentd", None);
        assert!(!e.allowed && e.may_host, "{e:?}");
        assert_eq!(e.bind_policies, vec![n("host-logs")]);
        assert!(e.dial_policies.is_empty());
        assert!(
            e.reasons
                .iter()
                .any(|r| r
                    == "may host service fluentd by bind policy host-logs through 1 router(s)"),
            "{e:?}"
        );
        // A dialer may not host.
        let e = explain(&s, &n("app-1"), "fluentd", None);
        assert!(
            e.allowed && !e.may_host && e.bind_policies.is_empty(),
            "{e:?}"
        );
        assert!(
            e.reasons.iter().any(|r| r.starts_with(
                "no bind policy lets identity app-1 (roles: #log-writers) host service fluentd"
            )),
            "{e:?}"
        );
        // A bind policy without a router to serve the service hosts nothing.
        s.router_policies.clear();
        let e = explain(&s, &n("hoster-1"), "fluentd", None);
        assert!(
            !e.may_host && e.bind_policies == vec![n("host-logs")],
            "{e:?}"
        );
        assert!(
            e.reasons.iter().any(|r| r.contains("no router policy"))
                && e.reasons
                    .iter()
                    .any(|r| r.starts_with("bind policy host-logs selects hoster-1")),
            "{e:?}"
        );
        // A hosted service says how it is reached.
        let mut s = hosting_snapshot();
        s.services[0].address.clear();
        let e = explain(&s, &n("hoster-1"), "fluentd", None);
        assert!(
            e.reasons
                .iter()
                .any(|r| r.starts_with("service fluentd is hosted (no address)")),
            "{e:?}"
        );
    }

    #[test]
    fn selector_parse() {
        assert_eq!(Selector::parse("#all"), Ok(Selector::All));
        assert_eq!(Selector::parse("#x"), Ok(Selector::Role(n("x"))));
        assert_eq!(Selector::parse("@x"), Ok(Selector::Name(n("x"))));
        assert_eq!(Selector::parse("x"), Ok(Selector::Name(n("x"))));
        assert!(Selector::parse("#").is_err());
        assert!(Selector::parse("@").is_err());
        assert!(Selector::parse("a b").is_err());
        for s in ["#all", "#x", "@x"] {
            assert_eq!(Selector::parse(s).expect("parse").to_string(), s);
        }
    }
}
