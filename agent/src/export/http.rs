//! OTLP/HTTP transport: binary protobuf POSTed to the signal URL, optionally gzipped, over
//! hyper's pooled client with rustls for https.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

use super::config::{Compression, ConfigError, ExporterConfig};
use super::retry::{http_status_retryable, parse_retry_after, ExportFailure};
use super::{tls, Accepted};

const PROTOBUF: &str = "application/x-protobuf";

pub(crate) struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    compression: Compression,
}

impl HttpTransport {
    pub fn new(cfg: &ExporterConfig, uri: Uri) -> Result<Self, ConfigError> {
        let ca_file = match uri.scheme_str() {
            Some("https") => cfg.tls.ca_file.as_deref(),
            _ => None,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(ca_file)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("hoptrace/", env!("CARGO_PKG_VERSION"))));
        if cfg.compression == Compression::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &cfg.headers {
            let invalid = |reason: &str| ConfigError::InvalidHeader { name: name.clone(), reason: reason.to_owned() };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("not a valid HTTP header name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| invalid("not a valid HTTP header value"))?;
            headers.insert(name, value);
        }
        Ok(Self { client, uri, headers, compression: cfg.compression })
    }

    #[allow(dead_code)] // the worker sends bytes (export_bytes); kept for callers with a message
    pub async fn export(
        &mut self,
        request: ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Result<Accepted, ExportFailure> {
        self.export_bytes(request.encode_to_vec(), timeout).await
    }

    /// POSTs an already serialized `ExportTraceServiceRequest` (the worker encodes spans
    /// straight into bytes, see `export::encode`).
    pub async fn export_bytes(&mut self, body: Vec<u8>, timeout: Duration) -> Result<Accepted, ExportFailure> {
        let body = self.post(body, timeout).await?;
        // An empty or undecodable body still means the spans were accepted.
        let partial = ExportTraceServiceResponse::decode(body).ok().and_then(|r| r.partial_success);
        Ok(Accepted::from_partial(partial))
    }

    /// POSTs one encoded OTLP request (any signal) and returns the success response's
    /// body; failures are classified for retry.
    pub async fn post(&mut self, mut body: Vec<u8>, timeout: Duration) -> Result<Bytes, ExportFailure> {
        if self.compression == Compression::Gzip {
            body = gzip(&body).map_err(|e| ExportFailure::permanent("gzip", e.to_string()))?;
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ExportFailure::permanent("request", e.to_string()))?;
        *req.headers_mut() = self.headers.clone();

        let exchange = async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(|e| ExportFailure::retryable("http connection", error_chain(&e)))?;
            let status = response.status();
            let retry_after = response.headers().get(RETRY_AFTER).and_then(parse_retry_after);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ExportFailure::retryable("http connection", error_chain(&e)))?
                .to_bytes();
            Ok::<_, ExportFailure>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExportFailure::retryable("http timeout", format!("no response within {timeout:?}")))??;

        if status.is_success() {
            return Ok(body);
        }
        let reason = format!("http {}", status.as_u16());
        // The body is a google.rpc.Status per the specification; its message is enough.
        let detail = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        if http_status_retryable(status.as_u16()) {
            let mut f = ExportFailure::retryable(reason, detail);
            f.retry_after = retry_after;
            Err(f)
        } else {
            Err(ExportFailure::permanent(reason, detail))
        }
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// hyper's errors say little at the top level ("client error (Connect)"); the cause chain
/// has the useful part ("Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
