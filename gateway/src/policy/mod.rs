//! Policy evaluation: runs every loaded policy's hooks and combines their
//! answers into one decision.
//!
//! Invariants (fail closed): no policy loaded → deny; any policy that traps,
//! times out, hits its memory cap, waits, returns a selector that does not
//! parse or too many masks → deny naming the policy and the cause (with what
//! it printed last: a panic message, a traceback, redacted and escaped, see
//! [`output`]). Verdicts combine as deny > approval-required > allow; masks
//! are the union. What hooks printed comes with the decision, redacted and
//! rate-limited per policy, for the caller of the set to log.

pub mod cache;
pub mod host;
pub mod output;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::doc::Tree;
use crate::masking::{Mask, MaskStyle, Selector};
pub use host::{Compiled, Hooked, Host, HookError, Limits, LoadError, Warm, MAX_KEPT_HANDLES, MAX_USES, WARM_TOTAL};
use host::{truncate, wit};
pub use output::{PolicyOutput, Printed};

/// Most masks one policy may return for one response.
pub const MAX_MASKS: usize = 10_000;
/// Longest reason kept from a policy, in bytes.
pub const MAX_REASON: usize = 1024;

/// Who is calling: made once per verified token or session and shared by
/// its calls (a clone is a reference count), with what every hook call needs
/// of it worked out once.
#[derive(Debug, Clone)]
pub struct Identity(Arc<Caller>);

/// What an [`Identity`] holds.
#[derive(Debug)]
pub struct Caller {
    /// Token issuer.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// All claims.
    pub claims: Value,
    /// `claims` as the JSON text policies get.
    claims_json: String,
    /// Which warm policy instances are this caller's ([`host::Warm`]): the
    /// issuer and subject, length-prefixed so that no two pairs share a key.
    key: String,
}

impl Identity {
    /// The identity of `subject` at `issuer`, with all its claims.
    pub fn new(issuer: impl Into<String>, subject: impl Into<String>, claims: Value) -> Identity {
        let (issuer, subject) = (issuer.into(), subject.into());
        let key = format!("{}:{issuer}:{subject}", issuer.len());
        Identity(Arc::new(Caller { claims_json: claims.to_string(), issuer, subject, claims, key }))
    }
}

impl std::ops::Deref for Identity {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.0
    }
}

/// Which AWS operation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Operation {
    /// Signing name, `secretsmanager`.
    pub service: String,
    /// Operation name, `GetSecretValue`.
    pub action: String,
    /// Region.
    pub region: String,
    /// Main resource, when known.
    pub resource: Option<String>,
}

impl Operation {
    /// `service:action`, lowercased: what scope patterns match.
    pub fn qualified(&self) -> String {
        format!("{}:{}", self.service, self.action).to_ascii_lowercase()
    }

    /// Parse `service:Action` (region `us-east-1`).
    pub fn parse_qualified(text: &str) -> Option<Operation> {
        let (service, action) = text.split_once(':')?;
        if service.is_empty() || action.is_empty() {
            return None;
        }
        Some(Operation {
            service: service.to_ascii_lowercase(),
            action: action.to_string(),
            region: "us-east-1".into(),
            resource: None,
        })
    }
}

/// A call as the policies see it.
#[derive(Debug, Clone)]
pub struct CallInput {
    /// The caller.
    pub identity: Identity,
    /// The operation.
    pub operation: Operation,
    /// Request parameters as JSON.
    pub params: Value,
}

/// The combined verdict, ordered from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every policy allowed.
    Allow,
    /// At least one policy wants a human's approval, none denied.
    ApprovalRequired,
    /// At least one policy denied or failed.
    Deny,
}

/// One policy's reason for a verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reason {
    /// The policy's name (or file, when it failed before it had one).
    pub policy: String,
    /// What it said, or why it failed.
    pub message: String,
}

impl std::fmt::Display for Reason {
    /// `policy: message`, as errors and audit records show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.policy, self.message)
    }
}

/// The combined decision on a request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestDecision {
    /// Most restrictive verdict.
    pub verdict: Verdict,
    /// Reasons of every policy that did not allow.
    pub reasons: Vec<Reason>,
    /// What hooks printed, to be logged with the call ([`output::log`]).
    pub output: Vec<PolicyOutput>,
}

/// The combined decision on a response.
#[derive(Debug, Clone)]
pub struct ResponseDecision {
    /// Reasons to withhold the response; empty means pass (masked).
    pub deny: Vec<Reason>,
    /// Union of every policy's masks.
    pub masks: Vec<Mask>,
    /// What hooks printed, to be logged with the call ([`output::log`]).
    pub output: Vec<PolicyOutput>,
}

/// What an audit record says about a policy that decided a call.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the component file.
    pub sha256: String,
}

