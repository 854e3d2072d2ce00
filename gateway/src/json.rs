//! JSON response bodies read in place: one strict pass over the bytes
//! writes a flat tape of nodes (a string's content is a slice of the body
//! unless it has escapes), masks are recorded beside the tape, and the
//! masked body is the original bytes with each masked value spliced in.
//! No tree of maps is built, freed or re-serialised: for a 1 MB listing
//! those were four fifths of the masking time.
//!
//! Invariants: the grammar is RFC 8259's, as strictly as serde_json reads
//! it (UTF-8, no control characters in strings, paired surrogates, finite
//! numbers, nothing after the value, at most [`MAX_DEPTH`] levels), so a
//! body Veil accepts is one an SDK parses the same way; an object may
//! repeat a key, and every entry is seen (and masked) — an SDK takes the
//! last. A masked value keeps its JSON type, so the output parses as the
//! input did.

use std::borrow::Cow;
use std::sync::Mutex;

use bytes::Bytes;

use crate::doc::{Look, Tree};

/// Deepest nesting of arrays and objects accepted: serde_json's limit, so
/// both read the same bodies.
pub const MAX_DEPTH: usize = 127;

/// Why a body is not JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct JsonError {
    pub offset: usize,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    True,
    False,
    Number,
    /// Content is the body between the quotes.
    Str,
    /// Content is `unescaped[a..b]`.
    Escaped,
    /// `a`: the index after the subtree; `b`: where its elements' count
    /// and indexes start in `elements`.
    Array,
    /// `a`: the index after the subtree; `b`: its number of entries.
    /// Entries are key, value pairs.
    Object,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// The value's bytes in the body (quotes and brackets included).
    start: u32,
    end: u32,
    a: u32,
    b: u32,
}

/// What a masked value is written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    Str(String),
    Zero,
    False,
}

/// A parsed JSON body and the masks applied to it.
pub struct JsonDoc {
    /// The body (checked UTF-8 once, so slices at quotes need no check).
    text: String,
    nodes: Vec<Node>,
    unescaped: String,
    /// Per array: its length, then its elements' node indexes (selectors
    /// index arrays: `Parameters[1500].Value` must not walk 1,500 elements).
    elements: Vec<u32>,
    /// Masked values by node index, sorted; only leaves.
    masked: Vec<(u32, Masked)>,
    /// Per large object, looked up by key: its key nodes by key, built on
    /// the first lookup (selectors and name/value pairs look keys up, and
    /// a scan per lookup would make a large object quadratic).
    keys: Mutex<foldhash::HashMap<u32, foldhash::HashMap<Box<str>, Vec<u32>>>>,
}

/// Objects with more entries than this get a key index when looked up.
const INDEXED_OBJECT: u32 = 16;

impl std::fmt::Debug for JsonDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonDoc({} bytes, {} nodes, {} masked)", self.text.len(), self.nodes.len(), self.masked.len())
    }
}

struct Parser<'s> {
    t: &'s str,
    s: &'s [u8],
    i: usize,
    nodes: Vec<Node>,
    unescaped: String,
    elements: Vec<u32>,
    /// The elements of the open arrays so far, innermost last.
    pending: Vec<u32>,
}

