//! SpanExporter tests against real collectors: a tonic `TraceService` server and a hyper
//! OTLP/HTTP server, each on its own thread and runtime (the exporter's API is blocking, as
//! the capture thread uses it), answering from a script of replies.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::Code;

use super::otlp::tests::{resource, span};
use super::*;

/// What the collector answers to one request.
#[derive(Clone, Debug)]
enum Reply {
    Ok,
    Partial { rejected: i64, message: &'static str },
    Grpc { code: Code, retry_info: Option<Duration> },
    Http { status: u16, retry_after: Option<u64> },
}

/// One request the collector accepted (answered with success).
#[derive(Debug)]
struct Received {
    request: ExportTraceServiceRequest,
    headers: ::http::HeaderMap,
    path: String,
    at: Instant,
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    attempts: AtomicUsize,
}

impl State {
    fn next_reply(&self) -> Reply {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok)
    }

    fn record(&self, request: ExportTraceServiceRequest, headers: ::http::HeaderMap, path: String) {
        let at = Instant::now();
        self.received.lock().unwrap().push(Received { request, headers, path, at });
    }
}

struct Collector {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Collector {
    fn attempts(&self) -> usize {
        self.state.attempts.load(Ordering::SeqCst)
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.state.received.lock().unwrap()
    }

    fn received_seqs(&self) -> Vec<u8> {
        let mut seqs: Vec<u8> = self
            .received()
            .iter()
            .flat_map(|r| r.request.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter())
            .map(|s| s.trace_id[0])
            .collect();
        seqs.sort_unstable();
        seqs
    }
}

/// Runs `serve` on its own thread and current-thread runtime; the server lives as long as
/// the test process (nobody needs to stop it).
fn on_thread<F, Fut>(serve: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(serve());
    });
}

/// Binds synchronously, so the port is listening before the exporter is pointed at it.
fn bind(addr: &str) -> StdTcpListener {
    let l = StdTcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

struct GrpcCollector(Arc<State>);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let partial = match self.0.next_reply() {
            Reply::Ok => None,
            Reply::Partial { rejected, message } => {
                Some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message.into() })
            }
            Reply::Grpc { code, retry_info } => return Err(status_with_retry_info(code, retry_info)),
            Reply::Http { .. } => unreachable!("HTTP reply scripted for the gRPC collector"),
        };
        self.0.record(request.into_inner(), headers, String::new());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: partial }))
    }
}

fn status_with_retry_info(code: Code, delay: Option<Duration>) -> tonic::Status {
    let Some(delay) = delay else {
        return tonic::Status::new(code, "scripted failure");
    };
    use super::grpc::rpc;
    let info = rpc::RetryInfo {
        retry_delay: Some(rpc::ProtoDuration { seconds: delay.as_secs() as i64, nanos: delay.subsec_nanos() as i32 }),
    };
    let details = rpc::Status {
        code: code as i32,
        message: "scripted failure".into(),
        details: vec![rpc::Any { type_url: rpc::RETRY_INFO_TYPE.into(), value: info.encode_to_vec() }],
    };
    tonic::Status::with_details(code, "scripted failure", Bytes::from(details.encode_to_vec()))
}

