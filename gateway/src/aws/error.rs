//! AWS-shaped error responses, in the shape each protocol's SDKs parse:
//! JSON protocols `{"__type": ..., "message": ...}` with `x-amzn-errortype`,
//! query `<ErrorResponse><Error>…`, ec2 `<Response><Errors><Error>…`,
//! rest-xml (S3) `<Error>…`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::Protocol;
use crate::sts::xml_escape;

/// One error to send to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// HTTP status.
    pub status: StatusCode,
    /// AWS error code (`AccessDenied`, `ExpiredToken` …).
    pub code: &'static str,
    /// Human- and LLM-readable message.
    pub message: String,
}

impl AwsError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AwsError { status, code, message: message.into() }
    }

    /// Render for `protocol` (query when unknown: what STS and IAM clients expect).
    pub fn render(&self, protocol: Option<Protocol>, request_id: &str) -> Response<Bytes> {
        let (body, content_type) = match protocol {
            Some(Protocol::Json | Protocol::RestJson) => (
                serde_json::json!({"__type": self.code, "message": self.message, "Message": self.message}).to_string(),
                "application/x-amz-json-1.1",
            ),
            Some(Protocol::Ec2) => (
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
                    self.code,
                    xml_escape(&self.message)
                ),
                "text/xml",
            ),
            Some(Protocol::RestXml) => (
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>{}</Message><RequestId>{request_id}</RequestId></Error>",
                    self.code,
                    xml_escape(&self.message)
                ),
                "application/xml",
            ),
            _ => (
                format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                    self.code,
                    xml_escape(&self.message)
                ),
                "text/xml",
            ),
        };
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amzn-requestid", v.clone());
            h.insert("x-amz-request-id", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_protocol() {
        let e = AwsError::new(StatusCode::FORBIDDEN, "AccessDenied", "denied by policy <x> & y");
        let j = e.render(Some(Protocol::Json), "r1");
        let v: serde_json::Value = serde_json::from_slice(j.body()).unwrap();
        assert_eq!(v["__type"], "AccessDenied");
        assert_eq!(j.status(), 403);
        let q = e.render(Some(Protocol::Query), "r1");
        let s = std::str::from_utf8(q.body()).unwrap();
        assert!(s.contains("<Code>AccessDenied</Code>") && s.contains("denied by policy &lt;x&gt; &amp; y"), "{s}");
        let x = e.render(Some(Protocol::Ec2), "r1");
        assert!(std::str::from_utf8(x.body()).unwrap().contains("<Errors><Error><Code>AccessDenied"));
        let s3 = e.render(Some(Protocol::RestXml), "r1");
        assert!(std::str::from_utf8(s3.body()).unwrap().contains("<Error><Code>AccessDenied"));
    }
}
