//! The recorder on hand-built spans: HTTP both sides, messaging (as the `mq` branch will
//! emit it), overflow, exemplars, both exposition formats and the OTLP request.

use std::sync::Arc;

use super::*;
use crate::model::span::{Resource, SpanRecord, Status, TraceOrigin};

pub(crate) fn resource(service: &str, zone: &str) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![
            KeyValue::str("service.name", service.to_string()),
            KeyValue::str("zone", zone.to_string()),
            KeyValue::str("host.name", "node-1"),
            KeyValue::int("process.pid", 42),
        ],
    })
}

pub(crate) fn span(kind: SpanKind, ms: u64, attrs: Vec<KeyValue>, n: u8) -> SpanRecord {
    SpanRecord {
        resource: resource("checkout", "Z2"),
        trace_id: [n; 16],
        span_id: [n; 8],
        parent_span_id: [0; 8],
        trace_state: String::new(),
        flags: 1,
        origin: TraceOrigin::Agent,
        name: "x".into(),
        kind,
        start_unix_ns: 1_000_000_000,
        end_unix_ns: 1_000_000_000 + ms * 1_000_000,
        attributes: attrs,
        events: Vec::new(),
        links: Vec::new(),
        status: Status::default(),
    }
}

pub(crate) fn http(route: &str, tenant: Option<&str>, status: Option<i64>) -> Vec<KeyValue> {
    let mut a = vec![KeyValue::str("http.request.method", "GET"), KeyValue::str("http.route", route.to_string())];
    if let Some(t) = tenant {
        a.push(KeyValue::str("tenant", t.to_string()));
    }
    if let Some(s) = status {
        a.push(KeyValue::int("http.response.status_code", s));
    }
    a
}

pub(crate) fn find<'a>(t: &'a RedTable, f: Family, slot: usize, value: &str) -> &'a Series {
    t.series().iter().find(|s| s.family == f && &*s.labels[slot] == value).expect("series")
}

#[test]
fn http_server_and_client_series_by_route_tenant_status_class() {
    let mut t = RedTable::new(100);
    t.record(&span(SpanKind::Server, 10, http("/fast", Some("acme"), Some(200)), 1), true, true);
    t.record(&span(SpanKind::Server, 12, http("/fast", Some("acme"), Some(204)), 2), false, true);
    t.record(&span(SpanKind::Server, 300, http("/slow", Some("globex"), Some(200)), 3), true, true);
    let mut failed = span(SpanKind::Server, 30, http("/fail", None, Some(503)), 4);
    failed.status.code = StatusCode::Error;
    t.record(&failed, true, true);
    t.record(&span(SpanKind::Client, 5, http("/out", None, None), 5), true, true);

    let fast = find(&t, Family::HttpServer, 2, "/fast");
    assert_eq!((fast.count, fast.errors), (2, 0));
    assert_eq!((&*fast.labels[3], &*fast.labels[5]), ("acme", "2xx"));
    // 10 ms and 12 ms: both in (0.01, 0.025] (le semantics: 10 ms is in the 0.01 bucket).
    assert_eq!(fast.buckets[1], 1);
    assert_eq!(fast.buckets[2], 1);
    assert!((fast.sum - 0.022).abs() < 1e-9);
    // Only the exported span became an exemplar.
    assert_eq!(fast.exemplars[1].map(|e| e.trace_id), Some([1; 16]));
    assert_eq!(fast.exemplars[2], None);

    let slow = find(&t, Family::HttpServer, 2, "/slow");
    assert_eq!(slow.buckets[7], 1, "300 ms is in (0.25, 0.5]");
    let fail = find(&t, Family::HttpServer, 2, "/fail");
    assert_eq!((fail.errors, &*fail.labels[5], &*fail.labels[3]), (1, "5xx", ""));
    let out = find(&t, Family::HttpClient, 2, "/out");
    assert_eq!(&*out.labels[5], "none");
    // Resource: service and zone kept, process attributes not (a series spans processes).
    assert!(out.resource.attributes.iter().all(|a| !a.key.starts_with("process.")));
    assert_eq!(t.series_count(Family::HttpServer), 3);
}

