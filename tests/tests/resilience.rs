//! Resilience of the export path against a real OTLP receiver
//! (tests/fixtures/otlp_receiver.py) that is down, refuses, or answers slowly: spans
//! within the bounded queue are delivered, everything else is counted under one reason,
//! and memory stays bounded. The retry policy tested here is the one documented in
//! deploy/hoptrace.yaml (`exporter.retry_*`). Needs the Python venv: `cargo xtask setup`.
//!
//! No assertion here is about speed: the only time checks are lower bounds that prove a
//! delay was honoured (Retry-After) or an outage really lasted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const DELIVERY: Duration = Duration::from_secs(60);

fn http_env(endpoint: String, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        // curl-like clients on this node calling the fixture without context are
        // (rightly) propagation gaps; not what these tests are about.
        ("HOPTRACE_GAPS_ENTRY_SERVICES", "chain_service".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn span_ids(spans: &[OtlpSpan]) -> BTreeSet<String> {
    spans.iter().map(|s| s.span_id.clone()).collect()
}

fn refused_ids(refused: &[Value]) -> Vec<String> {
    refused
        .iter()
        .flat_map(|r| r["span_ids"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// `n` GETs on one keep-alive connection: 2n spans (the fixture's SERVER span and this
/// test process's CLIENT span).
fn traffic(port: u16, n: usize) {
    let mut conn = KeepAlive::connect(port);
    for i in 0..n {
        assert_eq!(conn.get(&format!("/orders/{i}"), &[]), 200);
    }
}

/// The set-up of the refusal tests: a receiver that answers every export request with
/// HTTP `status`, the chain_service fixture, and an agent tracing it that exports to the
/// receiver over HTTP with `extra_env`, its `/metrics` on the returned port. Bound in
/// the returned order they are dropped as before: agent, fixture, receiver.
fn refusing_http_collector(
    status: &str,
    extra_env: &[(&'static str, &str)],
) -> (OtlpReceiver, PyServer, u16, RunAgent) {
    let receiver = OtlpReceiver::start_with(0, 0, &["--fail-count", "-1", "--fail-http", status]);
    let service = PyServer::start("chain_service.py", &["0"]);
    let listen = free_port();
    let agent = RunAgent::start(
        &[service.port()],
        &[&listen_args(listen)[0], &listen_args(listen)[1]],
        http_env(receiver.http_endpoint(), extra_env),
    );
    (receiver, service, listen, agent)
}

/// The collector is unreachable (port closed) for 60 s while a client sends a known
/// number of requests; then it comes up on that port. The queue (capacity 40) holds the
/// newest 40 spans through the outage and they are all delivered; every other span is
/// counted as a queue-full drop — exactly; the oldest go first; the agent's RSS stays
/// within a bound derived from the queue, not from the traffic.
#[test]
fn collector_unreachable_60s_queue_delivered_drops_counted_exactly() {
    require_root();
    const CAPACITY: u64 = 40;
    const REQUESTS: usize = 250;
    const OUTAGE: Duration = Duration::from_secs(60);
    let collector_port = free_port();
    let listen = free_port();
    let service = PyServer::start("chain_service.py", &["0"]);
    let agent = RunAgent::start(
        &[service.port()],
        &[
            "--export-queue-capacity",
            &CAPACITY.to_string(),
            "--export-batch-size",
            "10",
            &listen_args(listen)[0],
            &listen_args(listen)[1],
        ],
        http_env(
            format!("http://127.0.0.1:{collector_port}"),
            // A budget longer than the outage (the default, 60 s, would be used up right as
            // the collector returns: that is tested below with a short one), and a short
            // backoff cap so the return is noticed within seconds.
            &[("HOPTRACE_EXPORTER_RETRY_MAX_ELAPSED_MS", "600000"), ("HOPTRACE_EXPORTER_RETRY_MAX_BACKOFF_MS", "2000")],
        ),
    );
    let outage_start = Instant::now();
    let rss_start = rss_kib(agent.pid());
    let mut rss_max = rss_start;
    let mut depth_max = 0;

    // Traffic spread over most of the outage: the first and last requests are marked so
    // the test can tell which spans survived.
    let mut conn = KeepAlive::connect(service.port());
    let pace = Duration::from_millis(180);
    for i in 0..REQUESTS {
        let path = match i {
            0 => "/first".to_string(),
            i if i == REQUESTS - 1 => "/last".to_string(),
            i => format!("/orders/{i}"),
        };
        assert_eq!(conn.get(&path, &[]), 200);
        if i % 25 == 0 {
            rss_max = rss_max.max(rss_kib(agent.pid()));
            let m = Metrics::scrape(listen);
            depth_max = depth_max.max(m.get("hoptrace_export_queue_depth"));
            assert_eq!(m.get("hoptrace_export_spans_exported_total"), 0, "exported with no collector?");
        }
        std::thread::sleep(pace);
    }
    let produced = 2 * REQUESTS as u64;
    let m = wait_metrics(listen, TIMEOUT, "every span submitted", |m| {
        m.get("hoptrace_spans_total{kind=\"server\"}") + m.get("hoptrace_spans_total{kind=\"client\"}") == produced
    });
    // Still down: the queue is full and everything else was dropped, oldest first.
    assert_eq!(m.get("hoptrace_export_queue_depth"), CAPACITY, "{}", m.0);
    assert_eq!(m.get("hoptrace_export_spans_dropped_total{reason=\"queue_full\"}"), produced - CAPACITY, "{}", m.0);
    // The outage lasts its full 60 s (that is the scenario, not a wait for an event); the
    // agent's RSS is sampled twice a second meanwhile.
    while outage_start.elapsed() < OUTAGE {
        rss_max = rss_max.max(rss_kib(agent.pid()));
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = Metrics::scrape(listen);
    assert_eq!(m.get("hoptrace_export_spans_dropped_total{reason=\"retries_exhausted\"}"), 0, "{}", m.0);
    assert_eq!(m.get("hoptrace_export_queue_depth"), CAPACITY, "{}", m.0);

    let receiver = OtlpReceiver::start_on(0, collector_port);
    let outage = outage_start.elapsed();
    receiver.wait_for_spans(DELIVERY, "the queued spans", |s| s.len() as u64 >= CAPACITY);
    rss_max = rss_max.max(rss_kib(agent.pid()));
    let stopped = agent.stop();
    let received = receiver.spans();
    eprintln!(
        "outage {outage:?}: produced {produced}, export {}; agent RSS {rss_start} KiB at start, {rss_max} KiB max; queue depth max seen {depth_max}",
        stopped.log["export"]
    );

    assert_eq!(stopped.export("spans_submitted"), produced, "{}", stopped.log);
    assert_eq!(received.len() as u64, CAPACITY, "{}", show_spans(&received));
    assert_eq!(span_ids(&received).len() as u64, CAPACITY, "duplicates:\n{}", show_spans(&received));
    assert_eq!(stopped.export("spans_exported"), CAPACITY, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("spans_dropped_queue_full"), produced - CAPACITY, "{}", stopped.log["export"]);
    for k in ["spans_dropped_retries_exhausted", "spans_dropped_non_retryable", "spans_dropped_shutdown"] {
        assert_eq!(stopped.export(k), 0, "{k}: {}", stopped.log["export"]);
    }
    assert!(stopped.export("export_requests_failed") >= 1, "{}", stopped.log["export"]);
    assert_export_accounted(&stopped);
    assert!(depth_max <= CAPACITY, "queue depth {depth_max} above its capacity {CAPACITY}");

    // Drop-oldest: the last request's spans survived, the first one's did not.
    let path = |s: &OtlpSpan| s.attrs.get("url.path").and_then(Value::as_str).unwrap_or("").to_string();
    let paths: Vec<String> = received.iter().map(path).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/last").count(), 2, "the newest spans must survive: {paths:?}");
    assert!(!paths.iter().any(|p| p == "/first"), "the oldest span survived a full queue: {paths:?}");

    // Memory: bounded by the queue, not the traffic. 64 KiB per queued span is ~50 times
    // a span's real size; 32 MiB covers allocator and runtime noise.
    let bound = rss_start + CAPACITY * 64 + 32 * 1024;
    assert!(rss_max <= bound, "agent RSS grew to {rss_max} KiB (start {rss_start} KiB, bound {bound} KiB)");
}

/// 503 with `Retry-After: 2`: the batch is retried — not before the server's delay — and
/// delivered whole; nothing is dropped.
#[test]
fn http_503_retry_after_is_honoured_then_delivered() {
    require_root();
    let receiver = OtlpReceiver::start_with(0, 0, &["--fail-count", "2", "--fail-http", "503", "--retry-after", "2"]);
    let service = PyServer::start("chain_service.py", &["0"]);
    let agent = RunAgent::start(&[service.port()], &[], http_env(receiver.http_endpoint(), &[]));
    traffic(service.port(), 5);
    receiver.wait_for_spans(DELIVERY, "10 spans after two 503s", |s| s.len() >= 10);
    // Stopped, the agent sends nothing more; the receiver records a request before it
    // answers, so everything the agent sent is in its records (a duplicate too).
    let stopped = agent.stop();
    let received = receiver.spans();
    let refused = receiver.refused();

    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|r| r["status"] == 503 && r["transport"] == "http"), "{refused:?}");
    // Every refused span is delivered later, exactly once.
    let delivered = span_ids(&received);
    assert_eq!(delivered.len(), received.len(), "duplicates:\n{}", show_spans(&received));
    for id in refused_ids(&refused) {
        assert!(delivered.contains(&id), "refused span {id} never delivered");
    }
    // The server's delay wins over the computed backoff (0.25–0.5 s for a first retry).
    let times: Vec<f64> = refused
        .iter()
        .map(|r| r["time"].as_f64().unwrap())
        .chain(receiver.requests().iter().map(|r| r["time"].as_f64().unwrap()))
        .collect();
    for pair in times.windows(2).take(2) {
        assert!(
            pair[1] - pair[0] >= 1.9,
            "retried {:.3} s after a Retry-After: 2 refusal ({times:?})",
            pair[1] - pair[0]
        );
    }
    assert_eq!(stopped.export("spans_exported"), 10, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("export_requests_failed"), 2, "{}", stopped.log["export"]);
    assert_export_accounted(&stopped);
}

/// 400 is not retryable: each batch is sent once, refused, and its spans are counted as
/// non-retryable drops; nothing is delivered or retried.
#[test]
fn http_400_dropped_at_once_counted_not_retried() {
    require_root();
    let (receiver, service, listen, agent) =
        refusing_http_collector("400", &[("HOPTRACE_EXPORTER_RETRY_INITIAL_BACKOFF_MS", "100")]);
    traffic(service.port(), 4);
    let non_retryable = |m: &Metrics| m.get("hoptrace_export_spans_dropped_total{reason=\"non_retryable\"}");
    wait_metrics(listen, DELIVERY, "8 non-retryable drops", |m| non_retryable(m) == 8);
    // A retry would be sent before anything newer (the exporter retries a batch before it
    // takes the next): one more request, its 2 spans refused in turn, shows there was none.
    traffic(service.port(), 1);
    wait_metrics(listen, DELIVERY, "10 non-retryable drops", |m| non_retryable(m) == 10);
    let stopped = agent.stop();
    let refused = receiver.refused();
    let ids = refused_ids(&refused);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (10, 10), "each span refused exactly once: {refused:?}");
    assert!(receiver.spans().is_empty());
    assert_eq!(stopped.export("spans_dropped_non_retryable"), 10, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("export_requests_failed"), refused.len() as u64, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("spans_exported"), 0);
    assert_export_accounted(&stopped);
}

/// A collector that answers 429 forever (no Retry-After): the batch is retried with
/// backoff until its budget (`retry_max_elapsed_ms`) runs out, then dropped and counted
/// as retries_exhausted — the same spans on every attempt.
#[test]
fn http_429_forever_retried_until_budget_then_counted() {
    require_root();
    let (receiver, service, listen, agent) = refusing_http_collector(
        "429",
        &[
            ("HOPTRACE_EXPORTER_RETRY_INITIAL_BACKOFF_MS", "200"),
            ("HOPTRACE_EXPORTER_RETRY_MAX_BACKOFF_MS", "800"),
            ("HOPTRACE_EXPORTER_RETRY_MAX_ELAPSED_MS", "3000"),
        ],
    );
    traffic(service.port(), 3);
    wait_metrics(listen, DELIVERY, "6 spans dropped with retries exhausted", |m| {
        m.get("hoptrace_export_spans_dropped_total{reason=\"retries_exhausted\"}") == 6
    });
    let stopped = agent.stop();
    let refused = receiver.refused();
    assert!(refused.len() >= 3, "a 3 s budget with 0.2–0.8 s backoff means several attempts: {refused:?}");
    let first: BTreeSet<String> =
        refused[0]["span_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let all: BTreeSet<String> = refused_ids(&refused).into_iter().collect();
    assert_eq!(all.len(), 6, "the same 6 spans on every attempt: {refused:?}");
    assert!(first.is_subset(&all));
    assert!(receiver.spans().is_empty());
    assert_eq!(stopped.export("spans_dropped_retries_exhausted"), 6, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("export_requests_failed"), refused.len() as u64, "{}", stopped.log["export"]);
    assert_export_accounted(&stopped);
}

/// A collector slower than the exporter's timeout: the attempt times out and is retried;
/// the spans are delivered and counted once. The slow collector did receive the first
/// attempt, so it holds them twice — OTLP delivery is at-least-once, as documented.
#[test]
fn slow_collector_beyond_timeout_retried_delivered_at_least_once() {
    require_root();
    let receiver = OtlpReceiver::start_with(0, 0, &["--delay", "4", "--delay-count", "1"]);
    let service = PyServer::start("chain_service.py", &["0"]);
    let agent = RunAgent::start(
        &[service.port()],
        &[],
        http_env(receiver.http_endpoint(), &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")]),
    );
    traffic(service.port(), 3);
    receiver.wait_for_spans(DELIVERY, "the retried batch and the slow one", |s| s.len() >= 12);
    let stopped = agent.stop();
    let requests = receiver.requests();
    let delayed: Vec<&Value> = requests.iter().filter(|r| r["delayed"] == true).collect();
    let prompt: Vec<Value> = requests.iter().filter(|r| r["delayed"] == false).cloned().collect();
    assert_eq!(delayed.len(), 1, "{requests:?}");
    let prompt_spans: Vec<OtlpSpan> = prompt.iter().flat_map(|r| otlp_spans(&r["request"])).collect();
    let slow_spans = otlp_spans(&delayed[0]["request"]);
    assert_eq!(span_ids(&prompt_spans).len(), 6, "{}", show_spans(&prompt_spans));
    assert_eq!(prompt_spans.len(), 6, "delivered twice by retries:\n{}", show_spans(&prompt_spans));
    assert!(span_ids(&slow_spans).is_subset(&span_ids(&prompt_spans)), "the timed-out batch was retried");
    assert_eq!(stopped.export("spans_exported"), 6, "{}", stopped.log["export"]);
    assert!(stopped.export("export_requests_failed") >= 1, "{}", stopped.log["export"]);
    assert_export_accounted(&stopped);
}

/// gRPC: UNAVAILABLE is retried (then delivered); INVALID_ARGUMENT is dropped at once and
/// counted.
#[test]
fn grpc_unavailable_retried_invalid_argument_dropped() {
    require_root();
    let flaky = OtlpReceiver::start_with(0, 0, &["--fail-count", "2", "--fail-grpc", "UNAVAILABLE"]);
    let service = PyServer::start("chain_service.py", &["0"]);
    let grpc = |r: &OtlpReceiver| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", r.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            ("HOPTRACE_GAPS_ENTRY_SERVICES", "chain_service".to_string()),
            ("HOPTRACE_EXPORTER_RETRY_INITIAL_BACKOFF_MS", "100".to_string()),
        ]
    };
    let agent = RunAgent::start(&[service.port()], &[], grpc(&flaky));
    traffic(service.port(), 2);
    flaky.wait_for_spans(DELIVERY, "4 spans after two UNAVAILABLE", |s| s.len() >= 4);
    let stopped = agent.stop();
    assert_eq!(flaky.refused().len(), 2, "{:?}", flaky.refused());
    assert_eq!(span_ids(&flaky.spans()).len(), 4);
    assert_eq!(flaky.spans().len(), 4);
    assert_eq!(stopped.export("spans_exported"), 4, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("export_requests_failed"), 2, "{}", stopped.log["export"]);
    assert_export_accounted(&stopped);

    let rejecting = OtlpReceiver::start_with(0, 0, &["--fail-count", "-1", "--fail-grpc", "INVALID_ARGUMENT"]);
    let listen = free_port();
    let agent =
        RunAgent::start(&[service.port()], &[&listen_args(listen)[0], &listen_args(listen)[1]], grpc(&rejecting));
    traffic(service.port(), 2);
    let non_retryable = |m: &Metrics| m.get("hoptrace_export_spans_dropped_total{reason=\"non_retryable\"}");
    wait_metrics(listen, DELIVERY, "4 non-retryable drops", |m| non_retryable(m) == 4);
    // No retry: it would have been sent before the next request's spans (see the HTTP 400
    // test).
    traffic(service.port(), 1);
    wait_metrics(listen, DELIVERY, "6 non-retryable drops", |m| non_retryable(m) == 6);
    let stopped = agent.stop();
    let refused = rejecting.refused();
    assert_eq!(refused_ids(&refused).len(), 6, "each span refused once: {refused:?}");
    assert!(refused.iter().all(|r| r["status"] == "INVALID_ARGUMENT"));
    assert_eq!(stopped.export("spans_dropped_non_retryable"), 6, "{}", stopped.log["export"]);
    assert_eq!(stopped.export("spans_exported"), 0);
    assert_export_accounted(&stopped);
}
