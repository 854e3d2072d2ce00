//! Policy evaluation side by side, on the same rules and the same calls:
//! Veil's policy components (Rust, Python, JavaScript builds of
//! `risky-actions` + `secrets-by-team`), regorus (Rego) and cedar-policy.
//!
//! The rules: deny account-destroying actions, hold identity-changing ones
//! for approval, and mask a secret's value unless one of the caller's groups
//! owns its name prefix. Each engine gets the call as it arrives (claims,
//! action, secret name) and produces the whole decision: verdict + mask.
//! Cedar answers allow/deny only, so its decision is three authorisation
//! queries (call forbidden? approval needed? plaintext allowed?), each policy
//! set written the idiomatic Cedar way.
//!
//! Usage: `veil-bench-peers <policies-dir> [iterations]` (from `make bench`);
//! prints a Markdown table; with `BENCH_JSON=<file>` also writes the rows as
//! JSON for the results page's charts.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet as CedarSet, Request};
use serde_json::{json, Value};
use veil_gateway::policy::{CallInput, Host, Identity, Limits, LoadedPolicy, Operation, PolicySet};

const DENY: &[&str] = &["organizations:LeaveOrganization", "cloudtrail:StopLogging", "cloudtrail:DeleteTrail", "iam:DeleteAccountPasswordPolicy"];
const APPROVAL: &[&str] = &["iam:CreateUser", "iam:CreateAccessKey", "iam:AttachUserPolicy", "iam:PutUserPolicy", "ssm:StartSession", "ssm:SendCommand"];
const OWNERS: &[(&str, &str)] = &[("payments", "prod/payments/"), ("search", "prod/search/")];

/// One call: who, what, on which secret.
struct Call {
    label: &'static str,
    groups: Vec<&'static str>,
    action: &'static str,
    secret: &'static str,
}

#[derive(Debug, PartialEq, Eq)]
struct Decision3 {
    verdict: &'static str,
    mask: bool,
}

fn calls() -> Vec<Call> {
    vec![
        Call { label: "GetSecretValue, other team (masked)", groups: vec!["search"], action: "secretsmanager:GetSecretValue", secret: "prod/payments/db" },
        Call { label: "GetSecretValue, owner (plaintext)", groups: vec!["payments"], action: "secretsmanager:GetSecretValue", secret: "prod/payments/db" },
        Call { label: "iam:CreateUser (approval)", groups: vec!["search"], action: "iam:CreateUser", secret: "" },
        Call { label: "cloudtrail:StopLogging (deny)", groups: vec!["search"], action: "cloudtrail:StopLogging", secret: "" },
    ]
}

fn rego_source() -> String {
    let set = |items: &[&str]| items.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    let owners = OWNERS.iter().map(|(g, p)| format!("{g:?}: [{p:?}]")).collect::<Vec<_>>().join(", ");
    format!(
        r#"package veil
import future.keywords.if
import future.keywords.in
deny_actions := {{{}}}
approval_actions := {{{}}}
owners := {{{owners}}}
default verdict := "allow"
verdict := "deny" if {{ deny_actions[input.action] }}
verdict := "approval-required" if {{ not deny_actions[input.action]; approval_actions[input.action] }}
default owned := false
owned if {{ some g in input.claims.groups; some p in owners[g]; startswith(input.secret, p) }}
default mask := false
mask if {{ input.action == "secretsmanager:GetSecretValue"; not owned }}
decision := {{"verdict": verdict, "mask": mask}}
"#,
        set(DENY),
        set(APPROVAL)
    )
}

struct Rego(regorus::Engine);

impl Rego {
    fn new() -> Rego {
        let mut e = regorus::Engine::new();
        e.add_policy("veil.rego".into(), rego_source()).expect("rego policy parses");
        Rego(e)
    }

    fn decide(&mut self, c: &Call) -> Decision3 {
        let input = json!({"claims": {"sub": "agent", "groups": c.groups}, "action": c.action, "secret": c.secret}).to_string();
        self.0.set_input_json(&input).expect("input");
        let v = self.0.eval_rule("data.veil.decision".into()).expect("rego evaluates");
        let verdict = match v["verdict"].as_string().expect("verdict").as_ref() {
            "deny" => "deny",
            "approval-required" => "approval-required",
            _ => "allow",
        };
        Decision3 { verdict, mask: *v["mask"].as_bool().expect("mask") }
    }
}

struct Cedar {
    authorizer: Authorizer,
    calls: CedarSet,
    approval: CedarSet,
    plaintext: CedarSet,
}

