//! RED metrics (rate, errors, duration) from every finished span, before sampling.
//!
//! The trace pipeline hands each span it finalizes to [`RedRecorder::record`] — kept or
//! sampled out — so request counts, error counts and latency histograms describe *all*
//! traffic, while exemplars only ever point at traces that were actually exported.
//!
//! # Metrics (OpenTelemetry name → Prometheus name on `/metrics`)
//!
//! | OTLP metric | Prometheus | kind | attributes |
//! |---|---|---|---|
//! | `http.server.request.duration` (s) | `http_server_request_duration_seconds` | histogram | `service.name`, `zone`, `http.route`, `tenant`, `http.request.method`, `http.response.status_class` |
//! | `hoptrace.http.server.request.errors` | `hoptrace_http_server_request_errors_total` | counter | same |
//! | `http.client.request.duration` (s) | `http_client_request_duration_seconds` | histogram | same, for CLIENT spans |
//! | `hoptrace.http.client.request.errors` | `hoptrace_http_client_request_errors_total` | counter | same |
//! | `messaging.client.operation.duration` (s) | `messaging_client_operation_duration_seconds` | histogram | `service.name`, `zone`, `messaging.system`, `messaging.destination.name`, `messaging.operation.type`, `tenant` |
//! | `messaging.client.sent.messages` | `messaging_client_sent_messages_total` | counter | same (PRODUCER spans) |
//! | `messaging.client.consumed.messages` | `messaging_client_consumed_messages_total` | counter | same (CONSUMER spans) |
//! | `hoptrace.messaging.client.operation.errors` | `hoptrace_messaging_client_operation_errors_total` | counter | same |
//! | `rpc.server.duration` (s) | `rpc_server_duration_seconds` | histogram | `service.name`, `zone`, `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | `hoptrace.rpc.server.errors` | `hoptrace_rpc_server_errors_total` | counter | same |
//! | `rpc.client.duration` (s) | `rpc_client_duration_seconds` | histogram | same, for CLIENT spans |
//! | `hoptrace.rpc.client.errors` | `hoptrace_rpc_client_errors_total` | counter | same |
//!
//! A gRPC call (a span with `rpc.system`) feeds the RPC metrics only, not the HTTP ones,
//! so each call is counted once; an RPC error is a span with status ERROR (server: the
//! codes the semantic conventions call server failures; client: any code but OK).
//!
//! The request count is the histogram's `_count`. An error is a span with status ERROR
//! (server: 5xx or no complete response; client: 4xx/5xx, no response, connect failure;
//! messaging: whatever the protocol parser marked as failed). `service.name` and `zone`
//! are OTLP resource attributes (and Prometheus labels `service_name`, `zone`); the
//! status class is `1xx`…`5xx`, or `none` when no response was seen.
//!
//! # Histogram buckets
//!
//! [`BUCKETS`]: the explicit bounds the OpenTelemetry HTTP semantic conventions advise
//! for request durations (5 ms … 10 s), used for messaging too. They resolve p95/p99 per
//! route to within one bucket; a request slower than 10 s lands in `+Inf`.
//!
//! # Cardinality
//!
//! Every label is bounded by construction except `tenant` and the service/route
//! combinations: routes are templated and capped per service by the pipeline
//! (`traces.max_routes_per_service`), methods are the parser's, status has six classes.
//! On top of that each metric keeps at most `metrics.max_series` series; a span that
//! would open one more is recorded in that metric's single overflow series, whose only
//! attribute is `otel.metric.overflow="true"` (what the OpenTelemetry SDKs do), and is
//! counted in `hoptrace_metrics_series_overflowed_total{metric}`. Memory is therefore
//! bounded by `4 × (max_series + 1)` series of fixed size.
//!
//! # Hot path
//!
//! One hash of borrowed attribute values, one table probe, a few integer adds, under an
//! uncontended mutex; no allocation once a series exists (see the `timing` test).

