//! The JSON codec and the secret detectors. The body is read in place as
//! serde_json reads it (same acceptance, same document), findings are
//! valid selectors, and the masked bytes parse again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_gateway::aws::Protocol;
use veil_gateway::masking::{HashKey, Mask, MaskStyle, Selector};
use veil_gateway::body::ParsedBody;

fuzz_target!(|data: &[u8]| {
    let reference = serde_json::from_slice::<serde_json::Value>(data);
    let parsed = ParsedBody::parse(Protocol::Json, data, None);
    let mut body = match (parsed, reference) {
        (Ok(ParsedBody::Empty), Err(_)) => return,
        (Err(_), Err(_)) => return,
        (Ok(body @ ParsedBody::Json(_)), Ok(v)) => {
            assert_eq!(body.view(), v, "read differently from serde_json");
            body
        }
        (Ok(_), Ok(_)) => panic!("a JSON document read as empty"),
        (Ok(_), Err(e)) => panic!("accepted what serde_json rejects ({e})"),
        (Err(e), Ok(_)) => panic!("rejected what serde_json accepts ({e})"),
    };
    let ParsedBody::Json(doc) = &body else { return };
    if let Ok(found) = veil_gateway::detect::findings(doc.root()) {
        let masks: Vec<Mask> = found
            .iter()
            .map(|f| match Selector::parse(&f.path) {
                Ok(selector) => Mask { selector, style: MaskStyle::Hash },
                Err(e) => panic!("finding path {:?} is not a selector: {e}", f.path),
            })
            .collect();
        body.mask(&masks, &[], &HashKey::new(b"k".to_vec()));
    }
    let out = body.to_bytes();
    match serde_json::from_slice::<serde_json::Value>(&out) {
        Ok(v) => assert_eq!(v, body.view(), "the masked bytes are not the masked document"),
        Err(e) => panic!("masked JSON does not parse ({e})"),
    }
});
