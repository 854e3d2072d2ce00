//! What policies print: each instance's stdout and stderr go to one small
//! in-memory sink, and what a hook printed travels with its result to the
//! gateway's log (target `veil::policy_output`), to `veil policy eval|test`,
//! and, when the hook failed, into the deny reason.
//!
//! Invariants: a guest's write never blocks, never fails (a failed write
//! makes Rust's `println!` panic, so a full sink drops instead) and never
//! touches an async runtime; a call keeps at most [`KEEP_BYTES`] of what it
//! printed plus its last [`LAST_WORDS_BYTES`] (where a panic message or a
//! traceback ends), and counts the rest as dropped. Printed text is guest
//! text: it is shown escaped, so no raw newline or terminal escape reaches
//! a log line (the log formatter escapes it, eval/test print it as JSON or
//! `{:?}`, deny reasons escape it), and in the gateway only after
//! [`redact`] masked what it may have copied from the call's inputs. The
//! log is rate-limited per policy ([`Budget`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::doc::{Look, Tree};

/// Bytes of a call's output kept from its start.
pub const KEEP_BYTES: usize = 4096;
/// Bytes kept from the end of a call's output: a panic message, an
/// exception's traceback, the last thing a failing hook said.
pub const LAST_WORDS_BYTES: usize = 512;
/// Lines (hook outputs) a policy may log at once after a quiet spell …
pub const LOG_BURST: f64 = 20.0;
/// … and per second after that; the rest are counted, not logged.
pub const LOG_PER_SEC: f64 = 5.0;
/// Strings of a call's inputs at least this long are masked in what a hook
/// printed (shorter ones are not secrets, and masking every short word
/// would hide the message).
pub const MASK_INPUTS_FROM: usize = 6;
/// What replaces a masked part of printed text.
pub const MASKED: &str = "***";

#[derive(Default)]
struct Captured {
    /// The first [`KEEP_BYTES`] written.
    head: Vec<u8>,
    /// The last bytes written, head included (up to twice
    /// [`LAST_WORDS_BYTES`] before it is trimmed, so trimming is rare).
    tail: Vec<u8>,
    /// Everything written, in bytes.
    total: u64,
}

impl Captured {
    fn write(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = KEEP_BYTES - self.head.len();
        self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
        if bytes.len() >= LAST_WORDS_BYTES {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - LAST_WORDS_BYTES..]);
            return;
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * LAST_WORDS_BYTES {
            self.tail.drain(..self.tail.len() - LAST_WORDS_BYTES);
        }
    }
}

/// One instance's stdout and stderr (both the same sink, so what they print
/// stays in order). Clones share the buffer.
#[derive(Clone, Default)]
pub(crate) struct OutputSink(Arc<Mutex<Captured>>);

impl OutputSink {
    fn write(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).write(bytes);
    }

    /// Forget what was printed so far (an instance made ahead of its call
    /// printed it at start-up, for no call).
    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Captured::default();
    }

    /// What was printed since the last `clear`/`take`; `None` for nothing.
    pub(crate) fn take(&self) -> Option<Printed> {
        let c = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        if c.total == 0 {
            return None;
        }
        let last = &c.tail[c.tail.len().saturating_sub(LAST_WORDS_BYTES)..];
        Some(Printed { text: lossy(&c.head), last: lossy(last), dropped: c.total - c.head.len() as u64 })
    }
}

/// UTF-8 text of bytes that may have been cut inside a character.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl IsTerminal for OutputSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    /// For WASI 0.3 guests (not linked today); the same sink.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputSink {
    /// Always writable: a guest waiting to print never waits.
    async fn ready(&mut self) {}
}

/// Most bytes a guest may write at once (a guest sizes its buffer by it).
const WRITE_PERMIT: usize = 64 << 10;

impl OutputStream for OutputSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        OutputSink::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for OutputSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        OutputSink::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What one hook call printed on stdout and stderr, as the guest wrote it
/// (not yet redacted: see [`redact`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printed {
    /// The first [`KEEP_BYTES`].
    pub text: String,
    /// The last [`LAST_WORDS_BYTES`] (overlapping `text` when it was short).
    pub last: String,
    /// Bytes printed past `text` and not kept (a part of them is in `last`).
    pub dropped: u64,
}

