//! The SigV4 Authorization header / presigned query parser and the
//! canonicaliser behind `verify`. Input: up to five lines — Authorization,
//! query string, X-Amz-Date, X-Amz-Content-Sha256, path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use veil_gateway::sigv4;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let (auth, query, date, hash, path) =
        (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or("/"));
    let _ = sigv4::parse_amz_date(date);
    let Ok(uri) = format!("https://h{}{}?{query}", if path.starts_with('/') { "" } else { "/" }, path).parse::<http::Uri>() else { return };
    let mut b = http::Request::builder().uri(uri);
    for (name, value) in [("authorization", auth), ("x-amz-date", date), ("x-amz-content-sha256", hash)] {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            b = b.header(name, v);
        }
    }
    let Ok(req) = b.body(()) else { return };
    let (parts, _) = req.into_parts();
    let _ = sigv4::is_sigv2(&parts);
    let _ = query.split('&').map(|p| sigv4::is_presign_param(p.split('=').next().unwrap_or(""))).count();
    if let Ok(signed) = sigv4::parse(&parts) {
        let _ = sigv4::payload_is_hashed(&signed);
        let _ = sigv4::verify(&parts, &signed, "secret", Some("00"), SystemTime::now(), Duration::from_secs(300));
    }
});
