//! Rust SDK for Veil policies.
//!
//! A Veil policy is a WebAssembly component exporting the
//! `veil:policy/scoped-policy` world from `wit/veil-policy.wit`. This crate
//! wraps the generated bindings in a small typed API: implement [`Policy`]
//! and export it with [`export_policy!`]; build with
//! `cargo build --target wasm32-wasip2`.
//!
//! ```
//! use veil_policy_sdk::{export_policy, Config, Mask, Policy, Request, Response, ResponseDecision, Scope, Verdict};
//!
//! struct NoIamWrites;
//!
//! impl Policy for NoIamWrites {
//!     const NAME: &'static str = "no-iam-writes";
//!     const VERSION: &'static str = "1.0.0";
//!
//!     // Optional: the gateway runs each hook only for these operations
//!     // (the default is every operation).
//!     fn scope(_config: &Config) -> Scope {
//!         Scope { on_request: vec!["iam:*".into()], on_response: vec!["*".into()] }
//!     }
//!
//!     fn on_request(req: &Request) -> Verdict {
//!         if req.service() == "iam" && !req.action().starts_with("Get") && !req.action().starts_with("List") {
//!             return Verdict::Deny(format!("{} is not allowed through Veil", req.qualified_action()));
//!         }
//!         Verdict::Allow
//!     }
//!
//!     fn on_response(req: &Request, _resp: &Response) -> ResponseDecision {
//!         if req.has_group("secrets-admin") {
//!             return ResponseDecision::allow();
//!         }
//!         ResponseDecision::masks(vec![Mask::redact("**.SecretAccessKey")])
//!     }
//! }
//!
//! export_policy!(NoIamWrites);
//! ```
//!
//! Inputs that are not valid JSON make the SDK panic, which traps the
//! instance; the gateway treats a trap as a deny (fail closed).

use std::cell::RefCell;
use std::rc::Rc;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

pub mod net;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "scoped-policy",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "veil_policy_sdk::bindings",
    });
}

use bindings::veil::policy::types as wit;

/// A decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the call proceed.
    Allow,
    /// Refuse the call with a reason shown to the caller.
    Deny(String),
    /// Hold the call for a human's approval, with a reason shown to the reviewer.
    ApprovalRequired(String),
}

/// How a masked value is replaced; see the WIT file for the exact output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskStyle {
    /// Fixed, type-preserving marker.
    Redact,
    /// Keyed, stable hash.
    Hash,
    /// Keep the last four characters.
    Partial,
}

/// One masking instruction: a selector and a style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Selector in Veil's selector language.
    pub path: String,
    /// Replacement style.
    pub style: MaskStyle,
}

impl Mask {
    /// Redact what `path` selects.
    pub fn redact(path: impl Into<String>) -> Self {
        Mask { path: path.into(), style: MaskStyle::Redact }
    }
    /// Replace what `path` selects with a keyed hash.
    pub fn hash(path: impl Into<String>) -> Self {
        Mask { path: path.into(), style: MaskStyle::Hash }
    }
    /// Keep the last four characters of what `path` selects.
    pub fn partial(path: impl Into<String>) -> Self {
        Mask { path: path.into(), style: MaskStyle::Partial }
    }
}

/// A decision on a response: withhold it, or mask parts of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDecision {
    /// Some(reason) withholds the response.
    pub deny: Option<String>,
    /// What to mask.
    pub masks: Vec<Mask>,
}

impl ResponseDecision {
    /// Pass the response unchanged.
    pub fn allow() -> Self {
        Self::default()
    }
    /// Pass the response with these masks applied.
    pub fn masks(masks: Vec<Mask>) -> Self {
        ResponseDecision { deny: None, masks }
    }
    /// Withhold the response.
    pub fn deny(reason: impl Into<String>) -> Self {
        ResponseDecision { deny: Some(reason.into()), masks: Vec::new() }
    }
}

