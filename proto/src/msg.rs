//! Every message on the wire.
//!
//! Data plane (client ⇄ router, ALPN `darkport/1`): each QUIC bidirectional
//! stream starts with a [`DialRequest`] from the client and a
//! [`DialResponse`] from the router; after an `Ok` the stream carries the
//! application's bytes unchanged.
//!
//! Control plane (anything ⇄ controller, ALPN `darkport-ctl/1`): each stream
//! starts with a [`ControlRequest`]. Enrollment, admin and router listing get
//! one [`ControlResponse`]; a router sync stream gets a response every time
//! the policy snapshot changes.

use serde::{Deserialize, Serialize};

use crate::identity::{IdentityName, Kind};
use crate::policy::{PolicySnapshot, Selector, ServiceEntry};
use crate::PROTOCOL_VERSION;

/// First message of a data stream: which service to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DialRequest {
    /// Protocol version of the client.
    pub version: u16,
    /// Name of the service to dial.
    pub service: String,
}

impl DialRequest {
    /// A request for `service` at the current protocol version.
    pub fn new(service: impl Into<String>) -> Self {
        DialRequest {
            version: PROTOCOL_VERSION,
            service: service.into(),
        }
    }
}

/// The router's verdict on a dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum DialStatus {
    /// Connected; application bytes follow.
    Ok,
    /// No service of that name exists.
    UnknownService,
    /// The identity may not dial that service (policy), or is not current.
    NotAuthorized,
    /// The router could not reach the private service.
    ServiceUnreachable,
    /// The dial request was malformed, too large or of another version.
    BadRequest,
    /// The router has no policy from the controller yet.
    NotReady,
    /// This router may not serve the service (router policy); another
    /// router may.
    WrongRouter,
    /// A limit of this router was reached for the identity (concurrent
    /// streams); the message names it. Other identities are unaffected.
    LimitReached,
    /// The router is shutting down: its existing streams may finish, new
    /// dials must go to another router.
    Draining,
}

impl DialStatus {
    /// A stable snake_case name, for metric labels and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            DialStatus::Ok => "ok",
            DialStatus::UnknownService => "unknown_service",
            DialStatus::NotAuthorized => "not_authorized",
            DialStatus::ServiceUnreachable => "service_unreachable",
            DialStatus::BadRequest => "bad_request",
            DialStatus::NotReady => "not_ready",
            DialStatus::WrongRouter => "wrong_router",
            DialStatus::LimitReached => "limit_reached",
            DialStatus::Draining => "draining",
        }
    }
}

/// The router's answer to a [`DialRequest`], sent before any payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DialResponse {
    /// Outcome.
    pub status: DialStatus,
    /// Plain-words reason, for logs (empty on success).
    pub message: String,
}

/// Over TLS over TCP, the one message on a connection's notice stream
/// (the client's first stream): what the router says before it closes
/// the connection, as QUIC's `CONNECTION_CLOSE` carries it (docs/protocol.md
/// section 12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CloseNotice {
    /// The close code (`codes::CloseCode`).
    pub code: u32,
    /// Plain-words reason, at most [`MAX_CLOSE_REASON`] bytes when sent.
    pub reason: String,
}

/// Longest reason a router puts in a [`CloseNotice`], in bytes: the notice
/// then fits its frame (`codec::MAX_DIAL_FRAME`) whatever the reason.
pub const MAX_CLOSE_REASON: usize = 1024;

impl CloseNotice {
    /// The notice for closing with `code` because of `reason`, the reason
    /// cut to [`MAX_CLOSE_REASON`] bytes (at a character boundary).
    pub fn new(code: crate::codes::CloseCode, mut reason: String) -> CloseNotice {
        if reason.len() > MAX_CLOSE_REASON {
            let mut cut = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        CloseNotice {
            code: code.code(),
            reason,
        }
    }
}

/// First message of every control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ControlRequest {
    /// Protocol version of the sender.
    pub version: u16,
    /// What is asked.
    pub body: ControlBody,
}

impl ControlRequest {
    /// Wraps a body at the current protocol version.
    pub fn new(body: ControlBody) -> Self {
        ControlRequest {
            version: PROTOCOL_VERSION,
            body,
        }
    }
}

