//! The recorder on hand-built spans: HTTP both sides, messaging (as the `mq` branch will
//! emit it), overflow, exemplars, both exposition formats and the OTLP request.

use std::sync::Arc;

use super::*;
use crate::spans::{Resource, SpanRecord, Status, TraceOrigin};

fn resource(service: &str, zone: &str) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![
            KeyValue::str("service.name", service),
            KeyValue::str("zone", zone),
            KeyValue::str("host.name", "node-1"),
            KeyValue::int("process.pid", 42),
        ],
    })
}

fn span(kind: SpanKind, ms: u64, attrs: Vec<KeyValue>, n: u8) -> SpanRecord {
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

fn http(route: &str, tenant: Option<&str>, status: Option<i64>) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::str("http.request.method", "GET"),
        KeyValue::str("http.route", route),
    ];
    if let Some(t) = tenant {
        a.push(KeyValue::str("tenant", t));
    }
    if let Some(s) = status {
        a.push(KeyValue::int("http.response.status_code", s));
    }
    a
}

fn find<'a>(t: &'a RedTable, f: Family, slot: usize, value: &str) -> &'a Series {
    t.series()
        .iter()
        .find(|s| s.family == f && &*s.labels[slot] == value)
        .expect("series")
}

#[test]
fn http_server_and_client_series_by_route_tenant_status_class() {
    let mut t = RedTable::new(100);
    t.record(
        &span(
            SpanKind::Server,
            10,
            http("/fast", Some("acme"), Some(200)),
            1,
        ),
        true,
        true,
    );
    t.record(
        &span(
            SpanKind::Server,
            12,
            http("/fast", Some("acme"), Some(204)),
            2,
        ),
        false,
        true,
    );
    t.record(
        &span(
            SpanKind::Server,
            300,
            http("/slow", Some("globex"), Some(200)),
            3,
        ),
        true,
        true,
    );
    let mut failed = span(SpanKind::Server, 30, http("/fail", None, Some(503)), 4);
    failed.status.code = StatusCode::Error;
    t.record(&failed, true, true);
    t.record(
        &span(SpanKind::Client, 5, http("/out", None, None), 5),
        true,
        true,
    );

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
    assert_eq!(
        (fail.errors, &*fail.labels[5], &*fail.labels[3]),
        (1, "5xx", "")
    );
    let out = find(&t, Family::HttpClient, 2, "/out");
    assert_eq!(&*out.labels[5], "none");
    // Resource: service and zone kept, process attributes not (a series spans processes).
    assert!(out
        .resource
        .attributes
        .iter()
        .all(|a| !a.key.starts_with("process.")));
    assert_eq!(t.series_count(Family::HttpServer), 3);
}

/// What the messaging work will emit: PRODUCER/CONSUMER spans with messaging semconv
/// attributes. Publish and consume are counted apart, batches by their message count.
#[test]
fn messaging_spans_count_published_and_consumed_messages() {
    let msg = |op: &str, dest: &str| {
        vec![
            KeyValue::str("messaging.system", "kafka"),
            KeyValue::str("messaging.destination.name", dest),
            KeyValue::str("messaging.operation.type", op),
        ]
    };
    let mut t = RedTable::new(100);
    t.record(
        &span(SpanKind::Producer, 3, msg("send", "orders"), 1),
        true,
        true,
    );
    let mut batch = msg("send", "orders");
    batch.push(KeyValue::int("messaging.batch.message_count", 5));
    t.record(&span(SpanKind::Producer, 4, batch, 2), true, true);
    t.record(
        &span(SpanKind::Consumer, 40, msg("process", "orders"), 3),
        true,
        true,
    );
    // A CLIENT span of a receive operation (newer semconv) is a consume.
    t.record(
        &span(SpanKind::Client, 20, msg("receive", "orders"), 4),
        true,
        true,
    );
    // INTERNAL spans feed nothing.
    t.record(
        &span(SpanKind::Internal, 1, msg("process", "orders"), 5),
        true,
        true,
    );

    let sent = find(&t, Family::MessagingProducer, 4, "send");
    assert_eq!((sent.count, sent.messages), (2, 6));
    assert_eq!((&*sent.labels[2], &*sent.labels[3]), ("kafka", "orders"));
    let process = find(&t, Family::MessagingConsumer, 4, "process");
    assert_eq!((process.count, process.messages), (1, 1));
    let receive = find(&t, Family::MessagingConsumer, 4, "receive");
    assert_eq!(receive.count, 1);
    assert_eq!(t.series().len(), 3);

    let mut text = String::new();
    render::render(&t.snapshot(), false, &mut text);
    assert!(text.contains("messaging_client_sent_messages_total{service_name=\"checkout\",zone=\"Z2\",messaging_system=\"kafka\",messaging_destination_name=\"orders\",messaging_operation_type=\"send\"} 6"), "{text}");
    assert!(
        text.contains("messaging_client_consumed_messages_total{"),
        "{text}"
    );
    assert!(
        text.contains("messaging_client_operation_duration_seconds_count{"),
        "{text}"
    );
}

