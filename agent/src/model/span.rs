//! The agent's span model: what the pipeline produces and the exporters encode.
//!
//! Deliberately independent of any OpenTelemetry crate so the hot path builds plain
//! structs; the exporter turns them into OTLP protobuf or OTLP-JSON. Resources are shared
//! (`Arc`) so that one export request groups spans of many services, each under its own
//! Resource, without copying attribute lists per span.

use std::{fmt, ops::Deref, sync::Arc};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// Text of a span: attribute keys and values, names. Built-in keys and most values
/// (methods, schemes, versions) are static; the rest (routes, addresses, service names)
/// are shared from caches. Cloning never allocates, so building a span copies pointers,
/// and freeing it on the exporter's thread frees almost nothing.
#[derive(Clone)]
pub enum Str {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Str {
    pub fn as_str(&self) -> &str {
        match self {
            Str::Static(s) => s,
            Str::Shared(s) => s,
        }
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Str {
    fn default() -> Self {
        Str::Static("")
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Str {}

impl std::hash::Hash for Str {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<&'static str> for Str {
    fn from(s: &'static str) -> Self {
        Str::Static(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str::Shared(Arc::from(s))
    }
}

impl From<&String> for Str {
    fn from(s: &String) -> Self {
        Str::Shared(Arc::from(s.as_str()))
    }
}

impl From<Arc<str>> for Str {
    fn from(s: Arc<str>) -> Self {
        Str::Shared(s)
    }
}

impl From<&Arc<str>> for Str {
    fn from(s: &Arc<str>) -> Self {
        Str::Shared(s.clone())
    }
}

impl From<Str> for String {
    fn from(s: Str) -> String {
        s.as_str().to_string()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum AnyValue {
    Str(Str),
    Int(i64),
    Double(f64),
    Bool(bool),
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Str,
    pub value: AnyValue,
}

impl KeyValue {
    pub fn str(key: impl Into<Str>, value: impl Into<Str>) -> Self {
        Self { key: key.into(), value: AnyValue::Str(value.into()) }
    }
    pub fn int(key: impl Into<Str>, value: i64) -> Self {
        Self { key: key.into(), value: AnyValue::Int(value) }
    }
    pub fn bool(key: impl Into<Str>, value: bool) -> Self {
        Self { key: key.into(), value: AnyValue::Bool(value) }
    }
}

/// A service's resource attributes. Two spans belong to the same Resource in an export
/// request when their `Arc<Resource>` compare equal by content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    pub attributes: Vec<KeyValue>,
}

/// OTLP span kinds (the numeric values are OTLP's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// OTLP status codes (the numeric values are OTLP's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    pub name: Str,
    pub time_unix_ns: u64,
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: String,
    pub attributes: Vec<KeyValue>,
}

/// Where a span's trace context came from, which decides how it is sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TraceOrigin {
    /// From the wire (a traceparent): the upstream's sampled flag is honoured.
    #[default]
    Remote,
    /// Started by the agent: sampled by trace-id ratio, then tail rules.
    Agent,
    /// From the wire, sent by a peer outside `gaps.internal_networks`: a sampled flag is
    /// honoured, but "not sampled" does not override the error and risk-signal keep rules
    /// (an outside client must not be able to hide its requests).
    External,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub resource: Arc<Resource>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// All zero for a root span.
    pub parent_span_id: SpanId,
    /// W3C tracestate, passed through as received (size-limited by the parser).
    pub trace_state: String,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    /// Not exported: how the sampling decision is made.
    pub origin: TraceOrigin,
    pub name: Str,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<KeyValue>,
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
    pub status: Status,
}

impl SpanRecord {
    pub fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }
}

/// Lowercase hex, as trace ids are written everywhere (logs, OTLP-JSON, tests).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
