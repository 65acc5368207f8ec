//! Captured stdout/stderr writes → lines → parsed lines.
//!
//! Writes arrive as byte chunks; a line may span writes (a partial line waits for the
//! rest, bounded) and a write may hold many lines. JSON lines (`{...}`) give severity,
//! message, timestamp and attributes; anything else is the body as written. Linear in the
//! line's length, and every line is bounded by `max_line_bytes` before it is parsed.

use serde_json::Value;

use crate::model::log::Severity;
use crate::model::span::{SpanId, TraceId};

/// One complete line of a process's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    /// Kernel time of the write that held the line's first byte, and its thread.
    pub ts_ns: u64,
    pub tid: u32,
    pub truncated: bool,
}

/// The partial line of one output (process, stdout or stderr).
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    start: Option<(u64, u32)>,
    /// The current line passed the cap: the rest of it is skipped up to its newline.
    skipping: bool,
}

impl Splitter {
    /// Feeds one write's bytes; complete lines go to `out`.
    pub fn feed(&mut self, bytes: &[u8], ts_ns: u64, tid: u32, max: usize, out: &mut Vec<Line>) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (piece, ended) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            if !self.skipping {
                self.start.get_or_insert((ts_ns, tid));
                let room = max.saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&piece[..piece.len().min(room)]);
                if piece.len() > room {
                    self.emit(true, out);
                    self.skipping = true;
                }
            }
            match ended {
                Some(n) => {
                    if self.skipping {
                        self.skipping = false;
                    } else {
                        self.emit(false, out);
                    }
                    rest = &rest[n..];
                }
                None => break,
            }
        }
    }

    /// A partial line held since before `older_than` is emitted as it is.
    pub fn flush_if_older(&mut self, older_than: u64, out: &mut Vec<Line>) {
        if self.start.is_some_and(|(ts, _)| ts < older_than) {
            self.emit(false, out);
            self.skipping = false;
        }
    }

    fn emit(&mut self, truncated: bool, out: &mut Vec<Line>) {
        let Some((ts_ns, tid)) = self.start.take() else { return };
        let mut text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if text.ends_with('\r') {
            text.pop();
        }
        if !text.trim().is_empty() {
            out.push(Line { text, ts_ns, tid, truncated });
        }
    }
}

/// What a line says about itself.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub severity: Severity,
    pub severity_text: String,
    pub body: String,
    /// Unix nanoseconds from the line's own timestamp, 0 when absent or unreadable.
    pub time_unix_ns: u64,
    /// Other JSON fields, as text (nested values as their JSON).
    pub attributes: Vec<(String, AttrValue)>,
    /// A trace id (and span id) the line carries itself (an SDK's logging integration).
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

const LEVEL_KEYS: [&str; 4] = ["level", "severity", "levelname", "lvl"];
const MESSAGE_KEYS: [&str; 2] = ["msg", "message"];
const TIME_KEYS: [&str; 3] = ["ts", "time", "timestamp"];
const TRACE_KEYS: [&str; 3] = ["trace_id", "traceId", "otelTraceID"];
const SPAN_KEYS: [&str; 3] = ["span_id", "spanId", "otelSpanID"];
/// Attributes per line at most (the rest are dropped).
const MAX_ATTRIBUTES: usize = 32;

/// Parses a line: a JSON object's well-known fields, else the whole line as the body.
pub fn parse(text: &str) -> Parsed {
    let trimmed = text.trim();
    if trimmed.starts_with('{') && trimmed.ends_with('}') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) {
            return from_json(map);
        }
    }
    Parsed { body: text.to_string(), ..Default::default() }
}

