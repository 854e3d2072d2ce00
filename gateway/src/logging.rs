//! The gateway's own log: one line per event on stderr, as text or as JSON
//! (`VEIL_LOG_FORMAT`, else `[log] format`), safe to show on a terminal and
//! to feed to a log pipeline whatever callers send.
//!
//! Callers, tokens, reviewers and policies all put text into log fields: an
//! `Action` parameter, a token's `sub`, a header, a policy's name or reason.
//! So no call site is trusted to escape: every field value, however it was
//! recorded (`%display`, `?debug`, a plain string, an error), passes through
//! the one visitor here, which
//!
//! - caps it ([`FIELD_CAP`] bytes, [`TEXT_CAP`] for `message`, `error` and
//!   `reason`, a policy's kept output for `output`), marking the cut with
//!   how much was left out, so a 64 KiB header does not make a 64 KiB line;
//! - escapes it: in text mode a value that is not a plain token is quoted,
//!   with quotes, backslashes, control characters (newline, carriage return,
//!   ESC …) and other unprintable characters escaped as Rust's `{:?}` does;
//!   the message is escaped the same way, unquoted. In JSON mode every line is
//!   one JSON object and values are JSON strings (or numbers and booleans).
//!
//! Hence one event is always exactly one line, a value cannot fake another
//! field or line, and no escape sequence reaches the terminal. The level
//! filter stays `VEIL_LOG` (default `info` for `serve`, `warn` otherwise).

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Longest value of an ordinary field, in bytes.
pub const FIELD_CAP: usize = 256;
/// Longest `message`, `error` or `reason`, in bytes: these carry sentences.
pub const TEXT_CAP: usize = 1024;

/// The environment variable that picks the format.
pub const FORMAT_ENV: &str = "VEIL_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2025-01-01T00:00:00.000000Z  INFO target: message key=value …`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, `fields`.
    Json,
}

/// A log format name that is neither `text` nor `json`.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {value:?} is not a log format: expected \"text\" or \"json\"")]
pub struct BadFormat {
    /// Where the name came from (the variable or the config key).
    pub source_name: String,
    /// The value given.
    pub value: String,
}

impl LogFormat {
    /// `VEIL_LOG_FORMAT` when set, else `configured`.
    pub fn from_env_or(configured: LogFormat) -> Result<LogFormat, BadFormat> {
        match std::env::var_os(FORMAT_ENV) {
            None => Ok(configured),
            Some(v) => LogFormat::parse(FORMAT_ENV, &v.to_string_lossy()),
        }
    }

    /// `text` or `json`; `source_name` names where `value` came from in the error.
    pub fn parse(source_name: &str, value: &str) -> Result<LogFormat, BadFormat> {
        match value.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(BadFormat { source_name: source_name.into(), value: value.into() }),
        }
    }
}

/// Install the global subscriber. `default_level` applies when `VEIL_LOG` is unset.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).fmt_fields(TextFields).try_init()
        }
        LogFormat::Json => builder.with_ansi(false).fmt_fields(JsonFields).event_format(JsonEvents).try_init(),
    };
}

fn cap_of(field: &str) -> usize {
    match field {
        "message" | "error" | "reason" => TEXT_CAP,
        // What a policy printed (target `veil::policy_output`): already
        // bounded per call, rate-limited per policy, and only useful whole.
        "output" => crate::policy::output::KEEP_BYTES,
        _ => FIELD_CAP,
    }
}

/// A string that keeps at most `cap` bytes (cut at a character boundary)
/// and counts the rest, so that rendering a huge value costs no memory.
struct Capped {
    text: String,
    cap: usize,
    dropped: usize,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped { text: String::new(), cap, dropped: 0 }
    }

    fn of(value: &str, cap: usize) -> Capped {
        let mut c = Capped::new(cap);
        let _ = c.write_str(value);
        c
    }

    /// The kept text, with a marker when something was cut.
    fn finish(mut self) -> String {
        if self.dropped > 0 {
            let _ = write!(self.text, "…[{} more bytes]", self.dropped);
        }
        self.text
    }
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.dropped > 0 {
            self.dropped += s.len();
            return Ok(());
        }
        let room = self.cap - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&s[..cut]);
            self.dropped = s.len() - cut;
        }
        Ok(())
    }
}

/// The field's value as capped text, whichever way it was recorded.
fn render_debug(field: &Field, value: &dyn fmt::Debug) -> String {
    let mut c = Capped::new(cap_of(field.name()));
    let _ = write!(c, "{value:?}");
    c.finish()
}