#[test]
fn series_past_the_cap_go_to_one_overflow_series() {
    let mut t = RedTable::new(2);
    for (i, route) in ["/a", "/b", "/c", "/d", "/a"].iter().enumerate() {
        t.record(
            &span(SpanKind::Server, 1, http(route, None, Some(200)), i as u8),
            true,
            true,
        );
    }
    assert_eq!(
        t.series_count(Family::HttpServer),
        3,
        "two series and the overflow one"
    );
    let overflow: Vec<&Series> = t.series().iter().filter(|s| s.overflow).collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].count, 2, "/c and /d");
    assert_eq!(t.overflowed[Family::HttpServer as usize], 2);
    assert_eq!(
        find(&t, Family::HttpServer, 2, "/a").count,
        2,
        "a known series still records"
    );
    // Other families have their own budget.
    t.record(
        &span(SpanKind::Client, 1, http("/z", None, Some(200)), 9),
        true,
        true,
    );
    assert_eq!(t.series_count(Family::HttpClient), 1);

    let mut text = String::new();
    render::render(&t.snapshot(), false, &mut text);
    assert!(
        text.contains(
            "http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "hoptrace_metrics_series_overflowed_total{metric=\"http.server.request.duration\"} 2"
        ),
        "{text}"
    );
    let req = otlp::to_request(&t.snapshot(), 5).unwrap();
    let overflow_points: Vec<_> = req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics[0].metrics)
        .filter(|m| m.name == "http.server.request.duration")
        .flat_map(|m| match &m.data {
            Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(h)) => {
                h.data_points.clone()
            }
            _ => vec![],
        })
        .filter(|p| p.attributes.iter().any(|a| a.key == "otel.metric.overflow"))
        .collect();
    assert_eq!(overflow_points.len(), 1);
    assert_eq!(overflow_points[0].count, 2);
}

#[test]
fn openmetrics_buckets_carry_exemplars_and_text_format_does_not() {
    let mut t = RedTable::new(10);
    t.record(
        &span(
            SpanKind::Server,
            300,
            http("/slow", Some("acme"), Some(200)),
            0xab,
        ),
        true,
        true,
    );
    let snap = t.snapshot();
    let mut om = String::new();
    render::render(&snap, true, &mut om);
    let line = om
        .lines()
        .find(|l| l.contains("le=\"0.5\""))
        .expect("0.5 bucket");
    assert_eq!(
        line.split(" # ")
            .nth(1)
            .map(|e| e.split(' ').next().unwrap()),
        Some("{trace_id=\"abababababababababababababababab\",span_id=\"abababababababab\"}"),
        "{line}"
    );
    assert!(line.contains("} 1 # {"), "{line}");
    assert!(
        om.contains("# TYPE hoptrace_http_server_request_errors counter"),
        "{om}"
    );
    assert!(
        om.contains("hoptrace_http_server_request_errors_total{"),
        "{om}"
    );
    let mut text = String::new();
    render::render(&snap, false, &mut text);
    assert!(!text.contains(" # {"), "{text}");
    assert!(
        text.contains("# TYPE hoptrace_http_server_request_errors_total counter"),
        "{text}"
    );
    assert!(text.contains(
        "http_server_request_duration_seconds_bucket{service_name=\"checkout\",zone=\"Z2\",http_route=\"/slow\",tenant=\"acme\",http_request_method=\"GET\",http_response_status_class=\"2xx\",le=\"0.25\"} 0"
    ), "{text}");
    assert!(text.contains("le=\"+Inf\"} 1"), "{text}");
}

