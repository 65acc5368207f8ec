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
