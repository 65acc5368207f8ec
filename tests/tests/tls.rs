//! TLS on the real kernel: the OpenSSL uprobes give the agent the plaintext of HTTPS
//! traffic, which becomes the same spans as plain HTTP; TLS the probes cannot see is
//! reported, not silently missed.
//!
//! Every client here starts after the agent (so libraries attached at start, and after
//! exec, cover processes that did not exist yet).

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

fn curl_k(url: &str, traceparent: &str) {
    let done = run(Command::new("curl").args(["-skf", "-H", &format!("traceparent: {traceparent}"), url]), TIMEOUT)
        .expect_success();
    assert_eq!(done.stdout, "hello\n");
}

fn python_client(url: &str, traceparent: Option<&str>) {
    let mut cmd = venv("https_client.py");
    cmd.arg(url);
    if let Some(tp) = traceparent {
        cmd.args(["--traceparent", tp]);
    }
    let done = run(without_otel_env(&mut cmd), TIMEOUT).expect_success();
    assert_eq!(done.stdout.trim(), "200 hello");
}

const T_CURL: &str = "0af7651916cd43dd8448eb211c80319c";
const P_CURL: &str = "b7ad6b7169203331";
const T_PY: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P_PY: &str = "00f067aa0ba902b7";

/// What must be equal between a span over HTTPS and its twin over plain HTTP: everything
/// but ids that are random, timestamps and ports.
fn shape(s: &Span) -> String {
    let trace = match s.trace_id.as_str() {
        T_CURL | T_PY => s.trace_id.clone(),
        _ => "new-trace".into(),
    };
    let parent = match s.parent.as_str() {
        "" => "root",
        P_CURL | P_PY => s.parent.as_str(),
        _ => "other",
    };
    let mut attrs: Vec<String> =
        s.attrs.iter().filter(|(k, _)| !k.ends_with(".port")).map(|(k, v)| format!("{k}={v}")).collect();
    attrs.sort();
    format!("{} {} {} {trace} {parent} status={} {}", s.kind, s.service, s.name, s.status, attrs.join(","))
}