#[test]
fn otlp_request_is_cumulative_with_exemplars_and_resource_attributes() {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, AggregationTemporality};
    let mut t = RedTable::new(10);
    t.record(
        &span(
            SpanKind::Server,
            300,
            http("/slow", Some("acme"), Some(200)),
            7,
        ),
        true,
        true,
    );
    t.record(
        &span(
            SpanKind::Server,
            310,
            http("/slow", Some("acme"), Some(200)),
            8,
        ),
        false,
        true,
    );
    let req = otlp::to_request(&t.snapshot(), 99).unwrap();
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    let res: Vec<&str> = rm
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|a| a.key.as_str())
        .collect();
    assert!(
        res.contains(&"service.name") && res.contains(&"zone") && res.contains(&"host.name"),
        "{res:?}"
    );
    assert!(!res.contains(&"process.pid"));
    let m = rm.scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "http.server.request.duration")
        .unwrap();
    assert_eq!(m.unit, "s");
    let Some(Data::Histogram(h)) = &m.data else {
        panic!("not a histogram")
    };
    assert_eq!(
        h.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let p = &h.data_points[0];
    assert_eq!(p.count, 2);
    assert_eq!(p.bucket_counts.len(), BUCKETS.len() + 1);
    assert_eq!(p.bucket_counts[7], 2);
    assert_eq!(p.explicit_bounds, BUCKETS.to_vec());
    let keys: Vec<&str> = p.attributes.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "http.route",
            "tenant",
            "http.request.method",
            "http.response.status_class"
        ]
    );
    assert_eq!(p.exemplars.len(), 1, "one bucket, latest exported span");
    assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
    assert_eq!(p.time_unix_nano, 99);
    let errors = rm.scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "hoptrace.http.server.request.errors")
        .unwrap();
    let Some(Data::Sum(s)) = &errors.data else {
        panic!("not a sum")
    };
    assert!(s.is_monotonic);
    assert!(otlp::to_request(&Snapshot::default(), 1).is_none());
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
                http(
                    &format!("/r{}", i % 16),
                    Some(["a", "b"][(i as usize / 16) % 2]),
                    Some(200),
                ),
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
    println!(
        "RedTable::record: {per:?} per span over {} series",
        t.series().len()
    );
    assert_eq!(t.series().len(), 32);
}

/// The position pages of a real ring buffer map: empty, then filled by hand is not
/// possible from user space, so this checks the mapping works and reads zero.
#[test]
fn ring_fill_reads_a_real_ring_buffer() {
    // BPF_MAP_TYPE_RINGBUF = 27; needs privileges: skipped (with a message) without them.
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        pad: [u32; 27],
    }
    let attr = CreateAttr {
        map_type: 27,
        max_entries: 4096 * 4,
        ..Default::default()
    };
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attribute struct of the kernel's size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const CreateAttr,
            std::mem::size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        eprintln!(
            "cannot create a ring buffer map here ({}); not checked",
            std::io::Error::last_os_error()
        );
        return;
    }
    let fill = ringbuf::RingFill::open(fd as i32).expect("map the position pages");
    assert_eq!(fill.used(), 0);
    fill.observe();
    // SAFETY: closing the fd this test created.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn metrics_section_is_read_validated_and_overridable_from_the_environment() {
    let cfg = crate::config::from_str(
        "metrics:\n  max_series: 50\n  export_interval_ms: 1500\n  exemplars: false\n",
    )
    .unwrap();
    assert_eq!(
        cfg.metrics,
        MetricsConfig {
            max_series: 50,
            export_interval: Duration::from_millis(1500),
            exemplars: false
        }
    );
    let cfg = crate::config::from_str_with_env("metrics:\n  max_series: 50\n", |k| {
        (k == "HOPTRACE_METRICS_EXPORT_INTERVAL_MS").then(|| "0".to_string())
    })
    .unwrap();
    assert_eq!(
        (cfg.metrics.max_series, cfg.metrics.export_interval),
        (50, Duration::ZERO),
        "0 turns export off"
    );
    assert_eq!(
        crate::config::from_str("").unwrap().metrics,
        MetricsConfig::default()
    );
    let diags = crate::config::check("metrics:\n  max_series: 0\n  exemplar: true\n");
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(diags.len(), 2, "{messages:?}");
    assert!(messages[0].contains("`metrics.max_series`"), "{messages:?}");
    assert!(
        messages[1].contains("exemplar") && messages[1].contains("exemplars"),
        "did you mean: {messages:?}"
    );
}