/// What a policy printed during one call, as the gateway logs it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyOutput {
    /// The policy's name.
    pub policy: String,
    /// The hook: `on-request` or `on-response`.
    pub hook: &'static str,
    /// What it printed, redacted ([`redact`]), at most [`KEEP_BYTES`].
    pub text: String,
    /// Bytes it printed past `text`, not shown.
    pub dropped_bytes: u64,
    /// Earlier outputs of this policy not logged (rate limit) since the
    /// last one that was.
    pub suppressed: u64,
}

/// Log a call's policy outputs under the target `veil::policy_output`
/// (INFO; `VEIL_LOG=info,veil::policy_output=warn` silences it). The text
/// goes in as it is: the log formatter escapes every field
/// ([`crate::logging`]), so a guest cannot forge log lines or send terminal
/// escapes, and lets `output` keep its [`KEEP_BYTES`].
pub fn log(request_id: &str, outputs: &[PolicyOutput]) {
    for o in outputs {
        tracing::info!(
            target: "veil::policy_output",
            request_id,
            policy = o.policy.as_str(),
            hook = o.hook,
            dropped_bytes = o.dropped_bytes,
            suppressed = o.suppressed,
            output = o.text.as_str(),
            "policy printed"
        );
    }
}

/// A policy's allowance of logged outputs: a token bucket of [`LOG_BURST`]
/// refilled at [`LOG_PER_SEC`]. A chatty policy costs one lock per call that
/// printed and never floods the log; a silent one costs nothing.
#[derive(Debug)]
pub struct Budget(Mutex<BudgetState>);

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget(Mutex::new(BudgetState { tokens: LOG_BURST, last: Instant::now(), suppressed: 0 }))
    }
}

impl Budget {
    /// Whether one more output may be logged now: `Some(n)` with the number
    /// suppressed since the last admitted one, `None` to suppress this one.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let refill = now.saturating_duration_since(s.last).as_secs_f64() * LOG_PER_SEC;
        s.tokens = (s.tokens + refill).min(LOG_BURST);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// `text` as it may be shown to the caller, the audit trail and the log:
/// every string of the hook's inputs (`params`, the call's parameters, and
/// for `on-response` the response `body`) of [`MASK_INPUTS_FROM`] bytes or
/// more is masked where it appears, then everything the secret detectors
/// recognise ([`crate::detect::scan`]: keys, tokens, passwords in URLs,
/// `password=…`, private keys). Control characters are left for the
/// consumer to escape. Best effort against accidents (a panic message
/// quoting a value, a debug print of the body), not a barrier against a
/// policy set on leaking: a policy's own deny reasons are its author's words.
pub fn redact<'a>(text: &str, params: &Value, body: Option<impl Tree<'a>>) -> String {
    let mut found: Vec<String> = Vec::new();
    if text.len() >= MASK_INPUTS_FROM {
        let windows: foldhash::HashSet<[u8; 4]> = text.as_bytes().windows(4).map(|w| [w[0], w[1], w[2], w[3]]).collect();
        find_strings(&windows, text, params, &mut found);
        if let Some(body) = body {
            find_strings(&windows, text, body, &mut found);
        }
    }
    let masked = if found.is_empty() {
        text.to_string()
    } else {
        // Longest first, so a value containing another is masked whole.
        found.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for s in found {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASKED);
            }
        }
        out
    };
    mask_detected(&masked)
}

/// Largest string value looked into as JSON text of its own (a secret's
/// `SecretString`, a parameter holding a document).
const NESTED_JSON_MAX: usize = 64 << 10;

/// Push every string of `root` that occurs in `text` (as it is, or escaped
/// as JSON and Rust's `{:?}` print it) and is long enough to mask, and the
/// strings inside a string that is itself a JSON document. One hash lookup
/// per string (the text's 4-byte windows filter them), a search only for
/// strings that may occur.
fn find_strings<'a, T: Tree<'a>>(windows: &foldhash::HashSet<[u8; 4]>, text: &str, root: T, found: &mut Vec<String>) {
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        match node.look() {
            Look::Object => stack.extend(node.entries().map(|(_, v)| v)),
            Look::Array => stack.extend(node.items()),
            Look::Str(s) => find_string(windows, text, s, found),
            _ => {}
        }
    }
}

