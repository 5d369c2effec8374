//! Making one router connection: over QUIC, over TCP, or racing both
//! (auto mode), as the transport [`Memory`] advises.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use darkport_proto::identity::Kind;
use darkport_proto::{ALPN_DATA, ALPN_DATA_TCP, ROUTER_SERVER_NAME};
use darkport_transport::connect::ConnectError;
use darkport_transport::identity::Identity;
use darkport_transport::mux::{Conn, Transport, TransportMode};
use darkport_transport::tls::{client_config, rustls_client_config, Trust};

use super::clock;
use crate::choice::{Memory, Plan};
use crate::{DialError, RouterFailure};

/// The TLS configurations of both transports for one identity.
#[derive(Debug, Clone)]
pub(crate) struct Configs {
    quic: quinn::ClientConfig,
    tcp: Arc<rustls::ClientConfig>,
}

impl Configs {
    pub(crate) fn new(identity: &Identity) -> Result<Configs, DialError> {
        let trust = || Trust::Ca(identity.ca.clone());
        Ok(Configs {
            quic: client_config(Some(identity), trust(), Kind::Router, ALPN_DATA)?,
            tcp: Arc::new(rustls_client_config(
                Some(identity),
                trust(),
                Kind::Router,
                ALPN_DATA_TCP,
            )?),
        })
    }
}

/// Makes router connections over the transport the mode and the
/// [`Memory`] call for; shared by dials and the background maintenance.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) mode: TransportMode,
    pub(super) remember_tcp: Duration,
    pub(super) memory: Arc<Mutex<Memory>>,
}

impl Connector {
    pub(super) fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn learned(&self, router: &str, won: Transport) {
        let hold = self.remember_tcp;
        self.memory().learned(router, won, clock(), hold);
    }

    pub(crate) async fn connect(&self, configs: &Configs, router: &str) -> Result<Conn, DialError> {
        let plan = self.memory().plan(self.mode, router, clock());
        let result = match plan {
            Plan::Quic => self
                .quic(configs, router)
                .await
                .map_err(RouterFailure::Quic),
            Plan::Tcp => self.tcp(configs, router).await.map_err(RouterFailure::Tcp),
            Plan::Race { tcp_after } => self.race(configs, router, tcp_after).await,
        };
        result.map_err(|cause| router_error(router, cause))
    }

    pub(super) async fn quic(&self, configs: &Configs, router: &str) -> Result<Conn, ConnectError> {
        darkport_transport::endpoint::connect_any(
            &self.endpoint,
            configs.quic.clone(),
            router,
            ROUTER_SERVER_NAME,
        )
        .await
        .map(Conn::from)
    }

    async fn tcp(&self, configs: &Configs, router: &str) -> Result<Conn, ConnectError> {
        darkport_transport::mux::connect_tcp(configs.tcp.clone(), router, ROUTER_SERVER_NAME).await
    }

    /// QUIC first; TCP joins after `tcp_after` or when QUIC fails. The
    /// first handshake to finish wins; the other attempt is dropped.
    async fn race(
        &self,
        configs: &Configs,
        router: &str,
        tcp_after: Duration,
    ) -> Result<Conn, RouterFailure> {
        let quic = self.quic(configs, router);
        let tcp = async {
            tokio::time::sleep(tcp_after).await;
            self.tcp(configs, router).await
        };
        tokio::pin!(quic, tcp);
        let (mut quic_failed, mut tcp_failed) = (None, None);
        // TCP's head-start timer is skipped once QUIC has failed.
        let tcp_now = self.tcp(configs, router);
        tokio::pin!(tcp_now);
        loop {
            tokio::select! {
                biased;
                r = &mut quic, if quic_failed.is_none() => match r {
                    Ok(c) => {
                        self.learned(router, Transport::Quic);
                        return Ok(c);
                    }
                    Err(e) => quic_failed = Some(e),
                },
                r = &mut tcp, if tcp_failed.is_none() && quic_failed.is_none() => match r {
                    Ok(c) => {
                        info!(router, "QUIC did not get through within {tcp_after:?}; using TCP");
                        self.learned(router, Transport::Tcp);
                        return Ok(c);
                    }
                    Err(e) => tcp_failed = Some(e),
                },
                r = &mut tcp_now, if tcp_failed.is_none() && quic_failed.is_some() => match r {
                    Ok(c) => {
                        info!(router, "QUIC failed; using TCP");
                        self.learned(router, Transport::Tcp);
                        return Ok(c);
                    }
                    Err(e) => tcp_failed = Some(e),
                },
            }
            match (quic_failed, tcp_failed) {
                (Some(quic), Some(tcp)) => return Err(RouterFailure::Both { quic, tcp }),
                (q, t) => (quic_failed, tcp_failed) = (q, t),
            }
        }
    }
}

pub(super) fn router_error(router: &str, cause: RouterFailure) -> DialError {
    DialError::Router {
        router: router.to_string(),
        cause: Box::new(cause),
    }
}
