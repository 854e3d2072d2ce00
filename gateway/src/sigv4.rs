//! SigV4: verifying the caller's signature, and re-signing for upstream.
//!
//! Verification follows the AWS spec: canonical request (method, canonical
//! URI, canonical query, the signed headers, payload hash), string to sign,
//! the derived signing key, constant-time compare; the request time must lie
//! within the configured skew of now. Both forms are accepted: the
//! `Authorization` header and presigned query parameters. Payload forms: a
//! hex SHA-256 (checked against the body: read whole, or as it streams
//! through [`CheckedPayload`]), `UNSIGNED-PAYLOAD` and
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER`; the signed-chunk streaming forms are
//! refused with a clear error (SDKs use them only over plain HTTP).
//!
//! Invariants: nothing here trusts a value it has not checked; every parse
//! failure is a [`SigError`] naming the field.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use hmac::{Hmac, Mac};
use http::request::Parts;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The payload hash of an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Payload not signed (S3 over TLS).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// aws-chunked body with an unsigned trailing checksum (S3 uploads with flexible checksums).
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Longest Authorization header or presigned query accepted.
const MAX_AUTH_LEN: usize = 8192;

/// Why a signature was refused. Each maps to an AWS-shaped 403 (or 501 for
/// unsupported forms).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    /// The Authorization header or presigned query does not parse.
    #[error("malformed SigV4 {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    /// Request time outside the allowed skew.
    #[error("request time {0} is outside the allowed clock skew (signature expired or from the future)")]
    Skew(String),
    /// The signature does not match.
    #[error("the request signature we calculated does not match the signature you provided")]
    Mismatch,
    /// The body does not match its signed hash.
    #[error("x-amz-content-sha256 does not match the request body")]
    PayloadMismatch,
    /// A payload form Veil does not verify.
    #[error("{0} is not supported by Veil (SigV4 with UNSIGNED-PAYLOAD, a payload hash or STREAMING-UNSIGNED-PAYLOAD-TRAILER is; SDKs use those over HTTPS)")]
    Unsupported(String),
}

/// What the caller's signature claims, parsed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// Access key id from the credential scope.
    pub access_key: String,
    /// `YYYYMMDD` of the scope.
    pub date: String,
    /// Region of the scope.
    pub region: String,
    /// Service signing name of the scope.
    pub service: String,
    /// Lower-case signed header names, in the order given.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// The payload hash that was signed.
    pub payload_hash: String,
    /// The security token (header or query), if any.
    pub security_token: Option<String>,
    /// Presigned URL: seconds it is valid for.
    pub presigned_expires: Option<u64>,
}

fn malformed(field: &'static str, reason: impl Into<String>) -> SigError {
    SigError::Malformed { field, reason: reason.into() }
}

fn header<'a>(parts: &'a Parts, name: &'static str) -> Result<Option<&'a str>, SigError> {
    let mut values = parts.headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(malformed(name_static(name), "the header appears more than once"));
    }
    first.to_str().map(Some).map_err(|_| malformed(name_static(name), "not visible ASCII"))
}

fn name_static(name: &'static str) -> &'static str {
    name
}

/// Whether the request carries SigV4 authentication (header or presigned).
pub fn is_sigv4(parts: &Parts) -> bool {
    parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with(ALGORITHM))
        || query_pairs(parts.uri.query().unwrap_or("")).any(|(k, _)| k == "X-Amz-Algorithm")
}

/// Whether the request uses the legacy Signature Version 2 (`Authorization:
/// AWS key:sig`, or presigned `AWSAccessKeyId=…&Signature=…`).
pub fn is_sigv2(parts: &Parts) -> bool {
    parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("AWS "))
        || query_pairs(parts.uri.query().unwrap_or("")).any(|(k, _)| k == "AWSAccessKeyId")
}

fn query_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (pct_decode(k), pct_decode(v))
    })
}

