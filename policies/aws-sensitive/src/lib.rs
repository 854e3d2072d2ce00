//! `aws-sensitive`: the default masking of every AWS response.
//!
//! Three layers, each producing masks over the JSON view of the response:
//! 1. every output the service models mark `sensitive` (generated from
//!    botocore by `generate.py` into `generated.rs`);
//! 2. the secrets the models miss (`curated.rs`, each with its source);
//! 3. detectors for well-known secret formats in any string (`detect.rs`).
//!
//! Secrets are redacted; identifiers an analyst needs to correlate (access
//! key ids) are hashed. Config `exceptions` lets claims see plaintext:
//! `{"exceptions": [{"group": "secrets-admin", "services": ["secretsmanager"], "prefix": "prod/payments/"}]}`
//! — every field but `group` optional; `prefix` matches the call's resource.

mod curated;
mod detect;
mod generated;

use serde_json::Value;
use veil_policy_sdk::{export_policy, Config, Mask, MaskStyle, Policy, Request, Response, ResponseDecision, Scope, Verdict};

/// Beyond this many masks, mask the whole response instead.
const MAX_OWN_MASKS: usize = 9_000;

struct AwsSensitive;

impl Policy for AwsSensitive {
    const NAME: &'static str = "aws-sensitive";
    const VERSION: &'static str = "1.0.0";

    /// Every response; requests need no decision.
    fn scope(_config: &Config) -> Scope {
        Scope { on_request: Vec::new(), on_response: vec!["*".into()] }
    }

    fn on_request(_req: &Request) -> Verdict {
        Verdict::Allow
    }

    fn on_response(req: &Request, resp: &Response) -> ResponseDecision {
        if exception_applies(req) {
            return ResponseDecision::allow();
        }
        let (service, action) = (req.service(), req.action());
        let mut masks: Vec<Mask> = Vec::new();
        match curated::ssm_items(service, action) {
            Some(field) => mask_secure_strings(resp.body(), field, &mut masks),
            None => masks.extend(generated::model_selectors(service, action).iter().map(|s| Mask::redact(*s))),
        }
        masks.extend(curated::selectors(service, action).iter().map(|(s, style)| Mask { path: s.to_string(), style: *style }));
        let mut path = String::new();
        scan(resp.body(), "", &mut path, &mut masks);
        if masks.len() > MAX_OWN_MASKS {
            return ResponseDecision::masks(vec![Mask::redact("**")]);
        }
        ResponseDecision::masks(masks)
    }
}

fn exception_applies(req: &Request) -> bool {
    let Some(Value::Array(rules)) = req.config().get("exceptions") else { return false };
    let groups = req.groups();
    rules.iter().any(|rule| {
        let Some(group) = rule.get("group").and_then(Value::as_str) else {
            panic!("aws-sensitive: every exception needs a `group`")
        };
        let services_ok = match rule.get("services").and_then(Value::as_array) {
            Some(list) => list.iter().any(|s| s.as_str() == Some(req.service())),
            None => true,
        };
        let prefix_ok = match rule.get("prefix").and_then(Value::as_str) {
            Some(p) => req.resource.as_deref().is_some_and(|r| r.starts_with(p)),
            None => true,
        };
        groups.contains(&group) && services_ok && prefix_ok
    })
}

/// SSM values are masked when the parameter is a SecureString.
fn mask_secure_strings(body: &Value, field: &str, masks: &mut Vec<Mask>) {
    let secure = |p: &Value| p.get("Type").and_then(Value::as_str) != Some("String") && p.get("Type").and_then(Value::as_str) != Some("StringList");
    match body.get(field) {
        Some(Value::Array(items)) => {
            for (i, p) in items.iter().enumerate() {
                if secure(p) {
                    masks.push(Mask::redact(format!("{field}[{i}].Value")));
                }
            }
        }
        Some(p @ Value::Object(_)) if secure(p) => masks.push(Mask::redact(format!("{field}.Value"))),
        _ => {}
    }
}

fn quoted(key: &str) -> String {
    let mut s = String::with_capacity(key.len() + 2);
    s.push('"');
    for c in key.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Run the detectors over every string, recording the path of each finding.
fn scan(v: &Value, key: &str, path: &mut String, masks: &mut Vec<Mask>) {
    match v {
        Value::String(s) => {
            if let Some(f) = detect::scan(key, s) {
                let style = match f {
                    detect::Finding::AccessKeyId => MaskStyle::Hash,
                    detect::Finding::Secret => MaskStyle::Redact,
                };
                if !path.is_empty() {
                    masks.push(Mask { path: path.clone(), style });
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                scan(item, key, path, masks);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            // Environment-style lists: {"name": "DB_PASSWORD", "value": "..."}.
            let named = map.get("name").or_else(|| map.get("Name")).or_else(|| map.get("Key")).or_else(|| map.get("key")).and_then(Value::as_str);
            for (k, child) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&quoted(k));
                let effective = match (k.as_str(), named) {
                    ("value" | "Value", Some(n)) => n,
                    _ => k.as_str(),
                };
                scan(child, effective, path, masks);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

export_policy!(AwsSensitive);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_table_is_not_empty() {
        assert!(generated::OPERATIONS > 1000);
        assert!(generated::ALL.iter().all(|(s, a)| !generated::model_selectors(s, a).is_empty()));
    }
}
