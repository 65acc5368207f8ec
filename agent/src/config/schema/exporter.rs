//! `exporter`: where and how spans are sent.

use std::path::PathBuf;

use super::values::{boolean, choice, entries, header_name, millis, optional_string, string, uint};
use super::{Env, Setting, MAX_COUNT};
use crate::export::{Compression, JsonOutput, Protocol};

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "exporter",
        key: "endpoint",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "exporter.endpoint", "to use the embedded OTLP/JSON sink") {
                c.endpoint_at = v.as_ref().map(|_| n.origin.clone());
                c.cfg.exporter.endpoint = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "protocol",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(p) = choice(c, n, "exporter.protocol", &["grpc", "http/protobuf"]).and_then(Protocol::parse) {
                c.cfg.exporter.protocol = p;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "headers",
        env: Env::No,
        apply: |c, n| {
            let mut headers = Vec::new();
            for (name, key, value) in entries(c, n, "exporter.headers") {
                let name_ok = header_name(c, key, &name);
                let Some(v) = string(c, value, &format!("header `{name}`")) else {
                    continue;
                };
                // The value is never echoed: headers carry credentials.
                if http::HeaderValue::from_str(&v).is_err() {
                    c.error(value, format!("the value of header `{name}` is not a valid HTTP header value (control characters or non-ASCII)"));
                } else if name_ok {
                    headers.push((name, v));
                }
            }
            c.cfg.exporter.headers = headers;
        },
    },
    Setting {
        section: "exporter",
        key: "compression",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = choice(c, n, "exporter.compression", &["gzip", "none"]).and_then(Compression::parse) {
                c.cfg.exporter.compression = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "timeout_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.timeout_ms") {
                c.cfg.exporter.timeout = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "insecure",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "exporter.insecure") {
                c.cfg.exporter.tls.insecure = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "ca_file",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "exporter.ca_file", "to trust the built-in roots only") {
                c.cfg.exporter.tls.ca_file = v.map(PathBuf::from);
            }
        },
    },
    Setting {
        section: "exporter",
        key: "batch_max_spans",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "exporter.batch_max_spans", 1, MAX_COUNT) {
                c.cfg.exporter.batch_max_spans = v as usize;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "batch_timeout_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.batch_timeout_ms") {
                c.cfg.exporter.batch_timeout = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "queue_capacity",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "exporter.queue_capacity", 1, MAX_COUNT) {
                c.cfg.exporter.queue_capacity = v as usize;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "retry_initial_backoff_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.retry_initial_backoff_ms") {
                c.cfg.exporter.retry.initial_backoff = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "retry_max_backoff_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.retry_max_backoff_ms") {
                c.cfg.exporter.retry.max_backoff = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "retry_max_elapsed_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.retry_max_elapsed_ms") {
                c.cfg.exporter.retry.max_elapsed = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "output",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "exporter.output", "to write to stdout") {
                c.cfg.exporter.json_output = v.map_or(JsonOutput::Stdout, |p| JsonOutput::File(p.into()));
            }
        },
    },
];

/// http/protobuf: an http(s) URL; one without a path gets `/v1/traces`, the traces path of
/// OTLP/HTTP (a bare `http://collector:4318` would otherwise post to `/` and be refused).
/// grpc: an http(s) URL or `host:port` (the scheme then follows `insecure`).
pub(crate) fn normalize_endpoint(endpoint: &str, protocol: Protocol) -> Result<String, String> {
    let bad = |why: &str| {
        let expected = match protocol {
            Protocol::HttpProtobuf => "a URL such as http://collector:4318/v1/traces for http/protobuf",
            Protocol::Grpc => "a URL such as http://collector:4317, or host:port, for grpc",
        };
        format!("`exporter.endpoint` must be {expected}: {why}")
    };
    let has_scheme = endpoint.contains("://");
    if !has_scheme && protocol == Protocol::HttpProtobuf {
        return Err(bad("it has no http:// or https:// scheme"));
    }
    let full = if has_scheme { endpoint.to_owned() } else { format!("http://{endpoint}") };
    let uri: http::Uri = full.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the scheme must be http or https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    let no_path = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !has_scheme && (uri.port().is_none() || !no_path) {
        return Err(bad("host:port needs a port and nothing after it"));
    }
    if protocol == Protocol::HttpProtobuf && no_path {
        return Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    Ok(endpoint.to_owned())
}