fn pct_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Whether a query key is presigned-URL authentication (Veil's to check,
/// never a parameter of the call).
pub fn is_presign_param(key: &str) -> bool {
    const AUTH: &[&str] = &[
        "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token",
    ];
    AUTH.iter().any(|a| a.eq_ignore_ascii_case(key))
}

/// Parse the signature claims of a request.
pub fn parse(parts: &Parts) -> Result<SignedRequest, SigError> {
    if let Some(auth) = header(parts, "authorization")? {
        if auth.len() > MAX_AUTH_LEN {
            return Err(malformed("authorization", "header too long"));
        }
        let rest = auth
            .strip_prefix(ALGORITHM)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| malformed("authorization", format!("expected {ALGORITHM}")))?;
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for item in rest.split(',') {
            let item = item.trim();
            let (k, v) = item.split_once('=').ok_or_else(|| malformed("authorization", format!("bad component {item:?}")))?;
            let slot = match k {
                "Credential" => &mut cred,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut sig,
                _ => return Err(malformed("authorization", format!("unknown component {k:?}"))),
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(malformed("authorization", format!("component {k} given twice")));
            }
        }
        let amz_date = match header(parts, "x-amz-date")? {
            Some(d) => d.to_string(),
            None => return Err(malformed("x-amz-date", "header is required")),
        };
        let payload_hash = header(parts, "x-amz-content-sha256")?.map(str::to_string);
        let security_token = header(parts, "x-amz-security-token")?.map(str::to_string);
        build(
            cred.ok_or_else(|| malformed("authorization", "Credential is missing"))?,
            signed.ok_or_else(|| malformed("authorization", "SignedHeaders is missing"))?,
            sig.ok_or_else(|| malformed("authorization", "Signature is missing"))?,
            amz_date,
            payload_hash,
            security_token,
            None,
        )
    } else {
        let q = parts.uri.query().unwrap_or("");
        if q.len() > MAX_AUTH_LEN * 4 {
            return Err(malformed("query", "query string too long"));
        }
        let get = |name: &'static str| -> Result<Option<String>, SigError> {
            let mut found = query_pairs(q).filter(|(k, _)| k == name).map(|(_, v)| v);
            let first = found.next();
            if found.next().is_some() {
                return Err(malformed(name, "given more than once"));
            }
            Ok(first)
        };
        let alg = get("X-Amz-Algorithm")?.ok_or_else(|| malformed("authorization", "no SigV4 authentication"))?;
        if alg != ALGORITHM {
            return Err(malformed("X-Amz-Algorithm", format!("expected {ALGORITHM}")));
        }
        let expires: u64 = get("X-Amz-Expires")?
            .ok_or_else(|| malformed("X-Amz-Expires", "required"))?
            .parse()
            .map_err(|_| malformed("X-Amz-Expires", "not a number"))?;
        if !(1..=604_800).contains(&expires) {
            return Err(malformed("X-Amz-Expires", "must be 1..604800"));
        }
        build(
            get("X-Amz-Credential")?.ok_or_else(|| malformed("X-Amz-Credential", "required"))?,
            get("X-Amz-SignedHeaders")?.ok_or_else(|| malformed("X-Amz-SignedHeaders", "required"))?,
            get("X-Amz-Signature")?.ok_or_else(|| malformed("X-Amz-Signature", "required"))?,
            get("X-Amz-Date")?.ok_or_else(|| malformed("X-Amz-Date", "required"))?,
            Some(UNSIGNED_PAYLOAD.to_string()),
            get("X-Amz-Security-Token")?,
            Some(expires),
        )
    }
}

fn build(
    cred: String,
    signed: String,
    signature: String,
    amz_date: String,
    payload_hash: Option<String>,
    security_token: Option<String>,
    presigned_expires: Option<u64>,
) -> Result<SignedRequest, SigError> {
    let scope: Vec<&str> = cred.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(malformed("Credential", "expected <key>/<date>/<region>/<service>/aws4_request"));
    };
    if access_key.is_empty() || access_key.len() > 128 || !access_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(malformed("Credential", "bad access key id"));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("Credential", "bad date"));
    }
    crate::aws::endpoint::check_region(region).map_err(|e| malformed("Credential", e.to_string()))?;
    crate::aws::endpoint::check_service(service).map_err(|e| malformed("Credential", e.to_string()))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(malformed("Signature", "expected 64 lower-case hex digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers.iter().any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())) {
        return Err(malformed("SignedHeaders", "expected lower-case names separated by ;"));
    }
    if !signed_headers.windows(2).all(|w| w[0] < w[1]) {
        return Err(malformed("SignedHeaders", "names must be sorted and unique"));
    }
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(malformed("SignedHeaders", "host must be signed"));
    }
    if amz_date.len() != 16 || !amz_date.starts_with(date) {
        return Err(malformed("x-amz-date", "expected YYYYMMDDTHHMMSSZ on the credential's date"));
    }
    let payload_hash = payload_hash.unwrap_or_default();
    Ok(SignedRequest {
        access_key: access_key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature,
        amz_date,
        payload_hash,
        security_token,
        presigned_expires,
    })
}

/// `x-amz-date`'s form, `YYYYMMDDTHHMMSSZ`.
const AMZ_DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

thread_local! {
    /// The last date parsed and the last second formatted on this thread:
    /// the calls of one second all carry the same `x-amz-date`.
    static LAST_PARSED: std::cell::RefCell<(String, Option<u64>)> = const { std::cell::RefCell::new((String::new(), None)) };
    static LAST_FORMATTED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Parse `YYYYMMDDTHHMMSSZ` to a Unix time.
pub fn parse_amz_date(s: &str) -> Option<u64> {
    LAST_PARSED.with_borrow_mut(|(text, parsed)| {
        if text != s {
            *parsed = time::PrimitiveDateTime::parse(s, AMZ_DATE).ok().map(|t| t.assume_utc().unix_timestamp()).and_then(|t| u64::try_from(t).ok());
            text.clear();
            text.push_str(s);
        }
        *parsed
    })
}

/// Format a Unix time as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    LAST_FORMATTED.with_borrow_mut(|(second, text)| {
        if *second != secs {
            *text = time::OffsetDateTime::from(UNIX_EPOCH + Duration::from_secs(secs)).format(AMZ_DATE).unwrap_or_default();
            *second = secs;
        }
        text.clone()
    })
}