fn find_string(windows: &foldhash::HashSet<[u8; 4]>, text: &str, s: &str, found: &mut Vec<String>) {
    if s.len() < MASK_INPUTS_FROM {
        return;
    }
    let may_occur = |s: &str| {
        let b = s.as_bytes();
        s.len() <= text.len() && windows.contains(&[b[0], b[1], b[2], b[3]]) && text.contains(s)
    };
    if may_occur(s) {
        found.push(s.to_string());
    }
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        let quoted = Value::String(s.to_string()).to_string();
        let escaped = &quoted[1..quoted.len() - 1];
        if may_occur(escaped) {
            found.push(escaped.to_string());
        }
    }
    let trimmed = s.trim_start();
    if s.len() <= NESTED_JSON_MAX && (trimmed.starts_with('{') || trimmed.starts_with('[')) {
        if let Ok(inner) = serde_json::from_str::<Value>(s) {
            let mut nested = Vec::new();
            find_strings(windows, text, &inner, &mut nested);
            found.extend(nested);
        }
    }
}

/// Bytes that end a token for the detectors: whitespace, quotes, brackets,
/// separators of printed structures.
fn separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '\\' | ',' | ';' | '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>')
}

/// Mask what the detectors recognise in free text: each token is judged on
/// its own and under the token before it as its key (`Password: hunter2`,
/// `"SecretString": "…"`), and `key=value` under its own key. A PEM private
/// key is masked from its BEGIN line to its END line.
fn mask_detected(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // PEM blocks first: they span separators.
    while let Some(begin) = rest.find("-----BEGIN ") {
        let block = &rest[begin..];
        let header_end = block[11..].find("-----").map(|i| 11 + i + 5);
        let is_private = header_end.is_some_and(|e| block[..e].contains("PRIVATE KEY"));
        if !is_private {
            out.push_str(&mask_tokens(&rest[..begin + 11]));
            rest = &rest[begin + 11..];
            continue;
        }
        out.push_str(&mask_tokens(&rest[..begin]));
        out.push_str(MASKED);
        rest = match block.find("-----END ").and_then(|e| block[e + 9..].find("-----").map(|f| e + 9 + f + 5)) {
            Some(end) => &block[end..],
            // No END (cut off): the rest is the key.
            None => "",
        };
    }
    out.push_str(&mask_tokens(rest));
    out
}