/// JSON text parsed on first use: a hook that never looks at an input does
/// not pay for parsing it.
#[derive(Debug, Clone)]
pub struct LazyJson {
    what: &'static str,
    text: String,
    value: std::cell::OnceCell<Rc<Value>>,
    /// Whether the parse is remembered for the instance's next calls.
    remember: bool,
}

thread_local! {
    /// The last parse of each remembered input, by its exact text: an
    /// instance serves one caller's calls in turn (see the WIT file), whose
    /// claims and configuration rarely change, so a call whose text is the
    /// same as the last one's reuses its value instead of parsing again.
    static REMEMBERED: RefCell<Vec<(&'static str, String, Rc<Value>)>> = const { RefCell::new(Vec::new()) };
}

impl LazyJson {
    /// Wrap JSON text; `what` names it in the panic if it does not parse.
    pub fn new(what: &'static str, text: String) -> Self {
        LazyJson { what, text, value: std::cell::OnceCell::new(), remember: false }
    }

    /// Like [`LazyJson::new`], for an input that is often the same from
    /// call to call (claims, configuration): its parse is kept for the next
    /// call with the same text.
    pub fn remembered(what: &'static str, text: String) -> Self {
        LazyJson { remember: true, ..LazyJson::new(what, text) }
    }

    /// An already parsed value.
    pub fn from_value(value: Value) -> Self {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(Rc::new(value));
        LazyJson { what: "value", text: String::new(), value: cell, remember: false }
    }

    /// The parsed value.
    pub fn get(&self) -> &Value {
        self.value.get_or_init(|| if self.remember { self.recall() } else { Rc::new(parse_json(self.what, &self.text)) })
    }

    fn recall(&self) -> Rc<Value> {
        REMEMBERED.with_borrow_mut(|kept| {
            if let Some((_, _, v)) = kept.iter().find(|(what, text, _)| *what == self.what && *text == self.text) {
                return v.clone();
            }
            let v = Rc::new(parse_json(self.what, &self.text));
            kept.retain(|(what, _, _)| *what != self.what);
            kept.push((self.what, self.text.clone(), v.clone()));
            v
        })
    }

    /// One member of the top-level object, parsed alone: the others are
    /// checked and skipped without being built, which on a large body costs
    /// a fraction of [`LazyJson::get`]. None when the text is not an object
    /// or has no such member; of a repeated key, the last (as `get` keeps).
    pub fn member(&self, key: &str) -> Option<Value> {
        if let Some(v) = self.value.get() {
            return v.get(key).cloned();
        }
        let mut de = serde_json::Deserializer::from_str(&self.text);
        match Member(key).deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
            Ok(v) => v,
            Err(e) => not_json(self.what, e),
        }
    }
}

/// Deserializes one member of an object (see [`LazyJson::member`]).
struct Member<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Whether an object key is the one wanted, without keeping it.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Which operations each hook runs for: `service:Action` patterns, `*`
/// matching any run of characters, case ignored (`iam:*`, `*:Get*`, `*`).
/// The gateway skips a hook for other calls, as if it had allowed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Operations `on_request` runs for.
    pub on_request: Vec<String>,
    /// Operations `on_response` runs for.
    pub on_response: Vec<String>,
}

impl Scope {
    /// Both hooks for every operation.
    pub fn all() -> Self {
        Scope { on_request: vec!["*".into()], on_response: vec!["*".into()] }
    }
}

/// A policy's configuration: the JSON object from the gateway's config,
/// parsed on first use.
#[derive(Debug, Clone)]
pub struct Config(LazyJson);

impl Config {
    /// Wrap configuration JSON text (`{}` when the gateway has none).
    pub fn new(text: String) -> Self {
        Config(LazyJson::remembered("config-json", text))
    }

    /// The configuration as JSON.
    pub fn get(&self) -> &Value {
        self.0.get()
    }

