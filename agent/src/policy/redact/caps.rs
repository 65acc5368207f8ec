//! Length caps on values from the wire, before any detector looks at them.
//!
//! The detectors are linear, but a value is still chosen by whoever sends it: a 64 KiB
//! path segment, header value or subject is not an identifier anyone wants on a span, and
//! scanning it is work an attacker controls. Past its field's cap a value is replaced
//! whole by [`CAPPED`], never scanned, and counted by field
//! (`hoptrace_values_capped_total{field}`).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// What a value past its cap becomes (the placeholder's name is `capped`).
pub const CAPPED: &str = "{capped}";

/// Where a value came from; each kind has its own cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// One segment of a request path (between slashes).
    PathSegment,
    /// A request path as a whole: its number of segments.
    Path,
    /// A header value (mapped headers, baggage members).
    HeaderValue,
    /// One `tracestate` member (`key=value`).
    TraceState,
    /// The `Host` header (→ `server.address`).
    Host,
    /// A message destination: NATS subject, Kafka topic, AMQP exchange or routing key.
    Destination,
    /// Any other value from traffic.
    Value,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::PathSegment,
        Field::Path,
        Field::HeaderValue,
        Field::TraceState,
        Field::Host,
        Field::Destination,
        Field::Value,
    ];

    /// Stable snake_case label (the `field` label of the counter).
    pub fn name(self) -> &'static str {
        match self {
            Field::PathSegment => "path_segment",
            Field::Path => "path",
            Field::HeaderValue => "header_value",
            Field::TraceState => "tracestate",
            Field::Host => "host",
            Field::Destination => "destination",
            Field::Value => "value",
        }
    }

    /// The largest value scanned: bytes, or segments for [`Field::Path`]. Each is well
    /// above what the field legitimately holds (a DNS name is at most 253 bytes, a Kafka
    /// topic 249, an AMQP short string 255, a W3C `tracestate` member 256 + 256).
    pub fn cap(self) -> usize {
        match self {
            Field::PathSegment => 256,
            Field::Path => 64,
            Field::HeaderValue => 1024,
            Field::TraceState => 520,
            Field::Host => 260,
            Field::Destination => 512,
            Field::Value => 4096,
        }
    }

    fn index(self) -> usize {
        Field::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// Values capped, by field; shared by every clone of a redactor.
#[derive(Debug, Default, Clone)]
pub struct CapCounters(Arc<[AtomicU64; Field::ALL.len()]>);

impl CapCounters {
    pub fn count(&self, field: Field) {
        self.0[field.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, field: Field) -> u64 {
        self.0[field.index()].load(Ordering::Relaxed)
    }

    /// Every field with its count, zeros included (every series exists from the start).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Field::ALL.iter().map(|f| (f.name(), self.get(*f))).collect()
    }
}
