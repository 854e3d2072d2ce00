//! Policy evaluation side by side, Veil's half: the Rust, Python and
//! JavaScript builds of `risky-actions` + `secrets-by-team` deciding the
//! rules and calls of bench/peers/src/calls.rs, each hook on a fresh
//! instance, through the gateway's own `PolicySet` as `cargo build --release`
//! builds it. `veil-bench-peers` times regorus and cedar-policy on the same
//! calls (see calls.rs for why they are two programs).
//!
//! Usage: `policy_decisions <policies-dir> [iterations]` (from `make bench`);
//! prints Markdown table rows; with `BENCH_JSON=<file>` also writes them as
//! JSON.

#[path = "../../bench/peers/src/calls.rs"]
mod calls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use calls::{calls, row, time, write_json, Call, Decision3, APPROVAL, DENY, OWNERS};
use serde_json::{json, Value};
use veil_gateway::policy::{CallInput, Host, Identity, Limits, LoadedPolicy, Operation, PolicySet, Verdict};

struct Veil {
    set: PolicySet,
}

impl Veil {
    fn new(host: &Host, dir: &Path, prefix: &str) -> Veil {
        let load = |name: &str, config: Value| {
            let compiled = host.load(&dir.join(format!("{prefix}{name}.wasm"))).expect("run `make policies` first");
            Arc::new(LoadedPolicy::new(compiled, config.to_string()).expect("policy configures"))
        };
        let owners: serde_json::Map<String, Value> = OWNERS.iter().map(|(g, p)| (g.to_string(), json!([p]))).collect();
        let set = PolicySet::new(vec![
            load("risky-actions", json!({"deny": DENY, "approval": APPROVAL})),
            load("secrets-by-team", json!({"owners": owners})),
        ]);
        Veil { set }
    }

    fn decide(&self, c: &Call) -> Decision3 {
        let (service, action) = c.action.split_once(':').expect("service:Action");
        let call = CallInput {
            identity: Identity::new("https://issuer.example", "agent", json!({"sub": "agent", "groups": c.groups})),
            operation: Operation { service: service.into(), action: action.into(), region: "us-east-1".into(), resource: None },
            params: json!({"SecretId": c.secret}),
        };
        let verdict = match self.set.on_request(&call).verdict {
            Verdict::Deny => "deny",
            Verdict::ApprovalRequired => "approval-required",
            Verdict::Allow => "allow",
        };
        let mut mask = false;
        if verdict == "allow" && !c.secret.is_empty() {
            let body = json!({"Name": c.secret, "SecretString": "s3cr3t-value", "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{}", c.secret)});
            mask = !self.set.on_response(&call, 200, &body).masks.is_empty();
        }
        Decision3 { verdict, mask }
    }

    /// Top up every policy's ready instances (untimed: the gateway does it
    /// in the background between calls).
    fn ready(&self) {
        for p in self.set.policies() {
            p.compiled.fill_ready().expect("instantiate");
        }
    }
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/policies".into()));
    let iterations = calls::iterations(2);
    let host = Host::new(Limits::default(), None).expect("engine");
    let veils: Vec<(&str, Veil)> = [("veil (Rust component)", ""), ("veil (Python component)", "python/"), ("veil (JS component)", "js/")]
        .into_iter()
        .map(|(name, prefix)| (name, Veil::new(&host, &dir, prefix)))
        .collect();
    let mut out = Vec::new();
    for call in calls() {
        for (name, veil) in &veils {
            let samples = time(&call, iterations, &mut || veil.decide(&call), &|| veil.ready());
            out.push(row(&call, name, &samples));
        }
    }
    write_json(out);
}
