//! Same-node stitching on synthetic connections: both ends of one TCP connection, as the
//! connection table hands them to the pipeline, in the orders the kernel may deliver.

use std::time::Duration;

use hoptrace_common::{Direction, Role};

use crate::{
    capture::{conntrack::Connection, stream::Segment},
    gaps::GapKind,
    model::span::{AnyValue, SpanKind, SpanRecord},
    resource::resolver::ResourceResolver,
    traces::{tests::conn_of, TraceConfig, TracePipeline},
};

const FRONT: u32 = 4242;
const BACK: u32 = 4343;
const CURL_TRACE: [u8; 16] =
    [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
const IN: &[u8] =
    b"GET /in HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
const CALL: &[u8] = b"GET /out HTTP/1.1\r\nHost: b\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

fn seg(ts: u64, tid: u32, offset: u64, bytes: &[u8]) -> Vec<Segment> {
    vec![Segment::Data { offset, ts_enter_ns: ts, ts_ns: ts + 1, tid, bytes: bytes.to_vec() }]
}

fn pipeline(cfg: TraceConfig) -> TracePipeline {
    TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new()))
}

/// curl → front (8000) → back (9000), the front's call on 50001.
fn ends() -> (Connection, Connection, Connection) {
    let front_in = conn_of(FRONT, 1, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let call = conn_of(FRONT, 2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    let back_in = conn_of(BACK, 3, Role::Server, "127.0.0.1:9000", "127.0.0.1:50001");
    (front_in, call, back_in)
}

fn one(spans: &[SpanRecord], pid: u32, kind: SpanKind) -> &SpanRecord {
    let pid_of =
        |s: &SpanRecord| s.resource.attributes.iter().find(|a| a.key == "process.pid").map(|a| a.value.clone());
    let found: Vec<&SpanRecord> =
        spans.iter().filter(|s| s.kind == kind && pid_of(s) == Some(AnyValue::Int(pid as i64))).collect();
    assert_eq!(found.len(), 1, "{kind:?} spans of {pid}: {spans:#?}");
    found[0]
}

fn stitched(s: &SpanRecord) -> bool {
    s.attributes.iter().any(|a| a.key == "hoptrace.context.stitched" && a.value == AnyValue::Bool(true))
}

/// The usual order: the backend answers (its span is held), the front reads the answer
/// (its call waits for its own request), the front answers curl: the call's CLIENT span
/// gets its id, and the held SERVER span joins it, in curl's trace. The gap stays.
#[test]
fn server_span_held_then_joins_the_client_span_in_the_callers_trace() {
    let mut p = pipeline(TraceConfig::default());
    let mut spans = Vec::new();
    let (front_in, call, back_in) = ends();
    p.on_segments(&front_in, Direction::Ingress, &seg(10, 7, 0, IN), &mut spans);
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Ingress, &seg(21, 9, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Egress, &seg(30, 9, 0, OK), &mut spans);
    assert!(spans.is_empty(), "the backend's span waits for its client span: {spans:?}");
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, OK), &mut spans);
    p.on_segments(&front_in, Direction::Egress, &seg(40, 7, 0, OK), &mut spans);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let front = one(&spans, FRONT, SpanKind::Server);
    let client = one(&spans, FRONT, SpanKind::Client);
    let back = one(&spans, BACK, SpanKind::Server);
    assert_eq!(front.trace_id, CURL_TRACE);
    assert_eq!((client.trace_id, client.parent_span_id), (CURL_TRACE, front.span_id));
    assert_eq!((back.trace_id, back.parent_span_id), (CURL_TRACE, client.span_id));
    assert!(stitched(back) && !stitched(client) && !stitched(front));
    assert_eq!(p.stitch_stats().stitched, 1);
    let gaps = p.gaps.lock().unwrap().rows();
    let kinds: Vec<GapKind> = gaps.iter().map(|g| g.0.kind).collect();
    assert!(kinds.contains(&GapKind::MissingInboundContext), "the hop is still a gap: {kinds:?}");
    let missing = gaps.iter().find(|g| g.0.kind == GapKind::MissingInboundContext).unwrap();
    assert_eq!(missing.1.example_trace_id, crate::model::span::hex(&CURL_TRACE), "/gaps names the stitched trace");
    let back_gap = back.attributes.iter().find(|a| a.key == "hoptrace.gap.kind").map(|a| a.value.clone());
    assert_eq!(back_gap, Some(AnyValue::Str("missing_inbound_context".into())));
    // The service graph: the pair is one request (counted by the server side) with both
    // durations; curl's request to the front comes from an unnamed caller (a virtual node).
    let g = p.red.graph_snapshot();
    let pair = g.edges.iter().find(|e| e.labels[2].is_empty()).expect("same-node edge");
    assert_eq!((pair.total, pair.server.count, pair.client.count), (1, 1, 1));
    let entry = g.edges.iter().find(|e| &*e.labels[0] == "127.0.0.1").expect("caller by address");
    assert_eq!((&*entry.labels[2], entry.total), ("virtual_node", 1));
}

