//! The selector language and masking: first line a selector, the rest a JSON
//! document; every style applies without panic, also to the selected values
//! as blobs (base64 markers), and redaction is idempotent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::masking::{self, HashKey, Mask, MaskStyle, Selector};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (sel, doc) = text.split_once('\n').unwrap_or((&text, "{}"));
    let Ok(selector) = Selector::parse(sel) else { return };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(doc) else { return };
    let key = HashKey::new(b"k".to_vec());
    let as_blob = [selector.clone()];
    for blobs in [&[][..], &as_blob[..]] {
        for style in [MaskStyle::Hash, MaskStyle::Partial, MaskStyle::Redact] {
            let mut d = doc.clone();
            masking::apply(&mut d, &[Mask { selector: selector.clone(), style }], blobs, &key);
            if style == MaskStyle::Redact {
                let mut again = d.clone();
                masking::apply(&mut again, &[Mask { selector: selector.clone(), style }], blobs, &key);
                assert_eq!(again, d, "redaction is not idempotent");
            }
        }
    }
});