impl Parser<'_> {
    fn err<T>(&self, reason: &'static str) -> Result<T, JsonError> {
        Err(JsonError { offset: self.i, reason })
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn push(&mut self, kind: Kind, start: usize, a: u32, b: u32) {
        self.nodes.push(Node { kind, start: start as u32, end: self.i as u32, a, b });
    }

    fn literal(&mut self, word: &'static [u8], kind: Kind) -> Result<(), JsonError> {
        if !self.s[self.i..].starts_with(word) {
            return self.err("expected a value");
        }
        let start = self.i;
        self.i += word.len();
        self.push(kind, start, 0, 0);
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let n = self.s[self.i..].iter().take_while(|b| b.is_ascii_digit()).count();
        self.i += n;
        n
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("expected a digit"),
        }
        let mut float = false;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            float = true;
            if self.digits() == 0 {
                return self.err("expected a digit after the decimal point");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            float = true;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("expected a digit in the exponent");
            }
        }
        // Integers past 64 bits are read as floats by serde_json; a float
        // out of f64's range is an error there, so it is one here.
        if float || self.i - start > 18 {
            if !self.t[start..self.i].parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(JsonError { offset: start, reason: "number out of range" });
            }
        }
        self.push(Kind::Number, start, 0, 0);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(digits) = self.s.get(self.i..self.i + 4) else { return self.err("unterminated `\\u` escape") };
        let mut n = 0;
        for d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.err("expected four hex digits after `\\u`"),
            };
            n = n << 4 | u32::from(v);
        }
        self.i += 4;
        Ok(n)
    }

    /// Skip the string bytes that need no decoding: up to a quote, a
    /// backslash or a control character (JSON forbids them in a string).
    fn plain_run(&mut self) {
        self.i += crate::runs::run_len(&self.s[self.i..], |b| (b != b'"') & (b != b'\\') & (b >= 0x20));
    }

    /// A string at the opening quote.
    fn string(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        self.i += 1;
        let content = self.i;
        self.plain_run();
        match self.s.get(self.i) {
            None => Err(JsonError { offset: start, reason: "unterminated string" }),
            Some(b'"') => {
                self.i += 1;
                self.push(Kind::Str, start, 0, 0);
                Ok(())
            }
            Some(b'\\') => self.escaped(start, content),
            Some(_) => self.err("control character in a string"),
        }
    }

    /// The rest of a string with escapes, decoded into `unescaped`.
    fn escaped(&mut self, start: usize, content: usize) -> Result<(), JsonError> {
        let a = self.unescaped.len();
        // Cuts are at ASCII bytes: character boundaries.
        self.unescaped.push_str(&self.t[content..self.i]);
        loop {
            match self.s.get(self.i) {
                None => return Err(JsonError { offset: start, reason: "unterminated string" }),
                Some(b'"') => {
                    self.i += 1;
                    let b = self.unescaped.len();
                    self.push(Kind::Escaped, start, a as u32, b as u32);
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.s.get(self.i) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let at = self.i;
                            let hi = self.hex4()?;
                            let code = match hi {
                                0xD800..=0xDBFF => {
                                    if !self.s[self.i..].starts_with(b"\\u") {
                                        return Err(JsonError { offset: at, reason: "lone leading surrogate in a `\\u` escape" });
                                    }
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return Err(JsonError { offset: at, reason: "lone leading surrogate in a `\\u` escape" });
                                    }
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(JsonError { offset: at, reason: "lone trailing surrogate in a `\\u` escape" }),
                                c => c,
                            };
                            // Surrogates are excluded above: always a char.
                            self.unescaped.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                            continue;
                        }
                        _ => return self.err("invalid escape"),
                    };
                    self.unescaped.push(c);
                    self.i += 1;
                }
                Some(_) => {
                    let from = self.i;
                    self.plain_run();
                    if self.i == from {
                        return self.err("control character in a string");
                    }
                    self.unescaped.push_str(&self.t[from..self.i]);
                }
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<(), JsonError> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a key");
        }
        self.string()?;
        self.ws();
        if self.s.get(self.i) != Some(&b':') {
            return self.err("expected `:`");
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    /// Close the container at node `open`; an array's elements are
    /// `pending[from..]`, an object has `entries`.
    fn close(&mut self, open: u32, from: usize, entries: u32) {
        self.i += 1;
        let end = self.nodes.len() as u32;
        let at = self.elements.len() as u32;
        let node = &mut self.nodes[open as usize];
        node.a = end;
        node.end = self.i as u32;
        if node.kind == Kind::Object {
            node.b = entries;
        } else {
            node.b = at;
            self.elements.push((self.pending.len() - from) as u32);
            self.elements.extend(self.pending.drain(from..));
        }
    }

    fn document(&mut self) -> Result<(), JsonError> {
        // The open arrays and objects, innermost last, each with where its
        // elements start in `pending` and its entries so far.
        let mut open: Vec<(u32, usize, u32)> = Vec::new();
        self.ws();
        'value: loop {
            if let Some((top, _, _)) = open.last() {
                if self.nodes[*top as usize].kind == Kind::Array {
                    self.pending.push(self.nodes.len() as u32);
                }
            }
            match self.s.get(self.i) {
                Some(b'{') | Some(b'[') => {
                    let object = self.s[self.i] == b'{';
                    if open.len() >= MAX_DEPTH {
                        return self.err("nesting deeper than 127 levels");
                    }
                    let at = self.nodes.len() as u32;
                    let start = self.i;
                    self.i += 1;
                    self.push(if object { Kind::Object } else { Kind::Array }, start, 0, 0);
                    self.ws();
                    let from = self.pending.len();
                    if self.s.get(self.i) == Some(if object { &b'}' } else { &b']' }) {
                        self.close(at, from, 0);
                    } else {
                        open.push((at, from, 1));
                        if object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b't') => self.literal(b"true", Kind::True)?,
                Some(b'f') => self.literal(b"false", Kind::False)?,
                Some(b'n') => self.literal(b"null", Kind::Null)?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) => return self.err("expected a value"),
                None => return self.err("unexpected end of the body"),
            }
            // After a value: the next one, or the end of its container.
            loop {
                self.ws();
                let Some(&mut (top, from, ref mut entries)) = open.last_mut() else { break 'value };
                let object = self.nodes[top as usize].kind == Kind::Object;
                match self.s.get(self.i) {
                    Some(b',') => {
                        self.i += 1;
                        self.ws();
                        if object {
                            *entries += 1;
                            self.key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if object => {
                        let entries = *entries;
                        self.close(top, from, entries);
                        open.pop();
                    }
                    Some(b']') if !object => {
                        self.close(top, from, 0);
                        open.pop();
                    }
                    None => return self.err("unexpected end of the body"),
                    Some(_) => return self.err(if object { "expected `,` or `}`" } else { "expected `,` or `]`" }),
                }
            }
        }
        if self.i != self.s.len() {
            return self.err("trailing characters after the value");
        }
        Ok(())
    }
}

impl JsonDoc {
    /// Parse a body (one JSON value, whitespace around it).
    pub fn parse(raw: &[u8]) -> Result<JsonDoc, JsonError> {
        if raw.len() >= u32::MAX as usize {
            return Err(JsonError { offset: 0, reason: "body larger than 4 GiB" });
        }
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t.to_string(),
            Err(e) => return Err(JsonError { offset: e.valid_up_to(), reason: "invalid UTF-8" }),
        };
        let mut p = Parser {
            t: &text,
            s: text.as_bytes(),
            i: 0,
            nodes: Vec::with_capacity(raw.len() / 12 + 1),
            unescaped: String::new(),
            elements: Vec::new(),
            pending: Vec::new(),
        };
        p.document()?;
        let Parser { nodes, unescaped, elements, .. } = p;
        Ok(JsonDoc { text, nodes, unescaped, elements, masked: Vec::new(), keys: Mutex::default() })
    }

    /// The body as it arrived.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The top value.
    pub fn root(&self) -> JsonNode<'_> {
        JsonNode { doc: self, i: 0 }
    }

    /// Replace the values at these nodes (leaves: strings, numbers,
    /// booleans). A node masked again takes the later replacement.
    pub fn set_masked(&mut self, mut masked: Vec<(u32, Masked)>) {
        masked.append(&mut self.masked);
        // Stable: for one node, the later (now first) entry wins below.
        masked.sort_by_key(|(i, _)| *i);
        masked.dedup_by_key(|(i, _)| *i);
        self.masked = masked;
    }

    /// The body with the masked values written in: the original bytes when
    /// nothing is masked.
    pub fn to_bytes(&self) -> Bytes {
        if self.masked.is_empty() {
            return Bytes::copy_from_slice(self.text.as_bytes());
        }
        let raw = self.text.as_bytes();
        let mut out = Vec::with_capacity(raw.len());
        let mut at = 0;
        for (i, m) in &self.masked {
            let node = self.nodes[*i as usize];
            out.extend_from_slice(&raw[at..node.start as usize]);
            match m {
                Masked::Str(s) => {
                    // Writing a str to a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut out, s);
                }
                Masked::Zero => out.push(b'0'),
                Masked::False => out.extend_from_slice(b"false"),
            }
            at = node.end as usize;
        }
        out.extend_from_slice(&raw[at..]);
        Bytes::from(out)
    }

    fn masked(&self, i: u32) -> Option<&Masked> {
        if self.masked.is_empty() {
            return None;
        }
        self.masked.binary_search_by_key(&i, |(n, _)| *n).ok().map(|k| &self.masked[k].1)
    }

    /// The elements of node `i` (none unless it is an array).
    fn elements_of(&self, i: u32) -> &[u32] {
        let n = &self.nodes[i as usize];
        if n.kind != Kind::Array {
            return &[];
        }
        let at = n.b as usize;
        let len = self.elements[at] as usize;
        &self.elements[at + 1..at + 1 + len]
    }

    /// The index after node `i`'s subtree.
    fn after(&self, i: u32) -> u32 {
        let n = &self.nodes[i as usize];
        match n.kind {
            Kind::Array | Kind::Object => n.a,
            _ => i + 1,
        }
    }

    fn str_of(&self, n: &Node) -> &str {
        match n.kind {
            Kind::Escaped => &self.unescaped[n.a as usize..n.b as usize],
            // Slices at quotes of a UTF-8 body.
            _ => &self.text[n.start as usize + 1..n.end as usize - 1],
        }
    }
}