impl Cedar {
    fn new() -> Cedar {
        let list = |items: &[&str]| items.iter().map(|a| format!("Action::{a:?}")).collect::<Vec<_>>().join(", ");
        let calls = format!("permit(principal, action, resource);\nforbid(principal, action in [{}], resource);", list(DENY));
        let approval = format!("permit(principal, action in [{}], resource);", list(APPROVAL));
        let plaintext = OWNERS
            .iter()
            .map(|(g, p)| format!("permit(principal in Group::{g:?}, action == Action::\"secretsmanager:GetSecretValue\", resource) when {{ resource.name like \"{p}*\" }};"))
            .collect::<Vec<_>>()
            .join("\n");
        let parse = |s: &str| CedarSet::from_str(s).expect("cedar policies parse");
        Cedar { authorizer: Authorizer::new(), calls: parse(&calls), approval: parse(&approval), plaintext: parse(&plaintext) }
    }

    fn decide(&self, c: &Call) -> Decision3 {
        let principal = EntityUid::from_str("User::\"agent\"").expect("uid");
        let resource = EntityUid::from_str(&format!("Secret::{:?}", c.secret)).expect("uid");
        let action = EntityUid::from_str(&format!("Action::{:?}", c.action)).expect("uid");
        let mut entities = vec![
            json!({"uid": {"type": "User", "id": "agent"}, "attrs": {}, "parents": c.groups.iter().map(|g| json!({"type": "Group", "id": g})).collect::<Vec<_>>()}),
            json!({"uid": {"type": "Secret", "id": c.secret}, "attrs": {"name": c.secret}, "parents": []}),
        ];
        entities.extend(c.groups.iter().map(|g| json!({"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []})));
        let entities = Entities::from_json_value(Value::Array(entities), None).expect("entities");
        let request = Request::new(principal, action, resource, Context::empty(), None).expect("request");
        let allowed = |set: &CedarSet| self.authorizer.is_authorized(&request, set, &entities).decision() == Decision::Allow;
        let verdict = if !allowed(&self.calls) {
            "deny"
        } else if allowed(&self.approval) {
            "approval-required"
        } else {
            "allow"
        };
        let mask = c.action == "secretsmanager:GetSecretValue" && !allowed(&self.plaintext);
        Decision3 { verdict, mask }
    }
}

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
            identity: Identity { issuer: "https://issuer.example".into(), subject: "agent".into(), claims: json!({"sub": "agent", "groups": c.groups}) },
            operation: Operation { service: service.into(), action: action.into(), region: "us-east-1".into(), resource: None },
            params: json!({"SecretId": c.secret}),
        };
        let req = self.set.on_request(&call);
        let verdict = match req.verdict {
            veil_gateway::policy::Verdict::Deny => "deny",
            veil_gateway::policy::Verdict::ApprovalRequired => "approval-required",
            veil_gateway::policy::Verdict::Allow => "allow",
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("target/policies"));
    let iterations: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let host = Host::new(Limits::default(), None).expect("engine");
    let mut rego = Rego::new();
    let cedar = Cedar::new();
    let veils: Vec<(&str, Veil)> =
        [("veil (Rust component)", ""), ("veil (Python component)", "python/"), ("veil (JS component)", "js/")]
            .into_iter()
            .map(|(name, prefix)| (name, Veil::new(&host, &dir, prefix)))
            .collect();

    println!("| call | engine | p50 µs | p99 µs | decision |");
    println!("|---|---|---:|---:|---|");
    let mut out = Vec::new();
    for call in calls() {
        // Every engine must reach the same decision, or the comparison is void.
        let want = rego.decide(&call);
        assert_eq!(cedar.decide(&call), want, "cedar disagrees on {}", call.label);
        let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
        let time = |f: &mut dyn FnMut() -> Decision3, before: &dyn Fn()| {
            let mut samples = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                before();
                let t = Instant::now();
                let d = f();
                samples.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(d, want, "{}", call.label);
            }
            samples.sort_by(|a, b| a.total_cmp(b));
            samples
        };
        for (name, veil) in &veils {
            rows.push((name, time(&mut || veil.decide(&call), &|| veil.ready())));
        }
        rows.push(("regorus (Rego)", time(&mut || rego.decide(&call), &|| ())));
        rows.push(("cedar-policy", time(&mut || cedar.decide(&call), &|| ())));
        for (engine, s) in rows {
            let (p50, p99) = (percentile(&s, 0.5), percentile(&s, 0.99));
            let decision = format!("{}{}", want.verdict, if want.mask { " + mask" } else { "" });
            println!("| {} | {engine} | {p50:.1} | {p99:.1} | {decision} |", call.label);
            out.push(json!({"call": call.label, "engine": engine, "p50_us": p50, "p99_us": p99}));
        }
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        std::fs::write(&path, Value::Array(out).to_string()).expect("write BENCH_JSON");
    }
}