fn render_error(field: &Field, value: &(dyn std::error::Error + 'static)) -> String {
    Capped::of(&crate::error_chain(value), cap_of(field.name())).finish()
}

/// Characters a text-mode value may hold unquoted: enough for addresses,
/// ids, ARNs, paths and numbers; anything else (space, `=`, quotes,
/// backslash, control and non-ASCII characters) gets the value quoted.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+,*[]()#~%^!?<>{}|".contains(&b))
}

/// Escape like `{:?}` does, without the surrounding quotes: for the message.
fn escape_message(s: &str, out: &mut String) {
    for c in s.chars() {
        if c == '"' || c == '\'' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
}

/// Text-mode fields: `name=value` separated by spaces, the message first and
/// bare. See the module docs for the escaping.
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = TextVisitor { out: String::new() };
        fields.record(&mut v);
        writer.write_str(&v.out)
    }
}

struct TextVisitor {
    out: String,
}

impl TextVisitor {
    fn push(&mut self, name: &str, value: &str) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        if name == "message" {
            escape_message(value, &mut self.out);
        } else if plain(value) {
            let _ = write!(self.out, "{name}={value}");
        } else {
            let _ = write!(self.out, "{name}={value:?}");
        }
    }

    fn push_raw(&mut self, name: &str, value: impl fmt::Display) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        let _ = write!(self.out, "{name}={value}");
    }
}

impl Visit for TextVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Most values are short: no copy for them (a log line per call).
        if value.len() <= cap_of(field.name()) {
            return self.push(field.name(), value);
        }
        let v = Capped::of(value, cap_of(field.name())).finish();
        self.push(field.name(), &v);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let v = render_debug(field, value);
        self.push(field.name(), &v);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let v = render_error(field, value);
        self.push(field.name(), &v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push_raw(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push_raw(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push_raw(field.name(), value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push_raw(field.name(), value);
    }
}

/// JSON-mode fields (of spans): one JSON object.
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = JsonVisitor::default();
        fields.record(&mut v);
        writer.write_str(&Value::Object(v.fields).to_string())
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let mut v = JsonVisitor::default();
        if let Ok(Value::Object(old)) = serde_json::from_str::<Value>(&current.fields) {
            v.fields = old;
        }
        fields.record(&mut v);
        current.fields = Value::Object(v.fields).to_string();
        Ok(())
    }
}

