//! The selector language and masking: first line a selector, the rest a JSON
//! document; every style applies without panic, also to the selected values
//! as blobs (base64 markers), redaction is idempotent, and a body read in
//! place is masked as its tree is.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::json::JsonDoc;
use veil_gateway::masking::{self, HashKey, Mask, MaskStyle, Selector};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (sel, doc) = text.split_once('\n').unwrap_or((&text, "{}"));
    let Ok(selector) = Selector::parse(sel) else { return };
    let Ok(tree) = serde_json::from_str::<serde_json::Value>(doc) else { return };
    let key = HashKey::new(b"k".to_vec());
    let as_blob = [selector.clone()];
    for blobs in [&[][..], &as_blob[..]] {
        for style in [MaskStyle::Hash, MaskStyle::Partial, MaskStyle::Redact] {
            let masks = [Mask { selector: selector.clone(), style }];
            let mut d = tree.clone();
            masking::apply(&mut d, &masks, blobs, &key);
            if style == MaskStyle::Redact {
                let mut again = d.clone();
                masking::apply(&mut again, &masks, blobs, &key);
                assert_eq!(again, d, "redaction is not idempotent");
            }
            let mut in_place = JsonDoc::parse(doc.as_bytes()).expect("serde_json read it");
            masking::apply_json(&mut in_place, &masks, blobs, &key);
            let out: serde_json::Value = serde_json::from_slice(&in_place.to_bytes()).expect("masked bytes parse");
            assert_eq!(out, d, "masked in place differently from the tree");
        }
    }
});
