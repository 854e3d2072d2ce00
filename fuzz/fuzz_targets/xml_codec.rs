//! The XML codec (query, EC2 and rest-xml responses): parse → view →
//! detectors → mask everything → write back → serialise must parse again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::aws::xml::Document;
use veil_gateway::masking::{self, HashKey, Mask, MaskStyle, Selector};

fuzz_target!(|data: &[u8]| {
    let (action, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) if i < 40 => (std::str::from_utf8(&data[..i]).ok().filter(|a| !a.is_empty()), &data[i + 1..]),
        _ => (None, data),
    };
    let Ok(mut doc) = Document::parse(body) else { return };
    let mut view = doc.view(action);
    let _ = veil_gateway::detect::findings(&view);
    let masks = [Mask { selector: Selector::parse("**").unwrap(), style: MaskStyle::Redact }];
    masking::apply(&mut view, &masks, &[], &HashKey::new(b"k".to_vec()));
    doc.write_back(action, &view);
    let out = doc.to_bytes();
    if let Err(e) = Document::parse(&out) {
        panic!("re-serialised XML does not parse ({e}): {}", String::from_utf8_lossy(&out));
    }
});
