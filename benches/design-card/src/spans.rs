//! Realistic spans: the agent's own pipeline turns the exact ring-buffer records the kernel
//! programs write (an nginx-like reverse proxy's inbound and upstream connections) into one
//! SERVER and one CLIENT span per request, with every attribute the agent sets by default
//! (`traces::http`), the resource resolved from /proc like the running agent does. The
//! record builders are those of `agent/benches/hot_path.rs`.

use std::sync::Arc;

use hoptrace::{
    capture::conntrack::{ConnTable, Limits},
    capture::events::{decode, Event},
    capture::stream::Segment,
    model::span::{AnyValue, KeyValue, Resource, SpanKind, SpanRecord},
    resource::resolver::ResourceResolver,
    traces::{TraceConfig, TracePipeline},
};
use hoptrace_common::{DataHeader, Direction, EventKind, OpenEvent, Role, Syscall};

const REQUEST: &[u8] = b"GET /api/users/12345/orders?email=ana@example.com&page=2 HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
/// What the proxy sends upstream: the same request, the traceparent passed through.
const UPSTREAM_REQUEST: &[u8] = b"GET /api/users/12345/orders?email=ana@example.com&page=2 HTTP/1.1\r\n\
Host: backend:9090\r\nConnection: keep-alive\r\nUser-Agent: wrk\r\nAccept: */*\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
const UPSTREAM_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n\
{\"orders\":[1,2,3],\"page\":2}";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 21:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\nhello from nginx\n";

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) plain-old-data event struct; reading its bytes is what the
    // kernel's ring buffer hands the agent.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

fn open_record(conn_id: u64, pid: u32, role: Role, local: u16, remote: u16) -> Vec<u8> {
    // SAFETY: OpenEvent is plain old data; all-zero is a valid value of it.
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
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

/// `requests` requests through an nginx-like reverse proxy (this process): the inbound
/// request (with a W3C traceparent) is read on connection 1, proxied on the same thread to
/// an upstream over connection 3 (the traceparent passed through, as nginx passes headers),
/// and answered. Per request the pipeline emits the upstream call's CLIENT span (held
/// until the inbound request completes, then made its child) and the SERVER span, both
/// under the proxy's resource: `2 × requests` spans.
pub fn pipeline_spans(requests: usize) -> Vec<SpanRecord> {
    let pid = std::process::id();
    let mut table = ConnTable::new(Limits::default());
    let resolver = ResourceResolver::new(Vec::new(), ResourceResolver::node_attributes_from_env());
    let mut pipeline = TracePipeline::new(TraceConfig::default(), resolver);
    let mut segs: Vec<Segment> = Vec::new();
    let mut spans = Vec::with_capacity(2 * requests);
    let mut feed = |rec: &[u8], spans: &mut Vec<SpanRecord>| match decode(rec).expect("valid record") {
        Event::Open(ev) => {
            table.on_open(&ev);
        }
        Event::Data(d) => {
            segs.clear();
            if let Some(conn) = table.on_data(&d, &mut segs) {
                pipeline.on_segments(conn, d.direction, &segs, spans);
            }
        }
        _ => {}
    };
    feed(&open_record(1, pid, Role::Server, 8080, 40000), &mut spans);
    feed(&open_record(3, pid, Role::Client, 41000, 9090), &mut spans);
    let (mut in_req, mut in_resp, mut up_req, mut up_resp, mut ts) = (0u64, 0u64, 0u64, 0u64, 1_000_000_000u64);
    for _ in 0..requests {
        feed(&data_record(1, pid, Direction::Ingress, in_req, ts, REQUEST), &mut spans);
        feed(&data_record(3, pid, Direction::Egress, up_req, ts + 5_000, UPSTREAM_REQUEST), &mut spans);
        feed(&data_record(3, pid, Direction::Ingress, up_resp, ts + 15_000, UPSTREAM_RESPONSE), &mut spans);
        feed(&data_record(1, pid, Direction::Egress, in_resp, ts + 20_000, RESPONSE), &mut spans);
        in_req += REQUEST.len() as u64;
        in_resp += RESPONSE.len() as u64;
        up_req += UPSTREAM_REQUEST.len() as u64;
        up_resp += UPSTREAM_RESPONSE.len() as u64;
        ts += 100_000;
    }
    let kinds = |k: SpanKind| spans.iter().filter(|s| s.kind == k).count();
    assert_eq!(
        (kinds(SpanKind::Server), kinds(SpanKind::Client)),
        (requests, requests),
        "the pipeline must emit a SERVER and a CLIENT span per request"
    );
    spans
}

/// Copies of `template` spread over `series` attribute combinations of the agent's RED
/// table: `services` services (resource `service.name`), routes and the response status
/// class varied so that every (service, route, method, status class) is a distinct series.
/// Durations vary over the histogram's buckets. Returns one span per series.
pub fn series_spans(template: &SpanRecord, services: usize, series: usize) -> Vec<SpanRecord> {
    let resources: Vec<Arc<Resource>> = (0..services)
        .map(|i| {
            let mut attrs: Vec<KeyValue> =
                template.resource.attributes.iter().filter(|a| a.key != "service.name").cloned().collect();
            attrs.push(KeyValue::str("service.name", format!("svc-{i:03}")));
            attrs.push(KeyValue::str("zone", "Z1"));
            Arc::new(Resource { attributes: attrs })
        })
        .collect();
    (0..series)
        .map(|n| {
            let mut s = template.clone();
            s.resource = resources[n % services].clone();
            let route = format!("/api/v1/resource-{:04}/items", n / services);
            for a in &mut s.attributes {
                match a.key.as_str() {
                    "http.route" | "url.path" => a.value = AnyValue::Str(route.clone().into()),
                    _ => {}
                }
            }
            s.name = format!("GET {route}").into();
            // 1 ms … 3 s: every bucket gets some.
            s.end_unix_ns = s.start_unix_ns + 1_000_000 * (1 + (n as u64 * 37) % 3000);
            s
        })
        .collect()
}
