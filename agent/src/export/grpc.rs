//! OTLP/gRPC transport: the generated `TraceService` client over a lazily connecting tonic
//! channel (so a collector that is down at startup is just a retryable failure later).

use std::time::Duration;

use http::Uri;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::config::{Compression, ConfigError, ExporterConfig};
use super::retry::{grpc_code_name, grpc_code_retryable, ExportFailure};
use super::tls::read_ca_pem;
use super::Accepted;

pub(crate) struct GrpcTransport {
    client: TraceServiceClient<Channel>,
    metadata: MetadataMap,
}

impl GrpcTransport {
    /// Must be called inside the tokio runtime: the channel spawns its connection task.
    pub fn new(cfg: &ExporterConfig, uri: Uri) -> Result<Self, ConfigError> {
        let mut client = TraceServiceClient::new(channel(cfg, uri)?);
        if cfg.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self { client, metadata: metadata(cfg)? })
    }

    pub async fn export(
        &mut self,
        request: ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Result<Accepted, ExportFailure> {
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = self.metadata.clone();
        // Tells the server (grpc-timeout) as well as bounding the wait here.
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, self.client.export(request)).await {
            Err(_) => {
                Err(ExportFailure::retryable("grpc DEADLINE_EXCEEDED", format!("no response within {timeout:?}")))
            }
            Ok(Ok(response)) => Ok(Accepted::from_partial(response.into_inner().partial_success)),
            Ok(Err(status)) => Err(classify(&status)),
        }
    }
}

/// A lazily connecting channel to `uri` with the exporter's timeout and TLS settings
/// (shared by the trace and metrics services).
pub(crate) fn channel(cfg: &ExporterConfig, uri: Uri) -> Result<Channel, ConfigError> {
    let https = uri.scheme_str() == Some("https");
    let mut endpoint = Endpoint::from(uri)
        .connect_timeout(cfg.timeout)
        .user_agent(concat!("hoptrace/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    if https {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(path) = &cfg.tls.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_ca_pem(path)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| ConfigError::Tls(e.to_string()))?;
    }
    Ok(endpoint.connect_lazy())
}

/// The configured headers as gRPC metadata.
pub(crate) fn metadata(cfg: &ExporterConfig) -> Result<MetadataMap, ConfigError> {
    let mut metadata = MetadataMap::new();
    for (name, value) in &cfg.headers {
        let invalid = |reason: &str| ConfigError::InvalidHeader { name: name.clone(), reason: reason.to_owned() };
        let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid("not a valid gRPC metadata key"))?;
        let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| invalid("value is not visible ASCII"))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

pub(crate) fn classify(status: &Status) -> ExportFailure {
    let code = status.code();
    let reason = format!("grpc {}", grpc_code_name(code));
    let detail = status.message().to_owned();
    if grpc_code_retryable(code) {
        let mut f = ExportFailure::retryable(reason, detail);
        f.retry_after = retry_info_delay(status);
        f
    } else {
        ExportFailure::permanent(reason, detail)
    }
}

/// The `google.rpc.RetryInfo` delay carried in `grpc-status-details-bin`, if any.
///
/// Decoded with a few hand-declared prost messages rather than pulling in the whole
/// googleapis type set for two fields.
pub(crate) fn retry_info_delay(status: &Status) -> Option<Duration> {
    use prost::Message;
    if status.code() == Code::Ok || status.details().is_empty() {
        return None;
    }
    let rpc = rpc::Status::decode(status.details()).ok()?;
    rpc.details.iter().find(|any| any.type_url == rpc::RETRY_INFO_TYPE).and_then(|any| {
        let delay = rpc::RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
        let secs = u64::try_from(delay.seconds).ok()?;
        let nanos = u32::try_from(delay.nanos).ok()?;
        Some(Duration::new(secs, nanos.min(999_999_999)))
    })
}

/// The subset of `google.rpc` (status.proto, error_details.proto) needed for RetryInfo.
pub(crate) mod rpc {
    pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<ProtoDuration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProtoDuration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}
