//! AWS knowledge: which operation a request is (for all five protocols),
//! its parameters as JSON, and the codecs between wire bodies and the JSON
//! document tree that policies see.
//!
//! The operation table (`models/services.json`) is generated from botocore's
//! service models by `models/generate.py`; it is parsed once, on first use.

pub mod endpoint;
pub mod error;
pub mod operations;
pub mod sqs;
pub mod wire;
pub mod xml;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::masking::Selector;

/// AWS wire protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// JSON body, action in `X-Amz-Target`.
    #[serde(rename = "json")]
    Json,
    /// REST with JSON bodies.
    #[serde(rename = "rest-json")]
    RestJson,
    /// REST with XML bodies.
    #[serde(rename = "rest-xml")]
    RestXml,
    /// Form-encoded request, XML response.
    #[serde(rename = "query")]
    Query,
    /// EC2's variant of query.
    #[serde(rename = "ec2")]
    Ec2,
    /// Smithy RPC v2 CBOR (not read: such requests are refused).
    #[serde(rename = "smithy-rpc-v2-cbor")]
    Cbor,
}

impl Protocol {
    /// Whether responses are XML.
    pub fn is_xml(self) -> bool {
        matches!(self, Protocol::RestXml | Protocol::Query | Protocol::Ec2)
    }
}

#[derive(Debug, Deserialize)]
struct Table {
    services: HashMap<String, Vec<Model>>,
}

/// One service model of the table.
#[derive(Debug, Deserialize)]
pub struct Model {
    /// botocore model name.
    pub model: String,
    /// Wire protocol (the first of `protocols` when there are several).
    pub protocol: Protocol,
    /// Every protocol the service speaks, when more than one (CloudWatch:
    /// CBOR, JSON and query); clients pick one per call.
    #[serde(default)]
    protocols: Vec<Protocol>,
    /// Endpoint prefix.
    pub prefix: String,
    /// One global endpoint.
    #[serde(default)]
    pub global: bool,
    /// X-Amz-Target prefix.
    pub target: Option<String>,
    /// JSON version (`1.0`, `1.1`) of a model with a target.
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    ops: Vec<RestOp>,
    /// Operations whose response body is a stream: the payload member of a
    /// byte stream, `None` for a stream of events.
    #[serde(default)]
    streaming: HashMap<String, Option<String>>,
    /// REST operations whose request body is one input member (S3
    /// `PutBucketTagging`'s `Tagging`, Lambda `Invoke`'s `Payload`), not
    /// the input's members together.
    #[serde(default)]
    payloads: HashMap<String, (String, Payload)>,
    /// Per operation, the selectors of its blob outputs (base64 on the wire).
    #[serde(default, deserialize_with = "selectors")]
    blobs: HashMap<String, Vec<Selector>>,
    /// Query keys that select an operation in some URI template (`acl`).
    #[serde(skip)]
    selector_keys: OnceLock<Vec<String>>,
}

/// What a REST operation's request body is, when it is one input member.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// Bytes for AWS to keep (an S3 object, a function's event): data, not
    /// parameters, and the only kind of body that may stream.
    Blob,
    /// Text (S3 `PutBucketPolicy`'s policy document).
    String,
    /// A structure in the protocol's format (JSON or XML).
    Structure,
}

fn selectors<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, Vec<Selector>>, D::Error> {
    let raw: HashMap<String, Vec<String>> = Deserialize::deserialize(d)?;
    raw.into_iter()
        .map(|(op, texts)| {
            let parsed = texts.iter().map(|t| Selector::parse(t)).collect::<Result<_, _>>().map_err(serde::de::Error::custom)?;
            Ok((op, parsed))
        })
        .collect()
}

/// A REST operation: name, method, URI template, required request
/// headers, and the headers its input binds to members (`prefix*` for a
/// prefix, `x-amz-meta-*`), with the query keys (`?prefix`) and URI labels
/// (`{restapi_id}`) whose members are named otherwise.
#[derive(Debug, Deserialize)]
struct RestOp(String, String, String, #[serde(default)] Vec<String>, #[serde(default)] BTreeMap<String, String>);

impl RestOp {
    /// The name policies see a query key or URI label under: its input
    /// member's (S3 `?prefix=` is `Prefix`), or the wire name when no member
    /// is named otherwise (a sub-resource such as `?acl`).
    fn member_name(&self, wire: String, sigil: (char, &str)) -> String {
        let mut key = String::with_capacity(wire.len() + 2);
        key.push(sigil.0);
        key.push_str(&wire);
        key.push_str(sigil.1);
        self.4.get(&key).cloned().unwrap_or(wire)
    }

    /// The input member a header is bound to, and for a prefix binding the
    /// rest of the header's name (the map key).
    fn binds<'a>(&'a self, header: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        if let Some(member) = self.4.get(header) {
            return Some((member, None));
        }
        self.4.iter().find_map(|(name, member)| {
            let prefix = name.strip_suffix('*')?;
            header.strip_prefix(prefix).filter(|rest| !rest.is_empty()).map(|rest| (member.as_str(), Some(rest)))
        })
    }
}

impl Model {
    /// Whether calls to this model may be sent in `protocol`.
    pub fn speaks(&self, protocol: Protocol) -> bool {
        self.protocol == protocol || self.protocols.contains(&protocol)
    }

    /// The form protocol (EC2's or query) this model speaks, if any.
    fn form_protocol(&self) -> Option<Protocol> {
        [Protocol::Ec2, Protocol::Query].into_iter().find(|p| self.speaks(*p))
    }

    /// Whether a query key selects an operation of this REST model (S3's
    /// sub-resources: `acl`, `policy` …).
    fn selects(&self, key: &str) -> bool {
        let keys = self.selector_keys.get_or_init(|| {
            let mut keys: Vec<String> = self.ops.iter().flat_map(|op| template_query_keys(&op.2)).map(str::to_string).collect();
            keys.sort();
            keys.dedup();
            keys
        });
        keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok()
    }

    /// Whether `action`'s response body is a stream.
    pub fn streams_output(&self, action: &str) -> bool {
        self.streaming.contains_key(action)
    }

    /// The output member that names `action`'s streamed bytes (S3
    /// GetObject's `Body`, Lambda Invoke's `Payload`); `None` for an
    /// operation that does not stream bytes.
    pub fn stream_member(&self, action: &str) -> Option<&str> {
        self.streaming.get(action).and_then(Option::as_deref)
    }

    /// The input member `action`'s request body is, and its kind; `None`
    /// when the body holds the input's members together.
    pub fn payload(&self, action: &str) -> Option<(&str, Payload)> {
        self.payloads.get(action).map(|(member, kind)| (member.as_str(), *kind))
    }

    /// Whether `action`'s request body is data for AWS to keep (S3
    /// `PutObject`): the one kind of body that may stream past policies.
    /// Any other body is input, read before policies decide.
    pub fn streams_input(&self, action: &str) -> bool {
        matches!(self.payload(action), Some((_, Payload::Blob)))
    }

    /// The selectors of `action`'s blob outputs (base64 text on the wire),
    /// for [`crate::masking::apply`].
    pub fn blob_outputs(&self, action: &str) -> &[Selector] {
        self.blobs.get(action).map_or(&[], Vec::as_slice)
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_json::from_str(include_str!("models/services.json")).expect("services.json is valid (generated)")
    })
}