#[derive(Default)]
struct JsonVisitor {
    fields: Map<String, Value>,
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().into(), Value::String(Capped::of(value, cap_of(field.name())).finish()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields.insert(field.name().into(), Value::String(render_debug(field, value)));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields.insert(field.name().into(), Value::String(render_error(field, value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
}

/// JSON-mode lines: `{"timestamp", "level", "target", "message", "fields",
/// "spans"}`, the last two only when not empty.
pub struct JsonEvents;

impl<S, N> FormatEvent<S, N> for JsonEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut v = JsonVisitor::default();
        event.record(&mut v);
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(message) = v.fields.remove("message") {
            line.insert("message".into(), message);
        }
        if !v.fields.is_empty() {
            line.insert("fields".into(), Value::Object(v.fields));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut s = Map::new();
                    s.insert("name".into(), span.name().into());
                    if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&f.fields) {
                            s.extend(fields);
                        }
                    }
                    Value::Object(s)
                })
                .collect();
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the tests read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let builder = tracing_subscriber::fmt().with_writer(buf.clone()).with_ansi(false);
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.fmt_fields(TextFields).finish(), f),
            LogFormat::Json => tracing::subscriber::with_default(builder.fmt_fields(JsonFields).event_format(JsonEvents).finish(), f),
        }
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    const HOSTILE: &str = "x\n2025-01-01T00:00:00Z  INFO veil: forged verdict=allow\r\x1b[31mred\x1b[0m \"q\" \\ \u{85}\u{2028}";

    fn log_everything(hostile: &str) {
        let err = std::io::Error::other(hostile.to_string());
        tracing::info!(display = %hostile, debug = ?hostile, plain = hostile, error = %err, n = 7u64, ok = true, "call {hostile}");
        tracing::warn!(error = &err as &(dyn std::error::Error + 'static), "second");
    }

    /// The names of `key=value` fields in text-mode `fields`, reading
    /// quoted values as a logfmt parser would.
    fn field_names(fields: &str) -> Vec<String> {
        let (mut names, mut rest) = (Vec::new(), fields);
        while !rest.is_empty() {
            let (name, after) = rest.split_once('=').expect("name=value");
            names.push(name.to_string());
            let end = if let Some(quoted) = after.strip_prefix('"') {
                let mut escaped = false;
                1 + quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let close = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        close
                    })
                    .expect("closing quote")
                    .0
                    + 1
            } else {
                after.find(' ').unwrap_or(after.len())
            };
            rest = after[end..].trim_start_matches(' ');
        }
        names
    }

    #[test]
    fn text_lines_stay_one_per_event_whatever_the_values() {
        let out = capture(LogFormat::Text, || log_everything(HOSTILE));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(!out.contains('\r') && !out.contains('\x1b') && !out.contains('\u{85}') && !out.contains('\u{2028}'), "{out:?}");
        let fields = lines[0].split_once(": call x").unwrap().1.split_once(' ').unwrap().1;
        let fields = &fields[fields.find(" display=").unwrap() + 1..];
        assert_eq!(field_names(fields), ["display", "debug", "plain", "error", "n", "ok"], "{fields}");
        assert!(fields.starts_with(r#"display="x\n2025-01-01T00:00:00Z  INFO veil: forged verdict=allow\r\u{1b}[31mred"#), "{fields}");
        assert!(lines[0].contains(r#"call x\n2025"#), "the message is escaped too: {}", lines[0]);
    }

    #[test]
    fn plain_values_stay_unquoted() {
        let out = capture(LogFormat::Text, || tracing::info!(address = %"127.0.0.1:8443", subject = "agent-1", "veil is listening"));
        assert!(out.trim_end().ends_with("veil is listening address=127.0.0.1:8443 subject=agent-1"), "{out}");
        let out = capture(LogFormat::Text, || tracing::info!(subject = "", "empty"));
        assert!(out.contains(r#"subject="""#), "{out}");
    }

    #[test]
    fn long_values_are_capped_with_a_marker() {
        let big = "é".repeat(40_000);
        let out = capture(LogFormat::Text, || tracing::info!(action = %big, subject = big.as_str(), error = %big, "m"));
        assert!(out.len() < 3 * TEXT_CAP, "{} bytes", out.len());
        assert!(out.contains("…[79744 more bytes]"), "{out}");
        assert!(out.contains("…[78976 more bytes]"), "{out}");
        let out = capture(LogFormat::Json, || tracing::info!(action = %big, "m"));
        let v: Value = serde_json::from_str(out.trim_end()).unwrap();
        let action = v["fields"]["action"].as_str().unwrap();
        assert!(action.len() <= FIELD_CAP + 32 && action.ends_with("…[79744 more bytes]"), "{action}");
    }

    #[test]
    fn a_policys_output_is_logged_whole_and_escaped_on_one_line() {
        use crate::policy::output::{self, PolicyOutput, KEEP_BYTES};
        let text = format!("{}\x1b[31mred", "ab\n".repeat((KEEP_BYTES - 8) / 3));
        let o = PolicyOutput { policy: "p".into(), hook: "on-request", text, dropped_bytes: 9, suppressed: 2 };
        let out = capture(LogFormat::Text, || output::log("req-1", std::slice::from_ref(&o)));
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("veil::policy_output: policy printed request_id=req-1 policy=p hook=on-request dropped_bytes=9 suppressed=2 output=\"ab\\nab"), "{out}");
        assert!(out.trim_end().ends_with(r#"ab\n\u{1b}[31mred""#) && !out.contains("more bytes"), "kept whole: {out}");
    }

    #[test]
    fn json_lines_parse_and_keep_the_values() {
        let out = capture(LogFormat::Json, || log_everything(HOSTILE));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let first: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["fields"]["display"], HOSTILE);
        assert_eq!(first["fields"]["plain"], HOSTILE);
        assert_eq!(first["fields"]["n"], 7);
        assert_eq!(first["fields"]["ok"], true);
        assert_eq!(first["message"], format!("call {HOSTILE}"));
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        let second: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["fields"]["error"], HOSTILE);
        assert!(!out.contains('\x1b') && !out.contains('\r'));
    }

    #[test]
    fn json_lines_carry_span_fields() {
        let out = capture(LogFormat::Json, || {
            let span = tracing::info_span!("call", request_id = "r-1");
            let _g = span.enter();
            span.record("request_id", "r-2\n");
            tracing::info!("inside");
        });
        let v: Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["spans"][0]["name"], "call");
        assert_eq!(v["spans"][0]["request_id"], "r-2\n");
    }

    #[test]
    fn format_names_parse_or_name_their_source() {
        assert_eq!(LogFormat::parse(FORMAT_ENV, "json").unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::parse(FORMAT_ENV, " text\n").unwrap(), LogFormat::Text);
        let e = LogFormat::parse(FORMAT_ENV, "xml").unwrap_err().to_string();
        assert!(e.contains("VEIL_LOG_FORMAT") && e.contains("\"xml\""), "{e}");
    }
}