fn mask_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut key = "";
    let mut start = 0;
    let flush = |out: &mut String, token: &str, key: &str| {
        if token.is_empty() {
            return;
        }
        let secret = crate::detect::scan(key, token).is_some()
            || crate::detect::scan("", token).is_some()
            || token.split_once(['=', ':']).is_some_and(|(k, v)| !v.is_empty() && crate::detect::scan(k, v).is_some());
        out.push_str(if secret { MASKED } else { token });
    };
    let ends = text.char_indices().filter(|&(_, c)| separator(c)).map(|(i, c)| (i, Some(c))).chain([(text.len(), None)]);
    for (i, sep) in ends {
        let token = &text[start..i];
        flush(&mut out, token, key);
        // The token before a value is its key; a lone `:` or `=` between
        // them (`"password": "…"`) is not.
        let bare = token.trim_end_matches([':', '=']);
        if !bare.is_empty() {
            key = bare;
        }
        if let Some(c) = sep {
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    out
}

/// Control characters as Rust escapes (`\n`, `\u{1b}`), everything else as is.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn printed(writes: &[&[u8]]) -> Option<Printed> {
        let sink = OutputSink::default();
        for w in writes {
            sink.write(w);
        }
        sink.take()
    }

    #[test]
    fn a_sink_keeps_the_head_and_the_last_words_and_counts_the_rest() {
        assert_eq!(printed(&[]), None);
        let p = printed(&[b"hello\n", b"world\n"]).unwrap();
        assert_eq!((p.text.as_str(), p.last.as_str(), p.dropped), ("hello\nworld\n", "hello\nworld\n", 0));
        // A megabyte in many writes, then a panic message.
        let line = [b'x'; 1000];
        let mut writes: Vec<&[u8]> = vec![&line[..]; 1000];
        writes.push(b"\npanicked at lib.rs: the end");
        let p = printed(&writes).unwrap();
        assert_eq!(p.text.len(), KEEP_BYTES);
        assert_eq!(p.dropped, 1_000_000 + 28 - KEEP_BYTES as u64);
        assert_eq!(p.last.len(), LAST_WORDS_BYTES);
        assert!(p.last.ends_with("\npanicked at lib.rs: the end"), "{:?}", p.last);
        // One write larger than everything kept.
        let big = vec![b'y'; 3 * KEEP_BYTES];
        let p = printed(&[&big, b"!"]).unwrap();
        assert!(p.last.ends_with("yy!") && p.last.len() == LAST_WORDS_BYTES);
        // Just past the head: the last words join head and tail.
        let head = vec![b'a'; KEEP_BYTES];
        let p = printed(&[&head, b"bc"]).unwrap();
        assert_eq!(p.dropped, 2);
        assert!(p.last.ends_with("aabc") && p.last.len() == LAST_WORDS_BYTES, "{}", p.last.len());
        // A character cut at the edge is replaced, not a panic.
        let mut cut = vec![b'a'; KEEP_BYTES - 1];
        cut.extend_from_slice("é".as_bytes());
        assert!(printed(&[&cut]).unwrap().text.ends_with('\u{fffd}'));
    }

    #[test]
    fn writes_never_fail_and_the_sink_is_always_ready() {
        let mut sink = OutputSink::default();
        for _ in 0..100 {
            assert_eq!(OutputStream::check_write(&mut sink).unwrap(), WRITE_PERMIT);
            OutputStream::write(&mut sink, Bytes::from(vec![b'z'; WRITE_PERMIT])).unwrap();
            OutputStream::flush(&mut sink).unwrap();
        }
        let mut ready = Pollable::ready(&mut sink);
        assert!(std::future::Future::poll(ready.as_mut(), &mut Context::from_waker(std::task::Waker::noop())).is_ready());
        drop(ready);
        assert_eq!(sink.take().unwrap().dropped, 100 * WRITE_PERMIT as u64 - KEEP_BYTES as u64);
    }

    #[test]
    fn the_budget_admits_a_burst_then_a_steady_rate_and_counts_the_rest() {
        let b = Budget::default();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST as usize {
            assert_eq!(b.admit_at(t0), Some(0));
        }
        assert_eq!(b.admit_at(t0), None);
        assert_eq!(b.admit_at(t0), None);
        let later = t0 + std::time::Duration::from_secs_f64(1.0 / LOG_PER_SEC);
        assert_eq!(b.admit_at(later), Some(2), "the next admitted line says how many were suppressed");
        assert_eq!(b.admit_at(later), None);
    }

    #[test]
    fn redaction_masks_inputs_and_detected_secrets_and_escapes_controls() {
        let body = json!({"SecretString": "{\"password\":\"correct horse\"}", "Name": "prod/db", "Short": "abc",
                          "Nested": [{"Value": "hunter2-hunter2"}], "Json": "{\"db\":{\"pass\":\"inner-value-1\"}}"});
        let text = "got {\"password\":\"correct horse\"} for prod/db, value hunter2-hunter2, abc\n\u{1b}[31mred";
        let params = json!({"SecretId": "prod/db", "Token": "tok-123456"});
        let text = format!("{text} tok-123456 {body} inner-value-1");
        let out = redact(&text, &params, Some(&body));
        for secret in ["correct horse", "hunter2", "tok-", "inner-value"] {
            assert!(!out.contains(secret), "{secret}: {out}");
        }
        assert!(!out.contains("prod/db") && out.contains("abc"), "short strings stay: {out}");
        assert!(escape_controls(&out[out.find("abc").unwrap()..]).starts_with("abc\\n\\u{1b}[31mred *** {"), "{out}");

        let keys = "AKIAIOSFODNN7EXAMPLE secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY url postgres://app:s3cr3tPassw0rd@db:5432/x";
        let out = redact(keys, &Value::Null, None::<&Value>);
        assert!(!out.contains("wJalrXUtnFEMI") && !out.contains("s3cr3tPassw0rd"), "{out}");
        let jwt = "token: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U done";
        let out = redact(jwt, &Value::Null, None::<&Value>);
        assert!(!out.contains("eyJhbGci") && out.ends_with(" done"), "{out}");
        let pem = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----\nafter";
        let out = redact(pem, &Value::Null, None::<&Value>);
        assert!(!out.contains("MIIE") && out.ends_with("after"), "{out}");
        let cut = "-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA";
        assert_eq!(redact(cut, &Value::Null, None::<&Value>), MASKED);
        assert_eq!(redact("plain words, nothing secret", &Value::Null, None::<&Value>), "plain words, nothing secret");
    }
}