/// Whether the payload hash needs the whole body to check.
pub fn payload_is_hashed(req: &SignedRequest) -> Result<bool, SigError> {
    match req.payload_hash.as_str() {
        "" => Ok(true),
        UNSIGNED_PAYLOAD | STREAMING_UNSIGNED_TRAILER => Ok(false),
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(true),
        other => Err(SigError::Unsupported(format!("payload signing form {}", other.chars().take(64).collect::<String>()))),
    }
}

/// Verify `req`'s signature with `secret`, at time `now`. `body_sha256` is
/// the hex hash of the body when it was read (required unless the payload is
/// unsigned).
pub fn verify(
    parts: &Parts,
    req: &SignedRequest,
    secret: &str,
    body_sha256: Option<&str>,
    now: SystemTime,
    max_skew: Duration,
) -> Result<(), SigError> {
    let t = parse_amz_date(&req.amz_date).ok_or_else(|| malformed("x-amz-date", "not a valid time"))?;
    let now_s = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match req.presigned_expires {
        Some(expires) => {
            if t > now_s + max_skew.as_secs() || now_s > t + expires {
                return Err(SigError::Skew(req.amz_date.clone()));
            }
        }
        None => {
            if t.abs_diff(now_s) > max_skew.as_secs() {
                return Err(SigError::Skew(req.amz_date.clone()));
            }
        }
    }
    let payload = if payload_is_hashed(req)? {
        let actual = body_sha256.ok_or(SigError::PayloadMismatch)?;
        if !req.payload_hash.is_empty() && !req.payload_hash.eq_ignore_ascii_case(actual) {
            return Err(SigError::PayloadMismatch);
        }
        actual.to_string()
    } else {
        req.payload_hash.clone()
    };
    let canonical = canonical_request(parts, req, &payload)?;
    let expected = signature(secret, req, &canonical);
    if expected.as_bytes().ct_eq(req.signature.as_bytes()).into() {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

/// RFC 3986 unreserved characters stay; everything else is %XX (upper case).
const AWS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn aws_encode(s: &str) -> String {
    utf8_percent_encode(s, AWS_ENCODE).to_string()
}

/// The canonical request of the spec.
fn canonical_request(parts: &Parts, req: &SignedRequest, payload_hash: &str) -> Result<String, SigError> {
    let mut out = String::with_capacity(512);
    out.push_str(parts.method.as_str());
    out.push('\n');
    // The SDK encodes each path segment once for S3 and twice for every other
    // service; decoding first makes this independent of how the client
    // encoded the path on the wire.
    let path = parts.uri.path();
    let path = if path.is_empty() { "/" } else { path };
    let segments: Vec<String> = path
        .split('/')
        .map(|seg| {
            let once = aws_encode(&pct_decode(seg));
            if req.service == "s3" { once } else { aws_encode(&once) }
        })
        .collect();
    out.push_str(&segments.join("/"));
    out.push('\n');
    push_canonical_query(&mut out, query_pairs(parts.uri.query().unwrap_or("")).filter(|(k, _)| k != "X-Amz-Signature"));
    out.push('\n');
    for name in &req.signed_headers {
        out.push_str(name);
        out.push(':');
        let mut found = false;
        if name == "host" && !parts.headers.contains_key(http::header::HOST) {
            // HTTP/2 carries the host in :authority.
            if let Some(authority) = parts.uri.authority() {
                out.push_str(authority.as_str());
                found = true;
            }
        } else {
            // Each value trimmed, its runs of whitespace made one space (as
            // the SDKs sign), the values joined by commas.
            for v in parts.headers.get_all(name.as_str()) {
                let v = v.to_str().map_err(|_| malformed("SignedHeaders", format!("header {name} is not visible ASCII")))?;
                if found {
                    out.push(',');
                }
                found = true;
                for (i, word) in v.split_ascii_whitespace().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(word);
                }
            }
        }
        if !found {
            return Err(malformed("SignedHeaders", format!("signed header {name} is not in the request")));
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&req.signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The canonical query of decoded `pairs`: each name and value encoded,
/// the pairs sorted, joined as `k=v&k=v`.
fn push_canonical_query<K: AsRef<str>, V: AsRef<str>>(out: &mut String, pairs: impl Iterator<Item = (K, V)>) {
    let mut query: Vec<(String, String)> = pairs.map(|(k, v)| (aws_encode(k.as_ref()), aws_encode(v.as_ref()))).collect();
    query.sort();
    for (i, (k, v)) in query.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn signature(secret: &str, req: &SignedRequest, canonical: &str) -> String {
    sign_canonical(secret, &req.amz_date, &req.date, &req.region, &req.service, canonical)
}

/// The hex signature of a canonical request made at `amz_date` (whose day
/// is `date`) for `region` and `service`.
fn sign_canonical(secret: &str, amz_date: &str, date: &str, region: &str, service: &str, canonical: &str) -> String {
    let to_sign = format!("{ALGORITHM}\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}", hex::encode(Sha256::digest(canonical)));
    hex::encode(hmac(&signing_key(secret, date, region, service), to_sign.as_bytes()))
}

/// A signing key derived on this thread (see [`signing_key`]).
struct DerivedKey {
    secret: String,
    date: String,
    region: String,
    service: String,
    key: [u8; 32],
}

/// Keys kept per thread: a gateway signs and verifies with a few secrets,
/// regions and services a day.
const DERIVED_KEYS: usize = 16;

thread_local! {
    static KEYS: std::cell::RefCell<Vec<DerivedKey>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The SigV4 signing key of a secret for one day, region and service: four
/// HMACs, derived once a day per thread and kept (`DERIVED_KEYS`).
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    KEYS.with_borrow_mut(|keys| {
        // Most recently used last: a hit moves to the end, so the few keys in
        // steady use (Veil's own upstream credential) outlive a stream of
        // callers' session secrets, each used for a while and then gone.
        if let Some(i) = keys.iter().position(|k| k.date == date && k.region == region && k.service == service && k.secret == secret) {
            keys[i..].rotate_left(1);
            return keys[keys.len() - 1].key;
        }
        let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        let k = hmac(&k, region.as_bytes());
        let k = hmac(&k, service.as_bytes());
        let key = hmac(&k, b"aws4_request");
        if keys.len() >= DERIVED_KEYS {
            keys.remove(0);
        }
        keys.push(DerivedKey { secret: secret.to_string(), date: date.to_string(), region: region.to_string(), service: service.to_string(), key });
        key
    })
}

/// The credential an upstream request is signed with.
pub struct Signer<'a> {
    /// Access key id.
    pub access_key: &'a str,
    /// Secret access key.
    pub secret: &'a str,
    /// Session token of temporary credentials.
    pub session_token: Option<&'a str>,
}

/// Headers that are never signed: changed by proxies or by the signing
/// itself (the AWS SDKs' common set).
const UNSIGNED_HEADERS: &[&str] = &["authorization", "user-agent", "x-amzn-trace-id", "transfer-encoding"];

impl Signer<'_> {
    /// Sign a request for AWS in place, as the AWS SDKs do with header
    /// signatures: sets `x-amz-date`, `x-amz-security-token` (temporary
    /// credentials), `x-amz-content-sha256` (S3) and `Authorization`, which
    /// signs every header but [`UNSIGNED_HEADERS`]. `headers` must hold the
    /// `host` the request goes to. The canonical URI is the path as sent for
    /// S3, else the path with dot segments and empty segments removed and
    /// encoded once more; the query is decoded and re-encoded, sorted.
    pub fn sign(&self, method: &http::Method, uri: &http::Uri, headers: &mut http::HeaderMap, service: &str, region: &str, payload_hash: &str, now: SystemTime) -> Result<(), SigError> {
        let value = |field: &'static str, v: &str| http::HeaderValue::from_str(v).map_err(|_| malformed(field, "not a valid header value"));
        let amz_date = format_amz_date(now);
        headers.insert("x-amz-date", value("x-amz-date", &amz_date)?);
        if let Some(token) = self.session_token {
            let mut token = value("x-amz-security-token", token)?;
            token.set_sensitive(true);
            headers.insert("x-amz-security-token", token);
        }
        let s3 = service == "s3";
        if s3 {
            headers.insert("x-amz-content-sha256", value("x-amz-content-sha256", payload_hash)?);
        }
        if !headers.contains_key(http::header::HOST) {
            return Err(malformed("host", "the request has no host to sign"));
        }
        let mut canonical = String::with_capacity(512);
        canonical.push_str(method.as_str());
        canonical.push('\n');
        let path = uri.path();
        if s3 {
            canonical.push_str(path);
        } else {
            canonical.push_str(&utf8_percent_encode(&normalize_path(path), AWS_PATH_ENCODE).to_string());
        }
        canonical.push('\n');
        push_canonical_query(&mut canonical, form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()));
        canonical.push('\n');
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).filter(|n| !UNSIGNED_HEADERS.contains(n)).collect();
        names.sort_unstable();
        let mut signed = String::with_capacity(128);
        for name in names {
            let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).peekable();
            if values.peek().is_none() {
                continue;
            }
            canonical.push_str(name);
            canonical.push(':');
            for (i, v) in values.enumerate() {
                if i > 0 {
                    canonical.push(',');
                }
                push_trimmed(&mut canonical, v);
            }
            canonical.push('\n');
            if !signed.is_empty() {
                signed.push(';');
            }
            signed.push_str(name);
        }
        canonical.push('\n');
        canonical.push_str(&signed);
        canonical.push('\n');
        canonical.push_str(payload_hash);
        let date = &amz_date[..8];
        let signature = sign_canonical(self.secret, &amz_date, date, region, service, &canonical);
        let auth = format!("{ALGORITHM} Credential={}/{date}/{region}/{service}/aws4_request, SignedHeaders={signed}, Signature={signature}", self.access_key);
        headers.insert(http::header::AUTHORIZATION, value("authorization", &auth)?);
        Ok(())
    }
}

