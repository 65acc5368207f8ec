//! RED series → OTLP `ExportMetricsServiceRequest`: cumulative histograms and sums, one
//! `ResourceMetrics` per distinct resource, exemplars with trace and span ids.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::metrics::v1 as pb;
use opentelemetry_proto::tonic::resource::v1 as pb_resource;

use crate::export::otlp::{SCOPE_NAME, SCOPE_VERSION};
use crate::model::span::TraceId;
use crate::traces::red::{Family, Series, Snapshot, BUCKETS};

const CUMULATIVE: i32 = pb::AggregationTemporality::Cumulative as i32;

fn kv_str(key: &str, v: &str) -> pb_common::KeyValue {
    pb_common::KeyValue {
        key: key.into(),
        value: Some(pb_common::AnyValue { value: Some(pb_common::any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

/// Data-point attributes: the non-resource labels, or the overflow marker.
fn attributes(s: &Series) -> Vec<pb_common::KeyValue> {
    if s.overflow {
        return vec![pb_common::KeyValue {
            key: "otel.metric.overflow".into(),
            value: Some(pb_common::AnyValue { value: Some(pb_common::any_value::Value::BoolValue(true)) }),
            ..Default::default()
        }];
    }
    s.family
        .attribute_names()
        .iter()
        .zip(&s.labels)
        // service.name and zone are resource attributes.
        .skip(2)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| kv_str(k, v))
        .collect()
}

fn resource_attrs(s: &Series) -> Vec<pb_common::KeyValue> {
    let mut out: Vec<pb_common::KeyValue> = Vec::new();
    for a in &s.resource.attributes {
        if let crate::model::span::AnyValue::Str(v) = &a.value {
            out.push(kv_str(&a.key, v));
        } else if let crate::model::span::AnyValue::Int(v) = &a.value {
            out.push(pb_common::KeyValue {
                key: a.key.to_string(),
                value: Some(pb_common::AnyValue { value: Some(pb_common::any_value::Value::IntValue(*v)) }),
                ..Default::default()
            });
        }
    }
    // The series' own service and zone win over the first span's resource.
    if !s.overflow {
        for (i, key) in ["service.name", "zone"].iter().enumerate() {
            if !s.labels[i].is_empty() {
                out.retain(|a| a.key != *key);
                out.push(kv_str(key, &s.labels[i]));
            }
        }
    }
    out
}

fn ids(t: &TraceId, s: &[u8; 8]) -> (Vec<u8>, Vec<u8>) {
    (t.to_vec(), s.to_vec())
}

fn histogram_point(s: &Series, now: u64) -> pb::HistogramDataPoint {
    pb::HistogramDataPoint {
        attributes: attributes(s),
        start_time_unix_nano: s.start_unix_ns,
        time_unix_nano: now,
        count: s.count,
        sum: Some(s.sum),
        bucket_counts: s.buckets.to_vec(),
        explicit_bounds: BUCKETS.to_vec(),
        exemplars: s
            .exemplars
            .iter()
            .flatten()
            .map(|e| {
                let (trace_id, span_id) = ids(&e.trace_id, &e.span_id);
                pb::Exemplar {
                    filtered_attributes: Vec::new(),
                    time_unix_nano: e.time_unix_ns,
                    span_id,
                    trace_id,
                    value: Some(pb::exemplar::Value::AsDouble(e.value)),
                }
            })
            .collect(),
        ..Default::default()
    }
}

fn sum_point(s: &Series, value: u64, now: u64) -> pb::NumberDataPoint {
    pb::NumberDataPoint {
        attributes: attributes(s),
        start_time_unix_nano: s.start_unix_ns,
        time_unix_nano: now,
        value: Some(pb::number_data_point::Value::AsInt(value as i64)),
        ..Default::default()
    }
}

fn histogram(name: &str, description: &str, points: Vec<pb::HistogramDataPoint>) -> Option<pb::Metric> {
    (!points.is_empty()).then(|| pb::Metric {
        name: name.into(),
        description: description.into(),
        unit: "s".into(),
        data: Some(pb::metric::Data::Histogram(pb::Histogram {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    })
}

fn sum(name: &str, description: &str, unit: &str, points: Vec<pb::NumberDataPoint>) -> Option<pb::Metric> {
    (!points.is_empty()).then(|| pb::Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(pb::metric::Data::Sum(pb::Sum {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        })),
        ..Default::default()
    })
}

/// The metrics of one resource's series.
fn metrics(series: &[&Series], now: u64) -> Vec<pb::Metric> {
    let of = |fams: &[Family]| series.iter().filter(|s| fams.contains(&s.family)).copied().collect::<Vec<_>>();
    let mut out = Vec::new();
    for (fam, hist, errors, what) in [
        (
            Family::HttpServer,
            "http.server.request.duration",
            "hoptrace.http.server.request.errors",
            "HTTP server requests",
        ),
        (
            Family::HttpClient,
            "http.client.request.duration",
            "hoptrace.http.client.request.errors",
            "HTTP client requests",
        ),
        (Family::RpcServer, "rpc.server.duration", "hoptrace.rpc.server.errors", "RPC server calls"),
        (Family::RpcClient, "rpc.client.duration", "hoptrace.rpc.client.errors", "RPC client calls"),
    ] {
        let s = of(&[fam]);
        out.extend(histogram(
            hist,
            &format!("Duration of {what}."),
            s.iter().map(|s| histogram_point(s, now)).collect(),
        ));
        out.extend(sum(
            errors,
            &format!("{what} that failed."),
            "{request}",
            s.iter().map(|s| sum_point(s, s.errors, now)).collect(),
        ));
    }
    let msg = of(&[Family::MessagingProducer, Family::MessagingConsumer]);
    out.extend(histogram(
        "messaging.client.operation.duration",
        "Duration of messaging operations.",
        msg.iter().map(|s| histogram_point(s, now)).collect(),
    ));
    out.extend(sum(
        "messaging.client.sent.messages",
        "Messages published.",
        "{message}",
        of(&[Family::MessagingProducer]).iter().map(|s| sum_point(s, s.messages, now)).collect(),
    ));
    out.extend(sum(
        "messaging.client.consumed.messages",
        "Messages consumed.",
        "{message}",
        of(&[Family::MessagingConsumer]).iter().map(|s| sum_point(s, s.messages, now)).collect(),
    ));
    out.extend(sum(
        "hoptrace.messaging.client.operation.errors",
        "Messaging operations that failed.",
        "{operation}",
        msg.iter().map(|s| sum_point(s, s.errors, now)).collect(),
    ));
    out
}

/// One request with every series; `None` when there is nothing to send yet.
pub fn to_request(snap: &Snapshot, now_unix_ns: u64) -> Option<ExportMetricsServiceRequest> {
    if snap.series.is_empty() {
        return None;
    }
    // Few distinct resources (one per service): a linear scan, as for spans.
    let mut groups: Vec<(Vec<pb_common::KeyValue>, Vec<&Series>)> = Vec::new();
    for s in &snap.series {
        let attrs = resource_attrs(s);
        match groups.iter_mut().find(|(a, _)| *a == attrs) {
            Some((_, list)) => list.push(s),
            None => groups.push((attrs, vec![s])),
        }
    }
    let resource_metrics = groups
        .into_iter()
        .map(|(attributes, series)| pb::ResourceMetrics {
            resource: Some(pb_resource::Resource { attributes, ..Default::default() }),
            scope_metrics: vec![pb::ScopeMetrics {
                scope: Some(pb_common::InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: SCOPE_VERSION.into(),
                    ..Default::default()
                }),
                metrics: metrics(&series, now_unix_ns),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    Some(ExportMetricsServiceRequest { resource_metrics })
}
