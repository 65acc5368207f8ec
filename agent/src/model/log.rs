//! The agent's log record: access records (one per served request) and the lines
//! processes write to their stdout/stderr, before OTLP encoding. Shares the span model's
//! resources, attributes and ids, so a process's logs carry the same Resource as its
//! spans.

use std::sync::Arc;

use super::span::{KeyValue, Resource, SpanId, Str, TraceId};

/// OTLP severity numbers used by the agent (SeverityNumber's first value of each range).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    #[default]
    Unspecified = 0,
    Trace = 1,
    Debug = 5,
    Info = 9,
    Warn = 13,
    Error = 17,
    Fatal = 21,
}

impl Severity {
    /// The OTLP `severity_text` for the level.
    pub fn text(self) -> &'static str {
        match self {
            Self::Unspecified => "",
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub resource: Arc<Resource>,
    /// When the event happened (0: unknown); `observed_unix_ns` is when the agent saw it.
    pub time_unix_ns: u64,
    pub observed_unix_ns: u64,
    pub severity: Severity,
    /// The level as the application wrote it ("warning", "E"…), empty for access records.
    pub severity_text: Str,
    /// Empty for access records (everything is in the attributes).
    pub body: Str,
    pub attributes: Vec<KeyValue>,
    /// OTLP `event_name` (`http.server.access` for access records; empty for app lines).
    pub event_name: Str,
    /// All zero when the record belongs to no trace.
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C trace flags of that span.
    pub flags: u8,
}