use std::{
    hash::BuildHasher,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::model::span::{AnyValue, KeyValue, Resource, SpanId, SpanKind, SpanRecord, StatusCode, TraceId};

/// Histogram bucket upper bounds, seconds (OpenTelemetry HTTP semconv advice).
pub const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// Buckets plus `+Inf`.
pub const NB: usize = BUCKETS.len() + 1;

/// `metrics` section of the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// Series kept per metric before new attribute combinations go to the overflow series.
    pub max_series: usize,
    /// Period of OTLP metrics export when an endpoint is configured; zero turns it off.
    pub export_interval: Duration,
    /// Attach exemplars (trace ids of exported spans) to histogram buckets.
    pub exemplars: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        // 60 s is the OpenTelemetry SDKs' default export interval.
        Self { max_series: 2000, export_interval: Duration::from_secs(60), exemplars: true }
    }
}

/// Which metric a series belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    HttpServer,
    HttpClient,
    MessagingProducer,
    MessagingConsumer,
    RpcServer,
    RpcClient,
}

/// How many families there are.
pub const FAMILIES: usize = 6;

impl Family {
    pub const ALL: [Family; FAMILIES] = [
        Family::HttpServer,
        Family::HttpClient,
        Family::MessagingProducer,
        Family::MessagingConsumer,
        Family::RpcServer,
        Family::RpcClient,
    ];

    /// Attribute names of the six label slots, in order.
    pub fn attribute_names(self) -> &'static [&'static str; 6] {
        match self {
            Family::HttpServer | Family::HttpClient => &HTTP_ATTRS,
            Family::MessagingProducer | Family::MessagingConsumer => &MSG_ATTRS,
            Family::RpcServer | Family::RpcClient => &RPC_ATTRS,
        }
    }

    /// The label this family's overflow is counted under.
    pub fn label(self) -> &'static str {
        match self {
            Family::HttpServer => "http.server.request.duration",
            Family::HttpClient => "http.client.request.duration",
            Family::MessagingProducer => "messaging.client.operation.duration/publish",
            Family::MessagingConsumer => "messaging.client.operation.duration/consume",
            Family::RpcServer => "rpc.server.duration",
            Family::RpcClient => "rpc.client.duration",
        }
    }
}

const HTTP_ATTRS: [&str; 6] =
    ["service.name", "zone", "http.route", "tenant", "http.request.method", "http.response.status_class"];
const MSG_ATTRS: [&str; 6] =
    ["service.name", "zone", "messaging.system", "messaging.destination.name", "messaging.operation.type", "tenant"];
const RPC_ATTRS: [&str; 6] =
    ["service.name", "zone", "rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code"];

/// gRPC status codes as label values (borrowed, like every label of a span's series).
const GRPC_CODE_LABELS: [&str; 17] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// A trace that fell into a bucket (the latest exported one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Seconds.
    pub value: f64,
    pub time_unix_ns: u64,
}

/// One attribute combination of one metric: a cumulative histogram and its counters.
#[derive(Clone, Debug)]
pub struct Series {
    pub family: Family,
    /// Values of [`Family::attribute_names`]; empty = attribute absent.
    pub labels: [Arc<str>; 6],
    /// The overflow series (`otel.metric.overflow="true"`, no other attribute).
    pub overflow: bool,
    /// Resource of the first span seen, without `process.*` attributes (a series spans
    /// every process of its service).
    pub resource: Arc<Resource>,
    pub start_unix_ns: u64,
    pub count: u64,
    pub sum: f64,
    pub errors: u64,
    /// Messages sent or consumed (messaging only).
    pub messages: u64,
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    pub buckets: [u64; NB],
    pub exemplars: [Option<Exemplar>; NB],
}

/// Every series, bounded per family. Shared by the recorder (capture thread), the HTTP
/// endpoint and the OTLP metrics exporter.
pub struct RedTable {
    series: Vec<Series>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    per_family: [usize; FAMILIES],
    overflow_idx: [Option<u32>; FAMILIES],
    /// Spans recorded in each family's overflow series.
    pub overflowed: [u64; FAMILIES],
    max_series: usize,
}

impl RedTable {
    pub fn new(max_series: usize) -> Self {
        Self {
            series: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            per_family: [0; FAMILIES],
            overflow_idx: [None; FAMILIES],
            overflowed: [0; FAMILIES],
            max_series: max_series.max(1),
        }
    }

    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Active series per family (overflow series included).
    pub fn series_count(&self, f: Family) -> usize {
        self.per_family[f as usize] + usize::from(self.overflow_idx[f as usize].is_some())
    }

