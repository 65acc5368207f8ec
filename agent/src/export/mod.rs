//! OTLP export of the agent's spans.
//!
//! The capture loop is a plain thread that must never wait on the network, so the
//! [`SpanExporter`] runs its own thread with a single-threaded tokio runtime and is fed through
//! a bounded, drop-oldest queue ([`SpanExporter::submit`] never blocks). The worker batches by
//! size and time, converts to OTLP ([`otlp`]) and sends over gRPC or HTTP/protobuf, retrying
//! transient failures with jittered exponential backoff. Every span ends up either
//! delivered or counted under a drop reason ([`ExportStats`]).
//!
//! Without an endpoint, batches are written as OTLP/JSON lines to stdout or a file, so the
//! agent is useful (and testable) with no collector at all.
//!
//! - [`config`]: settings and the `OTEL_EXPORTER_OTLP_*` environment variables.
//! - [`otlp`]: `SpanRecord` → `ExportTraceServiceRequest`.
//! - `queue`, `retry`, `worker`: the delivery machinery.
//! - `grpc`, `http`, `stdout`: the transports; `tls` their shared TLS setup.

pub mod config;
pub mod encode;
pub(crate) mod grpc;
pub(crate) mod http;
pub mod logs;
pub mod logs_encode;
pub mod metrics;
pub mod otlp;
mod queue;
pub(crate) mod retry;
mod stats;
mod stdout;
mod thread;
mod tls;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
use thiserror::Error;

pub use config::{Compression, ConfigError, ExporterConfig, JsonOutput, Protocol, RetryConfig, Signal, TlsConfig};
pub use logs::{logs_exporter_config, LogExporter};
pub use stats::ExportStats;
pub use stdout::encode_json;

use crate::model::span::SpanRecord;
use queue::BoundedQueue;
use retry::ExportFailure;
use stats::Counters;
use thread::ExportThread;
use worker::Deliver;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the export thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot start the export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the export thread exited during startup")]
    ThreadExited,
}

/// State shared by the submitting side and the worker.
pub(crate) struct Shared<T = SpanRecord> {
    queue: BoundedQueue<T>,
    counters: Counters,
}

/// Handle to the span export thread. Dropping it without [`SpanExporter::shutdown`] stops
/// the thread at once; spans still held are counted as dropped at shutdown.
pub struct SpanExporter {
    inner: ExportThread<SpanRecord>,
}

impl SpanExporter {
    /// Validates `config`, starts the export thread and sets up the transport (TLS files
    /// and headers are checked here; the collector itself is only contacted on export, so
    /// one that is down at startup does not fail this).
    pub fn start(config: ExporterConfig) -> Result<Self, StartError> {
        Ok(Self { inner: ExportThread::start(config, "hoptrace-export", Transport::build)? })
    }

    /// Queues `span` for export. Never blocks: when the queue is full the oldest span is
    /// dropped and counted.
    pub fn submit(&self, span: SpanRecord) {
        self.inner.submit(span);
    }

    pub fn stats(&self) -> ExportStats {
        self.inner.stats()
    }

    /// Spans dropped for non-retryable errors, by reason ("grpc INVALID_ARGUMENT",
    /// "http 400", ...), sorted by reason.
    pub fn drop_reasons(&self) -> Vec<(String, u64)> {
        self.inner.drop_reasons()
    }

    /// The last export error (or partial-success message), for diagnostics.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error()
    }

    /// Flushes what can be delivered within `deadline` (retries included), counts the rest
    /// as dropped, stops the thread and returns the final counters.
    pub fn shutdown(self, deadline: Duration) -> ExportStats {
        self.inner.shutdown(deadline)
    }
}

/// What the collector (or sink) accepted of one request.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    pub rejected_spans: u64,
    pub message: String,
}

impl Accepted {
    fn from_partial(partial: Option<ExportTracePartialSuccess>) -> Self {
        partial.map_or_else(Self::default, |p| Self {
            rejected_spans: u64::try_from(p.rejected_spans).unwrap_or(0),
            message: p.error_message,
        })
    }
}

/// One per exporter, built once: the boxes only keep the enum small.
pub(crate) enum Transport {
    Grpc(Box<grpc::GrpcTransport>),
    Http(Box<http::HttpTransport>),
    Json(stdout::JsonSink),
}

impl Transport {
    fn build(config: &ExporterConfig) -> Result<Self, ConfigError> {
        Ok(match config.endpoint_uri()? {
            None => Self::Json(stdout::JsonSink::open(&config.json_output)?),
            Some(uri) => match config.protocol {
                Protocol::Grpc => Self::Grpc(Box::new(grpc::GrpcTransport::new(config, uri)?)),
                Protocol::HttpProtobuf => Self::Http(Box::new(http::HttpTransport::new(config, uri)?)),
            },
        })
    }
}

impl Deliver<SpanRecord> for Transport {
    /// Sends one batch. OTLP/HTTP writes the protobuf straight from the records
    /// ([`encode`]); gRPC and the JSON sink need the generated message.
    async fn export_batch(&mut self, batch: &[SpanRecord], timeout: Duration) -> Result<Accepted, ExportFailure> {
        match self {
            Self::Grpc(t) => t.export(otlp::to_request(batch), timeout).await,
            Self::Http(t) => t.export_bytes(encode::encode_request(batch), timeout).await,
            Self::Json(sink) => sink.export(&otlp::to_request(batch)),
        }
    }
}
