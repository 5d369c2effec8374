//! The controller's metrics, for `--metrics-listen`. Labels are bounded:
//! `result` is "ok" or a `ControlErrorCode` name, `op` a store operation.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// What the controller counts.
#[derive(Debug)]
pub struct ControllerMetrics {
    enrollments: Family<ResultLabels, Counter>,
    renewals: Family<ResultLabels, Counter>,
    admin: Family<ResultLabels, Counter>,
    store: Family<OpLabels, Histogram>,
    routers_online: Gauge,
    cert_expiry: Gauge,
    ca_expiry: Gauge,
    /// The store is open and the endpoint serves.
    ready: std::sync::atomic::AtomicBool,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            enrollments: Family::default(),
            renewals: Family::default(),
            admin: Family::default(),
            // 50 µs to ~3.3 s: a SQLite commit with fsync.
            store: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 17))
            }),
            routers_online: Gauge::default(),
            cert_expiry: Gauge::default(),
            ca_expiry: Gauge::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The `result` label of an answer.
pub fn result_label<T>(r: &Result<T, darkport_proto::msg::ControlError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    }
}

impl ControllerMetrics {
    /// Adds every metric to `registry` (which should have the `darkport`
    /// prefix).
    pub fn register(&self, registry: &mut Registry) {
        // Successes show as 0 from the start, so rates and ratios work
        // before the first request.
        for family in [&self.enrollments, &self.renewals, &self.admin] {
            let _ = family.get_or_create(&ResultLabels { result: "ok" });
        }
        let r = registry.sub_registry_with_prefix("controller");
        r.register(
            "enrollments",
            "Enrollment requests, by result",
            self.enrollments.clone(),
        );
        r.register(
            "renewals",
            "Certificate renewal requests, by result",
            self.renewals.clone(),
        );
        r.register(
            "admin_requests",
            "Admin requests, by result",
            self.admin.clone(),
        );
        r.register_with_unit(
            "store_duration",
            "Time to commit a change to, or read the audit log from, the state database",
            Unit::Seconds,
            self.store.clone(),
        );
        r.register(
            "routers_online",
            "Routers with a live control session",
            self.routers_online.clone(),
        );
        r.register_with_unit(
            "ca_expiry_timestamp",
            "When the CA certificate expires, Unix time",
            Unit::Seconds,
            self.ca_expiry.clone(),
        );
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When this component's certificate expires, Unix time",
            Unit::Seconds,
            self.cert_expiry.clone(),
        );
    }

    /// Whether the controller serves: its state database is open and its
    /// endpoint accepts.
    pub fn ready(&self) -> Result<(), String> {
        if self.ready.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            Err("the state database is not open, or the controller is shutting down".into())
        }
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready
            .store(ready, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn enrollment(&self, result: &'static str) {
        self.enrollments
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn renewal(&self, result: &'static str) {
        self.renewals.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn admin(&self, result: &'static str) {
        self.admin.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn store_op(&self, op: &'static str, took: Duration) {
        self.store
            .get_or_create(&OpLabels { op })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn set_routers_online(&self, n: usize) {
        self.routers_online.set(n as i64);
    }

    pub(crate) fn set_expiries(&self, cert: u64, ca: u64) {
        self.cert_expiry
            .set(i64::try_from(cert).unwrap_or(i64::MAX));
        self.ca_expiry.set(i64::try_from(ca).unwrap_or(i64::MAX));
    }
}

/// Shared metrics.
pub type Metrics = Arc<ControllerMetrics>;
