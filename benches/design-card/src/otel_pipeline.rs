//! What the agent would link to export spans, metrics and logs through the SDK: a tracer
//! provider with a batch processor, a meter provider with a periodic reader and a logger
//! provider with a batch processor, each over opentelemetry-otlp's gRPC (tonic, TLS on
//! ring with the webpki roots) or HTTP/protobuf (hyper) exporter, chosen at run time as the
//! agent's `OTEL_EXPORTER_OTLP_PROTOCOL` chooses. `bin/agent.rs` reaches it only when
//! `DESIGN_CARD_OTEL` is set, so that the code is in the binary whose size is measured.

use std::time::Duration;

use opentelemetry::{
    logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity},
    metrics::MeterProvider as _,
    trace::{Span as _, Tracer as _, TracerProvider as _},
    KeyValue,
};
use opentelemetry_otlp::{
    tonic_types::transport::ClientTlsConfig, LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig,
    WithTonicConfig,
};
use opentelemetry_sdk::{logs::SdkLoggerProvider, metrics::SdkMeterProvider, trace::SdkTracerProvider, Resource};

/// Builds the three pipelines for `endpoint`, records one of each signal and shuts down.
pub fn run_once(endpoint: &str, grpc: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _guard = rt.enter();
    let tls = ClientTlsConfig::new().with_webpki_roots();
    let resource = Resource::builder_empty().with_attributes([KeyValue::new("service.name", "hoptrace")]).build();
    let (spans, metrics, logs) = if grpc {
        (
            SpanExporter::builder().with_tonic().with_endpoint(endpoint).with_tls_config(tls.clone()).build()?,
            MetricExporter::builder().with_tonic().with_endpoint(endpoint).with_tls_config(tls.clone()).build()?,
            LogExporter::builder().with_tonic().with_endpoint(endpoint).with_tls_config(tls).build()?,
        )
    } else {
        let http = |path: &str| format!("{endpoint}{path}");
        (
            SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(http("/v1/traces"))
                .build()?,
            MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(http("/v1/metrics"))
                .build()?,
            LogExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(http("/v1/logs"))
                .with_timeout(Duration::from_secs(5))
                .build()?,
        )
    };
    let tracer_provider =
        SdkTracerProvider::builder().with_batch_exporter(spans).with_resource(resource.clone()).build();
    let meter_provider =
        SdkMeterProvider::builder().with_periodic_exporter(metrics).with_resource(resource.clone()).build();
    let logger_provider = SdkLoggerProvider::builder().with_batch_exporter(logs).with_resource(resource).build();

    let mut span = tracer_provider.tracer("hoptrace").start("GET /");
    span.set_attribute(KeyValue::new("http.response.status_code", 200));
    span.end();
    meter_provider.meter("hoptrace").f64_histogram("http.server.request.duration").build().record(0.01, &[]);
    let logger = logger_provider.logger("hoptrace");
    let mut record = logger.create_log_record();
    record.set_severity_number(Severity::Info);
    record.set_body("agent ready".into());
    logger.emit(record);

    let results = [tracer_provider.shutdown(), meter_provider.shutdown(), logger_provider.shutdown()];
    for r in results {
        if let Err(e) = r {
            eprintln!("otel shutdown: {e}");
        }
    }
    Ok(())
}
