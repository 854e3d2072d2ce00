//! The OIDC token pre-parser (header and claims before any key is fetched).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = veil_gateway::identity::preparse(token);
    }
});
