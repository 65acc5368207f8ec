//! HTTP/2 and gRPC on the real kernel: grpcio's server and client (one run with the
//! OpenTelemetry gRPC instrumentation on the client), nginx speaking h2c to
//! `curl --http2-prior-knowledge`, and nginx with TLS + HTTP/2 to `curl --http2` (the
//! plaintext through the OpenSSL probes). Every span must carry the HTTP/2 and gRPC
//! attributes, join the trace the caller sent, and leak nothing planted in the traffic.

use std::{fs, process::Command};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const SERVICE: &str = "hoptrace.test.Greeter";

fn grpc_client(port: u16, otel: bool, metadata: &[&str]) -> Finished {
    let mut cmd = venv("grpc_app.py");
    cmd.args(["client", &format!("127.0.0.1:{port}")]);
    if otel {
        cmd.arg("--otel");
    }
    cmd.arg("--metadata").args(metadata);
    let done = run(without_otel_env(&mut cmd), TIMEOUT).expect_success();
    let results: Vec<&str> = done.stdout.lines().filter(|l| l.starts_with("result ")).collect();
    assert_eq!(
        results,
        ["result SayHello hello world", "result Missing NOT_FOUND", "result Count 3"],
        "{}",
        done.stdout
    );
    done
}

fn config_with_tenant_mapping(dir: &TempDir) -> String {
    let path = dir.join("hoptrace.yaml");
    fs::write(&path, "traces:\n  request_header_attributes: { tenant: tenant }\n").unwrap();
    path.display().to_string()
}

fn on_port(spans: &[Span], port: u16) -> Vec<&Span> {
    spans.iter().filter(|s| int(s.attrs.get("server.port")) == Some(port as i64)).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> &'a Value {
    s.attrs.get(key).unwrap_or(&Value::Null)
}

/// The attributes every gRPC span of these calls has, by method: (grpc status, response
/// messages).
fn check_grpc_attributes(s: &Span, method: &str, status: i64, responses: i64) {
    assert_eq!(s.name, format!("{SERVICE}/{method}"), "{s:?}");
    assert_eq!(attr(s, "rpc.system"), "grpc", "{s:?}");
    assert_eq!(attr(s, "rpc.service"), SERVICE, "{s:?}");
    assert_eq!(attr(s, "rpc.method"), method, "{s:?}");
    assert_eq!(int(s.attrs.get("rpc.grpc.status_code")), Some(status), "{s:?}");
    assert_eq!(attr(s, "network.protocol.version"), "2", "{s:?}");
    assert_eq!(attr(s, "http.request.method"), "POST", "{s:?}");
    assert_eq!(attr(s, "http.route"), &format!("/{SERVICE}/{method}"), "{s:?}");
    assert_eq!(int(s.attrs.get("http.response.status_code")), Some(200), "{s:?}");
    assert_eq!(int(s.attrs.get("hoptrace.rpc.request.messages")), Some(1), "{s:?}");
    assert_eq!(int(s.attrs.get("hoptrace.rpc.response.messages")), Some(responses), "{s:?}");
    assert_eq!(attr(s, "tenant"), "acme", "the metadata mapping applies to HTTP/2: {s:?}");
    assert!(!s.attrs.contains_key("hoptrace.h2.partial_headers"), "{s:?}");
}

const CALLS: [(&str, i64, i64); 3] = [("SayHello", 0, 1), ("Missing", 5, 0), ("Count", 0, 3)];