    /// A list of strings under `key`, or `default` when the key is absent.
    /// A present key that is not a list of strings panics (a trap, so the
    /// gateway refuses the policy or denies, and reports the misconfiguration).
    pub fn list(&self, key: &str, default: &[&str]) -> Vec<String> {
        match self.get().get(key) {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) => s.to_string(),
                    None => panic!("config `{key}` must be a list of strings"),
                })
                .collect(),
            Some(_) => panic!("config `{key}` must be a list of strings"),
        }
    }
}

/// One call as a policy sees it: identity, operation, parameters and the
/// policy's own configuration. JSON inputs are parsed on first use.
#[derive(Debug, Clone)]
pub struct Request {
    /// The token issuer.
    pub issuer: String,
    /// The token subject.
    pub subject: String,
    /// Service signing name (`secretsmanager`).
    pub service: String,
    /// Operation name (`GetSecretValue`).
    pub action: String,
    /// Region (`us-east-1`).
    pub region: String,
    /// Main resource when known.
    pub resource: Option<String>,
    claims: LazyJson,
    params: LazyJson,
    config: Config,
}

impl Request {
    fn from_wit(c: wit::Call) -> Self {
        Request {
            issuer: c.identity.issuer,
            subject: c.identity.subject,
            claims: LazyJson::remembered("claims-json", c.identity.claims_json),
            service: c.operation.service,
            action: c.operation.action,
            region: c.operation.region,
            resource: c.operation.resource,
            params: LazyJson::new("params-json", c.params_json),
            config: Config::new(c.config_json),
        }
    }

    /// A request from parsed parts (for unit tests of policies).
    pub fn new(service: &str, action: &str, claims: Value, params: Value, config: Value) -> Self {
        Request {
            issuer: "https://issuer.test".into(),
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or("test").to_string(),
            service: service.into(),
            action: action.into(),
            region: "us-east-1".into(),
            resource: None,
            claims: LazyJson::from_value(claims),
            params: LazyJson::from_value(params),
            config: Config(LazyJson::from_value(config)),
        }
    }

    /// All claims of the token.
    pub fn claims(&self) -> &Value {
        self.claims.get()
    }

    /// Request parameters.
    pub fn params(&self) -> &Value {
        self.params.get()
    }

    /// This policy's configuration (`{}` when none).
    pub fn config(&self) -> &Value {
        self.config.get()
    }

    /// Service signing name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Operation name.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// `service:Action`, the form IAM policies use (`iam:CreateUser`).
    pub fn qualified_action(&self) -> String {
        format!("{}:{}", self.service, self.action)
    }

    /// A string claim, if present and a string.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims().get(name).and_then(Value::as_str)
    }

    /// The caller's groups: the `groups` claim, as a list of strings or a
    /// single space- or comma-separated string.
    pub fn groups(&self) -> Vec<&str> {
        self.claim_list("groups")
    }

    /// A claim that holds a list of strings (or one string of several names
    /// separated by spaces or commas).
    pub fn claim_list(&self, name: &str) -> Vec<&str> {
        match self.claims().get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split([' ', ',']).filter(|g| !g.is_empty()).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the caller is in `group`.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups().contains(&group)
    }

    /// A string parameter of the request.
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.params().get(name).and_then(Value::as_str)
    }

    /// A list of strings from the policy config, or `default` when the key is
    /// absent; see [`Config::list`].
    pub fn config_list(&self, key: &str, default: &[&str]) -> Vec<String> {
        self.config.list(key, default)
    }
}

/// What kind of value the gateway's detectors found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// An AWS access key id standing alone: an identifier (hash it).
    AccessKeyId,
    /// A secret (redact it).
    Secret,
}

/// A string of the response body that holds a secret, found by the
/// gateway's native detectors (see `scan` in the WIT file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where, as a selector usable as a mask path.
    pub path: String,
    /// What it holds.
    pub kind: FindingKind,
    /// The detector that matched (`private-key`, `jwt`, …).
    pub detector: String,
}

impl Finding {
    /// The mask its kind calls for: hash a lone access key id, redact a secret.
    pub fn mask(&self) -> Mask {
        match self.kind {
            FindingKind::AccessKeyId => Mask::hash(self.path.clone()),
            FindingKind::Secret => Mask::redact(self.path.clone()),
        }
    }
}

