//! App log lines in the pipeline: captured stdout/stderr writes of selected processes
//! become lines, each linked to the request its thread was serving when it was written
//! (the thread rules of parent linking: the thread's request in flight, or the finished
//! request whose window holds the line's time; several requests in flight on the thread
//! means no ids, counted), redacted and rate limited, then records for the log sink.
//!
//! A line written while its thread serves a request waits (bounded, at most the hold
//! timeout) for that request's SERVER span, whose ids it takes.

use std::{collections::VecDeque, time::Instant};

use hashbrown::HashMap;

use super::line::{self, AttrValue, Line, Splitter};
use super::{LogStats, LogsConfig};
use crate::model::log::LogRecord;
use crate::model::span::{AnyValue, KeyValue, SpanId, Str, TraceId};
use crate::policy::redact::Redactor;
use crate::traces::{served::Match, SpanSink, TracePipeline};

/// Lines waiting for their request at most (beyond: the oldest go, counted).
const MAX_PENDING: usize = 4096;
/// Outputs (process × stream) with a partial line at most.
const MAX_SPLITTERS: usize = 4096;
/// A partial line is emitted as it is after this long without its newline.
const PARTIAL_FLUSH_NS: u64 = 2_000_000_000;

/// One captured write to a process's stdout (1) or stderr (2), or a file opened on them.
pub struct AppWrite<'a> {
    pub pid: u32,
    pub tid: u32,
    /// 1 or 2: which stream the descriptor shares a file with.
    pub stream: u8,
    pub ts_ns: u64,
    pub bytes: &'a [u8],
    /// The kernel could not copy all of the write (cap, ring full).
    pub incomplete: bool,
}

struct Pending {
    pid: u32,
    stream: u8,
    line: Line,
    since: Instant,
}

/// App log state of the pipeline.
#[derive(Default)]
pub struct AppLogs {
    pub cfg: LogsConfig,
    pub stats: LogStats,
    splitters: HashMap<(u32, u8), Splitter>,
    pending: VecDeque<Pending>,
    /// Per process: the current second and the lines let through in it.
    rate: HashMap<u32, (u64, u32)>,
    scratch: Vec<Line>,
}

impl AppLogs {
    /// Nothing waiting: the periodic step has nothing to do.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.splitters.is_empty()
    }
}

/// What linking says about a line.
enum Link {
    Ids(TraceId, SpanId, u8),
    None,
    Ambiguous,
    Wait,
}

impl TracePipeline {
    /// A captured write of a selected process.
    pub fn on_app_write(&mut self, w: &AppWrite, sink: &mut dyn SpanSink) {
        if sink.logs().is_none() {
            return;
        }
        let a = &mut self.app_logs;
        if w.incomplete {
            a.stats.app_writes_incomplete += 1;
        }
        if a.splitters.len() >= MAX_SPLITTERS && !a.splitters.contains_key(&(w.pid, w.stream)) {
            a.splitters.clear();
        }
        let max = a.cfg.app.max_line_bytes;
        let mut lines = std::mem::take(&mut a.scratch);
        a.splitters.entry((w.pid, w.stream)).or_default().feed(w.bytes, w.ts_ns, w.tid, max, &mut lines);
        for line in lines.drain(..) {
            self.accept_line(w.pid, w.stream, line, sink);
        }
        self.app_logs.scratch = lines;
    }

    /// Rate limit, then link now or wait for the request.
    fn accept_line(&mut self, pid: u32, stream: u8, line: Line, sink: &mut dyn SpanSink) {
        let a = &mut self.app_logs;
        let second = line.ts_ns / 1_000_000_000;
        let slot = a.rate.entry(pid).or_insert((second, 0));
        if slot.0 != second {
            *slot = (second, 0);
        }
        if slot.1 >= a.cfg.app.lines_per_second {
            a.stats.app_lines_rate_limited += 1;
            return;
        }
        slot.1 += 1;
        if line.truncated {
            a.stats.app_lines_truncated += 1;
        }
        match self.link(pid, &line) {
            Link::Wait => {
                let a = &mut self.app_logs;
                if a.pending.len() >= MAX_PENDING {
                    a.pending.pop_front();
                    a.stats.app_lines_dropped_pending += 1;
                }
                a.pending.push_back(Pending { pid, stream, line, since: Instant::now() });
            }
            link => self.emit_line(pid, stream, line, link, sink),
        }
    }

