//! The pipeline on synthetic connections: what the kernel would have delivered.

use hoptrace_common::{Direction, Role, Syscall};

use super::*;
use crate::{
    capture::{
        conntrack::RoleSource,
        stream::{Segment, Stream},
    },
    gaps::GapKind,
};

const PID: u32 = 4242;
const TID: u32 = 4243;

fn conn(id: u64, role: Role, local: &str, remote: &str) -> Connection {
    conn_of(PID, id, role, local, remote)
}

/// A connection of process `pid` as the connection table hands it to the pipeline
/// (shared with the messaging tests).
pub(super) fn conn_of(pid: u32, id: u64, role: Role, local: &str, remote: &str) -> Connection {
    Connection {
        id,
        tuple: crate::capture::conntrack::Tuple { local: local.parse().unwrap(), remote: remote.parse().unwrap() },
        role,
        role_source: RoleSource::Syscall,
        via: if role == Role::Server { Syscall::Accept } else { Syscall::Connect },
        pid,
        ppid: 1,
        fd: 3,
        comm: "svc".into(),
        cgroup_id: 0,
        opened_ns: 0,
        last_seen: 0,
        streams: [Stream::default(), Stream::default()],
    }
}

fn seg(ts: u64, bytes: &[u8]) -> Vec<Segment> {
    vec![Segment::Data { offset: 0, ts_enter_ns: ts, ts_ns: ts + 1, tid: TID, bytes: bytes.to_vec() }]
}

fn pipeline() -> TracePipeline {
    TracePipeline::new(TraceConfig::default(), ResourceResolver::new(Vec::new(), Vec::new()))
}

const REQ: &[u8] =
    b"GET /in HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
const CALL: &[u8] = b"GET /out HTTP/1.1\r\nHost: b\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// One inbound request on the thread: the call made meanwhile is its child.
#[test]
fn call_on_the_serving_thread_is_a_child() {
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let server = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    p.on_segments(&server, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&client, Direction::Ingress, &seg(30, OK), &mut spans);
    assert!(spans.is_empty(), "the call waits for its inbound request");
    p.on_segments(&server, Direction::Egress, &seg(40, OK), &mut spans);
    let srv = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Server).expect("server span");
    let cli = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Client).expect("client span");
    assert_eq!((cli.trace_id, cli.parent_span_id), (srv.trace_id, srv.span_id));
    assert_eq!(p.stats.parents_linked_same_thread, 1);
    // The inbound request had context, the call none: a dropped-context hop.
    assert_eq!(p.stats.propagation_gaps, 1);
    let gaps = p.gaps.lock().unwrap().rows();
    assert_eq!(gaps[0].0.kind, GapKind::DroppedOutboundContext);
}

/// A scan of many distinct paths cannot grow routes (spans, metric labels) unbounded.
#[test]
fn routes_are_capped_per_service() {
    let cfg = TraceConfig { max_routes_per_service: 2, ..TraceConfig::default() };
    let mut p = TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new()));
    assert_eq!(p.route("svc", b"/a/1"), "/a/{id}");
    assert_eq!(p.route("svc", b"/b"), "/b");
    assert_eq!(p.route("svc", b"/a/2"), "/a/{id}", "a known route stays");
    assert_eq!(p.route("svc", b"/c"), ROUTE_OVERFLOW);
    assert_eq!(p.route("other", b"/c"), "/c", "the cap is per service");
    assert_eq!(p.stats.routes_overflowed, 1);
}

/// Two inbound requests overlapping on one thread (an event loop): the agent cannot
/// know which one the call belongs to and says so instead of guessing.
#[test]
fn overlapping_requests_on_one_thread_are_not_guessed() {
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let a = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let b = conn(3, Role::Server, "127.0.0.1:8000", "127.0.0.1:50002");
    let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    p.on_segments(&a, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_segments(&b, Direction::Ingress, &seg(11, REQ), &mut spans);
    p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&client, Direction::Ingress, &seg(30, OK), &mut spans);
    p.on_segments(&a, Direction::Egress, &seg(40, OK), &mut spans);
    p.on_segments(&b, Direction::Egress, &seg(41, OK), &mut spans);
    p.flush(&mut spans);
    let cli = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Client).expect("client span");
    assert!(cli.is_root(), "{cli:?}");
    let unresolved = cli.attributes.iter().find(|a| a.key == "hoptrace.parent.unresolved");
    assert_eq!(
        unresolved.map(|a| &a.value),
        Some(&crate::model::span::AnyValue::Str("concurrent_requests_on_thread".into()))
    );
    assert_eq!((p.stats.parents_linked_same_thread, p.stats.parents_unresolved_concurrent), (0, 1));
    assert_eq!(p.stats.propagation_gaps, 0, "an unattributable call is not judged");
}

