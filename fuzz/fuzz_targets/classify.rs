//! Operation classification for all five protocols. Input lines: service,
//! method, path, query, X-Amz-Target, then the body. Whatever is accepted,
//! the request Veil would forward classifies again as the same operation
//! with the same parameters: what AWS is sent is what policies saw.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::aws::{self, RequestView};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(6, '\n');
    let mut next = || parts.next().unwrap_or("");
    let (service, method, path, query, target, body) = (next(), next(), next(), next(), next(), next());
    let mut headers = http::HeaderMap::new();
    if let Ok(t) = http::HeaderValue::from_str(target) {
        if !target.is_empty() {
            headers.insert("x-amz-target", t);
            headers.insert("content-type", http::HeaderValue::from_static("application/x-amz-json-1.1"));
        } else {
            headers.insert("content-type", http::HeaderValue::from_static("application/x-www-form-urlencoded"));
        }
    }
    // Path and query as the gateway gets them: from a parsed request URI.
    let Ok(uri) = format!("{path}?{query}").parse::<http::uri::PathAndQuery>() else { return };
    if !uri.path().starts_with('/') {
        return;
    }
    let (path, query) = (uri.path(), uri.query().unwrap_or(""));
    let view = RequestView { service, method, path, query, body: Some(body.as_bytes()), headers: &headers };
    let Ok(first) = aws::classify(&view) else { return };
    let f = &first.forward;
    let forwarded: http::uri::PathAndQuery = f.path_and_query.parse().expect("the forwarded path and query parse");
    let (fpath, fquery) = (forwarded.path(), forwarded.query().unwrap_or(""));
    let fbody = f.body.as_deref().unwrap_or(body.as_bytes());
    let again = RequestView { service, method: f.method.as_str(), path: fpath, query: fquery, body: Some(fbody), headers: &f.headers };
    let second = aws::classify(&again).expect("the forwarded request classifies");
    assert_eq!(second.action, first.action, "forwarded as another operation");
    assert_eq!(second.params, first.params, "forwarded with other parameters");
    assert_eq!(second.forward.path_and_query, f.path_and_query);
});