/// The kinds of control requests.
// One request is decoded per control stream and lives for that request
// only: its size on the stack does not matter, and a Box would only add an
// allocation (the wire is the same either way).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ControlBody {
    /// Redeem an enrollment token for a certificate. Needs no certificate.
    Enroll(EnrollRequest),
    /// An admin command. Needs an admin certificate.
    Admin(AdminRequest),
    /// A router subscribes to policy snapshots and registers its address.
    /// Needs a router certificate.
    RouterSync {
        /// Address clients should use to reach this router (`host:port`).
        advertise: String,
    },
    /// Which routers exist. Needs any current certificate (clients use it).
    ListRouters,
    /// Renew the caller's certificate for a new key pair. Needs the
    /// caller's current certificate (client or router).
    Renew {
        /// PKCS#10 CSR (DER) for the new key pair.
        csr_der: Vec<u8>,
    },
    /// A router reports its state: answered with [`ControlResponse::Ack`].
    RouterReport(RouterReport),
    /// Which controllers share this one's state (high availability):
    /// answered with [`ControlResponse::Controllers`]. Needs any current
    /// certificate. Routers and clients keep the list to fail over.
    ListControllers,
}

impl ControlBody {
    /// The oldest protocol version that may carry this request: the ones
    /// whose request and answer did not change since
    /// [`crate::OLDEST_COMPATIBLE_VERSION`] accept it; admin requests and
    /// router sync (which carry services and snapshots) need the current
    /// version.
    pub fn oldest_version(&self) -> u16 {
        match self {
            ControlBody::Enroll(_)
            | ControlBody::Renew { .. }
            | ControlBody::ListRouters
            | ControlBody::ListControllers => crate::OLDEST_COMPATIBLE_VERSION,
            ControlBody::Admin(_)
            | ControlBody::RouterSync { .. }
            | ControlBody::RouterReport(_) => PROTOCOL_VERSION,
        }
    }

    /// Whether a request of `version` may carry this body.
    pub fn accepts_version(&self, version: u16) -> bool {
        (self.oldest_version()..=PROTOCOL_VERSION).contains(&version)
    }
}

/// The service name of a hoster's host stream: a [`DialRequest`] for it is
/// followed by [`HostRequest`]s (docs/protocol.md, "Hosting"). Names
/// starting with `@` are not valid service names, so a router of an older
/// version answers `UnknownService`.
pub const HOST_STREAM: &str = "@host";

/// Largest [`HostRequest`] or [`HostResponse`] frame (a hoster with many
/// services); [`Incoming`] is a dial frame (`codec::MAX_DIAL_FRAME`).
pub const MAX_HOST_FRAME: usize = 64 * 1024;

/// Most idle offer streams a router keeps per hoster connection; past it,
/// an offer is refused with `LimitReached`.
pub const MAX_IDLE_OFFERS: usize = 64;

/// The service name of a hoster's offer stream: an idle stream the router
/// keeps until a dial needs it, then opens with an [`Incoming`].
pub const OFFER_STREAM: &str = "@offer";

/// Where a terminator stands among the others of its service: routers use
/// `Required` ones first, `Default` ones next, `Failed` ones only when no
/// other is left (a hoster's failed health check sets it).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Precedence {
    /// Preferred over every other.
    Required,
    /// The usual.
    #[default]
    Default,
    /// Unhealthy: a last resort.
    Failed,
}

impl Precedence {
    /// The name the CLI and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Precedence::Required => "required",
            Precedence::Default => "default",
            Precedence::Failed => "failed",
        }
    }

    /// The precedence a CLI name stands for.
    pub fn parse(s: &str) -> Option<Precedence> {
        [
            Precedence::Required,
            Precedence::Default,
            Precedence::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// One service a hoster serves through a router: a terminator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostedService {
    /// The service's name.
    pub name: String,
    /// The hoster's static cost (0–65535, lower is preferred).
    pub cost: u16,
    /// Its precedence (health).
    pub precedence: Precedence,
}

/// On a host stream, from the hoster: the whole set of services it serves
/// through this connection, replacing the previous one. An empty set
/// withdraws every terminator (a draining hoster sends it first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostRequest {
    /// Names this hoster process among others of the same identity (its
    /// terminators are (service, identity, router, instance)).
    pub instance: String,
    /// The services.
    pub services: Vec<HostedService>,
}

/// The router's answer to a [`HostRequest`]: one verdict per service, in
/// the request's order. The router sends another whenever a new policy
/// changes a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostResponse {
    /// Per service: `Ok` (a terminator now), or why not.
    pub verdicts: Vec<HostVerdict>,
}

/// One service's verdict in a [`HostResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostVerdict {
    /// The service.
    pub service: String,
    /// `Ok`, `UnknownService`, `NotAuthorized` (no bind policy),
    /// `WrongRouter`, `NotReady` or `LimitReached`.
    pub status: DialStatus,
    /// Plain-words reason (empty on success).
    pub message: String,
}