fn start_grpc_collector(listener: StdTcpListener, script: Vec<Reply>) -> Collector {
    let state = Arc::new(State { script: Mutex::new(script.into()), ..Default::default() });
    let addr = listener.local_addr().unwrap();
    let svc_state = state.clone();
    on_thread(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let svc = TraceServiceServer::new(GrpcCollector(svc_state)).accept_compressed(CompressionEncoding::Gzip);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    Collector { addr, state }
}

fn start_http_collector(listener: StdTcpListener, script: Vec<Reply>) -> Collector {
    let state = Arc::new(State { script: Mutex::new(script.into()), ..Default::default() });
    let addr = listener.local_addr().unwrap();
    let server_state = state.clone();
    on_thread(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = server_state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle_http(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Collector { addr, state }
}

/// An OTLP/HTTP receiver: decodes (gunzipping if asked) protobuf bodies with prost.
async fn handle_http(
    state: Arc<State>,
    req: ::http::Request<Incoming>,
) -> Result<::http::Response<Full<Bytes>>, Infallible> {
    let headers = req.headers().clone();
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let reply = state.next_reply();
    let respond = |status: u16, body: Vec<u8>| {
        Ok(::http::Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    let partial = match reply {
        Reply::Http { status, retry_after } => {
            let mut resp = respond(status, Vec::new())?;
            if let Some(secs) = retry_after {
                resp.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
            }
            return Ok(resp);
        }
        Reply::Grpc { .. } => unreachable!("gRPC reply scripted for the HTTP collector"),
        Reply::Ok => None,
        Reply::Partial { rejected, message } => {
            Some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message.into() })
        }
    };
    let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
        out
    } else {
        body.to_vec()
    };
    let Ok(request) = ExportTraceServiceRequest::decode(&raw[..]) else {
        return respond(400, Vec::new());
    };
    state.record(request, headers, path);
    respond(200, ExportTraceServiceResponse { partial_success: partial }.encode_to_vec())
}

fn config(protocol: Protocol, addr: SocketAddr) -> ExporterConfig {
    let endpoint = match protocol {
        Protocol::Grpc => format!("http://{addr}"),
        Protocol::HttpProtobuf => format!("http://{addr}/v1/traces"),
    };
    ExporterConfig {
        endpoint: Some(endpoint),
        protocol,
        timeout: Duration::from_secs(2),
        batch_max_spans: 64,
        batch_timeout: Duration::from_millis(20),
        queue_capacity: 1024,
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(10),
        },
        ..Default::default()
    }
}

/// Polls the exporter's counters until `done` holds (5 s at most).
fn wait_for(exporter: &SpanExporter, what: &str, done: impl Fn(&ExportStats) -> bool) -> ExportStats {
    let start = Instant::now();
    loop {
        let stats = exporter.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}: {stats:?}, last error {:?}",
            exporter.last_error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// Three spans of two services, interleaved, must arrive as two ResourceSpans with the
/// resources' and spans' attributes exactly as built.
fn submit_two_services(exporter: &SpanExporter) {
    let checkout = resource("checkout");
    let payments = resource("payments");
    exporter.submit(span(&checkout, 1));
    exporter.submit(span(&payments, 2));
    exporter.submit(span(&checkout, 3));
}

fn assert_two_services(request: &ExportTraceServiceRequest) {
    assert_eq!(request.resource_spans.len(), 2);
    for (rs, (service, seqs)) in request.resource_spans.iter().zip([("checkout", vec![1u8, 3]), ("payments", vec![2])])
    {
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes,
            vec![kv("service.name", s(service)), kv("host.name", s("node-1"))]
        );
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "hoptrace");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.iter().map(|s| s.trace_id[0]).collect::<Vec<_>>(), seqs);
        for (sp, n) in spans.iter().zip(seqs) {
            assert_eq!(sp.trace_id, vec![n; 16]);
            assert_eq!(sp.span_id, vec![n + 1; 8]);
            assert!(sp.parent_span_id.is_empty());
            assert_eq!(sp.kind, 2);
            assert_eq!(
                sp.attributes,
                vec![
                    kv("http.request.method", s("GET")),
                    kv("http.response.status_code", Value::IntValue(200)),
                    kv("seq", Value::IntValue(i64::from(n))),
                ]
            );
        }
    }
}

#[test]
fn exporter_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SpanExporter>();
}

#[test]
fn grpc_delivers_spans_grouped_by_resource() {
    let collector = start_grpc_collector(bind("127.0.0.1:0"), vec![]);
    let mut cfg = config(Protocol::Grpc, collector.addr);
    cfg.compression = Compression::Gzip;
    cfg.headers = vec![("X-Tenant".into(), "team a".into())];
    cfg.batch_max_spans = 3;
    let exporter = SpanExporter::start(cfg).unwrap();
    submit_two_services(&exporter);
    let stats = wait_for(&exporter, "3 spans exported", |s| s.spans_exported == 3);
    assert_eq!(stats.export_requests_ok, 1);
    {
        let received = collector.received();
        assert_eq!(received.len(), 1);
        assert_two_services(&received[0].request);
        assert_eq!(received[0].headers.get("x-tenant").unwrap(), "team a");
        assert_eq!(received[0].headers.get("grpc-encoding").unwrap(), "gzip");
    }
    let stats = exporter.shutdown(Duration::from_secs(1));
    assert_eq!((stats.spans_submitted, stats.spans_exported, stats.queue_depth), (3, 3, 0));
}

