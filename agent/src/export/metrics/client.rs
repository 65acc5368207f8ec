//! OTLP metrics transport: the trace exporter's endpoint settings, TLS, headers,
//! compression and retry rules, applied to the `MetricsService` (gRPC) or
//! `POST /v1/metrics` (HTTP/protobuf). The periodic loop is in `crate::export::metrics::exporter`.
//!
//! Metrics are cumulative, so a request that cannot be delivered within its retry budget
//! is simply superseded by the next one: nothing is queued.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::export::config::{Compression, ConfigError, ExporterConfig, Protocol, RetryConfig};
use crate::export::retry::{Backoff, ExportFailure};
use crate::export::{grpc, http};

/// A failed delivery: a bounded-cardinality reason ("http 503", "grpc UNIMPLEMENTED") and
/// a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsExportError {
    pub reason: String,
    pub detail: String,
}

struct Grpc {
    client: MetricsServiceClient<Channel>,
    metadata: MetadataMap,
}

enum Inner {
    Grpc(Box<Grpc>),
    Http(Box<http::HttpTransport>),
}

pub struct MetricsClient {
    inner: Inner,
    timeout: Duration,
    retry: RetryConfig,
}

impl MetricsClient {
    /// `cfg.endpoint` must be set (the metrics URL for http/protobuf). Must be called
    /// inside a tokio runtime (the gRPC channel spawns its connection task).
    pub fn new(cfg: &ExporterConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let uri = cfg.endpoint_uri()?.ok_or_else(|| ConfigError::InvalidEndpoint {
            endpoint: String::new(),
            reason: "no endpoint configured".into(),
        })?;
        let inner = match cfg.protocol {
            Protocol::Grpc => {
                let mut client = MetricsServiceClient::new(grpc::channel(cfg, uri)?);
                if cfg.compression == Compression::Gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                Inner::Grpc(Box::new(Grpc { client, metadata: grpc::metadata(cfg)? }))
            }
            Protocol::HttpProtobuf => Inner::Http(Box::new(http::HttpTransport::new(cfg, uri)?)),
        };
        Ok(Self { inner, timeout: cfg.timeout, retry: cfg.retry })
    }

    async fn send_once(&mut self, request: &ExportMetricsServiceRequest) -> Result<u64, ExportFailure> {
        let timeout = self.timeout;
        match &mut self.inner {
            Inner::Http(t) => {
                let body = t.post(request.encode_to_vec(), timeout).await?;
                Ok(ExportMetricsServiceResponse::decode(body)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| u64::try_from(p.rejected_data_points).unwrap_or(0)))
            }
            Inner::Grpc(g) => {
                let Grpc { client, metadata } = &mut **g;
                let mut req = tonic::Request::new(request.clone());
                *req.metadata_mut() = metadata.clone();
                req.set_timeout(timeout);
                match tokio::time::timeout(timeout, client.export(req)).await {
                    Err(_) => Err(ExportFailure::retryable(
                        "grpc DEADLINE_EXCEEDED",
                        format!("no response within {timeout:?}"),
                    )),
                    Ok(Ok(r)) => Ok(r
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| u64::try_from(p.rejected_data_points).unwrap_or(0))),
                    Ok(Err(status)) => Err(grpc::classify(&status)),
                }
            }
        }
    }

    /// Sends `request`, retrying transient failures with the configured backoff for at
    /// most `budget` (the export interval: the next request carries the same totals).
    /// Returns the data points the collector reported rejected.
    pub async fn export(
        &mut self,
        request: &ExportMetricsServiceRequest,
        budget: Duration,
    ) -> Result<u64, MetricsExportError> {
        let retry = RetryConfig { max_elapsed: self.retry.max_elapsed.min(budget), ..self.retry };
        let mut backoff = Backoff::new(retry);
        loop {
            match self.send_once(request).await {
                Ok(rejected) => return Ok(rejected),
                Err(f) => {
                    let delay = if f.retryable { backoff.next_delay(Instant::now(), f.retry_after) } else { None };
                    match delay {
                        Some(d) => tokio::time::sleep(d).await,
                        None => return Err(MetricsExportError { reason: f.reason, detail: f.detail }),
                    }
                }
            }
        }
    }
}
