//! AWS knowledge: which operation a request is (for all five protocols),
//! its parameters as JSON, and the codecs between wire bodies and the JSON
//! document tree that policies see.
//!
//! The operation table (`models/services.json`) is generated from botocore's
//! service models by `models/generate.py`; it is parsed once, on first use.

pub mod error;
pub mod sqs;
pub mod xml;

use std::collections::HashMap;
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
    /// Smithy RPC v2 CBOR (not parsed; passes policies as opaque).
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
    /// Wire protocol.
    pub protocol: Protocol,
    /// Endpoint prefix.
    pub prefix: String,
    /// One global endpoint.
    #[serde(default)]
    pub global: bool,
    /// X-Amz-Target prefix.
    pub target: Option<String>,
    #[serde(default)]
    ops: Vec<RestOp>,
    /// Operations whose response body is a stream: the payload member of a
    /// byte stream, `None` for a stream of events.
    #[serde(default)]
    streaming: HashMap<String, Option<String>>,
    /// Per operation, the selectors of its blob outputs (base64 on the wire).
    #[serde(default, deserialize_with = "selectors")]
    blobs: HashMap<String, Vec<Selector>>,
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

/// A REST operation: name, method, URI template, required request headers.
#[derive(Debug, Deserialize)]
struct RestOp(String, String, String, #[serde(default)] Vec<String>);

impl Model {
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

/// The protocol of a service's main model, for shaping errors before the
/// operation is known.
pub fn protocol_of(service: &str) -> Option<Protocol> {
    table().services.get(service).and_then(|m| m.first()).map(|m| m.protocol)
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
    /// The parameters do not parse.
    #[error("request parameters do not parse: {0}")]
    BadParams(String),
}

/// A classified request.
#[derive(Debug, Clone)]
pub struct Classified {
    /// The model it belongs to.
    pub model: &'static Model,
    /// Operation name.
    pub action: String,
    /// Parameters as JSON.
    pub params: Value,
    /// Main resource.
    pub resource: Option<String>,
}

/// What classification needs of a request.
pub struct RequestView<'a> {
    /// Signing name.
    pub service: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Raw path.
    pub path: &'a str,
    /// Raw query string.
    pub query: &'a str,
    /// X-Amz-Target, if any.
    pub target: Option<&'a str>,
    /// Content-Type, if any.
    pub content_type: Option<&'a str>,
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

/// Find the operation, its parameters and main resource.
pub fn classify(req: &RequestView<'_>) -> Result<Classified, ClassifyError> {
    let models = table().services.get(req.service).ok_or_else(|| ClassifyError::UnknownService(req.service.to_string()))?;
    let unknown = |reason: &str| ClassifyError::UnknownOperation { service: req.service.to_string(), reason: reason.to_string() };
    if let Some(target) = req.target {
        let (prefix, action) = target.rsplit_once('.').ok_or_else(|| unknown("X-Amz-Target is not Prefix.Operation"))?;
        let model = models
            .iter()
            .find(|m| m.target.as_deref() == Some(prefix))
            .ok_or_else(|| unknown("X-Amz-Target prefix does not belong to this service"))?;
        let params = json_body(req.body)?;
        return Ok(finish(model, action, params, None));
    }
    if let Some(model) = models.iter().find(|m| matches!(m.protocol, Protocol::Query | Protocol::Ec2)) {
        let mut form: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes()).into_owned().collect();
        let is_form = req.content_type.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if let (Some(body), true) = (req.body, is_form) {
            form.extend(form_urlencoded::parse(body).into_owned());
        }
        let action = form.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.clone()).ok_or_else(|| unknown("no Action parameter"))?;
        let params = unflatten(form.into_iter().filter(|(k, _)| k != "Action" && k != "Version"));
        return Ok(finish(model, &action, params, None));
    }
    let segments: Vec<&str> = req.path.split('/').skip(1).collect();
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes()).into_owned().collect();
    let mut best: Option<(usize, &Model, &str, Vec<(String, String)>)> = None;
    for model in models.iter().filter(|m| matches!(m.protocol, Protocol::RestJson | Protocol::RestXml)) {
        for RestOp(name, method, uri, required_headers) in &model.ops {
            if method != req.method || !required_headers.iter().all(|h| req.headers.contains_key(h.as_str())) {
                continue;
            }
            if let Some((score, labels)) = match_uri(uri, &segments, &query) {
                let score = score + 100 * required_headers.len();
                if best.as_ref().is_none_or(|b| score > b.0) {
                    best = Some((score, model, name, labels));
                }
            }
        }
    }
    let (_, model, action, labels) = best.ok_or_else(|| unknown("no operation matches this method and path"))?;
    let mut params = match (model.protocol, req.body) {
        (Protocol::RestJson, Some(b)) if !b.is_empty() && req.content_type.is_some_and(|c| c.contains("json")) => json_body(Some(b))?,
        _ => Value::Object(Map::new()),
    };
    let resource = if labels.is_empty() { None } else { Some(labels.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("/")) };
    if let Value::Object(map) = &mut params {
        for (k, v) in query.into_iter().chain(labels) {
            map.entry(k).or_insert(Value::String(v));
        }
    }
    Ok(finish(model, action, params, resource))
}

