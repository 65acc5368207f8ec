//! Micro-benchmarks of the agent's userspace hot path, without a kernel.
//!
//! - `parse/*`: the HTTP/1 parser and the W3C traceparent parser alone.
//! - `pipeline/*`: ring-buffer records (the exact bytes the kernel programs write) →
//!   decode → connection table/stream → HTTP parser → span (ids, resource, redaction) →
//!   OTLP protobuf bytes (the HTTP exporter's encoder), for a server connection (nginx-like) and a client connection
//!   (wrk-like): two spans per request, as `cargo xtask bench` produces. Reported per
//!   request (criterion "elements").
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p hoptrace` (add `-- parse` to filter).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hoptrace::{
    capture::conntrack::{ConnTable, Limits},
    capture::events::{decode, Event},
    capture::stream::Segment,
    export::encode::encode_request,
    model::span::SpanRecord,
    protocols::{http1::Http1, L7Event, Protocol},
    resource::resolver::ResourceResolver,
    traces::{TraceConfig, TracePipeline},
};
use hoptrace_common::{DataHeader, Direction, EventKind, OpenEvent, Role, Syscall};

const REQUEST: &[u8] = b"GET /api/users/12345/orders?email=ana@example.com&page=2 HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 21:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\nhello from nginx\n";

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) plain-old-data event struct.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

fn open_record(conn_id: u64, pid: u32, role: Role, local: u16, remote: u16) -> Vec<u8> {
    // SAFETY: OpenEvent is repr(C) integers and byte arrays: all zeroes is a valid value.
    let mut ev: OpenEvent = unsafe { std::mem::zeroed() };
    ev.kind = EventKind::Open as u8;
    ev.role = role as u8;
    ev.via = if role == Role::Server { Syscall::Accept4 } else { Syscall::Connect } as u8;
    ev.family = 2;
    ev.local_port = local;
    ev.remote_port = remote;
    ev.pid = pid;
    ev.tid = pid;
    ev.fd = 7;
    ev.conn_id = conn_id;
    ev.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    ev.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    ev.comm[..5].copy_from_slice(b"bench");
    as_bytes(&ev).to_vec()
}

fn data_record(conn_id: u64, pid: u32, dir: Direction, offset: u64, ts: u64, payload: &[u8]) -> Vec<u8> {
    let h = DataHeader {
        kind: EventKind::Data as u8,
        direction: dir as u8,
        syscall: if dir == Direction::Ingress { Syscall::Recvfrom } else { Syscall::Writev } as u8,
        _pad0: 0,
        pid,
        tid: pid,
        fd: 7,
        conn_id,
        ts_enter_ns: ts,
        ts_exit_ns: ts + 2_000,
        call_offset: offset,
        call_len: payload.len() as u32,
        call_captured: payload.len() as u32,
        chunk_offset: 0,
        chunk_len: payload.len() as u32,
    };
    let mut v = as_bytes(&h).to_vec();
    v.extend_from_slice(payload);
    // The ring buffer pads records to 8 bytes.
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

/// The agent's record loop for `records`, spans into `spans`.
struct Harness {
    table: ConnTable,
    pipeline: TracePipeline,
    segs: Vec<Segment>,
}

impl Harness {
    fn new() -> Self {
        let cfg = TraceConfig::default();
        Self {
            table: ConnTable::new(Limits::default()),
            pipeline: TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new())),
            segs: Vec::new(),
        }
    }

    fn record(&mut self, rec: &[u8], spans: &mut Vec<SpanRecord>) {
        match decode(rec).expect("valid record") {
            Event::Open(ev) => {
                self.table.on_open(&ev);
            }
            Event::Data(d) => {
                self.segs.clear();
                if let Some(conn) = self.table.on_data(&d, &mut self.segs) {
                    self.pipeline.on_segments(conn, d.direction, &self.segs, spans);
                }
            }
            _ => {}
        }
    }
}

fn pipeline(c: &mut Criterion) {
    // Real processes so the resource lookup (/proc) finds something: the server side is
    // this process, the client side its parent (e.g. cargo).
    let server_pid = std::process::id();
    let client_pid = std::os::unix::process::parent_id();
    const BATCH: u64 = 512;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("records_to_otlp_bytes_per_request", |b| {
        let mut h = Harness::new();
        let mut spans = Vec::with_capacity(2 * BATCH as usize);
        h.record(&open_record(1, server_pid, Role::Server, 8080, 40000), &mut spans);
        h.record(&open_record(2, client_pid, Role::Client, 40000, 8080), &mut spans);
        let (mut req_off, mut resp_off, mut ts) = (0u64, 0u64, 1_000_000_000u64);
        b.iter_batched(
            || {
                // Records of BATCH requests, built outside the measurement.
                let mut recs = Vec::with_capacity(4 * BATCH as usize);
                for _ in 0..BATCH {
                    recs.push(data_record(2, client_pid, Direction::Egress, req_off, ts, REQUEST));
                    recs.push(data_record(1, server_pid, Direction::Ingress, req_off, ts + 10_000, REQUEST));
                    recs.push(data_record(1, server_pid, Direction::Egress, resp_off, ts + 20_000, RESPONSE));
                    recs.push(data_record(2, client_pid, Direction::Ingress, resp_off, ts + 30_000, RESPONSE));
                    req_off += REQUEST.len() as u64;
                    resp_off += RESPONSE.len() as u64;
                    ts += 100_000;
                }
                recs
            },
            |recs| {
                spans.clear();
                for r in &recs {
                    h.record(r, &mut spans);
                }
                let bytes = encode_request(&spans);
                black_box(bytes.len())
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
    let seg =
        |offset: u64, bytes: &[u8]| Segment::Data { offset, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: bytes.to_vec() };
    g.bench_function("http1_request_and_response", |b| {
        let mut p = Http1::new(Direction::Ingress);
        let mut out: Vec<L7Event> = Vec::new();
        let (mut q, mut r) = (0u64, 0u64);
        b.iter_batched(
            || {
                let s = (vec![seg(q, REQUEST)], vec![seg(r, RESPONSE)]);
                q += REQUEST.len() as u64;
                r += RESPONSE.len() as u64;
                s
            },
            |(req, resp)| {
                out.clear();
                p.feed(Direction::Ingress, &req, &mut out);
                p.feed(Direction::Egress, &resp, &mut out);
                assert_eq!(out.len(), 1);
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("traceparent", |b| {
        let v: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        b.iter(|| black_box(hoptrace::traces::context::parse_traceparent(black_box(v)).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, parse, pipeline);
criterion_main!(benches);
