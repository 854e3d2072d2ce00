//! Who may use which role: per-role trust conditions on the validated
//! token's claims, in the shape of an IAM trust policy's `Condition` block.
//!
//! ```toml
//! [[roles]]
//! arn = "arn:aws:iam::123456789012:role/deploy"
//! credentials = "deploy"
//! issuers = ["https://token.actions.githubusercontent.com"]
//! [roles.conditions.StringEquals]
//! repository_owner = "my-org"
//! [roles.conditions.StringLike]
//! sub = "repo:my-org/*:ref:refs/heads/main"
//! ```
//!
//! Every operator must hold, every claim under it must hold, and a list of
//! values is any-of (as IAM evaluates conditions). Claims are named by path
//! (`kubernetes.io.serviceaccount.name`; a key that itself contains dots is
//! found whole). Fail closed: a missing claim fails every operator, the
//! negated ones included (IAM's `StringNotEquals` matches a missing key;
//! Veil's does not), and a single-valued operator fails on a list claim.
//!
//! Invariants: a role without conditions must say so
//! (`trust = "any-token-of-these-issuers"`), and a role trusting a known
//! multi-tenant public issuer (GitHub Actions, GitLab.com, Google …) must
//! have a positive condition pinning a claim that names the tenant, with
//! exact values or globs whose tenant part is spelled out. Checked when the
//! config is loaded, before any issuer is contacted.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use crate::policy::host::truncate;
use crate::policy::Identity;

/// The trust a role declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum TrustMode {
    /// Only tokens that meet `[roles.conditions]` (the default).
    #[default]
    #[serde(rename = "conditions")]
    Conditions,
    /// Any valid token of the role's issuers (never a multi-tenant public one).
    #[serde(rename = "any-token-of-these-issuers")]
    AnyToken,
}

/// One or several values of a condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Values {
    /// One value.
    One(String),
    /// Any of these.
    Many(Vec<String>),
}

impl Values {
    fn into_vec(self) -> Vec<String> {
        match self {
            Values::One(v) => vec![v],
            Values::Many(v) => v,
        }
    }
}

/// `[roles.conditions]`: operator → claim path → value(s).
pub type ConditionsConfig = BTreeMap<String, BTreeMap<String, Values>>;

/// Condition operators (IAM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The claim equals one of the values.
    StringEquals,
    /// The claim matches one of the globs (`*` any run, `?` one character).
    StringLike,
    /// The claim is present and equals none of the values.
    StringNotEquals,
    /// The claim is present and matches none of the globs.
    StringNotLike,
    /// Some element of the claim (a list, or one value) equals one of the values.
    AnyEquals,
    /// Some element of the claim matches one of the globs.
    AnyLike,
}

impl Op {
    const ALL: &'static [(&'static str, Op)] = &[
        ("StringEquals", Op::StringEquals),
        ("StringLike", Op::StringLike),
        ("StringNotEquals", Op::StringNotEquals),
        ("StringNotLike", Op::StringNotLike),
        ("ForAnyValue:StringEquals", Op::AnyEquals),
        ("ForAnyValue:StringLike", Op::AnyLike),
    ];

    fn parse(name: &str) -> Option<Op> {
        Op::ALL.iter().find(|(n, _)| *n == name).map(|(_, op)| *op)
    }

    fn name(self) -> &'static str {
        Op::ALL.iter().find(|(_, op)| *op == self).map_or("?", |(n, _)| n)
    }

    fn globs(self) -> bool {
        matches!(self, Op::StringLike | Op::StringNotLike | Op::AnyLike)
    }

    fn positive(self) -> bool {
        !matches!(self, Op::StringNotEquals | Op::StringNotLike)
    }
}

/// One checked condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    op: Op,
    claim: String,
    values: Vec<String>,
}

impl std::fmt::Display for Condition {
    /// `StringLike sub ["repo:my-org/*"]`: how refusals and audit records name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.op.name(), self.claim, self.values)
    }
}

