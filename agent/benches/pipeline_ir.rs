//! The whole userspace pipeline on a fixed workload, for instruction counting: ring-buffer
//! records of N requests (both ends of each, two spans) → decode → connection table and
//! streams → HTTP/1 → spans → redaction, sampling, RED → OTLP protobuf bytes, and with
//! `logs` the access records (one per SERVER span) → OTLP logs protobuf bytes too.
//!
//! Time on a shared 2-core machine swings with whatever else runs; instructions do not.
//! Run it under callgrind and read the instructions of `measured` per request:
//!
//! ```text
//! AYA_BUILD_SKIP=1 cargo bench -p hoptrace --bench pipeline_ir --no-run
//! valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file=target/pipeline.cg \
//!     target/release/deps/pipeline_ir-* 2000 [untraced] [logs]
//! callgrind_annotate target/pipeline.cg | head -40     # "PROGRAM TOTALS" / 2000 = Ir per request
//! ```
//! Without valgrind it prints wall time per request (a rough figure).

mod common;

// The agent binary's allocator (agent/src/main.rs), so allocation costs are the agent's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use common::{open_record, requests_of, Harness, Sink, REQUEST, UNTRACED_REQUEST};
use hoptrace::export::{encode::encode_request, logs_encode::encode_logs_request};
use hoptrace_common::Role;

/// Requests run before measuring: caches, tables and route templates warm, as in a
/// long-running agent.
const WARMUP: u64 = 500;

/// The measured run; warm-up goes through [`warm_up`], so callgrind's
/// `--toggle-collect='*measured*'` counts the N measured requests only.
#[inline(never)]
fn measured(h: &mut Harness, recs: &[Vec<u8>], spans: &mut Sink) -> (usize, Duration) {
    // Timed inside, which also keeps it from being merged with `warm_up`.
    let t = Instant::now();
    let bytes = run(h, recs, spans);
    (bytes, t.elapsed())
}

#[inline(never)]
fn warm_up(h: &mut Harness, recs: &[Vec<u8>], spans: &mut Sink) -> usize {
    run(h, recs, spans)
}

#[inline(always)]
fn run(h: &mut Harness, recs: &[Vec<u8>], spans: &mut Sink) -> usize {
    let mut bytes = 0;
    // Batches of 64 requests, as the exporter batches spans.
    for chunk in recs.chunks(4 * 64) {
        spans.spans.clear();
        if let Some(l) = &mut spans.logs {
            l.clear();
        }
        for r in chunk {
            h.record(r, spans);
        }
        bytes += encode_request(&spans.spans).len();
        if let Some(l) = &spans.logs {
            bytes += encode_logs_request(l).len();
        }
    }
    bytes
}

fn main() {
    // `cargo bench` passes `--bench`; the request count is the first number argument.
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    // `untraced`: requests without traceparent, as wrk (and `cargo xtask bench`) sends
    // them: the server span starts a trace and the hop is a gap, on every request.
    let untraced = std::env::args().any(|a| a == "untraced");
    // `logs`: access records on, as with an OTLP endpoint (the agent's default then).
    let logs = std::env::args().any(|a| a == "logs");
    let request = if untraced { UNTRACED_REQUEST } else { REQUEST };
    let pid = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let mut h = Harness::new();
    let mut spans = Sink { spans: Vec::new(), logs: logs.then(Vec::new) };
    h.record(&open_record(1, pid, Role::Server, 8080, 40000), &mut spans);
    h.record(&open_record(2, parent, Role::Client, 40000, 8080), &mut spans);
    let mut state = (0u64, 0u64, 1_000_000_000u64);
    let warm = requests_of(request, WARMUP, pid, parent, &mut state);
    black_box(warm_up(&mut h, &warm, &mut spans));
    let recs = requests_of(request, n, pid, parent, &mut state);
    let (bytes, took) = black_box(measured(&mut h, &recs, &mut spans));
    let per = took / n as u32;
    assert_eq!(h.pipeline.stats.exchanges, 2 * (WARMUP + n), "every request made two exchanges");
    println!("{n} requests: {per:?} per request, {} OTLP bytes per request", bytes as u64 / n);
}
