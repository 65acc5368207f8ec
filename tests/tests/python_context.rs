//! Parent linking by Python Context in async services without an SDK (issue 22), on the
//! real kernel: FastAPI on uvicorn (tests/fixtures/async_service.py) under concurrent
//! keep-alive connections, each request with its own traceparent and an `x-req: r<i>`
//! header the service copies into its backend call. The agent records `x-req` on both
//! spans (`request_header_attributes`), so every CLIENT span says which request it was
//! made for: it is *linked right* when it is the child of that request's SERVER span
//! (same trace, parent span id), *wrong* when it is the child of any other span.
//! Thresholds: at least 95% linked right and 0 wrong; the rest marked unresolved (none
//! left as plain roots). Two CPython builds: Debian's stripped, statically linked
//! `/usr/bin/python3.11` and a 3.12 with a shared libpython (venvs made by
//! `cargo xtask setup`, see tests/requirements-async.txt).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const DEBIAN_311: &str = "target/pyenv-debian3.11";
const PY_312: &str = "target/pyenv-3.12";

/// One load run: what to call, how many requests over how many connections.
struct Load {
    venv: &'static str,
    /// `/async`, `/streams`, `/sync`, `/bg`, `/spawn` (see the fixture).
    path: &'static str,
    requests: usize,
    connections: usize,
    pipelined: bool,
    /// The service starts after the agent (probe attached at its first connection).
    late: bool,
}

/// What became of the service's CLIENT spans.
#[derive(Debug)]
struct Outcome {
    calls: usize,
    right: usize,
    wrong: Vec<String>,
    unresolved: usize,
    root: usize,
    /// `hoptrace_parent_links_total` of the service's CLIENT spans: linked, unresolved, root.
    coverage: (u64, u64, u64),
    stopped: Value,
}

fn interpreter(venv: &str) -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(venv).join("bin/python");
    assert!(python.exists(), "no venv at {}: run `cargo xtask setup` (tests/requirements-async.txt)", python.display());
    python
}

fn start_service(venv: &str, port: u16, backend: u16) -> PyServer {
    start_service_tls(venv, port, backend, 0)
}

/// With an HTTPS backend on `tls_backend` for `/tls` (0: none).
fn start_service_tls(venv: &str, port: u16, backend: u16, tls_backend: u16) -> PyServer {
    let mut cmd = Command::new(interpreter(venv));
    cmd.arg(fixture("async_service.py")).args([&port.to_string(), &backend.to_string(), &tls_backend.to_string()]);
    cmd.env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    PyServer::start_cmd(&mut cmd)
}

fn config_file(dir: &TempDir) -> String {
    let path = dir.join("hoptrace.yaml");
    std::fs::write(&path, "traces:\n  request_header_attributes: { x-req: test.req }\n").expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

fn send_load(port: u16, load: &Load, prefix: &str) {
    let mut cmd = python("async_load.py");
    let (n, c) = (load.requests.to_string(), load.connections.to_string());
    cmd.args([&port.to_string(), load.path, &n, &c, prefix]);
    if load.pipelined {
        cmd.arg("pipelined");
    }
    run(&mut cmd, Duration::from_secs(120)).expect_success();
}

/// The service's CLIENT spans carrying `test.req` (its backend calls).
fn calls(spans: &[Span], backend: u16) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.kind == CLIENT && int(s.attrs.get("server.port")) == Some(i64::from(backend)))
        .filter(|s| s.attrs.contains_key("test.req"))
        .collect()
}

fn servers(spans: &[Span], port: u16) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind == SERVER && int(s.attrs.get("server.port")) == Some(i64::from(port))).collect()
}

/// Sorts every call: the child of its own request's SERVER span, of another span, or none.
fn classify(spans: &[Span], port: u16, backend: u16, prefix: &str) -> (usize, Vec<String>, usize, usize) {
    let servers = servers(spans, port);
    let (mut right, mut wrong, mut unresolved, mut root) = (0, Vec::new(), 0, 0);
    for c in calls(spans, backend) {
        let req = c.attrs["test.req"].as_str().unwrap_or_default();
        let i = req.trim_start_matches('r').parse::<u32>().expect("x-req is r<i>");
        let trace = format!("{prefix}{i:08x}");
        if c.parent.is_empty() {
            if c.attrs.contains_key("hoptrace.parent.unresolved") {
                unresolved += 1;
            } else {
                root += 1;
            }
        } else if servers.iter().any(|s| s.trace_id == trace && c.trace_id == trace && c.parent == s.span_id) {
            right += 1;
        } else {
            wrong.push(format!("call for {req} linked to trace {} parent {}", c.trace_id, c.parent));
        }
    }
    (right, wrong, unresolved, root)
}