/// On an offer stream, from the router: a dial for one of the hoster's
/// services. The hoster answers with a [`DialResponse`] (`Ok` once its
/// service accepted the connection), then the stream carries the
/// application's bytes. Everything here is the router's verified view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Incoming {
    /// The service dialed.
    pub service: String,
    /// The caller's identity, from its verified certificate.
    pub caller: IdentityName,
    /// The caller's roles, as the controller's policy knows them.
    pub caller_roles: Vec<IdentityName>,
    /// The caller's address as the router saw it (`ip:port`).
    pub caller_address: String,
    /// The router carrying the stream.
    pub router: IdentityName,
}

/// Whether a dial request of `version` is understood: the dial messages
/// are the same bytes from [`crate::OLDEST_COMPATIBLE_VERSION`] on.
pub fn dial_version_supported(version: u16) -> bool {
    (crate::OLDEST_COMPATIBLE_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// What a router tells the controller about itself, every few seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RouterReport {
    /// Version of the snapshot the router enforces.
    pub snapshot_version: u64,
    /// Client identities connected right now.
    pub clients: Vec<IdentityName>,
    /// Terminators registered with this router right now.
    #[serde(default)]
    pub terminators: Vec<TerminatorInfo>,
}

/// A terminator as a router reports it (and `service show` lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TerminatorInfo {
    /// The hosted service.
    pub service: String,
    /// The hoster's identity.
    pub hoster: IdentityName,
    /// The hoster's instance name.
    pub instance: String,
    /// The router it is registered with (filled in by the controller).
    pub router: IdentityName,
    /// The hoster's static cost.
    pub cost: u16,
    /// Its precedence (health).
    pub precedence: Precedence,
    /// Streams open through it now.
    pub streams: u32,
}

/// Token plus certificate signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EnrollRequest {
    /// The enrollment token, as the one line of text given to the user.
    pub token: String,
    /// PKCS#10 CSR (DER) made on the enrolling host.
    pub csr_der: Vec<u8>,
}

/// Admin commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum AdminRequest {
    /// Create an identity and return its enrollment token.
    CreateIdentity {
        /// Name of the identity.
        name: IdentityName,
        /// Client or router.
        kind: Kind,
        /// Roles, without the leading `#`.
        roles: Vec<IdentityName>,
        /// Token lifetime in seconds.
        token_ttl_secs: u64,
    },
    /// List identities.
    ListIdentities,
    /// Delete an identity.
    DeleteIdentity {
        /// Its name.
        name: IdentityName,
    },
    /// Create a service.
    CreateService(ServiceEntry),
    /// List services.
    ListServices,
    /// Delete a service.
    DeleteService {
        /// Its name.
        name: IdentityName,
    },
    /// Create a service policy.
    CreatePolicy {
        /// Policy name.
        name: IdentityName,
        /// Which services it covers.
        services: Vec<Selector>,
        /// Which identities may dial (or host) them.
        identities: Vec<Selector>,
        /// Tag patterns for fluent-forward services (empty: any tag);
        /// dial policies only.
        tags: Vec<String>,
        /// Dial or bind (host).
        kind: crate::policy::PolicyKind,
    },
    /// List policies.
    ListPolicies,
    /// Delete a policy.
    DeletePolicy {
        /// Its name.
        name: IdentityName,
    },
    /// List routers that registered.
    ListRouters,
    /// Add and remove roles of an identity.
    UpdateIdentity {
        /// Its name.
        name: IdentityName,
        /// Roles to add.
        add_roles: Vec<IdentityName>,
        /// Roles to remove.
        remove_roles: Vec<IdentityName>,
    },
    /// Revoke an identity: routers refuse it and cut its connections.
    RevokeIdentity {
        /// Its name.
        name: IdentityName,
    },
    /// One identity in detail.
    ShowIdentity {
        /// Its name.
        name: IdentityName,
    },
    /// Create a router policy.
    CreateRouterPolicy(crate::policy::RouterPolicyEntry),
    /// List router policies.
    ListRouterPolicies,
    /// Delete a router policy.
    DeleteRouterPolicy {
        /// Its name.
        name: IdentityName,
    },
    /// Explain whether an identity may dial a service, and whether it may
    /// host it.
    Explain {
        /// Client identity.
        identity: IdentityName,
        /// Service name.
        service: String,
        /// A tag to check against the tag patterns, if any.
        tag: Option<String>,
    },
    /// The audit log, newest last.
    Audit {
        /// At most this many entries.
        limit: u32,
    },
    /// Change a service's address, protocol or terminator strategy.
    UpdateService {
        /// Its name.
        name: IdentityName,
        /// New private address, if changing; an empty one makes the
        /// service hosted (reached through terminators only).
        address: Option<String>,
        /// New protocol, if changing.
        protocol: Option<crate::policy::ServiceProtocol>,
        /// New terminator strategy, if changing.
        strategy: Option<crate::policy::TerminatorStrategy>,
    },
    /// One service with the terminators this controller's routers
    /// reported for it.
    ShowService {
        /// Its name.
        name: IdentityName,
    },
}