/// What the messaging work will emit: PRODUCER/CONSUMER spans with messaging semconv
/// attributes. Publish and consume are counted apart, batches by their message count.
#[test]
fn messaging_spans_count_published_and_consumed_messages() {
    let msg = |op: &str, dest: &str| {
        vec![
            KeyValue::str("messaging.system", "kafka"),
            KeyValue::str("messaging.destination.name", dest.to_string()),
            KeyValue::str("messaging.operation.type", op.to_string()),
        ]
    };
    let mut t = RedTable::new(100);
    t.record(&span(SpanKind::Producer, 3, msg("send", "orders"), 1), true, true);
    let mut batch = msg("send", "orders");
    batch.push(KeyValue::int("messaging.batch.message_count", 5));
    t.record(&span(SpanKind::Producer, 4, batch, 2), true, true);
    t.record(&span(SpanKind::Consumer, 40, msg("process", "orders"), 3), true, true);
    // A CLIENT span of a receive operation (newer semconv) is a consume.
    t.record(&span(SpanKind::Client, 20, msg("receive", "orders"), 4), true, true);
    // INTERNAL spans feed nothing.
    t.record(&span(SpanKind::Internal, 1, msg("process", "orders"), 5), true, true);

    let sent = find(&t, Family::MessagingProducer, 4, "send");
    assert_eq!((sent.count, sent.messages), (2, 6));
    assert_eq!((&*sent.labels[2], &*sent.labels[3]), ("kafka", "orders"));
    let process = find(&t, Family::MessagingConsumer, 4, "process");
    assert_eq!((process.count, process.messages), (1, 1));
    let receive = find(&t, Family::MessagingConsumer, 4, "receive");
    assert_eq!(receive.count, 1);
    assert_eq!(t.series().len(), 3);

    let mut text = String::new();
    crate::ops::metrics::render::render(&t.snapshot(), false, &mut text);
    assert!(text.contains("messaging_client_sent_messages_total{service_name=\"checkout\",zone=\"Z2\",messaging_system=\"kafka\",messaging_destination_name=\"orders\",messaging_operation_type=\"send\"} 6"), "{text}");
    assert!(text.contains("messaging_client_consumed_messages_total{"), "{text}");
    assert!(text.contains("messaging_client_operation_duration_seconds_count{"), "{text}");
}

#[test]
fn series_past_the_cap_go_to_one_overflow_series() {
    let mut t = RedTable::new(2);
    for (i, route) in ["/a", "/b", "/c", "/d", "/a"].iter().enumerate() {
        t.record(&span(SpanKind::Server, 1, http(route, None, Some(200)), i as u8), true, true);
    }
    assert_eq!(t.series_count(Family::HttpServer), 3, "two series and the overflow one");
    let overflow: Vec<&Series> = t.series().iter().filter(|s| s.overflow).collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].count, 2, "/c and /d");
    assert_eq!(t.overflowed[Family::HttpServer as usize], 2);
    assert_eq!(find(&t, Family::HttpServer, 2, "/a").count, 2, "a known series still records");
    // Other families have their own budget.
    t.record(&span(SpanKind::Client, 1, http("/z", None, Some(200)), 9), true, true);
    assert_eq!(t.series_count(Family::HttpClient), 1);

    let mut text = String::new();
    crate::ops::metrics::render::render(&t.snapshot(), false, &mut text);
    assert!(text.contains("http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"} 2"), "{text}");
    assert!(
        text.contains("hoptrace_metrics_series_overflowed_total{metric=\"http.server.request.duration\"} 2"),
        "{text}"
    );
    let req = crate::export::metrics::otlp::to_request(&t.snapshot(), 5).unwrap();
    let overflow_points: Vec<_> = req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics[0].metrics)
        .filter(|m| m.name == "http.server.request.duration")
        .flat_map(|m| match &m.data {
            Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(h)) => h.data_points.clone(),
            _ => vec![],
        })
        .filter(|p| p.attributes.iter().any(|a| a.key == "otel.metric.overflow"))
        .collect();
    assert_eq!(overflow_points.len(), 1);
    assert_eq!(overflow_points[0].count, 2);
}

