//! The control API.
//!
//! One QUIC endpoint (ALPN `darkport-ctl/1`). Client certificates are
//! optional at the TLS layer so that enrolling hosts, which have none yet,
//! can connect; every request other than enrollment then requires a
//! certificate of the right kind whose fingerprint is the identity's
//! current one.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use darkport_proto::codec::{read_frame, write_frame, MAX_CONTROL_FRAME};
use darkport_proto::identity::{IdentityName, Kind, PeerIdentity};
use darkport_proto::msg::{
    AdminRequest, AdminResponse, ControlBody, ControlError, ControlErrorCode, ControlRequest,
    ControlResponse, EnrollRequest, IdentityInfo, RouterInfo,
};
use darkport_proto::token::{fmt_time, SignedToken, TokenClaims, TokenKey};
use darkport_proto::{ProtoError, ALPN_CONTROL, PROTOCOL_VERSION};
use darkport_transport::identity::Identity;
use darkport_transport::tls::{self, ClientAuth};
use darkport_transport::unix_now;

use crate::ca::Ca;
use crate::datadir::{Config, DataDir, DataDirError};
use crate::store::{IdentityRecord, RouterRecord, Store, StoreError, TokenRecord};

/// Largest request from a peer without a certificate (enrollment).
const MAX_UNAUTHENTICATED_FRAME: usize = 64 * 1024;

/// Time allowed for a request to arrive once a stream is open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest enrollment token lifetime an admin may ask for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data dir is missing or broken.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The controller identity is unusable.
    #[error(transparent)]
    Identity(#[from] darkport_transport::identity::IdentityError),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The socket failed.
    #[error("control endpoint: {0}")]
    Io(#[from] std::io::Error),
}

struct Ctx {
    store: Store,
    ca: Ca,
    ca_fingerprint: String,
    token_key: TokenKey,
    config: Config,
    /// Routers with a live sync session, by name, with a session id so an
    /// old session ending does not mark a newer one offline.
    online: DashMap<IdentityName, u64>,
}

fn err(code: ControlErrorCode, message: impl Into<String>) -> ControlError {
    ControlError {
        code,
        message: message.into(),
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        warn!("state update failed: {e}");
        err(
            ControlErrorCode::Internal,
            format!("controller storage failed: {e}"),
        )
    }
}

/// Runs the controller on an already-bound UDP socket until `shutdown`
/// completes.
pub async fn run(
    dir: DataDir,
    socket: UdpSocket,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let config = dir.load_config()?;
    let ca = dir.load_ca()?;
    let ca_fingerprint = crate::datadir::pem_fingerprint(&ca.cert_pem)?;
    let identity = Identity::load(&dir.controller_identity())?;
    let store = Store::open(&dir.state()).map_err(DataDirError::from)?;
    let ctx = Arc::new(Ctx {
        store,
        ca,
        ca_fingerprint,
        token_key: dir.load_token_key()?,
        config,
        online: DashMap::new(),
    });
    let mut server_config = tls::server_config(&identity, ClientAuth::Optional, ALPN_CONTROL)?;
    server_config.transport_config(darkport_transport::endpoint::transport_config_with_streams(
        darkport_transport::endpoint::MAX_CONTROL_STREAMS,
    ));
    let endpoint = darkport_transport::endpoint::server(socket, server_config)?;
    info!(
        addr = %endpoint.local_addr()?,
        advertise = %ctx.config.advertise,
        "controller listening"
    );
    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tasks.spawn(handle_connection(ctx.clone(), incoming));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    endpoint.close(0u32.into(), b"controller shutting down");
    tasks.shutdown().await;
    Ok(())
}

/// Binds the control socket for `run` (UDP, large buffers).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    darkport_transport::endpoint::bind_udp(addr)
}

async fn handle_connection(ctx: Arc<Ctx>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(darkport_transport::endpoint::HANDSHAKE_TIMEOUT, incoming)
        .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!(%remote, "control handshake failed: {e}");
            return;
        }
        Err(_) => {
            info!(%remote, "control handshake timed out");
            return;
        }
    };
    let peer = if conn.peer_identity().is_some() {
        match tls::peer_identity(&conn) {
            Ok(p) => match check_current(&ctx, &p) {
                Ok(()) => Some(p),
                Err(reason) => {
                    info!(%remote, peer = %p, "refusing control connection: {reason}");
                    conn.close(2u32.into(), reason.as_bytes());
                    return;
                }
            },
            Err(e) => {
                info!(%remote, "refusing control connection: {e}");
                conn.close(2u32.into(), e.to_string().as_bytes());
                return;
            }
        }
    } else {
        None
    };
    debug!(%remote, peer = ?peer, "control connection");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(handle_stream(ctx.clone(), conn.clone(), peer.clone(), send, recv));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// A certificate is usable only while it is its identity's current one.
