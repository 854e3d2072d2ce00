//! Masking: Veil's selector language and the application of mask decisions
//! to a JSON document tree.
//!
//! Selector grammar (documented for policy authors in the README):
//!
//! ```text
//! selector := step ( "." step | "[" index "]" )*
//! step     := name | "\"" quoted "\"" | "*" | "**"
//! index    := digits | "*" | "\"" quoted "\"" | "?" key ("==" | "!=") "\"" quoted "\""
//! key      := name | "\"" quoted "\""
//! ```
//!
//! - `a.b` descends into object keys; `"a.b"` is one key containing a dot
//!   (`\"` and `\\` escape inside quotes); `["a.b"]` is the same.
//! - `[n]` selects the n-th array element, `[*]` every element. On a value
//!   that is not an array, `[*]` selects the value itself: XML has no arrays,
//!   and a list of one element arrives as a single object, so one selector
//!   serves lists of any length.
//! - `[?Type=="SecureString"]` selects the elements of an array whose
//!   `Type` is that string (`!=`: is not, or has none); on a value that is
//!   not an array, the value itself when it passes. Two filters in a row
//!   must both pass. A policy can so mask by a sibling field without
//!   parsing the body itself.
//! - `*` selects every value of an object (or element of an array).
//! - `**` matches zero or more levels of objects and arrays, so `**.Password`
//!   selects every `Password` key at any depth.
//!
//! Invariants: a selector that does not parse is an error (the caller denies);
//! each selected value is masked exactly once, with the strongest style asked
//! for (redact > hash > partial), and a value inside a masked value is not
//! masked again; masking never changes the document's shape, so SDKs still
//! parse the result: numbers become `0`, booleans `false`, and a blob (base64
//! text on the wire) the base64 of its marker.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::doc::{Look, Tree};
use crate::json::{JsonDoc, JsonNode, Masked};

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Most `**` steps in one selector (each multiplies the work of a match).
const MAX_RECURSIVE_STEPS: usize = 4;
/// The marker that replaces redacted strings.
pub const REDACTED: &str = "***";

/// How a selected value is replaced. Ordered from weakest to strongest: when
/// several masks select the same value, the strongest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStyle {
    /// Keep the last four characters.
    Partial,
    /// Keyed, stable hash.
    Hash,
    /// Fixed marker.
    Redact,
}

/// One step of a parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    /// Every child: `*`.
    Any,
    /// Every element: `[*]`; a non-array is its own single element.
    Elements,
    /// Zero or more levels: `**`.
    Recursive,
    /// `[?key=="value"]` (`equal`) or `[?key!="value"]`: elements whose
    /// string field `key` is (is not) `value`.
    Filter { key: String, value: String, equal: bool },
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    steps: Vec<Step>,
}

