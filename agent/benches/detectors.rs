//! Micro-benchmarks of the PII detectors and the route templater on hostile inputs:
//! each must be linear in its input (issue 15), so 64 KiB costs about four times 16 KiB.
//!
//! - `detectors/redact_value/<input>/<size>`: every detector over one value (uncapped,
//!   as the detectors see a value below the cap);
//! - `detectors/route/<input>/<size>`: a whole request path through the templater, with
//!   its per-segment and per-path caps.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p hoptrace --bench detectors`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hoptrace::{policy::redact::Redactor, traces::http::route_template};

/// Hostile shapes: digit groups (the card detector's worst case), `%40` chains (the
/// email detector's), `bearer/` chains (the bearer detector's), hex and base64 runs.
fn inputs(size: usize) -> Vec<(&'static str, String)> {
    let rep = |unit: &str| unit.repeat(size / unit.len() + 1)[..size].to_string();
    vec![
        ("digit_groups", rep("1-")),
        ("digit_groups_4", rep("4111 ")),
        ("email_at", rep("a%40")),
        ("bearer", rep("bearer/")),
        ("hex", rep("deadbeef")),
        ("mixed", rep("ab1+55(11)9.12@x-")),
    ]
}

fn bench(c: &mut Criterion) {
    let redactor = Redactor::default();
    let mut g = c.benchmark_group("detectors");
    g.sample_size(10);
    for size in [16 * 1024, 64 * 1024] {
        for (name, s) in inputs(size) {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(format!("redact_value/{name}"), size), &s, |b, s| {
                b.iter(|| black_box(redactor.redact_value_uncapped(black_box(s))))
            });
            let path = format!("/{s}");
            g.bench_with_input(BenchmarkId::new(format!("route/{name}"), size), &path, |b, p| {
                b.iter(|| black_box(route_template(black_box(p.as_bytes()), &redactor)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
