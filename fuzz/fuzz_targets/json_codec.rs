//! The JSON codec and the secret detectors: parse → findings (each path a
//! valid selector) → mask what they found → serialise must parse again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::aws::Protocol;
use veil_gateway::masking::{self, HashKey, Mask, MaskStyle, Selector};
use veil_gateway::pipeline::ParsedBody;

fuzz_target!(|data: &[u8]| {
    let Ok(mut body) = ParsedBody::parse(Protocol::Json, data) else { return };
    let mut view = body.view(None);
    if let Ok(found) = veil_gateway::detect::findings(&view) {
        let masks: Vec<Mask> = found
            .iter()
            .map(|f| match Selector::parse(&f.path) {
                Ok(selector) => Mask { selector, style: MaskStyle::Hash },
                Err(e) => panic!("finding path {:?} is not a selector: {e}", f.path),
            })
            .collect();
        masking::apply(&mut view, &masks, &[], &HashKey::new(b"k".to_vec()));
    }
    let out = body.serialise(None, &view);
    if !out.is_empty() {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
            panic!("re-serialised JSON does not parse ({e})");
        }
    }
});