#[test]
fn metrics_export_follows_the_trace_exporter() {
    use crate::export::{ExporterConfig, Protocol};
    use export::metrics_exporter_config;
    let none = |_: &str| None;
    assert_eq!(
        metrics_exporter_config(&ExporterConfig::default(), none).unwrap(),
        None,
        "no endpoint: /metrics only"
    );
    let http = ExporterConfig {
        endpoint: Some("http://collector:4318/v1/traces".into()),
        headers: vec![("authorization".into(), "Bearer x".into())],
        ..Default::default()
    };
    let m = metrics_exporter_config(&http, none).unwrap().unwrap();
    assert_eq!(
        m.endpoint.as_deref(),
        Some("http://collector:4318/v1/metrics")
    );
    assert_eq!(m.headers, http.headers, "same headers (authentication)");
    let grpc = ExporterConfig {
        endpoint: Some("http://collector:4317".into()),
        protocol: Protocol::Grpc,
        ..Default::default()
    };
    assert_eq!(
        metrics_exporter_config(&grpc, none)
            .unwrap()
            .unwrap()
            .endpoint
            .as_deref(),
        Some("http://collector:4317")
    );
    let m = metrics_exporter_config(&http, |k| {
        (k == "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .then(|| "http://metrics-only:4318/custom".to_string())
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        m.endpoint.as_deref(),
        Some("http://metrics-only:4318/custom")
    );
}

#[test]
fn endpoint_readyz_and_openmetrics_negotiation() {
    use crate::server::{respond, EndpointState};
    use http_body_util::BodyExt;
    let body = |r: hyper::Response<http_body_util::Full<bytes::Bytes>>| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    };
    let state = EndpointState::default();
    let get = hyper::Method::GET;
    assert_eq!(respond(&get, "/healthz", None, &state).status(), 200);
    assert_eq!(
        respond(&get, "/readyz", None, &state).status(),
        503,
        "not ready before probes and exporter"
    );
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(respond(&get, "/readyz", None, &state).status(), 200);

    let red = RedRecorder::new(&MetricsConfig::default());
    red.record(
        &span(
            SpanKind::Server,
            300,
            http("/slow", Some("acme"), Some(200)),
            3,
        ),
        true,
    );
    let _ = state.metrics.red.set(red);
    *state.samples.lock().unwrap() = vec![crate::counters::Sample {
        name: "hoptrace_capture_records_total",
        labels: vec![],
        value: 7,
    }];
    let r = respond(
        &get,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        &state,
    );
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = body(r);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE hoptrace_capture_records counter\nhoptrace_capture_records_total 7\n"),
        "{om}"
    );
    assert!(
        om.contains("# TYPE hoptrace_propagation_gaps counter"),
        "{om}"
    );
    assert!(
        om.contains(" # {trace_id=\"03030303030303030303030303030303\""),
        "{om}"
    );
    let r = respond(&get, "/metrics", None, &state);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = body(r);
    assert!(
        text.contains("# TYPE hoptrace_capture_records_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF") && !text.contains(" # {"), "{text}");
}
