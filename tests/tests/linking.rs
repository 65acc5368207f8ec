//! Thread-per-request parent linking on the real kernel, for every server model a service
//! without an SDK runs on (issue 21): each front request carries its own traceparent, and
//! every CLIENT span the front makes must be the child of the SERVER span of the request
//! it was made for — same trace id, parent span id, and a start inside that request's
//! window (so a call linked to the wrong request is caught). Exact counts, 20 requests,
//! and the same counts in `hoptrace_parent_links_total` on `/metrics`.

use std::{process::Command, time::Duration};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const REQUESTS: usize = 20;

/// How the front serves, and how it calls its backends.
struct Front {
    /// `single`, `threading` or `gunicorn` (see tests/fixtures/linking_service.py).
    model: &'static str,
    /// Responses left unread, closed when freed after the reply went out.
    unread: bool,
    /// Keep-alive from the client: all requests on one connection (the front speaks 1.1).
    keepalive: bool,
    /// Live backends called per request.
    backends: usize,
    /// A call per request to a port nobody listens on (connection refused).
    refused: bool,
}

impl Front {
    const fn new(model: &'static str) -> Front {
        Front { model, unread: false, keepalive: false, backends: 1, refused: false }
    }
}

/// What one run of the matrix produced.
struct Outcome {
    /// The front's CLIENT spans, and of those the ones linked to the right request.
    calls: usize,
    linked: usize,
    /// Linked calls that failed (connection refused).
    failed_linked: usize,
    stopped: Value,
    /// The front's `hoptrace_parent_links_total` for CLIENT spans: linked, unresolved, root.
    coverage: (u64, u64, u64),
}

/// The front's parent link counters on `/metrics` once `linked` reached `expected` (the
/// endpoint refreshes them once a second).
fn link_counters(listen: u16, service: &str, expected: u64) -> (u64, u64, u64) {
    let series = |outcome: &str| {
        format!("hoptrace_parent_links_total{{service_name=\"{service}\",span_kind=\"client\",outcome=\"{outcome}\"}}")
    };
    let mut m = Metrics::scrape(listen);
    wait_until(TIMEOUT, || {
        m = Metrics::scrape(listen);
        m.0.contains(&format!("{} {expected}\n", series("linked")))
    });
    (m.get(&series("linked")), m.get(&series("unresolved")), m.get(&series("root")))
}

fn is_front_server(s: &Span, port: u16) -> bool {
    s.kind == SERVER && int(s.attrs.get("server.port")) == Some(i64::from(port))
}

/// CLIENT spans of the front: every call to a backend or to the refused port.
fn is_front_call(s: &Span, targets: &[u16]) -> bool {
    s.kind == CLIENT && int(s.attrs.get("server.port")).is_some_and(|p| targets.iter().any(|t| i64::from(*t) == p))
}

/// Whether `call` is the child of the front SERVER span it was made under.
fn linked(call: &Span, servers: &[&Span]) -> bool {
    servers.iter().any(|s| {
        s.trace_id == call.trace_id && s.span_id == call.parent && s.start <= call.start && call.start <= s.end
    })
}

fn start_front(front: &Front, urls: &[String]) -> PyServer {
    let mut args: Vec<&str> = vec![front.model, "0"];
    if front.unread {
        args.push("--unread");
    }
    if front.keepalive {
        args.push("--http11");
    }
    args.extend(urls.iter().map(String::as_str));
    if front.model == "gunicorn" {
        PyServer::start_venv("linking_service.py", &args)
    } else {
        PyServer::start("linking_service.py", &args)
    }
}

fn send_requests(port: u16, prefix: &str, keepalive: bool) {
    let mode = if keepalive { "keepalive" } else { "fresh" };
    let n = REQUESTS.to_string();
    let mut cmd: Command = python("linking_client.py");
    cmd.args([&port.to_string(), &n, prefix, mode]);
    run(&mut cmd, Duration::from_secs(60)).expect_success();
}