/// The upstream response as a policy sees it; the body is parsed and the
/// detectors' findings fetched on first use.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    body: LazyJson,
    findings: std::cell::OnceCell<Vec<Finding>>,
}

impl Response {
    /// A response from a parsed body, without findings (for unit tests of
    /// policies; add them with [`Response::with_findings`]).
    pub fn new(status: u16, body: Value) -> Self {
        Response { status, body: LazyJson::from_value(body), findings: std::cell::OnceCell::from(Vec::new()) }
    }

    /// The same response with these findings (for unit tests of policies).
    pub fn with_findings(self, findings: Vec<Finding>) -> Self {
        Response { findings: std::cell::OnceCell::from(findings), ..self }
    }

    /// The body as JSON.
    pub fn body(&self) -> &Value {
        self.body.get()
    }

    /// One member of the body's top-level object (`"Name"` of a
    /// GetSecretValue response), parsed alone: on a large body much cheaper
    /// than [`Response::body`] when a policy needs a few fields. None when the
    /// body is not an object or has no such member.
    pub fn body_member(&self, key: &str) -> Option<Value> {
        self.body.member(key)
    }

    /// Every string of the body that holds a secret, in document order,
    /// found by the gateway's detectors at native speed: much cheaper than
    /// walking [`Response::body`] in the policy.
    pub fn findings(&self) -> &[Finding] {
        self.findings.get_or_init(|| {
            use bindings::veil::policy::scan;
            scan::findings()
                .into_iter()
                .map(|f| Finding {
                    path: f.path,
                    kind: match f.kind {
                        scan::FindingKind::AccessKeyId => FindingKind::AccessKeyId,
                        scan::FindingKind::Secret => FindingKind::Secret,
                    },
                    detector: f.detector,
                })
                .collect()
        })
    }
}

fn parse_json(what: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| not_json(what, e))
}

/// An input that does not parse traps the instance (see the crate docs).
fn not_json(what: &str, e: serde_json::Error) -> ! {
    panic!("veil: {what} is not valid JSON: {e}")
}

/// What a Veil policy implements.
pub trait Policy {
    /// Stable short name, recorded in audit records.
    const NAME: &'static str;
    /// Semver version, recorded in audit records.
    const VERSION: &'static str;
    /// Decide on a request before it reaches AWS.
    fn on_request(req: &Request) -> Verdict;
    /// Decide on the response before it reaches the caller.
    fn on_response(req: &Request, resp: &Response) -> ResponseDecision;
    /// Which operations each hook needs to see, given the configuration
    /// (asked once per load or config change). Default: every operation.
    fn scope(_config: &Config) -> Scope {
        Scope::all()
    }
}

#[doc(hidden)]
pub mod glue {
    //! Conversions used by [`export_policy!`](crate::export_policy); not public API.
    use super::*;

    pub fn info<P: Policy>() -> wit::PolicyInfo {
        wit::PolicyInfo { name: P::NAME.to_string(), version: P::VERSION.to_string() }
    }

    pub fn scope<P: Policy>(config_json: String) -> wit::Scope {
        let s = P::scope(&Config::new(config_json));
        wit::Scope { on_request: s.on_request, on_response: s.on_response }
    }

    pub fn on_request<P: Policy>(c: wit::Call) -> wit::Verdict {
        match P::on_request(&Request::from_wit(c)) {
            Verdict::Allow => wit::Verdict::Allow,
            Verdict::Deny(r) => wit::Verdict::Deny(r),
            Verdict::ApprovalRequired(r) => wit::Verdict::ApprovalRequired(r),
        }
    }