#[test]
fn grpc_calls_join_the_instrumented_clients_trace() {
    require_root();
    let server = PyServer::start_venv("grpc_app.py", &["server", &free_port().to_string()]);
    let dir = TempDir::new("h2-grpc-otel");
    let out = dir.join("otlp.jsonl");
    let config = config_with_tenant_mapping(&dir);
    let agent = start_run_listening(&[server.port()], &out, free_port(), &["--config", &config]);

    let secret = unique_marker("grpc-secret");
    let auth = format!("authorization=Bearer {secret}");
    let done = grpc_client(server.port(), true, &["tenant=acme", &auth]);
    // The instrumented client's own spans, as its SDK made them.
    let sdk: Vec<Value> =
        done.stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(sdk.len(), 3, "{}", done.stdout);

    wait_for_spans_in(&out, "three gRPC SERVER spans", |s| {
        on_port(s, server.port()).iter().filter(|s| s.kind == SERVER).count() >= 3
    });
    let done_agent = stop(agent);
    let text = fs::read_to_string(&out).unwrap();
    assert!(!text.contains(&secret), "the authorization metadata left the agent");
    let spans = parse_spans(&text);
    let mine = on_port(&spans, server.port());
    for (method, status, responses) in CALLS {
        let s = mine
            .iter()
            .find(|s| s.kind == SERVER && s.name.ends_with(method))
            .unwrap_or_else(|| panic!("no SERVER span for {method}:\n{}", show(&spans)));
        check_grpc_attributes(s, method, status, responses);
        // Joined to the client's span of the same call, exactly.
        let client = sdk
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.ends_with(&format!("/{method}"))))
            .unwrap_or_else(|| panic!("no SDK span for {method}: {sdk:?}"));
        assert_eq!(
            (s.trace_id.as_str(), s.parent.as_str()),
            (client["trace_id"].as_str().unwrap(), client["span_id"].as_str().unwrap()),
            "{s:?}"
        );
        // Server side: NOT_FOUND is the caller's problem, not an error of the server.
        assert_eq!(s.status, 0, "{s:?}");
    }
    // The instrumented client's calls are not duplicated by agent CLIENT spans.
    assert_eq!(mine.iter().filter(|s| s.kind == CLIENT).count(), 0, "{}", show(&spans));
    assert_eq!(mine.len(), 3, "{}", show(&spans));
    // The server's connection parses cleanly. The instrumented client's own side may not:
    // grpcio writes its first frames with one sendmsg of more slices than the kernel
    // programs walk (MAX_IOVECS), and those bytes are counted lost, never guessed at.
    let log = stopped_log(&done_agent);
    let errors = log["traces"]["parse_errors"].as_object().cloned().unwrap_or_default();
    if !errors.is_empty() {
        assert!(log["capture"]["drops"]["iov_limit_bytes"].as_u64() > Some(0), "{log}");
        let allowed = ["http2/gap_in_frame", "http2/partial_headers", "http2/unmatched_response"];
        assert!(errors.keys().all(|k| allowed.contains(&k.as_str())), "{log}");
    }
}

#[test]
fn grpc_without_instrumentation_gets_client_and_server_spans() {
    require_root();
    let server = PyServer::start_venv("grpc_app.py", &["server", &free_port().to_string()]);
    let dir = TempDir::new("h2-grpc-plain");
    let out = dir.join("otlp.jsonl");
    let config = config_with_tenant_mapping(&dir);
    let agent = start_run_listening(&[server.port()], &out, free_port(), &["--config", &config]);
    grpc_client(server.port(), false, &["tenant=acme"]);
    wait_for_spans_in(&out, "three gRPC SERVER and three CLIENT spans", |s| on_port(s, server.port()).len() >= 6);
    stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).unwrap());
    let mine = on_port(&spans, server.port());
    assert_eq!(mine.len(), 6, "{}", show(&spans));
    for (method, status, responses) in CALLS {
        let find = |kind| {
            *mine
                .iter()
                .find(|s| s.kind == kind && s.name.ends_with(method))
                .unwrap_or_else(|| panic!("no {kind} span for {method}:\n{}", show(&spans)))
        };
        let (server_span, client_span) = (find(SERVER), find(CLIENT));
        check_grpc_attributes(server_span, method, status, responses);
        check_grpc_attributes(client_span, method, status, responses);
        // Client side: any non-OK code is an error; server side only server failures.
        assert_eq!(client_span.status, if status == 0 { 0 } else { 2 }, "{client_span:?}");
        assert_eq!(server_span.status, 0, "{server_span:?}");
        // Both ends on this node, no context on the wire: stitched by stream id.
        assert_eq!(
            (server_span.trace_id.as_str(), server_span.parent.as_str()),
            (client_span.trace_id.as_str(), client_span.span_id.as_str()),
            "{server_span:?} {client_span:?}"
        );
    }
}