/// [`Model::blob_outputs`] of the model of `service` that has them, for a
/// caller that knows the operation only by name (`veil policy eval`).
pub fn blob_outputs(service: &str, action: &str) -> &'static [Selector] {
    table()
        .services
        .get(service)
        .and_then(|models| models.iter().find(|m| m.blobs.contains_key(action)))
        .map_or(&[], |m| m.blob_outputs(action))
}

/// The main model of a service signing name.
pub fn model_of(service: &str) -> Option<&'static Model> {
    table().services.get(service).and_then(|m| m.first())
}

/// The protocol a request to `service` is most likely in, for shaping
/// errors before the operation is known: JSON when it names an
/// `X-Amz-Target` and the service speaks JSON, query when it sends a form
/// and the service speaks query, else its main model's (JSON for one whose
/// main protocol is CBOR, which Veil does not read).
pub fn protocol_of(service: &str, headers: &http::HeaderMap) -> Option<Protocol> {
    let models = table().services.get(service)?;
    if headers.contains_key("x-amz-target") && models.iter().any(|m| m.speaks(Protocol::Json)) {
        return Some(Protocol::Json);
    }
    let form = wire::media_type(headers).ok().flatten().is_some_and(|m| m == wire::FORM);
    if let Some(protocol) = models.iter().filter(|_| form).find_map(Model::form_protocol) {
        return Some(protocol);
    }
    models.first().map(|m| if m.protocol == Protocol::Cbor && m.speaks(Protocol::Json) { Protocol::Json } else { m.protocol })
}

/// Why a request could not be classified.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClassifyError {
    /// The signing name is not an AWS service.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// No operation matches.
    #[error("cannot tell which {service} operation this is: {reason}")]
    UnknownOperation { service: String, reason: String },
    /// The operation a caller named (an `X-Amz-Target`, a query `Action`)
    /// is not one of the service's as its model spells it.
    #[error("cannot tell which {service} operation this is: {:?} is not one of its operations (names are case-sensitive)", crate::policy::host::truncate(.action, 128))]
    NotAnOperation { service: String, action: String },
    /// The parameters do not parse.
    #[error("request parameters do not parse: {0}")]
    BadParams(String),
    /// AWS could read the request differently from Veil.
    #[error(transparent)]
    Ambiguous(#[from] wire::Ambiguous),
}

/// A classified request.
#[derive(Debug, Clone)]
pub struct Classified {
    /// The model it belongs to.
    pub model: &'static Model,
    /// The protocol this call is in (one the model speaks): its response
    /// is read, and its errors written, in it.
    pub protocol: Protocol,
    /// Operation name.
    pub action: String,
    /// Parameters as JSON.
    pub params: Value,
    /// Main resource.
    pub resource: Option<String>,
    /// What goes upstream, derived from this classification.
    pub forward: Forward,
}

/// The request that goes upstream, derived from what was classified: the
/// classified path and query, a body re-serialised from the parameters
/// where the protocol allows (query, EC2), and only allow-listed headers.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub path_and_query: String,
    /// A body that replaces the caller's; `None`: the caller's body as read
    /// and classified (or streamed, for unsigned S3 uploads).
    pub body: Option<bytes::Bytes>,
    /// The allow-listed headers.
    pub headers: http::HeaderMap,
}

impl Forward {
    /// A digest of exactly what goes upstream: method, path and query, the
    /// forwarded headers (sorted) and the body (`caller_body` when this
    /// does not replace it; a streamed body is marked, not hashed).
    pub fn digest(&self, caller_body: Option<&[u8]>) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(self.method.as_str().as_bytes());
        field(self.path_and_query.as_bytes());
        let mut headers: Vec<(&str, &[u8])> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        headers.sort();
        for (k, v) in headers {
            field(k.as_bytes());
            field(v);
        }
        match self.body.as_deref().or(caller_body) {
            Some(b) => field(b),
            None => field(b"\0streamed"),
        }
        hex::encode(h.finalize())
    }
}

/// What classification needs of a request.
pub struct RequestView<'a> {
    /// Signing name.
    pub service: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Raw path.
    pub path: &'a str,
    /// Raw query string (presigned-URL authentication included: it is
    /// dropped here).
    pub query: &'a str,
    /// The body, when it was read (None for streamed uploads).
    pub body: Option<&'a [u8]>,
    /// All request headers.
    pub headers: &'a http::HeaderMap,
}

const RESOURCE_PARAMS: &[&str] = &[
    "SecretId", "Name", "FunctionName", "RoleArn", "UserName", "RoleName", "GroupName", "PolicyArn", "TableName",
    "QueueUrl", "TopicArn", "KeyId", "Bucket", "StreamName", "ClusterName", "ResourceArn", "Arn", "InstanceId",
    "GroupId", "LogGroupName", "StackName", "RepositoryName", "Path",
];

