//! Logs joined to traces (issue 17): `hoptrace run --app-logs` with a real OTLP receiver
//! (tests/fixtures/otlp_receiver.py, the official protobuf definitions). Services without
//! any OpenTelemetry code: a FastAPI app logging JSON lines and printing plain ones, and
//! nginx writing its access log to /dev/stdout. Every line of theirs is a LogRecord, those
//! written while a request is served carry its SERVER span's ids, every request has an
//! access record with the right ids and templated route, and planted personal data never
//! reaches the receiver or the agent's own output. Needs the Python venv: `cargo xtask setup`.

use std::{fs, time::Duration};

use hoptrace_e2e::*;

use crate::support::{listen_args, wait_metrics};

/// The agent batches for 1 s and links lines on its 1 s tick; a loaded 2-core VM is slow.
const DELIVERY: Duration = Duration::from_secs(30);

/// A CPF with valid check digits, and an email: planted in the app's log lines and URLs.
const CPF: &str = "529.982.247-25";
const EMAIL: &str = "maria.souza@example.com.br";

fn write_config(dir: &TempDir, rules: &str) -> String {
    let path = dir.join("hoptrace.yaml");
    fs::write(&path, format!("services:\n{rules}logs:\n  app:\n    enabled: true\n")).unwrap();
    path.display().to_string()
}

/// Waits until the agent said it selected process `pid` for app logs.
fn wait_selected(agent: &RunAgent, pid: u32) {
    let needle = format!("\"pid\":{pid}");
    let selected = wait_until(TIMEOUT, || {
        agent.stderr().lines().any(|l| l.contains("app logs: process selected") && l.contains(&needle))
    });
    assert!(selected, "process {pid} never selected for app logs; agent log:\n{}", agent.stderr());
}

fn curl_ok(extra: &[&str], url: &str) {
    run(std::process::Command::new("curl").args(["-sS", "--fail", "--max-time", "10"]).args(extra).arg(url), TIMEOUT)
        .expect_success();
}

#[test]
fn fastapi_json_and_plain_lines_carry_the_server_spans_ids_and_no_personal_data() {
    require_root();
    let receiver = OtlpReceiver::start();
    let app = PyServer::start_cmd(without_otel_env(venv("log_app.py").arg("0")));
    let dir = TempDir::new("logs-fastapi");
    let config =
        write_config(&dir, "  - match: {cmdline_contains: log_app.py}\n    attributes: {service.name: shop}\n");
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())];
    let agent = RunAgent::start(&[app.port()], &["--config", &config], env);
    wait_selected(&agent, app.pid());

    let traces = ["4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"];
    for (n, trace) in traces.iter().enumerate() {
        let tp = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
        let url = format!("http://127.0.0.1:{}/orders/{}?who={EMAIL}&cpf={CPF}", app.port(), n + 1);
        curl_ok(&["-H", &tp], &url);
    }
    // A request whose path itself is personal data: its access record has a template.
    curl_ok(&[], &format!("http://127.0.0.1:{}/orders/52998224725", app.port()));

    let spans = receiver.wait_for_spans(DELIVERY, "three SERVER spans of the app", |s| {
        s.iter().filter(|s| s.kind == SPAN_KIND_SERVER && s.service() == "shop").count() >= 3
    });
    let logs = receiver.wait_for_logs(DELIVERY, "two app lines per traced request and 3 access records", |l| {
        traces.iter().all(|t| l.iter().filter(|r| r.trace_id == *t && r.event_name.is_empty()).count() >= 2)
            && l.iter().filter(|r| r.event_name == "http.server.access").count() >= 3
    });
    for trace in traces {
        let server = spans
            .iter()
            .find(|s| s.kind == SPAN_KIND_SERVER && s.trace_id == trace)
            .unwrap_or_else(|| panic!("no SERVER span in trace {trace}:\n{}", show_spans(&spans)));
        let lines: Vec<&OtlpLog> = logs.iter().filter(|r| r.trace_id == trace && r.event_name.is_empty()).collect();
        let json = lines.iter().find(|r| r.attr_str("logger") == "shop").expect("the JSON line");
        let plain = lines.iter().find(|r| r.body.starts_with("plain line")).expect("the print line");
        for r in [json, plain] {
            assert_eq!(r.span_id, server.span_id, "a line's span is the SERVER span: {r:?}");
            assert_eq!(r.service(), "shop", "same resource as the spans: {r:?}");
            assert_eq!(r.attr_str("log.iostream"), "stdout");
        }
        // JSON: severity, message as the body (redacted), fields as attributes.
        assert_eq!((json.severity_number, json.severity_text.as_str()), (13, "warning"), "{json:?}");
        assert!(json.body.contains("{email}") && json.body.contains("{cpf}"), "{json:?}");
        assert_eq!(json.attr_str("customer"), "{email}", "{json:?}");
        assert!(json.attrs.contains_key("order"), "{json:?}");
        assert!(json.time > 1_600_000_000_000_000_000, "the line's own ts: {json:?}");
        let access = logs
            .iter()
            .find(|r| r.event_name == "http.server.access" && r.trace_id == trace)
            .unwrap_or_else(|| panic!("no access record in trace {trace}"));
        assert_eq!(access.span_id, server.span_id);
        assert_eq!(access.attr_str("http.route"), "/orders/{id}");
        assert_eq!(access.attr_str("http.request.method"), "GET");
        assert_eq!(access.attrs["http.response.status_code"], 200);
        assert_eq!(access.severity_number, 9);
    }
    // The untraced request: an access record (of a trace the agent started) with the
    // template, never the CPF in the path.
    let untraced = logs
        .iter()
        .find(|r| r.event_name == "http.server.access" && !traces.contains(&r.trace_id.as_str()))
        .expect("the untraced request's access record");
    let route = untraced.attr_str("http.route");
    assert!(route.starts_with("/orders/{") && route.ends_with('}'), "a template, not the path: {untraced:?}");
    assert!(spans.iter().any(|s| s.trace_id == untraced.trace_id && s.span_id == untraced.span_id));

    let stopped = agent.stop();
    let everything = [
        ("receiver logs", receiver.raw_logs()),
        ("receiver spans", receiver.raw()),
        ("agent log", stopped.stderr.clone()),
    ];
    for (what, text) in &everything {
        for value in [CPF, EMAIL, "52998224725"] {
            assert!(!text.contains(value), "{value:?} leaked into the {what}");
        }
    }
    assert!(stopped.counter("logs", "app_lines_linked") >= 4, "{}", stopped.log["logs"]);
    assert!(stopped.counter("logs", "access_records") >= 3, "{}", stopped.log["logs"]);
    assert_eq!(stopped.counter("logs_export", "spans_dropped_non_retryable"), 0, "{}", stopped.log["logs_export"]);
}