fn curl_h2(args: &[&str], url: &str, traceparent: &str, secret: &str) {
    let done = run(
        Command::new("curl").args(["-sf", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]).args(args).args([
            "-H",
            &format!("traceparent: {traceparent}"),
            "-H",
            &format!("authorization: Bearer {secret}"),
            url,
        ]),
        TIMEOUT,
    )
    .expect_success();
    assert_eq!(done.stdout, "2 200", "curl did not speak HTTP/2");
}

#[test]
fn nginx_over_h2c_and_h2_in_tls_gives_http2_server_spans() {
    require_root();
    let hello = r#"location / { return 200 "hello\n"; }"#;
    let h2c = Nginx::start_http2(free_port(), hello, false);
    let h2 = Nginx::start_http2(free_port(), hello, true);
    let dir = TempDir::new("h2-nginx");
    let out = dir.join("otlp.jsonl");
    let agent = start_run_listening(&[h2c.port(), h2.port()], &out, free_port(), &[]);

    let secret = unique_marker("h2-secret");
    let email = format!("{}@example.com", unique_marker("who"));
    let traces = [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", h2c.port(), "http", "--http2-prior-knowledge"),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", h2.port(), "https", "--http2"),
    ];
    for (trace, parent, port, scheme, flag) in traces {
        let url = format!("{scheme}://127.0.0.1:{port}/orders/1042?email={email}");
        curl_h2(&[flag, "-k"], &url, &format!("00-{trace}-{parent}-01"), &secret);
    }
    wait_for_spans_in(&out, "an nginx SERVER span per port", |s| {
        [h2c.port(), h2.port()].iter().all(|&p| on_port(s, p).iter().any(|s| s.kind == SERVER))
    });
    let done = stop(agent);
    let text = fs::read_to_string(&out).unwrap();
    assert!(!text.contains(&secret), "the authorization header left the agent");
    assert!(!text.contains(&email), "the query value left the agent");
    let spans = parse_spans(&text);
    for (trace, parent, port, scheme, _) in traces {
        let servers: Vec<_> = on_port(&spans, port).into_iter().filter(|s| s.kind == SERVER).collect();
        assert_eq!(servers.len(), 1, "{scheme}: {}", show(&spans));
        let s = servers[0];
        assert_eq!(s.service, "nginx", "{s:?}");
        assert_eq!(s.name, "GET /orders/{id}", "{s:?}");
        assert_eq!((s.trace_id.as_str(), s.parent.as_str()), (trace, parent), "{scheme}: {s:?}");
        assert_eq!(attr(s, "network.protocol.version"), "2", "{s:?}");
        assert_eq!(attr(s, "url.path"), "/orders/{id}", "{s:?}");
        assert_eq!(int(s.attrs.get("http.response.status_code")), Some(200), "{s:?}");
        assert!(!s.attrs.contains_key("rpc.system"), "not gRPC: {s:?}");
    }
    let log = stopped_log(&done);
    assert_eq!(log["traces"]["parse_errors"], serde_json::json!({}), "{log}");
}

