//! The metrics path: the agent's RED table and OTLP metrics encoding against the
//! OpenTelemetry SDK's metrics (a histogram and a counter with the same attributes) exported
//! by opentelemetry-otlp, with 2,000 series (20 services × 100 routes, the agent's default
//! `metrics.max_series` and the SDK's default cardinality limit).
//!
//! - `record/*`, per span: what happens for every finished span.
//!   - `agent`: `RedRecorder::record` (one probe of the table, a few adds).
//!   - `sdk`: the span's attribute values copied into `KeyValue`s (the span owns them as
//!     `String`s), `Histogram::record` of the duration and `Counter::add` of the error.
//!   - `sdk_attrs_prebuilt`: the same two calls with the attributes made beforehand: the
//!     SDK's aggregation alone, a floor no real caller reaches.
//! - `export/*`, per export of the 2,000 series (cumulative):
//!   - `agent`: `RedRecorder::snapshot` + `export::metrics::otlp::to_request` + prost.
//!   - `sdk`: `SdkMeterProvider::force_flush`: the periodic reader collects, opentelemetry-otlp
//!     transforms and encodes, and posts to an HTTP client that answers 200.
//!
//! Before the timings: bytes kept per series (counting allocator, live bytes after the
//! 2,000 series exist, divided by 2,000), allocations per record and per export, the OTLP
//! bytes per export and the data points in each export; then CPU time measured in
//! interleaved rounds (robust to the load of a shared machine changing). Criterion timings are process CPU time
//! (`design_card::cpu`: the SDK exports on its reader's thread; `DESIGN_CARD_WALL=1` for
//! wall time). Run: `AYA_BUILD_SKIP=1 cargo bench --features bench --bench metrics`.
//! Instruction counts of each case (load-independent): `sh callgrind.sh` (`DESIGN_CARD_CASE`).

