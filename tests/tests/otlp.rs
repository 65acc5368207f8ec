//! `hoptrace run` exporting to a real OTLP receiver (tests/fixtures/otlp_receiver.py, the
//! official protobuf definitions) over gRPC and HTTP/protobuf, next to a service that
//! instruments itself with the OpenTelemetry Python SDK, and with a collector that is down
//! when the agent starts. Needs the Python venv: `cargo xtask setup`.

use std::{collections::BTreeMap, fs, process::Command, time::Duration};

use hoptrace_e2e::*;
use serde_json::{json, Value};

use crate::support::{listen_args, wait_metrics, Metrics};

/// How long spans may take to reach the receiver: the agent batches for 1 s, the SDK for
/// 100 ms, and a 2-core machine running several tests is slow.
const DELIVERY: Duration = Duration::from_secs(30);

/// `curl` with its output checked; `extra` goes before the URL.
fn curl(extra: &[&str], url: &str) -> String {
    run(Command::new("curl").args(["-sS", "--fail", "--max-time", "10"]).args(extra).arg(url), TIMEOUT)
        .expect_success()
        .stdout
}

fn grpc_env(receiver: &OtlpReceiver) -> [(&'static str, String); 2] {
    [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())]
}

/// `spans_submitted` equals what was exported plus every drop and rejection counter plus
/// what is still queued: nothing the agent submitted is unaccounted for.
fn assert_export_accounted(stopped: &Stopped) {
    let e = |k: &str| stopped.export(k);
    let accounted = e("spans_exported")
        + e("spans_dropped_queue_full")
        + e("spans_dropped_non_retryable")
        + e("spans_dropped_retries_exhausted")
        + e("spans_dropped_shutdown")
        + e("spans_rejected_by_collector")
        + e("queue_depth");
    assert_eq!(e("spans_submitted"), accounted, "export counters do not add up: {}", stopped.log["export"]);
    assert_eq!(e("queue_depth"), 0, "spans left queued after shutdown: {}", stopped.log["export"]);
}

/// A 64-hex-digit container id in `/proc/<pid>/cgroup`, as the agent looks for one.
fn container_id(pid: u32) -> Option<String> {
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let bytes = cgroup.as_bytes();
    (0..bytes.len().saturating_sub(63)).find_map(|i| {
        let run = &bytes[i..i + 64];
        let hex = |b: &u8| b.is_ascii_hexdigit() && !b.is_ascii_uppercase();
        let bounded = |j: Option<&u8>| j.is_none_or(|b| !hex(b));
        (run.iter().all(hex) && bounded(i.checked_sub(1).map(|j| &bytes[j])) && bounded(bytes.get(i + 64)))
            .then(|| String::from_utf8_lossy(run).into_owned())
    })
}

