//! `hoptrace run` on the real kernel: HTTP traffic between real processes becomes spans,
//! printed as OTLP/JSON (the default sink when no collector is configured).

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

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
    wait_for_spans_in(&out, "the /orders SERVER span, its CLIENT call and both keep-alive spans", |s| {
        s.iter().any(|s| s.kind == SERVER && s.name == "GET /orders/{id}")
            && s.iter().any(|s| s.kind == CLIENT && s.name == "GET /items/{id}")
            && s.iter().filter(|s| s.kind == SERVER && s.name == "GET /ka").count() >= 2
    });
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

#[test]
fn refused_connection_is_an_error_client_span_inside_its_request() {
    require_root();
    let closed_port = free_port(); // nothing listens here
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{closed_port}")]);
    let dir = TempDir::new("refused");
    let out = dir.join("otlp.jsonl");
    let agent = start_run(&[front.port(), closed_port], &out);

    // The front service's handler dies on the refused call: no response, connection closed.
    let _ = run(
        std::process::Command::new("curl").args(["-s", "-m", "5", &format!("http://127.0.0.1:{}/pay", front.port())]),
        TIMEOUT,
    );
    wait_for_spans_in(&out, "the /pay SERVER span and the failed connect", |s| {
        s.iter().any(|s| s.kind == SERVER && s.name == "GET /pay")
            && s.iter().any(|s| s.kind == CLIENT && s.name == "connect")
    });
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).expect("OTLP/JSON output"));

    let server = spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "GET /pay")
        .unwrap_or_else(|| panic!("no server span:\n{}", show(&spans)));
    let failed = spans
        .iter()
        .find(|s| s.kind == CLIENT && s.name == "connect")
        .unwrap_or_else(|| panic!("no failed-connect span:\n{}", show(&spans)));
    assert_eq!(failed.attrs.get("error.type"), Some(&Value::from("connection_refused")), "{failed:?}");
    assert_eq!(failed.status, 2, "a failed connect is an error");
    assert_eq!(int(failed.attrs.get("server.port")), Some(closed_port as i64));
    assert_eq!(int(failed.resource.get("process.pid")), Some(front.pid() as i64));
    assert_eq!((failed.trace_id.as_str(), failed.parent.as_str()), (server.trace_id.as_str(), server.span_id.as_str()));
    assert_eq!(stopped_log(&done)["traces"]["connect_failures"], 1);
}

/// Socket memory is recycled: a connection the agent ignores (its port is not captured)
/// leaves an entry behind after it closes, and the next socket the kernel hands out often
/// sits at the same address. Every refused connect that follows must still be reported,
/// and reported as itself — not dropped as "ignored", not attributed to the old connection.
#[test]
fn refused_connects_are_reported_after_socket_memory_is_reused() {
    require_root();
    const ROUNDS: usize = 200;
    let closed_port = free_port();
    let ignored = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("refused-reuse");
    let out = dir.join("otlp.jsonl");
    let agent = start_run(&[closed_port], &out);

    let mut refused = 0;
    for _ in 0..ROUNDS {
        // An uncaptured connection, opened and closed on both ends: its socket is freed...
        let mut c = TcpStream::connect(ignored.local_addr().unwrap()).unwrap();
        let (a, _) = ignored.accept().unwrap();
        c.write_all(b"x").unwrap();
        drop(a);
        drop(c);
        // ...and the refused attempt's socket is likely the same memory.
        match TcpStream::connect(("127.0.0.1", closed_port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            other => panic!("expected a refused connect, got {other:?}"),
        }
    }
    assert_eq!(refused, ROUNDS);
    wait_for_spans_in(&out, &format!("{ROUNDS} failed connects"), |s| {
        s.iter().filter(|s| s.kind == CLIENT && s.name == "connect").count() >= ROUNDS
    });
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).expect("OTLP/JSON output"));
    let failed: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT && s.name == "connect").collect();
    assert_eq!(stopped_log(&done)["traces"]["connect_failures"], ROUNDS, "{}", show(&spans));
    assert_eq!(failed.len(), ROUNDS);
    for s in failed {
        assert_eq!(int(s.attrs.get("server.port")), Some(closed_port as i64), "{s:?}");
        assert_eq!(int(s.resource.get("process.pid")), Some(std::process::id() as i64), "{s:?}");
        assert_eq!(s.attrs.get("error.type"), Some(&Value::from("connection_refused")), "{s:?}");
    }
}