/// What the path of a canonical URI keeps unencoded: RFC 3986's unreserved
/// characters and the slashes between segments.
const AWS_PATH_ENCODE: &AsciiSet = &AWS_ENCODE.remove(b'/');

/// A value with its leading and trailing spaces cut and each run of spaces
/// made one (spaces only, not other whitespace: what S3 does).
fn push_trimmed(out: &mut String, value: &str) {
    let mut last_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
}

/// RFC 3986's remove-dot-segments on an absolute path, also dropping empty
/// segments (`/a//b` signs as `/a/b`) and keeping a trailing slash.
fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.is_empty() {
        return "/".into();
    }
    let absolute: std::borrow::Cow<'_, str> = if path.starts_with('/') { path.into() } else { format!("/{path}").into() };
    if !(absolute.contains('.') || absolute.contains("//")) {
        return absolute;
    }
    let mut kept: Vec<&str> = Vec::new();
    for segment in absolute.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut out = format!("/{}", kept.join("/"));
    if ["/", "/.", "/./", "/..", "/../"].iter().any(|end| absolute.ends_with(end)) && !out.ends_with('/') {
        out.push('/');
    }
    out.into()
}

/// A streamed body checked against the SHA-256 its signature declared,
/// without buffering it. Bytes pass on as they arrive, except the last
/// chunk, held back until the stream ends and the hash is compared: on a
/// mismatch the stream ends in an error instead, so the request it feeds
/// upstream falls short of its Content-Length and never completes.
pub struct CheckedPayload<B> {
    inner: B,
    hasher: Sha256,
    declared: String,
    held: Option<Bytes>,
    /// A trailers frame, passed on after the held chunk.
    trailers: Option<Frame<Bytes>>,
    done: bool,
    mismatch: Arc<AtomicBool>,
}