/// A selector that does not parse, with the byte offset of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector `{selector}` at byte {offset}: {reason}")]
pub struct SelectorError {
    /// The selector text (cut to 80 characters).
    pub selector: String,
    /// Where parsing failed.
    pub offset: usize,
    /// Why.
    pub reason: &'static str,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Selector {
    /// Parse a selector.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let err = |offset, reason| SelectorError {
            selector: text.chars().take(80).collect(),
            offset,
            reason,
        };
        if text.is_empty() {
            return Err(err(0, "empty selector"));
        }
        if text.len() > MAX_SELECTOR_LEN {
            return Err(err(MAX_SELECTOR_LEN, "selector longer than 1024 bytes"));
        }
        let bytes = text.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        // Whether the next thing must be a step (start, or after a dot).
        let mut expect_step = true;
        while i < bytes.len() {
            match bytes[i] {
                b'.' if !expect_step => {
                    expect_step = true;
                    i += 1;
                }
                b'[' => {
                    i += 1;
                    let (step, next) = match bytes.get(i) {
                        Some(b'*') => (Step::Elements, i + 1),
                        Some(b'"') => {
                            let (key, next) = parse_quoted(text, i).map_err(|(o, r)| err(o, r))?;
                            (Step::Key(key), next)
                        }
                        Some(b'?') => parse_filter(text, i + 1).map_err(|(o, r)| err(o, r))?,
                        Some(c) if c.is_ascii_digit() => {
                            let end = i + bytes[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                            let n = text[i..end].parse().map_err(|_| err(i, "index too large"))?;
                            (Step::Index(n), end)
                        }
                        _ => return Err(err(i, "expected a number, `*`, a quoted key or a `?` filter after `[`")),
                    };
                    if bytes.get(next) != Some(&b']') {
                        return Err(err(next, "expected `]`"));
                    }
                    steps.push(step);
                    i = next + 1;
                    expect_step = false;
                }
                _ if !expect_step => return Err(err(i, "expected `.` or `[`")),
                b'"' => {
                    let (key, next) = parse_quoted(text, i).map_err(|(o, r)| err(o, r))?;
                    steps.push(Step::Key(key));
                    i = next;
                    expect_step = false;
                }
                b'*' => {
                    if bytes.get(i + 1) == Some(&b'*') {
                        if steps.last() != Some(&Step::Recursive) {
                            steps.push(Step::Recursive);
                        }
                        i += 2;
                    } else {
                        steps.push(Step::Any);
                        i += 1;
                    }
                    if matches!(bytes.get(i), Some(c) if !matches!(c, b'.' | b'[')) {
                        return Err(err(i, "`*` and `**` must be a whole step"));
                    }
                    expect_step = false;
                }
                _ => {
                    let start = i;
                    while i < bytes.len() && !matches!(bytes[i], b'.' | b'[' | b']' | b'"' | b'*') {
                        if bytes[i].is_ascii_whitespace() || bytes[i].is_ascii_control() {
                            return Err(err(i, "whitespace in a name (quote the key)"));
                        }
                        i += 1;
                    }
                    if i == start {
                        return Err(err(i, "expected a name"));
                    }
                    steps.push(Step::Key(text[start..i].to_string()));
                    expect_step = false;
                }
            }
        }
        if expect_step {
            return Err(err(text.len(), "selector ends with `.`"));
        }
        if steps.iter().filter(|s| **s == Step::Recursive).count() > MAX_RECURSIVE_STEPS {
            return Err(err(0, "more than 4 `**` steps"));
        }
        Ok(Selector { text: text.to_string(), steps })
    }

    /// The selector's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Parse a filter's `key=="value"` or `key!="value"` from `start` (after the
/// `?`); returns the step and the offset after the value.
fn parse_filter(text: &str, start: usize) -> Result<(Step, usize), (usize, &'static str)> {
    let bytes = text.as_bytes();
    let (key, mut i) = match bytes.get(start) {
        Some(b'"') => parse_quoted(text, start)?,
        _ => {
            let end = start + bytes[start..].iter().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b':' | b'@')).count();
            if end == start {
                return Err((start, "expected a key after `[?`"));
            }
            (text[start..end].to_string(), end)
        }
    };
    let equal = match bytes.get(i..i + 2) {
        Some(b"==") => true,
        Some(b"!=") => false,
        _ => return Err((i, "expected `==` or `!=` in a filter")),
    };
    i += 2;
    if bytes.get(i) != Some(&b'"') {
        return Err((i, "expected a quoted value in a filter"));
    }
    let (value, next) = parse_quoted(text, i)?;
    Ok((Step::Filter { key, value, equal }, next))
}

/// Parse `"..."` starting at `start` (the opening quote); returns the key and
/// the offset after the closing quote.
fn parse_quoted(text: &str, start: usize) -> Result<(String, usize), (usize, &'static str)> {
    let mut key = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Ok((key, start + 1 + off + 1)),
            '\\' => match chars.next() {
                Some((_, c @ ('"' | '\\'))) => key.push(c),
                _ => return Err((start + 1 + off, "only `\\\"` and `\\\\` escapes are allowed")),
            },
            c => key.push(c),
        }
    }
    Err((text.len(), "unterminated quoted key"))
}

/// One element of a concrete path into a document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PathElem {
    Key(String),
    Index(usize),
}

/// Where a selector walk is: the keys borrowed from the document.
#[derive(Clone, Copy)]
enum At<'a> {
    Key(&'a str),
    Index(usize),
}

