//! The log path (issue 17): the agent's access records to OTLP protobuf bytes, directly
//! (`export::logs::to_logs_request` + prost, what both of the agent's log transports
//! send) against opentelemetry_sdk's log records and opentelemetry-otlp's log exporter.
//!
//! Every case starts from a batch of 512 access records as the agent makes them (one
//! resource, 11 attributes, trace context) and ends with the bytes of one export request:
//!
//! - `agent/direct_encode`: `export::logs_encode::encode_logs_request` (the OTLP/HTTP path).
//! - `agent/to_request_prost`: `to_logs_request` + `encode_to_vec` (the gRPC path's message).
//! - `sdk/convert_and_export`: each record made an `SdkLogRecord` through the SDK logger's
//!   `create_log_record` (timestamps, severity, event name, attributes, trace context),
//!   then `LogExporter::export` of the batch (OTLP/HTTP protobuf into a client that answers
//!   200 at once, so only the socket is missing).
//!
//! Allocations per record (counting allocator) and CPU ns per record in interleaved rounds.
//! Run: `AYA_BUILD_SKIP=1 cargo bench --features bench --bench logs`.

use std::{sync::Arc, time::UNIX_EPOCH};

use design_card::{alloc, cpu, otel};
use hoptrace::{
    export::{logs::to_logs_request, logs_encode::encode_logs_request},
    model::{
        log::{LogRecord, Severity},
        span::{AnyValue, KeyValue, Resource},
    },
};
use opentelemetry::{
    logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity as OSeverity},
    trace::{SpanId, TraceFlags, TraceId},
    InstrumentationScope,
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use prost::Message;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const RECORDS: usize = 512;

fn records(resource: &Arc<Resource>) -> Vec<LogRecord> {
    (0..RECORDS)
        .map(|i| LogRecord {
            resource: resource.clone(),
            time_unix_ns: 1_700_000_000_000_000_000 + i as u64,
            observed_unix_ns: 1_700_000_000_000_500_000 + i as u64,
            severity: Severity::Info,
            severity_text: "INFO".into(),
            body: "".into(),
            attributes: vec![
                KeyValue::str("http.request.method", "GET"),
                KeyValue::str("http.route", "/orders/{id}"),
                KeyValue::str("network.protocol.version", "1.1"),
                KeyValue::str("server.address", "10.0.0.7"),
                KeyValue::int("server.port", 8080),
                KeyValue::str("client.address", "10.0.0.9"),
                KeyValue::int("http.response.status_code", 200),
                KeyValue { key: "http.server.request.duration".into(), value: AnyValue::Double(0.0042) },
                KeyValue::int("http.request.body.size", 0),
                KeyValue::int("http.response.body.size", 1234),
                KeyValue::str(String::from("tenant"), "acme"),
            ],
            event_name: "http.server.access".into(),
            trace_id: [(i % 251) as u8 + 1; 16],
            span_id: [(i % 13) as u8 + 1; 8],
            flags: 1,
        })
        .collect()
}

fn direct_encode(batch: Vec<LogRecord>) -> usize {
    let n = encode_logs_request(&batch).len();
    drop(batch);
    n
}

fn direct(batch: Vec<LogRecord>) -> usize {
    let n = to_logs_request(&batch).encode_to_vec().len();
    drop(batch);
    n
}

fn sdk_record(logger: &SdkLogger, r: LogRecord) -> SdkLogRecord {
    let mut rec = logger.create_log_record();
    rec.set_timestamp(UNIX_EPOCH + std::time::Duration::from_nanos(r.time_unix_ns));
    rec.set_observed_timestamp(UNIX_EPOCH + std::time::Duration::from_nanos(r.observed_unix_ns));
    rec.set_severity_number(OSeverity::Info);
    // The SDK takes severity text and event names as `&'static str` only: the agent's app
    // lines carry the application's own level text, which would have to be leaked.
    rec.set_severity_text("INFO");
    rec.set_event_name("http.server.access");
    rec.add_attributes(r.attributes.into_iter().map(|kv| {
        use opentelemetry::logs::AnyValue as L;
        let v = match kv.value {
            AnyValue::Str(s) => L::String(String::from(s).into()),
            AnyValue::Int(i) => L::Int(i),
            AnyValue::Double(d) => L::Double(d),
            AnyValue::Bool(b) => L::Boolean(b),
        };
        (opentelemetry::Key::from(String::from(kv.key)), v)
    }));
    rec.set_trace_context(
        TraceId::from_bytes(r.trace_id),
        SpanId::from_bytes(r.span_id),
        Some(TraceFlags::new(r.flags)),
    );
    rec
}