/// Find the operation, its parameters and main resource, and derive the
/// request to forward. Refuses what AWS could read another way.
pub fn classify(req: &RequestView<'_>) -> Result<Classified, ClassifyError> {
    let models = table().services.get(req.service).ok_or_else(|| ClassifyError::UnknownService(req.service.to_string()))?;
    let unknown = |reason: &str| ClassifyError::UnknownOperation { service: req.service.to_string(), reason: reason.to_string() };
    wire::check_singletons(req.headers)?;
    let media = wire::media_type(req.headers)?;
    let codings = wire::content_codings(req.headers)?;
    let mut query = wire::form_pairs(req.query.as_bytes(), "query")?;
    query.retain(|(k, _)| !crate::sigv4::is_presign_param(k));
    wire::check_unique(&query, "query")?;
    let body = req.body.unwrap_or_default();
    let cbor = req.headers.contains_key("smithy-protocol") || media.as_deref() == Some("application/cbor");
    if cbor && models.iter().any(|m| m.speaks(Protocol::Cbor)) {
        return Err(unknown("the request is in Smithy RPC v2 CBOR, which Veil does not read; configure the client for JSON (X-Amz-Target) or query"));
    }
    if let Some(target) = wire::header(req.headers, "x-amz-target")? {
        let decoded = wire::decode_body(&codings, body)?;
        let body = decoded.as_deref().unwrap_or(body);
        let (prefix, action) = target.rsplit_once('.').ok_or_else(|| unknown("X-Amz-Target is not Prefix.Operation"))?;
        let model = models
            .iter()
            .find(|m| m.target.as_deref().is_some_and(|t| target_prefix_matches(t, prefix)))
            .ok_or_else(|| unknown("X-Amz-Target prefix does not belong to this service"))?;
        known_operation(req.service, action)?;
        if !model.speaks(Protocol::Json) {
            return Err(unknown("this service is not spoken in JSON (X-Amz-Target)"));
        }
        let content_type = json_media(model, media.as_deref())?;
        let params = Value::Object(json_body(body)?);
        let mut headers = wire::forwarded_headers(req.headers, true, false, &|_| false);
        headers.insert(http::header::CONTENT_TYPE, content_type);
        if decoded.is_some() {
            // The caller's digest was of the encoded body.
            headers.remove("content-md5");
        }
        let forward = Forward { method: http::Method::POST, path_and_query: "/".into(), body: decoded.map(bytes::Bytes::from), headers };
        return Ok(finish(model, Protocol::Json, action, params, None, forward));
    }
    if let Some((model, protocol)) = models.iter().find_map(|m| m.form_protocol().map(|p| (m, p))) {
        let decoded = wire::decode_body(&codings, body)?;
        let body = decoded.as_deref().unwrap_or(body);
        let mut form = query;
        if !body.is_empty() {
            if media.as_deref() != Some(wire::FORM) {
                return Err(wire::Ambiguous(format!("a {} request body must be {}", req.service, wire::FORM)).into());
            }
            form.extend(wire::form_pairs(body, "body")?);
        }
        // Also refuses a parameter given in both the query and the body.
        wire::check_unique(&form, "form")?;
        let action = form.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.clone()).ok_or_else(|| unknown("no Action parameter"))?;
        known_operation(req.service, &action)?;
        let params = unflatten(form.iter().filter(|(k, _)| k != "Action" && k != "Version").cloned())?;
        let mut headers = wire::forwarded_headers(req.headers, false, false, &|_| false);
        // The body is re-serialised: the caller's digest of it no longer applies.
        headers.remove("content-md5");
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
        let forward = Forward {
            method: http::Method::POST,
            path_and_query: "/".into(),
            body: Some(bytes::Bytes::from(wire::encode_form(&form))),
            headers,
        };
        return Ok(finish(model, protocol, &action, params, None, forward));
    }
    let segments: Vec<&str> = req.path.split('/').skip(1).collect();
    let mut best: Option<(usize, &Model, &RestOp, Vec<(String, String)>)> = None;
    for model in models.iter().filter(|m| matches!(m.protocol, Protocol::RestJson | Protocol::RestXml)) {
        for op in &model.ops {
            if op.1 != req.method || !op.3.iter().all(|h| req.headers.contains_key(h.as_str())) {
                continue;
            }
            if let Some((score, labels)) = match_uri(&op.2, &segments, &query) {
                let score = score + 100 * op.3.len();
                if best.as_ref().is_none_or(|b| score > b.0) {
                    best = Some((score, model, op, labels));
                }
            }
        }
    }
    let (_, model, op, labels) = best.ok_or_else(|| unknown("no operation matches this method and path"))?;
    // Each sub-resource in the query (`?acl`, `?policy`) selects an
    // operation: more than the matched one's could mean another to AWS.
    let own = template_query_keys(&op.2);
    let extra: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).filter(|k| model.selects(k) && !own.contains(k)).collect();
    if !extra.is_empty() {
        return Err(wire::Ambiguous(format!("the query selects {} and also {}", op.0, extra.join(", "))).into());
    }
    let streaming = req.body.is_none();
    let binds = |h: &str| op.binds(h).is_some();
    if !codings.is_empty() && !binds("content-encoding") && !(streaming && codings.iter().all(|c| c == "aws-chunked")) {
        refuse_codings(&codings)?;
    }
    let mut params = Value::Object(rest_body(model, &op.0, body)?);
    let resource = if labels.is_empty() { None } else { Some(labels.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("/")) };
    if let Value::Object(map) = &mut params {
        let query = query.iter().cloned().map(|(k, v)| (op.member_name(k, ('?', "")), v));
        for (k, v) in query.chain(labels.into_iter().map(|(k, v)| (op.member_name(k, ('{', "}")), v))) {
            bind(map, k, Value::String(v))?;
        }
        for name in req.headers.keys() {
            let Some((member, suffix)) = op.binds(name.as_str()) else { continue };
            if name.as_str() == "content-encoding" && streaming && codings.iter().all(|c| c == "aws-chunked") {
                continue;
            }
            if req.headers.get_all(name).iter().nth(1).is_some() {
                return Err(wire::Ambiguous(format!("header {name} is sent more than once")).into());
            }
            let text = wire::header(req.headers, name.as_str())?.unwrap_or_default();
            let value = match name.as_str() {
                "x-amz-copy-source" => copy_source(text)?,
                _ => Value::String(text.to_string()),
            };
            match suffix {
                None => bind(map, member.to_string(), value)?,
                Some(key) => {
                    let entry = map.entry(member.to_string()).or_insert_with(|| Value::Object(Map::new()));
                    let Value::Object(prefixed) = entry else {
                        return Err(wire::Ambiguous(format!("parameter {member} is given as a value and as headers")).into());
                    };
                    prefixed.insert(key.to_string(), value);
                }
            }
        }
    }
    let query_text = wire::encode_form(&query);
    let path = if req.path.is_empty() { "/" } else { req.path };
    let forward = Forward {
        method: req.method.parse().map_err(|_| unknown("bad method"))?,
        path_and_query: if query_text.is_empty() { path.to_string() } else { format!("{path}?{query_text}") },
        body: None,
        headers: wire::forwarded_headers(req.headers, false, streaming, &binds),
    };
    Ok(finish(model, model.protocol, &op.0, params, resource, forward))
}

/// Refuse a content coding Veil does not decode: AWS would read the decoded
/// body, Veil the encoded one.
fn refuse_codings(codings: &[String]) -> Result<(), wire::Ambiguous> {
    if codings.is_empty() {
        return Ok(());
    }
    Err(wire::Ambiguous(format!("Content-Encoding {} is not decoded by Veil; send the body without it", codings.join(", "))))
}

/// Add a parameter, refusing one that is already there with another value.
fn bind(map: &mut Map<String, Value>, key: String, value: Value) -> Result<(), wire::Ambiguous> {
    match map.get(&key) {
        Some(existing) if *existing != value => Err(wire::Ambiguous(format!(
            "parameter {:?} is given twice with different values (body, path, query or header)",
            crate::policy::host::truncate(&key, 128)
        ))),
        Some(_) => Ok(()),
        None => {
            map.insert(key, value);
            Ok(())
        }
    }
}

/// The query keys a URI template requires (`/{Bucket}?acl` → `acl`).
fn template_query_keys(template: &str) -> Vec<&str> {
    template.split_once('?').map_or(Vec::new(), |(_, q)| q.split('&').filter(|s| !s.is_empty()).map(|s| s.split('=').next().unwrap_or(s)).collect())
}

