//! Reading a request the one way AWS would, or refusing it: strict parsers
//! for the pieces of a request that classification reads (form parameters,
//! JSON bodies, media types, singleton headers) and the allow-list of
//! headers that go upstream.
//!
//! Invariant: anything two parsers could read two ways — a repeated
//! parameter or JSON key, a key that is both a value and a parent, a header
//! AWS reads once sent twice, an encoding Veil does not decode — is an
//! [`Ambiguous`] error, never a guess.

use http::{HeaderMap, HeaderName};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a request was refused as ambiguous: what, and where.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("ambiguous request: {0}")]
pub struct Ambiguous(pub String);

fn ambiguous(what: impl Into<String>) -> Ambiguous {
    Ambiguous(what.into())
}

/// Headers AWS reads once: sent twice, they are refused.
pub const SINGLETON_HEADERS: &[&str] = &[
    "host", "content-type", "content-encoding", "content-length", "content-md5", "x-amz-target", "x-amz-date",
    "x-amz-content-sha256", "x-amz-security-token", "authorization", "transfer-encoding", "x-amz-decoded-content-length",
    "x-amz-trailer",
];

/// Refuse a request that sends a singleton header more than once.
pub fn check_singletons(headers: &HeaderMap) -> Result<(), Ambiguous> {
    // No name has two values: nothing to look up (most requests).
    if headers.len() == headers.keys_len() {
        return Ok(());
    }
    for name in SINGLETON_HEADERS {
        if headers.get_all(*name).iter().nth(1).is_some() {
            return Err(ambiguous(format!("header {name} is sent more than once")));
        }
    }
    Ok(())
}

/// The value of a singleton header, as text (refused when not visible ASCII).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Ambiguous> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ambiguous(format!("header {name} is not visible ASCII"))),
    }
}

/// A media type as HTTP defines it: type and subtype compared without
/// regard to case, parameters after `;` ignored. `None` without a header.
pub fn media_type(headers: &HeaderMap) -> Result<Option<String>, Ambiguous> {
    Ok(header(headers, "content-type")?.map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()))
}

/// Most bytes a compressed request body may decode to.
pub const MAX_DECODED_BODY: usize = 16 << 20;

/// The body a JSON or query call's `Content-Encoding` stands for: `None`
/// when it has none, the decoded bytes for `gzip` (botocore compresses
/// large CloudWatch `PutMetricData` calls), refused otherwise. The decoded
/// bytes are what policies see and what goes upstream, without the
/// encoding, so AWS reads exactly what Veil read.
pub fn decode_body(codings: &[String], body: &[u8]) -> Result<Option<Vec<u8>>, Ambiguous> {
    use std::io::Read;
    match codings {
        [] => Ok(None),
        [gzip] if gzip == "gzip" => {
            let mut out = Vec::new();
            let read = flate2::read::MultiGzDecoder::new(body).take(MAX_DECODED_BODY as u64 + 1).read_to_end(&mut out);
            match read {
                Ok(n) if n > MAX_DECODED_BODY => Err(ambiguous(format!("the gzip body decodes to more than {MAX_DECODED_BODY} bytes"))),
                Ok(_) => Ok(Some(out)),
                Err(e) => Err(ambiguous(format!("the body is not valid gzip: {e}"))),
            }
        }
        _ => Err(ambiguous(format!("Content-Encoding {} is not decoded by Veil; send the body without it or with gzip", codings.join(", ")))),
    }
}

/// The one form media type.
pub const FORM: &str = "application/x-www-form-urlencoded";

/// The request's `Content-Encoding`: none (or `identity`) is `None`; each
/// coding listed is returned lower-cased.
pub fn content_codings(headers: &HeaderMap) -> Result<Vec<String>, Ambiguous> {
    let Some(v) = header(headers, "content-encoding")? else { return Ok(Vec::new()) };
    Ok(v.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty() && c != "identity").collect())
}

/// `k=v&…` pairs, percent- and `+`-decoded; a byte sequence that is not
/// UTF-8 once decoded is refused (a lossy decode would show policies a
/// value AWS never reads).
pub fn form_pairs(text: &[u8], what: &str) -> Result<Vec<(String, String)>, Ambiguous> {
    let mut out = Vec::new();
    for piece in text.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &b""[..]),
        };
        let decode = |raw: &[u8]| -> Result<String, Ambiguous> {
            let plus: Vec<u8> = raw.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
            let bytes: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
            String::from_utf8(bytes).map_err(|_| ambiguous(format!("{what} parameter is not UTF-8 once decoded")))
        };
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

/// Refuse a parameter given more than once.
pub fn check_unique(pairs: &[(String, String)], what: &str) -> Result<(), Ambiguous> {
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    for (k, _) in pairs {
        if !seen.insert(k.as_str()) {
            return Err(ambiguous(format!("{what} parameter {:?} is given more than once", crate::policy::host::truncate(k, 128))));
        }
    }
    Ok(())
}

/// AWS's URI encoding: everything but unreserved characters escaped, so
/// the text decodes to exactly one value on any parser.
const AWS_URI: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Serialise pairs as a form (`k=v&…`), unambiguously encoded.
pub fn encode_form(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.extend(utf8_percent_encode(k, AWS_URI));
        out.push('=');
        out.extend(utf8_percent_encode(v, AWS_URI));
    }
    out
}