fn finish(model: &'static Model, action: &str, params: Value, resource: Option<String>) -> Classified {
    let resource = resource.or_else(|| {
        RESOURCE_PARAMS.iter().find_map(|k| match params.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
    });
    Classified { model, action: action.to_string(), params, resource }
}

fn json_body(body: Option<&[u8]>) -> Result<Value, ClassifyError> {
    match body {
        None | Some(b"") => Ok(Value::Object(Map::new())),
        Some(b) => {
            let v: Value = serde_json::from_slice(b).map_err(|e| ClassifyError::BadParams(format!("JSON body: {e}")))?;
            if v.is_object() { Ok(v) } else { Err(ClassifyError::BadParams("JSON body is not an object".into())) }
        }
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
    let segs: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
    let mut labels = Vec::new();
    let mut i = 0;
    for (ti, t) in tsegs.iter().enumerate() {
        if let Some(label) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            if let Some(greedy) = label.strip_suffix('+') {
                if i >= segs.len() || ti + 1 != tsegs.len() {
                    return None;
                }
                let rest: Vec<String> = segs[i..].iter().map(|s| pct_decode(s)).collect();
                labels.push((greedy.to_string(), rest.join("/")));
                i = segs.len();
                score += 1;
                continue;
            }
            let s = segs.get(i)?;
            labels.push((label.to_string(), pct_decode(s)));
            score += 2;
        } else {
            if segs.get(i) != Some(t) {
                return None;
            }
            score += 10;
        }
        i += 1;
    }
    (i == segs.len()).then_some((score, labels))
}

fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Turn query-protocol form keys (`IpPermissions.1.IpRanges.1.CidrIp`,
/// `Names.member.2`) into nested JSON: numbered segments become list
/// elements, `member`/`entry` wrappers are dropped.
pub fn unflatten(pairs: impl Iterator<Item = (String, String)>) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let segs: Vec<&str> = key.split('.').filter(|s| !matches!(*s, "member" | "entry" | "item")).collect();
        let mut node = &mut root;
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let index = seg.parse::<usize>().ok().filter(|n| *n >= 1 && *n <= 10_000);
            node = match (index, node) {
                (Some(n), node) => {
                    if !node.is_array() {
                        *node = Value::Array(Vec::new());
                    }
                    let arr = node.as_array_mut().expect("just made an array");
                    while arr.len() < n {
                        arr.push(Value::Null);
                    }
                    &mut arr[n - 1]
                }
                (None, node) => {
                    if !node.is_object() {
                        *node = Value::Object(Map::new());
                    }
                    node.as_object_mut().expect("just made an object").entry(seg.to_string()).or_insert(Value::Null)
                }
            };
            if last {
                *node = Value::String(value.clone());
            }
        }
    }
    root
}

/// The endpoint host of a service in a region (when no override is set).
pub fn endpoint_host(model: &Model, region: &str) -> String {
    if model.global {
        return format!("{}.amazonaws.com", model.prefix);
    }
    let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
    format!("{}.{region}.{suffix}", model.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> = std::sync::LazyLock::new(http::HeaderMap::new);

    fn view<'a>(service: &'a str, method: &'a str, path: &'a str, query: &'a str, body: Option<&'a [u8]>) -> RequestView<'a> {
        RequestView { service, method, path, query, target: None, content_type: Some("application/x-www-form-urlencoded"), body, headers: &NO_HEADERS }
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
        let v = RequestView { target: Some("secretsmanager.GetSecretValue"), content_type: Some("application/x-amz-json-1.1"), ..view("secretsmanager", "POST", "/", "", Some(br#"{"SecretId":"prod/db"}"#)) };
        let c = classify(&v).unwrap();
        assert_eq!(c.action, "GetSecretValue");
        assert_eq!(c.resource.as_deref(), Some("prod/db"));
        let v = RequestView { target: Some("Other.GetSecretValue"), ..v };
        assert!(classify(&v).is_err());
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
        let mut copy = http::HeaderMap::new();
        copy.insert("x-amz-copy-source", "src/key".parse().unwrap());
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

    #[test]
    fn unflatten_handles_members_and_indexes() {
        let v = unflatten(vec![("Names.member.2".to_string(), "b".to_string()), ("Names.member.1".to_string(), "a".to_string())].into_iter());
        assert_eq!(v, json!({"Names": ["a", "b"]}));
        // Huge indexes do not allocate.
        let v = unflatten(vec![("A.99999999".to_string(), "x".to_string())].into_iter());
        assert_eq!(v, json!({"A": {"99999999": "x"}}));
    }
}