    /// A copy for rendering outside the lock: label strings are shared, not copied.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            series: self.series.clone(),
            overflowed: self.overflowed,
            counts: Family::ALL.map(|f| self.series_count(f)),
        }
    }

    fn hash(&self, family: Family, labels: &[&str; 6]) -> u64 {
        self.hasher.hash_one((family as u8, labels))
    }

    /// The series index for `labels`, created if there is room, else the overflow one.
    fn slot(&mut self, family: Family, labels: &[&str; 6], resource: &Resource) -> usize {
        let h = self.hash(family, labels);
        let series = &self.series;
        let eq = |&i: &u32| {
            let s = &series[i as usize];
            s.family == family && !s.overflow && s.labels.iter().zip(labels).all(|(a, b)| &**a == *b)
        };
        if let Some(&i) = self.index.find(h, eq) {
            return i as usize;
        }
        let f = family as usize;
        if self.per_family[f] >= self.max_series {
            self.overflowed[f] += 1;
            if let Some(i) = self.overflow_idx[f] {
                return i as usize;
            }
            let node: Vec<KeyValue> = resource
                .attributes
                .iter()
                .filter(|a| a.key == "host.name" || a.key == "k8s.node.name")
                .cloned()
                .collect();
            let i = self.push(family, Default::default(), true, Resource { attributes: node });
            self.overflow_idx[f] = Some(i as u32);
            return i;
        }
        let owned: [Arc<str>; 6] = labels.map(Arc::from);
        let kept: Vec<KeyValue> =
            resource.attributes.iter().filter(|a| !a.key.starts_with("process.")).cloned().collect();
        let i = self.push(family, owned, false, Resource { attributes: kept });
        self.per_family[f] += 1;
        let (series, hasher) = (&self.series, &self.hasher);
        self.index.insert_unique(h, i as u32, |&j| {
            let s = &series[j as usize];
            let l: [&str; 6] = std::array::from_fn(|k| &*s.labels[k]);
            hasher.hash_one((s.family as u8, &l))
        });
        i
    }

    fn push(&mut self, family: Family, labels: [Arc<str>; 6], overflow: bool, resource: Resource) -> usize {
        self.series.push(Series {
            family,
            labels,
            overflow,
            resource: Arc::new(resource),
            start_unix_ns: now_unix_ns(),
            count: 0,
            sum: 0.0,
            errors: 0,
            messages: 0,
            buckets: [0; NB],
            exemplars: [None; NB],
        });
        self.series.len() - 1
    }

    /// Records one finished span. `exported`: it passed sampling, so its trace id may be
    /// an exemplar.
    pub fn record(&mut self, span: &SpanRecord, exported: bool, exemplars: bool) {
        let Some((family, labels, messages)) = classify(span) else {
            return;
        };
        let i = self.slot(family, &labels, &span.resource);
        let value = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
        let b = BUCKETS.partition_point(|&bound| bound < value);
        let s = &mut self.series[i];
        s.count += 1;
        s.sum += value;
        s.buckets[b] += 1;
        s.messages += messages;
        if span.status.code == StatusCode::Error {
            s.errors += 1;
        }
        if exported && exemplars {
            s.exemplars[b] = Some(Exemplar {
                trace_id: span.trace_id,
                span_id: span.span_id,
                value,
                time_unix_ns: span.end_unix_ns,
            });
        }
    }
}

/// A point-in-time copy of the table.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub series: Vec<Series>,
    pub overflowed: [u64; FAMILIES],
    pub counts: [usize; FAMILIES],
}

fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|a| a.key == key).and_then(|a| match &a.value {
        AnyValue::Str(s) => Some(s.as_str()),
        _ => None,
    })
}

