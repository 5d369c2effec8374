//! The client's metrics and readiness, for `darkport-edge-client run
//! --metrics-listen`, and the hoster's ([`HostMetrics`]), for
//! `darkport-edge-client host --metrics-listen`.
//!
//! The SDK counts in plain atomics ([`Client::dial_counts`],
//! [`Client::connections`]) and does not know Prometheus; this module reads
//! them at each scrape ([`ClientMetrics::refresh`]). It is built with the
//! `cli` feature only, so SDK users without it stay free of
//! prometheus-client.
//!
//! Label values are bounded: `result` is "ok" or a kind of dial failure,
//! and `router` names a router the client holds a connection to now
//! (the family is cleared at each scrape, so routers gone leave no
//! series behind).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::host::{Host, RouterState};
use crate::Client;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouterLabels {
    router: String,
}

/// What the client shows, and what `/ready` asks.
#[derive(Debug)]
pub struct ClientMetrics {
    /// Where the numbers come from.
    client: Arc<Client>,
    dials: Family<ResultLabels, Counter>,
    router_connections: Gauge,
    router_rtt: Family<RouterLabels, Gauge<f64, AtomicU64>>,
    cert_expiry: Gauge,
    /// The SDK's dial counts at the last scrape: the counters go up by the
    /// difference, so they stay counters however often they are read.
    seen: Mutex<HashMap<&'static str, u64>>,
}

impl ClientMetrics {
    /// Metrics over `client`'s counters.
    pub fn new(client: Arc<Client>) -> Self {
        ClientMetrics {
            client,
            dials: Family::default(),
            router_connections: Gauge::default(),
            router_rtt: Family::default(),
            cert_expiry: Gauge::default(),
            seen: Mutex::default(),
        }
    }

    /// Adds every metric to `registry` (which should have the `darkport`
    /// prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("client");
        r.register(
            "dials",
            "Dials by result (ok, or the kind of failure)",
            self.dials.clone(),
        );
        r.register(
            "router_connections",
            "Router connections open now",
            self.router_connections.clone(),
        );
        r.register_with_unit(
            "router_rtt",
            "Round-trip time estimate, by router connection",
            Unit::Seconds,
            self.router_rtt.clone(),
        );
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When this component's certificate expires, Unix time",
            Unit::Seconds,
            self.cert_expiry.clone(),
        );
    }

    /// Brings every metric up to date with the SDK's counters; run before
    /// each scrape.
    pub fn refresh(&self) {
        let c = &self.client;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (result, n) in c.dial_counts() {
            let before = seen.insert(result, n).unwrap_or(0);
            self.dials
                .get_or_create(&ResultLabels { result })
                .inc_by(n.saturating_sub(before));
        }
        let live = c.connections();
        self.router_connections.set(live.len() as i64);
        self.router_rtt.clear();
        for l in &live {
            self.router_rtt
                .get_or_create(&RouterLabels {
                    router: l.router.clone(),
                })
                .set(l.rtt.as_secs_f64());
        }
        if let Some(leaf) = c.identity().chain.first() {
            if let Ok((_, not_after)) = darkport_transport::tls::cert_validity(leaf) {
                self.cert_expiry
                    .set(i64::try_from(not_after).unwrap_or(i64::MAX));
            }
        }
    }

    /// Whether the client can carry connections now: it holds a router
    /// connection.
    pub fn ready(&self) -> Result<(), String> {
        if self.client.connections().is_empty() {
            Err("no router connection".into())
        } else {
            Ok(())
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    service: String,
    result: &'static str,
}

/// What a hoster shows, and what its `/ready` asks. Label values are
/// bounded: `service` is one of the hosted services (given on the command
/// line), `result` one of a few words.
#[derive(Debug)]
pub struct HostMetrics {
    host: Arc<Host>,
    terminators: Family<ServiceLabels, Gauge>,
    router_connections: Gauge,
    streams: Family<StreamLabels, Counter>,
}

impl HostMetrics {
    /// Metrics over `host`.
    pub fn new(host: Arc<Host>) -> Self {
        HostMetrics {
            host,
            terminators: Family::default(),
            router_connections: Gauge::default(),
            streams: Family::default(),
        }
    }

    /// Adds every metric to `registry` (which should have the `darkport`
    /// prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("host");
        r.register(
            "terminators",
            "Routers holding a terminator of this host, by service",
            self.terminators.clone(),
        );
        r.register(
            "router_connections",
            "Router connections with the host stream up",
            self.router_connections.clone(),
        );
        r.register(
            "streams",
            "Streams brought by routers, by service and result (ok, refused: the local service could not be reached, lost: the router or caller gave up before the answer)",
            self.streams.clone(),
        );
    }

    /// Counts one stream of `service` with `result`.
    pub fn stream(&self, service: &str, result: &'static str) {
        self.streams
            .get_or_create(&StreamLabels {
                service: service.to_string(),
                result,
            })
            .inc();
    }

    /// Brings the gauges up to date with the host's routers.
    pub fn refresh(&self) {
        let routers = self.host.routers();
        let up = routers
            .iter()
            .filter(|r| r.state == RouterState::Up)
            .count();
        self.router_connections.set(up as i64);
        for s in self.host.services() {
            let n = routers
                .iter()
                .filter(|r| {
                    r.verdicts.iter().any(|v| {
                        v.service == s.name && v.status == darkport_proto::msg::DialStatus::Ok
                    })
                })
                .count();
            self.terminators
                .get_or_create(&ServiceLabels { service: s.name })
                .set(n as i64);
        }
    }

    /// Ready when every hosted service has a terminator on some router.
    pub fn ready(&self) -> Result<(), String> {
        let routers = self.host.routers();
        let missing: Vec<String> = self
            .host
            .services()
            .into_iter()
            .map(|s| s.name)
            .filter(|name| {
                !routers.iter().any(|r| {
                    r.verdicts.iter().any(|v| {
                        &v.service == name && v.status == darkport_proto::msg::DialStatus::Ok
                    })
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no router holds a terminator for {}",
                missing.join(", ")
            ))
        }
    }
}
