//! SQS `ReceiveMessage` answers carry an MD5 digest of each message's body
//! and of its message attributes, which SDKs verify (Java, JavaScript v3,
//! Go v2 refuse a message whose digest does not match). When masking
//! changes a message, its digests are recomputed from what the caller gets.
//!
//! Invariant: a digest is rewritten only when it matched the message as
//! AWS sent it, so a digest that was already wrong (corruption upstream)
//! stays wrong and the SDK still notices.

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::Value;

/// Whether responses of this operation carry digests to refresh.
pub fn has_digests(service: &str, action: &str) -> bool {
    service == "sqs" && action == "ReceiveMessage"
}

/// Recompute the digests of the messages masking changed: `original` is the
/// response as AWS sent it, `masked` what the caller will get (the JSON
/// protocol's `Messages`, or the query protocol's `Message` view).
pub fn refresh_digests(original: &Value, masked: &mut Value) {
    for field in ["Messages", "Message"] {
        let (Some(before), Some(after)) = (original.get(field), masked.get_mut(field)) else { continue };
        match (before, after) {
            (Value::Array(before), Value::Array(after)) => {
                for (b, a) in before.iter().zip(after.iter_mut()) {
                    refresh_message(b, a);
                }
            }
            (b @ Value::Object(_), a @ Value::Object(_)) => refresh_message(b, a),
            _ => {}
        }
    }
}

fn refresh_message(before: &Value, after: &mut Value) {
    let body_digest = |m: &Value| m.get("Body").and_then(Value::as_str).map(|b| hex::encode(Md5::digest(b.as_bytes())));
    refresh(before, after, "MD5OfBody", body_digest);
    refresh(before, after, "MD5OfMessageAttributes", attributes_digest);
}

/// Set `after[field]` to `digest(after)` when `before[field]` was
/// `digest(before)` and the digest changed.
fn refresh(before: &Value, after: &mut Value, field: &str, digest: impl Fn(&Value) -> Option<String>) {
    let Some(sent) = before.get(field).and_then(Value::as_str) else { return };
    let (Some(was), Some(now)) = (digest(before), digest(after)) else { return };
    if was.eq_ignore_ascii_case(sent) && was != now {
        if let Some(slot) = after.get_mut(field) {
            *slot = Value::String(now);
        }
    }
}

/// The digest of a message's attributes, as SQS computes it: attributes by
/// name, each as length-prefixed name, data type, a transport byte (1
/// string, 2 binary) and length-prefixed value. JSON protocol: a map of name
/// → {DataType, StringValue | BinaryValue (base64)}; query protocol: a list
/// (or one) of {Name, Value: {…}}. `None` when there are none or one cannot
/// be read.
fn attributes_digest(message: &Value) -> Option<String> {
    let mut attrs: Vec<(&str, &Value)> = match (message.get("MessageAttributes"), message.get("MessageAttribute")) {
        (Some(Value::Object(map)), _) => map.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        (_, Some(Value::Array(list))) => list.iter().map(|a| Some((a.get("Name")?.as_str()?, a.get("Value")?))).collect::<Option<_>>()?,
        (_, Some(a @ Value::Object(_))) => vec![(a.get("Name")?.as_str()?, a.get("Value")?)],
        _ => return None,
    };
    if attrs.is_empty() {
        return None;
    }
    attrs.sort_by(|a, b| a.0.cmp(b.0));
    fn field(md5: &mut Md5, bytes: &[u8]) {
        md5.update((bytes.len() as u32).to_be_bytes());
        md5.update(bytes);
    }
    let mut md5 = Md5::new();
    for (name, value) in attrs {
        field(&mut md5, name.as_bytes());
        field(&mut md5, value.get("DataType")?.as_str()?.as_bytes());
        if let Some(s) = value.get("StringValue").and_then(Value::as_str) {
            md5.update([1u8]);
            field(&mut md5, s.as_bytes());
        } else {
            let b64 = value.get("BinaryValue")?.as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
            md5.update([2u8]);
            field(&mut md5, &bytes);
        }
    }
    Some(hex::encode(md5.finalize()))
}

/// Where a queue URL points: scheme and host (with port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `https` or `http`.
    pub scheme: String,
    /// Host and port, as the URL names them.
    pub authority: String,
}

/// The members that hold queue URLs, in requests (`QueueUrl`) and in
/// responses (`QueueUrl`, `QueueUrls`, `queueUrls`; the query protocol's
/// `ListQueuesResult` repeats `QueueUrl`), per the SQS service model.
const QUEUE_URL_MEMBERS: &[&str] = &["QueueUrl", "QueueUrls", "queueUrls"];

