//! OTLP export of log records (access records and application log lines).
//!
//! Built on the span exporter's machinery ([`super::thread`], the bounded queue, the
//! worker's retry classification and per-reason drop accounting) with its own queue and
//! thread, so a flood of log lines can never push spans out of their queue. The transports
//! are the same: gRPC (`LogsService`), HTTP/protobuf (`POST /v1/logs`), or, without an
//! endpoint, OTLP/JSON lines where spans go. Why not `opentelemetry_sdk`'s logger provider:
//! see docs/design-card.md#logs (one Resource per provider; the agent exports records of
//! many processes, each under the Resource its spans carry).

use std::sync::Arc;
use std::time::Duration;

use ::http::Uri;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::logs::v1 as pb_logs;
use opentelemetry_proto::tonic::resource::v1 as pb_resource;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::config::{Compression, ConfigError, ExporterConfig, Protocol, Signal};
use super::otlp::{attributes, SCOPE_NAME, SCOPE_VERSION};
use super::retry::ExportFailure;
use super::thread::ExportThread;
use super::worker::Deliver;
use super::{grpc, http, stdout, Accepted, ExportStats, StartError};
use crate::model::log::LogRecord;
use crate::model::span::Resource;

/// The logs exporter's settings: the span exporter's, with the endpoint's signal path
/// swapped for `/v1/logs`, then `OTEL_EXPORTER_OTLP_LOGS_*` (the generic variables are
/// already in `traces`). Without an endpoint, records go where spans go, as OTLP/JSON.
pub fn logs_exporter_config(
    traces: &ExporterConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ExporterConfig, ConfigError> {
    let mut base = traces.clone();
    if let (Some(e), Protocol::HttpProtobuf) = (&base.endpoint, base.protocol) {
        let root = e.strip_suffix("/v1/traces").unwrap_or(e.trim_end_matches('/'));
        base.endpoint = Some(format!("{root}/v1/logs"));
    }
    let specific = |k: &str| if k.starts_with("OTEL_EXPORTER_OTLP_LOGS_") { lookup(k) } else { None };
    ExporterConfig::from_env_for_signal(base, Signal::Logs, specific)
}

/// Handle to the log export thread (see the module documentation).
pub struct LogExporter {
    inner: ExportThread<LogRecord>,
}

impl LogExporter {
    pub fn start(config: ExporterConfig) -> Result<Self, StartError> {
        Ok(Self { inner: ExportThread::start(config, "hoptrace-logs", LogTransport::build)? })
    }

    /// Queues `record`; never blocks (the oldest record is dropped, and counted, when full).
    pub fn submit(&self, record: LogRecord) {
        self.inner.submit(record);
    }

    /// The counters, named as for spans: `spans_*` count log records here.
    pub fn stats(&self) -> ExportStats {
        self.inner.stats()
    }

    pub fn drop_reasons(&self) -> Vec<(String, u64)> {
        self.inner.drop_reasons()
    }

    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error()
    }

    pub fn shutdown(self, deadline: Duration) -> ExportStats {
        self.inner.shutdown(deadline)
    }
}

enum LogTransport {
    Grpc(Box<GrpcLogs>),
    Http(Box<http::HttpTransport>),
    Json(stdout::JsonSink),
}

struct GrpcLogs {
    client: LogsServiceClient<Channel>,
    metadata: MetadataMap,
}

impl LogTransport {
    fn build(config: &ExporterConfig) -> Result<Self, ConfigError> {
        Ok(match config.endpoint_uri()? {
            None => Self::Json(stdout::JsonSink::open(&config.json_output)?),
            Some(uri) => match config.protocol {
                Protocol::Grpc => Self::Grpc(Box::new(GrpcLogs::new(config, uri)?)),
                Protocol::HttpProtobuf => Self::Http(Box::new(http::HttpTransport::new(config, uri)?)),
            },
        })
    }
}

impl GrpcLogs {
    fn new(cfg: &ExporterConfig, uri: Uri) -> Result<Self, ConfigError> {
        let mut client = LogsServiceClient::new(grpc::channel(cfg, uri)?);
        if cfg.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self { client, metadata: grpc::metadata(cfg)? })
    }

    async fn export(
        &mut self,
        request: ExportLogsServiceRequest,
        timeout: Duration,
    ) -> Result<Accepted, ExportFailure> {
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, self.client.export(request)).await {
            Err(_) => {
                Err(ExportFailure::retryable("grpc DEADLINE_EXCEEDED", format!("no response within {timeout:?}")))
            }
            Ok(Ok(response)) => Ok(accepted(response.into_inner().partial_success)),
            Ok(Err(status)) => Err(grpc::classify(&status)),
        }
    }
}

fn accepted(partial: Option<ExportLogsPartialSuccess>) -> Accepted {
    partial.map_or_else(Accepted::default, |p| Accepted {
        rejected_spans: u64::try_from(p.rejected_log_records).unwrap_or(0),
        message: p.error_message,
    })
}