/// Answers to control requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ControlResponse {
    /// Enrollment succeeded.
    Enrolled {
        /// The new certificate (PEM).
        cert_pem: String,
        /// The CA certificate (PEM).
        ca_pem: String,
    },
    /// An admin command succeeded.
    Admin(AdminResponse),
    /// The current policy snapshot (router sync).
    Snapshot(PolicySnapshot),
    /// The routers a client may use.
    Routers(Vec<RouterInfo>),
    /// Acknowledges a request that returns nothing.
    Ack,
    /// The request failed.
    Error(ControlError),
    /// Advertised `host:port` of every live controller, the answering one
    /// first.
    Controllers(Vec<String>),
}

/// A refused or failed control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[error("{message}")]
pub struct ControlError {
    /// Category.
    pub code: ControlErrorCode,
    /// What went wrong and what to do, in plain words.
    pub message: String,
}

/// Categories of control errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ControlErrorCode {
    /// Malformed request or unsupported version.
    BadRequest,
    /// The request needs a certificate of another kind.
    Forbidden,
    /// The named object does not exist.
    NotFound,
    /// An object of that name exists already.
    AlreadyExists,
    /// The enrollment token was refused (expired, used, altered, unknown).
    TokenRejected,
    /// The controller failed; see its log.
    Internal,
    /// Too many requests of this kind from this address or identity; the
    /// message says when to try again.
    RateLimited,
    /// The identity that made the request was revoked or deleted: it can
    /// never be used again (a router that gets this stops serving).
    Revoked,
}

impl ControlErrorCode {
    /// A stable snake_case name, for metric labels and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlErrorCode::BadRequest => "bad_request",
            ControlErrorCode::Forbidden => "forbidden",
            ControlErrorCode::NotFound => "not_found",
            ControlErrorCode::AlreadyExists => "already_exists",
            ControlErrorCode::TokenRejected => "token_rejected",
            ControlErrorCode::Internal => "internal",
            ControlErrorCode::RateLimited => "rate_limited",
            ControlErrorCode::Revoked => "revoked",
        }
    }
}

/// Successful admin results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum AdminResponse {
    /// A new enrollment token.
    Token {
        /// The token text.
        token: String,
        /// Expiry, Unix seconds.
        expires_at: u64,
    },
    /// Identity listing.
    Identities(Vec<IdentityInfo>),
    /// Service listing.
    Services(Vec<ServiceEntry>),
    /// Policy listing.
    Policies(Vec<crate::policy::PolicyEntry>),
    /// Router listing.
    Routers(Vec<RouterInfo>),
    /// One identity.
    Identity(IdentityInfo),
    /// Router policy listing.
    RouterPolicies(Vec<crate::policy::RouterPolicyEntry>),
    /// A policy explanation.
    Explanation(crate::policy::Explanation),
    /// Audit log entries.
    Audit(Vec<AuditEntry>),
    /// Done, nothing to return.
    Done,
    /// One service and its terminators.
    Service(ServiceDetail),
}

/// A service as `service show` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServiceDetail {
    /// The service (secrets redacted, as listed).
    pub entry: ServiceEntry,
    /// Its terminators, as the routers with a session to the answering
    /// controller last reported them (each router's report replaces its
    /// previous one), sorted by router, hoster and instance.
    pub terminators: Vec<TerminatorInfo>,
}

/// One entry of the controller's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AuditEntry {
    /// When, Unix seconds.
    pub at: u64,
    /// Who (identity name, or `enroll`).
    pub actor: String,
    /// What, in words.
    pub action: String,
}

/// One identity as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IdentityInfo {
    /// Name.
    pub name: IdentityName,
    /// Kind.
    pub kind: Kind,
    /// Roles.
    pub roles: Vec<IdentityName>,
    /// Fingerprint of the current certificate, once enrolled.
    pub fingerprint: Option<String>,
    /// Certificate expiry (Unix seconds), once enrolled.
    pub cert_expires_at: Option<u64>,
    /// When it was revoked (Unix seconds), if it was.
    pub revoked_at: Option<u64>,
    /// Last time a router or the controller saw it (Unix seconds).
    pub last_seen: Option<u64>,
    /// Routers it is connected to now (clients), as last reported.
    pub connected_to: Vec<IdentityName>,
}

/// A router as clients and admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RouterInfo {
    /// Router identity name.
    pub name: IdentityName,
    /// Address it advertised (`host:port`).
    pub advertise: String,
    /// Whether its control session is up now.
    pub online: bool,
    /// Snapshot version it last reported enforcing.
    pub snapshot_version: Option<u64>,
    /// Services it may serve (for clients: of those they may dial).
    pub services: Vec<IdentityName>,
}
