//! SpanExporter configuration, and the standard OpenTelemetry environment variables over it.
//!
//! The environment is read through an injected lookup function so that tests (and callers
//! that layer their own sources) never have to mutate the process environment, which is
//! shared by every thread of the test binary.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use thiserror::Error;

/// Wire protocol towards the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC, usually port 4317.
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies, usually port 4318. The specification's
    /// recommended default.
    #[default]
    HttpProtobuf,
}

impl Protocol {
    /// Parses the specification's spelling (`grpc`, `http/protobuf`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "gzip" => Some(Self::Gzip),
            _ => None,
        }
    }
}

/// Transport security.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Decides the scheme of an endpoint written without one (`host:port`): plain `http://`
    /// when true, `https://` when false. An explicit scheme in the endpoint always wins.
    pub insecure: bool,
    /// PEM file with extra CA certificates trusted in addition to the built-in webpki roots
    /// (for collectors behind a private CA).
    pub ca_file: Option<PathBuf>,
}

/// Retry policy for retryable export failures: exponential backoff with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A batch that has not been delivered this long after its first failure is dropped.
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// Where the embedded OTLP-JSON sink writes when no endpoint is configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JsonOutput {
    #[default]
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

/// The telemetry signal an exporter carries; selects the `OTEL_EXPORTER_OTLP_<SIGNAL>_*`
/// variables and the OTLP/HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    fn env_name(self) -> &'static str {
        match self {
            Self::Traces => "TRACES",
            Self::Metrics => "METRICS",
            Self::Logs => "LOGS",
        }
    }

    /// The path OTLP/HTTP appends to a generic (non signal-specific) endpoint.
    pub fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "v1/traces",
            Self::Metrics => "v1/metrics",
            Self::Logs => "v1/logs",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterConfig {
    /// Collector endpoint. `None` selects the embedded OTLP-JSON sink ([`Self::json_output`]).
    /// For `http/protobuf` this is the full URL (with `/v1/traces`); for `grpc` a URL or
    /// `host:port`.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata for `grpc`), e.g. authentication.
    pub headers: Vec<(String, String)>,
    pub compression: Compression,
    /// Per export request, connection included.
    pub timeout: Duration,
    pub tls: TlsConfig,
    /// A batch is sent as soon as it holds this many spans...
    pub batch_max_spans: usize,
    /// ...or when its oldest span has waited this long.
    pub batch_timeout: Duration,
    /// Spans held for export (queued or in flight); beyond it the oldest are dropped.
    pub queue_capacity: usize,
    pub retry: RetryConfig,
    pub json_output: JsonOutput,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::default(),
            headers: Vec::new(),
            compression: Compression::None,
            // The specification's default for OTEL_EXPORTER_OTLP_TIMEOUT.
            timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
            batch_max_spans: 512,
            batch_timeout: Duration::from_secs(1),
            queue_capacity: 8192,
            retry: RetryConfig::default(),
            json_output: JsonOutput::Stdout,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: expected {expected}")]
    InvalidEnv { var: String, value: String, expected: &'static str },
    #[error("invalid exporter endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("invalid exporter header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("exporter setting {field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("exporter retry max backoff ({max:?}) is shorter than the initial backoff ({initial:?})")]
    BackoffOrder { initial: Duration, max: Duration },
    #[error("cannot use CA certificate file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot set up TLS for the exporter: {0}")]
    Tls(String),
}

impl ExporterConfig {
    /// `base` with the trace exporter's OpenTelemetry environment variables applied.
    pub fn from_env(base: ExporterConfig) -> Result<Self, ConfigError> {
        Self::from_env_with(base, |k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] reading variables through `lookup` instead of the process env.
    pub fn from_env_with(base: ExporterConfig, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_env_for_signal(base, Signal::Traces, lookup)
    }

    /// `base` with the metrics exporter's variables (`OTEL_EXPORTER_OTLP_METRICS_*`) applied.
    pub fn metrics_from_env(base: ExporterConfig) -> Result<Self, ConfigError> {
        Self::from_env_for_signal(base, Signal::Metrics, |k| std::env::var(k).ok())
    }

    /// Applies `OTEL_EXPORTER_OTLP_*` and `OTEL_EXPORTER_OTLP_<SIGNAL>_*` to `base`; a
    /// signal-specific variable wins over its generic one, and both win over `base`. Empty
    /// values count as unset, as the specification asks.
    pub fn from_env_for_signal(
        base: ExporterConfig,
        signal: Signal,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = EnvReader { lookup, signal };
        let mut cfg = base;

        if let Some((var, value)) = env.get("PROTOCOL") {
            cfg.protocol = Protocol::parse(&value).ok_or(ConfigError::InvalidEnv {
                var,
                value,
                expected: "\"grpc\" or \"http/protobuf\"",
            })?;
        }

        // The protocol must be known first: only a generic OTLP/HTTP endpoint gets the
        // signal path appended; a signal-specific one is used as is.
        if let Some(value) = env.specific("ENDPOINT") {
            cfg.endpoint = Some(value);
        } else if let Some(value) = env.generic("ENDPOINT") {
            cfg.endpoint = Some(match cfg.protocol {
                Protocol::Grpc => value,
                Protocol::HttpProtobuf => append_signal_path(&value, signal),
            });
        }

        if let Some((var, value)) = env.get("HEADERS") {
            for (name, v) in parse_headers(&var, &value)? {
                cfg.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                cfg.headers.push((name, v));
            }
        }

        if let Some((var, value)) = env.get("COMPRESSION") {
            cfg.compression = Compression::parse(&value).ok_or(ConfigError::InvalidEnv {
                var,
                value,
                expected: "\"gzip\" or \"none\"",
            })?;
        }

        if let Some((var, value)) = env.get("TIMEOUT") {
            let ms = value.parse::<u64>().map_err(|_| ConfigError::InvalidEnv {
                var,
                value,
                expected: "a timeout in milliseconds",
            })?;
            cfg.timeout = Duration::from_millis(ms);
        }

        if let Some((_, value)) = env.get("CERTIFICATE") {
            cfg.tls.ca_file = Some(PathBuf::from(value));
        }

        if let Some((var, value)) = env.get("INSECURE") {
            cfg.tls.insecure = match value.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(ConfigError::InvalidEnv { var, value, expected: "\"true\" or \"false\"" }),
            };
        }

        Ok(cfg)
    }

    /// Checks what can be checked without I/O; [`super::SpanExporter::start`] calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("batch_max_spans", self.batch_max_spans as u128),
            ("queue_capacity", self.queue_capacity as u128),
            ("timeout", self.timeout.as_nanos()),
            ("batch_timeout", self.batch_timeout.as_nanos()),
            ("retry.initial_backoff", self.retry.initial_backoff.as_nanos()),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(ConfigError::BackoffOrder { initial: self.retry.initial_backoff, max: self.retry.max_backoff });
        }
        if self.endpoint.is_some() {
            self.endpoint_uri()?;
        }
        Ok(())
    }

    /// The endpoint as a URI, with the scheme [`TlsConfig::insecure`] picks when it has none.
    /// `Ok(None)` when no endpoint is configured.
    pub fn endpoint_uri(&self) -> Result<Option<Uri>, ConfigError> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::InvalidEndpoint { endpoint: endpoint.clone(), reason };
        let full = if endpoint.contains("://") {
            endpoint.clone()
        } else if self.tls.insecure {
            format!("http://{endpoint}")
        } else {
            format!("https://{endpoint}")
        };
        let uri: Uri = full.parse().map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            other => return Err(invalid(format!("unsupported scheme {other:?}"))),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        Ok(Some(uri))
    }
}