impl Condition {
    fn holds(&self, claims: &Value) -> bool {
        let Some(v) = claim_at(claims, &self.claim) else { return false };
        let matches = |text: &str| self.values.iter().any(|want| if self.op.globs() { glob(want, text) } else { want == text });
        match self.op {
            Op::StringEquals | Op::StringLike => scalar(v).is_some_and(|t| matches(&t)),
            Op::StringNotEquals | Op::StringNotLike => scalar(v).is_some_and(|t| !matches(&t)),
            Op::AnyEquals | Op::AnyLike => match v {
                Value::Array(items) => items.iter().filter_map(scalar).any(|t| matches(&t)),
                other => scalar(other).is_some_and(|t| matches(&t)),
            },
        }
    }
}

/// A claim value as IAM compares it: strings as they are, numbers and
/// booleans as their JSON text; lists, objects and null are not scalars.
fn scalar(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    }
}

/// The claim at `path`: a key equal to the rest of the path wins, else the
/// path splits at a dot (`kubernetes.io.serviceaccount.name` reaches
/// `{"kubernetes.io": {"serviceaccount": {"name": …}}}`).
pub fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    let obj = claims.as_object()?;
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    path.match_indices('.').find_map(|(i, _)| obj.get(&path[..i]).and_then(|inner| claim_at(inner, &path[i + 1..])))
}

/// `*` matches any run of characters, `?` exactly one; nothing else is special.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] == t[ti] && p[pi] != '*')) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Known multi-tenant public issuers: anyone can obtain a token from them,
/// so a role trusting one must pin a claim naming the tenant (one of these).
pub const PUBLIC_ISSUERS: &[(&str, &[&str])] = &[
    ("https://token.actions.githubusercontent.com", &["sub", "repository", "repository_owner", "repository_owner_id", "repository_id"]),
    ("https://gitlab.com", &["sub", "project_path", "project_id", "namespace_path", "namespace_id"]),
    ("https://accounts.google.com", &["sub", "email", "hd"]),
    ("https://app.terraform.io", &["sub", "terraform_organization_name", "terraform_organization_id"]),
    ("https://agent.buildkite.com", &["sub", "organization_slug", "organization_id"]),
    ("https://oauth2.sigstore.dev/auth", &["sub", "email"]),
    ("https://cognito-identity.amazonaws.com", &["sub", "aud"]),
];

fn public_issuer(issuer: &str) -> Option<&'static [&'static str]> {
    let issuer = issuer.trim_end_matches('/');
    PUBLIC_ISSUERS.iter().find(|(i, _)| *i == issuer).map(|(_, claims)| *claims)
}

/// Whether a condition pins the tenant: a positive operator on a tenant
/// claim whose values are exact, or globs whose first wildcard comes after
/// a `/` (`repo:my-org/*`: the owner is spelled out).
fn pins_tenant(c: &Condition, tenant_claims: &[&str]) -> bool {
    c.op.positive()
        && tenant_claims.contains(&c.claim.as_str())
        && c.values.iter().all(|v| match v.find(['*', '?']) {
            None => true,
            // The owner before the first `/` (after any `repo:`-style
            // prefix) is spelled out in full.
            Some(first) => {
                c.op.globs() && v[..first].find('/').is_some_and(|slash| v[..slash].rsplit(':').next().is_some_and(|owner| !owner.is_empty()))
            }
        })
}

/// A role as the gateway enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Its ARN.
    pub arn: String,
    /// The upstream credential it maps to.
    pub credentials: String,
    /// Issuers whose tokens it trusts (trailing `/` trimmed).
    issuers: Vec<String>,
    mode: TrustMode,
    conditions: Vec<Condition>,
}

/// Why a caller may not use a role.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// No such role.
    #[error("role {0:?} is not configured in this gateway")]
    UnknownRole(String),
    /// The token's issuer is not one the role trusts.
    #[error("role {role} does not trust tokens of issuer {issuer}")]
    Issuer { role: String, issuer: String },
    /// A condition failed.
    #[error("role {role}: condition {condition} is not met")]
    Condition { role: String, condition: String },
}