/// Parse a JSON object strictly: a key repeated in any object is refused
/// (parsers disagree on which copy wins).
pub fn strict_json(body: &[u8]) -> Result<Value, Ambiguous> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = de.deserialize_any(StrictVisitor).map_err(|e| ambiguous(format!("JSON body: {e}")))?;
    de.end().map_err(|e| ambiguous(format!("JSON body: {e}")))?;
    Ok(v)
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Strict)?;
            if out.insert(k.clone(), v).is_some() {
                return Err(de::Error::custom(format!("key {:?} appears twice in one object", crate::policy::host::truncate(&k, 128))));
            }
        }
        Ok(Value::Object(out))
    }
}

struct Strict;

impl<'de> de::DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// Headers of the AWS protocols themselves that go upstream with any
/// operation (the ones Veil signs, `Host` and the length it sets itself).
const PROTOCOL_HEADERS: &[&str] = &["content-type", "content-md5", "accept", "x-amzn-query-mode"];

/// The headers that go upstream: the protocol's own, the target of a JSON
/// call, and those the operation's model binds to an input member
/// (`bound`: exact names, or prefixes ending in `*`). Everything else the
/// caller sent is dropped: a header AWS or an emulator reads but Veil
/// does not show to policies could change the call.
pub fn forwarded_headers(headers: &HeaderMap, json_target: bool, streaming: bool, bound: &dyn Fn(&str) -> bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        let keep = PROTOCOL_HEADERS.contains(&n)
            || (json_target && n == "x-amz-target")
            // aws-chunked uploads: the framing AWS needs to read the stream.
            || (streaming && matches!(n, "content-encoding" | "content-length" | "x-amz-decoded-content-length" | "x-amz-trailer"))
            || bound(n);
        if keep {
            out.append(HeaderName::clone(name), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gzip_bodies_are_decoded_within_a_bound_and_other_codings_refused() {
        use std::io::Write;
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(decode_body(&[], b"{}").unwrap(), None);
        assert_eq!(decode_body(&["gzip".into()], &gz(b"{\"a\":1}")).unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        // Concatenated members are one body, as gzip defines it.
        let two = [gz(b"Action=ListMetrics&"), gz(b"Namespace=x")].concat();
        assert_eq!(decode_body(&["gzip".into()], &two).unwrap().as_deref(), Some(&b"Action=ListMetrics&Namespace=x"[..]));
        let bomb = gz(&vec![b' '; MAX_DECODED_BODY + 1]);
        assert!(bomb.len() < 64 << 10);
        assert!(decode_body(&["gzip".into()], &bomb).unwrap_err().0.contains("more than"));
        assert!(decode_body(&["gzip".into()], b"not gzip").unwrap_err().0.contains("not valid gzip"));
        assert!(decode_body(&["gzip".into()], &gz(b"{}")[..10]).is_err(), "cut short");
        assert!(decode_body(&["br".into()], b"x").is_err());
        assert!(decode_body(&["gzip".into(), "gzip".into()], b"x").is_err());
    }

    #[test]
    fn strict_json_refuses_repeated_keys_at_any_depth() {
        assert_eq!(strict_json(br#"{"a":1,"b":{"c":[1,{"d":2}]}}"#).unwrap(), json!({"a":1,"b":{"c":[1,{"d":2}]}}));
        assert!(strict_json(br#"{"a":1,"a":2}"#).is_err());
        assert!(strict_json(br#"{"b":{"c":[{"d":1,"d":1}]}}"#).is_err());
        assert!(strict_json(br#"{"a":1} {"a":2}"#).is_err(), "trailing content");
        assert!(strict_json(br#"{"a":"\ud800"}"#).is_err(), "lone surrogate");
    }

    #[test]
    fn forms_decode_once_and_encode_unambiguously() {
        let pairs = form_pairs(b"Action=CreateUser&UserName=a+b%2Bc&Empty&x=%F0%9F%98%80", "body").unwrap();
        assert_eq!(pairs[1], ("UserName".into(), "a b+c".into()));
        assert_eq!(pairs[2], ("Empty".into(), "".into()));
        assert_eq!(form_pairs(encode_form(&pairs).as_bytes(), "body").unwrap(), pairs);
        assert!(form_pairs(b"a=%FF", "body").is_err());
        assert!(check_unique(&form_pairs(b"a=1&b=2&a=1", "body").unwrap(), "body").is_err());
    }

    #[test]
    fn media_types_compare_as_http_says() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "Application/X-WWW-Form-URLEncoded ; charset=utf-8".parse().unwrap());
        assert_eq!(media_type(&h).unwrap().as_deref(), Some(FORM));
        assert!(check_singletons(&h).is_ok());
        // A repeated header that may repeat is fine; a singleton is not.
        h.append("x-amz-meta-a", "1".parse().unwrap());
        h.append("x-amz-meta-a", "2".parse().unwrap());
        assert!(check_singletons(&h).is_ok());
        h.append("content-type", "text/plain".parse().unwrap());
        assert!(check_singletons(&h).is_err());
    }

    #[test]
    fn only_protocol_and_model_headers_go_upstream() {
        let mut h = HeaderMap::new();
        for (k, v) in [("x-amz-acl", "private"), ("x-moto-account-id", "1"), ("x-amz-meta-a", "b"), ("x-amz-target", "T.Op"), ("content-type", "x")] {
            h.insert(k, v.parse().unwrap());
        }
        let bound = |n: &str| n == "x-amz-acl" || n.starts_with("x-amz-meta-");
        let out = forwarded_headers(&h, false, false, &bound);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["content-type", "x-amz-acl", "x-amz-meta-a"]);
    }
}
