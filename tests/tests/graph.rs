//! Same-node stitching and the service graph on the real kernel (issue 18): curl sends a
//! traceparent to an uninstrumented Python front, which calls an uninstrumented Python
//! backend on this node without forwarding it. The backend's SERVER span must land in
//! curl's trace under the front's CLIENT span, marked stitched, and the hop must still be
//! a `missing_inbound_context` gap; the edge front → inventory is on `/metrics` with the
//! servicegraph connector's names. Pipelined requests must never be stitched.

use std::{fs, time::Duration};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn config(dir: &TempDir, front: u16, inventory: u16) -> std::path::PathBuf {
    let path = dir.join("hoptrace.yaml");
    fs::write(
        &path,
        format!(
            "services:\n  - match: {{ port: {front} }}\n    attributes: {{ service.name: front, zone: Z1 }}\n  \
             - match: {{ port: {inventory} }}\n    attributes: {{ service.name: inventory, zone: Z6 }}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn backend_span_is_stitched_under_the_front_call_and_the_gap_stays() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", inventory.port())]);
    let dir = TempDir::new("graph-stitch");
    let cfg = config(&dir, front.port(), inventory.port());
    let out = dir.join("spans.jsonl");
    let listen = free_port();
    let agent =
        start_run_listening(&[front.port(), inventory.port()], &out, listen, &["--config", cfg.to_str().unwrap()]);
    let done = run(
        std::process::Command::new("curl")
            .args(["-sf", "-m", "5", "-H"])
            .arg(format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01"))
            .arg(format!("http://127.0.0.1:{}/orders/1", front.port())),
        Duration::from_secs(10),
    );
    assert!(done.status.success(), "curl: {}", done.stderr);
    let spans = wait_for_spans_in(&out, "the inventory SERVER span", |s| {
        s.iter().any(|s| s.kind == SERVER && s.service == "inventory")
    });
    let one = |kind: u64, service: &str| {
        let found: Vec<&Span> = spans.iter().filter(|s| s.kind == kind && s.service == service).collect();
        assert_eq!(found.len(), 1, "{kind} spans of {service}:\n{}", show(&spans));
        found[0].clone()
    };
    let front_server = one(SERVER, "front");
    let front_call = one(CLIENT, "front");
    let backend = one(SERVER, "inventory");
    assert_eq!(front_server.trace_id, TRACE);
    assert_eq!((front_call.trace_id.as_str(), &front_call.parent), (TRACE, &front_server.span_id));
    assert_eq!(
        (backend.trace_id.as_str(), &backend.parent),
        (TRACE, &front_call.span_id),
        "the backend's span is in curl's trace, under the front's call:\n{}",
        show(&spans)
    );
    assert_eq!(backend.attrs.get("hoptrace.context.stitched"), Some(&Value::Bool(true)), "{backend:?}");
    assert!(!front_call.attrs.contains_key("hoptrace.context.stitched"));
    assert_eq!(
        backend.attrs.get("hoptrace.gap.kind").and_then(Value::as_str),
        Some("missing_inbound_context"),
        "the hop is still a gap: {backend:?}"
    );
    assert!(backend.start >= front_call.start && backend.end <= front_call.end, "inside the call's window");

    let pair = "client=\"front\",server=\"inventory\",connection_type=\"\",client_zone=\"Z1\",server_zone=\"Z6\"";
    let m = wait_metrics(listen, TIMEOUT, "the front → inventory edge", |m| {
        m.0.contains(&format!("traces_service_graph_request_total{{{pair}}} 1\n"))
    });
    assert_eq!(m.get(&format!("traces_service_graph_request_failed_total{{{pair}}}")), 0);
    assert_eq!(m.get(&format!("traces_service_graph_request_server_seconds_count{{{pair}}}")), 1);
    assert_eq!(m.get(&format!("traces_service_graph_request_client_seconds_count{{{pair}}}")), 1);
    assert_eq!(m.get("hoptrace_stitch_total{outcome=\"stitched\"}"), 1);
    assert_eq!(m.get("hoptrace_stitch_total{outcome=\"ambiguous\"}"), 0);
    let gap =
        m.0.lines()
            .find(|l| {
                l.starts_with("hoptrace_propagation_gaps_total{kind=\"missing_inbound_context\",service=\"inventory\"")
            })
            .unwrap_or_else(|| panic!("no missing_inbound_context gap for inventory:\n{}", m.0));
    assert!(gap.contains("peer_service=\"front\"") && gap.ends_with(" 1"), "{gap}");
    // /gaps names the trace the backend's span is in now: the investigation starts there.
    let gaps: Value = serde_json::from_str(&http_get_body(listen, "/gaps")).unwrap();
    let row = gaps["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "missing_inbound_context" && g["service"] == "inventory")
        .unwrap_or_else(|| panic!("{gaps}"));
    assert_eq!(row["example_trace_id"], TRACE, "{row}");
    stop(agent);
}

#[test]
fn pipelined_requests_are_never_stitched() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    let dir = TempDir::new("graph-pipelined");
    let cfg = config(&dir, free_port(), inventory.port());
    let out = dir.join("spans.jsonl");
    let listen = free_port();
    let agent = start_run_listening(&[inventory.port()], &out, listen, &["--config", cfg.to_str().unwrap()]);
    // This test process is the client: both ends are on this node, no trace context, and
    // the second request is written before the first response is read.
    let mut c = KeepAlive::connect(inventory.port());
    c.send_raw(b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((c.read_response(), c.read_response()), (200, 200));
    // And one plain request on its own connection, which does stitch: the agent saw this
    // client's side (otherwise not stitching would prove nothing).
    let mut d = KeepAlive::connect(inventory.port());
    assert_eq!(d.get("/p/3", &[]), 200);
    let spans = wait_for_spans_in(&out, "three inventory SERVER spans", |s| {
        s.iter().filter(|s| s.kind == SERVER && s.service == "inventory").count() >= 3
    });
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == SERVER && s.service == "inventory").collect();
    let stitched: Vec<&&Span> =
        servers.iter().filter(|s| s.attrs.get("hoptrace.context.stitched") == Some(&Value::Bool(true))).collect();
    assert_eq!(stitched.len(), 1, "only the sequential request:\n{}", show(&spans));
    let pipelined: Vec<&&Span> = servers.iter().filter(|s| !stitched.iter().any(|t| t.span_id == s.span_id)).collect();
    assert_eq!(pipelined.len(), 2);
    for s in &pipelined {
        assert!(s.parent.is_empty() || s.parent == "0000000000000000", "a pipelined request has no parent: {s:?}");
    }
    let m = wait_metrics(listen, TIMEOUT, "two ambiguous exchanges", |m| {
        m.0.contains("hoptrace_stitch_total{outcome=\"ambiguous\"} 2\n")
    });
    assert_eq!(m.get("hoptrace_stitch_total{outcome=\"stitched\"}"), 1);
    stop(agent);
}