/// Most patterns one hook's scope may list.
pub const MAX_SCOPE_PATTERNS: usize = 1000;
/// Longest scope pattern, in bytes.
pub const MAX_SCOPE_PATTERN: usize = 256;

/// The operations one hook runs for: `service:Action` patterns, `*` matching
/// any run of characters, ASCII case ignored. Kept lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookScope(Vec<String>);

impl HookScope {
    /// Every operation (the scope of a plain `policy` component).
    pub fn all() -> Self {
        HookScope(vec!["*".into()])
    }

    fn parse(hook: &str, patterns: Vec<String>) -> Result<Self, String> {
        if patterns.len() > MAX_SCOPE_PATTERNS {
            return Err(format!("scope lists {} {hook} patterns, more than the limit of {MAX_SCOPE_PATTERNS}", patterns.len()));
        }
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            if p.is_empty() || p.len() > MAX_SCOPE_PATTERN || p.chars().any(char::is_control) {
                return Err(format!(
                    "scope {hook} pattern {:?} must be 1-{MAX_SCOPE_PATTERN} bytes without control characters",
                    truncate(&p, 80)
                ));
            }
            out.push(p.to_ascii_lowercase());
        }
        Ok(HookScope(out))
    }

    /// Whether the hook runs for `qualified` (`service:action`, lowercased).
    fn matches(&self, qualified: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), qualified.as_bytes()))
    }
}

impl std::fmt::Display for HookScope {
    /// The patterns, comma-separated; `(none)` when the hook never runs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        f.write_str(&self.0.join(", "))
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with one backtrack point: linear in practice, never exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A policy ready to run, with its configuration.
pub struct LoadedPolicy {
    /// The compiled component.
    pub compiled: Compiled,
    /// Its configuration as JSON text.
    pub config_json: String,
    /// Operations its `on-request` runs for.
    pub on_request: HookScope,
    /// Operations its `on-response` runs for.
    pub on_response: HookScope,
    /// Its instances kept warm for their callers: per configuration, so a
    /// policy that remembers its configuration never sees another's.
    pub warm: Warm,
}

impl LoadedPolicy {
    /// Pair a compiled policy with its configuration and ask the policy
    /// which calls its hooks need (`scope`); an error names the cause.
    pub fn new(compiled: Compiled, config_json: String) -> Result<Self, String> {
        let (on_request, on_response) = match compiled.scope(&config_json).explained().map_err(|e| format!("scope {e}"))? {
            None => (HookScope::all(), HookScope::all()),
            Some(s) => (HookScope::parse("on-request", s.on_request)?, HookScope::parse("on-response", s.on_response)?),
        };
        Ok(LoadedPolicy { compiled, config_json, on_request, on_response, warm: Warm::default() })
    }

    /// Audit reference.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef {
            name: self.compiled.name.clone(),
            version: self.compiled.version.clone(),
            sha256: self.compiled.sha256.clone(),
        }
    }
}

/// An immutable set of policies that decide calls together.
#[derive(Default, Clone)]
pub struct PolicySet {
    policies: Vec<Arc<LoadedPolicy>>,
    /// Outputs as printed, every one (see [`PolicySet::for_authors`]).
    authors: bool,
}

impl PolicySet {
    /// A set from loaded policies, in evaluation order.
    pub fn new(policies: Vec<Arc<LoadedPolicy>>) -> Self {
        PolicySet { policies, authors: false }
    }

    /// The set as `veil policy eval|test` runs it, the author's debugging
    /// loop on the author's own inputs: decisions carry every output as it
    /// was printed, neither redacted nor rate-limited. Deny reasons are
    /// redacted as in the gateway.
    pub fn for_authors(mut self) -> Self {
        self.authors = true;
        self
    }