fn link_counters(listen: u16, service: &str, calls: u64) -> (u64, u64, u64) {
    let series = |outcome: &str| {
        format!("hoptrace_parent_links_total{{service_name=\"{service}\",span_kind=\"client\",outcome=\"{outcome}\"}}")
    };
    let get = |m: &Metrics| (m.get(&series("linked")), m.get(&series("unresolved")), m.get(&series("root")));
    let m = wait_metrics(listen, TIMEOUT, "the service's parent link counters", |m| {
        let (a, b, c) = get(m);
        a + b + c >= calls
    });
    get(&m)
}

/// The processes the agent's log says it attached the Python probe to.
fn attached_pids(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == "Python context probe attached")
        .filter_map(|v| v["pid"].as_u64())
        .collect()
}

/// Runs the service under the agent, sends the load, and sorts its calls.
fn measure(load: &Load) -> Outcome {
    require_root();
    let plain = PyServer::start("chain_service.py", &["0"]);
    let tls = (load.path == "/tls").then(|| Nginx::start_tls(free_port(), r#"location / { return 200 "ok\n"; }"#));
    // The server the calls go to: the HTTPS one for `/tls`.
    let backend = tls.as_ref().map_or(plain.port(), Nginx::port);
    let dir = TempDir::new("python-context");
    let out = dir.join("spans.jsonl");
    let config = config_file(&dir);
    let listen = free_port();
    let (app, agent) = if load.late {
        let port = free_port();
        let agent = start_run_listening(&[port, backend], &out, listen, &["--config", &config]);
        let app = start_service_tls(load.venv, port, plain.port(), backend);
        // The first connection attaches the probe (requests without a call: not counted).
        send_load(app.port(), &Load { path: "/plain", requests: 4, connections: 1, ..*load }, &"f".repeat(24));
        (app, agent)
    } else {
        let app = start_service_tls(load.venv, 0, plain.port(), backend);
        let agent = start_run_listening(&[app.port(), backend], &out, listen, &["--config", &config]);
        (app, agent)
    };
    let probed = |agent: &Running| attached_pids(&agent.stderr()).contains(&u64::from(app.pid()));
    assert!(wait_until(TIMEOUT, || probed(&agent)), "no probe for the service:\n{}", agent.stderr());
    let prefix = format!("{:0>24}", &unique_marker("")[2..]);
    send_load(app.port(), load, &prefix);
    let n = load.requests;
    wait_for_spans_in(&out, &format!("{n} SERVER spans and {n} backend calls"), |spans| {
        servers(spans, app.port()).len() >= n && calls(spans, backend).len() >= n
    });
    let coverage = link_counters(listen, "async_service", n as u64);
    let done = stop(agent);
    let spans = spans_in(&out);
    let (right, wrong, unresolved, root) = classify(&spans, app.port(), backend, &prefix);
    let outcome = Outcome {
        calls: calls(&spans, backend).len(),
        right,
        wrong,
        unresolved,
        root,
        coverage,
        stopped: stopped_log(&done),
    };
    eprintln!("{} {} c={}: {outcome:?}", load.venv, load.path, load.connections);
    outcome
}

/// At least 95% linked to their own request, none to another, the rest unresolved; the
/// `/metrics` coverage counters say the same.
fn assert_linked(load: &Load) -> Outcome {
    let o = measure(load);
    let label = format!("{} {} c={}", load.venv, load.path, load.connections);
    assert_eq!(o.calls, load.requests, "{label}: one backend call per request");
    assert!(o.wrong.is_empty(), "{label}: calls linked to the wrong request: {:?}", o.wrong);
    assert!(o.right * 100 >= o.calls * 95, "{label}: {} of {} calls linked: {o:?}", o.right, o.calls);
    assert_eq!(o.root, 0, "{label}: calls left as plain roots (not marked unresolved): {o:?}");
    assert_eq!(o.coverage, (o.right as u64, o.unresolved as u64, 0), "{label}: /metrics parent links");
    assert!(o.stopped["traces"]["parents_linked_context"].as_u64() >= Some(o.right as u64), "{}", o.stopped);
    o
}

const fn load(venv: &'static str, path: &'static str, connections: usize) -> Load {
    Load { venv, path, requests: 400, connections, pipelined: false, late: false }
}

#[test]
fn debian_python311_async_httpx_8_connections() {
    assert_linked(&load(DEBIAN_311, "/async", 8));
}

#[test]
fn debian_python311_async_httpx_32_connections() {
    assert_linked(&load(DEBIAN_311, "/async", 32));
}

#[test]
fn debian_python311_asyncio_streams_8_and_32_connections() {
    assert_linked(&load(DEBIAN_311, "/streams", 8));
    assert_linked(&load(DEBIAN_311, "/streams", 32));
}

/// A `def` endpoint: uvicorn reads the request on the loop thread, Starlette runs the
/// endpoint on a thread-pool thread, in a copy of the request task's Context.
#[test]
fn debian_python311_def_endpoint_requests_on_the_thread_pool() {
    assert_linked(&load(DEBIAN_311, "/sync", 8));
    assert_linked(&load(DEBIAN_311, "/sync", 32));
}

/// A service started after the agent gets the probe at its first accepted connection.
#[test]
fn a_service_started_after_the_agent_is_probed_at_its_first_connection() {
    assert_linked(&Load { late: true, ..load(DEBIAN_311, "/async", 8) });
}

/// A `def` endpoint calling an HTTPS backend with `requests`: the OpenSSL probes give the
/// plaintext, written in the thread-pool work's Context.
#[test]
fn debian_python311_https_calls_from_the_thread_pool() {
    assert_linked(&load(DEBIAN_311, "/tls", 8));
}

/// A call made by a task the endpoint created and awaited.
#[test]
fn debian_python311_call_in_a_created_task() {
    assert_linked(&load(DEBIAN_311, "/spawn", 8));
}

#[test]
fn python312_async_httpx_streams_and_thread_pool() {
    assert_linked(&load(PY_312, "/async", 8));
    assert_linked(&load(PY_312, "/streams", 32));
    assert_linked(&load(PY_312, "/sync", 8));
}

/// A BackgroundTask's call runs after the response went out, in the request's Context:
/// still its child (a late call), never another request's.
#[test]
fn background_task_calls_are_never_linked_to_another_request() {
    assert_linked(&load(DEBIAN_311, "/bg", 8));
}

/// Two requests per write on every connection: the second's task is created inside the
/// first's Context when its response ends. No call may be linked to the wrong request;
/// what cannot be told apart is marked unresolved.
#[test]
fn pipelined_requests_are_never_linked_to_the_wrong_request() {
    for path in ["/async", "/bg", "/sync"] {
        let o = measure(&Load { pipelined: true, requests: 200, ..load(DEBIAN_311, path, 8) });
        assert_eq!(o.calls, 200, "{path}: one backend call per request");
        assert!(o.wrong.is_empty(), "{path} pipelined: calls linked to the wrong request: {:?}", o.wrong);
        assert_eq!(o.right + o.unresolved, o.calls, "{path} pipelined: the rest marked unresolved: {o:?}");
        assert!(o.right > 0, "{path} pipelined: nothing linked: {o:?}");
    }
}

/// The probe goes to Python processes only: a non-Python process running while the agent
/// starts gets none, a Python one does, and every process named in a "probe attached" line
/// runs CPython.
#[test]
fn only_python_processes_get_the_probe() {
    require_root();
    let sleeper = Running::spawn(Command::new("sleep").arg("60"));
    let py = start_service(DEBIAN_311, 0, free_port());
    let dir = TempDir::new("python-context-probe");
    let out = dir.join("spans.jsonl");
    let listen = free_port();
    let agent = start_run_listening(&[free_port()], &out, listen, &[]);
    let log = agent.stderr();
    let attached = attached_pids(&log);
    assert!(!attached.contains(&u64::from(sleeper.pid())), "sleep got a Python probe:\n{log}");
    assert!(attached.contains(&u64::from(py.pid())), "the Python service got no probe:\n{log}");
    for pid in &attached {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        assert!(maps.is_empty() || maps.contains("python3"), "pid {pid} is not CPython:\n{log}");
    }
    let m = Metrics::scrape(listen);
    assert!(m.get("hoptrace_python_context_processes_attached") >= 1, "{}", m.0);
    stop(agent);
    sleeper.signal(libc::SIGKILL);
}
