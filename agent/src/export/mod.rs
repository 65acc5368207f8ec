//! OTLP export of the agent's spans.
//!
//! - [`config`]: settings and the `OTEL_EXPORTER_OTLP_*` environment variables.
//! - [`otlp`]: `SpanRecord` → `ExportTraceServiceRequest`.

pub mod config;
pub mod otlp;

pub use config::{
    Compression, ConfigError, ExporterConfig, JsonOutput, Protocol, RetryConfig, Signal, TlsConfig,
};
