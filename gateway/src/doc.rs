//! A response document as the detectors, the selectors and the audit walk
//! it. Two codecs produce one: JSON bodies are read in place
//! ([`crate::json::JsonDoc`], no tree is built), XML bodies become a
//! `serde_json::Value` view ([`crate::aws::xml`]). Both implement [`Tree`],
//! so each walk is written once.

use std::borrow::Cow;

use serde_json::Value;

/// What a node of a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look<'a> {
    Object,
    Array,
    Str(&'a str),
    Number,
    Bool(bool),
    Null,
}

/// A node of a document. Objects may repeat a key (JSON allows it): walks
/// see every entry, so a selector masks each of them.
pub trait Tree<'a>: Copy + 'a {
    /// What this node is (a string's decoded content).
    fn look(self) -> Look<'a>;
    /// An object's entries in document order; nothing for other nodes.
    fn entries(self) -> impl Iterator<Item = (&'a str, Self)> + 'a;
    /// An array's elements; nothing for other nodes.
    fn items(self) -> impl Iterator<Item = Self> + 'a;
    /// An array's `n`-th element.
    fn item(self, n: usize) -> Option<Self> {
        self.items().nth(n)
    }
    /// A number's JSON text (`None` for other nodes).
    fn number_text(self) -> Option<Cow<'a, str>>;

    /// Call `f` with every entry of `key` in an object (a repeated key has
    /// several), in document order.
    fn entries_named(self, key: &str, f: &mut dyn FnMut(&'a str, Self));

    /// The value of `key` in an object: the last entry of that key, as
    /// JSON parsers (and so SDKs) read a repeated key.
    fn get(self, key: &str) -> Option<Self> {
        let mut last = None;
        self.entries_named(key, &mut |_, v| last = Some(v));
        last
    }

    fn as_str(self) -> Option<&'a str> {
        match self.look() {
            Look::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> Tree<'a> for &'a Value {
    fn look(self) -> Look<'a> {
        match self {
            Value::Object(_) => Look::Object,
            Value::Array(_) => Look::Array,
            Value::String(s) => Look::Str(s),
            Value::Number(_) => Look::Number,
            Value::Bool(b) => Look::Bool(*b),
            Value::Null => Look::Null,
        }
    }

    fn entries(self) -> impl Iterator<Item = (&'a str, Self)> + 'a {
        self.as_object().into_iter().flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn items(self) -> impl Iterator<Item = Self> + 'a {
        self.as_array().into_iter().flatten()
    }

    fn item(self, n: usize) -> Option<Self> {
        self.as_array().and_then(|a| a.get(n))
    }

    fn number_text(self) -> Option<Cow<'a, str>> {
        self.as_number().map(|n| Cow::Owned(n.to_string()))
    }

    fn entries_named(self, key: &str, f: &mut dyn FnMut(&'a str, Self)) {
        if let Some((k, v)) = self.as_object().and_then(|m| m.get_key_value(key)) {
            f(k, v)
        }
    }

    fn get(self, key: &str) -> Option<Self> {
        self.as_object().and_then(|m| m.get(key))
    }
}

/// `node` written as JSON, each entry as the document has it.
pub fn to_value<'a>(node: impl Tree<'a>) -> Value {
    match node.look() {
        Look::Object => {
            let mut map = serde_json::Map::new();
            for (k, v) in node.entries() {
                map.insert(k.to_string(), to_value(v));
            }
            Value::Object(map)
        }
        Look::Array => Value::Array(node.items().map(to_value).collect()),
        Look::Str(s) => Value::String(s.to_string()),
        Look::Number => node.number_text().and_then(|t| t.parse::<serde_json::Number>().ok()).map_or(Value::Null, Value::Number),
        Look::Bool(b) => Value::Bool(b),
        Look::Null => Value::Null,
    }
}