struct Sdk {
    logger: SdkLogger,
    scope: InstrumentationScope,
    exporter: opentelemetry_otlp::LogExporter,
    _provider: SdkLoggerProvider,
}

impl Sdk {
    fn new(resource: &Resource, null: otel::SharedNull) -> Self {
        let provider = SdkLoggerProvider::builder().with_resource(otel::resource(resource)).build();
        let logger = provider.logger_with_scope(otel::scope());
        let mut exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_http_client(null)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint("http://127.0.0.1:4318/v1/logs")
            .build()
            .expect("log exporter");
        exporter.set_resource(&otel::resource(resource));
        Self { logger, scope: otel::scope(), exporter, _provider: provider }
    }

    fn convert_and_export(&self, batch: Vec<LogRecord>) {
        let recs: Vec<SdkLogRecord> = batch.into_iter().map(|r| sdk_record(&self.logger, r)).collect();
        let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> = recs.iter().map(|r| (r, &self.scope)).collect();
        futures_executor::block_on(self.exporter.export(LogBatch::new(&pairs))).expect("export");
    }
}

fn main() {
    let resource = Arc::new(Resource {
        attributes: vec![
            KeyValue::str("service.name", "shop"),
            KeyValue::str("host.name", "node-1"),
            KeyValue::int("process.pid", 4242),
        ],
    });
    let null = otel::SharedNull::default();
    let sdk = Sdk::new(&resource, null.clone());
    let n = RECORDS as f64;

    // Both paths must send the same records: compare the request sizes.
    let direct_bytes = direct(records(&resource));
    assert_eq!(direct_bytes, direct_encode(records(&resource)));
    sdk.convert_and_export(records(&resource));
    let sdk_bytes = null.0.bytes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("request bytes per record: agent {:.0}, sdk {:.0}", direct_bytes as f64 / n, sdk_bytes as f64 / n);

    eprintln!("\nallocations per record (one batch of {RECORDS}, after a warm-up batch):");
    for (name, f) in [
        (
            "agent/direct_encode",
            Box::new(|b| {
                let _ = direct_encode(b);
            }) as Box<dyn Fn(Vec<LogRecord>)>,
        ),
        (
            "agent/to_request_prost",
            Box::new(|b| {
                let _ = direct(b);
            }),
        ),
        ("sdk/convert_and_export", Box::new(|b| sdk.convert_and_export(b))),
    ] {
        f(records(&resource));
        let input = records(&resource);
        let ((), c) = alloc::measure(|| f(input));
        eprintln!("{name:<26} {:>8.2} allocs {:>10.0} bytes", c.allocs as f64 / n, c.bytes as f64 / n);
    }

    let mut cases: Vec<cpu::Case<'_, Vec<LogRecord>>> = vec![
        (
            "agent/direct_encode",
            Box::new(|b| {
                direct_encode(b);
                None
            }),
        ),
        (
            "agent/to_request_prost",
            Box::new(|b| {
                direct(b);
                None
            }),
        ),
        (
            "sdk/convert_and_export",
            Box::new(|b| {
                sdk.convert_and_export(b);
                None
            }),
        ),
    ];
    if let Some((name, iters)) = cpu::single() {
        cpu::run_single(&name, iters, || records(&resource), &mut cases);
        return;
    }
    let per_call = cpu::interleave(15, 50_000_000, || records(&resource), &mut cases);
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    cpu::print_interleaved("access records to OTLP bytes", &names, &per_call, n);
}