fn check_current(ctx: &Ctx, peer: &PeerIdentity) -> Result<(), String> {
    let state = ctx.store.read();
    match state.identities.get(&peer.name) {
        Some(rec) if rec.kind == peer.kind && rec.fingerprint.as_deref() == Some(&peer.fingerprint) => Ok(()),
        Some(rec) if rec.kind == peer.kind => Err(format!(
            "the certificate of {} {} is not its current one (re-enrolled?); use the newest identity file",
            peer.kind, peer.name
        )),
        _ => Err(format!(
            "{} {} is not known to this controller (deleted?); enroll a new identity",
            peer.kind, peer.name
        )),
    }
}

async fn handle_stream(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    peer: Option<PeerIdentity>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = if peer.is_some() {
        MAX_CONTROL_FRAME
    } else {
        MAX_UNAUTHENTICATED_FRAME
    };
    let req: Result<ControlRequest, ProtoError> =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut recv, max)).await {
            Ok(r) => r,
            Err(_) => return,
        };
    let response = match req {
        Err(e) => {
            info!(remote = %conn.remote_address(), "bad control request: {e}");
            ControlResponse::Error(err(ControlErrorCode::BadRequest, e.to_string()))
        }
        Ok(req) if req.version != PROTOCOL_VERSION => ControlResponse::Error(err(
            ControlErrorCode::BadRequest,
            format!(
                "protocol version {} is not supported (controller speaks {PROTOCOL_VERSION}); upgrade the older side",
                req.version
            ),
        )),
        Ok(req) => match (req.body, &peer) {
            (ControlBody::Enroll(e), _) => respond(enroll(&ctx, e), |(cert_pem, ca_pem)| ControlResponse::Enrolled { cert_pem, ca_pem }),
            (ControlBody::Admin(a), Some(p)) if p.kind == Kind::Admin => {
                info!(admin = %p.name, request = ?a, "admin request");
                respond(admin(&ctx, a), ControlResponse::Admin)
            }
            (ControlBody::RouterSync { advertise }, Some(p)) if p.kind == Kind::Router => {
                router_sync(&ctx, p, advertise, &mut send).await;
                return;
            }
            (ControlBody::ListRouters, Some(_)) => ControlResponse::Routers(list_routers(&ctx)),
            (body, _) => ControlResponse::Error(err(
                ControlErrorCode::Forbidden,
                format!(
                    "{} may not make a {} request",
                    peer.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "a peer without a certificate".into()),
                    body_name(&body)
                ),
            )),
        },
    };
    if let Err(e) = write_frame(&mut send, &response, MAX_CONTROL_FRAME).await {
        debug!("control response not delivered: {e}");
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

fn respond<T>(
    r: Result<T, ControlError>,
    ok: impl FnOnce(T) -> ControlResponse,
) -> ControlResponse {
    match r {
        Ok(v) => ok(v),
        Err(e) => ControlResponse::Error(e),
    }
}

fn body_name(b: &ControlBody) -> &'static str {
    match b {
        ControlBody::Enroll(_) => "enroll",
        ControlBody::Admin(_) => "admin",
        ControlBody::RouterSync { .. } => "router sync",
        ControlBody::ListRouters => "list routers",
    }
}

