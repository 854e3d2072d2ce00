//! The audit trail: one [`Record`] per call (and per approval step and
//! policy reload), written to the durable local [`spool`] before the caller
//! gets its answer, then shipped to ClickHouse by the [`shipper`].
//!
//! Records never hold a secret, not even one a caller may see (a team
//! reading its own secret): request parameters and the response document
//! (after the policies' masks) are both reduced by [`redact`] to their
//! structure and identifiers (names, ids, ARNs, keys); every other string
//! becomes `"***"`.

pub mod local;
pub mod shipper;
pub mod spool;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::doc::{Look, Tree};
use crate::policy::host::truncate as cap;
pub use spool::{Spool, SpoolError, SpoolOptions};

/// Header an agent may send to tie calls to its session or prompt.
pub const SESSION_HEADER: &str = "x-veil-agent-session";

/// One audit record; also the row of the ClickHouse `audit` table (same
/// field names and order as `sql/schema.sql`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct Record {
    /// UUID v7 (time-ordered).
    pub id: String,
    /// Unix seconds (the table's DateTime).
    pub time: u32,
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// `call`, `approval` or `reload`.
    pub kind: String,
    /// Gateway instance.
    pub instance: String,
    /// Token issuer.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// Selected claims, JSON.
    pub claims: String,
    /// Caller's IP address.
    pub source_ip: String,
    /// AWS service.
    pub service: String,
    /// AWS action.
    pub action: String,
    /// Region.
    pub region: String,
    /// Main resource.
    pub resource: String,
    /// Request parameters, redacted to identifiers (JSON, capped like the
    /// response).
    pub params: String,
    /// allow, deny, approval-required, unauthenticated, error (calls);
    /// requested, approved, denied, expired, used (approvals); loaded, rejected (reloads).
    pub verdict: String,
    /// `policy: message` per reason.
    pub reasons: Vec<String>,
    /// Policies that decided the call.
    pub policy_names: Vec<String>,
    /// Their versions.
    pub policy_versions: Vec<String>,
    /// Their sha256s.
    pub policy_sha256s: Vec<String>,
    /// Approval id, when one applied.
    pub approval_id: String,
    /// Reviewers who decided it.
    pub approval_reviewers: Vec<String>,
    /// When it was decided, Unix ms (0: not decided).
    pub approval_decided_ms: u64,
    /// HTTP status returned to the caller.
    pub status: u16,
    /// AWS's request id.
    pub aws_request_id: String,
    /// The response document the caller received, after masks, redacted
    /// to identifiers (capped).
    pub response: String,
    /// 1 when `response` was cut at the cap.
    pub response_truncated: u8,
    /// Number of values masked in the response.
    pub masked_fields: u32,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Time verifying the caller, µs.
    pub auth_us: u64,
    /// Time in policies, µs.
    pub policy_us: u64,
    /// Time waiting for AWS, µs.
    pub upstream_us: u64,
    /// Time parsing, masking and re-serialising, µs.
    pub mask_us: u64,
    /// Whole call, µs.
    pub total_us: u64,
    /// The caller's User-Agent.
    pub user_agent: String,
    /// The `app/<id>` part of it (`AWS_SDK_UA_APP_ID`).
    pub app_id: String,
    /// W3C traceparent, if sent and well-formed.
    pub traceparent: String,
    /// Its trace id.
    pub trace_id: String,
    /// The `X-Veil-Agent-Session` header.
    pub agent_session: String,
    /// The STS role session name (`AWS_ROLE_SESSION_NAME`).
    pub role_session: String,
    /// Why the call failed, if it did.
    pub error: String,
    /// The role ARN the call asked to act as (admitted or not). Last, with
    /// `params_truncated`, so a spool record written before them reads as
    /// one without them.
    pub role: String,
    /// 1 when `params` was cut at the cap.
    pub params_truncated: u8,
}

impl Record {
    /// A record of `kind` stamped now with a fresh id.
    pub fn new(kind: &str, instance: &str) -> Record {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Record {
            id: uuid::Uuid::now_v7().to_string(),
            time: now.as_secs() as u32,
            ts_ms: now.as_millis() as u64,
            kind: kind.into(),
            instance: instance.into(),
            ..Record::default()
        }
    }