/// The same two overlapping requests in an async Python service: each request's task
/// Context (the first copy after its read) is known, so the call made in a copy of the
/// second request's Context is that request's child, not unresolved.
#[test]
fn overlapping_requests_of_an_async_python_service_are_told_apart_by_context() {
    use crate::capture::events::PyContext;
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let a = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let b = conn(3, Role::Server, "127.0.0.1:8000", "127.0.0.1:50002");
    let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    let copy = |ts, context, parent| PyContext::Copied { pid: PID, tid: TID, ts_ns: ts, context, parent };
    p.on_py_context(&copy(1, 0x50, 0x40)); // the event loop's own housekeeping
    p.on_segments(&a, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_py_context(&copy(12, 0xa0, 0x40)); // request a's task
    p.on_segments(&b, Direction::Ingress, &seg(13, REQ), &mut spans);
    p.on_py_context(&copy(15, 0xb0, 0x40)); // request b's task
    p.on_py_context(&copy(16, 0xb1, 0xb0)); // a task b creates
    p.on_py_context(&PyContext::Write { pid: PID, tid: TID, ts_enter_ns: 20, conn_id: 2, context: 0xb1 });
    p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&client, Direction::Ingress, &seg(30, OK), &mut spans);
    p.on_segments(&a, Direction::Egress, &seg(40, OK), &mut spans);
    assert!(spans.iter().all(|s| s.kind != crate::model::span::SpanKind::Client), "held for request b");
    p.on_segments(&b, Direction::Egress, &seg(41, OK), &mut spans);
    let server_b = spans.iter().filter(|s| s.kind == crate::model::span::SpanKind::Server).nth(1).expect("b's span");
    let cli = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Client).expect("client span");
    assert_eq!(cli.parent_span_id, server_b.span_id);
    assert_eq!((p.stats.parents_linked_context, p.stats.parents_unresolved_concurrent), (1, 0));
    let st = p.python_stats();
    assert_eq!((st.claimed, st.inherited, st.writes_owned), (2, 1, 1));
}

/// In such a service, a call made in a Context no request owns is unresolved, never
/// guessed from its thread.
#[test]
fn an_unowned_call_of_an_async_python_service_is_unresolved() {
    use crate::capture::events::PyContext;
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let a = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    p.on_py_context(&PyContext::Copied { pid: PID, tid: TID, ts_ns: 1, context: 0x50, parent: 0x40 });
    p.on_segments(&a, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_py_context(&PyContext::Copied { pid: PID, tid: TID, ts_ns: 12, context: 0xa0, parent: 0x40 });
    p.on_py_context(&PyContext::Write { pid: PID, tid: TID, ts_enter_ns: 20, conn_id: 2, context: 0x40 });
    p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&client, Direction::Ingress, &seg(30, OK), &mut spans);
    let cli = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Client).expect("emitted at once");
    assert!(cli.is_root());
    let unresolved = cli.attributes.iter().find(|a| a.key == "hoptrace.parent.unresolved");
    assert_eq!(unresolved.map(|a| &a.value), Some(&crate::model::span::AnyValue::Str("python_context_unowned".into())));
    assert_eq!(p.stats.parents_unresolved_context, 1);
}

#[test]
fn an_instrumented_verdict_does_not_pass_to_a_reused_pid() {
    // This test process is real: /proc gives its start time.
    let me = std::process::id();
    let mut p = pipeline();
    let sdk_env = p.processes.get(me).expect("own /proc entry").otel_sdk_env;
    p.mark_instrumented(me, Instrumented::CreatesContext);
    assert!(p.is_instrumented(me));
    // A verdict about an earlier process that had this pid (another start time).
    let (why, start) = p.instrumented[&me];
    p.instrumented.insert(me, (why, start.wrapping_add(1)));
    assert_eq!(p.is_instrumented(me), sdk_env, "a reused pid inherited the verdict");
    // A pid whose process is gone keeps its verdict (its last spans may still come).
    p.mark_instrumented(PID, Instrumented::CreatesContext);
    assert!(p.is_instrumented(PID));
}

/// Response headers promising a body the caller never reads: the call ends at its close.
const UNREAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";

fn client_spans(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans.iter().filter(|s| s.kind == crate::model::span::SpanKind::Client).collect()
}

