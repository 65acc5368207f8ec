//! The span path: the agent's direct OTLP encoder against the OpenTelemetry SDK and
//! opentelemetry-otlp, on the spans the agent's pipeline makes (per request through an
//! nginx-like reverse proxy: its SERVER span and the CLIENT span of its upstream call).
//!
//! Every case starts from a batch of the agent's `SpanRecord`s and ends with the OTLP
//! protobuf bytes of an export request (and the batch freed), per span:
//!
//! - `agent/direct_encode`: `export::encode::encode_request` (the OTLP/HTTP transport).
//! - `agent/direct_encode_only`: the same on a borrowed batch, not freed: the encoder alone.
//! - `agent/to_request_prost`: `export::otlp::to_request` + prost (the gRPC transport's message).
//! - `sdk/exporter_only`: a ready `Vec<SpanData>` through opentelemetry-otlp's exporter
//!   (`group_spans_by_resource_and_scope` + prost + the HTTP request): the SDK's floor.
//! - `sdk/convert_and_export`: `SpanRecord` → `SpanData`, then the exporter.
//! - `sdk/tracer_batch`: each span made through the SDK tracer (`build_with_context`,
//!   `end_with_timestamp`) into a `BatchSpanProcessor` and the exporter, flushed per batch.
//!
//! The SDK has one Resource per provider, so each resource gets its own exporter (and, for
//! the tracer, its own provider and batch thread): one request per resource, where the
//! agent sends one request with a `ResourceSpans` per resource. Here all spans are the
//! proxy's, one resource: the SDK's best case.
//!
//! Before the timings, a table of allocations and bytes per span (counting allocator, all
//! threads) and one of CPU time per span measured in interleaved rounds (robust to the load
//! of a shared machine changing between cases). Criterion timings are process CPU time (`design_card::cpu`; `DESIGN_CARD_WALL=1` for
//! wall time). Run: `AYA_BUILD_SKIP=1 cargo bench --features bench --bench spans`.
//! Instruction counts of each case (load-independent): `sh callgrind.sh` (`DESIGN_CARD_CASE`).

use std::{hint::black_box, sync::Arc};

use criterion::{measurement::Measurement, BatchSize, Criterion, Throughput};
use design_card::{alloc, cpu, otel, spans::pipeline_spans};
use hoptrace::{
    export::{encode::encode_request, otlp::to_request},
    model::span::{Resource, SpanRecord},
};
use opentelemetry::{trace::TracerProvider as _, InstrumentationScope};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _,
};
use prost::Message;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Requests per batch: 512 spans, the batch the SDK's batch processor exports.
const REQUESTS: usize = 256;

/// The spans' resources, in first-seen order.
fn resources(spans: &[SpanRecord]) -> Vec<Arc<Resource>> {
    let mut out: Vec<Arc<Resource>> = Vec::new();
    for s in spans {
        if !out.iter().any(|r| Arc::ptr_eq(r, &s.resource)) {
            out.push(s.resource.clone());
        }
    }
    out
}

/// One SDK exporter per resource, as the SDK's model requires.
struct Exporters {
    null: otel::SharedNull,
    by_resource: Vec<(Arc<Resource>, opentelemetry_otlp::SpanExporter)>,
}

impl Exporters {
    fn new(resources: &[Arc<Resource>]) -> Self {
        let null = otel::SharedNull::default();
        let by_resource = resources
            .iter()
            .map(|r| {
                let mut e = otel::span_exporter(null.clone());
                e.set_resource(&otel::resource(r));
                (r.clone(), e)
            })
            .collect();
        Self { null, by_resource }
    }

    /// Splits the batch by resource and exports each part.
    fn export(&self, parts: Vec<Vec<SpanData>>) {
        for ((_, e), part) in self.by_resource.iter().zip(parts) {
            futures_executor::block_on(e.export(part)).expect("export");
        }
    }

    fn split<T>(&self, spans: Vec<SpanRecord>, f: impl Fn(SpanRecord) -> T) -> Vec<Vec<T>> {
        let mut parts: Vec<Vec<T>> = self.by_resource.iter().map(|_| Vec::with_capacity(spans.len())).collect();
        for s in spans {
            let i = self.by_resource.iter().position(|(r, _)| Arc::ptr_eq(r, &s.resource)).expect("known resource");
            parts[i].push(f(s));
        }
        parts
    }
}