/// tonic (hyper's h2, its own HPACK choices) on both ends: a call with a traceparent
/// joins it; a call without gets a CLIENT span and a SERVER span stitched under it.
#[test]
fn tonic_client_and_server_give_the_same_rpc_spans() {
    require_root();
    let bin = env!("CARGO_BIN_EXE_tonic_grpc");
    let server = PyServer::start_cmd(Command::new(bin).args(["server", &free_port().to_string()]));
    let dir = TempDir::new("h2-tonic");
    let out = dir.join("otlp.jsonl");
    let config = config_with_tenant_mapping(&dir);
    let agent = start_run_listening(&[server.port()], &out, free_port(), &["--config", &config]);
    let (trace, parent) = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    let addr = format!("127.0.0.1:{}", server.port());
    for tp in [Some(format!("00-{trace}-{parent}-01")), None] {
        let mut cmd = Command::new(bin);
        cmd.args(["client", &addr]).args(tp.as_deref());
        let done = run(&mut cmd, TIMEOUT).expect_success();
        assert_eq!(done.stdout, "result SayHello hello world\nresult Missing NotFound\nresult Count 3\n");
    }
    wait_for_spans_in(&out, "six SERVER and three CLIENT spans", |s| on_port(s, server.port()).len() >= 9);
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).unwrap());
    let mine = on_port(&spans, server.port());
    assert_eq!(mine.len(), 9, "{}", show(&spans));
    for (method, status, responses) in CALLS {
        let of = |kind| mine.iter().filter(|s| s.kind == kind && s.name.ends_with(method)).copied().collect::<Vec<_>>();
        let (servers, clients) = (of(SERVER), of(CLIENT));
        assert_eq!((servers.len(), clients.len()), (2, 1), "{method}: {}", show(&spans));
        for s in servers.iter().chain(&clients) {
            check_grpc_attributes(s, method, status, responses);
        }
        assert!(servers.iter().any(|s| (s.trace_id.as_str(), s.parent.as_str()) == (trace, parent)), "{servers:?}");
        let c = clients[0];
        assert!(
            servers
                .iter()
                .any(|s| (s.trace_id.as_str(), s.parent.as_str()) == (c.trace_id.as_str(), c.span_id.as_str())),
            "{servers:?} {c:?}"
        );
        assert_eq!(c.status, if status == 0 { 0 } else { 2 }, "{c:?}");
    }
    let log = stopped_log(&done);
    assert_eq!(log["traces"]["parse_errors"], serde_json::json!({}), "{log}");
}

/// An HTTP/2 connection older than the agent: its HPACK tables are unknown. The call
/// after the agent starts sends its traceparent and content-type by index (h2 indexed
/// them on the first call) and its path as a literal: the span has the path, says its
/// headers are partial, never guesses the rest (no gRPC attributes, no trace joined), and
/// no propagation gap is reported for a traceparent the agent could not read.
#[test]
fn a_connection_older_than_the_agent_gives_partial_spans_and_no_false_gap() {
    require_root();
    let bin = env!("CARGO_BIN_EXE_tonic_grpc");
    let server = PyServer::start_cmd(Command::new(bin).args(["server", &free_port().to_string()]));
    let (trace, parent) = ("6bf92f3577b34da6a3ce929d0e0e4738", "20f067aa0ba902b9");
    let tp = format!("00-{trace}-{parent}-01");
    let addr = format!("127.0.0.1:{}", server.port());
    let mut client = Running::spawn_piped(Command::new(bin).args(["resume", &addr, &tp]));
    client.wait_for_line("paused", TIMEOUT);

    let dir = TempDir::new("h2-joined");
    let out = dir.join("otlp.jsonl");
    let agent = start_run_listening(&[server.port()], &out, free_port(), &[]);
    client.send_line("go");
    let done_client = client.finish(TIMEOUT);
    assert!(done_client.status.success(), "{}", done_client.stderr);
    assert!(done_client.stdout.contains("result SayHello hello after"), "{}", done_client.stdout);
    wait_for_spans_in(&out, "the SERVER span of the call made after the agent started", |s| {
        on_port(s, server.port()).iter().any(|s| s.kind == SERVER)
    });
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).unwrap());
    let servers: Vec<_> = on_port(&spans, server.port()).into_iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 1, "{}", show(&spans));
    let s = servers[0];
    assert_eq!(s.attrs.get("hoptrace.h2.partial_headers"), Some(&Value::Bool(true)), "{s:?}");
    assert_eq!(attr(s, "network.protocol.version"), "2", "{s:?}");
    assert_eq!(attr(s, "http.request.method"), "POST", "{s:?}");
    assert_eq!(attr(s, "http.route"), &format!("/{SERVICE}/SayHello"), "a literal :path is decoded: {s:?}");
    assert!(!s.attrs.contains_key("rpc.system"), "the indexed content-type is not guessed: {s:?}");
    assert_ne!(s.trace_id, trace, "the indexed traceparent is not guessed: {s:?}");
    assert!(!s.attrs.contains_key("hoptrace.gap.kind"), "a false propagation gap: {s:?}");
    let log = stopped_log(&done);
    assert!(log["traces"]["parse_errors"]["http2/partial_headers"].as_u64() >= Some(1), "{log}");
    assert_eq!(log["traces"]["propagation_gaps"], 0, "{log}");
}