use std::{
    hint::black_box,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use criterion::{measurement::Measurement, Criterion, Throughput};
use design_card::{
    alloc, cpu, otel,
    spans::{pipeline_spans, series_spans},
};
use hoptrace::{
    export::metrics::otlp::to_request,
    model::span::{AnyValue, SpanRecord, StatusCode},
    traces::red::{status_class, MetricsConfig, RedRecorder, BUCKETS},
};
use opentelemetry::{
    metrics::{Counter, Histogram, MeterProvider as _},
    KeyValue, Value,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prost::Message;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const SERVICES: usize = 20;
const SERIES: usize = 2000;

/// The SDK instruments the agent's HTTP server RED metrics would be.
struct Sdk {
    null: otel::SharedNull,
    provider: SdkMeterProvider,
    duration: Histogram<f64>,
    errors: Counter<u64>,
}

impl Sdk {
    fn new() -> Self {
        let null = otel::SharedNull::default();
        // The interval is long: only the bench's flush exports.
        let reader = PeriodicReader::builder(otel::metric_exporter(null.clone()))
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let meter = provider.meter_with_scope(otel::scope());
        let duration = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(BUCKETS.to_vec())
            .build();
        let errors = meter
            .u64_counter("hoptrace.http.server.request.errors")
            .with_unit("{request}")
            .with_description("HTTP server requests that failed.")
            .build();
        Self { null, provider, duration, errors }
    }

    fn record_with(&self, s: &SpanRecord, attrs: &[KeyValue]) {
        let secs = s.end_unix_ns.saturating_sub(s.start_unix_ns) as f64 / 1e9;
        self.duration.record(secs, attrs);
        self.errors.add(u64::from(s.status.code == StatusCode::Error), attrs);
    }

    fn record(&self, s: &SpanRecord) {
        let attrs = attributes(s);
        self.record_with(s, &attrs);
    }
}

fn str_attr<'a>(attrs: &'a [hoptrace::model::span::KeyValue], key: &str) -> &'a str {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value {
            AnyValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// The agent's RED labels of an HTTP span as SDK attributes. The SDK has one resource per
/// meter provider, so `service.name` and `zone` (OTLP resource attributes in the agent's
/// export) become data-point attributes here: same series, flatter output. Methods and
/// status classes come from fixed sets (static strings, no copy); service, zone and route
/// are copied from the span.
fn attributes(s: &SpanRecord) -> [KeyValue; 5] {
    let method: Value = match str_attr(&s.attributes, "http.request.method") {
        "GET" => "GET".into(),
        "POST" => "POST".into(),
        other => other.to_owned().into(),
    };
    let status = s.attributes.iter().find(|a| a.key == "http.response.status_code").and_then(|a| match a.value {
        AnyValue::Int(v) => Some(v),
        _ => None,
    });
    [
        KeyValue::new("service.name", str_attr(&s.resource.attributes, "service.name").to_owned()),
        KeyValue::new("zone", str_attr(&s.resource.attributes, "zone").to_owned()),
        KeyValue::new("http.route", str_attr(&s.attributes, "http.route").to_owned()),
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.response.status_class", status_class(status)),
    ]
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn agent_export(red: &RedRecorder) -> Vec<u8> {
    to_request(&red.snapshot(), now_ns()).expect("series").encode_to_vec()
}

fn points(req: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let metrics = req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics);
    metrics
        .map(|m| match &m.data {
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            _ => 0,
        })
        .sum()
}

fn report(spans: &[SpanRecord]) {
    let n = spans.len() as f64;
    // Memory: a fresh table / provider, then the 2,000 series created.
    let red = RedRecorder::new(&MetricsConfig::default());
    let (_, agent_mem) = alloc::measure(|| {
        for s in spans {
            red.record(s, true);
        }
    });
    let sdk = Sdk::new();
    let (_, sdk_mem) = alloc::measure(|| {
        for s in spans {
            sdk.record(s);
        }
    });
    // Record, steady state (every series exists).
    let (_, agent_rec) = alloc::measure(|| spans.iter().for_each(|s| red.record(s, true)));
    let (_, sdk_rec) = alloc::measure(|| spans.iter().for_each(|s| sdk.record(s)));
    // Export (the second, so one-time setup is not counted).
    let _ = agent_export(&red);
    let (bytes, agent_exp) = alloc::measure(|| agent_export(&red));
    let agent_points = points(&ExportMetricsServiceRequest::decode(bytes.as_slice()).expect("valid"));
    sdk.provider.force_flush().expect("flush");
    let before = sdk.null.0.bytes.load(Relaxed);
    let ((), sdk_exp) = alloc::measure(|| sdk.provider.force_flush().expect("flush"));
    let sdk_bytes = sdk.null.0.bytes.load(Relaxed) - before;
    let last = sdk.null.0.last.lock().expect("lock").clone();
    let sdk_points = points(&ExportMetricsServiceRequest::decode(last).expect("valid"));
    eprintln!("\nmetrics path, {SERIES} series ({SERVICES} services):");
    eprintln!(
        "{:<8} {:>16} {:>16} {:>16} {:>16} {:>14} {:>12}",
        "", "live B/series", "allocs/record", "allocs/export", "alloc B/export", "OTLP B/export", "points"
    );
    eprintln!(
        "{:<8} {:>16.0} {:>16.2} {:>16} {:>16} {:>14} {:>12}",
        "agent",
        agent_mem.live as f64 / SERIES as f64,
        agent_rec.allocs as f64 / n,
        agent_exp.allocs,
        agent_exp.bytes,
        bytes.len(),
        agent_points
    );
    eprintln!(
        "{:<8} {:>16.0} {:>16.2} {:>16} {:>16} {:>14} {:>12}",
        "sdk",
        sdk_mem.live as f64 / SERIES as f64,
        sdk_rec.allocs as f64 / n,
        sdk_exp.allocs,
        sdk_exp.bytes,
        sdk_bytes,
        sdk_points
    );
    eprintln!("(points: a histogram and an error-counter point per series, {} expected)\n", 2 * SERIES);
}

/// `DESIGN_CARD_ROUNDS` (default 15).
fn rounds() -> usize {
    std::env::var("DESIGN_CARD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15)
}

/// The record cases (each records every span once) and the export cases (one export of
/// every series), over a table and a provider that already hold every series.
fn cases<'a>(
    spans: &'a [SpanRecord],
    red: &'a RedRecorder,
    sdk: &'a Sdk,
    prebuilt: &'a [[KeyValue; 5]],
) -> (Vec<cpu::Case<'a, ()>>, Vec<cpu::Case<'a, ()>>) {
    let record: Vec<cpu::Case<'_, ()>> = vec![
        (
            "record/agent",
            Box::new(move |()| {
                spans.iter().for_each(|s| red.record(black_box(s), true));
                None
            }),
        ),
        (
            "record/sdk",
            Box::new(move |()| {
                spans.iter().for_each(|s| sdk.record(black_box(s)));
                None
            }),
        ),
        (
            "record/sdk_attrs_prebuilt",
            Box::new(move |()| {
                spans.iter().zip(prebuilt).for_each(|(s, a)| sdk.record_with(black_box(s), a));
                None
            }),
        ),
    ];
    let export: Vec<cpu::Case<'_, ()>> = vec![
        (
            "export/agent",
            Box::new(move |()| {
                black_box(agent_export(red).len());
                None
            }),
        ),
        (
            "export/sdk",
            Box::new(move |()| {
                sdk.provider.force_flush().expect("flush");
                None
            }),
        ),
    ];
    (record, export)
}

