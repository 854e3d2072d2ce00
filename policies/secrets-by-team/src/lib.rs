//! `secrets-by-team`: secret values are visible only to the team that owns
//! them.
//!
//! The config maps group names to the name prefixes they own:
//!
//! ```json
//! {"owners": {"payments": ["prod/payments/", "/payments/"]},
//!  "admin_groups": ["secrets-admin"], "groups_claim": "groups"}
//! ```
//!
//! Secrets Manager `GetSecretValue` / `BatchGetSecretValue` values
//! (`SecretString`, `SecretBinary`) and SSM `GetParameter`, `GetParameters`,
//! `GetParametersByPath`, `GetParameterHistory` values are redacted unless one
//! of the caller's groups owns a prefix of the secret's name. Admin groups see
//! everything. The name is taken from the response (what AWS says was
//! returned), never only from the request, so an ARN or alias cannot dodge it.

use serde_json::Value;
use veil_policy_sdk::{export_policy, Config, Mask, Policy, Request, Response, ResponseDecision, Scope, Verdict};

struct SecretsByTeam;

impl Policy for SecretsByTeam {
    const NAME: &'static str = "secrets-by-team";
    const VERSION: &'static str = "1.0.0";

    /// Only the responses that carry secret values.
    fn scope(_config: &Config) -> Scope {
        let ops = [
            "secretsmanager:GetSecretValue",
            "secretsmanager:BatchGetSecretValue",
            "ssm:GetParameter",
            "ssm:GetParameters",
            "ssm:GetParametersByPath",
            "ssm:GetParameterHistory",
        ];
        Scope { on_request: Vec::new(), on_response: ops.iter().map(|o| o.to_string()).collect() }
    }

    fn on_request(_req: &Request) -> Verdict {
        Verdict::Allow
    }

    fn on_response(req: &Request, resp: &Response) -> ResponseDecision {
        let claim = req.config().get("groups_claim").and_then(Value::as_str).unwrap_or("groups");
        let groups = req.claim_list(claim);
        let admins = req.config_list("admin_groups", &["secrets-admin"]);
        if groups.iter().any(|g| admins.iter().any(|a| a == g)) {
            return ResponseDecision::allow();
        }
        let owned: Vec<String> = match req.config().get("owners") {
            None => Vec::new(),
            Some(Value::Object(owners)) => groups
                .iter()
                .filter_map(|g| owners.get(*g))
                .flat_map(|prefixes| match prefixes {
                    Value::Array(items) => items
                        .iter()
                        .map(|p| p.as_str().expect("owners: prefixes must be strings").to_string())
                        .collect::<Vec<_>>(),
                    _ => panic!("owners: each group maps to a list of prefixes"),
                })
                .collect(),
            Some(_) => panic!("config `owners` must be an object of group -> [prefix]"),
        };
        let owns = |name: &str| !name.is_empty() && owned.iter().any(|p| name.starts_with(p.as_str()));
        // Only the members that name what was returned are parsed: a secret's
        // value is skipped over, not copied into the sandbox's memory.
        let member = |key: &str| resp.body_member(key).unwrap_or(Value::Null);
        let mut masks = Vec::new();
        let mut mask_item = |prefix: String, name: &str, fields: &[&str]| {
            if !owns(name) {
                masks.extend(fields.iter().map(|f| Mask::redact(format!("{prefix}{f}"))));
            }
        };
        match (req.service(), req.action()) {
            ("secretsmanager", "GetSecretValue") => {
                let name = member("Name");
                let name = name.as_str().or(req.param_str("SecretId")).unwrap_or_default();
                mask_item(String::new(), name, &["SecretString", "SecretBinary"]);
            }
            ("secretsmanager", "BatchGetSecretValue") => {
                for (i, item) in items(&member("SecretValues")).iter().enumerate() {
                    let name = str_at(item, "Name").unwrap_or_default();
                    mask_item(format!("SecretValues[{i}]."), name, &["SecretString", "SecretBinary"]);
                }
            }
            ("ssm", "GetParameter") => {
                let parameter = member("Parameter");
                let name = str_at(&parameter, "Name").or(req.param_str("Name")).unwrap_or_default();
                mask_item("Parameter.".to_string(), name, &["Value"]);
            }
            ("ssm", "GetParameters" | "GetParametersByPath" | "GetParameterHistory") => {
                let fallback = req.param_str("Name").unwrap_or_default();
                for (i, item) in items(&member("Parameters")).iter().enumerate() {
                    let name = str_at(item, "Name").unwrap_or(fallback);
                    mask_item(format!("Parameters[{i}]."), name, &["Value"]);
                }
            }
            _ => {}
        }
        ResponseDecision::masks(masks)
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

export_policy!(SecretsByTeam);
