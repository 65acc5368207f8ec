//! HTTP/2 parse cost per request: the recorded grpcio connection
//! (`protocols/testdata/http2_grpc.*`: preface, SETTINGS, three gRPC calls with their
//! HPACK-indexed metadata, trailers) through detection, the frame readers, HPACK and the
//! stream table, to the three exchanges; reported per call (throughput = 3 elements).
//!
//! - `http2/grpcio_connection/whole`: each direction in one segment per syscall-sized
//!   piece as recorded (the client's 859 bytes, the server's 439);
//! - `http2/grpcio_connection/split64`: the same bytes cut into 64-byte segments (frames
//!   straddling segments, the reader's incremental paths).
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p hoptrace --bench http2`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hoptrace::capture::stream::Segment;
use hoptrace::protocols::{self, L7Event};
use hoptrace_common::{Direction, Role};

const C2S: &[u8] = include_bytes!("../src/protocols/testdata/http2_grpc.c2s");
const S2C: &[u8] = include_bytes!("../src/protocols/testdata/http2_grpc.s2c");

fn segments(bytes: &[u8], piece: usize) -> Vec<Segment> {
    bytes
        .chunks(piece)
        .map(|c| Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: c.to_vec() })
        .collect()
}

/// One connection, start to close: returns the exchanges found (3).
fn connection(c2s: &[Segment], s2c: &[Segment], out: &mut Vec<L7Event>) -> usize {
    out.clear();
    let mut p = protocols::detect(Role::Server, Direction::Ingress, C2S).expect("http2");
    p.feed(Direction::Ingress, c2s, out);
    p.feed(Direction::Egress, s2c, out);
    p.close(out);
    out.iter().filter(|e| matches!(e, L7Event::Http(_))).count()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http2");
    g.throughput(Throughput::Elements(3));
    let mut out = Vec::new();
    for (name, piece) in [("whole", usize::MAX), ("split64", 64)] {
        let (c2s, s2c) = (segments(C2S, piece.min(C2S.len())), segments(S2C, piece.min(S2C.len())));
        assert_eq!(connection(&c2s, &s2c, &mut out), 3);
        g.bench_function(format!("grpcio_connection/{name}"), |b| {
            b.iter(|| black_box(connection(black_box(&c2s), black_box(&s2c), &mut out)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