/// Whether a [`CheckedPayload`] found its body unlike its signed hash.
#[derive(Clone, Debug)]
pub struct PayloadCheck(Arc<AtomicBool>);

impl PayloadCheck {
    /// True once the stream ended with a body that does not match.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<B> CheckedPayload<B> {
    /// Check `inner` against `declared`, the hex SHA-256 the caller signed.
    pub fn new(inner: B, declared: &str) -> (CheckedPayload<B>, PayloadCheck) {
        let mismatch = Arc::new(AtomicBool::new(false));
        let body = CheckedPayload {
            inner,
            hasher: Sha256::new(),
            declared: declared.to_ascii_lowercase(),
            held: None,
            trailers: None,
            done: false,
            mismatch: mismatch.clone(),
        };
        (body, PayloadCheck(mismatch))
    }

    /// The end of the body: the held chunk if the hash matches, else an error.
    fn finish(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.done = true;
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.declared {
            self.mismatch.store(true, Ordering::Release);
            self.held = None;
            self.trailers = None;
            return Some(Err(Box::new(SigError::PayloadMismatch)));
        }
        self.held.take().map(Frame::data).or_else(|| self.trailers.take()).map(Ok)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for CheckedPayload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.held.take().map(Frame::data).or_else(|| this.trailers.take()).map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        this.hasher.update(&data);
                        if let Some(previous) = this.held.replace(data) {
                            return Poll::Ready(Some(Ok(Frame::data(previous))));
                        }
                    }
                    // Trailers end the data.
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        return Poll::Ready(this.finish());
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => return Poll::Ready(this.finish()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key in steady use stays derived while many others pass through,
    /// and a key taken from the cache is the one derived afresh.
    #[test]
    fn signing_keys_in_use_outlive_passing_ones() {
        let steady = signing_key("steady-secret", "20261207", "us-east-1", "sts");
        for i in 0..(3 * DERIVED_KEYS) {
            signing_key(&format!("session-{i}"), "20261207", "us-east-1", "sts");
            assert_eq!(signing_key("steady-secret", "20261207", "us-east-1", "sts"), steady);
            assert!(KEYS.with_borrow(|keys| keys.last().is_some_and(|k| k.secret == "steady-secret")), "a hit is the most recently used");
        }
        assert!(KEYS.with_borrow(|keys| keys.len() == DERIVED_KEYS && keys.iter().any(|k| k.secret == "steady-secret")));
        assert!(KEYS.with_borrow(|keys| !keys.iter().any(|k| k.secret == "session-0")), "passing keys are dropped");
        KEYS.with_borrow_mut(Vec::clear);
        assert_eq!(signing_key("steady-secret", "20261207", "us-east-1", "sts"), steady);
    }

    /// Signing the AWS documentation's example gives its signature.
    #[test]
    fn signs_the_aws_documentation_example() {
        let uri: http::Uri = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("host", http::HeaderValue::from_static("iam.amazonaws.com"));
        headers.insert("content-type", http::HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
        let now = UNIX_EPOCH + Duration::from_secs(parse_amz_date("20150830T123600Z").unwrap());
        let signer = Signer { access_key: "AKIDEXAMPLE", secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", session_token: None };
        signer.sign(&http::Method::GET, &uri, &mut headers, "iam", "us-east-1", EMPTY_SHA256, now).unwrap();
        assert_eq!(
            headers["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        // A request without its host cannot be signed.
        headers.remove("host");
        assert!(signer.sign(&http::Method::GET, &uri, &mut headers, "iam", "us-east-1", EMPTY_SHA256, now).is_err());
    }

    /// The same request signed by [`Signer`] and by the AWS SDK's signer
    /// (aws-sigv4, with the settings the SDKs use: S3's single encoding and
    /// payload header, every other service's normalised, doubly encoded
    /// path) must carry the same signature headers. Paths, queries and
    /// headers mix the cases where signers differ: dot and empty segments,
    /// encoded slashes and percents, `+`, repeated and empty parameters,
    /// repeated headers, runs of spaces, unsigned headers, non-ASCII values.
    #[test]
    fn signs_as_the_aws_sdk_signer_does() {
        use aws_sigv4::http_request::{sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode};
        const SEGMENTS: &[&str] = &["a", "", ".", "..", "b%2Fc", "x%20y", "100%25", "~u-v_w.z", "k=v", "%C3%A9t%C3%A9", "a+b", "(x)", "...", "%2e%2E"];
        const QUERIES: &[&str] = &["", "Action=ListUsers&Version=2010-05-08", "b=2&a=1&a=0", "flag", "x=&y", "q=a+b&r=%2B", "&&k=v&", "list-type=2&prefix=a%2Fb%20c", "uploads", "k=%E2%9C%93&k=%7E", "=v", "a=1=2", "%ZZ=1", "Marker=AB%3D%3D"];
        const HEADERS: &[(&str, &str)] = &[
            ("content-type", "application/x-amz-json-1.1"), ("x-amz-target", "secretsmanager.GetSecretValue"), ("user-agent", "aws-cli/2 md/x"),
            ("x-amz-meta-note", "  two   spaces  "), ("x-amz-meta-note", "second value"), ("x-amzn-trace-id", "Root=1-abc"), ("x-custom", "tab\there"),
            ("x-amz-meta-latin", "caf\u{e9}"), ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="), ("range", "bytes=0-9"), ("x-amz-acl", "private"),
        ];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for case in 0..600 {
            let service = ["s3", "iam", "secretsmanager", "execute-api", "sts"][next(5)];
            let region = ["us-east-1", "eu-west-3"][next(2)];
            let method = [http::Method::GET, http::Method::PUT, http::Method::POST, http::Method::DELETE][next(4)].clone();
            let path: Vec<&str> = (0..next(5)).map(|_| SEGMENTS[next(SEGMENTS.len())]).collect();
            let path = format!("/{}", path.join("/"));
            let query = QUERIES[next(QUERIES.len())];
            let pq = if query.is_empty() && next(2) == 0 { path.clone() } else { format!("{path}?{query}") };
            let host = ["s3.us-east-1.amazonaws.com", "127.0.0.1:5000", "iam.amazonaws.com:443"][next(3)];
            let uri: http::Uri = format!("https://{host}{pq}").parse().unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, http::HeaderValue::from_str(host).unwrap());
            for _ in 0..next(6) {
                let (k, v) = HEADERS[next(HEADERS.len())];
                headers.append(k, http::HeaderValue::from_bytes(v.as_bytes()).unwrap());
            }
            let token = ["FwoGZXIvYXdzEJr//////////wEaDH+token=", ""][next(2)];
            let body = ["", "{\"SecretId\": \"prod/db\"}"][next(2)];
            let payload = match next(4) {
                0 => UNSIGNED_PAYLOAD.to_string(),
                1 => STREAMING_UNSIGNED_TRAILER.to_string(),
                _ => hex::encode(Sha256::digest(body)),
            };
            let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000 + next(200_000) as u64);
            let (akid, secret) = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");

            let mut ours = headers.clone();
            let signer = Signer { access_key: akid, secret, session_token: (!token.is_empty()).then_some(token) };
            signer.sign(&method, &uri, &mut ours, service, region, &payload, now).unwrap();

            let mut settings = SigningSettings::default();
            if service == "s3" {
                settings.percent_encoding_mode = PercentEncodingMode::Single;
                settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
                settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            }
            let creds = aws_credential_types::Credentials::new(akid, secret, (!token.is_empty()).then(|| token.to_string()), None, "test");
            let identity = creds.into();
            let params = aws_sigv4::sign::v4::SigningParams::builder().identity(&identity).region(region).name(service).time(now).settings(settings).build().unwrap().into();
            let pairs: Vec<(&str, &str)> = headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))).collect();
            let signable_body = match payload.as_str() {
                UNSIGNED_PAYLOAD => SignableBody::UnsignedPayload,
                STREAMING_UNSIGNED_TRAILER => SignableBody::StreamingUnsignedPayloadTrailer,
                _ => SignableBody::Bytes(body.as_bytes()),
            };
            let uri_string = uri.to_string();
            let signable = SignableRequest::new(method.as_str(), &uri_string, pairs.into_iter(), signable_body).unwrap();
            let mut theirs = http::Request::builder().method(method.clone()).uri(uri.clone()).body(()).unwrap();
            *theirs.headers_mut() = headers.clone();
            sign(signable, &params).unwrap().into_parts().0.apply_to_request_http1x(&mut theirs);

            for name in ["authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"] {
                assert_eq!(ours.get(name), theirs.headers().get(name), "case {case}: {name} of {method} {service} {uri} {headers:?}");
            }
            assert_eq!(ours.len(), theirs.headers().len(), "case {case}: the same headers are sent");
        }
    }

