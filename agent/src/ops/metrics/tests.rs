//! Rendering RED metrics (Prometheus text, OpenMetrics with exemplars) and the endpoint.

use super::render;
use crate::{
    model::span::SpanKind,
    traces::red::{
        tests::{http, span},
        MetricsConfig, RedRecorder, RedTable,
    },
};

#[test]
fn openmetrics_buckets_carry_exemplars_and_text_format_does_not() {
    let mut t = RedTable::new(10);
    t.record(&span(SpanKind::Server, 300, http("/slow", Some("acme"), Some(200)), 0xab), true, true);
    let snap = t.snapshot();
    let mut om = String::new();
    render::render(&snap, true, &mut om);
    let line = om.lines().find(|l| l.contains("le=\"0.5\"")).expect("0.5 bucket");
    assert_eq!(
        line.split(" # ").nth(1).map(|e| e.split(' ').next().unwrap()),
        Some("{trace_id=\"abababababababababababababababab\",span_id=\"abababababababab\"}"),
        "{line}"
    );
    assert!(line.contains("} 1 # {"), "{line}");
    assert!(om.contains("# TYPE hoptrace_http_server_request_errors counter"), "{om}");
    assert!(om.contains("hoptrace_http_server_request_errors_total{"), "{om}");
    let mut text = String::new();
    render::render(&snap, false, &mut text);
    assert!(!text.contains(" # {"), "{text}");
    assert!(text.contains("# TYPE hoptrace_http_server_request_errors_total counter"), "{text}");
    assert!(text.contains(
        "http_server_request_duration_seconds_bucket{service_name=\"checkout\",zone=\"Z2\",http_route=\"/slow\",tenant=\"acme\",http_request_method=\"GET\",http_response_status_class=\"2xx\",le=\"0.25\"} 0"
    ), "{text}");
    assert!(text.contains("le=\"+Inf\"} 1"), "{text}");
}

#[test]
fn endpoint_readyz_and_openmetrics_negotiation() {
    use crate::ops::server::{respond, EndpointState};
    use http_body_util::BodyExt;
    let body = |r: hyper::Response<http_body_util::Full<bytes::Bytes>>| {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    };
    let state = EndpointState::default();
    let get = hyper::Method::GET;
    assert_eq!(respond(&get, "/healthz", None, &state).status(), 200);
    assert_eq!(respond(&get, "/readyz", None, &state).status(), 503, "not ready before probes and exporter");
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(respond(&get, "/readyz", None, &state).status(), 200);

    let red = RedRecorder::new(&MetricsConfig::default());
    red.record(&span(SpanKind::Server, 300, http("/slow", Some("acme"), Some(200)), 3), true);
    let _ = state.metrics.red.set(red);
    *state.samples.lock().unwrap() =
        vec![crate::model::sample::Sample { name: "hoptrace_capture_records_total", labels: vec![], value: 7 }];
    let r = respond(&get, "/metrics", Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"), &state);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let om = body(r);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE hoptrace_capture_records counter\nhoptrace_capture_records_total 7\n"), "{om}");
    assert!(om.contains("# TYPE hoptrace_propagation_gaps counter"), "{om}");
    assert!(om.contains(" # {trace_id=\"03030303030303030303030303030303\""), "{om}");
    let r = respond(&get, "/metrics", None, &state);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = body(r);
    assert!(text.contains("# TYPE hoptrace_capture_records_total counter"), "{text}");
    assert!(!text.contains("# EOF") && !text.contains(" # {"), "{text}");
}

/// The service graph with the connector's names, `client`/`server`/`connection_type`
/// always present, the zones when known, on the endpoint beside the RED metrics.
#[test]
fn service_graph_metrics_have_the_connectors_names_and_labels() {
    use crate::traces::red::graph::{Observation, Side};
    let red = RedRecorder::new(&MetricsConfig::default());
    let labels = ["front", "back", "", "Z1", "Z6"];
    red.record_edge(&Observation { side: Side::Server, labels, seconds: 0.02, failed: true, counts: true });
    red.record_edge(&Observation { side: Side::Client, labels, seconds: 0.03, failed: false, counts: false });
    let ext = ["front", "10.1.2.3:5432", "virtual_node", "Z1", ""];
    red.record_edge(&Observation { side: Side::Client, labels: ext, seconds: 0.5, failed: false, counts: true });
    let mut out = String::new();
    super::graph::render(&red.graph_snapshot(), false, &mut out);
    let pair = "client=\"front\",server=\"back\",connection_type=\"\",client_zone=\"Z1\",server_zone=\"Z6\"";
    for line in [
        format!("traces_service_graph_request_total{{{pair}}} 1"),
        format!("traces_service_graph_request_failed_total{{{pair}}} 1"),
        format!("traces_service_graph_request_server_seconds_count{{{pair}}} 1"),
        format!("traces_service_graph_request_client_seconds_count{{{pair}}} 1"),
        format!("traces_service_graph_request_server_seconds_bucket{{{pair},le=\"0.025\"}} 1"),
        "traces_service_graph_request_total{client=\"front\",server=\"10.1.2.3:5432\",connection_type=\"virtual_node\",client_zone=\"Z1\"} 1".into(),
        "hoptrace_service_graph_edges 2".into(),
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
    }
    assert_eq!(out.matches("# TYPE traces_service_graph_request_total counter").count(), 1);
    let req = crate::export::metrics::graph::append(None, &red.graph_snapshot(), Vec::new(), 5).unwrap();
    let names: Vec<&str> = req.resource_metrics[0].scope_metrics[0].metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "traces_service_graph_request_total",
            "traces_service_graph_request_failed_total",
            "traces_service_graph_request_server_seconds",
            "traces_service_graph_request_client_seconds"
        ]
    );
}

#[test]
fn cpu_seconds_reads_this_process() {
    let before = super::selfstats::cpu_seconds().expect("/proc/self/stat");
    let mut x = 0u64;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(50) {
        x = x.wrapping_add(std::hint::black_box(1));
    }
    let after = super::selfstats::cpu_seconds().unwrap();
    assert!(after >= before && before >= 0.0, "{before} {after} {x}");
}
