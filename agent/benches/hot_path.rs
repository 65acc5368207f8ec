//! Micro-benchmarks of the agent's userspace hot path, without a kernel, stage by stage
//! (each reported per request: the two ends of one HTTP request seen on loopback, as
//! `cargo xtask bench` produces, so two spans):
//!
//! - `stage/decode`: four ring-buffer records (request and response, both ends) decoded;
//! - `stage/conntrack_stream`: their connection lookups and stream reassembly;
//! - `stage/http1_parse`: the HTTP/1 parser on both ends' bytes;
//! - `stage/span_build`: the SERVER and CLIENT spans built from the exchanges;
//! - `stage/redact_route`: the route template (uncached) and the PII detectors on a value;
//! - `stage/sampling`: the sampling decision for both spans;
//! - `stage/red`: RED metric recording of both spans;
//! - `stage/otlp_encode`: both spans encoded as an OTLP request;
//! - `pipeline/records_to_otlp_bytes_per_request`: all of it, records in, OTLP bytes out.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p hoptrace --bench hot_path` (add `-- stage` to
//! filter). On a noisy machine, prefer `--bench pipeline_ir` under callgrind
//! (instructions, not time; see that file).

mod common;

use std::{hint::black_box, sync::Arc};

use common::{open_record, requests, Harness, REQUEST, RESPONSE};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hoptrace::{
    capture::{
        conntrack::{ConnTable, Limits},
        events::{decode, Event},
        stream::Segment,
    },
    export::encode::encode_request,
    model::span::{KeyValue, Resource, SpanRecord, Str, TraceOrigin},
    policy::{
        redact::Redactor,
        sampling::{Sampler, SamplingConfig},
    },
    protocols::{http1::Http1, HttpExchange, L7Event, Protocol},
    traces::{
        http::{client_span, route_template, server_span, Addrs, Ids, Named},
        red::RedTable,
        TraceConfig,
    },
    util::clock::Clock,
};
use hoptrace_common::{Direction, Role};

/// Requests per criterion iteration: enough that per-iteration overhead vanishes.
const BATCH: u64 = 256;

fn seg(offset: u64, bytes: &[u8]) -> Segment {
    Segment::Data { offset, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: bytes.to_vec() }
}

/// One exchange as the parser reports it.
fn exchange() -> HttpExchange {
    let mut p = Http1::new(Direction::Ingress);
    let mut out = Vec::new();
    p.feed(Direction::Ingress, &[seg(0, REQUEST)], &mut out);
    p.feed(Direction::Egress, &[seg(0, RESPONSE)], &mut out);
    match out.pop() {
        Some(L7Event::Http(x)) => x,
        other => panic!("no exchange: {other:?}"),
    }
}

fn ids(n: u8) -> Ids {
    Ids {
        trace_id: [n; 16],
        span_id: [n.wrapping_add(1); 8],
        parent: [2; 8],
        flags: 1,
        trace_state: String::new(),
        origin: TraceOrigin::Remote,
    }
}

fn resource() -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![
            KeyValue::str("service.name", "nginx"),
            KeyValue::str("host.name", "node-1"),
            KeyValue::int("process.pid", 4242),
        ],
    })
}

/// The server and client spans of one exchange.
fn two_spans(cfg: &TraceConfig, clock: &Clock, x: &HttpExchange, res: &Arc<Resource>) -> [SpanRecord; 2] {
    // As the pipeline passes them: addresses and names shared from its caches.
    let ip = Str::from(String::from("127.0.0.1"));
    let (local, remote) = ("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:40000".parse().unwrap());
    let addrs = Addrs { local, remote, local_ip: ip.clone(), remote_ip: ip.clone() };
    let back = Addrs { local: remote, remote: local, local_ip: ip.clone(), remote_ip: ip };
    let route = Str::from(String::from("/api/users/{id}/orders"));
    let named = || Named { route: route.clone(), name: Str::from(String::from("GET /api/users/{id}/orders")) };
    [
        server_span(cfg, clock, x, named(), &addrs, res.clone(), ids(1)),
        client_span(cfg, clock, x, named(), &back, res.clone(), ids(3)),
    ]
}