fn enroll(ctx: &Ctx, req: EnrollRequest) -> Result<(String, String), ControlError> {
    let rejected = |m: String| err(ControlErrorCode::TokenRejected, m);
    let token = SignedToken::parse(&req.token).map_err(|e| rejected(e.to_string()))?;
    let claims = token
        .verify(&ctx.token_key, unix_now())
        .map_err(|e| rejected(e.to_string()))?
        .clone();
    if claims.ca_fingerprint != ctx.ca_fingerprint {
        return Err(rejected(
            "the token pins another CA; it was issued by another controller".into(),
        ));
    }
    let ttl = Duration::from_secs(ctx.config.cert_ttl_secs);
    let (cert_pem, der) = ctx
        .ca
        .sign_csr(&req.csr_der, claims.kind, &claims.identity, ttl)
        .map_err(|e| err(ControlErrorCode::BadRequest, e.to_string()))?;
    let fingerprint = darkport_proto::identity::fingerprint(&der);
    let now = unix_now();
    // Check and consume the token in the same state update that records
    // the certificate: a second use can never succeed, even concurrently.
    ctx.store.update(true, |s| {
        let rec = s.tokens.get_mut(&claims.token_id).ok_or_else(|| {
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
        rec.consumed_at = Some(now);
        let ident = s
            .identities
            .get_mut(&claims.identity)
            .filter(|i| i.kind == claims.kind)
            .ok_or_else(|| rejected(format!("identity {} was deleted after the token was made", claims.identity)))?;
        ident.fingerprint = Some(fingerprint.clone());
        ident.cert_expires_at = Some(now + ttl.as_secs());
        Ok(())
    })?;
    info!(identity = %claims.identity, kind = %claims.kind, %fingerprint, "enrolled");
    Ok((cert_pem, ctx.ca.cert_pem.clone()))
}

fn not_found(what: &str, name: &IdentityName) -> ControlError {
    err(
        ControlErrorCode::NotFound,
        format!("no {what} named {name}"),
    )
}

fn exists(what: &str, name: &IdentityName) -> ControlError {
    err(
        ControlErrorCode::AlreadyExists,
        format!("a {what} named {name} exists already"),
    )
}

fn admin(ctx: &Ctx, req: AdminRequest) -> Result<AdminResponse, ControlError> {
    let bad = |m: String| err(ControlErrorCode::BadRequest, m);
    match req {
        AdminRequest::CreateIdentity {
            name,
            kind,
            roles,
            token_ttl_secs,
        } => {
            if !matches!(kind, Kind::Client | Kind::Router) {
                return Err(bad(format!(
                    "identities are clients or routers, not {kind}"
                )));
            }
            if token_ttl_secs == 0 || token_ttl_secs > MAX_TOKEN_TTL.as_secs() {
                return Err(bad(format!(
                    "token lifetime must be between 1 s and {} days",
                    MAX_TOKEN_TTL.as_secs() / 86400
                )));
            }
            let mut id = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| err(ControlErrorCode::Internal, "random generator failed"))?;
            let now = unix_now();
            let claims = TokenClaims {
                token_id: hex::encode(id),
                identity: name.clone(),
                kind,
                controller: ctx.config.advertise.clone(),
                ca_fingerprint: ctx.ca_fingerprint.clone(),
                expires_at: now + token_ttl_secs,
            };
            let token = SignedToken::sign(claims.clone(), &ctx.token_key)
                .and_then(|t| t.encode())
                .map_err(|e| err(ControlErrorCode::Internal, e.to_string()))?;
            ctx.store.update(true, |s| {
                if s.identities.contains_key(&name) {
                    return Err(exists("identity", &name));
                }
                s.identities.insert(
                    name.clone(),
                    IdentityRecord {
                        name: name.clone(),
                        kind,
                        roles,
                        fingerprint: None,
                        cert_expires_at: None,
                        created_at: now,
                    },
                );
                s.tokens.insert(
                    claims.token_id.clone(),
                    TokenRecord {
                        identity: name.clone(),
                        expires_at: claims.expires_at,
                        consumed_at: None,
                    },
                );
                Ok(())
            })?;
            Ok(AdminResponse::Token {
                token,
                expires_at: claims.expires_at,
            })
        }
        AdminRequest::ListIdentities => Ok(AdminResponse::Identities(
            ctx.store
                .read()
                .identities
                .values()
                .map(|i| IdentityInfo {
                    name: i.name.clone(),
                    kind: i.kind,
                    roles: i.roles.clone(),
                    fingerprint: i.fingerprint.clone(),
                    cert_expires_at: i.cert_expires_at,
                })
                .collect(),
        )),
        AdminRequest::DeleteIdentity { name } => ctx.store.update(true, |s| {
            match s.identities.get(&name) {
                None => return Err(not_found("identity", &name)),
                Some(i) if i.kind == Kind::Admin => {
                    return Err(bad("the admin identity cannot be deleted".into()))
                }
                Some(_) => {}
            }
            s.identities.remove(&name);
            s.routers.remove(&name);
            // Unused tokens must not enroll a later identity of the same name.
            s.tokens.retain(|_, t| t.identity != name);
            Ok(AdminResponse::Done)
        }),
        AdminRequest::CreateService(svc) => {
            if darkport_transport::endpoint::parse_host_port(&svc.address).is_none() {
                return Err(bad(format!(
                    "service address {:?} is not HOST:PORT",
                    svc.address
                )));
            }
            ctx.store.update(true, |s| {
                if s.services.contains_key(&svc.name) {
                    return Err(exists("service", &svc.name));
                }
                s.services.insert(svc.name.clone(), svc);
                Ok(AdminResponse::Done)
            })
        }
        AdminRequest::ListServices => Ok(AdminResponse::Services(
            ctx.store.read().services.values().cloned().collect(),
        )),
        AdminRequest::DeleteService { name } => ctx.store.update(true, |s| {
            s.services
                .remove(&name)
                .ok_or_else(|| not_found("service", &name))?;
            Ok(AdminResponse::Done)
        }),
        AdminRequest::CreatePolicy {
            name,
            services,
            identities,
        } => {
            if services.is_empty() || identities.is_empty() {
                return Err(bad(
                    "a policy needs at least one --service and one --identity selector".into(),
                ));
            }
            ctx.store.update(true, |s| {
                if s.policies.contains_key(&name) {
                    return Err(exists("policy", &name));
                }
                s.policies.insert(
                    name.clone(),
                    darkport_proto::policy::PolicyEntry {
                        name: name.clone(),
                        services,
                        identities,
                    },
                );
                Ok(AdminResponse::Done)
            })
        }
        AdminRequest::ListPolicies => Ok(AdminResponse::Policies(
            ctx.store.read().policies.values().cloned().collect(),
        )),
        AdminRequest::DeletePolicy { name } => ctx.store.update(true, |s| {
            s.policies
                .remove(&name)
                .ok_or_else(|| not_found("policy", &name))?;
            Ok(AdminResponse::Done)
        }),
        AdminRequest::ListRouters => Ok(AdminResponse::Routers(list_routers(ctx))),
    }
}

fn list_routers(ctx: &Ctx) -> Vec<RouterInfo> {
    let state = ctx.store.read();
    state
        .routers
        .iter()
        .filter(|(name, _)| {
            state
                .identities
                .get(*name)
                .is_some_and(|i| i.kind == Kind::Router)
        })
        .map(|(name, r)| RouterInfo {
            name: name.clone(),
            advertise: r.advertise.clone(),
            online: ctx.online.contains_key(name),
        })
        .collect()
}

async fn router_sync(
    ctx: &Ctx,
    peer: &PeerIdentity,
    advertise: String,
    send: &mut quinn::SendStream,
) {
    if darkport_transport::endpoint::parse_host_port(&advertise).is_none() {
        let e = err(
            ControlErrorCode::BadRequest,
            format!("advertise address {advertise:?} is not HOST:PORT"),
        );
        let _ = write_frame(send, &ControlResponse::Error(e), MAX_CONTROL_FRAME).await;
        let _ = send.finish();
        return;
    }
    let recorded = ctx.store.update(false, |s| {
        s.routers.insert(
            peer.name.clone(),
            RouterRecord {
                advertise: advertise.clone(),
                last_seen: unix_now(),
            },
        );
        Ok::<_, ControlError>(())
    });
    if recorded.is_err() {
        return;
    }
    let session = rand_session();
    ctx.online.insert(peer.name.clone(), session);
    info!(router = %peer.name, %advertise, "router connected");
    let mut rx = ctx.store.subscribe();
    loop {
        let snapshot = rx.borrow_and_update().clone();
        // A router deleted (or re-enrolled) meanwhile loses its session.
        if let Err(reason) = check_current(ctx, peer) {
            info!(router = %peer.name, "ending router session: {reason}");
            break;
        }
        let frame = ControlResponse::Snapshot((*snapshot).clone());
        if let Err(e) = write_frame(send, &frame, MAX_CONTROL_FRAME).await {
            debug!(router = %peer.name, "snapshot not delivered: {e}");
            break;
        }
        debug!(router = %peer.name, version = snapshot.version, "snapshot sent");
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = send.stopped() => break,
        }
    }
    ctx.online.remove_if(&peer.name, |_, s| *s == session);
    info!(router = %peer.name, "router disconnected");
}

fn rand_session() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}