/// Call `hit` with every node of `doc` that `steps` select, and the path to it.
fn select<'a, T: Tree<'a>>(doc: T, steps: &[Step], prefix: &mut Vec<At<'a>>, hit: &mut impl FnMut(&[At<'a>], T)) {
    let Some((step, rest)) = steps.split_first() else {
        hit(prefix, doc);
        return;
    };
    let look = doc.look();
    // The steps for the children: the `**` stays for one or more levels.
    let (children, next) = match (step, look) {
        // Every entry of the key: a repeated key is masked wherever it is.
        (Step::Key(k), Look::Object) => {
            doc.entries_named(k, &mut |key, child| descend(child, At::Key(key), rest, prefix, hit));
            return;
        }
        (Step::Index(n), Look::Array) => {
            if let Some(child) = doc.item(*n) {
                descend(child, At::Index(*n), rest, prefix, hit);
            }
            return;
        }
        (Step::Any, _) => (true, rest),
        (Step::Elements, Look::Array) => (true, rest),
        (Step::Elements, _) => return select(doc, rest, prefix, hit),
        (Step::Filter { key, value, equal }, look) => {
            let passes = |node: T| (node.get(key).and_then(|v| v.as_str()) == Some(value.as_str())) == *equal;
            if look == Look::Array {
                for (i, child) in doc.items().enumerate().filter(|(_, child)| passes(*child)) {
                    descend(child, At::Index(i), rest, prefix, hit);
                }
            } else if passes(doc) {
                select(doc, rest, prefix, hit);
            }
            return;
        }
        (Step::Recursive, _) => {
            // Zero levels: the rest applies here.
            select(doc, rest, prefix, hit);
            (true, steps)
        }
        _ => (false, rest),
    };
    if !children {
        return;
    }
    match look {
        Look::Object => {
            for (k, child) in doc.entries() {
                descend(child, At::Key(k), next, prefix, hit);
            }
        }
        Look::Array => {
            for (i, child) in doc.items().enumerate() {
                descend(child, At::Index(i), next, prefix, hit);
            }
        }
        _ => {}
    }
}

fn descend<'a, T: Tree<'a>>(child: T, at: At<'a>, steps: &[Step], prefix: &mut Vec<At<'a>>, hit: &mut impl FnMut(&[At<'a>], T)) {
    prefix.push(at);
    select(child, steps, prefix, hit);
    prefix.pop();
}

/// Every concrete path in `doc` that `steps` select, appended to `out`.
fn select_paths(doc: &Value, steps: &[Step], out: &mut Vec<Vec<PathElem>>) {
    select(doc, steps, &mut Vec::new(), &mut |path, _| {
        out.push(path.iter().map(|at| match at {
            At::Key(k) => PathElem::Key(k.to_string()),
            At::Index(i) => PathElem::Index(*i),
        }).collect())
    });
}

fn get_mut<'a>(doc: &'a mut Value, path: &[PathElem]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |v, elem| match (elem, v) {
        (PathElem::Key(k), Value::Object(map)) => map.get_mut(k),
        (PathElem::Index(i), Value::Array(items)) => items.get_mut(*i),
        _ => None,
    })
}

/// The key of the keyed hash used by [`MaskStyle::Hash`]. One per deployment,
/// so hashes correlate within it and cannot be reversed by a dictionary
/// attack without the key.
#[derive(Clone)]
pub struct HashKey(Vec<u8>);

impl HashKey {
    /// A key from secret bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        HashKey(key.into())
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// A mask ready to apply: a parsed selector and a style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// What to mask.
    pub selector: Selector,
    /// How.
    pub style: MaskStyle,
}