/// One node of a [`JsonDoc`]; masked values read as masked.
#[derive(Clone, Copy)]
pub struct JsonNode<'a> {
    doc: &'a JsonDoc,
    i: u32,
}

impl<'a> JsonNode<'a> {
    /// The node at `index` of `doc` (an index one of its nodes gave).
    pub fn at(doc: &'a JsonDoc, index: u32) -> JsonNode<'a> {
        debug_assert!((index as usize) < doc.nodes.len());
        JsonNode { doc, i: index }
    }

    /// The node's place in the document: indexes increase in document
    /// order, and a node's descendants are the indexes up to [`JsonNode::after`].
    pub fn index(self) -> u32 {
        self.i
    }

    /// The index after this node's subtree.
    pub fn after(self) -> u32 {
        self.doc.after(self.i)
    }

    fn node(self) -> &'a Node {
        &self.doc.nodes[self.i as usize]
    }
}

impl<'a> Tree<'a> for JsonNode<'a> {
    fn look(self) -> Look<'a> {
        let n = self.node();
        let masked = || self.doc.masked(self.i);
        match n.kind {
            Kind::Object => Look::Object,
            Kind::Array => Look::Array,
            Kind::Str | Kind::Escaped => match masked() {
                Some(Masked::Str(s)) => Look::Str(s),
                _ => Look::Str(self.doc.str_of(n)),
            },
            Kind::Number => Look::Number,
            Kind::True => Look::Bool(masked().is_none()),
            Kind::False => Look::Bool(false),
            Kind::Null => Look::Null,
        }
    }

    fn entries(self) -> impl Iterator<Item = (&'a str, Self)> + 'a {
        let doc = self.doc;
        let (mut i, end) = match self.node().kind {
            Kind::Object => (self.i + 1, self.node().a),
            _ => (0, 0),
        };
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let key = doc.str_of(&doc.nodes[i as usize]);
            let value = JsonNode { doc, i: i + 1 };
            i = doc.after(i + 1);
            Some((key, value))
        })
    }

    fn items(self) -> impl Iterator<Item = Self> + 'a {
        let doc = self.doc;
        doc.elements_of(self.i).iter().map(move |i| JsonNode { doc, i: *i })
    }

    fn item(self, n: usize) -> Option<Self> {
        self.doc.elements_of(self.i).get(n).map(|i| JsonNode { doc: self.doc, i: *i })
    }

    fn entries_named(self, key: &str, f: &mut dyn FnMut(&'a str, Self)) {
        let doc = self.doc;
        let n = self.node();
        if n.kind != Kind::Object {
            return;
        }
        if n.b <= INDEXED_OBJECT {
            for (k, v) in self.entries().filter(|(k, _)| *k == key) {
                f(k, v);
            }
            return;
        }
        let found: Vec<u32> = {
            let mut index = doc.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let keys = index.entry(self.i).or_insert_with(|| {
                let mut keys: foldhash::HashMap<Box<str>, Vec<u32>> = Default::default();
                let mut i = self.i + 1;
                while i < n.a {
                    keys.entry(doc.str_of(&doc.nodes[i as usize]).into()).or_default().push(i);
                    i = doc.after(i + 1);
                }
                keys
            });
            keys.get(key).cloned().unwrap_or_default()
        };
        for k in found {
            f(doc.str_of(&doc.nodes[k as usize]), JsonNode { doc, i: k + 1 });
        }
    }

    fn number_text(self) -> Option<Cow<'a, str>> {
        let n = self.node();
        if n.kind != Kind::Number {
            return None;
        }
        if self.doc.masked(self.i).is_some() {
            return Some(Cow::Borrowed("0"));
        }
        Some(Cow::Borrowed(&self.doc.text[n.start as usize..n.end as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::to_value;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Result<JsonDoc, JsonError> {
        JsonDoc::parse(s.as_bytes())
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"a":1,"b":[true,false,null,"x"],"c":{"d":-1.5e3,"e":""}}"#,
            r#"  [ 1 , 2 ,{ } , [ ] ,"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00 é" ]  "#,
            r#""top""#,
            "0",
            "-0.0e-0",
            "12345678901234567890123",
            r#"{"k":"v","k":"w"}"#,
            "{\"\u{1F600}\":\"ünï\"}",
        ] {
            let doc = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(to_value(doc.root()), want, "{text}");
            assert_eq!(doc.to_bytes(), text.as_bytes());
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "", " ", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "[1 2]", "01", "1.", ".5", "1e", "-", "+1", "tru", "nul",
            "\"abc", "\"a\u{1}b\"", r#""\x""#, r#""\u12""#, r#""\ud800""#, r#""\ud800\u0041""#, r#""\udc00""#, "1e400", "[1] x",
            "{\"a\":1}}", "'a'", "[\"a\\\"]",
        ] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "serde_json reads {text:?}");
            assert!(parse(text).is_err(), "{text:?} should not parse");
        }
        assert!(JsonDoc::parse(b"\"\xff\"").is_err());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep).unwrap_err().reason, "nesting deeper than 127 levels");
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
        assert!(serde_json::from_str::<Value>(&ok).is_ok());
        assert_eq!(parse("[1,]").unwrap_err(), JsonError { offset: 3, reason: "expected a value" });
    }

    #[test]
    fn repeated_keys_are_all_seen_and_the_last_is_the_value() {
        let doc = parse(r#"{"a":"x","b":1,"a":"y"}"#).unwrap();
        let keys: Vec<&str> = doc.root().entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert_eq!(doc.root().get("a").and_then(|v| v.as_str()), Some("y"));
    }

    #[test]
    fn keys_of_a_large_object_are_looked_up_by_index() {
        let mut text = String::from("{");
        for i in 0..500 {
            text.push_str(&format!("\"k{}\":{i},", i % 250));
        }
        text.push_str("\"last\":\"x\"}");
        let doc = parse(&text).unwrap();
        let root = doc.root();
        assert_eq!(root.get("k7").and_then(|v| v.number_text()).as_deref(), Some("257"));
        let mut seen = Vec::new();
        root.entries_named("k7", &mut |k, v| seen.push((k, v.number_text().unwrap().into_owned())));
        assert_eq!(seen, [("k7", "7".to_string()), ("k7", "257".to_string())]);
        assert_eq!(root.get("last").and_then(|v| v.as_str()), Some("x"));
        assert!(root.get("nope").is_none());
        // A small object answers the same way without an index.
        let small = parse(r#"{"k7":1,"k7":2}"#).unwrap();
        assert_eq!(small.root().get("k7").and_then(|v| v.number_text()).as_deref(), Some("2"));
    }

    #[test]
    fn masked_values_are_spliced_into_the_original_bytes() {
        let text = "{ \"s\" : \"se\\u0063ret\", \"n\": 12.5, \"b\": true, \"keep\": \"x\" }";
        let mut doc = parse(text).unwrap();
        let pick = |doc: &JsonDoc, k: &str| doc.root().get(k).unwrap().index();
        let (s, n, b) = (pick(&doc, "s"), pick(&doc, "n"), pick(&doc, "b"));
        doc.set_masked(vec![(n, Masked::Zero), (s, Masked::Str("q\"uote".into())), (b, Masked::False)]);
        assert_eq!(doc.root().get("s").unwrap().look(), Look::Str("q\"uote"));
        assert_eq!(doc.root().get("b").unwrap().look(), Look::Bool(false));
        assert_eq!(doc.root().get("n").unwrap().number_text().unwrap(), "0");
        let out = doc.to_bytes();
        assert_eq!(std::str::from_utf8(&out).unwrap(), "{ \"s\" : \"q\\\"uote\", \"n\": 0, \"b\": false, \"keep\": \"x\" }");
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), json!({"s": "q\"uote", "n": 0, "b": false, "keep": "x"}));
        assert_eq!(to_value(doc.root()), json!({"s": "q\"uote", "n": 0, "b": false, "keep": "x"}));
    }
}