fn from_json(map: serde_json::Map<String, Value>) -> Parsed {
    let mut p = Parsed::default();
    for (key, value) in map {
        let k = key.as_str();
        if LEVEL_KEYS.contains(&k) && p.severity_text.is_empty() {
            p.severity_text = scalar_text(&value);
            p.severity = severity(&value);
        } else if MESSAGE_KEYS.contains(&k) && p.body.is_empty() {
            p.body = scalar_text(&value);
        } else if TIME_KEYS.contains(&k) && p.time_unix_ns == 0 && timestamp(&value).is_some() {
            p.time_unix_ns = timestamp(&value).unwrap_or(0);
        } else if TRACE_KEYS.contains(&k) && p.trace_id.is_none() {
            p.trace_id = value.as_str().and_then(parse_trace_id);
        } else if SPAN_KEYS.contains(&k) && p.span_id.is_none() {
            p.span_id = value.as_str().and_then(parse_span_id);
        } else if p.attributes.len() < MAX_ATTRIBUTES {
            let v = match value {
                Value::String(s) => AttrValue::Str(s),
                Value::Bool(b) => AttrValue::Bool(b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => AttrValue::Int(i),
                    None => AttrValue::Double(n.as_f64().unwrap_or(0.0)),
                },
                Value::Null => continue,
                other => AttrValue::Str(other.to_string()),
            };
            p.attributes.push((key, v));
        }
    }
    p
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Level names as loggers write them, and pino/bunyan's numbers.
fn severity(v: &Value) -> Severity {
    if let Some(n) = v.as_u64() {
        return match n {
            0..=10 => Severity::Trace,
            11..=20 => Severity::Debug,
            21..=30 => Severity::Info,
            31..=40 => Severity::Warn,
            41..=50 => Severity::Error,
            _ => Severity::Fatal,
        };
    }
    let s = v.as_str().unwrap_or_default().to_ascii_lowercase();
    match s.as_str() {
        "trace" | "verbose" => Severity::Trace,
        "debug" | "dbug" | "d" => Severity::Debug,
        "info" | "information" | "notice" | "i" => Severity::Info,
        "warn" | "warning" | "w" => Severity::Warn,
        "error" | "err" | "e" => Severity::Error,
        "fatal" | "critical" | "crit" | "panic" | "alert" | "emerg" | "emergency" | "f" => Severity::Fatal,
        _ => Severity::Unspecified,
    }
}

/// RFC 3339 text, or a number of Unix seconds (fractional) or milliseconds.
fn timestamp(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        let ns = if n > 100_000_000_000 { n.checked_mul(1_000_000) } else { n.checked_mul(1_000_000_000) };
        return ns.filter(|&ns| ns > 0);
    }
    if let Some(f) = v.as_f64() {
        // Past 1e11, a number of seconds would be after the year 5000: milliseconds.
        let secs = if f > 1e11 { f / 1000.0 } else { f };
        return (secs > 0.0 && secs < 1e11).then_some((secs * 1e9) as u64);
    }
    let t = humantime::parse_rfc3339_weak(v.as_str()?.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_nanos() as u64)
}

/// 32 hex digits, not all zero.
pub fn parse_trace_id(s: &str) -> Option<TraceId> {
    hex_id(s)
}

/// 16 hex digits, not all zero.
pub fn parse_span_id(s: &str) -> Option<SpanId> {
    hex_id(s)
}

fn hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        id[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    (id != [0; N]).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Line> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.feed(c, 100 + i as u64, 7, max, &mut out);
        }
        out
    }

    #[test]
    fn splits_lines_across_and_within_writes() {
        let lines = split(&[b"one\ntw", b"o\r\nthree\n\n", b"four"], 64);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(lines[1].ts_ns, 100, "a line's time is its first byte's write");
        let mut s = Splitter::default();
        let mut out = Vec::new();
        s.feed(b"partial", 5, 1, 64, &mut out);
        s.flush_if_older(4, &mut out);
        assert!(out.is_empty());
        s.flush_if_older(6, &mut out);
        assert_eq!(out[0].text, "partial");
    }

    #[test]
    fn long_lines_are_cut_once_and_the_rest_skipped() {
        let lines = split(&[b"abcdefghij", b"klmn\nok\n"], 4);
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].text.as_str(), lines[0].truncated), ("abcd", true));
        assert_eq!((lines[1].text.as_str(), lines[1].truncated), ("ok", false));
    }

    #[test]
    fn json_lines_give_severity_body_time_and_attributes() {
        let p = parse(
            r#"{"level": "warning", "msg": "slow", "ts": "2026-01-02T03:04:05.5Z", "user": 42,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "ctx": {"a": 1}}"#,
        );
        assert_eq!(p.severity, Severity::Warn);
        assert_eq!(p.severity_text, "warning");
        assert_eq!(p.body, "slow");
        assert_eq!(p.time_unix_ns, 1_767_323_045_500_000_000);
        assert_eq!(p.trace_id.map(|t| t[0]), Some(0x4b));
        assert_eq!(p.span_id.map(|t| t[7]), Some(0xb7));
        assert_eq!(
            p.attributes,
            vec![("ctx".into(), AttrValue::Str(r#"{"a":1}"#.into())), ("user".into(), AttrValue::Int(42))]
        );
        assert_eq!(parse(r#"{"severity": 50, "message": "x", "time": 1700000000.25}"#).severity, Severity::Error);
        assert_eq!(parse(r#"{"time": 1700000000250}"#).time_unix_ns, 1_700_000_000_250_000_000);
    }

    #[test]
    fn plain_and_broken_lines_are_bodies() {
        for line in ["GET / 200", "{not json", "{\"a\": }", "[1, 2]"] {
            let p = parse(line);
            assert_eq!(p.body, line);
            assert_eq!(p.severity, Severity::Unspecified);
        }
        assert!(parse_trace_id("00000000000000000000000000000000").is_none());
        assert!(parse_trace_id("zz").is_none());
    }
}