fn finish(model: &'static Model, protocol: Protocol, action: &str, params: Value, resource: Option<String>, forward: Forward) -> Classified {
    let resource = resource.or_else(|| {
        RESOURCE_PARAMS.iter().find_map(|k| match params.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
    });
    Classified { model, protocol, action: action.to_string(), params, resource, forward }
}

/// A caller-named operation (an `X-Amz-Target`, a query `Action`) must be
/// one of the service's, spelled exactly: a service or emulator that reads
/// `getSecretValue` or `create_user` as the operation policies know as
/// `GetSecretValue` or `CreateUser` would otherwise run a call whose name
/// no policy matched.
fn known_operation(service: &str, action: &str) -> Result<(), ClassifyError> {
    match operations::operation(service, action) {
        Some(_) => Ok(()),
        None => Err(ClassifyError::NotAnOperation { service: service.to_string(), action: action.to_string() }),
    }
}

/// The media type of an `X-Amz-Target` call is JSON's, or none, and goes
/// upstream as JSON's: an endpoint that also speaks query (CloudWatch, SQS)
/// reads a form body as a query call, whose `Action` could hide in a JSON
/// string (`{"a":"&Action=DeleteAlarms&"}`), and one without a type as the
/// endpoint likes.
fn json_media(model: &Model, media: Option<&str>) -> Result<http::HeaderValue, wire::Ambiguous> {
    const JSON_TYPES: [&str; 3] = ["application/x-amz-json-1.0", "application/x-amz-json-1.1", "application/json"];
    let chosen = match media {
        None if model.json.as_deref() == Some("1.1") => JSON_TYPES[1],
        None => JSON_TYPES[0],
        Some(m) => JSON_TYPES.into_iter().find(|t| *t == m).ok_or_else(|| {
            wire::Ambiguous(format!(
                "an X-Amz-Target call's body is JSON, but its Content-Type is {:?}",
                crate::policy::host::truncate(m, 64)
            ))
        })?,
    };
    Ok(http::HeaderValue::from_static(chosen))
}

/// Whether an `X-Amz-Target` prefix names the model whose botocore
/// `targetPrefix` is `model`. Smithy-generated SDKs (JavaScript v3, Go v2)
/// send the service shape's name, which for the few namespaced prefixes
/// (`com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101`) is the last
/// part (`CloudTrail_20131101`); AWS accepts both.
fn target_prefix_matches(model: &str, prefix: &str) -> bool {
    model == prefix || model.rsplit_once('.').is_some_and(|(_, shape)| shape == prefix)
}

fn json_body(body: &[u8]) -> Result<Map<String, Value>, ClassifyError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match wire::strict_json(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(ClassifyError::BadParams("JSON body is not an object".into())),
    }
}

/// The parameters a REST call's body holds, read as AWS reads it whatever
/// its Content-Type says: a blob payload is data and not shown; a text
/// payload is shown under its member, as is a structure payload (JSON or
/// XML); any other body holds the input's members. A body that does not
/// read so is refused.
fn rest_body(model: &Model, action: &str, body: &[u8]) -> Result<Map<String, Value>, ClassifyError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    let members = || -> Result<Map<String, Value>, ClassifyError> {
        match model.protocol {
            Protocol::RestXml => xml::request_members(body).map_err(|e| ClassifyError::BadParams(e.to_string())),
            _ => json_body(body),
        }
    };
    match model.payload(action) {
        Some((_, Payload::Blob)) => Ok(Map::new()),
        Some((member, Payload::String)) => {
            let text = std::str::from_utf8(body).map_err(|_| ClassifyError::BadParams(format!("the {member} body is not UTF-8 text")))?;
            Ok(Map::from_iter([(member.to_string(), Value::String(text.to_string()))]))
        }
        Some((member, Payload::Structure)) => Ok(Map::from_iter([(member.to_string(), Value::Object(members()?))])),
        None => members(),
    }
}

/// Match a model URI template (`/{Bucket}/{Key+}?uploads`) against a path;
/// returns a specificity score and the captured labels.
fn match_uri(template: &str, segments: &[&str], query: &[(String, String)]) -> Option<(usize, Vec<(String, String)>)> {
    let (path_t, query_t) = template.split_once('?').unwrap_or((template, ""));
    let mut score = 0;
    for q in query_t.split('&').filter(|q| !q.is_empty()) {
        let (k, v) = q.split_once('=').unwrap_or((q, ""));
        if !query.iter().any(|(qk, qv)| qk == k && (v.is_empty() || qv == v)) {
            return None;
        }
        score += 100;
    }
    let tsegs: Vec<&str> = path_t.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    let mut labels = Vec::new();
    let mut i = 0;
    for (ti, t) in tsegs.iter().enumerate() {
        if let Some(label) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            if let Some(greedy) = label.strip_suffix('+') {
                // The rest of the path as it is, empty segments and a
                // trailing slash included: `/b//k/` is the key `/k/` to S3.
                if i >= segments.len() || ti + 1 != tsegs.len() {
                    return None;
                }
                let rest = segments[i..].iter().map(|s| pct_decode(s)).collect::<Option<Vec<String>>>()?.join("/");
                if rest.is_empty() {
                    return None;
                }
                labels.push((greedy.to_string(), rest));
                i = segments.len();
                score += 1;
                continue;
            }
            let s = segments.get(i).filter(|s| !s.is_empty())?;
            labels.push((label.to_string(), pct_decode(s)?));
            score += 2;
        } else {
            if segments.get(i) != Some(t) {
                return None;
            }
            score += 10;
        }
        i += 1;
    }
    // All consumed, but for one trailing slash (`/bucket/`).
    let rest = &segments[i.min(segments.len())..];
    (rest.is_empty() || rest == [""]).then_some((score, labels))
}

/// A path segment percent-decoded; `None` when that is not UTF-8 (a lossy
/// decode would show policies a name AWS never reads).
/// S3's `x-amz-copy-source` (`/bucket/key?versionId=v`, URL-encoded) as
/// the SDKs' `CopySource` parameter spells it out, `{Bucket, Key,
/// VersionId}`, decoded as S3 decodes it: a rule on key prefixes must see
/// the key S3 copies from, not its encoding (`s%65cret/x` is `secret/x`).
fn copy_source(raw: &str) -> Result<Value, wire::Ambiguous> {
    let bad = |why: String| wire::Ambiguous(format!("x-amz-copy-source {why}"));
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    let b = path.as_bytes();
    let hex_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    if b.iter().enumerate().any(|(i, c)| *c == b'%' && !(hex_at(i + 1) && hex_at(i + 2))) {
        return Err(bad("has a % not followed by two hex digits".into()));
    }
    let path = pct_decode(path).ok_or_else(|| bad("is not UTF-8 once decoded".into()))?;
    let path = path.strip_prefix('/').unwrap_or(&path);
    // An access point's: arn:aws:s3:<region>:<account>:accesspoint/<name>/object/<key>.
    let split = if path.starts_with("arn:") { path.split_once("/object/") } else { path.split_once('/') };
    let (bucket, key) = split.filter(|(b, k)| !b.is_empty() && !k.is_empty()).ok_or_else(|| bad("names no bucket and key".into()))?;
    let mut out = Map::from_iter([("Bucket".to_string(), Value::from(bucket)), ("Key".to_string(), Value::from(key))]);
    for (k, v) in wire::form_pairs(query.as_bytes(), "x-amz-copy-source")? {
        if k != "versionId" || out.contains_key("VersionId") {
            return Err(bad(format!("names {k:?} in its query; only one versionId is read")));
        }
        out.insert("VersionId".into(), Value::String(v));
    }
    Ok(Value::Object(out))
}

fn pct_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