/// An SDK-instrumented FastAPI service (spans of its own, sent to the receiver over
/// OTLP/HTTP) calls an uninstrumented downstream. The agent must continue the SDK's trace
/// in the downstream and add nothing for the SDK service itself.
#[test]
fn sdk_service_to_uninstrumented_downstream_grpc() {
    require_root();
    let receiver = OtlpReceiver::start();
    let downstream = PyServer::start("chain_service.py", &["0"]);
    let sdk_port = free_port();
    // No OTEL_* variables: the agent may only recognise the SDK by what it sends.
    let sdk = PyServer::start_cmd(without_otel_env(venv("sdk_app.py").args([
        &sdk_port.to_string(),
        &format!("http://127.0.0.1:{}", downstream.port()),
        &receiver.http_traces_url(),
    ])));
    let agent = RunAgent::start(&[sdk.port(), downstream.port()], &[], grpc_env(&receiver));

    let body = curl(&[], &format!("http://127.0.0.1:{}/checkout", sdk.port()));
    assert_eq!(body, r#"{"downstream_status":200}"#);

    let is_sdk_client = |s: &OtlpSpan| s.service() == "checkout-sdk" && s.kind == SPAN_KIND_CLIENT;
    let is_sdk_server = |s: &OtlpSpan| s.service() == "checkout-sdk" && s.kind == SPAN_KIND_SERVER;
    let is_downstream_server =
        |s: &OtlpSpan| s.from_agent() && s.kind == SPAN_KIND_SERVER && s.pid() == Some(i64::from(downstream.pid()));
    receiver.wait_for_spans(DELIVERY, "the SDK's spans and the agent's downstream span", |spans| {
        spans.iter().any(is_sdk_client) && spans.iter().any(is_sdk_server) && spans.iter().any(is_downstream_server)
    });
    let stopped = agent.stop();
    // Read again after the agent's shutdown flush, so anything it still held is seen too.
    let spans = receiver.spans();
    let show = || show_spans(&spans);

    let sdk_clients: Vec<&OtlpSpan> = spans.iter().filter(|s| is_sdk_client(s)).collect();
    let [sdk_client] = sdk_clients[..] else { panic!("expected one SDK CLIENT span:\n{}", show()) };
    let sdk_server = spans.iter().find(|s| is_sdk_server(s)).unwrap();
    assert_eq!(sdk_client.trace_id, sdk_server.trace_id, "SDK's own spans disagree:\n{}", show());

    let downstream_spans: Vec<&OtlpSpan> = spans.iter().filter(|s| is_downstream_server(s)).collect();
    let [agent_span] = downstream_spans[..] else {
        panic!("expected one agent SERVER span for the downstream:\n{}", show())
    };
    assert_eq!(agent_span.name, "GET /items/{id}", "{agent_span:#?}");
    assert_eq!(agent_span.service(), "chain_service");
    assert_eq!(
        (agent_span.trace_id.as_str(), agent_span.parent_span_id.as_str()),
        (sdk_client.trace_id.as_str(), sdk_client.span_id.as_str()),
        "the downstream span must continue the SDK's trace under its CLIENT span:\n{}",
        show()
    );
    const SLACK_NS: u64 = 2_000_000;
    assert!(
        agent_span.start + SLACK_NS >= sdk_client.start && agent_span.end <= sdk_client.end + SLACK_NS,
        "the downstream span [{}..{}] is not within the SDK client span [{}..{}] (±2 ms)",
        agent_span.start,
        agent_span.end,
        sdk_client.start,
        sdk_client.end
    );

    // No duplicates: the SDK service already reports its SERVER and CLIENT spans.
    let duplicates: Vec<OtlpSpan> =
        spans.iter().filter(|s| s.from_agent() && s.pid() == Some(i64::from(sdk.pid()))).cloned().collect();
    assert!(
        duplicates.is_empty(),
        "the agent exported spans for the SDK-instrumented service (pid {}):\n{}\nstopped log: {}",
        sdk.pid(),
        show_spans(&duplicates),
        stopped.log
    );
    assert!(
        stopped.traces("spans_suppressed_instrumented") >= 1,
        "nothing suppressed for the SDK service: {}",
        stopped.log["traces"]
    );
    assert_export_accounted(&stopped);
    assert_eq!(stopped.export("spans_exported"), spans.iter().filter(|s| s.from_agent()).count() as u64);
}

/// The agent's own span over OTLP/HTTP protobuf, checked attribute by attribute.
#[test]
fn agent_otlp_over_http_protobuf_exact_attributes() {
    require_root();
    let receiver = OtlpReceiver::start();
    let service = PyServer::start("chain_service.py", &["0"]);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        // curl on this node calling it without context would otherwise (rightly) be a
        // propagation gap; this test is about the plain span's attributes.
        ("HOPTRACE_GAPS_ENTRY_SERVICES", "chain_service".into()),
    ];
    let agent = RunAgent::start(&[service.port()], &[], env);

    let secret = unique_marker("q");
    // A fixed client port, so network.peer.port is known.
    let client_port = free_port();
    let body = curl(
        &["--local-port", &client_port.to_string()],
        &format!("http://127.0.0.1:{}/items/42?secret={secret}", service.port()),
    );
    assert_eq!(body, "ok\n");

    let is_server = |s: &OtlpSpan| s.from_agent() && s.kind == SPAN_KIND_SERVER;
    receiver.wait_for_spans(DELIVERY, "the agent's SERVER span", |spans| spans.iter().any(is_server));
    let stopped = agent.stop();
    let spans = receiver.spans();

    for req in receiver.requests() {
        assert_eq!(
            (req["transport"].as_str(), req["path"].as_str(), req["content_type"].as_str()),
            (Some("http"), Some("/v1/traces"), Some("application/x-protobuf")),
            "not OTLP/HTTP protobuf: {req}"
        );
    }
    let servers: Vec<&OtlpSpan> = spans.iter().filter(|s| is_server(s)).collect();
    let [span] = servers[..] else { panic!("expected exactly one agent SERVER span:\n{}", show_spans(&spans)) };

    let exe = fs::read_link(format!("/proc/{}/exe", service.pid())).expect("service executable");
    let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let mut resource: BTreeMap<String, Value> = [
        ("service.name", json!("chain_service")),
        ("process.pid", json!(service.pid())),
        ("process.executable.name", json!(exe_name)),
        ("process.runtime.name", json!("python")),
        ("host.name", json!(host)),
        ("telemetry.distro.name", json!("hoptrace")),
        ("telemetry.distro.version", json!(env!("CARGO_PKG_VERSION"))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(id) = container_id(service.pid()) {
        resource.insert("container.id".into(), json!(id));
    }
    assert_eq!(span.resource, resource, "resource attributes");

    let attrs: BTreeMap<String, Value> = [
        ("http.request.method", json!("GET")),
        ("url.path", json!("/items/{id}")),
        ("http.route", json!("/items/{id}")),
        ("http.response.status_code", json!(200)),
        ("server.address", json!("127.0.0.1")),
        ("server.port", json!(service.port())),
        ("client.address", json!("127.0.0.1")),
        ("network.peer.address", json!("127.0.0.1")),
        ("network.peer.port", json!(client_port)),
        ("network.protocol.name", json!("http")),
        ("network.protocol.version", json!("1.1")),
        ("network.transport", json!("tcp")),
        // curl is a process of this node and sent no context: the agent saw both ends of
        // the connection, so the SERVER span is stitched under curl's CLIENT span.
        ("hoptrace.context.stitched", json!(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(span.attrs, attrs, "span attributes");
    assert_eq!((span.kind, span.name.as_str()), (SPAN_KIND_SERVER, "GET /items/{id}"));
    let curl_span = spans
        .iter()
        .find(|s| s.from_agent() && s.kind == SPAN_KIND_CLIENT && s.service() == "curl")
        .unwrap_or_else(|| panic!("no CLIENT span of curl:\n{}", show_spans(&spans)));
    assert!(curl_span.parent_span_id.is_empty(), "no traceparent was sent, yet: {curl_span:#?}");
    assert_eq!(
        (span.trace_id.as_str(), span.parent_span_id.as_str()),
        (curl_span.trace_id.as_str(), curl_span.span_id.as_str()),
        "the SERVER span is not under curl's CLIENT span: {span:#?}"
    );
    assert_eq!(span.trace_id.len(), 32, "{span:#?}");
    assert_eq!(span.span_id.len(), 16, "{span:#?}");
    assert!(span.start > 0 && span.end >= span.start, "{span:#?}");

    let raw = receiver.raw();
    assert!(!raw.contains(&secret), "the query value {secret} reached the collector:\n{raw}");
    assert_export_accounted(&stopped);
    assert_eq!(stopped.export("spans_exported"), spans.len() as u64, "{}", stopped.log);
}

/// The collector is unreachable when the agent starts and comes up later on the same port:
/// what the bounded queue still holds is delivered, the rest is counted as dropped.
#[test]
fn collector_down_at_start_then_back() {
    require_root();
    // A port nobody listens on (for now).
    let collector_port = free_port();
    let service = PyServer::start("chain_service.py", &["0"]);
    let endpoint = format!("http://127.0.0.1:{collector_port}");
    let listen = free_port();
    let agent = RunAgent::start(
        &[service.port()],
        &[
            "--export-queue-capacity",
            "10",
            "--export-batch-size",
            "5",
            &listen_args(listen)[0],
            &listen_args(listen)[1],
        ],
        [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
    );

    const REQUESTS: usize = 25;
    for i in 0..REQUESTS {
        let body = curl(&[], &format!("http://127.0.0.1:{}/orders/{i}", service.port()));
        assert_eq!(body, "ok\n");
    }
    // The agent has turned every exchange into spans before the collector appears, so
    // everything is submitted while it is still down (hence the ≤ capacity bound below).
    let made = |m: &Metrics, kind: &str| m.get(&format!("hoptrace_spans_total{{kind=\"{kind}\"}}"));
    wait_metrics(listen, TIMEOUT, "a SERVER and a CLIENT span per request", |m| {
        made(m, "server") >= REQUESTS as u64 && made(m, "client") >= REQUESTS as u64
    });

    let receiver = OtlpReceiver::start_on(collector_port, 0);
    // The exporter retries with exponential backoff (0.5 s doubling, jittered, 60 s budget
    // from the first failure), so the first retry that finds the receiver may take a while.
    receiver.wait_for_spans(Duration::from_secs(60), "any span after it came up", |s| !s.is_empty());
    // What the queue held has gone out (exported, or dropped and counted).
    wait_metrics(listen, Duration::from_secs(60), "an empty export queue", |m| {
        m.get("hoptrace_export_queue_depth") == 0
    });
    let stopped = agent.stop();
    let received = receiver.spans();
    // Shown with --nocapture (and on failure): how the outage played out.
    eprintln!("export after the outage: {}", stopped.log["export"]);

    let exported = stopped.export("spans_exported");
    assert_eq!(
        received.len() as u64,
        exported,
        "the receiver got {} spans, the agent says it exported {exported}: {}",
        received.len(),
        stopped.log["export"]
    );
    assert!(
        (1..=10).contains(&exported),
        "with a queue of 10, between 1 and 10 spans can survive the outage: {}",
        stopped.log["export"]
    );
    assert!(received.iter().all(OtlpSpan::from_agent), "{}", show_spans(&received));
    assert_export_accounted(&stopped);
    assert!(
        stopped.export("spans_dropped_queue_full") >= stopped.export("spans_submitted") - 10,
        "a queue of 10 must have dropped all but 10: {}",
        stopped.log["export"]
    );
    // Every span the pipeline made reached the exporter, and every request was seen.
    assert_eq!(
        stopped.export("spans_submitted"),
        stopped.traces("spans_server") + stopped.traces("spans_client"),
        "{}",
        stopped.log
    );
    assert!(
        stopped.traces("spans_server") >= REQUESTS as u64,
        "the agent saw fewer than {REQUESTS} requests: {}",
        stopped.log["traces"]
    );
}
