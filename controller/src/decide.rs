//! The control API's decisions: no sockets, no clock.
//!
//! - [`route`]: what a request may do, given who the verified peer is
//!   (admin, router, client, or a host enrolling without a certificate).
//! - [`check_current`]: whether a certificate is its identity's current
//!   one at `now`.
//! - [`check_token`], [`consume_token`] and [`renew_certificate`]: the
//!   state changes of enrollment and renewal, sharing
//!   [`record_certificate`].
//! - [`check_rate`]: a rate limit at `now`, as a [`ControlError`].
//!
//! `server.rs` reads the clock once per request and passes it in, and does
//! the I/O (QUIC streams, signing, the store's commits).

use std::hash::Hash;
use std::time::{Duration, Instant};

use darkport_proto::codes::CloseCode;
use darkport_proto::identity::{IdentityName, Kind, PeerIdentity};
use darkport_proto::msg::{
    AdminRequest, ControlBody, ControlError, ControlErrorCode, ControlRequest, EnrollRequest,
    RouterReport,
};
use darkport_proto::token::{fmt_time, TokenClaims};
use darkport_proto::PROTOCOL_VERSION;
use darkport_transport::limits::{Rate, RateLimit, RetryAfter};

use crate::handlers::err;
use crate::store::{CertRecord, IdentityRecord, State};

/// Most certificates kept valid per identity (the newest and the ones it
/// replaced that have not expired yet).
pub const MAX_LIVE_CERTIFICATES: usize = 3;

/// What a request may do, with the verified peer it is done for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Enroll with a token: any peer, with or without a certificate.
    Enroll(EnrollRequest),
    /// An admin command, by the admin `actor`.
    Admin {
        /// The admin identity, named in audit entries.
        actor: IdentityName,
        /// The command (boxed: it is much the largest route).
        request: Box<AdminRequest>,
    },
    /// A router's sync session.
    RouterSync {
        /// The router.
        router: PeerIdentity,
        /// Its advertised `host:port` (checked by `check_advertise`).
        advertise: String,
    },
    /// The routers `peer` may use (any certificate).
    ListRouters {
        /// Who asks: a client sees the services it may dial.
        peer: PeerIdentity,
    },
    /// A new certificate for a client or router.
    Renew {
        /// The identity renewing.
        peer: PeerIdentity,
        /// Its certificate signing request.
        csr_der: Vec<u8>,
    },
    /// A router's periodic report.
    RouterReport {
        /// The router.
        router: PeerIdentity,
        /// What it says.
        report: RouterReport,
    },
    /// The live controllers (any certificate).
    ListControllers,
}

/// What `request` may do, given the verified `peer` (`None`: no
/// certificate). Refused with `BadRequest` for a version the request's
/// body does not have, and `Forbidden` for a peer of the wrong kind.
pub fn route(request: ControlRequest, peer: Option<&PeerIdentity>) -> Result<Route, ControlError> {
    let ControlRequest { version, body } = request;
    if !body.accepts_version(version) {
        return Err(err(
            ControlErrorCode::BadRequest,
            format!(
                "protocol version {version} is not supported (controller speaks {PROTOCOL_VERSION}); upgrade the older side"
            ),
        ));
    }
    match (body, peer) {
        (ControlBody::Enroll(e), _) => Ok(Route::Enroll(e)),
        (ControlBody::Admin(request), Some(p)) if p.kind == Kind::Admin => Ok(Route::Admin {
            actor: p.name.clone(),
            request: Box::new(request),
        }),
        (ControlBody::RouterSync { advertise }, Some(p)) if p.kind == Kind::Router => {
            Ok(Route::RouterSync {
                router: p.clone(),
                advertise,
            })
        }
        (ControlBody::ListRouters, Some(p)) => Ok(Route::ListRouters { peer: p.clone() }),
        (ControlBody::Renew { csr_der }, Some(p))
            if matches!(p.kind, Kind::Client | Kind::Router) =>
        {
            Ok(Route::Renew {
                peer: p.clone(),
                csr_der,
            })
        }
        (ControlBody::ListControllers, Some(_)) => Ok(Route::ListControllers),
        (ControlBody::RouterReport(report), Some(p)) if p.kind == Kind::Router => {
            Ok(Route::RouterReport {
                router: p.clone(),
                report,
            })
        }
        (body, _) => Err(err(
            ControlErrorCode::Forbidden,
            format!(
                "{} may not make a {} request",
                peer.map(|p| p.to_string())
                    .unwrap_or_else(|| "a peer without a certificate".into()),
                body_name(&body)
            ),
        )),
    }
}

