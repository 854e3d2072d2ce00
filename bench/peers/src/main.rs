//! Policy evaluation side by side, peers' half: regorus (Rego) and
//! cedar-policy deciding the rules and calls of `calls.rs`; Veil's
//! components decide the same calls in the gateway's `policy_decisions`
//! example (see `calls.rs` for why they are two programs). Cedar answers
//! allow/deny only, so its decision is three authorisation queries (call
//! forbidden? approval needed? plaintext allowed?), each policy set written
//! the idiomatic Cedar way.
//!
//! Usage: `veil-bench-peers [iterations]` (from `make bench`); prints
//! Markdown table rows; with `BENCH_JSON=<file>` also writes them as JSON.

mod calls;

use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet as CedarSet, Request};
use serde_json::{json, Value};

use calls::{calls, row, time, write_json, Call, Decision3, APPROVAL, DENY, OWNERS};

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

fn main() {
    let iterations = calls::iterations(1);
    let mut rego = Rego::new();
    let cedar = Cedar::new();
    let mut out = Vec::new();
    for call in calls() {
        let samples = time(&call, iterations, &mut || rego.decide(&call), &|| ());
        out.push(row(&call, "regorus (Rego)", &samples));
        let samples = time(&call, iterations, &mut || cedar.decide(&call), &|| ());
        out.push(row(&call, "cedar-policy", &samples));
    }
    write_json(out);
}
