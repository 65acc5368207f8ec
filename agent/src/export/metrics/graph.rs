//! Service-graph edges → OTLP metrics, named as the OpenTelemetry Collector's
//! `servicegraph` connector names them (`traces_service_graph_request_total`…, its
//! Prometheus-compatible names) with the edge labels as data-point attributes, so a
//! Collector or Prometheus behind it shows the same series as `/metrics`.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::metrics::v1 as pb;
use opentelemetry_proto::tonic::resource::v1 as pb_resource;

use crate::export::otlp::{SCOPE_NAME, SCOPE_VERSION};
use crate::traces::red::{
    graph::{Edge, GraphSnapshot, Hist, LABELS},
    BUCKETS,
};

const CUMULATIVE: i32 = pb::AggregationTemporality::Cumulative as i32;

fn kv(key: &str, value: pb_common::any_value::Value) -> pb_common::KeyValue {
    pb_common::KeyValue {
        key: key.into(),
        value: Some(pb_common::AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn attributes(e: &Edge) -> Vec<pb_common::KeyValue> {
    if e.overflow {
        return vec![kv("otel.metric.overflow", pb_common::any_value::Value::BoolValue(true))];
    }
    LABELS
        .iter()
        .zip(&e.labels)
        .enumerate()
        .filter(|(i, (_, v))| *i < 3 || !v.is_empty())
        .map(|(_, (k, v))| kv(k, pb_common::any_value::Value::StringValue(v.to_string())))
        .collect()
}

fn hist_point(e: &Edge, h: &Hist, now: u64) -> pb::HistogramDataPoint {
    pb::HistogramDataPoint {
        attributes: attributes(e),
        start_time_unix_nano: e.start_unix_ns,
        time_unix_nano: now,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.buckets.to_vec(),
        explicit_bounds: BUCKETS.to_vec(),
        ..Default::default()
    }
}

fn sum(name: &str, points: Vec<pb::NumberDataPoint>) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        unit: "{request}".into(),
        data: Some(pb::metric::Data::Sum(pb::Sum {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn histogram(name: &str, points: Vec<pb::HistogramDataPoint>) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(pb::metric::Data::Histogram(pb::Histogram {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    }
}

/// The four service-graph metrics of `snap` (none when there is no edge yet).
pub fn metrics(snap: &GraphSnapshot, now: u64) -> Vec<pb::Metric> {
    if snap.edges.is_empty() {
        return Vec::new();
    }
    let point = |e: &Edge, v: u64| pb::NumberDataPoint {
        attributes: attributes(e),
        start_time_unix_nano: e.start_unix_ns,
        time_unix_nano: now,
        value: Some(pb::number_data_point::Value::AsInt(v as i64)),
        ..Default::default()
    };
    let counted: Vec<&Edge> = snap.edges.iter().filter(|e| e.total > 0).collect();
    vec![
        sum("traces_service_graph_request_total", counted.iter().map(|e| point(e, e.total)).collect()),
        sum("traces_service_graph_request_failed_total", counted.iter().map(|e| point(e, e.failed)).collect()),
        histogram(
            "traces_service_graph_request_server_seconds",
            snap.edges.iter().filter(|e| e.server.count > 0).map(|e| hist_point(e, &e.server, now)).collect(),
        ),
        histogram(
            "traces_service_graph_request_client_seconds",
            snap.edges.iter().filter(|e| e.client.count > 0).map(|e| hist_point(e, &e.client, now)).collect(),
        ),
    ]
}

/// Adds the service graph to a metrics request, as one more resource (the node's
/// attributes `node`: edges belong to no single service).
pub fn append(
    req: Option<ExportMetricsServiceRequest>,
    snap: &GraphSnapshot,
    node: Vec<pb_common::KeyValue>,
    now: u64,
) -> Option<ExportMetricsServiceRequest> {
    let metrics = metrics(snap, now);
    if metrics.is_empty() {
        return req;
    }
    let mut req = req.unwrap_or_default();
    req.resource_metrics.push(pb::ResourceMetrics {
        resource: Some(pb_resource::Resource { attributes: node, ..Default::default() }),
        scope_metrics: vec![pb::ScopeMetrics {
            scope: Some(pb_common::InstrumentationScope {
                name: SCOPE_NAME.into(),
                version: SCOPE_VERSION.into(),
                ..Default::default()
            }),
            metrics,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    });
    Some(req)
}
