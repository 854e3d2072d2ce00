//! The XML codec: AWS XML bodies (query, ec2, rest-xml) ↔ the JSON view that
//! policies see, with masking written back into the XML.
//!
//! The JSON view of an element: an element without child elements is its
//! text (a string); otherwise an object keyed by child names, where a name
//! that repeats, or is one of AWS's list wrappers (`member`, `item`,
//! `entry`), becomes an array. Attributes are not part of the view. For the
//! query protocol the view starts inside `<{Action}Result>`, as botocore's
//! parsed output does; otherwise inside the root element.
//!
//! Safety: no DTD is ever processed (a DOCTYPE is an error), only the five
//! predefined entities and character references are resolved, nesting is
//! capped. Masking changes only text; names, attributes, order and
//! namespaces are written back as they came; comments are dropped and CDATA
//! becomes escaped text.

use serde_json::{Map, Value};

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 128;
/// Most elements a request body may hold: ten times the largest real one
/// (S3 CompleteMultipartUpload's 10 000 parts), and a bound on the memory a
/// body of many tiny elements takes once parsed (about 100 bytes each).
const MAX_REQUEST_ELEMENTS: usize = 200_000;
const LIST_WRAPPERS: &[&str] = &["member", "item", "entry"];

/// An XML parse failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("XML body does not parse: {0}")]
pub struct XmlError(pub String);

#[derive(Debug, Clone)]
enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone)]
struct Element {
    name: String,
    /// Raw attribute text (already escaped), written back verbatim.
    attrs: String,
    children: Vec<Node>,
    /// `<a/>` in the source.
    empty: bool,
}

/// A parsed XML document.
#[derive(Debug, Clone)]
pub struct Document {
    prolog: String,
    root: Element,
}

fn err(e: impl std::fmt::Display) -> XmlError {
    XmlError(e.to_string())
}

impl Document {
    /// Parse an XML body.
    pub fn parse(bytes: &[u8]) -> Result<Document, XmlError> {
        Document::parse_limited(bytes, usize::MAX)
    }

    /// Parse an XML body of at most `max_elements` elements.
    fn parse_limited(bytes: &[u8], max_elements: usize) -> Result<Document, XmlError> {
        use quick_xml::events::Event;
        let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8"))?;
        let mut reader = quick_xml::Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut prolog = String::new();
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        let mut elements = 0usize;
        loop {
            let ev = reader.read_event().map_err(|e| err(format!("at byte {}: {e}", reader.buffer_position())))?;
            if matches!(ev, Event::Start(_) | Event::Empty(_)) {
                elements += 1;
                if elements > max_elements {
                    return Err(err(format!("more than {max_elements} elements")));
                }
            }
            match ev {
                Event::Decl(d) => {
                    if stack.is_empty() && root.is_none() {
                        prolog.push_str("<?");
                        prolog.push_str(&String::from_utf8_lossy(&d));
                        prolog.push_str("?>");
                    }
                }
                Event::DocType(_) => return Err(err("DOCTYPE is not allowed")),
                Event::PI(_) => {}
                Event::Start(s) | Event::Empty(s) if root.is_some() && stack.is_empty() => {
                    return Err(err(format!("second root element {:?}", String::from_utf8_lossy(s.name().as_ref()))));
                }
                Event::Start(s) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(err("nesting deeper than 128 levels"));
                    }
                    stack.push(element(&s, false)?);
                }
                Event::Empty(s) => {
                    let e = element(&s, true)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(e)),
                        None => root = Some(e),
                    }
                }
                Event::End(_) => {
                    let e = stack.pop().ok_or_else(|| err("unbalanced end tag"))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(e)),
                        None => root = Some(e),
                    }
                }
                Event::Text(t) => {
                    let s = t.decode().map_err(err)?;
                    if let Some(parent) = stack.last_mut() {
                        push_text(parent, &s);
                    } else if !s.trim().is_empty() {
                        return Err(err("text outside the root element"));
                    }
                }
                Event::GeneralRef(r) => {
                    let c = if r.is_char_ref() {
                        r.resolve_char_ref().map_err(err)?.ok_or_else(|| err("bad character reference"))?
                    } else {
                        match &*r as &[u8] {
                            b"amp" => '&',
                            b"lt" => '<',
                            b"gt" => '>',
                            b"quot" => '"',
                            b"apos" => '\'',
                            other => return Err(err(format!("undefined entity &{};", String::from_utf8_lossy(other)))),
                        }
                    };
                    let parent = stack.last_mut().ok_or_else(|| err("reference outside the root element"))?;
                    push_text(parent, c.encode_utf8(&mut [0; 4]));
                }
                Event::CData(c) => {
                    let s = c.decode().map_err(err)?;
                    let parent = stack.last_mut().ok_or_else(|| err("CDATA outside the root element"))?;
                    push_text(parent, &s);
                }
                Event::Comment(_) => {}
                Event::Eof => break,
            }
        }
        if !stack.is_empty() {
            return Err(err("unexpected end of document"));
        }
        let root = root.ok_or_else(|| err("no root element"))?;
        Ok(Document { prolog, root })
    }

    /// The element the JSON view starts at.
    fn view_root_mut(&mut self, query_action: Option<&str>) -> &mut Element {
        let want = query_action.map(|a| format!("{a}Result"));
        let idx = want.and_then(|w| {
            self.root.children.iter().position(|c| matches!(c, Node::Element(e) if local(&e.name) == w))
        });
        match idx {
            Some(i) => match &mut self.root.children[i] {
                Node::Element(e) => e,
                _ => unreachable!("position matched an element"),
            },
            None => &mut self.root,
        }
    }

    /// The JSON view (see the module doc). `query_action` is the operation
    /// name for the query protocol, None otherwise.
    pub fn view(&mut self, query_action: Option<&str>) -> Value {
        view(self.view_root_mut(query_action))
    }

    /// Write a (masked) view back into the document's text.
    pub fn write_back(&mut self, query_action: Option<&str>, view: &Value) {
        write_back(self.view_root_mut(query_action), view);
    }

    /// Serialise.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(1024);
        out.push_str(&self.prolog);
        write_element(&self.root, &mut out);
        out.into_bytes()
    }
}