/// An absolute http(s) URL's origin and path.
fn split_url(url: &str) -> Option<(Origin, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str().filter(|s| matches!(*s, "http" | "https"))?.to_string();
    let authority = uri.authority()?.as_str().to_string();
    if authority.contains('@') {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Some((Origin { scheme, authority }, path))
}

/// Point every queue URL in an SQS response at the gateway (`gateway`: the
/// scheme, host and port the caller used to reach Veil), keeping its path:
/// SDKs that send later calls to the queue URL itself (the JavaScript SDK's
/// default) then still go through Veil. Returns how many were rewritten.
pub fn queue_urls_to_gateway(doc: &mut Value, gateway: &Origin) -> usize {
    fn rewrite(v: &mut Value, gateway: &Origin) -> usize {
        match v {
            Value::String(s) => match split_url(s) {
                Some((origin, path)) if origin != *gateway => {
                    *s = format!("{}://{}{path}", gateway.scheme, gateway.authority);
                    1
                }
                _ => 0,
            },
            Value::Array(items) => items.iter_mut().map(|i| rewrite(i, gateway)).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut Value, gateway: &Origin) -> usize {
        match v {
            Value::Object(map) => map
                .iter_mut()
                .map(|(k, v)| if QUEUE_URL_MEMBERS.contains(&k.as_str()) { rewrite(v, gateway) } else { walk(v, gateway) })
                .sum(),
            Value::Array(items) => items.iter_mut().map(|i| walk(i, gateway)).sum(),
            _ => 0,
        }
    }
    walk(doc, gateway)
}

/// The upstream queue URL for one a caller sent: a URL naming the gateway
/// (as [`queue_urls_to_gateway`] handed it out) maps back to the upstream's
/// origin; one naming the upstream stays; any other host is refused, so a
/// call never goes, or is shown to policies, with a queue elsewhere.
pub fn queue_url_to_upstream(url: &str, gateway: &Origin, upstream: &Origin) -> Result<String, String> {
    let (origin, path) = split_url(url).ok_or_else(|| format!("QueueUrl {:?} is not an http(s) URL", crate::policy::host::truncate(url, 256)))?;
    let same = |a: &Origin| a.authority.eq_ignore_ascii_case(&origin.authority);
    if same(gateway) || same(upstream) {
        Ok(format!("{}://{}{path}", upstream.scheme, upstream.authority))
    } else {
        Err(format!(
            "QueueUrl names {}, which is neither this gateway ({}) nor its upstream",
            crate::policy::host::truncate(&origin.authority, 256),
            gateway.authority
        ))
    }
}

/// Map the queue URL of a classified SQS request back to the upstream's
/// ([`queue_url_to_upstream`]), in the parameters policies see and in the
/// body that goes upstream.
pub fn map_request(c: &mut super::Classified, gateway: &Origin, upstream: &Origin) -> Result<(), String> {
    let Some(url) = c.params.get("QueueUrl").and_then(Value::as_str) else { return Ok(()) };
    let mapped = queue_url_to_upstream(url, gateway, upstream)?;
    if mapped == url {
        return Ok(());
    }
    // The queue is the call's resource: policies and the audit trail see AWS's URL.
    if c.resource.as_deref() == Some(url) {
        c.resource = Some(mapped.clone());
    }
    c.params["QueueUrl"] = Value::String(mapped.clone());
    c.forward.body = Some(match (c.protocol, c.forward.body.take()) {
        // A form Veil re-serialised: the same pairs with the new URL.
        (super::Protocol::Query, Some(form)) => {
            let mut pairs = super::wire::form_pairs(&form, "body").map_err(|e| e.to_string())?;
            for (k, v) in &mut pairs {
                if k == "QueueUrl" {
                    v.clone_from(&mapped);
                }
            }
            bytes::Bytes::from(super::wire::encode_form(&pairs))
        }
        // JSON: the parameters are the body, parsed strictly.
        _ => bytes::Bytes::from(serde_json::to_vec(&c.params).map_err(|e| e.to_string())?),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Digests as SQS (and moto) computed them for these messages.
    const BODY_MD5: &str = "fafb00f5732ab283681e124bf8747ed1"; // md5("This is a test message")

    fn json_message(body: &str, attr: &str) -> Value {
        json!({"Messages": [{"MessageId": "m1", "Body": body, "MD5OfBody": hex::encode(Md5::digest(body.as_bytes())),
            "MessageAttributes": {"team": {"DataType": "String", "StringValue": attr}, "blob": {"DataType": "Binary", "BinaryValue": "AAEC"}},
            "MD5OfMessageAttributes": "x"}]})
    }

    #[test]
    fn body_digest_is_sqs_md5() {
        let m = json!({"Body": "This is a test message"});
        assert_eq!(hex::encode(Md5::digest(m["Body"].as_str().unwrap().as_bytes())), BODY_MD5);
    }

    #[test]
    fn attribute_digest_follows_the_sqs_encoding() {
        // Worked by hand: one String attribute "a" = "b".
        let mut expect = Md5::new();
        expect.update([0, 0, 0, 1, b'a', 0, 0, 0, 6]);
        expect.update(b"String");
        expect.update([1, 0, 0, 0, 1, b'b']);
        let m = json!({"MessageAttributes": {"a": {"DataType": "String", "StringValue": "b"}}});
        assert_eq!(attributes_digest(&m).unwrap(), hex::encode(expect.finalize()));
        // The query protocol's list form gives the same digest.
        let q = json!({"MessageAttribute": {"Name": "a", "Value": {"DataType": "String", "StringValue": "b"}}});
        assert_eq!(attributes_digest(&q), attributes_digest(&m));
    }

    #[test]
    fn masked_messages_get_fresh_digests_and_wrong_ones_stay_wrong() {
        let mut original = json_message("password=hunter2", "secret");
        let attrs = attributes_digest(&original["Messages"][0]).unwrap();
        original["Messages"][0]["MD5OfMessageAttributes"] = json!(attrs);
        let mut masked = original.clone();
        masked["Messages"][0]["Body"] = json!("password=***");
        masked["Messages"][0]["MessageAttributes"]["team"]["StringValue"] = json!("***");
        refresh_digests(&original, &mut masked);
        let m = &masked["Messages"][0];
        assert_eq!(m["MD5OfBody"], json!(hex::encode(Md5::digest(b"password=***"))));
        assert_eq!(m["MD5OfMessageAttributes"].as_str(), attributes_digest(m).as_deref());
        assert_ne!(m["MD5OfMessageAttributes"], json!(attrs));

        // A digest AWS sent wrong is not made right.
        let mut original = json_message("password=hunter2", "secret");
        original["Messages"][0]["MD5OfBody"] = json!("00000000000000000000000000000000");
        let mut masked = original.clone();
        masked["Messages"][0]["Body"] = json!("password=***");
        refresh_digests(&original, &mut masked);
        assert_eq!(masked["Messages"][0]["MD5OfBody"], json!("00000000000000000000000000000000"));
        assert_eq!(masked["Messages"][0]["MD5OfMessageAttributes"], json!("x"));
    }

    #[test]
    fn queue_urls_point_at_the_gateway_and_back() {
        let gw = Origin { scheme: "https".into(), authority: "veil.internal:8443".into() };
        let up = Origin { scheme: "https".into(), authority: "sqs.us-east-1.amazonaws.com".into() };
        let mut doc = json!({"QueueUrls": ["https://sqs.us-east-1.amazonaws.com/1/a", "http://127.0.0.1:5000/1/b?x=1"], "QueueUrl": "https://queue.amazonaws.com/1/c", "Other": "https://x/1"});
        assert_eq!(queue_urls_to_gateway(&mut doc, &gw), 3);
        assert_eq!(doc["QueueUrls"], json!(["https://veil.internal:8443/1/a", "https://veil.internal:8443/1/b?x=1"]));
        assert_eq!(doc["QueueUrl"], "https://veil.internal:8443/1/c");
        assert_eq!(doc["Other"], "https://x/1", "only queue URL members");
        assert_eq!(queue_url_to_upstream("https://VEIL.internal:8443/1/a", &gw, &up).unwrap(), "https://sqs.us-east-1.amazonaws.com/1/a");
        assert_eq!(queue_url_to_upstream("https://sqs.us-east-1.amazonaws.com/1/a", &gw, &up).unwrap(), "https://sqs.us-east-1.amazonaws.com/1/a");
        for foreign in ["https://evil.example/1/a", "https://veil.internal:8443@evil/1/a", "ftp://veil.internal:8443/1/a", "queue-name"] {
            assert!(queue_url_to_upstream(foreign, &gw, &up).is_err(), "{foreign}");
        }
    }

    #[test]
    fn a_mapped_request_names_the_upstream_queue_everywhere() {
        let gw = Origin { scheme: "https".into(), authority: "veil.internal:8443".into() };
        let up = Origin { scheme: "https".into(), authority: "sqs.us-east-1.amazonaws.com".into() };
        let mut h = http::HeaderMap::new();
        h.insert("x-amz-target", "AmazonSQS.SendMessage".parse().unwrap());
        h.insert("content-type", "application/x-amz-json-1.0".parse().unwrap());
        let body = br#"{"QueueUrl":"https://veil.internal:8443/1/jobs","MessageBody":"hi"}"#;
        let view = super::super::RequestView { service: "sqs", method: "POST", path: "/", query: "", body: Some(body), headers: &h };
        let mut c = super::super::classify(&view).unwrap();
        map_request(&mut c, &gw, &up).unwrap();
        let upstream_url = "https://sqs.us-east-1.amazonaws.com/1/jobs";
        assert_eq!(c.params["QueueUrl"], upstream_url);
        assert_eq!(c.resource.as_deref(), Some(upstream_url), "the resource policies and the audit trail see");
        let sent: Value = serde_json::from_slice(c.forward.body.as_deref().unwrap()).unwrap();
        assert_eq!(sent["QueueUrl"], upstream_url);
    }
}