/// `1xx`…`5xx` from a status code, `none` without a response.
pub fn status_class(code: Option<i64>) -> &'static str {
    match code {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

/// Messaging operations that send (OpenTelemetry `messaging.operation.type` values).
fn is_send_operation(op: &str) -> bool {
    matches!(op, "publish" | "send" | "create")
}

/// Which metric a span feeds and its label values, borrowed from the span (no copies).
/// INTERNAL spans and anything unrecognised feed nothing.
fn classify(span: &SpanRecord) -> Option<(Family, [&str; 6], u64)> {
    let res = &span.resource.attributes;
    let service = str_attr(res, "service.name").unwrap_or("");
    let zone = str_attr(res, "zone").unwrap_or("");
    let (mut route, mut tenant, mut method, mut status) = ("", "", "", None);
    let (mut system, mut dest, mut op, mut batch) = (None, "", "", None);
    let (mut rpc, mut rpc_service, mut rpc_method, mut rpc_code) = (None, "", "", "");
    for a in &span.attributes {
        match (a.key.as_str(), &a.value) {
            ("http.route", AnyValue::Str(v)) => route = v,
            ("tenant", AnyValue::Str(v)) => tenant = v,
            ("http.request.method", AnyValue::Str(v)) => method = v,
            ("http.response.status_code", AnyValue::Int(v)) => status = Some(*v),
            ("messaging.system", AnyValue::Str(v)) => system = Some(v.as_str()),
            ("messaging.destination.name", AnyValue::Str(v)) => dest = v,
            ("messaging.operation.type", AnyValue::Str(v)) => op = v,
            ("messaging.batch.message_count", AnyValue::Int(v)) => batch = Some((*v).max(0) as u64),
            ("rpc.system", AnyValue::Str(v)) => rpc = Some(v.as_str()),
            ("rpc.service", AnyValue::Str(v)) => rpc_service = v,
            ("rpc.method", AnyValue::Str(v)) => rpc_method = v,
            ("rpc.grpc.status_code", AnyValue::Int(v)) => {
                rpc_code = usize::try_from(*v).ok().and_then(|i| GRPC_CODE_LABELS.get(i)).copied().unwrap_or("other")
            }
            _ => {}
        }
    }
    if let Some(rpc) = rpc {
        let family = match span.kind {
            SpanKind::Server => Family::RpcServer,
            SpanKind::Client => Family::RpcClient,
            _ => return None,
        };
        return Some((family, [service, zone, rpc, rpc_service, rpc_method, rpc_code], 0));
    }
    if let Some(system) = system {
        let family = match span.kind {
            SpanKind::Producer => Family::MessagingProducer,
            SpanKind::Consumer => Family::MessagingConsumer,
            SpanKind::Client if is_send_operation(op) => Family::MessagingProducer,
            SpanKind::Client => Family::MessagingConsumer,
            SpanKind::Server | SpanKind::Internal => return None,
        };
        return Some((family, [service, zone, system, dest, op, tenant], batch.unwrap_or(1)));
    }
    let family = match span.kind {
        SpanKind::Server => Family::HttpServer,
        SpanKind::Client => Family::HttpClient,
        _ => return None,
    };
    Some((family, [service, zone, route, tenant, method, status_class(status)], 0))
}

/// The pipeline's handle on the shared tables (RED series and service-graph edges).
#[derive(Clone)]
pub struct RedRecorder {
    table: Arc<Mutex<RedTable>>,
    graph: Arc<Mutex<graph::GraphTable>>,
    exemplars: bool,
}

impl Default for RedRecorder {
    fn default() -> Self {
        Self::new(&MetricsConfig::default())
    }
}

impl RedRecorder {
    pub fn new(cfg: &MetricsConfig) -> Self {
        Self {
            table: Arc::new(Mutex::new(RedTable::new(cfg.max_series))),
            graph: Arc::new(Mutex::new(graph::GraphTable::new(cfg.max_series))),
            exemplars: cfg.exemplars,
        }
    }

    /// Called by the trace pipeline for every finished HTTP SERVER or CLIENT span.
    pub fn record_edge(&self, o: &graph::Observation<'_>) {
        if let Ok(mut g) = self.graph.lock() {
            g.record(o);
        }
    }

    pub fn graph_snapshot(&self) -> graph::GraphSnapshot {
        self.graph.lock().map(|g| g.snapshot()).unwrap_or_default()
    }

    /// Called by the trace pipeline for every finished span, kept (`exported`) or not.
    pub fn record(&self, span: &SpanRecord, exported: bool) {
        if let Ok(mut t) = self.table.lock() {
            t.record(span, exported, self.exemplars);
        }
    }

    pub fn table(&self) -> Arc<Mutex<RedTable>> {
        self.table.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.table.lock().map(|t| t.snapshot()).unwrap_or_default()
    }
}

pub mod graph;
#[cfg(test)]
pub(crate) mod tests;