/// Every role, by ARN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    by_arn: HashMap<String, Role>,
}

impl Roles {
    /// Check `[[roles]]` against the configured issuers; errors name the key.
    pub fn from_config(roles: &[crate::config::RoleConfig], issuers: &[String]) -> Result<Roles, (String, String)> {
        let configured: Vec<String> = issuers.iter().map(|i| i.trim_end_matches('/').to_string()).collect();
        let mut by_arn = HashMap::new();
        for (i, r) in roles.iter().enumerate() {
            let key = |k: &str| format!("roles[{i}].{k}");
            let trusted: Vec<String> = if r.issuers.is_empty() {
                configured.clone()
            } else {
                let mut out = Vec::new();
                for (j, iss) in r.issuers.iter().enumerate() {
                    let iss = iss.trim_end_matches('/');
                    if !configured.iter().any(|c| c == iss) {
                        return Err((key(&format!("issuers[{j}]")), format!("{iss:?} is not one of [[identity.issuers]]")));
                    }
                    out.push(iss.to_string());
                }
                out
            };
            let mut conditions = Vec::new();
            for (op_name, claims) in &r.conditions {
                let op = Op::parse(op_name).ok_or_else(|| {
                    let known: Vec<&str> = Op::ALL.iter().map(|(n, _)| *n).collect();
                    (key(&format!("conditions.{op_name}")), format!("unknown condition operator; use one of {}", known.join(", ")))
                })?;
                if claims.is_empty() {
                    return Err((key(&format!("conditions.{op_name}")), "names no claim".into()));
                }
                for (claim, values) in claims {
                    let at = key(&format!("conditions.{op_name}.{claim}"));
                    if claim.is_empty() || claim.len() > 256 || claim.split('.').any(str::is_empty) || claim.chars().any(char::is_control) {
                        return Err((at, "is not a claim path (names separated by single dots, e.g. kubernetes.io.serviceaccount.name)".into()));
                    }
                    let values = values.clone().into_vec();
                    if values.is_empty() {
                        return Err((at, "lists no value".into()));
                    }
                    for v in &values {
                        if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
                            return Err((at, format!("value {:?} must be 1-1024 characters without control characters", truncate(v, 64))));
                        }
                        if op.globs() && v.contains(['[', ']', '{', '}']) {
                            return Err((at, format!("glob {:?}: only * (any run) and ? (one character) are wildcards", truncate(v, 64))));
                        }
                    }
                    conditions.push(Condition { op, claim: claim.clone(), values });
                }
            }
            match (r.trust, conditions.is_empty()) {
                (TrustMode::Conditions, true) => {
                    return Err((
                        key("conditions"),
                        format!(
                            "role {} has no trust conditions, so any token of its issuers could use it: add [roles.conditions] \
                             (e.g. StringEquals = {{ sub = \"...\" }}) or say trust = \"any-token-of-these-issuers\"",
                            r.arn
                        ),
                    ))
                }
                (TrustMode::AnyToken, false) => {
                    return Err((key("trust"), "\"any-token-of-these-issuers\" takes no [roles.conditions]; remove one or the other".into()))
                }
                _ => {}
            }
            for iss in &trusted {
                if let Some(tenant) = public_issuer(iss) {
                    if !conditions.iter().any(|c| pins_tenant(c, tenant)) {
                        return Err((
                            key("conditions"),
                            format!(
                                "role {} trusts {iss}, which issues tokens to anyone: add a condition pinning one of the claims {} \
                                 to your own tenant (exact values, or a glob like \"repo:my-org/*\"), or restrict roles[{i}].issuers",
                                r.arn,
                                tenant.join(", ")
                            ),
                        ));
                    }
                }
            }
            let role = Role { arn: r.arn.clone(), credentials: r.credentials.clone(), issuers: trusted, mode: r.trust, conditions };
            if by_arn.insert(r.arn.clone(), role).is_some() {
                return Err((key("arn"), "is configured twice".into()));
            }
        }
        Ok(Roles { by_arn })
    }

    /// How many roles there are.
    pub fn len(&self) -> usize {
        self.by_arn.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_arn.is_empty()
    }

    /// The one role, when exactly one is configured.
    pub fn only(&self) -> Option<&Role> {
        (self.by_arn.len() == 1).then(|| self.by_arn.values().next()).flatten()
    }

    /// Whether `identity` may use `role`: the role, and what admitted it.
    pub fn admit(&self, role: &str, identity: &Identity) -> Result<(&Role, String), TrustError> {
        let r = self.by_arn.get(role).ok_or_else(|| TrustError::UnknownRole(truncate(role, 256).to_string()))?;
        let issuer = identity.issuer.trim_end_matches('/');
        if !r.issuers.iter().any(|i| i == issuer) {
            return Err(TrustError::Issuer { role: r.arn.clone(), issuer: issuer.to_string() });
        }
        if r.mode == TrustMode::AnyToken {
            return Ok((r, format!("any token of {issuer}")));
        }
        match r.conditions.iter().find(|c| !c.holds(&identity.claims)) {
            Some(failed) => Err(TrustError::Condition { role: r.arn.clone(), condition: failed.to_string() }),
            None => Ok((r, r.conditions.iter().map(Condition::to_string).collect::<Vec<_>>().join(" and "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoleConfig;
    use serde_json::json;

    const ISS: &str = "https://idp.example.com";
    const GH: &str = "https://token.actions.githubusercontent.com";

    fn role(toml_text: &str) -> RoleConfig {
        toml::from_str(&format!("arn = \"arn:aws:iam::1:role/r\"\ncredentials = \"c\"\n{toml_text}")).unwrap()
    }

    fn roles(toml_text: &str) -> Result<Roles, (String, String)> {
        Roles::from_config(&[role(toml_text)], &[ISS.into(), GH.into()])
    }

    fn who(issuer: &str, claims: Value) -> Identity {
        Identity::new(issuer, claims["sub"].as_str().unwrap_or("").to_string(), claims)
    }

    #[test]
    fn conditions_combine_as_iam_does() {
        let r = roles(
            r#"issuers = ["https://idp.example.com"]
[conditions.StringLike]
sub = ["agent-*", "bot-?"]
[conditions."ForAnyValue:StringEquals"]
groups = ["deployers", "sre"]
[conditions.StringEquals]
"kubernetes.io.serviceaccount.name" = "deployer"
"#,
        )
        .unwrap();
        let ok = json!({"sub": "agent-7", "groups": ["x", "sre"], "kubernetes.io": {"serviceaccount": {"name": "deployer"}}});
        let (_, because) = r.admit("arn:aws:iam::1:role/r", &who(ISS, ok.clone())).unwrap();
        assert!(because.contains("StringLike sub"), "{because}");
        let mut bad = ok.clone();
        bad["sub"] = json!("bot-12");
        assert!(matches!(r.admit("arn:aws:iam::1:role/r", &who(ISS, bad)), Err(TrustError::Condition { condition, .. }) if condition.starts_with("StringLike sub")));
        let mut bad = ok.clone();
        bad["groups"] = json!(["x"]);
        assert!(r.admit("arn:aws:iam::1:role/r", &who(ISS, bad)).is_err());
        let mut bad = ok.clone();
        bad.as_object_mut().unwrap().remove("kubernetes.io");
        assert!(r.admit("arn:aws:iam::1:role/r", &who(ISS, bad)).is_err(), "a missing claim fails");
        assert!(matches!(r.admit("arn:aws:iam::1:role/r", &who(GH, ok.clone())), Err(TrustError::Issuer { .. })));
        assert!(matches!(r.admit("arn:aws:iam::1:role/other", &who(ISS, ok)), Err(TrustError::UnknownRole(_))));
    }

    #[test]
    fn negated_operators_fail_closed_on_missing_claims() {
        let r = roles("issuers = [\"https://idp.example.com\"]\n[conditions.StringNotEquals]\nsub = \"root\"\n[conditions.StringEquals]\naud = \"veil\"\n").unwrap();
        assert!(r.admit("arn:aws:iam::1:role/r", &who(ISS, json!({"sub": "a", "aud": "veil"}))).is_ok());
        assert!(r.admit("arn:aws:iam::1:role/r", &who(ISS, json!({"sub": "root", "aud": "veil"}))).is_err());
        assert!(r.admit("arn:aws:iam::1:role/r", &who(ISS, json!({"aud": "veil"}))).is_err());
        // A single-valued operator does not match inside a list.
        assert!(r.admit("arn:aws:iam::1:role/r", &who(ISS, json!({"sub": "a", "aud": ["veil"]}))).is_err());
    }

    #[test]
    fn roles_must_state_their_trust() {
        let (key, reason) = roles("").unwrap_err();
        assert_eq!(key, "roles[0].conditions");
        assert!(reason.contains("any-token-of-these-issuers"), "{reason}");
        // Any token: fine for a private issuer, never for a public one.
        assert!(roles("trust = \"any-token-of-these-issuers\"\nissuers = [\"https://idp.example.com\"]").is_ok());
        let (key, reason) = roles("trust = \"any-token-of-these-issuers\"").unwrap_err();
        assert_eq!(key, "roles[0].conditions");
        assert!(reason.contains(GH) && reason.contains("repository_owner"), "{reason}");
        assert!(roles("trust = \"any-token-of-these-issuers\"\n[conditions.StringEquals]\nsub = \"a\"").is_err());
    }

    #[test]
    fn public_issuers_need_the_tenant_pinned() {
        let gh = |cond: &str| roles(&format!("issuers = [\"{GH}\"]\n{cond}"));
        assert!(gh("[conditions.StringLike]\nsub = \"repo:my-org/*:ref:refs/heads/main\"").is_ok());
        assert!(gh("[conditions.StringEquals]\nrepository_owner = \"my-org\"").is_ok());
        for loose in [
            "[conditions.StringLike]\nsub = \"repo:*\"",
            "[conditions.StringLike]\nsub = \"*\"",
            "[conditions.StringLike]\nsub = \"repo:my-org*\"",
            "[conditions.StringNotEquals]\nrepository_owner = \"evil\"",
            "[conditions.StringEquals]\nref = \"refs/heads/main\"",
            "[conditions.StringLike]\nsub = [\"repo:my-org/*\", \"repo:*\"]",
        ] {
            let (key, _) = gh(loose).unwrap_err();
            assert_eq!(key, "roles[0].conditions", "{loose}");
        }
    }

    #[test]
    fn bad_conditions_name_the_key() {
        for (text, key) in [
            ("[conditions.StringMaybe]\nsub = \"a\"", "roles[0].conditions.StringMaybe"),
            ("[conditions.StringLike]\nsub = \"repo:[ab]\"", "roles[0].conditions.StringLike.sub"),
            ("[conditions.StringEquals]\n\"a..b\" = \"x\"", "roles[0].conditions.StringEquals.a..b"),
            ("[conditions.StringEquals]\n\".sub\" = \"x\"", "roles[0].conditions.StringEquals..sub"),
            ("[conditions.StringEquals]\nsub = []", "roles[0].conditions.StringEquals.sub"),
            ("issuers = [\"https://other\"]\n[conditions.StringEquals]\nsub = \"a\"", "roles[0].issuers[0]"),
        ] {
            assert_eq!(roles(text).unwrap_err().0, key, "{text}");
        }
    }

    #[test]
    fn globs_match_whole_values() {
        assert!(glob("repo:org/*:ref:refs/heads/main", "repo:org/app:ref:refs/heads/main"));
        assert!(!glob("repo:org/*:ref:refs/heads/main", "repo:org/app:ref:refs/heads/main2"));
        assert!(glob("a?c", "abc") && !glob("a?c", "abbc"));
        assert!(glob("*", "") && glob("**", "x"));
        assert!(!glob("repo:org/*", "repo:orgx/app"));
    }
}