    /// What a hook printed, as the decision carries it; `None` when it
    /// printed nothing or the policy's log allowance is spent.
    fn output<'a>(&self, p: &LoadedPolicy, hook: &'static str, printed: Option<&Printed>, params: &Value, body: Option<impl Tree<'a>>) -> Option<PolicyOutput> {
        let printed = printed?;
        let (text, suppressed) = if self.authors {
            (printed.text.clone(), 0)
        } else {
            (output::redact(&printed.text, params, body), p.compiled.output_budget().admit()?)
        };
        Some(PolicyOutput { policy: p.compiled.name.clone(), hook, text, dropped_bytes: printed.dropped, suppressed })
    }

    /// The policies, in order.
    pub fn policies(&self) -> &[Arc<LoadedPolicy>] {
        &self.policies
    }

    /// Audit references of every policy in the set.
    pub fn references(&self) -> Vec<PolicyRef> {
        self.policies.iter().map(|p| p.reference()).collect()
    }

    fn wit_call(call: &CallInput) -> wit::Call {
        wit::Call {
            identity: wit::Identity {
                issuer: call.identity.issuer.clone(),
                subject: call.identity.subject.clone(),
                claims_json: call.identity.claims_json.clone(),
            },
            operation: wit::Operation {
                service: call.operation.service.clone(),
                action: call.operation.action.clone(),
                region: call.operation.region.clone(),
                resource: call.operation.resource.clone(),
            },
            params_json: call.params.to_string(),
            config_json: String::new(),
        }
    }

    /// Run every policy's `on-request` and combine.
    pub fn on_request(&self, call: &CallInput) -> RequestDecision {
        if self.policies.is_empty() {
            return RequestDecision { verdict: Verdict::Deny, reasons: vec![no_policy()], output: Vec::new() };
        }
        let op = call.operation.qualified();
        let scoped: Vec<&Arc<LoadedPolicy>> = self.policies.iter().filter(|p| p.on_request.matches(&op)).collect();
        let mut verdict = Verdict::Allow;
        let mut reasons = Vec::new();
        let mut outputs = Vec::new();
        if scoped.is_empty() {
            return RequestDecision { verdict, reasons, output: outputs };
        }
        let mut wcall = Self::wit_call(call);
        let caller = &call.identity.key;
        let no_body = None::<&Value>;
        for p in scoped {
            wcall.config_json.clone_from(&p.config_json);
            let Hooked { result, printed } = p.compiled.on_request(&p.warm, caller, &wcall);
            outputs.extend(self.output(p, "on-request", printed.as_ref(), &call.params, no_body));
            let (v, message) = match result {
                Ok(wit::Verdict::Allow) => continue,
                Ok(wit::Verdict::Deny(r)) => (Verdict::Deny, r),
                Ok(wit::Verdict::ApprovalRequired(r)) => (Verdict::ApprovalRequired, r),
                Err(e) => (Verdict::Deny, format!("on-request {}", failure(&e, printed.as_ref(), &call.params, no_body))),
            };
            verdict = verdict.max(v);
            reasons.push(reason(&p.compiled.name, &message));
        }
        RequestDecision { verdict, reasons, output: outputs }
    }

    /// Run every policy's `on-response` and combine.
    pub fn on_response(&self, call: &CallInput, status: u16, body: &Value) -> ResponseDecision {
        self.on_response_doc(call, status, body, || body.to_string())
    }

    /// [`PolicySet::on_response`] for a body in either codec's tree:
    /// `text` writes the JSON text policies receive (called only when a
    /// policy is in scope; a JSON body passes AWS's own text, not a
    /// re-serialisation), and the detectors walk `body` once for all.
    pub fn on_response_doc<'a>(&self, call: &CallInput, status: u16, body: impl Tree<'a>, text: impl FnOnce() -> String) -> ResponseDecision {
        if self.policies.is_empty() {
            return ResponseDecision { deny: vec![no_policy()], masks: Vec::new(), output: Vec::new() };
        }
        let op = call.operation.qualified();
        let scoped: Vec<&Arc<LoadedPolicy>> = self.policies.iter().filter(|p| p.on_response.matches(&op)).collect();
        let mut deny = Vec::new();
        let mut masks = Vec::new();
        let mut outputs = Vec::new();
        if scoped.is_empty() {
            return ResponseDecision { deny, masks, output: outputs };
        }
        let mut wcall = Self::wit_call(call);
        let caller = &call.identity.key;
        let body_json = text();
        let resp = wit::Response { status, body_json };
        // The detectors run once, natively, for every policy that asks.
        let findings = scoped.iter().any(|p| p.compiled.uses_scan()).then(|| Arc::new(crate::detect::findings(body)));
        for p in scoped {
            wcall.config_json.clone_from(&p.config_json);
            let name = &p.compiled.name;
            let Hooked { result, printed } = p.compiled.on_response(&p.warm, caller, &wcall, &resp, findings.clone());
            outputs.extend(self.output(p, "on-response", printed.as_ref(), &call.params, Some(body)));
            match result {
                Err(e) => deny.push(reason(name, &format!("on-response {}", failure(&e, printed.as_ref(), &call.params, Some(body))))),
                Ok(v) => {
                    if let Some(r) = v.deny {
                        deny.push(reason(name, &r));
                    }
                    match convert_masks(v.masks) {
                        Ok(m) => masks.extend(m),
                        Err(e) => deny.push(reason(name, &format!("on-response {e}"))),
                    }
                }
            }
        }
        ResponseDecision { deny, masks, output: outputs }
    }
}

