//! Prometheus metrics (text format on `metrics.address`/metrics).
//!
//! Label values come from closed sets, never from what a caller sent: a
//! call's `service` and `action` are names from the AWS models
//! ([`crate::aws::operations`]) or `unknown`, and only for an authenticated
//! caller (`-` before that); `verdict` and `result` are fixed words. So the
//! number of series is bounded whatever callers send (services × operations
//! × verdicts at worst, in practice the operations agents use), and no
//! label can break the text format. The one label that is not from a fixed
//! set, a policy's name, comes from the loaded (operator-deployed) policies
//! and is still escaped ([`LabelText`]) as the text format requires, since
//! prometheus-client 0.23 writes label values verbatim.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a finished call; build them with [`CallLabels::of`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Signing name known to the models, `unknown`, or `-` when the caller
    /// was not authenticated or the call not classified.
    pub service: &'static str,
    /// Operation of that service known to the models, `unknown`, or `-`.
    pub action: &'static str,
    /// allow, deny, approval-required, unauthenticated, error.
    pub verdict: &'static str,
}

/// The value of a label for something the models do not name.
pub const UNKNOWN: &str = "unknown";
/// The value of a label for something not (yet) known of a call.
pub const NONE: &str = "-";

impl CallLabels {
    /// The labels of a call whose caller was `authenticated` (or not) and
    /// which was classified as `service`/`action` so far. Unauthenticated
    /// calls get `-`: what they claim to be is caller text.
    pub fn of(authenticated: bool, service: Option<&str>, action: Option<&str>, verdict: &'static str) -> CallLabels {
        use crate::aws::operations;
        let (service, action) = match (authenticated, service) {
            (false, _) | (true, None) => (NONE, NONE),
            (true, Some(s)) => match operations::service(s) {
                None => (UNKNOWN, if action.is_some() { UNKNOWN } else { NONE }),
                Some(known) => (known, action.map_or(NONE, |a| operations::operation(known, a).unwrap_or(UNKNOWN))),
            },
        };
        CallLabels { service, action, verdict }
    }
}

/// Labels of a policy failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Policy name.
    pub policy: LabelText,
}

/// Labels of a policy reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// loaded or rejected.
    pub result: &'static str,
}

/// A label value written as the Prometheus text format requires: `\`,
/// `"` and newline escaped (prometheus-client 0.23 does not), and capped
/// at 128 bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LabelText(String);

impl LabelText {
    /// `text`, capped.
    pub fn new(text: &str) -> LabelText {
        let mut end = text.len().min(128);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        LabelText(text[..end].to_string())
    }
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_labels_are_names_from_the_models_or_fixed_words() {
        assert_eq!(CallLabels::of(true, Some("iam"), Some("CreateUser"), "allow"), CallLabels { service: "iam", action: "CreateUser", verdict: "allow" });
        assert_eq!(CallLabels::of(true, Some("iam"), Some("CreateUser\nfake 1"), "allow").action, UNKNOWN);
        assert_eq!(CallLabels::of(true, Some("iam"), None, "error"), CallLabels { service: "iam", action: NONE, verdict: "error" });
        assert_eq!(CallLabels::of(true, Some("zz\",verdict=\"allow"), Some("X"), "error"), CallLabels { service: UNKNOWN, action: UNKNOWN, verdict: "error" });
        // Before authentication nothing the caller claims is a label.
        assert_eq!(CallLabels::of(false, Some("iam"), Some("CreateUser"), "unauthenticated"), CallLabels { service: NONE, action: NONE, verdict: "unauthenticated" });
    }

    #[test]
    fn hostile_label_text_is_escaped_in_the_exposition() {
        let m = Metrics::default();
        m.policy_errors.get_or_create(&PolicyLabels { policy: LabelText::new("p\",x=\"1\"}\nveil_fake 1\n\\") }).inc();
        for i in 0..50 {
            m.requests.get_or_create(&CallLabels::of(false, Some(&format!("svc{i}")), None, "unauthenticated")).inc();
        }
        let text = m.render();
        assert!(text.contains(r#"veil_policy_errors_total{policy="p\",x=\"1\"}\nveil_fake 1\n\\"} 1"#), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("veil_fake")), "{text}");
        assert_eq!(text.matches("veil_requests_total{").count(), 1, "{text}");
    }
}
