//! Shared by the test modules: `hoptrace run` with the OTLP/JSON file sink and the spans
//! it exported (here), the agent's HTTP endpoint and a keep-alive client (`endpoint`).

mod endpoint;

pub use endpoint::*;

use std::{collections::HashMap, fs, path::Path, process::Command};

use hoptrace_e2e::*;
use serde_json::Value;

/// One exported span, flattened from OTLP/JSON.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub resource: HashMap<String, Value>,
    pub kind: u64,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub start: u64,
    pub end: u64,
    pub attrs: HashMap<String, Value>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: u64,
    /// Span event names with their attributes.
    pub events: Vec<(String, HashMap<String, Value>)>,
    /// Links as (trace id, span id, trace state).
    pub links: Vec<(String, String, String)>,
}

pub fn attr_map(list: &Value) -> HashMap<String, Value> {
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

pub fn parse_spans(text: &str) -> Vec<Span> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let req: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not OTLP/JSON ({e}): {line}"));
        for rs in req["resourceSpans"].as_array().expect("resourceSpans") {
            let resource = attr_map(&rs["resource"]["attributes"]);
            let service = resource.get("service.name").and_then(Value::as_str).unwrap_or_default().to_string();
            for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                for s in ss["spans"].as_array().expect("spans") {
                    let num =
                        |k: &str| s[k].as_str().map(|v| v.parse().unwrap()).or_else(|| s[k].as_u64()).unwrap_or(0);
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
                        status: s["status"]["code"].as_u64().unwrap_or(0),
                        events: s["events"]
                            .as_array()
                            .map(|evs| {
                                evs.iter()
                                    .map(|e| {
                                        (e["name"].as_str().unwrap_or_default().to_string(), attr_map(&e["attributes"]))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        links: s["links"]
                            .as_array()
                            .map(|ls| {
                                ls.iter()
                                    .map(|l| {
                                        let f = |k: &str| l[k].as_str().unwrap_or_default().to_string();
                                        (f("traceId"), f("spanId"), f("traceState"))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                }
            }
        }
    }
    out
}

/// OTLP/JSON writes 64-bit integers as strings.
pub fn int(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

pub const SERVER: u64 = 2;
pub const CLIENT: u64 = 3;
pub const PRODUCER: u64 = 4;
pub const CONSUMER: u64 = 5;

/// Starts `hoptrace run` on the given ports with OTLP/JSON into a file; waits for ready.
pub fn start_run(ports: &[u16], out: &Path) -> Running {
    spawn_run(ports, out, &[])
}

/// Like [`start_run`], with the agent's HTTP endpoint (`/metrics`, `/gaps`) on
/// 127.0.0.1:`listen` and `extra` further `hoptrace run` arguments.
pub fn start_run_listening(ports: &[u16], out: &Path, listen: u16, extra: &[&str]) -> Running {
    let listen = listen_args(listen);
    let mut args: Vec<&str> = vec![&listen[0], &listen[1]];
    args.extend_from_slice(extra);
    spawn_run(ports, out, &args)
}

fn spawn_run(ports: &[u16], out: &Path, args: &[&str]) -> Running {
    let mut cmd = Command::new(hoptrace_bin());
    cmd.arg("run").arg("--output").arg(out);
    for p in ports {
        cmd.args(["--port", &p.to_string()]);
    }
    cmd.args(args);
    // No collector: the embedded OTLP/JSON sink. Make sure the environment does not say
    // otherwise.
    without_otel_env(&mut cmd);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    agent
}

/// The spans the agent has written to `out` so far: complete lines only, since it may be
/// in the middle of writing the next batch.
pub fn spans_in(out: &Path) -> Vec<Span> {
    let text = fs::read_to_string(out).unwrap_or_default();
    parse_spans(text.rfind('\n').map_or("", |i| &text[..=i]))
}

/// Waits until `check` holds for the spans in `out` (the agent writes a batch a second)
/// and returns them; panics with what it wrote after [`TIMEOUT`]. Tests wait for the
/// spans their traffic makes before stopping the agent, so that what they assert on was
/// seen by the agent, not merely sent.
pub fn wait_for_spans_in(out: &Path, what: &str, check: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let mut spans = Vec::new();
    if wait_until(TIMEOUT, || {
        spans = spans_in(out);
        check(&spans)
    }) {
        return spans;
    }
    panic!("the agent never wrote {what} to {} within {TIMEOUT:?}; it wrote:\n{}", out.display(), show(&spans))
}

pub fn stop(agent: Running) -> Finished {
    agent.signal(libc::SIGINT);
    let done = agent.finish(TIMEOUT);
    assert!(done.status.success(), "agent failed: {}", done.stderr);
    done
}

/// The JSON `stopped` log line of a finished agent (its final counters).
pub fn stopped_log(done: &Finished) -> Value {
    done.stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["msg"] == "stopped")
        .unwrap_or_else(|| panic!("no stopped log line:\n{}", done.stderr))
}

/// Spans as one line each, for failure messages.
pub fn show(spans: &[Span]) -> String {
    spans.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join("\n")
}
