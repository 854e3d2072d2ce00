//! `aws-sensitive`: the default masking of every AWS response.
//!
//! Two layers, each producing masks over the JSON view of the response:
//! 1. the selectors `generate.py` writes into `generated.rs` from botocore's
//!    models, in each protocol's wire names: every output the models mark
//!    `sensitive`, the secrets they miss (its curated list, each entry with
//!    its source) and every environment variable's value; SSM parameter
//!    values are masked per item by a filter on its type (the host selects;
//!    the policy never parses the body);
//! 2. the gateway's detectors for well-known secret formats in any string
//!    (`Response::findings`: the host scans natively, so a large body costs
//!    no guest time to walk).
//!
//! Secrets are redacted; identifiers an analyst needs to correlate (access
//! key ids) are hashed. Config `exceptions` lets claims see plaintext:
//! `{"exceptions": [{"group": "secrets-admin", "services": ["secretsmanager"], "prefix": "prod/payments/"}]}`
//! — every field but `group` optional; `prefix` matches the call's resource.

mod generated;

use serde_json::Value;
use veil_policy_sdk::{export_policy, Config, Mask, Policy, Request, Response, ResponseDecision, Scope, Verdict};

/// Beyond this many masks, mask the whole response instead.
const MAX_OWN_MASKS: usize = 9_000;

struct AwsSensitive;

impl Policy for AwsSensitive {
    const NAME: &'static str = "aws-sensitive";
    const VERSION: &'static str = "1.3.0";

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
        match ssm_items(service, action) {
            Some(field) => masks.push(Mask::redact(format!(r#"{field}[?Type!="String"][?Type!="StringList"].Value"#))),
            None => masks.extend(generated::selectors(service, action).iter().map(|(s, style)| Mask { path: s.to_string(), style: *style })),
        }
        masks.extend(resp.findings().iter().map(|f| f.mask()));
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

/// SSM parameter values are secret only when their type is SecureString
/// (ssm API, Parameter.Type): these operations are masked per item by type
/// instead of by the model's blanket `sensitive` trait. Fail safe: a
/// parameter whose type is missing or unknown is masked.
fn ssm_items(service: &str, action: &str) -> Option<&'static str> {
    match (service, action) {
        ("ssm", "GetParameter") => Some("Parameter"),
        ("ssm", "GetParameters" | "GetParametersByPath" | "GetParameterHistory") => Some("Parameters"),
        _ => None,
    }
}

export_policy!(AwsSensitive);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_table_is_sorted_and_every_entry_found() {
        let table = generated::TABLE;
        assert!(table.len() > 1000);
        assert!(table.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)), "the table must be sorted for the binary search");
        assert!(table.iter().all(|(s, a, sels)| !sels.is_empty() && generated::selectors(s, a) == *sels));
        assert!(generated::selectors("secretsmanager", "GetSecretValue").iter().any(|(p, _)| *p == "SecretString"));
        assert!(generated::selectors("secretsmanager", "NoSuchAction").is_empty());
        assert!(generated::selectors("", "").is_empty());
    }
}