/// The hot path's cost, printed (not asserted: timings are for benchmarks).
/// `cargo test -p hoptrace --lib --release metrics::tests::timing -- --nocapture`
#[test]
fn timing() {
    let mut t = RedTable::new(2000);
    let spans: Vec<SpanRecord> = (0..64)
        .map(|i| {
            span(
                SpanKind::Server,
                i,
                http(&format!("/r{}", i % 16), Some(["a", "b"][(i as usize / 16) % 2]), Some(200)),
                i as u8,
            )
        })
        .collect();
    for s in &spans {
        t.record(s, true, true);
    }
    let n = 200_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        t.record(&spans[i % spans.len()], i % 10 == 0, true);
    }
    let per = start.elapsed() / n as u32;
    println!("RedTable::record: {per:?} per span over {} series", t.series().len());
    assert_eq!(t.series().len(), 32);
}

/// gRPC spans feed the RPC metrics per service, method and status code, and not the HTTP
/// ones (a call counted once); both formats show them.
#[test]
fn grpc_spans_feed_rpc_metrics_by_service_method_status() {
    let rpc = |method: &str, code: i64| {
        let mut a = http("/pkg.Svc/x", None, Some(200));
        a.extend([
            KeyValue::str("rpc.system", "grpc"),
            KeyValue::str("rpc.service", "pkg.Svc"),
            KeyValue::str("rpc.method", method.to_string()),
            KeyValue::int("rpc.grpc.status_code", code),
        ]);
        a
    };
    let mut t = RedTable::new(100);
    t.record(&span(SpanKind::Server, 4, rpc("Get", 0), 1), true, true);
    t.record(&span(SpanKind::Server, 6, rpc("Get", 0), 2), true, true);
    let mut failed = span(SpanKind::Client, 8, rpc("Get", 14), 3);
    failed.status.code = StatusCode::Error;
    t.record(&failed, true, true);
    t.record(&span(SpanKind::Server, 5, rpc("Get", 99), 4), true, true);
    let ok = find(&t, Family::RpcServer, 5, "0");
    assert_eq!((ok.count, ok.errors, &*ok.labels[2], &*ok.labels[3], &*ok.labels[4]), (2, 0, "grpc", "pkg.Svc", "Get"));
    assert_eq!(find(&t, Family::RpcServer, 5, "other").count, 1, "codes outside 0-16: one label");
    let unavailable = find(&t, Family::RpcClient, 5, "14");
    assert_eq!((unavailable.count, unavailable.errors), (1, 1));
    assert_eq!(t.series_count(Family::HttpServer) + t.series_count(Family::HttpClient), 0);
    let mut text = String::new();
    crate::ops::metrics::render::render(&t.snapshot(), false, &mut text);
    assert!(text.contains("rpc_server_duration_seconds_count{"), "{text}");
    assert!(text.contains("rpc_grpc_status_code=\"14\"} 1"), "{text}");
    assert!(text.contains("hoptrace_rpc_client_errors_total{"), "{text}");
    let req = crate::export::metrics::otlp::to_request(&t.snapshot(), 2_000_000_000).expect("request");
    let names: Vec<String> = req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| m.name.clone())
        .collect();
    assert!(
        names.iter().any(|n| n == "rpc.server.duration") && names.iter().any(|n| n == "rpc.client.duration"),
        "{names:?}"
    );
}