    pub fn on_response<P: Policy>(c: wit::Call, r: wit::Response) -> wit::ResponseVerdict {
        let resp = Response { status: r.status, body: LazyJson::new("body-json", r.body_json), findings: Default::default() };
        let d = P::on_response(&Request::from_wit(c), &resp);
        wit::ResponseVerdict {
            deny: d.deny,
            masks: d
                .masks
                .into_iter()
                .map(|m| wit::Mask {
                    path: m.path,
                    style: match m.style {
                        MaskStyle::Redact => wit::MaskStyle::Redact,
                        MaskStyle::Hash => wit::MaskStyle::Hash,
                        MaskStyle::Partial => wit::MaskStyle::Partial,
                    },
                })
                .collect(),
        }
    }
}

/// Export a [`Policy`] implementation as the component's `scoped-policy` world.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[doc(hidden)]
        struct __VeilPolicyExport;

        impl $crate::bindings::Guest for __VeilPolicyExport {
            fn info() -> $crate::bindings::veil::policy::types::PolicyInfo {
                $crate::glue::info::<$policy>()
            }
            fn scope(config_json: ::std::string::String) -> $crate::bindings::veil::policy::types::Scope {
                $crate::glue::scope::<$policy>(config_json)
            }
            fn on_request(
                c: $crate::bindings::veil::policy::types::Call,
            ) -> $crate::bindings::veil::policy::types::Verdict {
                $crate::glue::on_request::<$policy>(c)
            }
            fn on_response(
                c: $crate::bindings::veil::policy::types::Call,
                r: $crate::bindings::veil::policy::types::Response,
            ) -> $crate::bindings::veil::policy::types::ResponseVerdict {
                $crate::glue::on_response::<$policy>(c, r)
            }
        }

        $crate::bindings::__export_world!(__VeilPolicyExport);
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_member_is_parsed_alone_and_the_last_of_a_repeated_key_wins() {
        let body = LazyJson::new("body-json", r#"{"SecretString": "a\"b\u00e9", "Name": "prod/x", "Tags": [{"Key": "k"}], "Name": "prod/y"}"#.into());
        assert_eq!(body.member("Name"), Some(json!("prod/y")));
        assert_eq!(body.member("Tags"), Some(json!([{"Key": "k"}])));
        assert_eq!(body.member("Missing"), None);
        // Not an object: no members.
        for text in ["[1, {\"Name\": 2}]", "\"Name\"", "3", "null", "true"] {
            assert_eq!(LazyJson::new("body-json", text.into()).member("Name"), None, "{text}");
        }
        // A parsed body answers from its value.
        assert_eq!(LazyJson::from_value(json!({"Name": 1})).member("Name"), Some(json!(1)));
    }

    #[test]
    fn a_member_of_invalid_json_panics_like_a_full_parse() {
        for text in [r#"{"Name": "x", "Other": tru}"#, r#"{"Name": "x"} trailing"#, "{\"Other\": \"a\u{1}b\", \"Name\": 1}", r#"{"Name": "x""#] {
            let member = std::panic::catch_unwind(|| LazyJson::new("body-json", text.into()).member("Name"));
            assert!(member.is_err(), "{text:?} must not parse");
            assert!(std::panic::catch_unwind(|| LazyJson::new("body-json", text.into()).get().clone()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn remembered_inputs_reuse_their_parse_only_for_the_same_text() {
        let first = LazyJson::remembered("claims-json", r#"{"groups": ["a"]}"#.into());
        let again = LazyJson::remembered("claims-json", r#"{"groups": ["a"]}"#.into());
        let (a, b) = (first.get() as *const Value, again.get() as *const Value);
        assert_eq!(a, b, "the same text reuses the parse");
        let other = LazyJson::remembered("claims-json", r#"{"groups": ["b"]}"#.into());
        assert_eq!(other.get(), &json!({"groups": ["b"]}), "another text is parsed anew");
        // Another input's text never answers for this one.
        let config = LazyJson::remembered("config-json", r#"{"groups": ["b"]}"#.into());
        assert_ne!(config.get() as *const Value, other.get() as *const Value);
        assert_eq!(config.get(), &json!({"groups": ["b"]}));
    }
}
