//! The rules, the calls and the timing loop of the policy-decision
//! comparison, shared by its two halves: `veil-bench-peers` (regorus,
//! cedar-policy) and the gateway's `policy_decisions` example (Veil's
//! components). They are two binaries so that Veil is measured as the
//! gateway ships: cedar-policy turns on serde_json's `preserve_order`, which
//! would change the gateway's JSON maps were both linked into one program.
//!
//! The rules: deny account-destroying actions, hold identity-changing ones
//! for approval, and mask a secret's value unless one of the caller's groups
//! owns its name prefix. Each engine gets the call as it arrives (claims,
//! action, secret name) and produces the whole decision: verdict + mask,
//! checked against the decision written here, so every engine is seen to
//! agree.
//!
//! Both binaries print Markdown table rows and, with `BENCH_JSON=<file>`,
//! write the rows as JSON.

use std::time::Instant;

pub const DENY: &[&str] = &["organizations:LeaveOrganization", "cloudtrail:StopLogging", "cloudtrail:DeleteTrail", "iam:DeleteAccountPasswordPolicy"];
pub const APPROVAL: &[&str] = &["iam:CreateUser", "iam:CreateAccessKey", "iam:AttachUserPolicy", "iam:PutUserPolicy", "ssm:StartSession", "ssm:SendCommand"];
pub const OWNERS: &[(&str, &str)] = &[("payments", "prod/payments/"), ("search", "prod/search/")];

/// A whole decision: the verdict and whether the secret's value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision3 {
    pub verdict: &'static str,
    pub mask: bool,
}

/// One call: who, what, on which secret, and the decision the rules give.
pub struct Call {
    pub label: &'static str,
    pub groups: Vec<&'static str>,
    pub action: &'static str,
    pub secret: &'static str,
    pub want: Decision3,
}

pub fn calls() -> Vec<Call> {
    let d = |verdict, mask| Decision3 { verdict, mask };
    vec![
        Call { label: "GetSecretValue, other team (masked)", groups: vec!["search"], action: "secretsmanager:GetSecretValue", secret: "prod/payments/db", want: d("allow", true) },
        Call { label: "GetSecretValue, owner (plaintext)", groups: vec!["payments"], action: "secretsmanager:GetSecretValue", secret: "prod/payments/db", want: d("allow", false) },
        Call { label: "iam:CreateUser (approval)", groups: vec!["search"], action: "iam:CreateUser", secret: "", want: d("approval-required", false) },
        Call { label: "cloudtrail:StopLogging (deny)", groups: vec!["search"], action: "cloudtrail:StopLogging", secret: "", want: d("deny", false) },
    ]
}

/// The iteration count: command-line argument `n`, 2000 when absent.
pub fn iterations(n: usize) -> usize {
    std::env::args().nth(n).and_then(|s| s.parse().ok()).unwrap_or(2000)
}

/// Time `decide` on `call` `iterations` times (`before` runs untimed before
/// each), checking every decision; the sorted samples in µs.
pub fn time(call: &Call, iterations: usize, decide: &mut dyn FnMut() -> Decision3, before: &dyn Fn()) -> Vec<f64> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        before();
        let t = Instant::now();
        let d = decide();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(d, call.want, "{}", call.label);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

/// Print one engine's row for `call` and return it for `BENCH_JSON`.
pub fn row(call: &Call, engine: &str, sorted: &[f64]) -> serde_json::Value {
    let pct = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (p50, p99) = (pct(0.5), pct(0.99));
    let decision = format!("{}{}", call.want.verdict, if call.want.mask { " + mask" } else { "" });
    println!("| {} | {engine} | {p50:.1} | {p99:.1} | {decision} |", call.label);
    serde_json::json!({"call": call.label, "engine": engine, "p50_us": p50, "p99_us": p99, "decision": decision})
}

/// Write the rows to `BENCH_JSON` when set.
pub fn write_json(rows: Vec<serde_json::Value>) {
    if let Ok(path) = std::env::var("BENCH_JSON") {
        std::fs::write(&path, serde_json::Value::Array(rows).to_string()).expect("write BENCH_JSON");
    }
}