/// Turn query-protocol form keys (`IpPermissions.1.IpRanges.1.CidrIp`,
/// `Names.member.2`) into nested JSON: numbered segments become list
/// elements, `member`/`entry`/`item` wrappers are dropped. Two keys that
/// land on one value (`Names.1` and `Names.member.1`), or a key that is both
/// a value and a parent (`RoleArn` and `RoleArn.x`), are refused: AWS reads
/// one of them, and which one is not Veil's to guess.
pub fn unflatten(pairs: impl Iterator<Item = (String, String)>) -> Result<Value, wire::Ambiguous> {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let clash = || wire::Ambiguous(format!("parameter {:?} collides with another parameter", crate::policy::host::truncate(&key, 128)));
        let segs: Vec<&str> = key.split('.').filter(|s| !matches!(*s, "member" | "entry" | "item")).collect();
        let mut node = &mut root;
        for seg in &segs {
            let index = seg.parse::<usize>().ok().filter(|n| *n >= 1 && *n <= 10_000);
            if node.is_null() {
                *node = if index.is_some() { Value::Array(Vec::new()) } else { Value::Object(Map::new()) };
            }
            node = match (index, node) {
                (Some(n), Value::Array(arr)) => {
                    while arr.len() < n {
                        arr.push(Value::Null);
                    }
                    &mut arr[n - 1]
                }
                (None, Value::Object(map)) => map.entry(seg.to_string()).or_insert(Value::Null),
                _ => return Err(clash()),
            };
        }
        if !node.is_null() {
            return Err(clash());
        }
        *node = Value::String(value);
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static FORM_HEADERS: std::sync::LazyLock<http::HeaderMap> = std::sync::LazyLock::new(|| headers(&[("content-type", "application/x-www-form-urlencoded")]));

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn view<'a>(service: &'a str, method: &'a str, path: &'a str, query: &'a str, body: Option<&'a [u8]>) -> RequestView<'a> {
        RequestView { service, method, path, query, body, headers: &FORM_HEADERS }
    }

    #[test]
    fn blob_outputs_come_from_the_models() {
        let kms: Vec<&str> = blob_outputs("kms", "Decrypt").iter().map(Selector::as_str).collect();
        assert!(kms.contains(&"Plaintext"), "{kms:?}");
        let secrets: Vec<&str> = blob_outputs("secretsmanager", "GetSecretValue").iter().map(Selector::as_str).collect();
        assert_eq!(secrets, ["SecretBinary"]);
        // XML protocols name list members on the wire.
        let iam: Vec<&str> = blob_outputs("iam", "ListVirtualMFADevices").iter().map(Selector::as_str).collect();
        assert!(iam.contains(&"VirtualMFADevices.member[*].Base32StringSeed"), "{iam:?}");
        assert!(blob_outputs("sts", "GetCallerIdentity").is_empty());
        assert!(blob_outputs("nope", "Decrypt").is_empty());
    }

    #[test]
    fn streamed_outputs_name_their_member() {
        let s3 = &table().services["s3"][0];
        assert_eq!(s3.stream_member("GetObject"), Some("Body"));
        assert!(s3.streams_output("SelectObjectContent") && s3.stream_member("SelectObjectContent").is_none(), "events are never shown");
        assert!(!s3.streams_output("ListObjectsV2"));
        let lambda = &table().services["lambda"][0];
        assert_eq!(lambda.stream_member("Invoke"), Some("Payload"));
    }

    #[test]
    fn json_protocol_uses_the_target() {
        let h = headers(&[("x-amz-target", "secretsmanager.GetSecretValue"), ("content-type", "application/x-amz-json-1.1")]);
        let v = RequestView { headers: &h, ..view("secretsmanager", "POST", "/", "", Some(br#"{"SecretId":"prod/db"}"#)) };
        let c = classify(&v).unwrap();
        assert_eq!(c.action, "GetSecretValue");
        assert_eq!(c.resource.as_deref(), Some("prod/db"));
        let h = headers(&[("x-amz-target", "Other.GetSecretValue")]);
        assert!(classify(&RequestView { headers: &h, ..v }).is_err());
    }

    #[test]
    fn a_call_is_read_in_the_protocol_it_came_in() {
        // CloudWatch speaks CBOR, JSON and query; botocore sends JSON, older SDKs query.
        let h = headers(&[("x-amz-target", "GraniteServiceVersion20100801.ListMetrics"), ("content-type", "application/x-amz-json-1.0")]);
        let c = classify(&RequestView { headers: &h, ..view("monitoring", "POST", "/", "", Some(br#"{"Namespace":"App"}"#)) }).unwrap();
        assert_eq!((c.protocol, c.action.as_str(), &c.params), (Protocol::Json, "ListMetrics", &serde_json::json!({"Namespace": "App"})));
        assert_eq!(protocol_of("monitoring", &h), Some(Protocol::Json));
        let c = classify(&view("monitoring", "POST", "/", "", Some(b"Action=DeleteAlarms&Version=2010-08-01&AlarmNames.member.1=a"))).unwrap();
        assert_eq!((c.protocol, c.action.as_str()), (Protocol::Query, "DeleteAlarms"));
        assert_eq!(protocol_of("monitoring", &FORM_HEADERS), Some(Protocol::Query));
        // A JSON-only service is not read as a form, and its errors are JSON.
        assert!(classify(&view("secretsmanager", "POST", "/", "", Some(b"Action=DeleteSecret&SecretId=x"))).is_err());
        assert_eq!(protocol_of("secretsmanager", &http::HeaderMap::new()), Some(Protocol::Json));
        assert_eq!(protocol_of("monitoring", &http::HeaderMap::new()), Some(Protocol::Json), "CBOR's errors are not written; JSON's are");
    }

    #[test]
    fn a_target_call_whose_body_could_be_read_as_a_form_is_refused() {
        // AWS reads a form body on an endpoint that also speaks query: the
        // JSON string below hides `Action=DeleteAlarms` from a JSON reader.
        let body: &[u8] = br#"{"Namespace":"&Action=DeleteAlarms&AlarmNames.member.1=prod&"}"#;
        // What goes upstream says JSON: the client's JSON type, else the model's.
        for (ct, upstream) in [
            (Some("application/x-www-form-urlencoded"), None),
            (Some("text/plain"), None),
            (None, Some("application/x-amz-json-1.0")),
            (Some("application/x-amz-json-1.0"), Some("application/x-amz-json-1.0")),
            (Some("application/x-amz-json-1.1; charset=utf-8"), Some("application/x-amz-json-1.1")),
        ] {
            let mut pairs = vec![("x-amz-target", "GraniteServiceVersion20100801.ListMetrics")];
            pairs.extend(ct.map(|c| ("content-type", c)));
            let h = headers(&pairs);
            match (classify(&RequestView { headers: &h, ..view("monitoring", "POST", "/", "", Some(body)) }), upstream) {
                (Ok(c), Some(want)) => assert_eq!(c.forward.headers.get_all("content-type").iter().collect::<Vec<_>>(), [want], "{ct:?}"),
                (Err(ClassifyError::Ambiguous(_)), None) => {}
                (r, _) => panic!("{ct:?}: {r:?}"),
            }
        }
        let h = headers(&[("x-amz-target", "secretsmanager.ListSecrets")]);
        let c = classify(&RequestView { headers: &h, ..view("secretsmanager", "POST", "/", "", Some(b"{}")) }).unwrap();
        assert_eq!(c.forward.headers["content-type"], "application/x-amz-json-1.1", "secretsmanager's JSON version");
        let h = headers(&[("x-amz-target", "secretsmanager.ListSecrets"), ("content-type", "application/x-www-form-urlencoded")]);
        assert!(classify(&RequestView { headers: &h, ..view("secretsmanager", "POST", "/", "", Some(b"{}")) }).is_err());
    }

    #[test]
    fn a_rest_json_body_is_read_as_json_whatever_its_type_says() {
        let body: &[u8] = br#"{"Description":"0.0.0.0/0","Timeout":42}"#;
        for ct in [None, Some("text/plain"), Some("application/octet-stream"), Some("application/json")] {
            let h = headers(&ct.map(|c| vec![("content-type", c)]).unwrap_or_default());
            let c = classify(&RequestView { headers: &h, ..view("lambda", "PUT", "/2015-03-31/functions/f/configuration", "", Some(body)) }).unwrap();
            assert_eq!(c.action, "UpdateFunctionConfiguration");
            assert_eq!((&c.params["Description"], &c.params["Timeout"]), (&serde_json::json!("0.0.0.0/0"), &serde_json::json!(42)), "{ct:?}");
            let h = headers(&ct.map(|c| vec![("content-type", c)]).unwrap_or_default());
            assert!(classify(&RequestView { headers: &h, ..view("lambda", "PUT", "/2015-03-31/functions/f/configuration", "", Some(b"Timeout=42")) }).is_err(), "{ct:?}");
        }
        // A raw payload is the function's input, not parameters.
        let h = headers(&[("content-type", "text/plain")]);
        let c = classify(&RequestView { headers: &h, ..view("lambda", "POST", "/2015-03-31/functions/f/invocations", "", Some(b"not json")) }).unwrap();
        assert_eq!((c.action.as_str(), &c.params), ("Invoke", &serde_json::json!({"FunctionName": "f"})));
    }

    #[test]
    fn rest_xml_bodies_are_shown_to_policies() {
        let none = headers(&[]);
        let c = |method, path, query, body: &'static [u8]| classify(&RequestView { headers: &none, ..view("s3", method, path, query, Some(body)) });
        // A structure payload, under its member's name.
        let deleted = c("POST", "/b", "delete", b"<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Object><Key>prod/a</Key></Object><Object><Key>b&amp;c</Key></Object><Quiet>true</Quiet></Delete>").unwrap();
        assert_eq!(deleted.action, "DeleteObjects");
        assert_eq!(deleted.params, json!({"Bucket": "b", "delete": "", "Delete": {"Object": [{"Key": "prod/a"}, {"Key": "b&c"}], "Quiet": "true"}}));
        // A text payload, under its member's name.
        let policy = c("PUT", "/b", "policy", br#"{"Statement":[{"Effect":"Allow","Principal":"*"}]}"#).unwrap();
        assert_eq!((policy.action.as_str(), &policy.params["Policy"]), ("PutBucketPolicy", &json!(r#"{"Statement":[{"Effect":"Allow","Principal":"*"}]}"#)));
        // Data is not parameters.
        let put = c("PUT", "/b/k", "", b"<Delete><Object><Key>x</Key></Object></Delete>").unwrap();
        assert_eq!((put.action.as_str(), &put.params), ("PutObject", &json!({"Bucket": "b", "Key": "k"})));
        // No payload: the body holds the input's members.
        let rrset = classify(&view("route53", "POST", "/2013-04-01/hostedzone/Z1/rrset/", "", Some(b"<?xml version=\"1.0\"?><ChangeResourceRecordSetsRequest><ChangeBatch><Changes><Change><Action>DELETE</Action></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"))).unwrap();
        assert_eq!(rrset.params, json!({"HostedZoneId": "Z1", "ChangeBatch": {"Changes": {"Change": {"Action": "DELETE"}}}}));
        // What AWS could read another way, or that does not read, is refused.
        for body in [
            &b"<Delete><Object><Key>prod<i/>/a</Key></Object></Delete>"[..],
            b"<Delete>text</Delete>",
            b"<!DOCTYPE d [<!ENTITY k \"prod\">]><Delete><Object><Key>&k;</Key></Object></Delete>",
            b"{\"Delete\": {}}",
            b"<Delete><Object><Key>a</Key></Object></Delete><Delete/>",
        ] {
            let e = c("POST", "/b", "delete", body).unwrap_err();
            assert!(matches!(e, ClassifyError::BadParams(_)), "{}: {e}", String::from_utf8_lossy(body));
        }
        assert!(c("PUT", "/b", "policy", b"\xff\xfe").is_err(), "a text payload must be text");
        let many = [&b"<Delete>"[..], &b"<a/>".repeat(200_001), b"</Delete>"].concat();
        let e = classify(&RequestView { headers: &none, ..view("s3", "POST", "/b", "delete", Some(&many)) }).unwrap_err();
        assert!(e.to_string().contains("more than 200000 elements"), "{e}");
        // An empty structure and XML's whitespace are nothing; other spaces are text.
        assert_eq!(c("POST", "/b", "delete", b"<Delete>\n </Delete>").unwrap().params["Delete"], json!({}));
        assert!(c("POST", "/b", "delete", "<Delete><Object><Key>a</Key>\u{a0}</Object></Delete>".as_bytes()).is_err());
    }

    #[test]
    fn query_keys_and_labels_are_shown_under_their_members_names() {
        let none = headers(&[]);
        let list = classify(&RequestView { headers: &none, ..view("s3", "GET", "/b", "list-type=2&prefix=team-a%2F&max-keys=5", None) }).unwrap();
        assert_eq!((list.action.as_str(), &list.params), ("ListObjectsV2", &json!({"Bucket": "b", "list-type": "2", "Prefix": "team-a/", "MaxKeys": "5"})));
        assert_eq!(list.forward.path_and_query, "/b?list-type=2&prefix=team-a%2F&max-keys=5", "the wire names go upstream");
        let api = classify(&RequestView { headers: &none, ..view("apigateway", "GET", "/restapis/r1/stages/prod", "", None) }).unwrap();
        assert_eq!((api.action.as_str(), &api.params), ("GetStage", &json!({"restApiId": "r1", "stageName": "prod"})));
        assert_eq!(api.resource.as_deref(), Some("r1/prod"));
    }

    #[test]
    fn the_copy_source_is_shown_as_s3_reads_it() {
        let copy = |source: &str| {
            let h = headers(&[("x-amz-copy-source", source)]);
            classify(&RequestView { headers: &h, ..view("s3", "PUT", "/dst/k", "", None) }).map(|c| (c.action, c.params["CopySource"].clone()))
        };
        let (action, source) = copy("/src/s%65cret/a%20b%2Bc").unwrap();
        assert_eq!((action.as_str(), source), ("CopyObject", json!({"Bucket": "src", "Key": "secret/a b+c"})));
        assert_eq!(copy("src/k%3Fq?versionId=v1").unwrap().1, json!({"Bucket": "src", "Key": "k?q", "VersionId": "v1"}));
        let arn = copy("arn%3Aaws%3As3%3Aus-west-2%3A123456789012%3Aaccesspoint%2Fap%2Fobject%2Fdir%2Fk").unwrap().1;
        assert_eq!(arn, json!({"Bucket": "arn:aws:s3:us-west-2:123456789012:accesspoint/ap", "Key": "dir/k"}));
        for bad in ["/src/k%zz", "/src/k%2", "/src", "/src/", "//k", "/src/k?versionId=a&versionId=b", "/src/k?partNumber=1", "/src/%ff"] {
            assert!(copy(bad).is_err(), "{bad}");
        }
        // Forwarded as the caller encoded it.
        let h = headers(&[("x-amz-copy-source", "/src/s%65cret")]);
        let c = classify(&RequestView { headers: &h, ..view("s3", "PUT", "/dst/k", "", None) }).unwrap();
        assert_eq!(c.forward.headers["x-amz-copy-source"], "/src/s%65cret");
    }

    #[test]
    fn rest_json_structure_payloads_are_shown_under_their_member() {
        let c = classify(&view("glacier", "PUT", "/-/vaults/v/access-policy", "", Some(br#"{"Policy":"{}"}"#))).unwrap();
        assert_eq!((c.action.as_str(), &c.params), ("SetVaultAccessPolicy", &json!({"accountId": "-", "vaultName": "v", "policy": {"Policy": "{}"}})));
    }

    #[test]
    fn only_data_bodies_may_stream() {
        let s3 = model_of("s3").unwrap();
        assert!(s3.streams_input("PutObject") && s3.streams_input("UploadPart"));
        for op in ["DeleteObjects", "PutBucketPolicy", "PutBucketAcl", "PutPublicAccessBlock", "GetObject", "CompleteMultipartUpload"] {
            assert!(!s3.streams_input(op), "{op}");
        }
    }

    #[test]
    fn caller_named_operations_must_be_spelled_as_the_model_does() {
        for target in ["secretsmanager.getSecretValue", "secretsmanager.get_secret_value", "secretsmanager.GETSECRETVALUE", "secretsmanager.GetSecretValue "] {
            let h = headers(&[("x-amz-target", target), ("content-type", "application/x-amz-json-1.1")]);
            let e = classify(&RequestView { headers: &h, ..view("secretsmanager", "POST", "/", "", Some(b"{}")) }).unwrap_err();
            assert!(e.to_string().contains("case-sensitive"), "{target}: {e}");
        }
        for action in ["createUser", "create_user", "CreateUserX"] {
            let body = format!("Action={action}&Version=2010-05-08&UserName=u");
            assert!(classify(&view("iam", "POST", "/", "", Some(body.as_bytes()))).is_err(), "{action}");
        }
        assert_eq!(classify(&view("iam", "POST", "/", "", Some(b"Action=CreateUser&Version=2010-05-08&UserName=u"))).unwrap().action, "CreateUser");
    }

    #[test]
    fn cbor_requests_are_refused_with_a_reason() {
        let h = headers(&[("smithy-protocol", "rpc-v2-cbor"), ("content-type", "application/cbor")]);
        let e = classify(&RequestView { headers: &h, ..view("monitoring", "POST", "/service/GraniteServiceVersion20100801/operation/ListMetrics", "", Some(b"\xa0")) })
            .unwrap_err();
        assert!(e.to_string().contains("CBOR"), "{e}");
        // Elsewhere application/cbor is just a media type: an S3 object's.
        let h = headers(&[("content-type", "application/cbor")]);
        let c = classify(&RequestView { headers: &h, ..view("s3", "PUT", "/bucket/data.cbor", "", Some(b"\xa0")) }).unwrap();
        assert_eq!(c.action, "PutObject");
    }

    #[test]
    fn namespaced_targets_match_in_both_spellings() {
        // botocore sends the namespaced prefix, the JavaScript SDK v3 the shape name.
        let body: &[u8] = br#"{"Name":"trail"}"#;
        for target in ["com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.StopLogging", "CloudTrail_20131101.StopLogging"] {
            let h = headers(&[("x-amz-target", target), ("content-type", "application/x-amz-json-1.1")]);
            let c = classify(&RequestView { headers: &h, ..view("cloudtrail", "POST", "/", "", Some(body)) }).unwrap();
            assert_eq!((c.model.model.as_str(), c.action.as_str()), ("cloudtrail", "StopLogging"), "{target}");
        }
        let h = headers(&[("x-amz-target", "CodeStar_connections_20191201.ListConnections"), ("content-type", "application/x-amz-json-1.0")]);
        assert_eq!(classify(&RequestView { headers: &h, ..view("codestar-connections", "POST", "/", "", Some(b"{}")) }).unwrap().action, "ListConnections");
        // Only the whole last part: not any suffix, nor another service's shape.
        for target in ["Trail_20131101.StopLogging", "v20131101.CloudTrail_20131101.StopLogging", "secretsmanager.StopLogging"] {
            let h = headers(&[("x-amz-target", target), ("content-type", "application/x-amz-json-1.1")]);
            assert!(classify(&RequestView { headers: &h, ..view("cloudtrail", "POST", "/", "", Some(body)) }).is_err(), "{target}");
        }
    }

    #[test]
    fn query_and_ec2_use_action() {
        let c = classify(&view("iam", "POST", "/", "", Some(b"Action=CreateUser&Version=2010-05-08&UserName=bob"))).unwrap();
        assert_eq!(c.action, "CreateUser");
        assert_eq!(c.params, json!({"UserName": "bob"}));
        let body = b"Action=AuthorizeSecurityGroupIngress&GroupId=sg-1&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0&IpPermissions.1.FromPort=22";
        let c = classify(&view("ec2", "POST", "/", "", Some(body))).unwrap();
        assert_eq!(c.action, "AuthorizeSecurityGroupIngress");
        assert_eq!(c.params["IpPermissions"][0]["IpRanges"][0]["CidrIp"], "0.0.0.0/0");
        assert!(classify(&view("iam", "POST", "/", "", Some(b"UserName=bob"))).is_err());
    }

    #[test]
    fn rest_protocols_match_uri_templates() {
        let c = classify(&view("s3", "GET", "/bucket/path/to/key.txt", "", None)).unwrap();
        assert_eq!(c.action, "GetObject");
        assert_eq!(c.resource.as_deref(), Some("bucket/path/to/key.txt"));
        assert!(c.model.streams_output("GetObject"));
        assert_eq!(classify(&view("s3", "PUT", "/bucket/key", "", None)).unwrap().action, "PutObject");
        let copy = headers(&[("x-amz-copy-source", "src/key")]);
        let v = RequestView { headers: &copy, ..view("s3", "PUT", "/bucket/key", "", None) };
        assert_eq!(classify(&v).unwrap().action, "CopyObject");
        assert_eq!(classify(&view("s3", "GET", "/bucket", "list-type=2", None)).unwrap().action, "ListObjectsV2");
        assert_eq!(classify(&view("s3", "GET", "/", "", None)).unwrap().action, "ListBuckets");
        assert_eq!(classify(&view("s3", "POST", "/bucket/key", "uploads", None)).unwrap().action, "CreateMultipartUpload");
        let c = classify(&view("lambda", "GET", "/2015-03-31/functions/my-fn", "", None)).unwrap();
        assert_eq!(c.action, "GetFunction");
        assert_eq!(c.params["FunctionName"], "my-fn");
        assert!(classify(&view("lambda", "GET", "/nothing/here", "", None)).is_err());
        assert!(matches!(classify(&view("nosuch", "GET", "/", "", None)), Err(ClassifyError::UnknownService(_))));
    }

    fn pairs(p: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn unflatten_handles_members_and_indexes() {
        let v = unflatten(pairs(&[("Names.member.2", "b"), ("Names.member.1", "a")])).unwrap();
        assert_eq!(v, json!({"Names": ["a", "b"]}));
        // Huge indexes do not allocate.
        let v = unflatten(pairs(&[("A.99999999", "x")])).unwrap();
        assert_eq!(v, json!({"A": {"99999999": "x"}}));
    }

    #[test]
    fn unflatten_refuses_keys_that_collide() {
        for bad in [
            &[("RoleArn", "a"), ("RoleArn.x", "1")][..],
            &[("RoleArn.x", "1"), ("RoleArn", "a")],
            &[("Names.1", "a"), ("Names.member.1", "b")],
            &[("A.1", "a"), ("A.b", "b")],
            &[("A.member", "a"), ("A.member.1", "b")],
        ] {
            assert!(unflatten(pairs(bad)).is_err(), "{bad:?}");
        }
    }

    fn refused(v: &RequestView<'_>) -> String {
        match classify(v) {
            Err(ClassifyError::Ambiguous(a)) => a.0,
            other => panic!("not refused as ambiguous: {other:?}"),
        }
    }

    #[test]
    fn query_protocols_refuse_what_aws_could_read_another_way() {
        // Repeated, in the body or across query and body.
        refused(&view("iam", "POST", "/", "", Some(b"Action=ListUsers&Action=CreateUser&UserName=x")));
        refused(&view("iam", "POST", "/", "Action=CreateUser", Some(b"Action=ListUsers")));
        refused(&view("sts", "POST", "/", "", Some(b"Action=AssumeRole&RoleArn=a&RoleArn.x=1&RoleSessionName=s")));
        // A body that is not a form (or whose media type is spelled otherwise) is not skipped.
        let json = headers(&[("content-type", "application/json")]);
        refused(&RequestView { headers: &json, ..view("iam", "POST", "/", "Action=ListUsers", Some(b"Action=CreateUser&UserName=x")) });
        let upper = headers(&[("content-type", "Application/X-WWW-FORM-urlencoded; charset=UTF-8")]);
        let c = classify(&RequestView { headers: &upper, ..view("iam", "POST", "/", "", Some(b"Action=CreateUser&UserName=x")) }).unwrap();
        assert_eq!(c.action, "CreateUser");
        // Encodings Veil does not decode, and singleton headers sent twice.
        let gz = headers(&[("content-type", "application/x-www-form-urlencoded"), ("content-encoding", "gzip")]);
        refused(&RequestView { headers: &gz, ..view("iam", "POST", "/", "", Some(b"Action=ListUsers")) });
        let twice = headers(&[("content-type", "application/x-www-form-urlencoded"), ("content-type", "text/plain")]);
        refused(&RequestView { headers: &twice, ..view("iam", "POST", "/", "", Some(b"Action=ListUsers")) });
    }

    #[test]
    fn query_protocols_forward_the_parameters_policies_saw() {
        let c = classify(&view("iam", "GET", "/", "Action=CreateUser&Version=2010-05-08&UserName=a+b&X-Amz-Signature=ab", Some(b""))).unwrap();
        assert_eq!(c.params, json!({"UserName": "a b"}));
        assert_eq!(c.forward.method, http::Method::POST);
        assert_eq!(c.forward.path_and_query, "/");
        let body = c.forward.body.clone().unwrap();
        assert_eq!(&body[..], b"Action=CreateUser&Version=2010-05-08&UserName=a%20b");
        let again = classify(&view("iam", "POST", "/", "", Some(&body))).unwrap();
        assert_eq!((again.action, again.params), (c.action, c.params));
    }

    #[test]
    fn json_protocols_read_one_target_and_strict_bodies() {
        let h = headers(&[("x-amz-target", "secretsmanager.GetSecretValue"), ("content-type", "application/x-amz-json-1.1")]);
        refused(&RequestView { headers: &h, ..view("secretsmanager", "POST", "/", "", Some(br#"{"SecretId":"a","SecretId":"b"}"#)) });
        let two = headers(&[("x-amz-target", "secretsmanager.GetSecretValue"), ("x-amz-target", "secretsmanager.DeleteSecret")]);
        refused(&RequestView { headers: &two, ..view("secretsmanager", "POST", "/", "", Some(b"{}")) });
        let extra = headers(&[("x-amz-target", "secretsmanager.GetSecretValue"), ("x-moto-account-id", "1"), ("x-amz-acl", "x")]);
        let c = classify(&RequestView { headers: &extra, ..view("secretsmanager", "POST", "/", "a=b", Some(b"{}")) }).unwrap();
        assert_eq!(c.forward.path_and_query, "/");
        let names: Vec<&str> = c.forward.headers.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(names, ["x-amz-target", "content-type"]);
    }

    #[test]
    fn rest_protocols_refuse_several_sub_resources_and_conflicts() {
        assert!(refused(&view("s3", "PUT", "/bucket", "accelerate&acl", None)).contains("acl"));
        refused(&view("s3", "GET", "/bucket", "cors&policy", None));
        refused(&view("s3", "DELETE", "/bucket", "encryption&publicAccessBlock", None));
        refused(&view("s3", "GET", "/bucket", "prefix=a&prefix=b", None));
        // One sub-resource with its own parameters is fine.
        assert_eq!(classify(&view("s3", "GET", "/bucket/key", "acl&versionId=3", None)).unwrap().action, "GetObjectAcl");
        // A label given again in the body with another value.
        let json = headers(&[("content-type", "application/json")]);
        refused(&RequestView { headers: &json, ..view("lambda", "GET", "/2015-03-31/functions/my-fn", "", Some(br#"{"FunctionName":"other"}"#)) });
    }

    #[test]
    fn rest_protocols_show_bound_headers_and_forward_only_them() {
        let h = headers(&[("x-amz-acl", "public-read-write"), ("x-amz-meta-owner", "me"), ("x-moto-account-id", "2"), ("content-type", "text/plain")]);
        let c = classify(&RequestView { headers: &h, ..view("s3", "PUT", "/bucket/dir//key/", "", Some(b"data")) }).unwrap();
        assert_eq!(c.action, "PutObject");
        assert_eq!(c.params["Key"], "dir//key/", "S3 keys keep empty segments and a trailing slash");
        assert_eq!(c.params["ACL"], "public-read-write");
        assert_eq!(c.params["Metadata"], json!({"owner": "me"}));
        let mut names: Vec<&str> = c.forward.headers.keys().map(http::HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["content-type", "x-amz-acl", "x-amz-meta-owner"]);
        let acl = headers(&[("x-amz-acl", "private")]);
        let other = classify(&RequestView { headers: &acl, ..view("s3", "PUT", "/bucket", "acl", None) }).unwrap();
        assert_eq!(other.action, "PutBucketAcl");
        assert_eq!(other.params["ACL"], "private");
        // A path segment that is not UTF-8 once decoded names nothing.
        assert!(classify(&view("s3", "GET", "/bucket/%FF", "", None)).is_err());
    }

    #[test]
    fn the_digest_covers_body_headers_and_query() {
        let h1 = headers(&[("x-amz-acl", "private")]);
        let h2 = headers(&[("x-amz-acl", "public-read")]);
        let a = classify(&RequestView { headers: &h1, ..view("s3", "PUT", "/bucket", "acl", Some(b"")) }).unwrap();
        let b = classify(&RequestView { headers: &h2, ..view("s3", "PUT", "/bucket", "acl", Some(b"")) }).unwrap();
        assert_ne!(a.forward.digest(Some(b"")), b.forward.digest(Some(b"")));
        assert_ne!(a.forward.digest(Some(b"x")), a.forward.digest(Some(b"y")));
        assert_eq!(a.forward.digest(Some(b"x")), a.forward.digest(Some(b"x")));
    }
}