/// Records from two CPUs can arrive out of order: the client span first leaves an offer
/// the server span takes at once (nothing held).
#[test]
fn client_span_first_leaves_an_offer() {
    let mut p = pipeline(TraceConfig::default());
    let mut spans = Vec::new();
    let (_, call, back_in) = ends();
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Ingress, &seg(21, 9, 0, CALL), &mut spans);
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, OK), &mut spans);
    assert_eq!(spans.len(), 1, "the client span is not held");
    p.on_segments(&back_in, Direction::Egress, &seg(30, 9, 0, OK), &mut spans);
    let client = one(&spans, FRONT, SpanKind::Client);
    let back = one(&spans, BACK, SpanKind::Server);
    assert_eq!((back.trace_id, back.parent_span_id), (client.trace_id, client.span_id));
    assert!(stitched(back));
    assert_eq!(p.stitch_stats().stitched, 1);
}

/// Second exchange on a kept-alive connection pairs with the second one, not the first.
#[test]
fn pairs_by_order_on_a_kept_alive_connection() {
    let mut p = pipeline(TraceConfig::default());
    let mut spans = Vec::new();
    let (_, call, back_in) = ends();
    let n = CALL.len() as u64;
    let m = OK.len() as u64;
    for (i, t) in [(0u64, 100u64), (1, 200)] {
        p.on_segments(&call, Direction::Egress, &seg(t, 7, i * n, CALL), &mut spans);
        p.on_segments(&back_in, Direction::Ingress, &seg(t + 1, 9, i * n, CALL), &mut spans);
        p.on_segments(&back_in, Direction::Egress, &seg(t + 10, 9, i * m, OK), &mut spans);
        p.on_segments(&call, Direction::Ingress, &seg(t + 11, 7, i * m, OK), &mut spans);
    }
    assert_eq!(spans.len(), 4);
    let clients: Vec<&SpanRecord> = spans.iter().filter(|s| s.kind == SpanKind::Client).collect();
    let servers: Vec<&SpanRecord> = spans.iter().filter(|s| s.kind == SpanKind::Server).collect();
    for (c, s) in clients.iter().zip(&servers) {
        assert_eq!((s.trace_id, s.parent_span_id), (c.trace_id, c.span_id));
        assert!(s.start_unix_ns >= c.start_unix_ns && s.end_unix_ns <= c.end_unix_ns);
    }
    assert_eq!(p.stitch_stats().stitched, 2);
}

/// Pipelined requests: pairing by order is not trusted; nothing stitched, all counted.
#[test]
fn pipelined_exchanges_are_never_stitched() {
    let mut p = pipeline(TraceConfig::default());
    let mut spans = Vec::new();
    let (_, call, back_in) = ends();
    let two = [CALL, CALL].concat();
    let oks = [OK, OK].concat();
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, &two), &mut spans);
    p.on_segments(&back_in, Direction::Ingress, &seg(21, 9, 0, &two), &mut spans);
    p.on_segments(&back_in, Direction::Egress, &seg(30, 9, 0, &oks), &mut spans);
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, &oks), &mut spans);
    p.flush(&mut spans);
    assert_eq!(spans.len(), 4);
    assert!(spans.iter().all(|s| s.is_root() && !stitched(s)), "{spans:#?}");
    assert_eq!(p.stitch_stats().stitched, 0);
    assert_eq!(p.stitch_stats().ambiguous, 2);
}

/// A request that carried trace context — even another trace's — is never stitched.
#[test]
fn a_request_with_context_is_never_stitched() {
    // The caller creates context while serving nothing: it would count as instrumented.
    let mut p = pipeline(TraceConfig { suppress_instrumented: false, ..TraceConfig::default() });
    let mut spans = Vec::new();
    let (_, call, back_in) = ends();
    let with = b"GET /out HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, with), &mut spans);
    p.on_segments(&back_in, Direction::Ingress, &seg(21, 9, 0, with), &mut spans);
    p.on_segments(&back_in, Direction::Egress, &seg(30, 9, 0, OK), &mut spans);
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, OK), &mut spans);
    assert_eq!(spans.len(), 2);
    let back = one(&spans, BACK, SpanKind::Server);
    assert!(!stitched(back));
    assert_eq!(back.parent_span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
    let s = p.stitch_stats();
    assert_eq!((s.stitched, s.ambiguous, s.mismatched, s.overflow), (0, 0, 0, 0));
}

