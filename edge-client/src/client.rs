//! The client: router discovery and the connection it keeps.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use darkport_proto::codec::{read_frame, write_frame, MAX_DIAL_FRAME};
use darkport_proto::identity::Kind;
use darkport_proto::msg::{ControlBody, ControlResponse, DialRequest, DialResponse};
use darkport_proto::{ProtoError, ALPN_CONTROL, ALPN_DATA};
use darkport_transport::endpoint::HANDSHAKE_TIMEOUT;
use darkport_transport::identity::Identity;
use darkport_transport::tls::{client_config, Trust};
use darkport_transport::{control, describe_connection_error};

use crate::{DialError, DialStream};

/// Time the router has to answer a dial.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Options for [`Client`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Routers to use (`host:port`), in order of preference. Empty: ask the
    /// controller.
    pub routers: Vec<String>,
}

/// A router connection and the address it went to.
#[derive(Debug, Clone)]
struct Live {
    router: String,
    conn: quinn::Connection,
}

/// Dials services through routers; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    identity: Identity,
    options: ClientOptions,
    endpoint: quinn::Endpoint,
    data_config: quinn::ClientConfig,
    /// The current router connection, if any. Held only to clone or swap.
    live: Mutex<Option<Live>>,
    /// Single-flight gate so a burst of dials opens one connection, not
    /// one each. Held across the connect on purpose; never on the data path.
    connecting: tokio::sync::Mutex<()>,
}

impl Client {
    /// A client for `identity`. Must be called inside a Tokio runtime.
    pub fn new(identity: Identity, options: ClientOptions) -> Result<Client, DialError> {
        if identity.kind != Kind::Client {
            warn!(identity = %identity.name, kind = %identity.kind, "dialing with a non-client identity; routers will refuse it");
        }
        let data_config = client_config(
            Some(&identity),
            Trust::Ca(identity.ca.clone()),
            Kind::Router,
            ALPN_DATA,
        )?;
        let endpoint = darkport_transport::endpoint::client(None)?;
        Ok(Client {
            identity,
            options,
            endpoint,
            data_config,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Loads an identity file and makes a client.
    pub fn from_identity_file(path: &Path, options: ClientOptions) -> Result<Client, DialError> {
        Client::new(Identity::load(path)?, options)
    }

    /// The identity in use.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Dials `service`. Retries once on a fresh connection if the current
    /// router connection turns out to be dead.
    pub async fn dial(&self, service: &str) -> Result<DialStream, DialError> {
        let live = self.connection().await?;
        match self.dial_on(&live, service).await {
            Err(DialError::Router { .. }) if live.conn.close_reason().is_some() => {
                self.forget(&live);
                let live = self.connection().await?;
                self.dial_on(&live, service).await
            }
            other => other,
        }
    }

    async fn dial_on(&self, live: &Live, service: &str) -> Result<DialStream, DialError> {
        let lost = |reason: String| DialError::Router {
            router: live.router.clone(),
            reason,
        };
        let why_closed = |fallback: String| {
            live.conn
                .close_reason()
                .map(|e| describe_connection_error(&e))
                .unwrap_or(fallback)
        };
        let (mut send, mut recv) = live
            .conn
            .open_bi()
            .await
            .map_err(|e| lost(describe_connection_error(&e)))?;
        write_frame(&mut send, &DialRequest::new(service), MAX_DIAL_FRAME)
            .await
            .map_err(|e| lost(why_closed(e.to_string())))?;
        let resp: DialResponse =
            match tokio::time::timeout(DIAL_TIMEOUT, read_frame(&mut recv, MAX_DIAL_FRAME)).await {
                Err(_) => {
                    return Err(lost(format!(
                        "no answer to the dial within {} s",
                        DIAL_TIMEOUT.as_secs()
                    )))
                }
                Ok(Err(ProtoError::Io(e))) => return Err(lost(why_closed(e.to_string()))),
                Ok(Err(e @ (ProtoError::Closed | ProtoError::UnexpectedEof))) => {
                    return Err(lost(why_closed(e.to_string())))
                }
                Ok(Err(e)) => return Err(lost(format!("bad answer: {e}"))),
                Ok(Ok(r)) => r,
            };
        if let Some(e) = DialError::from_status(resp.status, service, resp.message) {
            return Err(e);
        }
        debug!(service, router = %live.router, "dialed");
        Ok(DialStream::new(send, recv))
    }

    fn current(&self) -> Option<Live> {
        let guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|l| l.conn.close_reason().is_none())
            .cloned()
    }

    fn forget(&self, dead: &Live) {
        let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() == dead.conn.stable_id())
        {
            *guard = None;
        }
    }

    async fn connection(&self) -> Result<Live, DialError> {
        if let Some(l) = self.current() {
            return Ok(l);
        }
        let _gate = self.connecting.lock().await;
        if let Some(l) = self.current() {
            return Ok(l);
        }
        let routers = self.routers().await?;
        let mut last = DialError::NoRouters;
        for router in routers {
            match self.connect(&router).await {
                Ok(conn) => {
                    info!(%router, "connected to router");
                    let live = Live { router, conn };
                    *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
                    return Ok(live);
                }
                Err(e) => {
                    warn!("{e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn connect(&self, router: &str) -> Result<quinn::Connection, DialError> {
        let fail = |reason: String| DialError::Router {
            router: router.to_string(),
            reason,
        };
        let addr = darkport_transport::endpoint::resolve(router)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let connecting = self
            .endpoint
            .connect_with(self.data_config.clone(), addr, "darkport-router")
            .map_err(|e| fail(e.to_string()))?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Err(_) => Err(fail(format!(
                "no answer within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(fail(describe_connection_error(&e))),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// Router addresses: the configured ones, or the controller's list with
    /// online routers first.
    pub async fn routers(&self) -> Result<Vec<String>, DialError> {
        if !self.options.routers.is_empty() {
            return Ok(self.options.routers.clone());
        }
        let config = client_config(
            Some(&self.identity),
            Trust::Ca(self.identity.ca.clone()),
            Kind::Controller,
            ALPN_CONTROL,
        )?;
        let resp =
            control::one_shot(&self.identity.controller, config, ControlBody::ListRouters).await?;
        let ControlResponse::Routers(mut list) = resp else {
            return Err(DialError::NoRouters);
        };
        list.retain(|r| r.online);
        if list.is_empty() {
            return Err(DialError::NoRouters);
        }
        Ok(list.into_iter().map(|r| r.advertise).collect())
    }

    /// Closes router connections and waits briefly for the close to be sent.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"client closing");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Shares a client between tasks.
pub type SharedClient = Arc<Client>;