/// A request's name, for refusals.
fn body_name(b: &ControlBody) -> &'static str {
    match b {
        ControlBody::Enroll(_) => "enroll",
        ControlBody::Admin(_) => "admin",
        ControlBody::RouterSync { .. } => "router sync",
        ControlBody::ListRouters => "list routers",
        ControlBody::Renew { .. } => "renew",
        ControlBody::RouterReport(_) => "router report",
        ControlBody::ListControllers => "list controllers",
    }
}

/// Why a certificate may not be used with the controller now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NotCurrent {
    /// The identity itself is gone for good (revoked, deleted, or of
    /// another kind): [`ControlErrorCode::Revoked`] and close code
    /// `Revoked`. Otherwise only this certificate is stale.
    pub revoked: bool,
    /// What happened and what to do.
    pub reason: String,
}

impl NotCurrent {
    /// The answer to a request made with this certificate.
    pub fn error(&self) -> ControlError {
        let code = if self.revoked {
            ControlErrorCode::Revoked
        } else {
            ControlErrorCode::Forbidden
        };
        err(code, self.reason.clone())
    }

    /// The code its connection is closed with.
    pub fn close_code(&self) -> CloseCode {
        if self.revoked {
            CloseCode::Revoked
        } else {
            CloseCode::ControlRefused
        }
    }
}

/// A certificate is usable only while it is its identity's current one
/// at `now` (Unix seconds).
pub fn check_current(state: &State, peer: &PeerIdentity, now: u64) -> Result<(), NotCurrent> {
    let (revoked, reason) = match state.identities.get(&peer.name) {
        Some(rec) if rec.kind == peer.kind && rec.holds(&peer.fingerprint, now) => return Ok(()),
        Some(rec) if rec.kind == peer.kind && rec.revoked_at.is_some() => (
            true,
            format!(
                "{} {} was revoked; ask the controller admin for a new identity",
                peer.kind, peer.name
            ),
        ),
        Some(rec) if rec.kind == peer.kind => (
            false,
            format!(
                "the certificate of {} {} is expired or replaced; use the newest identity file, or re-enroll",
                peer.kind, peer.name
            ),
        ),
        _ => (
            true,
            format!(
                "{} {} is not known to this controller (deleted?); enroll a new identity",
                peer.kind, peer.name
            ),
        ),
    };
    Err(NotCurrent { revoked, reason })
}

/// Whether the token of `claims` may enroll now: known, unused, and its
/// identity still there, of its kind and not revoked.
pub fn check_token(s: &State, claims: &TokenClaims) -> Result<(), ControlError> {
    let rejected = |m: String| err(ControlErrorCode::TokenRejected, m);
    let rec = s.tokens.get(&claims.token_id).ok_or_else(|| {
        rejected(format!(
            "enrollment token for {} is unknown to this controller; create a new one with darkport-controller identity create",
            claims.identity
        ))
    })?;
    if let Some(at) = rec.consumed_at {
        return Err(rejected(format!(
            "enrollment token for {} was already used at {}; tokens work once; ask the controller admin for a new identity and token",
            claims.identity,
            fmt_time(at)
        )));
    }
    match s.identities.get(&claims.identity) {
        Some(i) if i.kind == claims.kind && i.revoked_at.is_none() => Ok(()),
        _ => Err(rejected(format!(
            "identity {} was deleted or revoked after the token was made",
            claims.identity
        ))),
    }
}

/// Enrollment's state change at `now`: checks the token of `claims` again
/// and consumes it in the same update that records the certificate
/// `fingerprint`, so a second use can never succeed, even concurrently.
pub fn consume_token(
    s: &mut State,
    claims: &TokenClaims,
    fingerprint: &str,
    now: u64,
    ttl: Duration,
) -> Result<(), ControlError> {
    check_token(s, claims)?;
    if let Some(rec) = s.tokens.get_mut(&claims.token_id) {
        rec.consumed_at = Some(now);
    }
    let Some(ident) = s.identities.get_mut(&claims.identity) else {
        return Err(err(
            ControlErrorCode::Internal,
            "identity vanished during enrollment",
        ));
    };
    record_certificate(ident, fingerprint, now, ttl);
    Ok(())
}