/// One tracer provider per resource, each with a batch processor and an OTLP exporter.
struct Tracers {
    null: otel::SharedNull,
    by_resource: Vec<(Arc<Resource>, SdkTracerProvider, SdkTracer)>,
}

impl Tracers {
    fn new(resources: &[Arc<Resource>]) -> Self {
        let null = otel::SharedNull::default();
        let by_resource = resources
            .iter()
            .map(|r| {
                // The defaults (queue 2048, batches of 512), the delay long enough that only
                // the bench's flush exports.
                let config =
                    BatchConfigBuilder::default().with_scheduled_delay(std::time::Duration::from_secs(3600)).build();
                let processor =
                    BatchSpanProcessor::builder(otel::span_exporter(null.clone())).with_batch_config(config).build();
                let provider = SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_id_generator(otel::PresetIds)
                    .with_resource(otel::resource(r))
                    .build();
                let tracer = provider.tracer_with_scope(otel::scope());
                (r.clone(), provider, tracer)
            })
            .collect();
        Self { null, by_resource }
    }

    fn record_and_flush(&self, spans: Vec<SpanRecord>) {
        for s in spans {
            let (_, _, t) =
                self.by_resource.iter().find(|(r, _, _)| Arc::ptr_eq(r, &s.resource)).expect("known resource");
            otel::via_tracer(t, s);
        }
        for (_, p, _) in &self.by_resource {
            p.force_flush().expect("flush");
        }
    }
}

/// Allocations and bytes per span of each path, over one batch after a warm-up batch.
fn allocation_table(spans: &[SpanRecord], ex: &Exporters, tr: &Tracers) {
    let n = spans.len() as f64;
    let scope = otel::scope();
    let mut rows: Vec<(&str, alloc::Counts, usize)> = Vec::new();
    for round in 0..2 {
        rows.clear();
        let batch = spans.to_vec();
        let (len, c) = alloc::measure(|| {
            let b = encode_request(&batch);
            drop(batch);
            b.len()
        });
        rows.push(("agent/direct_encode", c, len));
        let batch = spans.to_vec();
        let (len, c) = alloc::measure(|| {
            let b = to_request(&batch).encode_to_vec();
            drop(batch);
            b.len()
        });
        rows.push(("agent/to_request_prost", c, len));
        let parts = ex.split(spans.to_vec(), |s| otel::span_data(s, &scope));
        let before = ex.null.0.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let ((), c) = alloc::measure(|| ex.export(parts));
        let len = ex.null.0.bytes.load(std::sync::atomic::Ordering::Relaxed) - before;
        rows.push(("sdk/exporter_only", c, len as usize));
        let batch = spans.to_vec();
        let before = ex.null.0.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let ((), c) = alloc::measure(|| ex.export(ex.split(batch, |s| otel::span_data(s, &scope))));
        let len = ex.null.0.bytes.load(std::sync::atomic::Ordering::Relaxed) - before;
        rows.push(("sdk/convert_and_export", c, len as usize));
        let batch = spans.to_vec();
        let before = tr.null.0.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let ((), c) = alloc::measure(|| tr.record_and_flush(batch));
        let len = tr.null.0.bytes.load(std::sync::atomic::Ordering::Relaxed) - before;
        rows.push(("sdk/tracer_batch", c, len as usize));
        if round == 0 {
            continue;
        }
        eprintln!(
            "\nspan path, {} spans per batch ({} requests, {} resource(s)):",
            spans.len(),
            REQUESTS,
            ex.by_resource.len()
        );
        eprintln!("{:<26} {:>12} {:>14} {:>14}", "case", "allocs/span", "alloc B/span", "OTLP B/span");
        for (name, c, len) in &rows {
            eprintln!(
                "{:<26} {:>12.2} {:>14.1} {:>14.1}",
                name,
                c.allocs as f64 / n,
                c.bytes as f64 / n,
                *len as f64 / n
            );
        }
        eprintln!();
    }
}