    /// Set the caller's user agent, its `app/<id>` part, and trace context.
    pub fn set_client(&mut self, headers: &http::HeaderMap) {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        self.user_agent = cap(h("user-agent"), 512).to_string();
        self.app_id = self
            .user_agent
            .split_ascii_whitespace()
            .find_map(|t| t.strip_prefix("app/"))
            .map(|s| cap(s, 64).to_string())
            .unwrap_or_default();
        let tp = h("traceparent");
        if let Some(trace) = parse_traceparent(tp) {
            self.traceparent = tp.to_string();
            self.trace_id = trace.to_string();
        }
        let session = h(SESSION_HEADER);
        if session.len() <= 128 && session.bytes().all(|b| b.is_ascii_graphic()) {
            self.agent_session = session.to_string();
        }
    }

    /// Name the policies that decided (names, versions, sha256s side by side).
    pub fn set_policies(&mut self, refs: Vec<crate::policy::PolicyRef>) {
        for r in refs {
            self.policy_names.push(r.name);
            self.policy_versions.push(r.version);
            self.policy_sha256s.push(r.sha256);
        }
    }

    /// Keep the response body as [`redact`] shows it, cut at `cap_bytes`
    /// (see [`capped`]).
    pub fn set_response_doc<'a>(&mut self, doc: impl Tree<'a>, cap_bytes: usize) {
        let (text, truncated) = capped(doc, cap_bytes);
        (self.response, self.response_truncated) = (text, u8::from(truncated));
    }

    /// Keep the request parameters as [`redact`] shows them, cut at
    /// `cap_bytes` (see [`capped`]): a record must fit the spool however
    /// large a request a caller sends.
    pub fn set_params_doc<'a>(&mut self, doc: impl Tree<'a>, cap_bytes: usize) {
        let (text, truncated) = capped(doc, cap_bytes);
        (self.params, self.params_truncated) = (text, u8::from(truncated));
    }
}

/// `doc` as [`redact`] shows it, cut at `cap_bytes` on a character
/// boundary, and whether it was cut. Only what is kept is written: a large
/// document costs its first `cap_bytes`, not a copy of the whole.
fn capped<'a>(doc: impl Tree<'a>, cap_bytes: usize) -> (String, bool) {
    let mut out = CapWriter { buf: Vec::with_capacity(cap_bytes.min(1 << 20) + 1), room: cap_bytes.saturating_add(1) };
    let complete = serde_json::to_writer(&mut out, &Redacted { v: doc, mode: Mode::Keep(false) }).is_ok();
    let text = match std::str::from_utf8(&out.buf) {
        Ok(t) => t,
        // Cut inside a character by the cap: keep the whole ones before it.
        Err(e) => std::str::from_utf8(&out.buf[..e.valid_up_to()]).unwrap_or_default(),
    };
    let kept = cap(text, cap_bytes);
    (kept.to_string(), !complete || kept.len() < text.len())
}

/// Spool payload format tags: postcard (compact, fast to decode; fields in
/// declaration order). V1 records predate `role` and `params_truncated`,
/// the last fields; payloads starting with `{` are JSON, as older spools
/// wrote them.
const POSTCARD_V1: u8 = 1;
const POSTCARD_V2: u8 = 2;

impl Record {
    /// The spool payload of this record.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![POSTCARD_V2];
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            // Unreachable for this struct; fall back to JSON rather than lose a record.
            Err(_) => serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// A record from a spool payload.
    pub fn decode(payload: &[u8]) -> Result<Record, String> {
        match payload.first() {
            Some(&POSTCARD_V2) => postcard::from_bytes(&payload[1..]).map_err(|e| e.to_string()),
            Some(&POSTCARD_V1) => {
                // An empty string in postcard is its length, a zero byte;
                // a zero u8 is a zero byte.
                let mut v2 = payload[1..].to_vec();
                v2.extend([0, 0]);
                postcard::from_bytes(&v2).map_err(|e| e.to_string())
            }
            Some(b'{') => serde_json::from_slice(payload).map_err(|e| e.to_string()),
            _ => Err("unknown record format".into()),
        }
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn parse_traceparent(v: &str) -> Option<&str> {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2) && parts[1].bytes().any(|b| b != b'0'))
        .then(|| parts[1])
}