fn stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(BATCH));
    let pid = std::process::id();
    let mut state = (0u64, 0u64, 1_000_000_000u64);
    let recs = requests(BATCH, pid, pid, &mut state);
    g.bench_function("decode", |b| {
        b.iter(|| recs.iter().map(|r| matches!(decode(black_box(r)), Ok(Event::Data(_))) as usize).sum::<usize>())
    });
    g.bench_function("conntrack_stream", |b| {
        let mut table = ConnTable::new(Limits::default());
        let mut segs = Vec::new();
        for open in [open_record(1, pid, Role::Server, 8080, 40000), open_record(2, pid, Role::Client, 40000, 8080)] {
            if let Ok(Event::Open(o)) = decode(&open) {
                table.on_open(&o);
            }
        }
        let mut state = (0u64, 0u64, 1_000_000_000u64);
        b.iter_batched(
            || requests(BATCH, pid, pid, &mut state),
            |recs| {
                for r in &recs {
                    if let Ok(Event::Data(d)) = decode(r) {
                        segs.clear();
                        black_box(table.on_data(&d, &mut segs).is_some());
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("http1_parse", |b| {
        // Both ends parse the same bytes (nginx and wrk each see request and response).
        let mut ends = [Http1::new(Direction::Ingress), Http1::new(Direction::Egress)];
        let (mut q, mut r) = (0u64, 0u64);
        let mut out: Vec<L7Event> = Vec::new();
        b.iter_batched(
            || {
                let batch: Vec<_> = (0..BATCH)
                    .map(|_| {
                        let s = (vec![seg(q, REQUEST)], vec![seg(r, RESPONSE)]);
                        q += REQUEST.len() as u64;
                        r += RESPONSE.len() as u64;
                        s
                    })
                    .collect();
                batch
            },
            |batch| {
                for (req, resp) in &batch {
                    out.clear();
                    ends[0].feed(Direction::Ingress, req, &mut out);
                    ends[0].feed(Direction::Egress, resp, &mut out);
                    ends[1].feed(Direction::Egress, req, &mut out);
                    ends[1].feed(Direction::Ingress, resp, &mut out);
                    assert_eq!(out.len(), 2);
                }
            },
            BatchSize::LargeInput,
        )
    });
    let (cfg, clock, x, res) = (TraceConfig::default(), Clock::now(), exchange(), resource());
    g.bench_function("span_build", |b| {
        b.iter(|| (0..BATCH).for_each(|_| drop(black_box(two_spans(&cfg, &clock, &x, &res)))))
    });
    let redactor = Redactor::default();
    g.bench_function("redact_route", |b| {
        b.iter(|| {
            (0..BATCH)
                .map(|_| {
                    let route = route_template(black_box(b"/api/users/12345/orders"), &redactor);
                    route.len() + redactor.redact_value(black_box("tenant-a")).text.len()
                })
                .sum::<usize>()
        })
    });
    let spans = two_spans(&cfg, &clock, &x, &res);
    g.bench_function("sampling", |b| {
        let mut sampler = Sampler::new(SamplingConfig::default());
        b.iter(|| (0..BATCH).map(|_| spans.iter().filter(|s| sampler.decide(s, "nginx").kept()).count()).sum::<usize>())
    });
    g.bench_function("red", |b| {
        let mut table = RedTable::new(2000);
        b.iter(|| {
            for _ in 0..BATCH {
                for s in &spans {
                    table.record(s, true, true);
                }
            }
        })
    });
    g.bench_function("otlp_encode", |b| b.iter(|| (0..BATCH).map(|_| encode_request(&spans).len()).sum::<usize>()));
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    // Real processes so the resource lookup (/proc) finds something: the server side is
    // this process, the client side its parent (e.g. cargo).
    let server_pid = std::process::id();
    let client_pid = std::os::unix::process::parent_id();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("records_to_otlp_bytes_per_request", |b| {
        let mut h = Harness::new();
        let mut spans = Vec::with_capacity(2 * BATCH as usize);
        h.record(&open_record(1, server_pid, Role::Server, 8080, 40000), &mut spans);
        h.record(&open_record(2, client_pid, Role::Client, 40000, 8080), &mut spans);
        let mut state = (0u64, 0u64, 1_000_000_000u64);
        b.iter_batched(
            || requests(BATCH, server_pid, client_pid, &mut state),
            |recs| {
                spans.clear();
                for r in &recs {
                    h.record(r, &mut spans);
                }
                black_box(encode_request(&spans).len())
            },
            BatchSize::LargeInput,
        );
        assert!(h.pipeline.stats.exchanges > 0, "the pipeline produced no exchanges");
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("traceparent", |b| {
        let v: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        b.iter(|| black_box(hoptrace::traces::context::parse_traceparent(black_box(v)).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, stages, pipeline, parse);
criterion_main!(benches);
