//! A response body parsed for policies: the document of its protocol (JSON
//! read in place, XML with a JSON view of its elements), decided on by the
//! policies, masked, audited and written back in the protocol it came in.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::audit::Record;
use crate::aws::xml::Document;
use crate::aws::{self, Protocol};
use crate::json::JsonDoc;
use crate::masking::{self, HashKey};
use crate::policy::{CallInput, PolicySet, ResponseDecision};

/// A response body parsed for policies, kept so masks can be written back
/// in the same protocol: JSON read in place, XML as a JSON view of its
/// elements.
pub enum ParsedBody {
    Empty,
    Json(JsonDoc),
    Xml { doc: Document, view: Value, query_action: Option<String> },
}

impl ParsedBody {
    /// Parse a response body of `protocol` (`query_action`: the action of a
    /// query-protocol call, whose result element the view unwraps).
    pub fn parse(protocol: Protocol, raw: &[u8], query_action: Option<&str>) -> Result<ParsedBody, String> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(ParsedBody::Empty);
        }
        match protocol {
            Protocol::Json | Protocol::RestJson => JsonDoc::parse(raw).map(ParsedBody::Json).map_err(|e| format!("JSON: {e}")),
            Protocol::Query | Protocol::Ec2 | Protocol::RestXml => {
                let mut doc = Document::parse(raw).map_err(|e| e.to_string())?;
                let view = doc.view(query_action);
                Ok(ParsedBody::Xml { doc, view, query_action: query_action.map(str::to_string) })
            }
            Protocol::Cbor => Err("CBOR responses are not parsed yet".into()),
        }
    }

    /// Every policy's `on-response` on this body.
    pub fn decide(&self, policies: &PolicySet, call: &CallInput, status: u16) -> ResponseDecision {
        match self {
            ParsedBody::Empty => policies.on_response(call, status, &json!({})),
            ParsedBody::Json(doc) => policies.on_response_doc(call, status, doc.root(), || doc.text().to_string()),
            ParsedBody::Xml { view, .. } => policies.on_response(call, status, view),
        }
    }

    /// Apply masks (see [`masking::apply`]); how many values were masked.
    pub fn mask(&mut self, masks: &[masking::Mask], blobs: &[masking::Selector], key: &HashKey) -> usize {
        match self {
            ParsedBody::Empty => 0,
            ParsedBody::Json(doc) => masking::apply_json(doc, masks, blobs, key),
            ParsedBody::Xml { view, .. } => masking::apply(view, masks, blobs, key),
        }
    }

    /// The body as policies see it (JSON, whatever the protocol), masks applied.
    pub fn view(&self) -> Value {
        match self {
            ParsedBody::Empty => json!({}),
            ParsedBody::Json(doc) => crate::doc::to_value(doc.root()),
            ParsedBody::Xml { view, .. } => view.clone(),
        }
    }

    /// Point SQS queue URLs at the gateway ([`aws::sqs::queue_urls_to_gateway`]);
    /// how many were rewritten.
    pub fn rewrite_queue_urls(&mut self, gateway: &aws::sqs::Origin) -> usize {
        match self {
            ParsedBody::Empty => 0,
            ParsedBody::Json(doc) => {
                let mut v = crate::doc::to_value(doc.root());
                let n = aws::sqs::queue_urls_to_gateway(&mut v, gateway);
                if n > 0 {
                    match serde_json::to_vec(&v).map_err(|e| e.to_string()).and_then(|b| JsonDoc::parse(&b).map_err(|e| e.to_string())) {
                        Ok(fresh) => *doc = fresh,
                        Err(_) => return 0,
                    }
                }
                n
            }
            ParsedBody::Xml { view, .. } => aws::sqs::queue_urls_to_gateway(view, gateway),
        }
    }

    /// Recompute SQS message digests after masking ([`aws::sqs`]);
    /// `original` is [`ParsedBody::view`] from before.
    pub fn refresh_sqs_digests(&mut self, original: &Value) {
        match self {
            ParsedBody::Empty => {}
            ParsedBody::Json(doc) => {
                let mut masked = crate::doc::to_value(doc.root());
                aws::sqs::refresh_digests(original, &mut masked);
                // The body becomes the masked one with its digests written in.
                if let Ok(fresh) = serde_json::to_vec(&masked).map_err(|e| e.to_string()).and_then(|b| JsonDoc::parse(&b).map_err(|e| e.to_string())) {
                    *doc = fresh;
                }
            }
            ParsedBody::Xml { view, .. } => aws::sqs::refresh_digests(original, view),
        }
    }

    /// Keep the (masked) body in the audit record, as it shows responses.
    pub fn audit(&self, rec: &mut Record, cap_bytes: usize) {
        match self {
            ParsedBody::Empty => rec.set_response_doc(&json!({}), cap_bytes),
            ParsedBody::Json(doc) => rec.set_response_doc(doc.root(), cap_bytes),
            ParsedBody::Xml { view, .. } => rec.set_response_doc(view, cap_bytes),
        }
    }

    /// The body in its own protocol with the masks written in.
    pub fn to_bytes(&mut self) -> Bytes {
        match self {
            ParsedBody::Empty => Bytes::new(),
            ParsedBody::Json(doc) => doc.to_bytes(),
            ParsedBody::Xml { doc, view, query_action } => {
                doc.write_back(query_action.as_deref(), view);
                Bytes::from(doc.to_bytes())
            }
        }
    }
}