    /// Requests the AWS SDK's signer signed, with headers whose values have
    /// runs of spaces or come more than once, verify. (Tabs inside a value
    /// are where SDKs differ: botocore collapses them, the Rust SDK keeps
    /// them; the verifier follows botocore.)
    #[test]
    fn verifies_what_the_aws_sdk_signer_signs() {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        const HEADERS: &[(&str, &str)] = &[
            ("x-amz-target", "secretsmanager.GetSecretValue"), ("x-amz-meta-note", "  two   spaces  "), ("x-amz-meta-note", "second value"),
            ("x-custom", " padded "), ("x-custom", ""), ("content-type", "application/x-amz-json-1.1"), ("x-amz-acl", "private"),
        ];
        let (akid, secret, token) = ("ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "veil1.payload.tag");
        let creds = aws_credential_types::Credentials::new(akid, secret, Some(token.to_string()), None, "test");
        let identity = creds.into();
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        for case in 0..(1 << HEADERS.len()) {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, http::HeaderValue::from_static("127.0.0.1:5000"));
            for (i, (k, v)) in HEADERS.iter().enumerate() {
                if case & (1 << i) != 0 {
                    headers.append(*k, http::HeaderValue::from_str(v).unwrap());
                }
            }
            let body = "{\"SecretId\": \"prod/db\"}";
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region("us-east-1")
                .name("secretsmanager")
                .time(now)
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
            let signable = SignableRequest::new("POST", "https://127.0.0.1:5000/", pairs.into_iter(), SignableBody::Bytes(body.as_bytes())).unwrap();
            let mut req = http::Request::post("https://127.0.0.1:5000/").body(()).unwrap();
            *req.headers_mut() = headers.clone();
            sign(signable, &params).unwrap().into_parts().0.apply_to_request_http1x(&mut req);
            let (parts, ()) = req.into_parts();
            let signed = parse(&parts).unwrap();
            let hash = hex::encode(Sha256::digest(body));
            assert_eq!(verify(&parts, &signed, secret, Some(&hash), now, Duration::from_secs(300)), Ok(()), "case {case}: {headers:?}");
        }
    }