/// A document (request parameters, response) as an audit record keeps it: identifiers survive
/// (keys named like `SecretId`, `UserName`, `Bucket`, `Key`, `…Arn`), numbers
/// and booleans survive, every other string is `"***"`, and free-form
/// containers (environment variables, user data) are redacted whole.
pub fn redact(v: &Value) -> Value {
    serde_json::to_value(Redacted { v, mode: Mode::Keep(false) }).unwrap_or(Value::Null)
}

/// How [`Redacted`] shows a value.
#[derive(Clone, Copy)]
enum Mode {
    /// Scalars are hidden unless the flag says they are identifiers;
    /// objects decide per key.
    Keep(bool),
    /// Everything but structure and nulls is hidden (free-form containers).
    All,
}

/// A document serialised as [`redact`] shows it, without building the copy.
struct Redacted<T> {
    v: T,
    mode: Mode,
}

impl<'a, T: Tree<'a>> Serialize for Redacted<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match (self.v.look(), self.mode) {
            (Look::Object, mode) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in self.v.entries() {
                    let mode = match mode {
                        Mode::All => Mode::All,
                        Mode::Keep(_) => {
                            let lower = k.to_ascii_lowercase();
                            if FREEFORM.contains(&lower.as_str()) {
                                Mode::All
                            } else {
                                Mode::Keep(is_identifier(k, &lower))
                            }
                        }
                    };
                    map.serialize_entry(k, &Redacted { v, mode })?;
                }
                map.end()
            }
            (Look::Array, mode) => {
                let mut seq = s.serialize_seq(None)?;
                for v in self.v.items() {
                    seq.serialize_element(&Redacted { v, mode })?;
                }
                seq.end()
            }
            (Look::Null, _) => s.serialize_unit(),
            (Look::Str(v), Mode::Keep(true)) => s.serialize_str(cap(v, 256)),
            (Look::Str(_), _) | (_, Mode::All) => s.serialize_str("***"),
            (Look::Bool(b), Mode::Keep(_)) => s.serialize_bool(b),
            (Look::Number, Mode::Keep(_)) => {
                match self.v.number_text().and_then(|t| t.parse::<serde_json::Number>().ok()) {
                    Some(n) => n.serialize(s),
                    None => s.serialize_unit(),
                }
            }
        }
    }
}

/// A writer that takes `room` bytes, then fails (ending serialisation).
struct CapWriter {
    buf: Vec<u8>,
    room: usize,
}