#[test]
fn nginx_stdout_access_log_lines_are_bodies_and_its_access_records_carry_the_trace() {
    require_root();
    let receiver = OtlpReceiver::start();
    let port = free_port();
    // The default (combined) plain-text format, to the pipe nginx got as stdout.
    let nginx = Nginx::start(port, r#"access_log /dev/stdout; location / { return 200 "hello\n"; }"#);
    let dir = TempDir::new("logs-nginx");
    let config = write_config(&dir, "  - match: {exe: nginx}\n    attributes: {service.name: gateway}\n");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
    ];
    let listen = free_port();
    let [flag, addr] = listen_args(listen);
    let agent = RunAgent::start(&[port], &["--config", &config, &flag, &addr], env);
    for pid in nginx.worker_pids() {
        wait_selected(&agent, pid);
    }

    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let marker = unique_marker("nginxlog");
    curl_ok(
        &["-H", &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01")],
        &format!("http://127.0.0.1:{port}/{marker}"),
    );

    let logs = receiver.wait_for_logs(DELIVERY, "nginx's access line and hoptrace's access record", |l| {
        l.iter().any(|r| r.body.contains(&marker)) && l.iter().any(|r| r.event_name == "http.server.access")
    });
    let spans = receiver.wait_for_spans(DELIVERY, "nginx's SERVER span", |s| {
        s.iter().any(|s| s.kind == SPAN_KIND_SERVER && s.trace_id == trace)
    });
    let server = spans.iter().find(|s| s.kind == SPAN_KIND_SERVER && s.trace_id == trace).unwrap();
    let line = logs.iter().find(|r| r.body.contains(&marker)).unwrap();
    assert!(
        line.body.contains(&format!("\"GET /{marker} HTTP/1.1\" 200")),
        "the combined format, as written: {line:?}"
    );
    assert_eq!(line.service(), "gateway");
    assert_eq!(line.attr_str("log.iostream"), "stdout", "a descriptor reopened on stdout's pipe: {line:?}");
    let access = logs.iter().find(|r| r.event_name == "http.server.access").unwrap();
    assert_eq!((access.trace_id.as_str(), access.span_id.as_str()), (trace, server.span_id.as_str()));
    assert_eq!(access.service(), "gateway");
    assert!(receiver.logs_requests().iter().all(|r| r["transport"] == "http" && r["path"] == "/v1/logs"));
    // Both kinds counted on /metrics, delivered, nothing dropped; nginx's master and
    // workers are the selected processes.
    let m = wait_metrics(listen, DELIVERY, "both kinds of log records exported", |m| {
        m.sum("hoptrace_export_log_records_exported_total") >= 2
    });
    assert!(m.get("hoptrace_log_records_total{kind=\"access\"}") >= 1);
    assert!(m.get("hoptrace_log_records_total{kind=\"app\"}") >= 1);
    assert_eq!(m.get("hoptrace_app_log_processes"), 1 + nginx.worker_pids().len() as u64);
    assert_eq!(m.sum("hoptrace_export_log_records_dropped_total"), 0);
    assert!(m.get("hoptrace_capture_records_by_kind_total{kind=\"app_log\"}") >= 1);
    agent.stop();
}