/// Apply `masks` to `doc`; returns how many values were masked. `blobs`
/// select the values that are base64 text on the wire (the operation's blob
/// outputs, [`crate::aws::blob_outputs`]): a masked one is written as the
/// base64 of its marker, so an SDK that decodes it still parses the response.
pub fn apply(doc: &mut Value, masks: &[Mask], blobs: &[Selector], key: &HashKey) -> usize {
    let mut targets: BTreeMap<Vec<PathElem>, MaskStyle> = BTreeMap::new();
    let mut found = Vec::new();
    for mask in masks {
        found.clear();
        select_paths(doc, &mask.selector.steps, &mut found);
        for path in found.drain(..) {
            let style = targets.entry(path).or_insert(mask.style);
            *style = (*style).max(mask.style);
        }
    }
    // BTreeMap order puts an ancestor right before its descendants. A value
    // inside an already masked value is covered by it, whatever its style:
    // masking it again would hash a hash.
    let mut masked: Vec<&Vec<PathElem>> = Vec::new();
    let mut count = 0;
    for (path, style) in &targets {
        if masked.last().is_some_and(|a| path.starts_with(a)) {
            continue;
        }
        if let Some(v) = get_mut(doc, path) {
            mask_value(v, *style, key);
            count += 1;
        }
        masked.push(path);
    }
    if count > 0 && !blobs.is_empty() {
        // A set: two selectors reaching one blob must not encode it twice.
        let mut masked_blobs = BTreeSet::new();
        for sel in blobs {
            found.clear();
            select_paths(doc, &sel.steps, &mut found);
            masked_blobs.extend(found.drain(..).filter(|path| masked.iter().any(|m| path.starts_with(m))));
        }
        for path in &masked_blobs {
            if let Some(Value::String(s)) = get_mut(doc, path) {
                *s = BASE64.encode(s.as_bytes());
            }
        }
    }
    count
}

/// [`apply`] for a JSON body read in place: the same selection, styles and
/// blob encoding, recorded in `doc` (its nodes then read masked and
/// [`JsonDoc::to_bytes`] writes them in).
pub fn apply_json(doc: &mut JsonDoc, masks: &[Mask], blobs: &[Selector], key: &HashKey) -> usize {
    let nodes_of = |doc: &JsonDoc, steps: &[Step], out: &mut Vec<u32>| {
        select(doc.root(), steps, &mut Vec::new(), &mut |_, node: JsonNode| out.push(node.index()))
    };
    let mut targets: Vec<(u32, MaskStyle)> = Vec::new();
    let mut found = Vec::new();
    for mask in masks {
        found.clear();
        nodes_of(doc, &mask.selector.steps, &mut found);
        targets.extend(found.iter().map(|n| (*n, mask.style)));
    }
    if targets.is_empty() {
        return 0;
    }
    // Document order; for one node the strongest style first.
    targets.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    // A node inside an already masked one is covered by it (nodes of a
    // subtree follow their root, up to the root's `after`).
    let mut roots: Vec<(u32, u32, MaskStyle)> = Vec::new();
    for (n, style) in targets {
        if roots.last().is_some_and(|(start, end, _)| (*start..*end).contains(&n)) {
            continue;
        }
        let node = JsonNode::at(doc, n);
        roots.push((n, node.after(), style));
    }
    let mut blob_nodes = Vec::new();
    for sel in blobs {
        nodes_of(doc, &sel.steps, &mut blob_nodes);
    }
    blob_nodes.sort_unstable();
    let mut replaced = Vec::new();
    for (n, _, style) in &roots {
        mask_leaves(JsonNode::at(doc, *n), *style, key, &mut |leaf, masked| {
            let masked = match masked {
                Masked::Str(s) if blob_nodes.binary_search(&leaf).is_ok() => Masked::Str(BASE64.encode(s.as_bytes())),
                other => other,
            };
            replaced.push((leaf, masked));
        });
    }
    doc.set_masked(replaced);
    roots.len()
}

/// [`mask_value`] for a node read in place: what each leaf becomes.
fn mask_leaves(node: JsonNode<'_>, style: MaskStyle, key: &HashKey, out: &mut impl FnMut(u32, Masked)) {
    match node.look() {
        Look::Str(s) => out(node.index(), Masked::Str(mask_str(s, style, key))),
        Look::Number => out(node.index(), Masked::Zero),
        Look::Bool(_) => out(node.index(), Masked::False),
        Look::Null => {}
        Look::Array => node.items().for_each(|i| mask_leaves(i, style, key, out)),
        Look::Object => node.entries().for_each(|(_, v)| mask_leaves(v, style, key, out)),
    }
}