#[test]
fn http_delivers_spans_grouped_by_resource() {
    let collector = start_http_collector(bind("127.0.0.1:0"), vec![]);
    let mut cfg = config(Protocol::HttpProtobuf, collector.addr);
    cfg.compression = Compression::Gzip;
    cfg.headers = vec![("Authorization".into(), "Bearer abc".into())];
    cfg.batch_max_spans = 3;
    let exporter = SpanExporter::start(cfg).unwrap();
    submit_two_services(&exporter);
    wait_for(&exporter, "3 spans exported", |s| s.spans_exported == 3);
    {
        let received = collector.received();
        assert_eq!(received.len(), 1);
        assert_two_services(&received[0].request);
        let r = &received[0];
        assert_eq!(r.path, "/v1/traces");
        assert_eq!(r.headers.get("content-type").unwrap(), "application/x-protobuf");
        assert_eq!(r.headers.get("content-encoding").unwrap(), "gzip");
        assert_eq!(r.headers.get("authorization").unwrap(), "Bearer abc");
    }
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn grpc_unavailable_is_retried_until_delivered_once() {
    let unavailable = Reply::Grpc { code: Code::Unavailable, retry_info: None };
    let collector = start_grpc_collector(bind("127.0.0.1:0"), vec![unavailable.clone(), unavailable]);
    let exporter = SpanExporter::start(config(Protocol::Grpc, collector.addr)).unwrap();
    let r = resource("checkout");
    exporter.submit(span(&r, 1));
    exporter.submit(span(&r, 2));
    let stats = wait_for(&exporter, "2 spans exported", |s| s.spans_exported == 2);
    assert_eq!((stats.export_requests_failed, stats.export_requests_ok), (2, 1));
    assert_eq!(collector.attempts(), 3);
    assert_eq!(collector.received().len(), 1);
    assert_eq!(collector.received_seqs(), vec![1, 2]);
    let stats = exporter.shutdown(Duration::from_secs(1));
    assert_eq!(stats.spans_dropped_non_retryable + stats.spans_dropped_retries_exhausted, 0);
}

#[test]
fn grpc_retry_info_delay_is_honoured() {
    let reply = Reply::Grpc { code: Code::ResourceExhausted, retry_info: Some(Duration::from_millis(300)) };
    let collector = start_grpc_collector(bind("127.0.0.1:0"), vec![reply]);
    let mut cfg = config(Protocol::Grpc, collector.addr);
    // Far longer than the server's 300 ms: a delivery within 2 s means RetryInfo was used.
    cfg.retry.initial_backoff = Duration::from_secs(10);
    cfg.retry.max_backoff = Duration::from_secs(10);
    cfg.retry.max_elapsed = Duration::from_secs(30);
    let exporter = SpanExporter::start(cfg).unwrap();
    let submitted = Instant::now();
    exporter.submit(span(&resource("checkout"), 1));
    wait_for(&exporter, "span exported", |s| s.spans_exported == 1);
    let waited = collector.received()[0].at - submitted;
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "{waited:?}");
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn grpc_invalid_argument_is_dropped_and_counted() {
    let reply = Reply::Grpc { code: Code::InvalidArgument, retry_info: None };
    let collector = start_grpc_collector(bind("127.0.0.1:0"), vec![reply]);
    let exporter = SpanExporter::start(config(Protocol::Grpc, collector.addr)).unwrap();
    let r = resource("checkout");
    exporter.submit(span(&r, 1));
    exporter.submit(span(&r, 2));
    let stats = wait_for(&exporter, "batch dropped", |s| s.spans_dropped_non_retryable == 2);
    assert_eq!((stats.export_requests_failed, stats.spans_exported), (1, 0));
    assert_eq!(exporter.drop_reasons(), vec![("grpc INVALID_ARGUMENT".to_string(), 2)]);
    assert_eq!(collector.attempts(), 1);
    // The exporter carries on with the next batch.
    exporter.submit(span(&r, 3));
    wait_for(&exporter, "next span exported", |s| s.spans_exported == 1);
    assert_eq!(collector.received_seqs(), vec![3]);
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn http_400_is_dropped_and_counted() {
    let reply = Reply::Http { status: 400, retry_after: None };
    let collector = start_http_collector(bind("127.0.0.1:0"), vec![reply]);
    let exporter = SpanExporter::start(config(Protocol::HttpProtobuf, collector.addr)).unwrap();
    exporter.submit(span(&resource("checkout"), 1));
    let stats = wait_for(&exporter, "batch dropped", |s| s.spans_dropped_non_retryable == 1);
    assert_eq!((stats.export_requests_failed, stats.spans_exported), (1, 0));
    assert_eq!(exporter.drop_reasons(), vec![("http 400".to_string(), 1)]);
    assert_eq!(collector.attempts(), 1);
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn http_503_retry_after_is_honoured() {
    let reply = Reply::Http { status: 503, retry_after: Some(1) };
    let collector = start_http_collector(bind("127.0.0.1:0"), vec![reply]);
    let mut cfg = config(Protocol::HttpProtobuf, collector.addr);
    cfg.retry.initial_backoff = Duration::from_secs(10);
    cfg.retry.max_backoff = Duration::from_secs(10);
    cfg.retry.max_elapsed = Duration::from_secs(30);
    let exporter = SpanExporter::start(cfg).unwrap();
    let submitted = Instant::now();
    exporter.submit(span(&resource("checkout"), 1));
    let stats = wait_for(&exporter, "span exported", |s| s.spans_exported == 1);
    assert_eq!((stats.export_requests_failed, stats.export_requests_ok), (1, 1));
    let waited = collector.received()[0].at - submitted;
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(3), "{waited:?}");
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn partial_success_rejections_are_counted() {
    let reply = Reply::Partial { rejected: 1, message: "span 2 too large" };
    let collector = start_grpc_collector(bind("127.0.0.1:0"), vec![reply]);
    let mut cfg = config(Protocol::Grpc, collector.addr);
    cfg.batch_max_spans = 3;
    let exporter = SpanExporter::start(cfg).unwrap();
    let r = resource("checkout");
    for n in 1..=3 {
        exporter.submit(span(&r, n));
    }
    let stats = wait_for(&exporter, "batch settled", |s| s.export_requests_ok == 1);
    assert_eq!((stats.spans_exported, stats.spans_rejected_by_collector), (2, 1));
    assert!(exporter.last_error().unwrap().contains("span 2 too large"));
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn retries_exhausted_are_counted() {
    let unavailable = Reply::Grpc { code: Code::Unavailable, retry_info: None };
    let collector = start_grpc_collector(bind("127.0.0.1:0"), vec![unavailable; 1000]);
    let mut cfg = config(Protocol::Grpc, collector.addr);
    cfg.retry.max_elapsed = Duration::from_millis(150);
    let exporter = SpanExporter::start(cfg).unwrap();
    exporter.submit(span(&resource("checkout"), 1));
    exporter.submit(span(&resource("checkout"), 2));
    let stats = wait_for(&exporter, "retries exhausted", |s| s.spans_dropped_retries_exhausted == 2);
    assert!(stats.export_requests_failed >= 2, "{stats:?}");
    assert_eq!((stats.spans_exported, stats.queue_depth), (0, 0));
    exporter.shutdown(Duration::from_secs(1));
}

/// The collector is down when the exporter starts: spans wait in the bounded queue, the
/// oldest queued beyond its capacity are dropped (counted exactly), and the rest are
/// delivered once a collector listens on the port.
fn collector_down_at_start(protocol: Protocol) {
    let reserved = bind("127.0.0.1:0");
    let addr = reserved.local_addr().unwrap();
    drop(reserved);

    let mut cfg = config(protocol, addr);
    cfg.queue_capacity = 10;
    cfg.batch_max_spans = 4;
    let exporter = SpanExporter::start(cfg).unwrap();
    let r = resource("checkout");
    for n in 1..=25 {
        exporter.submit(span(&r, n));
    }
    let stats = exporter.stats();
    assert_eq!((stats.spans_submitted, stats.spans_dropped_queue_full), (25, 15));
    assert_eq!(stats.queue_depth, 10);
    wait_for(&exporter, "failed attempts", |s| s.export_requests_failed >= 2);

    let collector = match protocol {
        Protocol::Grpc => start_grpc_collector(bind(&addr.to_string()), vec![]),
        Protocol::HttpProtobuf => start_http_collector(bind(&addr.to_string()), vec![]),
    };
    let stats = wait_for(&exporter, "queued spans delivered", |s| s.spans_exported == 10);
    // Drop-oldest applies to queued spans; a batch that was on the wire when the queue
    // overflowed is kept (and retried), so the survivors are the newest spans plus at most
    // one older batch: the newest `capacity - batch` are always among them.
    let seqs = collector.received_seqs();
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "{seqs:?}");
    assert!((20..=25).all(|n| seqs.contains(&n)), "{seqs:?}");
    assert_eq!(stats.spans_dropped_queue_full, 15);
    assert_eq!(
        stats.spans_dropped_non_retryable + stats.spans_dropped_retries_exhausted + stats.spans_dropped_shutdown,
        0
    );
    assert_eq!(stats.queue_depth, 0);
    exporter.shutdown(Duration::from_secs(1));
}

#[test]
fn grpc_collector_down_at_start_then_up() {
    collector_down_at_start(Protocol::Grpc);
}

#[test]
fn http_collector_down_at_start_then_up() {
    collector_down_at_start(Protocol::HttpProtobuf);
}

#[test]
fn shutdown_flushes_without_waiting_for_the_batch_timer() {
    let collector = start_http_collector(bind("127.0.0.1:0"), vec![]);
    let mut cfg = config(Protocol::HttpProtobuf, collector.addr);
    cfg.batch_timeout = Duration::from_secs(60);
    let exporter = SpanExporter::start(cfg).unwrap();
    for n in 1..=3 {
        exporter.submit(span(&resource("checkout"), n));
    }
    let started = Instant::now();
    let stats = exporter.shutdown(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!((stats.spans_exported, stats.queue_depth), (3, 0));
    assert_eq!(collector.received_seqs(), vec![1, 2, 3]);
}

#[test]
fn shutdown_deadline_bounds_retries_and_counts_the_rest() {
    let reserved = bind("127.0.0.1:0");
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let exporter = SpanExporter::start(config(Protocol::Grpc, addr)).unwrap();
    for n in 1..=5 {
        exporter.submit(span(&resource("checkout"), n));
    }
    let started = Instant::now();
    let stats = exporter.shutdown(Duration::from_millis(300));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "{took:?}");
    assert_eq!((stats.spans_dropped_shutdown, stats.spans_exported, stats.queue_depth), (5, 0, 0));
}

#[test]
fn json_sink_writes_one_otlp_json_line_per_batch() {
    let path = std::env::temp_dir().join(format!(
        "hoptrace-export-test-{}-{}.jsonl",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    let _ = std::fs::remove_file(&path);
    let cfg = ExporterConfig {
        json_output: JsonOutput::File(path.clone()),
        batch_max_spans: 2,
        batch_timeout: Duration::from_millis(20),
        ..Default::default()
    };
    let exporter = SpanExporter::start(cfg).unwrap();
    let r = resource("checkout");
    for n in 1..=3 {
        exporter.submit(span(&r, n));
    }
    let stats = exporter.shutdown(Duration::from_secs(1));
    assert_eq!((stats.spans_exported, stats.export_requests_ok), (3, 2));
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let spans = &lines[0]["resourceSpans"][0]["scopeSpans"][0]["spans"];
    assert_eq!(spans[0]["traceId"], "01010101010101010101010101010101");
    assert_eq!(spans[1]["spanId"], "0303030303030303");
    assert_eq!(lines[1]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"], "GET /items/3");
}

#[test]
fn start_rejects_bad_tls_and_header_settings() {
    let mut cfg = config(Protocol::Grpc, "127.0.0.1:4317".parse().unwrap());
    cfg.endpoint = Some("https://127.0.0.1:4317".into());
    cfg.tls.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(matches!(SpanExporter::start(cfg), Err(StartError::Config(ConfigError::CaFile { .. }))));

    let mut cfg = config(Protocol::HttpProtobuf, "127.0.0.1:4318".parse().unwrap());
    cfg.headers = vec![("bad header".into(), "v".into())];
    assert!(matches!(SpanExporter::start(cfg), Err(StartError::Config(ConfigError::InvalidHeader { .. }))));

    // An https endpoint with only the built-in roots needs no file and starts fine.
    let mut cfg = config(Protocol::HttpProtobuf, "127.0.0.1:4318".parse().unwrap());
    cfg.endpoint = Some("https://collector.invalid/v1/traces".into());
    SpanExporter::start(cfg).unwrap().shutdown(Duration::from_millis(10));
}
