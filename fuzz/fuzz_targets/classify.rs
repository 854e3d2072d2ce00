//! Operation classification for all five protocols. Input lines: service,
//! method, path, query, X-Amz-Target, then the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::aws::{self, RequestView};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(6, '\n');
    let mut next = || parts.next().unwrap_or("");
    let (service, method, path, query, target, body) = (next(), next(), next(), next(), next(), next());
    let headers = http::HeaderMap::new();
    let view = RequestView {
        service,
        method,
        path,
        query,
        target: Some(target).filter(|t| !t.is_empty()),
        content_type: Some("application/x-amz-json-1.1"),
        body: Some(body.as_bytes()),
        headers: &headers,
    };
    let _ = aws::classify(&view);
});
