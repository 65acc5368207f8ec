//! The agent's spans as the OpenTelemetry SDK holds them, and the SDK's own OTLP exporters
//! (opentelemetry-otlp, HTTP/protobuf) sending to an HTTP client that answers 200 at once.
//!
//! The exporters are the real ones: `SpanExporter::export` groups the batch with
//! opentelemetry-proto's `group_spans_by_resource_and_scope`, encodes it with prost,
//! builds the request and hands it to the client; only the socket is missing.

use std::{
    borrow::Cow,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use hoptrace::model::span::{AnyValue, KeyValue, Resource, SpanKind, SpanRecord, StatusCode};
use opentelemetry::{
    trace::{
        SpanContext, SpanId, SpanKind as OSpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _,
    },
    Context, InstrumentationScope, Key, StringValue, Value,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SpanData};

/// The agent's instrumentation scope, as the SDK would carry it.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("hoptrace").with_version("0.1.0").build()
}

pub fn value(v: AnyValue) -> Value {
    match v {
        AnyValue::Str(s) => Value::String(StringValue::from(String::from(s))),
        AnyValue::Int(i) => Value::I64(i),
        AnyValue::Double(d) => Value::F64(d),
        AnyValue::Bool(b) => Value::Bool(b),
    }
}

/// Moves the key and value (no copy when the string's capacity is its length).
pub fn kv(k: KeyValue) -> opentelemetry::KeyValue {
    opentelemetry::KeyValue::new(Key::from(String::from(k.key)), value(k.value))
}

/// An SDK resource with exactly the agent's attributes (no SDK defaults added).
pub fn resource(r: &Resource) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty().with_attributes(r.attributes.iter().cloned().map(kv)).build()
}

fn kind(k: SpanKind) -> OSpanKind {
    match k {
        SpanKind::Internal => OSpanKind::Internal,
        SpanKind::Server => OSpanKind::Server,
        SpanKind::Client => OSpanKind::Client,
        SpanKind::Producer => OSpanKind::Producer,
        SpanKind::Consumer => OSpanKind::Consumer,
    }
}

fn status(s: &hoptrace::model::span::Status) -> Status {
    match s.code {
        StatusCode::Unset => Status::Unset,
        StatusCode::Ok => Status::Ok,
        StatusCode::Error => Status::error(s.message.clone()),
    }
}

fn trace_state(s: &str) -> TraceState {
    if s.is_empty() {
        TraceState::NONE
    } else {
        TraceState::from_str(s).unwrap_or_default()
    }
}

fn time(ns: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// A finished span as the SDK hands it to an exporter. The agent's spans carry no events
/// or links on this path; both would convert the same way.
pub fn span_data(s: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let flags = TraceFlags::new(s.flags);
    let ctx = SpanContext::new(
        TraceId::from_bytes(s.trace_id),
        SpanId::from_bytes(s.span_id),
        flags,
        false,
        trace_state(&s.trace_state),
    );
    SpanData {
        span_context: ctx,
        parent_span_id: SpanId::from_bytes(s.parent_span_id),
        parent_span_is_remote: !s.is_root(),
        span_kind: kind(s.kind),
        status: status(&s.status),
        name: Cow::Owned(String::from(s.name)),
        start_time: time(s.start_unix_ns),
        end_time: time(s.end_unix_ns),
        attributes: s.attributes.into_iter().map(kv).collect(),
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        instrumentation_scope: scope.clone(),
    }
}

thread_local! {
    static NEXT_IDS: std::cell::Cell<(TraceId, SpanId)> = const { std::cell::Cell::new((TraceId::INVALID, SpanId::INVALID)) };
}

/// The SDK takes span ids from its provider's id generator only (`SpanBuilder` has no
/// id fields in 0.33), while the agent decides ids itself (a server span's id is known
/// before the span is built: its held client calls name it as their parent). This
/// generator hands out the ids [`via_tracer`] set for the span being built.
#[derive(Debug, Default)]
pub struct PresetIds;

impl opentelemetry_sdk::trace::IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS.with(|c| c.get().0)
    }
    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(|c| c.get().1)
    }
}

/// The span made through the SDK's tracing API instead of by the agent: a span started
/// under the remote parent the traceparent named, with the agent's ids (through
/// [`PresetIds`]) and timestamps, then ended; the provider's processor takes it from there.
pub fn via_tracer(tracer: &SdkTracer, s: SpanRecord) {
    let parent = if s.is_root() {
        Context::new()
    } else {
        let remote = SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.parent_span_id),
            TraceFlags::new(s.flags),
            true,
            trace_state(&s.trace_state),
        );
        Context::new().with_remote_span_context(remote)
    };
    NEXT_IDS.with(|c| c.set((TraceId::from_bytes(s.trace_id), SpanId::from_bytes(s.span_id))));
    let st = status(&s.status);
    let b = tracer
        .span_builder(String::from(s.name))
        .with_kind(kind(s.kind))
        .with_start_time(time(s.start_unix_ns))
        .with_attributes(s.attributes.into_iter().map(kv));
    let mut span = tracer.build_with_context(b, &parent);
    use opentelemetry::trace::Span as _;
    span.set_status(st);
    span.end_with_timestamp(time(s.end_unix_ns));
}

/// An HTTP client that accepts every request (an empty 200, i.e. full success) and
/// counts what it was sent.
#[derive(Debug, Default)]
pub struct NullHttp {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// The last body, to check what was sent.
    pub last: std::sync::Mutex<Bytes>,
}

#[async_trait::async_trait]
impl HttpClient for NullHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.requests.fetch_add(1, Relaxed);
        self.bytes.fetch_add(request.body().len() as u64, Relaxed);
        if let Ok(mut last) = self.last.lock() {
            // A reference count, not a copy.
            *last = request.body().clone();
        }
        Ok(Response::builder().status(200).body(Bytes::new())?)
    }
}

/// A handle both the exporter and the bench hold.
#[derive(Debug, Clone, Default)]
pub struct SharedNull(pub Arc<NullHttp>);

#[async_trait::async_trait]
impl HttpClient for SharedNull {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.0.send_bytes(request).await
    }
}

/// opentelemetry-otlp's span exporter, OTLP/HTTP protobuf, into `client`.
pub fn span_exporter(client: SharedNull) -> opentelemetry_otlp::SpanExporter {
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint("http://127.0.0.1:4318/v1/traces")
        .build()
        .expect("span exporter")
}

/// opentelemetry-otlp's metric exporter, OTLP/HTTP protobuf (cumulative), into `client`.
pub fn metric_exporter(client: SharedNull) -> opentelemetry_otlp::MetricExporter {
    opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint("http://127.0.0.1:4318/v1/metrics")
        .build()
        .expect("metric exporter")
}