/// Mask one value, leaf by leaf, keeping its type: SDKs parse numbers and
/// booleans strictly, so those are redacted to `0` and `false` whatever the
/// style; hash and partial apply to strings.
fn mask_value(v: &mut Value, style: MaskStyle, key: &HashKey) {
    match v {
        Value::String(s) => *s = mask_str(s, style, key),
        Value::Number(_) => *v = Value::from(0),
        Value::Bool(b) => *b = false,
        Value::Null => {}
        Value::Array(items) => items.iter_mut().for_each(|i| mask_value(i, style, key)),
        Value::Object(map) => map.values_mut().for_each(|i| mask_value(i, style, key)),
    }
}

/// Mask one string.
pub fn mask_str(s: &str, style: MaskStyle, key: &HashKey) -> String {
    match style {
        MaskStyle::Redact => REDACTED.to_string(),
        MaskStyle::Hash => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length");
            mac.update(s.as_bytes());
            let digest = mac.finalize().into_bytes();
            format!("hmac-sha256:{}", hex::encode(&digest[..8]))
        }
        MaskStyle::Partial => {
            let n = s.chars().count();
            if n <= 8 {
                REDACTED.to_string()
            } else {
                let tail: String = s.chars().skip(n - 4).collect();
                format!("{REDACTED}{tail}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> HashKey {
        HashKey::new(b"test-key".to_vec())
    }

    /// `doc` masked as a tree, checked to be what masking the same body
    /// read in place writes (when it is shallow enough to parse).
    fn mask(doc: Value, specs: &[(&str, MaskStyle)]) -> Value {
        let masks: Vec<Mask> = specs
            .iter()
            .map(|(s, style)| Mask { selector: Selector::parse(s).unwrap(), style: *style })
            .collect();
        let text = doc.to_string();
        let mut doc = doc;
        let n = apply(&mut doc, &masks, &[], &key());
        if let Ok(mut in_place) = JsonDoc::parse(text.as_bytes()) {
            assert_eq!(apply_json(&mut in_place, &masks, &[], &key()), n, "{specs:?}");
            let out: Value = serde_json::from_slice(&in_place.to_bytes()).unwrap();
            assert_eq!(out, doc, "{specs:?}");
        }
        doc
    }

    #[test]
    fn deeply_nested_json_masks_without_overflow() {
        let mut v = json!("leaf");
        for _ in 0..2000 {
            v = json!({ "a": v });
        }
        let v = mask(v, &[("**", MaskStyle::Redact)]);
        let mut leaf = &v;
        while let Some(inner) = leaf.get("a") {
            leaf = inner;
        }
        assert_eq!(leaf, &json!("***"));
    }

    #[test]
    fn dotted_fields() {
        let out = mask(
            json!({"Credentials": {"SecretAccessKey": "abc", "AccessKeyId": "AKIA"}}),
            &[("Credentials.SecretAccessKey", MaskStyle::Redact)],
        );
        assert_eq!(out, json!({"Credentials": {"SecretAccessKey": "***", "AccessKeyId": "AKIA"}}));
    }

    #[test]
    fn indexes_and_wildcards() {
        let doc = json!({"Parameters": [{"Value": "a"}, {"Value": "b"}, {"Value": "c"}]});
        assert_eq!(
            mask(doc.clone(), &[("Parameters[1].Value", MaskStyle::Redact)]),
            json!({"Parameters": [{"Value": "a"}, {"Value": "***"}, {"Value": "c"}]})
        );
        assert_eq!(
            mask(doc.clone(), &[("Parameters[*].Value", MaskStyle::Redact)]),
            json!({"Parameters": [{"Value": "***"}, {"Value": "***"}, {"Value": "***"}]})
        );
        assert_eq!(
            mask(json!({"a": {"x": "1", "y": "2"}}), &[("a.*", MaskStyle::Redact)]),
            json!({"a": {"x": "***", "y": "***"}})
        );
        // `[*]` on a single object (an XML list of one) selects the object.
        assert_eq!(
            mask(json!({"Parameters": {"Value": "a"}}), &[("Parameters[*].Value", MaskStyle::Redact)]),
            json!({"Parameters": {"Value": "***"}})
        );
        // Out of range and wrong-type steps select nothing.
        assert_eq!(mask(doc.clone(), &[("Parameters[9].Value", MaskStyle::Redact)]), doc);
        assert_eq!(mask(doc.clone(), &[("Parameters.Value", MaskStyle::Redact)]), doc);
    }

    #[test]
    fn filters_select_by_a_sibling_field() {
        let doc = json!({"Parameters": [
            {"Type": "SecureString", "Value": "s1"}, {"Type": "String", "Value": "p"},
            {"Type": "StringList", "Value": "a,b"}, {"Value": "untyped"}, {"Type": "SecureString", "Value": "s2"}
        ]});
        let out = mask(doc.clone(), &[(r#"Parameters[?Type!="String"][?Type!="StringList"].Value"#, MaskStyle::Redact)]);
        let values: Vec<&str> = out["Parameters"].as_array().unwrap().iter().map(|p| p["Value"].as_str().unwrap()).collect();
        assert_eq!(values, ["***", "p", "a,b", "***", "***"]);
        let out = mask(doc, &[(r#"Parameters[?"Type"=="SecureString"].Value"#, MaskStyle::Redact)]);
        let values: Vec<&str> = out["Parameters"].as_array().unwrap().iter().map(|p| p["Value"].as_str().unwrap()).collect();
        assert_eq!(values, ["***", "p", "a,b", "untyped", "***"]);
        // A single object (GetParameter, or an XML list of one) is its own element.
        let one = |t: &str| json!({"Parameter": {"Type": t, "Value": "v"}});
        let sel = r#"Parameter[?Type!="String"].Value"#;
        assert_eq!(mask(one("SecureString"), &[(sel, MaskStyle::Redact)])["Parameter"]["Value"], "***");
        assert_eq!(mask(one("String"), &[(sel, MaskStyle::Redact)])["Parameter"]["Value"], "v");
    }

    #[test]
    fn recursive_descent() {
        let doc = json!({"Password": "p0", "a": [{"b": {"Password": "p1"}}, {"Password": "p2"}], "c": "keep"});
        assert_eq!(
            mask(doc, &[("**.Password", MaskStyle::Redact)]),
            json!({"Password": "***", "a": [{"b": {"Password": "***"}}, {"Password": "***"}], "c": "keep"})
        );
    }

    #[test]
    fn quoted_keys_with_dots() {
        let doc = json!({"Tags": {"team.name": "x", "team": {"name": "y"}}});
        assert_eq!(
            mask(doc.clone(), &[(r#"Tags."team.name""#, MaskStyle::Redact)]),
            json!({"Tags": {"team.name": "***", "team": {"name": "y"}}})
        );
        assert_eq!(
            mask(doc, &[(r#"Tags["team.name"]"#, MaskStyle::Redact)]),
            json!({"Tags": {"team.name": "***", "team": {"name": "y"}}})
        );
        let s = Selector::parse(r#""a\"b\\c""#).unwrap();
        assert_eq!(s.steps, vec![Step::Key("a\"b\\c".into())]);
    }

    #[test]
    fn redact_preserves_types() {
        let out = mask(
            json!({"s": {"n": 42, "b": true, "z": null, "l": ["x", 1]}}),
            &[("s", MaskStyle::Redact)],
        );
        assert_eq!(out, json!({"s": {"n": 0, "b": false, "z": null, "l": ["***", 0]}}));
    }

    #[test]
    fn masked_blobs_stay_base64() {
        // `Plaintext[*]` reaches the same value as `Plaintext`: encoded once.
        let blobs = [Selector::parse("Plaintext").unwrap(), Selector::parse("Plaintext[*]").unwrap(), Selector::parse("Items[*].Data").unwrap()];
        let masks = [
            Mask { selector: Selector::parse("Plaintext").unwrap(), style: MaskStyle::Redact },
            Mask { selector: Selector::parse("Items").unwrap(), style: MaskStyle::Hash },
        ];
        let mut doc = json!({"Plaintext": "AQ==", "KeyId": "k", "Items": [{"Data": "c2VjcmV0", "Name": "n"}], "Other": "AQ=="});
        let mut in_place = JsonDoc::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(apply(&mut doc, &masks, &blobs, &key()), 2);
        assert_eq!(apply_json(&mut in_place, &masks, &blobs, &key()), 2);
        assert_eq!(serde_json::from_slice::<Value>(&in_place.to_bytes()).unwrap(), doc);
        // base64("***"); a hashed blob is the base64 of its hash text.
        assert_eq!(doc["Plaintext"], "Kioq");
        let hashed = BASE64.decode(doc["Items"][0]["Data"].as_str().unwrap()).unwrap();
        assert_eq!(String::from_utf8(hashed).unwrap(), mask_str("c2VjcmV0", MaskStyle::Hash, &key()));
        assert!(doc["Items"][0]["Name"].as_str().unwrap().starts_with("hmac-sha256:"));
        // A blob no mask selects is untouched.
        assert_eq!(doc["Other"], "AQ==");
        assert_eq!(doc["KeyId"], "k");
    }

    #[test]
    fn a_repeated_key_is_masked_at_every_occurrence() {
        // An SDK reads the last; a scanner might read the first: both go.
        let mut doc = JsonDoc::parse(br#"{"SecretString":"first", "Name":"n","SecretString" : "second"}"#).unwrap();
        let masks = [Mask { selector: Selector::parse("SecretString").unwrap(), style: MaskStyle::Redact }];
        assert_eq!(apply_json(&mut doc, &masks, &[], &key()), 2);
        assert_eq!(&doc.to_bytes()[..], br#"{"SecretString":"***", "Name":"n","SecretString" : "***"}"#);
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let doc = json!({"a": "secret", "b": "secret", "c": "other"});
        let out = mask(doc, &[("*", MaskStyle::Hash)]);
        assert_eq!(out["a"], out["b"]);
        assert_ne!(out["a"], out["c"]);
        assert!(out["a"].as_str().unwrap().starts_with("hmac-sha256:"));
        assert_ne!(mask_str("secret", MaskStyle::Hash, &HashKey::new(b"other".to_vec())), out["a"]);
    }

    #[test]
    fn partial_keeps_last_four() {
        assert_eq!(mask_str("AKIAIOSFODNN7EXAMPLE", MaskStyle::Partial, &key()), "***MPLE");
        assert_eq!(mask_str("short", MaskStyle::Partial, &key()), "***");
        assert_eq!(mask_str("ünïcödé-välüé", MaskStyle::Partial, &key()), "***älüé");
    }

    #[test]
    fn strongest_style_wins_and_nothing_is_masked_twice() {
        let doc = json!({"a": {"b": "value-that-is-long"}});
        let out = mask(doc.clone(), &[("a.b", MaskStyle::Partial), ("**.b", MaskStyle::Redact)]);
        assert_eq!(out, json!({"a": {"b": "***"}}));
        // The ancestor is hashed once; the descendant is not hashed again.
        let out = mask(doc, &[("a", MaskStyle::Hash), ("a.b", MaskStyle::Hash), ("**.**.b", MaskStyle::Hash)]);
        assert_eq!(out["a"]["b"], Value::String(mask_str("value-that-is-long", MaskStyle::Hash, &key())));
    }

    #[test]
    fn bad_selectors_are_errors() {
        for bad in ["", "a.", ".a", "a..b", "a[", "a[x]", "a[1", "\"abc", "a b", "a*", "**x", "a]", "a\"b\"",
            "**.**a", r#""\n""#, "a[?]", "a[?T]", r#"a[?T="x"]"#, "a[?T==x]", r#"a[?T=="x""#, r#"a[?=="x"]"#, r#"a[?T!="x"b]"#] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(Selector::parse(&"a.".repeat(600)).is_err());
        assert!(Selector::parse("a.**.b.**.c.**.d.**.e.**.f").is_err());
        let e = Selector::parse("Secret[[").unwrap_err();
        assert_eq!(e.offset, 7);
    }

    #[test]
    fn good_selectors_parse() {
        for good in ["a", "a.b", "a[0]", "a[*].b", "**", "**.a", "*.a", "a[\"x.y\"].b", "Tag:Name", "a-b_c@d", "a.**",
            r#"a[?T=="x"]"#, r#"a[?"T.y"!="x \"q\""].b"#, r#"**[?k=="v"]"#] {
            assert!(Selector::parse(good).is_ok(), "{good:?} should parse");
        }
        // `**.**` collapses into one step.
        assert_eq!(Selector::parse("**.**.a").unwrap().steps, vec![Step::Recursive, Step::Key("a".into())]);
    }
}