    /// The AWS documentation's example: GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08.
    #[test]
    fn verifies_the_aws_documentation_example() {
        let req = http::Request::get("https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08")
            .header("host", "iam.amazonaws.com")
            .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
            .header("x-amz-date", "20150830T123600Z")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            )
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let signed = parse(&parts).unwrap();
        assert_eq!(signed.service, "iam");
        let now = UNIX_EPOCH + Duration::from_secs(parse_amz_date("20150830T123600Z").unwrap() + 60);
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        verify(&parts, &signed, secret, Some(EMPTY_SHA256), now, Duration::from_secs(300)).unwrap();
        // Wrong secret, tampered signature, skewed clock, tampered body.
        assert_eq!(verify(&parts, &signed, "other", Some(EMPTY_SHA256), now, Duration::from_secs(300)), Err(SigError::Mismatch));
        let mut bad = signed.clone();
        bad.signature.replace_range(0..1, "6");
        assert_eq!(verify(&parts, &bad, secret, Some(EMPTY_SHA256), now, Duration::from_secs(300)), Err(SigError::Mismatch));
        let late = now + Duration::from_secs(600);
        assert!(matches!(verify(&parts, &signed, secret, Some(EMPTY_SHA256), late, Duration::from_secs(300)), Err(SigError::Skew(_))));
        let other_body = hex::encode(Sha256::digest(b"x"));
        assert_eq!(verify(&parts, &signed, secret, Some(&other_body), now, Duration::from_secs(300)), Err(SigError::Mismatch));
    }

    #[test]
    fn dates_parse_and_format_whatever_came_before() {
        for _ in 0..2 {
            assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
            assert_eq!(parse_amz_date("20150830T123601Z"), Some(1_440_938_161));
            assert_eq!(parse_amz_date("20150830T126000Z"), None);
            assert_eq!(parse_amz_date("19691231T235959Z"), None);
            assert_eq!(format_amz_date(UNIX_EPOCH + Duration::from_millis(1_440_938_160_900)), "20150830T123600Z");
            assert_eq!(format_amz_date(UNIX_EPOCH + Duration::from_secs(1_440_938_161)), "20150830T123601Z");
        }
    }

    #[test]
    fn rejects_malformed_authorization() {
        let base = |auth: &str| {
            let req = http::Request::get("https://x/").header("host", "x").header("x-amz-date", "20150830T123600Z").header("authorization", auth).body(()).unwrap();
            parse(&req.into_parts().0)
        };
        let good_sig = "a".repeat(64);
        for bad in [
            "AWS4-HMAC-SHA256".to_string(),
            format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=zz"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam, SignedHeaders=host, Signature={good_sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam/aws4_request, SignedHeaders=x-amz-date, Signature={good_sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam/aws4_request, SignedHeaders=x-amz-date;host, Signature={good_sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam/aws4_request, Credential=AK/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature={good_sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20150831/us-east-1/iam/aws4_request, SignedHeaders=host, Signature={good_sig}"),
        ] {
            assert!(matches!(base(&bad), Err(SigError::Malformed { .. })), "{bad}");
        }
        assert!(base(&format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature={good_sig}")).is_ok());
    }

    #[test]
    fn duplicate_security_headers_are_refused() {
        let req = http::Request::get("https://x/")
            .header("host", "x")
            .header("x-amz-date", "20150830T123600Z")
            .header("x-amz-date", "20150830T123700Z")
            .header("authorization", format!("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature={}", "a".repeat(64)))
            .body(())
            .unwrap();
        assert!(matches!(parse(&req.into_parts().0), Err(SigError::Malformed { field: "x-amz-date", .. })));
    }

    #[test]
    fn signed_chunk_streaming_is_unsupported() {
        let mut r = SignedRequest {
            access_key: "A".into(), date: "20150830".into(), region: "r".into(), service: "s3".into(),
            signed_headers: vec!["host".into()], signature: "a".repeat(64), amz_date: "20150830T123600Z".into(),
            payload_hash: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into(), security_token: None, presigned_expires: None,
        };
        assert!(matches!(payload_is_hashed(&r), Err(SigError::Unsupported(_))));
        r.payload_hash = UNSIGNED_PAYLOAD.into();
        assert_eq!(payload_is_hashed(&r), Ok(false));
    }

    /// Every frame of a body, then the error it ended in (if any).
    async fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> (Vec<Frame<Bytes>>, Option<String>)
    where
        B::Error: std::fmt::Display,
    {
        use http_body_util::BodyExt;
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => frames.push(f),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
        (frames, None)
    }

    fn chunks(parts: &[&'static str], trailers: bool) -> http_body_util::StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>> {
        let mut frames: Vec<_> = parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))).collect();
        if trailers {
            let mut t = http::HeaderMap::new();
            t.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    fn data(frames: &[Frame<Bytes>]) -> Vec<u8> {
        frames.iter().filter_map(|f| f.data_ref()).flat_map(|d| d.to_vec()).collect()
    }

    #[tokio::test]
    async fn a_streamed_payload_passes_when_it_matches_its_hash() {
        let hash = hex::encode(Sha256::digest(b"abcdef"));
        for trailers in [false, true] {
            let (body, check) = CheckedPayload::new(chunks(&["ab", "", "cd", "ef"], trailers), &hash.to_ascii_uppercase());
            let (frames, err) = drain(body).await;
            assert_eq!((data(&frames), err), (b"abcdef".to_vec(), None));
            assert_eq!(frames.last().is_some_and(Frame::is_trailers), trailers);
            assert!(!check.failed());
        }
    }

    #[tokio::test]
    async fn a_streamed_payload_unlike_its_hash_is_cut_before_its_last_chunk() {
        let hash = hex::encode(Sha256::digest(b"abcdef"));
        let (body, check) = CheckedPayload::new(chunks(&["ab", "cd", "eX"], true), &hash);
        let (frames, err) = drain(body).await;
        assert_eq!(data(&frames), b"abcd", "the last chunk is never passed on");
        assert!(frames.iter().all(Frame::is_data), "nor the trailers");
        assert_eq!(err.as_deref(), Some(SigError::PayloadMismatch.to_string().as_str()));
        assert!(check.failed());
        let (body, check) = CheckedPayload::new(chunks(&["abcdeX"], false), &hash);
        let (frames, err) = drain(body).await;
        assert!(frames.is_empty() && err.is_some() && check.failed());
    }
}