/// Renewal's state change at `now`: `peer` must still hold its current
/// certificate; the new one, `fingerprint`, is recorded.
pub fn renew_certificate(
    s: &mut State,
    peer: &PeerIdentity,
    fingerprint: &str,
    now: u64,
    ttl: Duration,
) -> Result<(), ControlError> {
    let ident = s
        .identities
        .get_mut(&peer.name)
        .filter(|i| i.kind == peer.kind && i.holds(&peer.fingerprint, now))
        .ok_or_else(|| {
            err(
                ControlErrorCode::Forbidden,
                format!("{peer} is no longer current; re-enroll"),
            )
        })?;
    record_certificate(ident, fingerprint, now, ttl);
    Ok(())
}

/// Records a certificate issued at `now` for `ttl`, and prunes the
/// identity's older ones: enrollment and renewal both end here.
pub fn record_certificate(ident: &mut IdentityRecord, fingerprint: &str, now: u64, ttl: Duration) {
    ident.certificates.push(CertRecord {
        fingerprint: fingerprint.into(),
        issued_at: now,
        expires_at: now + ttl.as_secs(),
    });
    prune_certificates(ident, now);
}

/// Keeps the newest certificate and older ones not yet expired, at most
/// [`MAX_LIVE_CERTIFICATES`] in all (renewal spam cannot grow snapshots).
fn prune_certificates(ident: &mut IdentityRecord, now: u64) {
    let excess = ident
        .certificates
        .len()
        .saturating_sub(MAX_LIVE_CERTIFICATES);
    ident.certificates.drain(..excess);
    let newest = ident.certificates.len().saturating_sub(1);
    let mut i = 0;
    ident.certificates.retain(|c| {
        let keep = i == newest || c.expires_at > now;
        i += 1;
        keep
    });
}

/// Spends one of `key`'s requests under `limit` at `now`; refused with
/// `RateLimited`, naming `what` is limited and when to try again.
pub fn check_rate<K: Hash + Eq + Clone>(
    limit: &RateLimit<K>,
    key: &K,
    now: Instant,
    what: &str,
) -> Result<(), ControlError> {
    limit
        .check(key, now)
        .map_err(|wait| rate_limited(what, limit.rate(), wait))
}

