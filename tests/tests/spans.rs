//! `hoptrace run` on the real kernel: HTTP traffic between real processes becomes spans,
//! printed as OTLP/JSON (the default sink when no collector is configured).

use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use hoptrace_e2e::*;
use serde_json::Value;

/// One exported span, flattened from OTLP/JSON.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    resource: HashMap<String, Value>,
    kind: u64,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u64,
    end: u64,
    attrs: HashMap<String, Value>,
}

fn attr_map(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let v = kv["value"].as_object().and_then(|o| o.values().next().cloned()).unwrap_or(Value::Null);
                    (kv["key"].as_str().unwrap_or_default().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn parse_spans(text: &str) -> Vec<Span> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let req: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not OTLP/JSON ({e}): {line}"));
        for rs in req["resourceSpans"].as_array().expect("resourceSpans") {
            let resource = attr_map(&rs["resource"]["attributes"]);
            let service = resource.get("service.name").and_then(Value::as_str).unwrap_or_default().to_string();
            for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                for s in ss["spans"].as_array().expect("spans") {
                    let num = |k: &str| {
                        s[k].as_str().map(|v| v.parse().unwrap()).or_else(|| s[k].as_u64()).unwrap_or(0)
                    };
                    out.push(Span {
                        service: service.clone(),
                        resource: resource.clone(),
                        kind: s["kind"].as_u64().unwrap_or(0),
                        name: s["name"].as_str().unwrap_or_default().to_string(),
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_string(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_string(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_string(),
                        start: num("startTimeUnixNano"),
                        end: num("endTimeUnixNano"),
                        attrs: attr_map(&s["attributes"]),
                    });
                }
            }
        }
    }
    out
}

/// OTLP/JSON writes 64-bit integers as strings.
fn int(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// Starts `hoptrace run` on the given ports with OTLP/JSON into a file; waits for ready.
fn start_run(ports: &[u16], out: &std::path::Path) -> Running {
    let mut cmd = std::process::Command::new(hoptrace_bin());
    cmd.arg("run").arg("--output").arg(out);
    for p in ports {
        cmd.args(["--port", &p.to_string()]);
    }
    // No collector: the embedded OTLP/JSON sink. Make sure the environment does not say
    // otherwise.
    for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] {
        cmd.env_remove(var);
    }
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    agent
}

fn stop(agent: Running) -> Finished {
    agent.signal(libc::SIGINT);
    let done = agent.finish(TIMEOUT);
    assert!(done.status.success(), "agent failed: {}", done.stderr);
    done
}

/// The exchange on one keep-alive connection: request with `traceparent`, then without.
fn keepalive_pair(port: u16, traceparent: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for tp in [Some(traceparent), None] {
        let header = tp.map(|t| format!("traceparent: {t}\r\n")).unwrap_or_default();
        write!(s, "GET /ka HTTP/1.1\r\nHost: x\r\n{header}\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"ok\n\0") && !String::from_utf8_lossy(&got).ends_with("ok\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "server closed the keep-alive connection");
            got.extend_from_slice(&buf[..n]);
        }
    }
}

#[test]
fn spans_join_w3c_context_and_link_thread_per_request_calls() {
    require_root();
    let downstream = PyServer::start("chain_service.py", &["0"]);
    let front_port = free_port();
    let front = PyServer::start(
        "chain_service.py",
        &[&front_port.to_string(), &format!("http://127.0.0.1:{}", downstream.port())],
    );
    let dir = TempDir::new("spans");
    let out = dir.join("otlp.jsonl");
    let agent = start_run(&[front.port(), downstream.port()], &out);

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let traced = run(
        std::process::Command::new("curl").args([
            "-sf",
            "-H",
            &format!("traceparent: 00-{trace}-{parent}-01"),
            &format!("http://127.0.0.1:{}/orders/123", front.port()),
        ]),
        TIMEOUT,
    )
    .expect_success();
    assert_eq!(traced.stdout, "ok\n");
    keepalive_pair(downstream.port(), &format!("00-{trace}-00f067aa0ba902b7-01"));
    // Let the 1 s export batch go out before stopping (shutdown flushes too).
    std::thread::sleep(Duration::from_millis(300));
    stop(agent);

    let text = fs::read_to_string(&out).expect("OTLP/JSON output");
    assert!(!text.contains("s3cr3t-query-value"), "a query value left the process");
    let spans = parse_spans(&text);
    let show = || spans.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join("\n");

    // Front service: joins the incoming trace, parent = the header's parent id.
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "GET /orders/{id}")
        .unwrap_or_else(|| panic!("no server span for /orders:\n{}", show()));
    assert_eq!((server.trace_id.as_str(), server.parent.as_str()), (trace, parent), "{server:?}");
    assert_eq!(server.service, "chain_service");
    assert_eq!(int(server.attrs.get("http.response.status_code")), Some(200));
    assert_eq!(server.attrs["http.route"], Value::from("/orders/{id}"));
    assert_eq!(int(server.attrs.get("server.port")), Some(front.port() as i64));
    for (k, v) in [("process.runtime.name", "python"), ("telemetry.distro.name", "hoptrace")] {
        assert_eq!(server.resource.get(k), Some(&Value::from(v)), "{k} in {:?}", server.resource);
    }
    assert!(server.resource.contains_key("host.name"));
    assert_eq!(int(server.resource.get("process.pid")), Some(front.pid() as i64));

    // Its outbound call, made on the serving thread: a CLIENT child inside it.
    let client = spans
        .iter()
        .find(|s| s.kind == CLIENT && s.trace_id == trace && s.name == "GET /items/{id}")
        .unwrap_or_else(|| panic!("no client span from the front service:\n{}", show()));
    assert_eq!(client.parent, server.span_id, "client must be the server span's child");
    assert!(client.start >= server.start && client.end <= server.end, "{client:?} not inside {server:?}");
    assert_eq!(int(client.attrs.get("server.port")), Some(downstream.port() as i64));

    // Keep-alive: the second request had no traceparent and must not inherit the first's.
    let ka: Vec<&Span> = spans.iter().filter(|s| s.kind == SERVER && s.name == "GET /ka").collect();
    assert_eq!(ka.len(), 2, "{}", show());
    let with: Vec<&&Span> = ka.iter().filter(|s| s.trace_id == trace).collect();
    assert_eq!(with.len(), 1, "exactly one keep-alive request carried the trace: {ka:?}");
    assert_eq!(with[0].parent, "00f067aa0ba902b7");
    let without = ka.iter().find(|s| s.trace_id != trace).expect("second request: a new trace");
    assert!(without.parent.is_empty(), "{without:?}");
}