/// Runs the front under the agent, sends the requests, and counts what was linked.
fn run_front(front: &Front, label: &str) -> Outcome {
    require_root();
    let backends: Vec<PyServer> = (0..front.backends).map(|_| PyServer::start("chain_service.py", &["0"])).collect();
    let refused = free_port();
    let mut targets: Vec<u16> = backends.iter().map(PyServer::port).collect();
    let mut urls: Vec<String> = targets.iter().map(|p| format!("http://127.0.0.1:{p}/items/{label}")).collect();
    if front.refused {
        targets.push(refused);
        urls.push(format!("http://127.0.0.1:{refused}/down"));
    }
    let dir = TempDir::new(&format!("linking-{label}"));
    let out = dir.join("spans.jsonl");
    let fp = start_front(front, &urls);
    let mut ports = targets.clone();
    ports.push(fp.port());
    let listen = free_port();
    let agent = start_run_listening(&ports, &out, listen, &[]);
    // The trace ids say which request a span belongs to; unique per run.
    let prefix = format!("{:0>24}", &unique_marker("")[2..]);
    send_requests(fp.port(), &prefix, front.keepalive);
    let expected_calls = REQUESTS * targets.len();
    let what = format!("{REQUESTS} front SERVER spans and {expected_calls} CLIENT spans");
    wait_for_spans_in(&out, &what, |spans| {
        spans.iter().filter(|s| is_front_server(s, fp.port())).count() >= REQUESTS
            && spans.iter().filter(|s| is_front_call(s, &targets)).count() >= expected_calls
    });
    let spans = spans_in(&out);
    let service = spans.iter().find(|s| is_front_server(s, fp.port())).map(|s| s.service.clone()).unwrap_or_default();
    let coverage = link_counters(listen, &service, expected_calls as u64);
    let done = stop(agent);
    let spans = spans_in(&out);
    let servers: Vec<&Span> = spans.iter().filter(|s| is_front_server(s, fp.port())).collect();
    let mut traces: Vec<&str> = servers.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(
        (servers.len(), traces.len()),
        (REQUESTS, REQUESTS),
        "one SERVER span per request, each in its own trace:\n{}",
        show(&spans)
    );
    assert!(traces.iter().all(|t| t.starts_with(&prefix)), "every request continues its own trace");
    let calls: Vec<&Span> = spans.iter().filter(|s| is_front_call(s, &targets)).collect();
    let good: Vec<&&Span> = calls.iter().filter(|c| linked(c, &servers)).collect();
    let outcome = Outcome {
        calls: calls.len(),
        linked: good.len(),
        failed_linked: good.iter().filter(|c| int(c.attrs.get("server.port")) == Some(i64::from(refused))).count(),
        stopped: stopped_log(&done),
        coverage,
    };
    if outcome.linked != expected_calls {
        eprintln!("{}", show(&spans));
    }
    outcome
}

/// Every call linked, none marked unresolved, and the stop statistics agree.
fn assert_all_linked(front: &Front, label: &str) -> Outcome {
    let o = run_front(front, label);
    let expected = REQUESTS * (front.backends + usize::from(front.refused));
    assert_eq!((o.calls, o.linked), (expected, expected), "{label}: CLIENT spans, of them linked");
    assert_eq!(o.coverage, (expected as u64, 0, 0), "{label}: /metrics parent links (linked, unresolved, root)");
    assert_eq!(o.stopped["traces"]["parents_unresolved_concurrent"], 0, "{label}: {}", o.stopped);
    assert_eq!(o.stopped["traces"]["held_calls_expired"], 0, "{label}: {}", o.stopped);
    assert_eq!(o.stopped["traces"]["parents_linked_same_thread"].as_u64(), Some(expected as u64), "{label}");
    o
}

/// One thread serves every request in turn, each on a new connection, back to back.
#[test]
fn single_threaded_server() {
    assert_all_linked(&Front::new("single"), "single");
}

/// The case of issue 21: the responses are closed when freed, after the reply went out,
/// so each call completes while the thread is idle or already serving the next request.
#[test]
fn single_threaded_server_closing_responses_late() {
    let o = assert_all_linked(&Front { unread: true, ..Front::new("single") }, "late");
    assert!(o.stopped["traces"]["parents_linked_after_request"].as_u64().unwrap_or(0) > 0, "{}", o.stopped);
}

/// A new thread per connection.
#[test]
fn thread_per_request_server() {
    assert_all_linked(&Front::new("threading"), "threading");
}

/// Pre-fork: gunicorn with two sync worker processes taking turns.
#[test]
fn prefork_server() {
    assert_all_linked(&Front::new("gunicorn"), "prefork");
}

/// Two backends called per request: both calls are children of it.
#[test]
fn two_backends_per_request() {
    assert_all_linked(&Front { backends: 2, ..Front::new("single") }, "two");
}

/// A downstream call refused: its error CLIENT span is linked like a successful one.
#[test]
fn refused_downstream_call() {
    let o = assert_all_linked(&Front { refused: true, ..Front::new("single") }, "refused");
    assert_eq!(o.failed_linked, REQUESTS);
}

/// All requests on one keep-alive connection, back to back, responses freed late.
#[test]
fn keepalive_client_back_to_back() {
    assert_all_linked(&Front { keepalive: true, unread: true, ..Front::new("single") }, "keepalive");
}