    /// The request thread (pid, line.tid) was serving when the line was written.
    fn link(&self, pid: u32, line: &Line) -> Link {
        let key = (pid, line.tid);
        match self.served.find(key, line.ts_ns) {
            Some(Match::One(s)) => return Link::Ids(s.child.trace_id, s.child.parent, s.child.flags),
            Some(Match::Overlapped) => return Link::Ambiguous,
            None => {}
        }
        if self.serving_since(key).is_some_and(|since| line.ts_ns >= since) {
            return Link::Wait;
        }
        Link::None
    }

    /// Periodic: lines whose request has completed (or that waited the hold timeout) go
    /// out; partial lines held too long are emitted as they are.
    pub(crate) fn app_logs_tick(&mut self, now_ns: u64, sink: &mut dyn SpanSink) {
        let timeout = self.cfg.hold_timeout;
        let pending = std::mem::take(&mut self.app_logs.pending);
        for p in pending {
            match self.link(p.pid, &p.line) {
                Link::Wait if p.since.elapsed() < timeout => self.app_logs.pending.push_back(p),
                Link::Wait => self.emit_line(p.pid, p.stream, p.line, Link::None, sink),
                link => self.emit_line(p.pid, p.stream, p.line, link, sink),
            }
        }
        let mut out = std::mem::take(&mut self.app_logs.scratch);
        let mut flushed = Vec::new();
        for (&(pid, stream), s) in self.app_logs.splitters.iter_mut() {
            s.flush_if_older(now_ns.saturating_sub(PARTIAL_FLUSH_NS), &mut out);
            flushed.extend(out.drain(..).map(|l| (pid, stream, l)));
        }
        self.app_logs.scratch = out;
        self.app_logs.rate.retain(|_, (second, _)| *second + 2 >= now_ns / 1_000_000_000);
        for (pid, stream, line) in flushed {
            self.accept_line(pid, stream, line, sink);
        }
    }

    /// Shutdown: everything pending goes out with what is known now.
    pub(crate) fn app_logs_flush(&mut self, sink: &mut dyn SpanSink) {
        for p in std::mem::take(&mut self.app_logs.pending) {
            let link = match self.link(p.pid, &p.line) {
                Link::Wait => Link::None,
                l => l,
            };
            self.emit_line(p.pid, p.stream, p.line, link, sink);
        }
    }

    fn emit_line(&mut self, pid: u32, stream: u8, line: Line, link: Link, sink: &mut dyn SpanSink) {
        let resource = self.resource_for(pid, "");
        let parsed = line::parse(&line.text);
        let (trace_id, span_id, flags) = ids(&mut self.app_logs.stats, link, &parsed);
        let r = &self.redactor;
        let record = LogRecord {
            resource,
            // The line's own time, else when it was written.
            time_unix_ns: if parsed.time_unix_ns != 0 {
                parsed.time_unix_ns
            } else {
                self.clock.to_unix_ns(line.ts_ns)
            },
            observed_unix_ns: super::unix_now_ns(),
            severity: parsed.severity,
            severity_text: clean(r, &parsed.severity_text),
            body: clean(r, &parsed.body),
            attributes: attributes(r, stream, line.truncated, parsed.attributes),
            event_name: Str::default(),
            trace_id,
            span_id,
            flags,
        };
        self.app_logs.stats.app_lines += 1;
        if let Some(logs) = sink.logs() {
            logs.submit_log(record);
        }
    }
}