/// The members an XML request body holds: the JSON view inside its root
/// element. Stricter than a response's reading: an element that holds both
/// text and elements is refused, since AWS could read the text the view
/// leaves out, and the root must hold elements (or nothing).
pub fn request_members(bytes: &[u8]) -> Result<Map<String, Value>, XmlError> {
    let doc = Document::parse_limited(bytes, MAX_REQUEST_ELEMENTS)?;
    refuse_mixed(&doc.root)?;
    match view(&doc.root) {
        Value::Object(map) => Ok(map),
        Value::String(t) if is_xml_space(&t) => Ok(Map::new()),
        _ => Err(err(format!("the root element <{}> holds text, not members", doc.root.name))),
    }
}

/// Only XML's own whitespace: a no-break space is text.
fn is_xml_space(t: &str) -> bool {
    t.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn refuse_mixed(e: &Element) -> Result<(), XmlError> {
    let has_elements = child_elements(e).next().is_some();
    for c in &e.children {
        match c {
            Node::Text(t) if has_elements && !is_xml_space(t) => return Err(err(format!("<{}> holds both text and elements", e.name))),
            Node::Element(child) => refuse_mixed(child)?,
            Node::Text(_) => {}
        }
    }
    Ok(())
}

fn element(s: &quick_xml::events::BytesStart<'_>, empty: bool) -> Result<Element, XmlError> {
    let name = std::str::from_utf8(s.name().as_ref()).map_err(err)?.to_string();
    // Written back as it came, so it must be a name the writer can close.
    if !is_xml_name(&name) {
        return Err(err(format!("{name:?} is not an XML element name")));
    }
    // Check attributes are well formed even though they are kept raw.
    for a in s.attributes() {
        a.map_err(err)?;
    }
    let attrs = String::from_utf8_lossy(s.attributes_raw()).into_owned();
    Ok(Element { name, attrs, children: Vec::new(), empty })
}

/// An XML `Name`: a letter, `_` or `:`, then letters, digits, `.`, `-`,
/// `_` or `:` (non-ASCII letters and digits allowed).
fn is_xml_name(name: &str) -> bool {
    let ok = |c: char, first: bool| c.is_alphabetic() || c == '_' || c == ':' || (!first && (c.is_numeric() || c == '.' || c == '-'));
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

fn push_text(parent: &mut Element, s: &str) {
    if let Some(Node::Text(t)) = parent.children.last_mut() {
        t.push_str(s);
    } else {
        parent.children.push(Node::Text(s.to_string()));
    }
}

fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn child_elements(e: &Element) -> impl Iterator<Item = &Element> {
    e.children.iter().filter_map(|c| match c {
        Node::Element(e) => Some(e),
        _ => None,
    })
}

fn text_of(e: &Element) -> String {
    e.children
        .iter()
        .filter_map(|c| match c {
            Node::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Child names in first-seen order with their elements.
fn groups(e: &Element) -> Vec<(&str, Vec<&Element>)> {
    let mut out: Vec<(&str, Vec<&Element>)> = Vec::new();
    for c in child_elements(e) {
        let n = local(&c.name);
        match out.iter_mut().find(|(k, _)| *k == n) {
            Some((_, v)) => v.push(c),
            None => out.push((n, vec![c])),
        }
    }
    out
}

fn is_list(name: &str, count: usize) -> bool {
    count > 1 || LIST_WRAPPERS.contains(&name)
}

fn view(e: &Element) -> Value {
    if child_elements(e).next().is_none() {
        return Value::String(text_of(e));
    }
    let mut map = Map::new();
    for (name, elems) in groups(e) {
        let v = if is_list(name, elems.len()) {
            Value::Array(elems.into_iter().map(view).collect())
        } else {
            view(elems[0])
        };
        map.insert(name.to_string(), v);
    }
    Value::Object(map)
}

fn write_back(e: &mut Element, v: &Value) {
    if child_elements(e).next().is_none() {
        if let Value::String(s) = v {
            if *s != text_of(e) {
                e.children.retain(|c| !matches!(c, Node::Text(_)));
                e.children.push(Node::Text(s.clone()));
                e.empty = false;
            }
        }
        return;
    }
    let Value::Object(map) = v else { return };
    let counts: Vec<(String, usize)> = groups(e).into_iter().map(|(n, els)| (n.to_string(), els.len())).collect();
    let mut seen: Vec<(String, usize)> = Vec::new();
    for c in e.children.iter_mut() {
        let Node::Element(child) = c else { continue };
        let name = local(&child.name).to_string();
        let idx = match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, i)) => {
                *i += 1;
                *i
            }
            None => {
                seen.push((name.clone(), 0));
                0
            }
        };
        let count = counts.iter().find(|(n, _)| *n == name).map_or(1, |(_, c)| *c);
        let sub = match map.get(&name) {
            Some(Value::Array(items)) if is_list(&name, count) => items.get(idx),
            Some(other) if !is_list(&name, count) => Some(other),
            _ => None,
        };
        if let Some(sub) = sub {
            write_back(child, sub);
        }
    }
}

fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn write_element(e: &Element, out: &mut String) {
    out.push('<');
    out.push_str(&e.name);
    out.push_str(&e.attrs);
    if e.empty && e.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for c in &e.children {
        match c {
            Node::Element(child) => write_element(child, out),
            Node::Text(t) => escape_into(t, out),
        }
    }
    out.push_str("</");
    out.push_str(&e.name);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalr&amp;XUtn</SecretAccessKey>
      <SessionToken><![CDATA[tok<en>]]></SessionToken>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;

    #[test]
    fn query_view_starts_inside_the_result_and_masks_write_back() {
        let mut d = Document::parse(STS.as_bytes()).unwrap();
        let mut v = d.view(Some("AssumeRole"));
        assert_eq!(v["Credentials"]["SecretAccessKey"], "wJalr&XUtn");
        assert_eq!(v["Credentials"]["SessionToken"], "tok<en>");
        v["Credentials"]["SecretAccessKey"] = json!("***");
        v["Credentials"]["SessionToken"] = json!("***");
        d.write_back(Some("AssumeRole"), &v);
        let out = String::from_utf8(d.to_bytes()).unwrap();
        assert!(out.contains("<SecretAccessKey>***</SecretAccessKey>"), "{out}");
        assert!(out.contains("<SessionToken>***</SessionToken>"), "{out}");
        assert!(!out.contains("wJalr") && !out.contains("tok&lt;en"), "{out}");
        assert!(out.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(out.contains(r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">"#));
        // Round trip: the masked document parses to the masked view.
        let mut again = Document::parse(out.as_bytes()).unwrap();
        assert_eq!(again.view(Some("AssumeRole")), v);
    }

    #[test]
    fn lists_and_wrappers() {
        let x = r#"<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let mut d = Document::parse(x.as_bytes()).unwrap();
        let v = d.view(None);
        assert_eq!(v["reservationSet"]["item"][0]["instancesSet"]["item"][0]["instanceId"], "i-1");
        let x = r#"<L><Contents><Key>a</Key></Contents><Contents><Key>b</Key></Contents><Name>n</Name><Empty/></L>"#;
        let mut d = Document::parse(x.as_bytes()).unwrap();
        let mut v = d.view(None);
        assert_eq!(v, json!({"Contents": [{"Key": "a"}, {"Key": "b"}], "Name": "n", "Empty": ""}));
        v["Contents"][1]["Key"] = json!("***");
        v["Empty"] = json!("***");
        d.write_back(None, &v);
        assert_eq!(
            String::from_utf8(d.to_bytes()).unwrap(),
            "<L><Contents><Key>a</Key></Contents><Contents><Key>***</Key></Contents><Name>n</Name><Empty>***</Empty></L>"
        );
    }

    #[test]
    fn hostile_xml_is_refused() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
        assert!(Document::parse(laughs.as_bytes()).is_err());
        assert!(Document::parse(b"<a>&ext;</a>").is_err());
        assert!(Document::parse(b"<a><b></a>").is_err());
        assert!(Document::parse(b"<a></a><b></b>").is_err());
        assert!(Document::parse(b"").is_err());
        assert!(Document::parse(b"\xff\xfe").is_err());
        let deep = format!("{}{}", "<a>".repeat(200), "</a>".repeat(200));
        assert!(Document::parse(deep.as_bytes()).is_err());
        assert!(Document::parse(b"<a>&#65;&#x42;</a>").is_ok());
        // Found by fuzzing: `<b//>` reads as an empty element named `b/`,
        // which could not be written back as XML.
        assert!(Document::parse(b"<a><b//></a>").is_err());
        assert!(Document::parse(b"<a><1b/></a>").is_err());
        assert!(Document::parse("<a:R xmlns:a=\"urn:x\"><Préfix-1.x/></a:R>".as_bytes()).is_ok());
    }
}