#[test]
fn https_through_nginx_gives_the_same_spans_as_plain_http() {
    require_root();
    let hello = r#"location / { return 200 "hello\n"; }"#;
    let plain = Nginx::start(free_port(), hello);
    let tls = Nginx::start_tls(free_port(), hello);
    let dir = TempDir::new("tls-spans");
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    // Client spans too (by default clients that send their own traceparent count as
    // instrumented), so both sides of every exchange are compared.
    let agent = start_run_listening(&[plain.port(), tls.port()], &out, listen, &["--no-suppress-instrumented"]);

    for (scheme, port) in [("https", tls.port()), ("http", plain.port())] {
        let base = format!("{scheme}://127.0.0.1:{port}");
        curl_k(&format!("{base}/curl"), &format!("00-{T_CURL}-{P_CURL}-01"));
        python_client(&format!("{base}/py"), Some(&format!("00-{T_PY}-{P_PY}-01")));
        // A Python HTTPS client calling out without context: a CLIENT span of its own.
        python_client(&format!("{base}/out"), None);
    }
    // /metrics is refreshed once a second: wait for a refresh that saw the attachment.
    let mut metrics_text = String::new();
    wait_until(TIMEOUT, || {
        metrics_text = Metrics::scrape(listen).0;
        metrics_text.lines().any(|l| l.starts_with("hoptrace_tls_libraries_attached ") && !l.ends_with(" 0"))
    });
    wait_for_spans_in(&out, "a SERVER and a CLIENT span per request over each scheme", |s| {
        let on = |port: u16| s.iter().filter(|s| int(s.attrs.get("server.port")) == Some(port as i64)).count();
        on(tls.port()) >= 6 && on(plain.port()) >= 6
    });
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).expect("OTLP/JSON output"));
    let on = |port: u16| -> Vec<&Span> {
        spans.iter().filter(|s| int(s.attrs.get("server.port")) == Some(port as i64)).collect()
    };
    let (https, http) = (on(tls.port()), on(plain.port()));

    // Over HTTPS: each request gives a SERVER span (nginx) and a CLIENT span (the client),
    // joined to the trace the client sent.
    let find = |kind: u64, service: &str, name: &str| {
        https
            .iter()
            .find(|s| s.kind == kind && s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {kind} span {service} {name} over HTTPS:\n{}", show(&spans)))
    };
    for (client, name, trace, parent) in
        [("curl", "GET /curl", T_CURL, P_CURL), ("https_client", "GET /py", T_PY, P_PY)]
    {
        let server = find(SERVER, "nginx", name);
        assert_eq!((server.trace_id.as_str(), server.parent.as_str()), (trace, parent), "{server:?}");
        assert_eq!(int(server.attrs.get("http.response.status_code")), Some(200));
        let client_span = find(CLIENT, client, name);
        assert_eq!(client_span.trace_id, trace, "{client_span:?}");
        assert!(tls.worker_pids().contains(&(int(server.resource.get("process.pid")).unwrap() as u32)));
    }
    let out_server = find(SERVER, "nginx", "GET /out");
    let out_client = find(CLIENT, "https_client", "GET /out");
    // No context on the wire, but both ends are on this node: nginx's span is stitched
    // under the client's (through TLS, from the OpenSSL plaintext of both processes).
    assert!(out_client.parent.is_empty(), "{out_client:?}");
    assert_eq!(
        (out_server.trace_id.as_str(), out_server.parent.as_str()),
        (out_client.trace_id.as_str(), out_client.span_id.as_str()),
        "{out_server:?} {out_client:?}"
    );
    assert_eq!(out_server.attrs.get("hoptrace.context.stitched"), Some(&serde_json::json!(true)), "{out_server:?}");
    assert_eq!(https.len(), 6, "exactly one SERVER and one CLIENT span per HTTPS request:\n{}", show(&spans));

    // The same spans as plain HTTP.
    let shapes = |v: &[&Span]| v.iter().map(|s| shape(s)).collect::<BTreeSet<_>>();
    assert_eq!(shapes(&https), shapes(&http), "HTTPS spans differ from plain HTTP ones");

    // The ciphertext was never parsed as HTTP: no parse errors, no extra exchanges; every
    // HTTPS socket got a plaintext view; no plaintext was dropped for an unknown socket.
    let log = stopped_log(&done);
    assert_eq!(log["traces"]["parse_errors"], serde_json::json!({}), "{log}");
    assert_eq!(log["traces"]["exchanges"], 12, "{log}");
    assert_eq!(log["capture"]["connections"]["tls_views_opened"], 6, "{log}");
    assert_eq!(log["capture"]["drops"]["tls_socket_unknown"], 0, "{log}");
    assert!(metrics_text.contains("hoptrace_tls_libraries_attached "), "{metrics_text}");
    assert!(!metrics_text.contains("hoptrace_tls_libraries_attached 0\n"), "{metrics_text}");
    assert!(!done.stderr.contains("TLS not visible"), "OpenSSL clients reported as invisible:\n{}", done.stderr);
}