/// Another connection (another client port) never pairs; a held span whose client span
/// never comes goes out unstitched at the hold timeout, counted.
#[test]
fn no_stitch_across_connections_and_held_spans_expire() {
    let cfg = TraceConfig { hold_timeout: Duration::ZERO, ..TraceConfig::default() };
    let mut p = pipeline(cfg);
    let mut spans = Vec::new();
    let (_, call, _) = ends();
    let back_other = conn_of(BACK, 4, Role::Server, "127.0.0.1:9000", "127.0.0.1:50002");
    let other_client = conn_of(FRONT, 5, Role::Client, "127.0.0.1:50002", "127.0.0.1:9000");
    p.on_segments(&other_client, Direction::Egress, &seg(5, 8, 0, b"X"), &mut spans);
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, CALL), &mut spans);
    p.on_segments(&back_other, Direction::Ingress, &seg(21, 9, 0, CALL), &mut spans);
    p.on_segments(&back_other, Direction::Egress, &seg(30, 9, 0, OK), &mut spans);
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, OK), &mut spans);
    assert_eq!(spans.len(), 1, "only the client span: the server span waits for its own");
    std::thread::sleep(Duration::from_millis(2));
    p.tick(&mut spans);
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.is_root() && !stitched(s)));
    let s = p.stitch_stats();
    assert_eq!((s.stitched, s.expired), (0, 1));
}

/// Timestamps that contradict the pairing (a reused tuple, lost records): not stitched.
#[test]
fn contradicting_timestamps_are_not_stitched() {
    let mut p = pipeline(TraceConfig::default());
    let mut spans = Vec::new();
    let (_, call, back_in) = ends();
    // The client wrote its request after the server had read one.
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Ingress, &seg(10, 9, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Egress, &seg(12, 9, 0, OK), &mut spans);
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, OK), &mut spans);
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| !stitched(s)));
    assert_eq!(p.stitch_stats().mismatched, 1);
}

/// A chain on one node where nobody sends context (curl without a header → front →
/// inventory): the inventory span moves into the front's new trace while that trace is
/// itself held for curl's span; everything ends in curl's trace.
#[test]
fn chained_stitches_end_in_the_first_callers_trace() {
    let mut p = pipeline(TraceConfig::default());
    let mut spans = Vec::new();
    let (front_in, call, back_in) = ends();
    let curl = conn_of(5050, 9, Role::Client, "127.0.0.1:40000", "127.0.0.1:8000");
    let plain = b"GET /in HTTP/1.1\r\nHost: a\r\n\r\n";
    p.on_segments(&curl, Direction::Egress, &seg(5, 3, 0, plain), &mut spans);
    p.on_segments(&front_in, Direction::Ingress, &seg(10, 7, 0, plain), &mut spans);
    p.on_segments(&call, Direction::Egress, &seg(20, 7, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Ingress, &seg(21, 9, 0, CALL), &mut spans);
    p.on_segments(&back_in, Direction::Egress, &seg(30, 9, 0, OK), &mut spans);
    p.on_segments(&call, Direction::Ingress, &seg(31, 7, 0, OK), &mut spans);
    p.on_segments(&front_in, Direction::Egress, &seg(40, 7, 0, OK), &mut spans);
    assert!(spans.is_empty(), "both server traces wait for curl's span: {spans:#?}");
    p.on_segments(&curl, Direction::Ingress, &seg(41, 3, 0, OK), &mut spans);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let c = one(&spans, 5050, SpanKind::Client);
    let fs = one(&spans, FRONT, SpanKind::Server);
    let fc = one(&spans, FRONT, SpanKind::Client);
    let b = one(&spans, BACK, SpanKind::Server);
    assert!(spans.iter().all(|s| s.trace_id == c.trace_id), "{spans:#?}");
    assert_eq!((fs.parent_span_id, fc.parent_span_id, b.parent_span_id), (c.span_id, fs.span_id, fc.span_id));
    assert!(stitched(fs) && stitched(b));
    assert_eq!(p.stitch_stats().stitched, 2);
}
