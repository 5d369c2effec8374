//! The router's metrics and readiness, for `--metrics-listen`.
//!
//! Label values are bounded: a `service` label only ever carries the name
//! of a service in the router's policy snapshot (dials for any other name
//! count under `(unknown)`), `result` is a [`DialStatus`], and `kind` an
//! identity kind. No label names a connection or, by default, an identity.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use darkport_proto::msg::DialStatus;
use darkport_transport::identity::Identity;

use crate::{PolicyClock, RevokedRx, SnapshotRx};

/// The `service` label of a dial for a name the snapshot does not hold.
pub const UNKNOWN_SERVICE: &str = "(unknown)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    service: String,
    /// `to_service` or `to_client`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// What the router counts, and what `/ready` asks.
#[derive(Debug)]
pub struct RouterMetrics {
    dials: Family<DialLabels, Counter>,
    active_streams: Gauge,
    bytes: Family<BytesLabels, Counter>,
    dial_duration: Histogram,
    connections: Family<KindLabels, Gauge>,
    fluent_records: Family<DialLabels, Counter>,
    fluent_overwritten: Family<ServiceLabels, Counter>,
    fluent_app_handshakes: Family<ServiceLabels, Counter>,
    fluent_refused_streams: Family<DialLabels, Counter>,
    terminators: Family<ServiceLabels, Gauge>,
    snapshot_version: Gauge,
    snapshot_age: Gauge<f64, AtomicU64>,
    session_up: Gauge,
    cert_expiry: Gauge,
    /// When the policy was last known current; shared with the control
    /// session.
    pub(crate) policy_clock: Arc<PolicyClock>,
    /// Set at shutdown.
    draining: AtomicBool,
    /// What the router runs with, once it runs.
    watches: Mutex<Option<Watches>>,
}

#[derive(Debug)]
struct Watches {
    snapshots: SnapshotRx,
    revoked: RevokedRx,
    identity: watch::Receiver<Arc<Identity>>,
    clients: crate::Clients,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        RouterMetrics {
            dials: Family::default(),
            active_streams: Gauge::default(),
            bytes: Family::default(),
            // 100 µs to ~6.5 s: a dial is a policy check and a TCP connect
            // to the service.
            dial_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            connections: Family::default(),
            fluent_records: Family::default(),
            fluent_overwritten: Family::default(),
            fluent_app_handshakes: Family::default(),
            fluent_refused_streams: Family::default(),
            terminators: Family::default(),
            snapshot_version: Gauge::default(),
            snapshot_age: Gauge::default(),
            session_up: Gauge::default(),
            cert_expiry: Gauge::default(),
            policy_clock: Arc::default(),
            draining: AtomicBool::new(false),
            watches: Mutex::new(None),
        }
    }
}

