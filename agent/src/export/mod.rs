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
pub mod metrics;
pub mod otlp;
mod queue;
pub(crate) mod retry;
mod stats;
mod stdout;
mod tls;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
use thiserror::Error;
use tokio::sync::watch;

pub use config::{Compression, ConfigError, ExporterConfig, JsonOutput, Protocol, RetryConfig, Signal, TlsConfig};
pub use stats::ExportStats;
pub use stdout::encode_json;

use crate::model::span::SpanRecord;
use queue::SpanQueue;
use retry::ExportFailure;
use stats::Counters;

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
pub(crate) struct Shared {
    queue: SpanQueue,
    counters: Counters,
}

/// Handle to the export thread. Dropping it without [`SpanExporter::shutdown`] stops the thread
/// at once; spans still held are counted as dropped at shutdown.
pub struct SpanExporter {
    shared: Arc<Shared>,
    shutdown: watch::Sender<Option<Instant>>,
    /// In a mutex only so that `SpanExporter` is `Sync` (shareable by several capture threads).
    done: Mutex<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SpanExporter {
    /// Validates `config`, starts the export thread and sets up the transport (TLS files
    /// and headers are checked here; the collector itself is only contacted on export, so
    /// one that is down at startup does not fail this).
    pub fn start(config: ExporterConfig) -> Result<Self, StartError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            queue: SpanQueue::new(config.queue_capacity, config.batch_max_spans),
            counters: Counters::default(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), StartError>>(1);
        let (done_tx, done_rx) = mpsc::sync_channel::<()>(1);
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hoptrace-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StartError::Runtime(e)));
                        return;
                    }
                };
                let transport = {
                    // The gRPC channel spawns its connection task: needs the runtime context.
                    let _guard = rt.enter();
                    Transport::build(&config)
                };
                let transport = match transport {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let settings = worker::Settings {
                    batch_timeout: config.batch_timeout,
                    request_timeout: config.timeout,
                    retry: config.retry,
                };
                rt.block_on(worker::run(worker_shared, transport, settings, shutdown_rx));
                let _ = done_tx.send(());
            })
            .map_err(StartError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { shared, shutdown: shutdown_tx, done: Mutex::new(done_rx), thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(StartError::ThreadExited)
            }
        }
    }

    /// Queues `span` for export. Never blocks: when the queue is full the oldest span is
    /// dropped and counted.
    pub fn submit(&self, span: SpanRecord) {
        let c = &self.shared.counters;
        Counters::add(&c.spans_submitted, 1);
        let dropped = self.shared.queue.push(span);
        if dropped > 0 {
            Counters::add(&c.spans_dropped_queue_full, dropped);
        }
    }

    pub fn stats(&self) -> ExportStats {
        self.shared.counters.snapshot(self.shared.queue.depth())
    }

    /// Spans dropped for non-retryable errors, by reason ("grpc INVALID_ARGUMENT",
    /// "http 400", ...), sorted by reason.
    pub fn drop_reasons(&self) -> Vec<(String, u64)> {
        self.shared.counters.drop_reasons()
    }

    /// The last export error (or partial-success message), for diagnostics.
    pub fn last_error(&self) -> Option<String> {
        self.shared.counters.last_error()
    }

    /// Flushes what can be delivered within `deadline` (retries included), counts the rest
    /// as dropped, stops the thread and returns the final counters.
    pub fn shutdown(mut self, deadline: Duration) -> ExportStats {
        self.shutdown.send_replace(Some(Instant::now() + deadline));
        // The worker bounds its own work by the deadline; the grace covers tearing down a
        // request. Should it still not finish, the thread is left to end on its own.
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(deadline + Duration::from_secs(1));
        match done {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.thread.take();
            }
        }
        self.stats()
    }
}

impl Drop for SpanExporter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown.send_replace(Some(Instant::now()));
        }
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
