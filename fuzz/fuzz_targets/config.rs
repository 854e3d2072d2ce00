//! The config loader: any text is a config or an error that names the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use veil_gateway::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent/veil-fuzz/veil.toml");
    if let Err(e) = Config::from_text(text, path) {
        assert!(e.to_string().starts_with("/nonexistent/veil-fuzz/veil.toml"), "{e}");
    }
});
