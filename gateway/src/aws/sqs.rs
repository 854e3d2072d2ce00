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
}