#[test]
fn a_private_libssl_mapped_after_exec_is_attached() {
    require_root();
    let tls = Nginx::start_tls(free_port(), r#"location / { return 200 "hello\n"; }"#);
    let dir = TempDir::new("tls-private");
    // A libssl file of its own (another inode), as a container image would bring: nothing
    // maps it when the agent starts, and it is not in the host's library directories.
    let libdir = dir.join("lib");
    fs::create_dir_all(&libdir).unwrap();
    let system = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libssl.so.3 on this machine");
    fs::copy(system, libdir.join("libssl.so.3")).unwrap();
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    let mut agent = start_run_listening(&[tls.port()], &out, listen, &[]);

    let mut cmd = venv("https_client.py");
    cmd.args([&format!("https://127.0.0.1:{}/private", tls.port()), "--wait"]);
    cmd.args(["--traceparent", &format!("00-{T_PY}-{P_PY}-01")]);
    cmd.env("LD_LIBRARY_PATH", &libdir);
    let mut client = Running::spawn_piped(without_otel_env(&mut cmd));
    client.wait_for_line("loaded", TIMEOUT);
    let maps = fs::read_to_string(format!("/proc/{}/maps", client.pid())).unwrap();
    assert!(maps.contains(&format!("{}/libssl.so.3", libdir.display())), "the client did not map the copy:\n{maps}");
    // The exec record made the agent look at the new process's mappings.
    let attached = agent.wait_for_stderr(&format!("{}/libssl.so.3", libdir.display()), TIMEOUT);
    assert!(attached.contains("TLS library attached"), "{attached}");
    client.send_line("go");
    let done_client = client.finish(TIMEOUT);
    assert!(done_client.status.success(), "{}", done_client.stderr);
    assert_eq!(done_client.stdout.lines().last(), Some("200 hello"));
    wait_for_spans_in(&out, "the /private SERVER span", |s| {
        s.iter().any(|s| s.kind == SERVER && s.name == "GET /private")
    });
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).expect("OTLP/JSON output"));
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "GET /private")
        .unwrap_or_else(|| panic!("no server span:\n{}\n{}", show(&spans), done.stderr));
    assert_eq!((server.trace_id.as_str(), server.parent.as_str()), (T_PY, P_PY));
    let log = stopped_log(&done);
    assert_eq!(log["capture"]["tls_libraries_attached"].as_u64().map(|n| n >= 2), Some(true), "{log}");
}

#[test]
fn tls_the_probes_cannot_see_is_reported_once_per_process() {
    require_root();
    let tls = Nginx::start_tls(free_port(), r#"location / { return 200 "hello\n"; }"#);
    let dir = TempDir::new("tls-invisible");
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    let mut agent = start_run_listening(&[tls.port()], &out, listen, &[]);

    // rustls compiled into the executable: no libssl, nothing to probe. Two connections,
    // one report.
    let mut client = Running::spawn_piped(Command::new(env!("CARGO_BIN_EXE_rustls_client")).args([
        &format!("127.0.0.1:{}", tls.port()),
        &tls.cert().display().to_string(),
        "/invisible",
        "2",
    ]));
    client.wait_for_line("HTTP/1.1 200 OK", TIMEOUT);
    let expected = format!("TLS not visible for process {} rustls_client (rustls)", client.pid());
    let line = agent.wait_for_stderr(&expected, TIMEOUT);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    assert_eq!((v["level"].as_str(), v["reason"].as_str()), (Some("warn"), Some("rustls")), "{line}");
    let metric = r#"hoptrace_tls_not_visible_processes_total{reason="rustls"} 1"#;
    let mut text = String::new();
    assert!(
        wait_until(TIMEOUT, || {
            text = Metrics::scrape(listen).0;
            text.contains(metric)
        }),
        "{metric} not in /metrics:\n{text}"
    );
    client.close_stdin();
    let done_client = client.finish(TIMEOUT);
    assert!(done_client.status.success(), "{}", done_client.stderr);
    assert_eq!(done_client.stdout.matches("HTTP/1.1 200 OK").count(), 2, "{}", done_client.stdout);
    let done = stop(agent);
    assert_eq!(done.stderr.matches("TLS not visible for process").count(), 1, "{}", done.stderr);
    // nginx's side is OpenSSL, so visible: its SERVER spans are there. The client's side
    // gave no span, and its ciphertext no parse error.
    let spans = parse_spans(&fs::read_to_string(&out).unwrap_or_default());
    let servers =
        spans.iter().filter(|s| s.kind == SERVER && s.service == "nginx" && s.name == "GET /invisible").count();
    assert_eq!((servers, spans.len()), (2, 2), "{}", show(&spans));
    assert_eq!(stopped_log(&done)["traces"]["parse_errors"], serde_json::json!({}));
}