/// Why a hook failed, as its deny reason says it: the error, then what the
/// guest printed last when it printed anything (a panic message, an
/// exception's traceback: at most [`output::LAST_WORDS_BYTES`]), redacted
/// ([`output::redact`]: no string of the inputs the hook saw) and escaped
/// onto one line.
fn failure<'a>(e: &HookError, printed: Option<&Printed>, params: &Value, body: Option<impl Tree<'a>>) -> String {
    // Rust's panic handler ends with advice for whoever runs the program;
    // the caller cannot take it.
    const RUST_NOTE: &str = "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";
    let Some(last) = printed.map(|p| p.last.trim().trim_end_matches(RUST_NOTE).trim_end()).filter(|l| !l.is_empty()) else {
        return e.to_string();
    };
    let words = output::escape_controls(&output::redact(last, params, body));
    format!("{e}; it printed: {words}")
}

impl<T> Hooked<T> {
    /// The result, a failure said as [`failure`] says it: for the calls
    /// made at load (`info`, `scope`), whose only input is the policy's
    /// configuration.
    pub fn explained(self) -> Result<T, String> {
        let printed = self.printed;
        self.result.map_err(|e| failure(&e, printed.as_ref(), &Value::Null, None::<&Value>))
    }
}

fn no_policy() -> Reason {
    Reason { policy: "veil".into(), message: "no policy is loaded; Veil denies every call until one is".into() }
}

/// A reason as callers, reviewers, the audit trail and the log see it: one
/// line (a policy's text may hold newlines or terminal escapes), at most
/// [`MAX_REASON`] bytes.
fn reason(policy: &str, message: &str) -> Reason {
    Reason { policy: policy.to_string(), message: truncate(&output::escape_controls(message), MAX_REASON).to_string() }
}

fn convert_masks(masks: Vec<wit::Mask>) -> Result<Vec<Mask>, String> {
    if masks.len() > MAX_MASKS {
        return Err(format!("returned {} masks, more than the limit of {MAX_MASKS}", masks.len()));
    }
    masks
        .into_iter()
        .map(|m| {
            let selector = Selector::parse(&m.path).map_err(|e| format!("returned an {e}"))?;
            let style = match m.style {
                wit::MaskStyle::Redact => MaskStyle::Redact,
                wit::MaskStyle::Hash => MaskStyle::Hash,
                wit::MaskStyle::Partial => MaskStyle::Partial,
            };
            Ok(Mask { selector, style })
        })
        .collect()
}

/// Whether a directory entry's name can be a policy or its signature: not a
/// hidden file (a deploy's temporary copy, a ConfigMap's internals) nor an
/// editor's `name~` backup.
pub fn is_policy_dir_entry(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    !name.starts_with(b".") && !name.ends_with(b"~")
}

/// The policy files of a directory: `*.wasm`, sorted by name, skipping hidden
/// files and editors' temporary files. A file path is returned as is.
pub fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(is_policy_dir_entry) && p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_runs_of_any_characters() {
        let cases = [
            ("*", "iam:createuser", true),
            ("iam:*", "iam:createuser", true),
            ("iam:*", "sts:assumerole", false),
            ("*:get*", "ssm:getparameter", true),
            ("*:get*", "ssm:putparameter", false),
            ("iam:createuser", "iam:createuser", true),
            ("iam:createuser", "iam:createusers", false),
            ("iam:create*key", "iam:createaccesskey", true),
            ("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob(pattern.as_bytes(), text.as_bytes()), want, "{pattern} vs {text}");
        }
    }

    #[test]
    fn scopes_match_without_regard_to_case_and_refuse_bad_patterns() {
        let scope = HookScope::parse("on-request", vec!["IAM:Create*".into(), "sts:AssumeRole".into()]).unwrap();
        let op = |s: &str, a: &str| Operation { service: s.into(), action: a.into(), region: "us-east-1".into(), resource: None };
        assert!(scope.matches(&op("iam", "CreateUser").qualified()));
        assert!(scope.matches(&op("sts", "AssumeRole").qualified()));
        assert!(!scope.matches(&op("sts", "AssumeRoleWithSAML").qualified()));
        assert!(!scope.matches(&op("secretsmanager", "GetSecretValue").qualified()));
        assert!(!HookScope::parse("on-response", Vec::new()).unwrap().matches("s3:getobject"));
        for bad in [String::new(), "x".repeat(MAX_SCOPE_PATTERN + 1), "iam:\nCreateUser".into()] {
            let e = HookScope::parse("on-request", vec![bad]).unwrap_err();
            assert!(e.contains("on-request pattern"), "{e}");
        }
        let e = HookScope::parse("on-response", vec!["*".into(); MAX_SCOPE_PATTERNS + 1]).unwrap_err();
        assert!(e.contains("more than the limit"), "{e}");
    }
}
