//! The OTLP metrics request and the metrics exporter's configuration.

use super::otlp;
use crate::{
    model::span::SpanKind,
    traces::red::{
        tests::{http, span},
        RedTable, Snapshot, BUCKETS,
    },
};

#[test]
fn otlp_request_is_cumulative_with_exemplars_and_resource_attributes() {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, AggregationTemporality};
    let mut t = RedTable::new(10);
    t.record(&span(SpanKind::Server, 300, http("/slow", Some("acme"), Some(200)), 7), true, true);
    t.record(&span(SpanKind::Server, 310, http("/slow", Some("acme"), Some(200)), 8), false, true);
    let req = otlp::to_request(&t.snapshot(), 99).unwrap();
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    let res: Vec<&str> = rm.resource.as_ref().unwrap().attributes.iter().map(|a| a.key.as_str()).collect();
    assert!(res.contains(&"service.name") && res.contains(&"zone") && res.contains(&"host.name"), "{res:?}");
    assert!(!res.contains(&"process.pid"));
    let m = rm.scope_metrics[0].metrics.iter().find(|m| m.name == "http.server.request.duration").unwrap();
    assert_eq!(m.unit, "s");
    let Some(Data::Histogram(h)) = &m.data else { panic!("not a histogram") };
    assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    let p = &h.data_points[0];
    assert_eq!(p.count, 2);
    assert_eq!(p.bucket_counts.len(), BUCKETS.len() + 1);
    assert_eq!(p.bucket_counts[7], 2);
    assert_eq!(p.explicit_bounds, BUCKETS.to_vec());
    let keys: Vec<&str> = p.attributes.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["http.route", "tenant", "http.request.method", "http.response.status_class"]);
    assert_eq!(p.exemplars.len(), 1, "one bucket, latest exported span");
    assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
    assert_eq!(p.time_unix_nano, 99);
    let errors = rm.scope_metrics[0].metrics.iter().find(|m| m.name == "hoptrace.http.server.request.errors").unwrap();
    let Some(Data::Sum(s)) = &errors.data else { panic!("not a sum") };
    assert!(s.is_monotonic);
    assert!(otlp::to_request(&Snapshot::default(), 1).is_none());
}

#[test]
fn metrics_export_follows_the_trace_exporter() {
    use super::exporter::metrics_exporter_config;
    use crate::export::{ExporterConfig, Protocol};
    let none = |_: &str| None;
    assert_eq!(metrics_exporter_config(&ExporterConfig::default(), none).unwrap(), None, "no endpoint: /metrics only");
    let http = ExporterConfig {
        endpoint: Some("http://collector:4318/v1/traces".into()),
        headers: vec![("authorization".into(), "Bearer x".into())],
        ..Default::default()
    };
    let m = metrics_exporter_config(&http, none).unwrap().unwrap();
    assert_eq!(m.endpoint.as_deref(), Some("http://collector:4318/v1/metrics"));
    assert_eq!(m.headers, http.headers, "same headers (authentication)");
    let grpc = ExporterConfig {
        endpoint: Some("http://collector:4317".into()),
        protocol: Protocol::Grpc,
        ..Default::default()
    };
    assert_eq!(
        metrics_exporter_config(&grpc, none).unwrap().unwrap().endpoint.as_deref(),
        Some("http://collector:4317")
    );
    let m = metrics_exporter_config(&http, |k| {
        (k == "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").then(|| "http://metrics-only:4318/custom".to_string())
    })
    .unwrap()
    .unwrap();
    assert_eq!(m.endpoint.as_deref(), Some("http://metrics-only:4318/custom"));
}