/// A table and a provider holding every series, and the SDK attributes made beforehand.
fn filled(spans: &[SpanRecord]) -> (RedRecorder, Sdk, Vec<[KeyValue; 5]>) {
    let red = RedRecorder::new(&MetricsConfig::default());
    let sdk = Sdk::new();
    spans.iter().for_each(|s| red.record(s, true));
    spans.iter().for_each(|s| sdk.record(s));
    let prebuilt = spans.iter().map(attributes).collect();
    (red, sdk, prebuilt)
}

/// Record and export measured in interleaved rounds (see `cpu::interleave`).
fn interleaved(spans: &[SpanRecord]) {
    let (red, sdk, prebuilt) = filled(spans);
    let (mut record, mut export) = cases(spans, &red, &sdk, &prebuilt);
    let names: Vec<&str> = record.iter().map(|c| c.0).collect();
    let per_call = cpu::interleave(rounds(), 100_000_000, || (), &mut record);
    cpu::print_interleaved("metrics, per recorded span", &names, &per_call, spans.len() as f64);
    let names: Vec<&str> = export.iter().map(|c| c.0).collect();
    let per_call = cpu::interleave(rounds(), 200_000_000, || (), &mut export);
    cpu::print_interleaved("metrics, per export of 2,000 series", &names, &per_call, 1.0);
}

fn benches<M: Measurement + 'static>(c: &mut Criterion<M>, spans: &[SpanRecord]) {
    let (red, sdk, prebuilt) = filled(spans);

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(spans.len() as u64));
    g.bench_function("agent", |b| b.iter(|| spans.iter().for_each(|s| red.record(black_box(s), true))));
    g.bench_function("sdk", |b| b.iter(|| spans.iter().for_each(|s| sdk.record(black_box(s)))));
    g.bench_function("sdk_attrs_prebuilt", |b| {
        b.iter(|| spans.iter().zip(&prebuilt).for_each(|(s, a)| sdk.record_with(black_box(s), a)))
    });
    g.finish();

    let mut g = c.benchmark_group("export");
    g.throughput(Throughput::Elements(1));
    g.bench_function("agent", |b| b.iter(|| black_box(agent_export(&red).len())));
    g.bench_function("sdk", |b| b.iter(|| sdk.provider.force_flush().expect("flush")));
    g.finish();
}

fn main() {
    let template = pipeline_spans(1)
        .into_iter()
        .find(|s| s.kind == hoptrace::model::span::SpanKind::Server)
        .expect("a SERVER span");
    let spans = series_spans(&template, SERVICES, SERIES);
    if let Some((name, iters)) = cpu::single() {
        let (red, sdk, prebuilt) = filled(&spans);
        let (mut record, export) = cases(&spans, &red, &sdk, &prebuilt);
        record.extend(export);
        cpu::run_single(&name, iters, || (), &mut record);
        return;
    }
    report(&spans);
    interleaved(&spans);
    if cpu::wall() {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c, &spans);
        c.final_summary();
    } else {
        let mut c = Criterion::default().with_measurement(cpu::ProcessCpu).configure_from_args();
        benches(&mut c, &spans);
        c.final_summary();
    }
}