impl std::io::Write for CapWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let take = data.len().min(self.room - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        if take < data.len() {
            return Err(std::io::Error::other("audit response cap reached"));
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Containers whose keys and values are the user's own data.
const FREEFORM: &[&str] = &["variables", "environment", "environmentvariables", "userdata", "secretstring", "secretbinary", "plaintext"];
/// Whole parameter names that identify rather than carry content.
const IDENTIFIER_NAMES: &[&str] = &["bucket", "key", "prefix", "path", "region", "type", "status", "versionstage", "runtime", "handler", "engine", "delimiter"];
const IDENTIFIER_SUFFIXES: &[&str] = &["id", "ids", "name", "names", "arn", "arns", "identifier", "identifiers"];

/// AWS parameter names are CamelCase words: a user's own map keys
/// (`DB_NAME`) never count as identifiers.
fn is_identifier(key: &str, lower: &str) -> bool {
    key.bytes().all(|b| b.is_ascii_alphanumeric())
        && key.bytes().any(|b| b.is_ascii_lowercase())
        && (IDENTIFIER_NAMES.contains(&lower) || IDENTIFIER_SUFFIXES.iter().any(|s| lower.ends_with(s)))
        && !lower.contains("password")
        && !lower.contains("token")
        && (!lower.contains("secret") || ["secretid", "secretarn", "secretname"].contains(&lower))
}

/// The claims a record keeps, as JSON.
pub fn select_claims(claims: &Value, names: &[String]) -> String {
    let mut out = Map::new();
    for n in names {
        if let Some(v) = claims.get(n) {
            out.insert(n.clone(), v.clone());
        }
    }
    Value::Object(out).to_string()
}

/// The audit writer the gateway holds.
pub struct Audit {
    spool: Spool,
    durable: bool,
    reject_on_failure: bool,
    /// This gateway's name in records.
    pub instance: String,
    /// Claims copied into records.
    pub claims: Vec<String>,
    /// Response body cap.
    pub response_cap: usize,
    last_error: Mutex<Option<SpoolError>>,
    /// Whether `last_error` holds an error.
    failing: AtomicBool,
}

impl Audit {
    /// Open the spool named by the config (recovering a torn tail).
    pub fn open(cfg: &Config) -> Result<Audit, SpoolError> {
        let a = &cfg.audit;
        let (spool, recovery) = Spool::open(SpoolOptions {
            dir: cfg.resolve(&a.spool_dir),
            fsync_interval: Duration::from_millis(a.fsync_interval_ms),
            segment_bytes: a.segment_bytes,
            max_bytes: a.max_spool_bytes,
        })?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(dir = %spool.dir(), bytes = recovery.truncated_bytes, "audit spool: truncated a torn record at the end of the last segment");
        }
        tracing::info!(dir = %spool.dir(), segments = recovery.segments, bytes = spool.bytes(), "audit spool open");
        Ok(Audit {
            spool,
            durable: a.require_durable,
            reject_on_failure: a.on_failure == "reject",
            instance: a.instance.clone().unwrap_or_else(hostname),
            claims: a.claims.clone(),
            response_cap: a.response_cap_bytes,
            last_error: Mutex::new(None),
            failing: AtomicBool::new(false),
        })
    }

    /// The spool, for the shipper.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Write one record (`coming`: its announcement, [`Spool::coming`]).
    /// `Err` means the caller must not be answered normally (fail closed);
    /// with `on_failure = "log"` errors are logged and `Ok` returned.
    pub async fn write(&self, rec: &Record, coming: Option<spool::Coming>) -> Result<(), SpoolError> {
        match self.spool.append(rec.encode(), self.durable, coming).await {
            Ok(()) => {
                // Every call passes here: the lock only once the spool has failed.
                if self.failing.load(Ordering::Acquire) {
                    let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                    *last = None;
                    self.failing.store(false, Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, record = %rec.id, "audit record not written");
                let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                *last = Some(e.clone());
                self.failing.store(true, Ordering::Release);
                if self.reject_on_failure { Err(e) } else { Ok(()) }
            }
        }
    }

    /// The last write's error, when the gateway must refuse calls before
    /// they reach AWS (a call it cannot record must not happen).
    pub fn blocking_error(&self) -> Option<SpoolError> {
        if !self.reject_on_failure || !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "veil".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_keep_identifiers_and_hide_content() {
        let p = json!({
            "SecretId": "prod/db", "SecretString": "hunter2", "Name": "/app/x", "Value": "s3cr3t",
            "Type": "SecureString", "Overwrite": true, "MaxResults": 5,
            "Tags": [{"Key": "team", "Value": "payments"}],
            "Environment": {"Variables": {"DB_NAME": "prod", "API_KEY": "abc"}}, "SecretArn": "arn:x",
            "ClientSecretId": "x", "AuthToken": "t", "DB_NAME": "leak?"
        });
        let r = redact(&p);
        assert_eq!(r["SecretId"], "prod/db");
        assert_eq!(r["Name"], "/app/x");
        assert_eq!(r["SecretArn"], "arn:x");
        assert_eq!(r["Type"], "SecureString");
        assert_eq!(r["SecretString"], "***");
        assert_eq!(r["Value"], "***");
        assert_eq!(r["Overwrite"], true);
        assert_eq!(r["MaxResults"], 5);
        assert_eq!(r["Tags"][0]["Key"], "team");
        assert_eq!(r["Tags"][0]["Value"], "***");
        assert_eq!(r["Environment"]["Variables"]["DB_NAME"], "***");
        assert_eq!(r["ClientSecretId"], "***");
        assert_eq!(r["AuthToken"], "***");
        assert_eq!(r["DB_NAME"], "***");
        let text = r.to_string();
        for secret in ["hunter2", "s3cr3t", "abc", "payments", "leak?"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn client_context_from_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("user-agent", "Boto3/1.43.11 md/Botocore#1.43.11 ua/2.1 app/research-agent-7 cfg/retry-mode#legacy".parse().unwrap());
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        h.insert(SESSION_HEADER, "prompt-42".parse().unwrap());
        let mut r = Record::new("call", "test");
        r.set_client(&h);
        assert_eq!(r.app_id, "research-agent-7");
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.agent_session, "prompt-42");
        let mut r = Record::new("call", "test");
        r.set_client(&http::HeaderMap::new());
        assert_eq!(r.trace_id, "");
        let mut bad = http::HeaderMap::new();
        bad.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        let mut r = Record::new("call", "test");
        r.set_client(&bad);
        assert_eq!(r.trace_id, "");
        assert_eq!(r.traceparent, "");
    }

    #[test]
    fn response_is_redacted_and_capped_on_a_char_boundary() {
        let mut r = Record::default();
        let doc = json!({"Name": "ééééé", "SecretString": "hunter2", "N": 1});
        r.set_response_doc(&doc, 1000);
        assert_eq!(r.response, redact(&doc).to_string());
        assert_eq!(r.response, r#"{"N":1,"Name":"ééééé","SecretString":"***"}"#);
        assert_eq!(r.response_truncated, 0);
        // `{"N":1,"Name":"` is 15 bytes and é two: a cap inside an é keeps
        // the whole ones before it.
        r.set_response_doc(&doc, 16);
        assert_eq!((r.response.as_str(), r.response_truncated), (r#"{"N":1,"Name":""#, 1));
        r.set_response_doc(&doc, 18);
        assert_eq!((r.response.as_str(), r.response_truncated), (r#"{"N":1,"Name":"é"#, 1));
        r.set_response_doc(&doc, 19);
        assert_eq!((r.response.as_str(), r.response_truncated), (r#"{"N":1,"Name":"éé"#, 1));
        let whole = redact(&doc).to_string();
        r.set_response_doc(&doc, whole.len());
        assert_eq!((r.response.as_str(), r.response_truncated), (whole.as_str(), 0));
        r.set_response_doc(&doc, whole.len() - 1);
        assert_eq!(r.response_truncated, 1);
        // Request parameters are kept the same way.
        r.set_params_doc(&doc, 18);
        assert_eq!((r.params.as_str(), r.params_truncated), (r#"{"N":1,"Name":"é"#, 1));
        r.set_params_doc(&doc, whole.len());
        assert_eq!((r.params.as_str(), r.params_truncated), (whole.as_str(), 0));
    }

    #[test]
    fn records_round_trip_through_the_spool_formats() {
        let mut r = Record::new("call", "i");
        r.reasons = vec!["p: m".into()];
        r.status = 403;
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert_eq!(Record::decode(&serde_json::to_vec(&r).unwrap()).unwrap(), r);
        assert!(Record::decode(b"\xff").is_err());
        assert!(Record::decode(&r.encode()[..10]).is_err());
        // A record spooled before `role` existed: format 1, without the last field.
        let v2 = r.encode();
        let v1: Vec<u8> = [&[POSTCARD_V1][..], &v2[1..v2.len() - 2]].concat();
        assert_eq!((v2[0], &v2[v2.len() - 2..]), (POSTCARD_V2, &[0, 0][..]), "role (empty) and params_truncated (0) end it");
        assert_eq!(Record::decode(&v1).unwrap(), r);
        r.role = "arn:aws:iam::123456789012:role/agent".into();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[tokio::test]
    async fn a_failed_write_blocks_calls_until_one_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::minimal(dir.path(), "[audit]\nspool_dir = \"spool\"\nsegment_bytes = 4096\nmax_spool_bytes = 8192\n");
        let audit = Audit::open(&cfg).unwrap();
        assert!(audit.blocking_error().is_none());
        let rec = Record::new("call", "i");
        let mut refused = None;
        for _ in 0..200 {
            if let Err(e) = audit.write(&rec, None).await {
                refused = Some(e);
                break;
            }
        }
        assert!(matches!(refused, Some(SpoolError::Full { .. })), "{refused:?}");
        assert!(matches!(audit.blocking_error(), Some(SpoolError::Full { .. })), "later calls are refused before they reach AWS");
        audit.spool().release_before(audit.spool().durable()).unwrap();
        audit.write(&rec, None).await.unwrap();
        assert!(audit.blocking_error().is_none(), "a written record lifts the block");
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = Record::new("call", "i");
        let b = Record::new("call", "i");
        assert!(a.id < b.id);
    }
}
