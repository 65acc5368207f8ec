//! [`SpanRecord`]s → OTLP protobuf (`ExportTraceServiceRequest`).
//!
//! One request carries spans of many services: they are grouped by Resource *content*
//! (not by `Arc` identity, since two pipelines may build equal resources independently),
//! one `ResourceSpans` per distinct resource, each with a single `ScopeSpans` naming this
//! agent as the instrumentation scope.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::resource::v1 as pb_resource;
use opentelemetry_proto::tonic::trace::v1 as pb_trace;

use crate::model::span::{AnyValue, KeyValue, Resource, SpanRecord};

/// Instrumentation scope of every exported span.
pub const SCOPE_NAME: &str = "hoptrace";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds one export request from `spans`, keeping their order within each resource.
pub fn to_request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    // Few distinct resources per batch (one per observed service), so a linear scan beats
    // hashing attribute lists (which hold f64s and are not `Hash` anyway).
    let mut groups: Vec<(&Arc<Resource>, Vec<pb_trace::Span>)> = Vec::new();
    for span in spans {
        let idx = match groups.iter().position(|(r, _)| Arc::ptr_eq(r, &span.resource) || ***r == *span.resource) {
            Some(i) => i,
            None => {
                groups.push((&span.resource, Vec::new()));
                groups.len() - 1
            }
        };
        groups[idx].1.push(span_to_proto(span));
    }

    let resource_spans = groups
        .into_iter()
        .map(|(resource, spans)| pb_trace::ResourceSpans {
            resource: Some(pb_resource::Resource {
                attributes: attributes(&resource.attributes),
                ..Default::default()
            }),
            scope_spans: vec![pb_trace::ScopeSpans {
                scope: Some(pb_common::InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: SCOPE_VERSION.into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn span_to_proto(s: &SpanRecord) -> pb_trace::Span {
    pb_trace::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone(),
        // OTLP wants an empty parent id for a root span, not eight zero bytes.
        parent_span_id: if s.is_root() { Vec::new() } else { s.parent_span_id.to_vec() },
        // Bits 0-7 are the W3C trace flags. Whether the parent is remote (bits 8-9) is not
        // known here, so those stay zero ("unknown"), as the specification allows.
        flags: u32::from(s.flags),
        name: s.name.to_string(),
        kind: s.kind as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: attributes(&s.attributes),
        dropped_attributes_count: 0,
        events: s
            .events
            .iter()
            .map(|e| pb_trace::span::Event {
                time_unix_nano: e.time_unix_ns,
                name: e.name.to_string(),
                attributes: attributes(&e.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        dropped_events_count: 0,
        links: s
            .links
            .iter()
            .map(|l| pb_trace::span::Link {
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                trace_state: l.trace_state.clone(),
                attributes: attributes(&l.attributes),
                dropped_attributes_count: 0,
                flags: 0,
            })
            .collect(),
        dropped_links_count: 0,
        status: Some(pb_trace::Status { message: s.status.message.clone(), code: s.status.code as i32 }),
    }
}

pub(crate) fn attributes(kvs: &[KeyValue]) -> Vec<pb_common::KeyValue> {
    kvs.iter()
        .map(|kv| pb_common::KeyValue {
            key: kv.key.to_string(),
            value: Some(any_value(&kv.value)),
            ..Default::default()
        })
        .collect()
}

fn any_value(v: &AnyValue) -> pb_common::AnyValue {
    use pb_common::any_value::Value;
    let value = match v {
        AnyValue::Str(s) => Value::StringValue(s.to_string()),
        AnyValue::Int(i) => Value::IntValue(*i),
        AnyValue::Double(d) => Value::DoubleValue(*d),
        AnyValue::Bool(b) => Value::BoolValue(*b),
    };
    pb_common::AnyValue { value: Some(value) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::span::{SpanEvent, SpanKind, SpanLink, Status, StatusCode};

    pub(crate) fn resource(service: &str) -> Arc<Resource> {
        Arc::new(Resource {
            attributes: vec![KeyValue::str("service.name", service.to_string()), KeyValue::str("host.name", "node-1")],
        })
    }

    pub(crate) fn span(resource: &Arc<Resource>, n: u8) -> SpanRecord {
        SpanRecord {
            origin: crate::model::span::TraceOrigin::Remote,
            resource: resource.clone(),
            trace_id: [n; 16],
            span_id: [n.wrapping_add(1); 8],
            parent_span_id: [0; 8],
            trace_state: String::new(),
            flags: 1,
            name: format!("GET /items/{n}").into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_700_000_000_000_000_000 + u64::from(n),
            end_unix_ns: 1_700_000_000_500_000_000 + u64::from(n),
            attributes: vec![
                KeyValue::str("http.request.method", "GET"),
                KeyValue::int("http.response.status_code", 200),
                KeyValue::int("seq", i64::from(n)),
            ],
            events: Vec::new(),
            links: Vec::new(),
            status: Status::default(),
        }
    }

    #[test]
    fn groups_by_resource_content() {
        let a = resource("checkout");
        let a_copy = Arc::new((*a).clone());
        let b = resource("payments");
        let spans = vec![span(&a, 1), span(&b, 2), span(&a_copy, 3)];
        let req = to_request(&spans);
        assert_eq!(req.resource_spans.len(), 2);
        let names: Vec<Vec<String>> = req
            .resource_spans
            .iter()
            .map(|rs| rs.scope_spans[0].spans.iter().map(|s| s.name.clone()).collect())
            .collect();
        assert_eq!(names, vec![vec!["GET /items/1", "GET /items/3"], vec!["GET /items/2"]]);
        let scope = req.resource_spans[0].scope_spans[0].scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), (SCOPE_NAME, SCOPE_VERSION));
    }

    #[test]
    fn converts_every_field() {
        let r = resource("checkout");
        let mut s = span(&r, 7);
        s.parent_span_id = [9; 8];
        s.trace_state = "vendor=x".into();
        s.kind = SpanKind::Consumer;
        s.status = Status { code: StatusCode::Error, message: "boom".into() };
        s.attributes.push(KeyValue { key: "ratio".into(), value: AnyValue::Double(0.5) });
        s.attributes.push(KeyValue::bool("retry", true));
        s.events.push(SpanEvent {
            name: "exception".into(),
            time_unix_ns: 42,
            attributes: vec![KeyValue::str("exception.type", "Timeout")],
        });
        s.links.push(SpanLink {
            trace_id: [3; 16],
            span_id: [4; 8],
            trace_state: "a=b".into(),
            attributes: vec![KeyValue::int("n", 1)],
        });
        let req = to_request(&[s]);
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(p.trace_id, vec![7; 16]);
        assert_eq!(p.span_id, vec![8; 8]);
        assert_eq!(p.parent_span_id, vec![9; 8]);
        assert_eq!(p.trace_state, "vendor=x");
        assert_eq!(p.flags, 1);
        assert_eq!(p.kind, pb_trace::span::SpanKind::Consumer as i32);
        assert_eq!(p.start_time_unix_nano, 1_700_000_000_000_000_007);
        let st = p.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (pb_trace::status::StatusCode::Error as i32, "boom"));
        use pb_common::any_value::Value;
        let vals: Vec<_> =
            p.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap())).collect();
        assert_eq!(
            vals,
            vec![
                ("http.request.method", Value::StringValue("GET".into())),
                ("http.response.status_code", Value::IntValue(200)),
                ("seq", Value::IntValue(7)),
                ("ratio", Value::DoubleValue(0.5)),
                ("retry", Value::BoolValue(true)),
            ]
        );
        assert_eq!(p.events[0].name, "exception");
        assert_eq!(p.events[0].time_unix_nano, 42);
        assert_eq!(p.events[0].attributes[0].key, "exception.type");
        assert_eq!(p.links[0].trace_id, vec![3; 16]);
        assert_eq!(p.links[0].span_id, vec![4; 8]);
        assert_eq!(p.links[0].trace_state, "a=b");
        assert_eq!(p.links[0].attributes[0].key, "n");
    }

    #[test]
    fn root_span_has_empty_parent() {
        let r = resource("checkout");
        let req = to_request(&[span(&r, 1)]);
        assert!(req.resource_spans[0].scope_spans[0].spans[0].parent_span_id.is_empty());
    }
}