impl RouterMetrics {
    /// Adds every metric to `registry` (which should have the `darkport`
    /// prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("router");
        r.register(
            "dials",
            "Dial requests answered, by service and result",
            self.dials.clone(),
        );
        r.register(
            "active_streams",
            "Streams carried to services now",
            self.active_streams.clone(),
        );
        r.register_with_unit(
            "stream",
            "Bytes carried, by service and direction (to_service, to_client)",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register_with_unit(
            "dial_duration",
            "Time from a dial request to the OK answer, service connect included",
            Unit::Seconds,
            self.dial_duration.clone(),
        );
        r.register(
            "connections",
            "QUIC connections open now, by identity kind",
            self.connections.clone(),
        );
        r.register(
            "fluent_records",
            "Records of fluent-forward services, by service and result (forwarded; denied: by tag policy; refused_signal: metrics or traces, which cannot be stamped)",
            self.fluent_records.clone(),
        );
        r.register(
            "fluent_refused_streams",
            "fluent-forward streams ended because the client's data was refused, by service and result (malformed, too_large, too_many_entries, decompress, truncated, handshake)",
            self.fluent_refused_streams.clone(),
        );
        r.register(
            "fluent_app_handshake_failures",
            "Apps refused because their own <security> handshake failed (wrong shared_key, no PING)",
            self.fluent_app_handshakes.clone(),
        );
        r.register(
            "fluent_overwritten_keys",
            "Record keys a sender set that the router overwrote with the verified identity",
            self.fluent_overwritten.clone(),
        );
        r.register(
            "terminators",
            "Terminators of hosted services registered here now, by service",
            self.terminators.clone(),
        );
        r.register(
            "snapshot_version",
            "Version of the policy snapshot in force (0: none)",
            self.snapshot_version.clone(),
        );
        r.register_with_unit(
            "snapshot_age",
            "Time since the policy was last known current (0 while the controller session is up)",
            Unit::Seconds,
            self.snapshot_age.clone(),
        );
        r.register(
            "controller_session_up",
            "1 while the control session with the controller is up",
            self.session_up.clone(),
        );
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When this component's certificate expires, Unix time",
            Unit::Seconds,
            self.cert_expiry.clone(),
        );
    }

    pub(crate) fn attach(
        &self,
        snapshots: SnapshotRx,
        revoked: RevokedRx,
        identity: watch::Receiver<Arc<Identity>>,
        clients: crate::Clients,
    ) {
        *self.watches.lock().unwrap_or_else(|p| p.into_inner()) = Some(Watches {
            snapshots,
            revoked,
            identity,
            clients,
        });
    }

    /// Brings the computed gauges (snapshot, session, certificate) up to
    /// date; call before a scrape.
    pub fn refresh(&self) {
        let now = darkport_transport::unix_now();
        self.snapshot_age
            .set(self.policy_clock.age(now).as_secs_f64());
        self.session_up.set(i64::from(self.policy_clock.is_live()));
        let w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = w.as_ref() else { return };
        let version = w.snapshots.borrow().as_ref().map_or(0, |s| s.version);
        self.snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.terminators.clear();
        for (service, n) in w.clients.hosting.counts() {
            self.terminators
                .get_or_create(&ServiceLabels { service })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let id = w.identity.borrow().clone();
        if let Some(leaf) = id.chain.first() {
            if let Ok((_, not_after)) = darkport_transport::tls::cert_validity(leaf) {
                self.cert_expiry
                    .set(i64::try_from(not_after).unwrap_or(i64::MAX));
            }
        }
    }

    /// Whether the router can serve dials: it runs, has a policy snapshot,
    /// is not revoked and not draining.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down".into());
        }
        let w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = w.as_ref() else {
            return Err("not running yet".into());
        };
        if let Some(reason) = w.revoked.borrow().as_ref() {
            return Err(format!("this router was revoked: {reason}"));
        }
        if w.snapshots.borrow().is_none() {
            return Err("no policy snapshot from the controller yet".into());
        }
        Ok(())
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The `service` label for a dial of `name`.
    pub(crate) fn service_label(snapshots: &SnapshotRx, name: &str) -> String {
        let known = snapshots
            .borrow()
            .as_ref()
            .is_some_and(|s| s.services.iter().any(|e| e.name.as_str() == name));
        if known {
            name.to_string()
        } else {
            UNKNOWN_SERVICE.to_string()
        }
    }

    pub(crate) fn dial(&self, service: String, status: DialStatus) {
        self.dials
            .get_or_create(&DialLabels {
                service,
                result: status.as_str(),
            })
            .inc();
    }

    pub(crate) fn dial_ok(&self, service: &str, took: Duration) {
        self.dial(service.to_string(), DialStatus::Ok);
        self.dial_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn fluent_denied(
        &self,
        service: &str,
        records: u64,
        reason: darkport_fluent::DenialReason,
    ) {
        let result = match reason {
            darkport_fluent::DenialReason::Signal(_) => "refused_signal",
            _ => "denied",
        };
        self.fluent_records
            .get_or_create(&DialLabels {
                service: service.to_string(),
                result,
            })
            .inc_by(records);
    }

    pub(crate) fn fluent_refused_stream(&self, service: &str, reason: &'static str) {
        self.fluent_refused_streams
            .get_or_create(&DialLabels {
                service: service.to_string(),
                result: reason,
            })
            .inc();
    }

    pub(crate) fn fluent_app_handshake_failed(&self, service: &str) {
        self.fluent_app_handshakes
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .inc();
    }

    pub(crate) fn fluent_records(&self, service: &str, records: u64, overwritten: u64) {
        self.fluent_records
            .get_or_create(&DialLabels {
                service: service.to_string(),
                result: "forwarded",
            })
            .inc_by(records);
        if overwritten > 0 {
            self.fluent_overwritten
                .get_or_create(&ServiceLabels {
                    service: service.to_string(),
                })
                .inc_by(overwritten);
        }
    }

    /// Byte counters of `service`: to the service, to the client.
    pub(crate) fn byte_counters(&self, service: &str) -> (Counter, Counter) {
        let get = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    service: service.to_string(),
                    direction,
                })
                .clone()
        };
        (get("to_service"), get("to_client"))
    }

    /// Counts an open stream until the guard is dropped.
    pub(crate) fn stream_open(&self) -> GaugeGuard {
        GaugeGuard::new(self.active_streams.clone())
    }

    /// Counts an open connection of `kind` until the guard is dropped.
    pub(crate) fn connection_open(&self, kind: darkport_proto::identity::Kind) -> GaugeGuard {
        use darkport_proto::identity::Kind;
        let kind = match kind {
            Kind::Client => "client",
            Kind::Router => "router",
            Kind::Admin => "admin",
            Kind::Controller => "controller",
        };
        GaugeGuard::new(self.connections.get_or_create(&KindLabels { kind }).clone())
    }
}

/// Holds one unit of a gauge.
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
