//! Access records: "who accessed what, and when", one per served request.
//!
//! Built from the request's SERVER span *after* its redaction and *before* sampling, so
//! every request gets one (the SIEM sees all accesses, sampled traces or not) and nothing
//! leaves in a record that would not leave in the span: the route is the span's templated
//! route, never the raw path, and mapped header values have passed the PII detectors.
//! OpenTelemetry's semantic conventions define no access-log event (checked against
//! semconv 1.37), so the event name is the agent's own `http.server.access`.

use std::sync::Arc;

use crate::model::log::{LogRecord, Severity};
use crate::model::span::{AnyValue, KeyValue, Resource, SpanRecord, Str};

pub const EVENT_NAME: &str = "http.server.access";

/// Span attributes an access record copies as they are.
const COPIED: [&str; 9] = [
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "client.address",
    "server.address",
    "server.port",
    "network.protocol.version",
    "user_agent.original",
    "error.type",
];

/// What the span does not carry: body sizes and the caller's Resource, when the caller is
/// a process on this node.
pub struct AccessExtra {
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    pub peer: Option<Arc<Resource>>,
}

/// Severity from the status class: 5xx (or no response) ERROR, 4xx WARN, else INFO.
pub fn severity(status: Option<i64>) -> Severity {
    match status {
        Some(s) if s >= 500 => Severity::Error,
        Some(s) if s >= 400 => Severity::Warn,
        Some(_) => Severity::Info,
        None => Severity::Error,
    }
}

/// The access record of a redacted SERVER span. `mapped(key)` says whether an attribute
/// came from a header mapping or baggage (tenant, correlation ids…): those are copied too.
pub fn record(span: &SpanRecord, extra: &AccessExtra, mapped: impl Fn(&str) -> bool, observed_ns: u64) -> LogRecord {
    let mut attributes = Vec::with_capacity(16);
    let mut status = None;
    for kv in &span.attributes {
        if COPIED.contains(&kv.key.as_str()) || (!matches!(kv.key, Str::Static(_)) && mapped(&kv.key)) {
            if kv.key == "http.response.status_code" {
                if let AnyValue::Int(s) = kv.value {
                    status = Some(s);
                }
            }
            attributes.push(kv.clone());
        }
    }
    let duration_s = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
    attributes.push(KeyValue { key: "http.server.request.duration".into(), value: AnyValue::Double(duration_s) });
    attributes.push(KeyValue::int("http.request.body.size", extra.request_body_bytes as i64));
    attributes.push(KeyValue::int("http.response.body.size", extra.response_body_bytes as i64));
    if let Some(peer) = &extra.peer {
        for (from, to) in [
            ("service.name", "client.service.name"),
            ("k8s.pod.name", "client.k8s.pod.name"),
            ("k8s.namespace.name", "client.k8s.namespace.name"),
        ] {
            if let Some(a) = peer.attributes.iter().find(|a| a.key == from) {
                attributes.push(KeyValue { key: to.into(), value: a.value.clone() });
            }
        }
    }
    let severity = severity(status);
    LogRecord {
        resource: span.resource.clone(),
        time_unix_ns: span.start_unix_ns,
        observed_unix_ns: observed_ns,
        severity,
        severity_text: severity.text().into(),
        body: Str::default(),
        attributes,
        event_name: EVENT_NAME.into(),
        trace_id: span.trace_id,
        span_id: span.span_id,
        flags: span.flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::{SpanKind, Status, TraceOrigin};

    fn span(r: &Arc<Resource>) -> SpanRecord {
        SpanRecord {
            resource: r.clone(),
            trace_id: [7; 16],
            span_id: [8; 8],
            parent_span_id: [0; 8],
            trace_state: String::new(),
            flags: 1,
            origin: TraceOrigin::Remote,
            name: "GET /users/{id}".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_250_000_000,
            attributes: vec![
                KeyValue::str("http.request.method", "GET"),
                KeyValue::int("http.response.status_code", 200),
                KeyValue::int("seq", 1),
            ],
            events: Vec::new(),
            links: Vec::new(),
            status: Status::default(),
        }
    }

    #[test]
    fn copies_the_allowed_attributes_and_mapped_headers_only() {
        let r = Arc::new(Resource { attributes: vec![KeyValue::str("service.name", "shop")] });
        let mut s = span(&r);
        s.attributes.push(KeyValue::str("url.path", "/users/{id}"));
        s.attributes.push(KeyValue::str(String::from("tenant"), "acme"));
        s.attributes.push(KeyValue::str(String::from("baggage.other"), "x"));
        s.attributes.push(KeyValue::str("client.address", "10.0.0.9"));
        let peer = Arc::new(Resource { attributes: vec![KeyValue::str("service.name", "web")] });
        let extra = AccessExtra { request_body_bytes: 12, response_body_bytes: 345, peer: Some(peer) };
        let rec = record(&s, &extra, |k| k == "tenant", 99);
        let keys: Vec<&str> = rec.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "tenant",
                "client.address",
                "http.server.request.duration",
                "http.request.body.size",
                "http.response.body.size",
                "client.service.name"
            ]
        );
        assert_eq!((rec.trace_id, rec.span_id), (s.trace_id, s.span_id));
        assert_eq!(rec.event_name, EVENT_NAME);
        assert_eq!(rec.severity, Severity::Info);
        assert_eq!(rec.attributes[4].value, AnyValue::Double(0.25));
        assert!(rec.body.is_empty());
    }

    #[test]
    fn severity_follows_the_status_class() {
        assert_eq!(severity(Some(200)), Severity::Info);
        assert_eq!(severity(Some(302)), Severity::Info);
        assert_eq!(severity(Some(404)), Severity::Warn);
        assert_eq!(severity(Some(503)), Severity::Error);
        assert_eq!(severity(None), Severity::Error);
    }
}
