//! Prometheus metrics (text format on `metrics.address`/metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Signing name, or `-` when the call was not classified.
    pub service: String,
    /// Operation, or `-`.
    pub action: String,
    /// allow, deny, approval-required, error.
    pub verdict: String,
}

/// Labels of a policy failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Policy name.
    pub policy: String,
}

/// Labels of a policy reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// loaded or rejected.
    pub result: String,
}

/// Every metric Veil exports.
pub struct Metrics {
    registry: Registry,
    /// Calls by service, action and verdict.
    pub requests: Family<CallLabels, Counter>,
    /// Whole-call latency, seconds.
    pub latency: Family<CallLabels, Histogram>,
    /// Policy hook failures (traps, timeouts, bad output) by policy.
    pub policy_errors: Family<PolicyLabels, Counter>,
    /// Authentication failures.
    pub auth_failures: Counter,
    /// Audit records inserted into ClickHouse.
    pub audit_shipped: Counter,
    /// Failed ClickHouse inserts or migrations (retried).
    pub audit_ship_failures: Counter,
    /// Audit records the spool could not take.
    pub audit_write_failures: Counter,
    /// Policy reloads by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("veil");
        let requests = Family::<CallLabels, Counter>::default();
        let latency = Family::<CallLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let policy_errors = Family::<PolicyLabels, Counter>::default();
        let auth_failures = Counter::default();
        registry.register("requests", "AWS calls handled, by service, action and verdict", requests.clone());
        registry.register("request_duration_seconds", "Whole-call latency", latency.clone());
        registry.register("policy_errors", "Policy hook failures (trap, timeout, memory, bad output)", policy_errors.clone());
        registry.register("auth_failures", "Calls refused for identity or signature", auth_failures.clone());
        let audit_shipped = Counter::default();
        let audit_ship_failures = Counter::default();
        let audit_write_failures = Counter::default();
        registry.register("audit_shipped", "Audit records inserted into ClickHouse", audit_shipped.clone());
        registry.register("audit_ship_failures", "Failed ClickHouse inserts or migrations (retried)", audit_ship_failures.clone());
        registry.register("audit_write_failures", "Audit records the spool could not take", audit_write_failures.clone());
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("policy_reloads", "Policy reloads by result (loaded, rejected)", policy_reloads.clone());
        Metrics { registry, requests, latency, policy_errors, auth_failures, audit_shipped, audit_ship_failures, audit_write_failures, policy_reloads }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