/// The record's trace context: the request the thread was serving, unless the line
/// carries its own (an SDK's logging integration), which wins; a disagreement says the
/// agent's thread rule and the application saw different requests, and is counted.
fn ids(stats: &mut LogStats, link: Link, parsed: &line::Parsed) -> (TraceId, SpanId, u8) {
    let (mut trace_id, mut span_id, mut flags) = ([0; 16], [0; 8], 0);
    match link {
        Link::Ids(t, s, f) => {
            stats.app_lines_linked += 1;
            (trace_id, span_id, flags) = (t, s, f);
        }
        Link::Ambiguous => stats.app_lines_ambiguous += 1,
        Link::None | Link::Wait => {}
    }
    if let Some(own) = parsed.trace_id {
        stats.app_lines_own_trace_id += 1;
        if trace_id != [0; 16] && trace_id != own {
            stats.app_lines_trace_id_disagreed += 1;
        }
        if trace_id != own {
            span_id = parsed.span_id.unwrap_or([0; 8]);
            flags = 1;
        }
        trace_id = own;
    }
    (trace_id, span_id, flags)
}

/// The stream, the truncation mark, and the line's own fields, redacted.
fn attributes(r: &Redactor, stream: u8, truncated: bool, fields: Vec<(String, AttrValue)>) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(fields.len() + 2);
    out.push(KeyValue::str("log.iostream", if stream == 2 { "stderr" } else { "stdout" }));
    if truncated {
        out.push(KeyValue::bool("hoptrace.log.truncated", true));
    }
    for (key, value) in fields {
        if !plain_key(&key) {
            continue;
        }
        let value = match value {
            AttrValue::Str(s) => AnyValue::Str(clean(r, &s)),
            // A number can be personal data too (a CPF, card or phone written as one).
            AttrValue::Int(i) => number(r, i),
            AttrValue::Double(d) => AnyValue::Double(d),
            AttrValue::Bool(b) => AnyValue::Bool(b),
        };
        out.push(KeyValue { key: key.into(), value });
    }
    out
}

/// Text from a line through the personal-data detectors and configured patterns.
fn clean(r: &Redactor, s: &str) -> Str {
    if s.is_empty() {
        return Str::default();
    }
    Str::from(r.redact_log_text(s).text)
}

/// An integer from a line, or its placeholder when the detectors recognise its digits.
fn number(r: &Redactor, i: i64) -> AnyValue {
    if i.unsigned_abs() < 1_000_000_000 {
        // Fewer than 10 digits: shorter than any CPF, CNPJ, card or phone number.
        return AnyValue::Int(i);
    }
    let text = i.to_string();
    let red = r.redact_log_text(&text);
    if red.changed() {
        AnyValue::Str(red.text.into())
    } else {
        AnyValue::Int(i)
    }
}

/// Attribute keys are identifiers (at most 64 letters, digits, `_.-`): anything else
/// (a key that is itself data) is dropped rather than exported.
fn plain_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_that_are_personal_data_become_placeholders() {
        let r = Redactor::default();
        assert_eq!(number(&r, 42), AnyValue::Int(42));
        assert_eq!(number(&r, 1_700_000_000), AnyValue::Int(1_700_000_000));
        assert_eq!(number(&r, 52_998_224_725), AnyValue::Str("{cpf}".into()));
        assert!(matches!(number(&r, 4_111_111_111_111_111), AnyValue::Str(_)));
    }

    #[test]
    fn a_lines_own_trace_id_wins_and_disagreements_are_counted() {
        let mut stats = LogStats::default();
        let own = line::parse(
            r#"{"msg": "x", "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}"#,
        );
        let (t, s, _) = ids(&mut stats, Link::Ids([1; 16], [2; 8], 1), &own);
        assert_eq!((t[0], s[0]), (0x0a, 0xb7));
        assert_eq!(
            (stats.app_lines_linked, stats.app_lines_own_trace_id, stats.app_lines_trace_id_disagreed),
            (1, 1, 1)
        );
        let plain = line::parse("no ids here");
        assert_eq!(ids(&mut stats, Link::Ambiguous, &plain), ([0; 16], [0; 8], 0));
        assert_eq!(stats.app_lines_ambiguous, 1);
        let (t, s, f) = ids(&mut stats, Link::Ids([1; 16], [2; 8], 1), &plain);
        assert_eq!((t, s, f), ([1; 16], [2; 8], 1));
    }

    #[test]
    fn only_identifier_keys_are_kept() {
        assert!(plain_key("http.route") && plain_key("order_id") && plain_key("x-y"));
        assert!(!plain_key("") && !plain_key("maria@example.com") && !plain_key("a b") && !plain_key(&"k".repeat(65)));
    }
}