impl Deliver<LogRecord> for LogTransport {
    async fn export_batch(&mut self, batch: &[LogRecord], timeout: Duration) -> Result<Accepted, ExportFailure> {
        match self {
            Self::Grpc(t) => t.export(to_logs_request(batch), timeout).await,
            Self::Http(t) => {
                // Written straight from the records (`logs_encode`): no message tree.
                let body = t.post(super::logs_encode::encode_logs_request(batch), timeout).await?;
                // An empty or undecodable body still means the records were accepted.
                Ok(accepted(ExportLogsServiceResponse::decode(body).ok().and_then(|r| r.partial_success)))
            }
            Self::Json(sink) => sink.export_message(&to_logs_request(batch)),
        }
    }
}

/// Builds one export request, one `ResourceLogs` per distinct Resource (by content, as
/// for spans), records in their order within each.
pub fn to_logs_request(records: &[LogRecord]) -> ExportLogsServiceRequest {
    let mut groups: Vec<(&Arc<Resource>, Vec<pb_logs::LogRecord>)> = Vec::new();
    for r in records {
        let idx = match groups.iter().position(|(g, _)| Arc::ptr_eq(g, &r.resource) || ***g == *r.resource) {
            Some(i) => i,
            None => {
                groups.push((&r.resource, Vec::new()));
                groups.len() - 1
            }
        };
        groups[idx].1.push(record_to_proto(r));
    }
    let resource_logs = groups
        .into_iter()
        .map(|(resource, log_records)| pb_logs::ResourceLogs {
            resource: Some(pb_resource::Resource {
                attributes: attributes(&resource.attributes),
                ..Default::default()
            }),
            scope_logs: vec![pb_logs::ScopeLogs {
                scope: Some(pb_common::InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: SCOPE_VERSION.into(),
                    ..Default::default()
                }),
                log_records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

fn record_to_proto(r: &LogRecord) -> pb_logs::LogRecord {
    let traced = r.trace_id != [0; 16];
    pb_logs::LogRecord {
        time_unix_nano: r.time_unix_ns,
        observed_time_unix_nano: r.observed_unix_ns,
        severity_number: r.severity as i32,
        severity_text: r.severity_text.to_string(),
        body: (!r.body.is_empty())
            .then(|| pb_common::AnyValue { value: Some(pb_common::any_value::Value::StringValue(r.body.to_string())) }),
        attributes: attributes(&r.attributes),
        dropped_attributes_count: 0,
        flags: if traced { u32::from(r.flags) } else { 0 },
        trace_id: if traced { r.trace_id.to_vec() } else { Vec::new() },
        span_id: if traced { r.span_id.to_vec() } else { Vec::new() },
        event_name: r.event_name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::tests::resource;
    use crate::model::log::Severity;
    use crate::model::span::KeyValue;

    pub(crate) fn record(resource: &Arc<Resource>, n: u8) -> LogRecord {
        LogRecord {
            resource: resource.clone(),
            time_unix_ns: 1_700_000_000_000_000_000 + u64::from(n),
            observed_unix_ns: 1_700_000_000_000_000_500,
            severity: Severity::Warn,
            severity_text: "warning".into(),
            body: format!("line {n}").into(),
            attributes: vec![KeyValue::int("seq", i64::from(n))],
            event_name: "".into(),
            trace_id: [n; 16],
            span_id: [n; 8],
            flags: 1,
        }
    }

    #[test]
    fn groups_by_resource_and_carries_ids() {
        let (a, b) = (resource("a"), resource("b"));
        let mut untraced = record(&a, 3);
        untraced.trace_id = [0; 16];
        let req = to_logs_request(&[record(&a, 1), record(&b, 2), untraced]);
        assert_eq!(req.resource_logs.len(), 2);
        let logs = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].trace_id, vec![1; 16]);
        assert_eq!(logs[0].span_id, vec![1; 8]);
        assert_eq!(logs[0].severity_number, 13);
        assert_eq!(logs[0].flags, 1);
        assert!(logs[1].trace_id.is_empty() && logs[1].span_id.is_empty() && logs[1].flags == 0);
        let json = serde_json::to_value(&req).unwrap();
        let rec = &json["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["traceId"], "01010101010101010101010101010101");
        assert_eq!(rec["body"]["stringValue"], "line 1");
        assert_eq!(rec["severityText"], "warning");
    }

    #[test]
    fn logs_endpoint_follows_the_span_endpoint_and_logs_variables() {
        let traces = ExporterConfig {
            endpoint: Some("http://c:4318/v1/traces".into()),
            protocol: Protocol::HttpProtobuf,
            ..Default::default()
        };
        let none = |_: &str| None;
        assert_eq!(logs_exporter_config(&traces, none).unwrap().endpoint.as_deref(), Some("http://c:4318/v1/logs"));
        let specific = |k: &str| (k == "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").then(|| "http://l:9/x".to_string());
        assert_eq!(logs_exporter_config(&traces, specific).unwrap().endpoint.as_deref(), Some("http://l:9/x"));
        let generic = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://ignored:1".to_string());
        assert_eq!(
            logs_exporter_config(&traces, generic).unwrap().endpoint.as_deref(),
            Some("http://c:4318/v1/logs"),
            "the generic variables are applied once, with the spans'"
        );
        let no_endpoint = ExporterConfig::default();
        assert!(logs_exporter_config(&no_endpoint, none).unwrap().endpoint.is_none());
    }
}