/// Reads one setting from the signal-specific variable, else from the generic one.
struct EnvReader<F> {
    lookup: F,
    signal: Signal,
}

impl<F: Fn(&str) -> Option<String>> EnvReader<F> {
    fn read(&self, var: &str) -> Option<String> {
        (self.lookup)(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn specific_var(&self, setting: &str) -> String {
        format!("OTEL_EXPORTER_OTLP_{}_{setting}", self.signal.env_name())
    }

    fn specific(&self, setting: &str) -> Option<String> {
        self.read(&self.specific_var(setting))
    }

    fn generic(&self, setting: &str) -> Option<String> {
        self.read(&format!("OTEL_EXPORTER_OTLP_{setting}"))
    }

    /// The winning `(variable name, value)`, so errors can name the variable that was set.
    fn get(&self, setting: &str) -> Option<(String, String)> {
        let specific = self.specific_var(setting);
        if let Some(v) = self.read(&specific) {
            return Some((specific, v));
        }
        let generic = format!("OTEL_EXPORTER_OTLP_{setting}");
        self.read(&generic).map(|v| (generic, v))
    }
}

/// `http://host:4318` → `http://host:4318/v1/traces`; an existing path is kept as a prefix.
fn append_signal_path(endpoint: &str, signal: Signal) -> String {
    if endpoint.ends_with('/') {
        format!("{endpoint}{}", signal.http_path())
    } else {
        format!("{endpoint}/{}", signal.http_path())
    }
}

/// `k=v,k2=v2` with percent-encoded values (the W3C baggage-like format of
/// `OTEL_EXPORTER_OTLP_HEADERS`). A malformed entry is an error rather than skipped, so a
/// typo in an authentication header shows at startup instead of as rejected exports.
fn parse_headers(var: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let invalid = || ConfigError::InvalidEnv {
        var: var.to_owned(),
        value: value.to_owned(),
        expected: "comma-separated key=value pairs with percent-encoded values",
    };
    let mut out = Vec::new();
    for entry in value.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (k, v) = entry.split_once('=').ok_or_else(invalid)?;
        let k = k.trim();
        if k.is_empty() {
            return Err(invalid());
        }
        let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8().map_err(|_| invalid())?;
        out.push((k.to_owned(), v.into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn traces(pairs: &[(&str, &str)]) -> Result<ExporterConfig, ConfigError> {
        ExporterConfig::from_env_with(ExporterConfig::default(), env(pairs))
    }

    #[test]
    fn no_variables_keep_base() {
        let base = ExporterConfig { endpoint: Some("http://base:4318/v1/traces".into()), ..Default::default() };
        assert_eq!(ExporterConfig::from_env_with(base.clone(), env(&[])).unwrap(), base);
    }

    #[test]
    fn generic_http_endpoint_gets_signal_path() {
        let c = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
        let c = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/prefix/")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4318/prefix/v1/traces"));
    }

    #[test]
    fn signal_endpoint_used_as_is_and_wins() {
        let c = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://specific:4318/custom"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://specific:4318/custom"));
    }

    #[test]
    fn grpc_generic_endpoint_not_appended() {
        let c = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn signal_protocol_wins_and_decides_the_path() {
        let c = traces(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ])
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
    }

    #[test]
    fn invalid_protocol_names_variable_and_value() {
        let err = traces(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]).unwrap_err();
        assert!(matches!(
            &err,
            ConfigError::InvalidEnv { var, value, .. }
                if var == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" && value == "http/json"
        ));
        let text = err.to_string();
        assert!(text.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && text.contains("http/json"), "{text}");
    }

    #[test]
    fn headers_percent_decoded_and_merged() {
        let base = ExporterConfig {
            headers: vec![("Authorization".into(), "old".into()), ("x-keep".into(), "1".into())],
            ..Default::default()
        };
        let c = ExporterConfig::from_env_with(
            base,
            env(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc%3D%3D, x-tenant = a%2Cb ,")]),
        )
        .unwrap();
        assert_eq!(
            c.headers,
            vec![
                ("x-keep".to_string(), "1".to_string()),
                ("authorization".to_string(), "Bearer abc==".to_string()),
                ("x-tenant".to_string(), "a,b".to_string()),
            ]
        );
    }

    #[test]
    fn signal_headers_replace_generic() {
        let c =
            traces(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2"), ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "c=3")]).unwrap();
        assert_eq!(c.headers, vec![("c".to_string(), "3".to_string())]);
    }

    #[test]
    fn malformed_headers_rejected() {
        for bad in ["novalue", "=v", "k=%FF"] {
            let err = traces(&[("OTEL_EXPORTER_OTLP_HEADERS", bad)]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidEnv { ref var, .. } if var == "OTEL_EXPORTER_OTLP_HEADERS"),
                "{bad}"
            );
        }
    }

    #[test]
    fn compression_timeout_certificate_insecure() {
        let c = traces(&[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/traces-ca.pem"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE"),
        ])
        .unwrap();
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.tls.ca_file, Some(PathBuf::from("/etc/traces-ca.pem")));
        assert!(c.tls.insecure);

        let err = traces(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidEnv { ref value, .. } if value == "zstd"));
        let err = traces(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "10s")]).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidEnv { ref var, .. } if var == "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"));
    }

    #[test]
    fn empty_values_are_unset() {
        let c = traces(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", " "),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://generic:4318/v1/traces"));
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn metrics_signal_reads_its_own_variables() {
        let lookup = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces-only:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "700"),
        ]);
        let c = ExporterConfig::from_env_for_signal(ExporterConfig::default(), Signal::Metrics, lookup).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4318/v1/metrics"));
        assert_eq!(c.timeout, Duration::from_millis(700));
    }

    #[test]
    fn endpoint_scheme_from_insecure() {
        let mut c = ExporterConfig { endpoint: Some("collector:4317".into()), ..Default::default() };
        assert_eq!(c.endpoint_uri().unwrap().unwrap().scheme_str(), Some("https"));
        c.tls.insecure = true;
        assert_eq!(c.endpoint_uri().unwrap().unwrap().scheme_str(), Some("http"));
        c.endpoint = Some("https://collector:4317".into());
        assert_eq!(c.endpoint_uri().unwrap().unwrap().scheme_str(), Some("https"));
        c.endpoint = Some("ftp://collector".into());
        assert!(matches!(c.validate(), Err(ConfigError::InvalidEndpoint { .. })));
    }

    #[test]
    fn validate_rejects_zero_sizes() {
        let c = ExporterConfig { queue_capacity: 0, ..Default::default() };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "queue_capacity" }));
        assert_eq!(ExporterConfig::default().validate(), Ok(()));
    }
}