/// The cases of the criterion benches that start from the agent's `SpanRecord`s, as
/// closures over one batch (each drops its batch, except `direct_encode_only`).
fn cases<'a>(
    ex: &'a Exporters,
    tr: &'a Tracers,
    scope: &'a InstrumentationScope,
) -> Vec<cpu::Case<'a, Vec<SpanRecord>>> {
    vec![
        (
            "agent/direct_encode",
            Box::new(move |b: Vec<SpanRecord>| {
                black_box(encode_request(&b).len());
                None
            }),
        ),
        (
            "agent/direct_encode_only",
            Box::new(move |b: Vec<SpanRecord>| {
                black_box(encode_request(&b).len());
                Some(b)
            }),
        ),
        (
            "agent/to_request_prost",
            Box::new(move |b: Vec<SpanRecord>| {
                black_box(to_request(&b).encode_to_vec().len());
                None
            }),
        ),
        (
            "sdk/convert_and_export",
            Box::new(move |b: Vec<SpanRecord>| {
                ex.export(ex.split(b, |s| otel::span_data(s, scope)));
                None
            }),
        ),
        (
            "sdk/tracer_batch",
            Box::new(move |b: Vec<SpanRecord>| {
                tr.record_and_flush(b);
                None
            }),
        ),
        // For instruction counts only: the batch's copy, leaked so that neither its drop
        // nor anything else is counted; subtracted from the other cases by callgrind.sh.
        (
            "baseline/copy",
            Box::new(move |b: Vec<SpanRecord>| {
                std::mem::forget(b);
                None
            }),
        ),
    ]
}

/// The same cases as the criterion benches, measured in interleaved rounds.
fn interleaved(spans: &[SpanRecord], ex: &Exporters, tr: &Tracers) {
    let scope = otel::scope();
    let mut cases = cases(ex, tr, &scope);
    cases.retain(|c| !c.0.starts_with("baseline/"));
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let per_call = cpu::interleave(rounds(), 100_000_000, || spans.to_vec(), &mut cases);
    cpu::print_interleaved("span path, per span", &names, &per_call, spans.len() as f64);
}

/// `DESIGN_CARD_ROUNDS` (default 15).
fn rounds() -> usize {
    std::env::var("DESIGN_CARD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15)
}

fn benches<M: Measurement + 'static>(c: &mut Criterion<M>, spans: &[SpanRecord], ex: &Exporters, tr: &Tracers) {
    let scope = otel::scope();
    let mut g = c.benchmark_group("spans");
    g.throughput(Throughput::Elements(spans.len() as u64));
    g.bench_function("agent/direct_encode", |b| {
        b.iter_batched(
            || spans.to_vec(),
            |batch| {
                let bytes = encode_request(&batch);
                drop(batch);
                black_box(bytes.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("agent/direct_encode_only", |b| b.iter(|| black_box(encode_request(black_box(spans)).len())));
    g.bench_function("agent/to_request_prost", |b| {
        b.iter_batched(
            || spans.to_vec(),
            |batch| {
                let bytes = to_request(&batch).encode_to_vec();
                drop(batch);
                black_box(bytes.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("sdk/exporter_only", |b| {
        b.iter_batched(
            || ex.split(spans.to_vec(), |s| otel::span_data(s, &scope)),
            |parts| ex.export(parts),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("sdk/convert_and_export", |b| {
        b.iter_batched(
            || spans.to_vec(),
            |batch| ex.export(ex.split(batch, |s| otel::span_data(s, &scope))),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("sdk/tracer_batch", |b| {
        b.iter_batched(|| spans.to_vec(), |batch| tr.record_and_flush(batch), BatchSize::LargeInput)
    });
    g.finish();
}

fn main() {
    let spans = pipeline_spans(REQUESTS);
    let res = resources(&spans);
    let ex = Exporters::new(&res);
    let tr = Tracers::new(&res);
    // What is being encoded, once, so a reader can check the spans are the real ones.
    let show = |s: &SpanRecord| {
        let attrs: Vec<String> = s.attributes.iter().map(|a| format!("{}={:?}", a.key, a.value)).collect();
        eprintln!("{:?} {:?}: {}", s.kind, s.name, attrs.join(" "));
    };
    show(&spans[0]);
    show(&spans[1]);
    eprintln!("resources: {}; resource attributes: {}", res.len(), res[0].attributes.len());
    if let Some((name, iters)) = cpu::single() {
        let scope = otel::scope();
        cpu::run_single(&name, iters, || spans.to_vec(), &mut cases(&ex, &tr, &scope));
        return;
    }
    allocation_table(&spans, &ex, &tr);
    interleaved(&spans, &ex, &tr);
    if cpu::wall() {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c, &spans, &ex, &tr);
        c.final_summary();
    } else {
        let mut c = Criterion::default().with_measurement(cpu::ProcessCpu).configure_from_args();
        benches(&mut c, &spans, &ex, &tr);
        c.final_summary();
    }
}
