//! What the benches share: the exact ring-buffer records the kernel programs write for
//! one HTTP request seen from both ends (a wrk-like client and an nginx-like server), and
//! the agent's record loop that consumes them.
#![allow(dead_code)] // each bench binary uses part of it

use hoptrace::{
    capture::conntrack::{ConnTable, Limits},
    capture::events::{decode, Event},
    capture::stream::Segment,
    model::{log::LogRecord, span::SpanRecord},
    resource::resolver::ResourceResolver,
    traces::{logs::LogSink, SpanSink, TraceConfig, TracePipeline},
};
use hoptrace_common::{DataHeader, Direction, EventKind, OpenEvent, Role, Syscall};

pub const REQUEST: &[u8] = b"GET /api/users/12345/orders?email=ana@example.com&page=2 HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
/// The same request as wrk sends it by default: no trace context, so the agent starts a
/// trace and, the client being on this node, records a `missing_inbound_context` gap.
pub const UNTRACED_REQUEST: &[u8] = b"GET /api/users/12345/orders?email=ana@example.com&page=2 HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 21:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\nhello from nginx\n";

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) plain-old-data event struct.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

pub fn open_record(conn_id: u64, pid: u32, role: Role, local: u16, remote: u16) -> Vec<u8> {
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

pub fn data_record(conn_id: u64, pid: u32, dir: Direction, offset: u64, ts: u64, payload: &[u8]) -> Vec<u8> {
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
pub struct Harness {
    pub table: ConnTable,
    pub pipeline: TracePipeline,
    segs: Vec<Segment>,
}

impl Harness {
    pub fn new() -> Self {
        let cfg = TraceConfig::default();
        Self {
            table: ConnTable::new(Limits::default()),
            pipeline: TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new())),
            segs: Vec::new(),
        }
    }

    pub fn record(&mut self, rec: &[u8], spans: &mut impl SpanSink) {
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

/// Spans, and access records when `logs` is `Some` (as the agent makes them with an OTLP
/// endpoint: one per SERVER span).
#[derive(Default)]
pub struct Sink {
    pub spans: Vec<SpanRecord>,
    pub logs: Option<Vec<LogRecord>>,
}

impl SpanSink for Sink {
    fn submit(&mut self, span: SpanRecord) {
        self.spans.push(span);
    }
    fn logs(&mut self) -> Option<&mut dyn LogSink> {
        self.logs.as_mut().map(|l| l as &mut dyn LogSink)
    }
}

/// The records of `n` requests on connections 1 (server, `server_pid`) and 2 (client,
/// `client_pid`), continuing from `state` (stream offsets and time).
pub fn requests(n: u64, server_pid: u32, client_pid: u32, state: &mut (u64, u64, u64)) -> Vec<Vec<u8>> {
    requests_of(REQUEST, n, server_pid, client_pid, state)
}

/// [`requests`] of `request`.
pub fn requests_of(
    request: &[u8],
    n: u64,
    server_pid: u32,
    client_pid: u32,
    state: &mut (u64, u64, u64),
) -> Vec<Vec<u8>> {
    let (req_off, resp_off, ts) = state;
    let mut recs = Vec::with_capacity(4 * n as usize);
    for _ in 0..n {
        recs.push(data_record(2, client_pid, Direction::Egress, *req_off, *ts, request));
        recs.push(data_record(1, server_pid, Direction::Ingress, *req_off, *ts + 10_000, request));
        recs.push(data_record(1, server_pid, Direction::Egress, *resp_off, *ts + 20_000, RESPONSE));
        recs.push(data_record(2, client_pid, Direction::Ingress, *resp_off, *ts + 30_000, RESPONSE));
        *req_off += request.len() as u64;
        *resp_off += RESPONSE.len() as u64;
        *ts += 100_000;
    }
    recs
}