/// The single-threaded server of issue 21: each call's response is freed (its socket
/// closed) only after the request was answered — while the thread is idle, or serving
/// the next request. Each call is linked by its start to the request it was made for.
#[test]
fn a_call_completing_after_its_request_is_linked_by_its_start() {
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let first = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let second = conn(3, Role::Server, "127.0.0.1:8000", "127.0.0.1:50002");
    let (c1, c2) = (
        conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000"),
        conn(4, Role::Client, "127.0.0.1:50003", "127.0.0.1:9000"),
    );
    p.on_segments(&first, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_segments(&c1, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&c1, Direction::Ingress, &seg(30, UNREAD), &mut spans);
    p.on_segments(&first, Direction::Egress, &seg(40, OK), &mut spans);
    p.on_segments(&second, Direction::Ingress, &seg(50, REQ), &mut spans);
    // The first call's socket closes while the thread serves the second request.
    p.on_close(&c1, Some(55), &mut spans);
    p.on_segments(&c2, Direction::Egress, &seg(60, CALL), &mut spans);
    p.on_segments(&c2, Direction::Ingress, &seg(70, UNREAD), &mut spans);
    p.on_segments(&second, Direction::Egress, &seg(80, OK), &mut spans);
    // The second call's socket closes when the thread is idle.
    p.on_close(&c2, Some(90), &mut spans);
    let servers: Vec<&SpanRecord> = spans.iter().filter(|s| s.kind == crate::model::span::SpanKind::Server).collect();
    let clients = client_spans(&spans);
    assert_eq!((servers.len(), clients.len()), (2, 2));
    for (srv, start) in servers.iter().zip([20, 60]) {
        let cli = clients.iter().find(|c| c.parent_span_id == srv.span_id).expect("a child per request");
        assert_eq!(cli.trace_id, srv.trace_id);
        assert_eq!(cli.start_unix_ns, p.clock.to_unix_ns(start), "the call made while serving it");
    }
    assert_eq!((p.stats.parents_linked_same_thread, p.stats.parents_linked_after_request), (2, 2));
    assert_eq!(p.stats.held_calls_expired, 0);
}

/// The history is per thread of one process: a late call of another process whose thread
/// has the same id is not linked, and one that started before any request is a root.
#[test]
fn a_late_call_is_never_linked_across_processes_or_before_its_request() {
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let server = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let other = conn_of(PID + 1, 2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    let early = conn(4, Role::Client, "127.0.0.1:50003", "127.0.0.1:9000");
    p.on_segments(&early, Direction::Egress, &seg(5, CALL), &mut spans);
    p.on_segments(&server, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_segments(&other, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&other, Direction::Ingress, &seg(30, UNREAD), &mut spans);
    p.on_segments(&early, Direction::Ingress, &seg(31, UNREAD), &mut spans);
    p.on_segments(&server, Direction::Egress, &seg(40, OK), &mut spans);
    p.on_close(&other, Some(50), &mut spans);
    p.on_close(&early, Some(51), &mut spans);
    let clients = client_spans(&spans);
    assert_eq!(clients.len(), 2);
    assert!(clients.iter().all(|c| c.is_root()), "{clients:?}");
    assert_eq!(p.stats.parents_linked_same_thread, 0);
}

/// A late call that started while two requests overlapped on its thread: not guessed.
#[test]
fn a_late_call_from_overlapping_requests_is_unresolved() {
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    let a = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
    let b = conn(3, Role::Server, "127.0.0.1:8000", "127.0.0.1:50002");
    let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
    p.on_segments(&a, Direction::Ingress, &seg(10, REQ), &mut spans);
    p.on_segments(&b, Direction::Ingress, &seg(11, REQ), &mut spans);
    p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
    p.on_segments(&client, Direction::Ingress, &seg(30, UNREAD), &mut spans);
    p.on_segments(&a, Direction::Egress, &seg(40, OK), &mut spans);
    p.on_segments(&b, Direction::Egress, &seg(41, OK), &mut spans);
    p.on_close(&client, Some(50), &mut spans);
    let cli = client_spans(&spans)[0];
    assert!(cli.is_root(), "{cli:?}");
    let unresolved = cli.attributes.iter().find(|a| a.key == "hoptrace.parent.unresolved");
    assert_eq!(
        unresolved.map(|a| &a.value),
        Some(&crate::model::span::AnyValue::Str("concurrent_requests_on_thread".into()))
    );
    assert_eq!((p.stats.parents_linked_same_thread, p.stats.parents_unresolved_concurrent), (0, 1));
}

/// Callers from another node (not seen here, in an internal network) without context: one
/// `/gaps` row per caller IP, not one per ephemeral port.
#[test]
fn an_off_node_caller_is_one_gap_row_by_ip() {
    let mut p = pipeline();
    let mut spans: Vec<SpanRecord> = Vec::new();
    const NO_CONTEXT: &[u8] = b"GET /in HTTP/1.1\r\nHost: a\r\n\r\n";
    for (i, port) in [41000, 41001, 41002].into_iter().enumerate() {
        let server = conn(10 + i as u64, Role::Server, "10.0.0.1:8000", &format!("10.0.0.9:{port}"));
        p.on_segments(&server, Direction::Ingress, &seg(10, NO_CONTEXT), &mut spans);
        p.on_segments(&server, Direction::Egress, &seg(20, OK), &mut spans);
    }
    assert_eq!(p.stats.propagation_gaps, 3);
    let gaps = p.gaps.lock().unwrap().rows();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (gaps[0].0.kind, gaps[0].0.peer_service.as_str(), gaps[0].1.count),
        (GapKind::MissingInboundContext, "10.0.0.9", 3)
    );
}