/// The answer to a request over its rate limit: what is limited, how,
/// and when to try again.
fn rate_limited(what: &str, rate: Rate, RetryAfter(wait): RetryAfter) -> ControlError {
    err(
        ControlErrorCode::RateLimited,
        format!(
            "too many {what}: at most {} at once, then one every {} ms; try again in {} ms",
            rate.burst,
            rate.every.as_millis(),
            wait.as_millis().max(1)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{name, Fixture, T0};
    use crate::store::{StoreError, TokenRecord};
    use darkport_proto::msg::AdminRequest;
    use std::path::PathBuf;

    const TTL: Duration = Duration::from_secs(3600);

    fn peer(kind: Kind, n: &str, fingerprint: &str) -> PeerIdentity {
        PeerIdentity {
            kind,
            name: name(n),
            fingerprint: fingerprint.into(),
        }
    }

    fn request(body: ControlBody) -> ControlRequest {
        ControlRequest {
            version: PROTOCOL_VERSION,
            body,
        }
    }

    fn record(n: &str, kind: Kind, certs: &[(&str, u64)]) -> IdentityRecord {
        IdentityRecord {
            name: name(n),
            kind,
            roles: vec![],
            certificates: certs
                .iter()
                .map(|(fp, expires_at)| CertRecord {
                    fingerprint: (*fp).into(),
                    issued_at: 0,
                    expires_at: *expires_at,
                })
                .collect(),
            created_at: 0,
            revoked_at: None,
            last_seen: None,
        }
    }

    /// `app` (client, certificate `aa` until T0 + 100), `r1` (router,
    /// `cc`), `root` (admin, `dd`), `gone` (client, revoked), and an unused
    /// token `t1` for `app`.
    fn state() -> State {
        let mut s = State::default();
        for rec in [
            record("app", Kind::Client, &[("aa", T0 + 100)]),
            record("r1", Kind::Router, &[("cc", T0 + 100)]),
            record("root", Kind::Admin, &[("dd", T0 + 100)]),
            IdentityRecord {
                revoked_at: Some(T0 - 1),
                ..record("gone", Kind::Client, &[("ee", T0 + 100)])
            },
        ] {
            s.identities.insert(rec.name.clone(), rec);
        }
        s.tokens.insert(
            "t1".into(),
            TokenRecord {
                identity: name("app"),
                expires_at: T0 + 100,
                consumed_at: None,
            },
        );
        s
    }

    fn claims(token_id: &str, identity: &str) -> TokenClaims {
        TokenClaims {
            token_id: token_id.into(),
            identity: name(identity),
            kind: Kind::Client,
            controller: "controller.test:7000".into(),
            ca_fingerprint: "ab12".into(),
            expires_at: T0 + 100,
        }
    }

    fn route_name(r: &Route) -> &'static str {
        match r {
            Route::Enroll(_) => "enroll",
            Route::Admin { .. } => "admin",
            Route::RouterSync { .. } => "sync",
            Route::ListRouters { .. } => "list routers",
            Route::Renew { .. } => "renew",
            Route::RouterReport { .. } => "report",
            Route::ListControllers => "list controllers",
        }
    }

    /// Which peer may make which request: one row per (body, peer kind).
    #[test]
    fn route_table() {
        let admin = peer(Kind::Admin, "root", "dd");
        let router = peer(Kind::Router, "r1", "cc");
        let client = peer(Kind::Client, "app", "aa");
        let controller = peer(Kind::Controller, "c1", "ff");
        let enroll = || {
            ControlBody::Enroll(EnrollRequest {
                token: "t".into(),
                csr_der: vec![1],
            })
        };
        let admin_req = || ControlBody::Admin(AdminRequest::ListServices);
        let sync = || ControlBody::RouterSync {
            advertise: "r1.test:443".into(),
        };
        let renew = || ControlBody::Renew { csr_der: vec![1] };
        let report = || {
            ControlBody::RouterReport(RouterReport {
                snapshot_version: 1,
                clients: vec![],
                terminators: Default::default(),
            })
        };
        let routed = |body: ControlBody, p: Option<&PeerIdentity>| match route(request(body), p) {
            Ok(r) => Ok(route_name(&r)),
            Err(e) => Err(e.code),
        };
        let forbidden = Err(ControlErrorCode::Forbidden);
        let list = || ControlBody::ListRouters;
        let controllers = || ControlBody::ListControllers;
        let rows: Vec<(&str, ControlBody, Option<&PeerIdentity>, Result<&str, _>)> = vec![
            ("enroll without a certificate", enroll(), None, Ok("enroll")),
            ("enroll with one", enroll(), Some(&client), Ok("enroll")),
            ("admin by an admin", admin_req(), Some(&admin), Ok("admin")),
            ("admin by a client", admin_req(), Some(&client), forbidden),
            ("admin by a router", admin_req(), Some(&router), forbidden),
            ("admin without a certificate", admin_req(), None, forbidden),
            ("sync by a router", sync(), Some(&router), Ok("sync")),
            ("sync by a client", sync(), Some(&client), forbidden),
            ("sync by an admin", sync(), Some(&admin), forbidden),
            (
                "list routers by a client",
                list(),
                Some(&client),
                Ok("list routers"),
            ),
            (
                "list routers by an admin",
                list(),
                Some(&admin),
                Ok("list routers"),
            ),
            (
                "list routers without a certificate",
                list(),
                None,
                forbidden,
            ),
            ("renew a client", renew(), Some(&client), Ok("renew")),
            ("renew a router", renew(), Some(&router), Ok("renew")),
            ("renew an admin", renew(), Some(&admin), forbidden),
            ("renew a controller", renew(), Some(&controller), forbidden),
            ("renew without a certificate", renew(), None, forbidden),
            ("report by a router", report(), Some(&router), Ok("report")),
            ("report by a client", report(), Some(&client), forbidden),
            (
                "list controllers",
                controllers(),
                Some(&controller),
                Ok("list controllers"),
            ),
            (
                "list controllers without a certificate",
                controllers(),
                None,
                forbidden,
            ),
        ];
        for (what, body, p, want) in rows {
            assert_eq!(routed(body, p), want, "{what}");
        }
        // The routes carry who asks.
        assert_eq!(
            route(request(admin_req()), Some(&admin)),
            Ok(Route::Admin {
                actor: name("root"),
                request: Box::new(AdminRequest::ListServices)
            })
        );
        assert_eq!(
            route(request(renew()), Some(&router)),
            Ok(Route::Renew {
                peer: router.clone(),
                csr_der: vec![1]
            })
        );
        let e = route(request(sync()), None).expect_err("no certificate");
        assert_eq!(
            e.message,
            "a peer without a certificate may not make a router sync request"
        );
    }

    #[test]
    fn route_refuses_a_version_the_body_does_not_have() {
        for version in [0, PROTOCOL_VERSION + 1] {
            let req = ControlRequest {
                version,
                body: ControlBody::ListRouters,
            };
            let e = route(req, None).expect_err("version");
            assert_eq!(e.code, ControlErrorCode::BadRequest);
            assert!(
                e.message.contains("upgrade the older side"),
                "{}",
                e.message
            );
        }
    }

    /// The version is checked before the peer: an old admin tool hears
    /// about its version, not about its certificate.
    #[test]
    fn route_checks_the_version_first() {
        let req = ControlRequest {
            version: 0,
            body: ControlBody::Admin(AdminRequest::ListServices),
        };
        assert_eq!(
            route(req, None).map_err(|e| e.code),
            Err(ControlErrorCode::BadRequest)
        );
    }

    /// Whether the identity is gone for good, and the close code.
    type Refusal = Option<(bool, CloseCode)>;

    #[test]
    fn check_current_table() {
        let s = state();
        let rows: [(&str, PeerIdentity, u64, Refusal); 6] = [
            ("current", peer(Kind::Client, "app", "aa"), T0, None),
            (
                "expired at now",
                peer(Kind::Client, "app", "aa"),
                T0 + 100,
                Some((false, CloseCode::ControlRefused)),
            ),
            (
                "replaced",
                peer(Kind::Client, "app", "zz"),
                T0,
                Some((false, CloseCode::ControlRefused)),
            ),
            (
                "revoked",
                peer(Kind::Client, "gone", "ee"),
                T0,
                Some((true, CloseCode::Revoked)),
            ),
            (
                "unknown",
                peer(Kind::Client, "ghost", "aa"),
                T0,
                Some((true, CloseCode::Revoked)),
            ),
            (
                "another kind",
                peer(Kind::Router, "app", "aa"),
                T0,
                Some((true, CloseCode::Revoked)),
            ),
        ];
        for (what, p, now, want) in rows {
            let got = check_current(&s, &p, now)
                .err()
                .map(|e| (e.revoked, e.close_code()));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn record_certificate_keeps_the_newest_and_the_unexpired_at_most_three() {
        let mut ident = record("app", Kind::Client, &[("a", T0 - 1), ("b", T0 + 10)]);
        record_certificate(&mut ident, "c", T0, TTL);
        let fps = |i: &IdentityRecord| -> Vec<String> {
            i.certificates
                .iter()
                .map(|c| c.fingerprint.clone())
                .collect()
        };
        assert_eq!(fps(&ident), ["b", "c"], "the expired one goes");
        assert_eq!(ident.certificates[1].issued_at, T0);
        assert_eq!(ident.certificates[1].expires_at, T0 + 3600);
        for fp in ["d", "e"] {
            record_certificate(&mut ident, fp, T0, TTL);
        }
        assert_eq!(fps(&ident), ["c", "d", "e"], "at most three");
        // The newest stays even when already expired (a zero TTL).
        record_certificate(&mut ident, "f", T0, Duration::ZERO);
        assert_eq!(fps(&ident), ["d", "e", "f"]);
    }

    #[test]
    fn a_token_is_consumed_once_with_its_certificate() {
        let mut s = state();
        consume_token(&mut s, &claims("t1", "app"), "new", T0, TTL).expect("first use");
        assert_eq!(s.tokens["t1"].consumed_at, Some(T0));
        assert!(s.identities[&name("app")].holds("new", T0));
        let again = consume_token(&mut s, &claims("t1", "app"), "other", T0 + 1, TTL);
        let e = again.expect_err("second use");
        assert_eq!(e.code, ControlErrorCode::TokenRejected);
        assert!(e.message.contains("already used"), "{}", e.message);
        assert!(!s.identities[&name("app")].holds("other", T0 + 1));
    }

    #[test]
    fn renewal_needs_the_current_certificate() {
        let mut s = state();
        renew_certificate(&mut s, &peer(Kind::Client, "app", "aa"), "new", T0, TTL)
            .expect("current");
        assert!(s.identities[&name("app")].holds("new", T0));
        let e = renew_certificate(&mut s, &peer(Kind::Client, "gone", "ee"), "x", T0, TTL)
            .expect_err("revoked");
        assert_eq!(e.code, ControlErrorCode::Forbidden);
    }

    /// Every [`ControlErrorCode`], one row each, reached through a pure
    /// decision (the admin handlers run on the in-memory store at a
    /// virtual time).
    #[test]
    fn every_control_error_code_is_reached_by_a_decision() {
        let s = state();
        let admin_fixture = Fixture::new();
        let limit = RateLimit::new(
            Rate {
                burst: 1,
                every: Duration::from_secs(1),
            },
            16,
        );
        let t = Instant::now();
        let client = peer(Kind::Client, "app", "aa");
        let service = || {
            AdminRequest::CreateService(darkport_proto::policy::ServiceEntry {
                name: name("db"),
                address: "10.0.0.1:5432".into(),
                roles: vec![],
                protocol: Default::default(),
                strategy: Default::default(),
            })
        };
        let rows: Vec<(ControlErrorCode, Result<(), ControlError>)> = vec![
            (
                ControlErrorCode::BadRequest,
                route(
                    ControlRequest {
                        version: 0,
                        body: ControlBody::ListRouters,
                    },
                    Some(&client),
                )
                .map(drop),
            ),
            (
                ControlErrorCode::Forbidden,
                route(
                    request(ControlBody::Admin(AdminRequest::ListServices)),
                    Some(&client),
                )
                .map(drop),
            ),
            (
                ControlErrorCode::NotFound,
                admin_fixture
                    .run(
                        T0,
                        AdminRequest::ShowIdentity {
                            name: name("ghost"),
                        },
                    )
                    .map(drop),
            ),
            (
                ControlErrorCode::AlreadyExists,
                admin_fixture
                    .run(T0, service())
                    .and_then(|_| admin_fixture.run(T0, service()))
                    .map(drop),
            ),
            (
                ControlErrorCode::TokenRejected,
                check_token(&s, &claims("unknown", "app")),
            ),
            (
                ControlErrorCode::Internal,
                Err(ControlError::from(StoreError::Db {
                    path: PathBuf::from("state.db"),
                    reason: "disk full".into(),
                })),
            ),
            (
                ControlErrorCode::RateLimited,
                check_rate(&limit, &1u8, t, "tries")
                    .and_then(|()| check_rate(&limit, &1u8, t, "tries")),
            ),
            (
                ControlErrorCode::Revoked,
                check_current(&s, &peer(Kind::Client, "gone", "ee"), T0).map_err(|e| e.error()),
            ),
        ];
        for (code, got) in &rows {
            assert_eq!(got.as_ref().map_err(|e| e.code), Err(*code), "{code:?}");
        }
        for code in all_codes() {
            assert!(
                rows.iter().any(|(c, _)| *c == code),
                "no row reaches {code:?}"
            );
        }
    }

    /// Every code; the match fails to compile when one is added, so the
    /// table above must be looked at again.
    fn all_codes() -> [ControlErrorCode; 8] {
        let all = [
            ControlErrorCode::BadRequest,
            ControlErrorCode::Forbidden,
            ControlErrorCode::NotFound,
            ControlErrorCode::AlreadyExists,
            ControlErrorCode::TokenRejected,
            ControlErrorCode::Internal,
            ControlErrorCode::RateLimited,
            ControlErrorCode::Revoked,
        ];
        for c in all {
            match c {
                ControlErrorCode::BadRequest
                | ControlErrorCode::Forbidden
                | ControlErrorCode::NotFound
                | ControlErrorCode::AlreadyExists
                | ControlErrorCode::TokenRejected
                | ControlErrorCode::Internal
                | ControlErrorCode::RateLimited
                | ControlErrorCode::Revoked => {}
            }
        }
        all
    }

    #[test]
    fn rate_limits_say_when_to_try_again() {
        let limit = RateLimit::new(
            Rate {
                burst: 2,
                every: Duration::from_millis(200),
            },
            16,
        );
        let t = Instant::now();
        for _ in 0..2 {
            check_rate(&limit, &"k", t, "tries").expect("within the burst");
        }
        let e = check_rate(&limit, &"k", t, "tries").expect_err("over");
        assert_eq!(
            e.message,
            "too many tries: at most 2 at once, then one every 200 ms; try again in 200 ms"
        );
        check_rate(&limit, &"k", t + Duration::from_millis(200), "tries").expect("earned back");
    }
}
