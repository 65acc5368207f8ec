//! OTLP: spans in OTLP/JSON form and a real OTLP receiver (tests/fixtures/otlp_receiver.py).

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::{venv, wait_until, Running, TempDir, TIMEOUT};

/// OTLP span kinds (`Span.SpanKind`).
pub const SPAN_KIND_SERVER: u64 = 2;
pub const SPAN_KIND_CLIENT: u64 = 3;

/// One span from an `ExportTraceServiceRequest` in OTLP/JSON form (as the receiver records
/// it: ids in lowercase hex, enums as integers), flattened with its resource. Attribute
/// values are unwrapped from `AnyValue`: strings and booleans as JSON strings/booleans,
/// `intValue` (a string in OTLP/JSON) as a JSON integer, `doubleValue` as a number; any
/// other value stays as its `AnyValue` object.
#[derive(Debug, Clone)]
pub struct OtlpSpan {
    pub resource: BTreeMap<String, Value>,
    pub kind: u64,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// "" for a root span.
    pub parent_span_id: String,
    pub start: u64,
    pub end: u64,
    pub attrs: BTreeMap<String, Value>,
}

/// An `AnyValue` in OTLP/JSON as a plain JSON value (see [`OtlpSpan`]).
fn any_value(v: &Value) -> Value {
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    if let Some(i) = obj.get("intValue") {
        let n = i.as_i64().or_else(|| i.as_str()?.parse().ok());
        return n.map_or_else(|| i.clone(), Value::from);
    }
    for key in ["stringValue", "boolValue", "doubleValue"] {
        if let Some(x) = obj.get(key) {
            return x.clone();
        }
    }
    v.clone()
}

/// OTLP/JSON `attributes` (a list of `{key, value}`) as a map.
pub fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let key = kv["key"].as_str().unwrap_or_default().to_string();
                    (key, any_value(&kv["value"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// OTLP/JSON writes fixed64 timestamps as strings.
fn json_u64(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str()?.parse().ok()).unwrap_or(0)
}

/// The spans of one `ExportTraceServiceRequest` in OTLP/JSON form.
pub fn otlp_spans(request: &Value) -> Vec<OtlpSpan> {
    let mut out = Vec::new();
    let empty = Vec::new();
    for rs in request["resourceSpans"].as_array().unwrap_or(&empty) {
        let resource = attributes(&rs["resource"]["attributes"]);
        for ss in rs["scopeSpans"].as_array().unwrap_or(&empty) {
            for s in ss["spans"].as_array().unwrap_or(&empty) {
                let string = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                out.push(OtlpSpan {
                    resource: resource.clone(),
                    kind: s["kind"].as_u64().unwrap_or(0),
                    name: string("name"),
                    trace_id: string("traceId"),
                    span_id: string("spanId"),
                    parent_span_id: string("parentSpanId"),
                    start: json_u64(&s["startTimeUnixNano"]),
                    end: json_u64(&s["endTimeUnixNano"]),
                    attrs: attributes(&s["attributes"]),
                });
            }
        }
    }
    out
}

/// One log record from an `ExportLogsServiceRequest` in OTLP/JSON form, flattened with
/// its resource (attribute values unwrapped as for [`OtlpSpan`]).
#[derive(Debug, Clone)]
pub struct OtlpLog {
    pub resource: BTreeMap<String, Value>,
    pub time: u64,
    pub severity_number: u64,
    pub severity_text: String,
    /// The body's string value ("" when absent).
    pub body: String,
    pub event_name: String,
    /// "" when the record has none.
    pub trace_id: String,
    pub span_id: String,
    pub attrs: BTreeMap<String, Value>,
}

impl OtlpLog {
    pub fn service(&self) -> &str {
        self.resource.get("service.name").and_then(Value::as_str).unwrap_or("")
    }

    pub fn attr_str(&self, key: &str) -> &str {
        self.attrs.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

/// The log records of one `ExportLogsServiceRequest` in OTLP/JSON form.
pub fn otlp_logs(request: &Value) -> Vec<OtlpLog> {
    let mut out = Vec::new();
    let empty = Vec::new();
    for rl in request["resourceLogs"].as_array().unwrap_or(&empty) {
        let resource = attributes(&rl["resource"]["attributes"]);
        for sl in rl["scopeLogs"].as_array().unwrap_or(&empty) {
            for r in sl["logRecords"].as_array().unwrap_or(&empty) {
                let string = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                out.push(OtlpLog {
                    resource: resource.clone(),
                    time: json_u64(&r["timeUnixNano"]),
                    severity_number: r["severityNumber"].as_u64().unwrap_or(0),
                    severity_text: string("severityText"),
                    body: r["body"]["stringValue"].as_str().unwrap_or_default().to_string(),
                    event_name: string("eventName"),
                    trace_id: string("traceId"),
                    span_id: string("spanId"),
                    attrs: attributes(&r["attributes"]),
                });
            }
        }
    }
    out
}

impl OtlpSpan {
    /// A string resource attribute, or "".
    fn resource_str(&self, key: &str) -> &str {
        self.resource.get(key).and_then(Value::as_str).unwrap_or("")
    }

    pub fn service(&self) -> &str {
        self.resource_str("service.name")
    }

    /// Exported by hoptrace (`telemetry.distro.name=hoptrace`), not by an SDK.
    pub fn from_agent(&self) -> bool {
        self.resource_str("telemetry.distro.name") == "hoptrace"
    }

    /// The resource's `process.pid`, if any.
    pub fn pid(&self) -> Option<i64> {
        self.resource.get("process.pid").and_then(Value::as_i64)
    }
}

/// Spans one per line, for assertion messages.
pub fn show_spans(spans: &[OtlpSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} kind={} {:?} trace={} span={} parent={} [{}..{}] resource={:?} attrs={:?}",
                s.service(),
                s.kind,
                s.name,
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.start,
                s.end,
                s.resource,
                s.attrs
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `tests/fixtures/otlp_receiver.py`: a real OTLP receiver (gRPC TraceService and HTTP
/// `POST /v1/traces`, decoded with the official protobuf definitions) that records every
/// request as a JSON line. Dropping it stops the receiver.
pub struct OtlpReceiver {
    // Dropped in order: the process goes before its temp dir.
    process: Running,
    dir: TempDir,
    grpc_port: u16,
    http_port: u16,
}

impl OtlpReceiver {
    /// A receiver on ephemeral ports.
    pub fn start() -> OtlpReceiver {
        OtlpReceiver::start_on(0, 0)
    }

    /// A receiver on the given ports (0 = ephemeral): e.g. a collector that comes up on a
    /// port the agent has been trying all along.
    pub fn start_on(grpc_port: u16, http_port: u16) -> OtlpReceiver {
        OtlpReceiver::start_with(grpc_port, http_port, &[])
    }

    /// A receiver with extra fixture arguments: the misbehaving-collector modes
    /// (`--fail-count`, `--fail-http`, `--retry-after`, `--fail-grpc`, `--delay`,
    /// `--delay-count`; see tests/fixtures/otlp_receiver.py).
    pub fn start_with(grpc_port: u16, http_port: u16, extra: &[&str]) -> OtlpReceiver {
        let dir = TempDir::new("otlp-receiver");
        let out = dir.join("requests.jsonl");
        let mut process = Running::spawn(
            venv("otlp_receiver.py")
                .arg("--out")
                .arg(&out)
                .arg("--metrics-out")
                .arg(dir.join("metrics.jsonl"))
                .arg("--logs-out")
                .arg(dir.join("logs.jsonl"))
                .args(["--grpc-port", &grpc_port.to_string()])
                .args(["--http-port", &http_port.to_string()])
                .args(extra),
        );
        let line = process.wait_for_line("READY ", TIMEOUT);
        let port = |name: &str| -> u16 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} port in the receiver's {line:?}"))
        };
        let (grpc, http) = (port("grpc"), port("http"));
        for (asked, got) in [(grpc_port, grpc), (http_port, http)] {
            assert!(asked == 0 || asked == got, "receiver asked for port {asked}, got {got}");
        }
        OtlpReceiver { process, dir, grpc_port: grpc, http_port: http }
    }

    /// `http://127.0.0.1:<grpc port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<http port>`, the generic OTLP/HTTP endpoint (`/v1/traces` is
    /// appended by exporters).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `http://127.0.0.1:<http port>/v1/traces`, for exporters given the full URL.
    pub fn http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    /// The recorded file as written so far (complete lines only).
    pub fn raw(&self) -> String {
        let text = fs::read_to_string(self.dir.join("requests.jsonl")).unwrap_or_default();
        match text.rfind('\n') {
            Some(i) => text[..=i].to_string(),
            None => String::new(),
        }
    }

    /// Every request received so far: `{"transport", "path", "content_type",
    /// "content_encoding", "headers", "spans", "request"}` (see the fixture).
    pub fn requests(&self) -> Vec<Value> {
        self.raw()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<OtlpSpan> {
        self.requests().iter().flat_map(|r| otlp_spans(&r["request"])).collect()
    }

    /// Waits until `check` holds for the spans received so far and returns them; panics
    /// with what was received (and the receiver's stderr) after `timeout`.
    pub fn wait_for_spans(&self, timeout: Duration, what: &str, check: impl Fn(&[OtlpSpan]) -> bool) -> Vec<OtlpSpan> {
        let mut spans = Vec::new();
        if wait_until(timeout, || {
            spans = self.spans();
            check(&spans)
        }) {
            return spans;
        }
        panic!(
            "the receiver never got {what} within {timeout:?}; it got:\n{}\nreceiver stderr:\n{}",
            show_spans(&spans),
            self.process.stderr()
        );
    }

    /// Every metrics export received so far (gRPC `MetricsService` or `POST /v1/metrics`):
    /// `{"transport", "path", "content_type", "headers", "data_points", "request"}` with
    /// the request as proto JSON (exemplar ids in hex).
    pub fn metrics_requests(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("metrics.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }

    /// Waits until `check` holds for the metrics requests received so far and returns
    /// them; panics with the last request after `timeout`.
    pub fn wait_for_metrics(&self, timeout: Duration, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        if wait_until(timeout, || {
            got = self.metrics_requests();
            check(&got)
        }) {
            return got;
        }
        panic!(
            "the receiver never got {what} within {timeout:?}; {} metrics requests, the last:\n{}\nreceiver stderr:\n{}",
            got.len(),
            got.last().map(|v| v.to_string()).unwrap_or_default(),
            self.process.stderr()
        );
    }

    /// Every logs export received so far (gRPC `LogsService` or `POST /v1/logs`):
    /// `{"transport", "path", "content_type", "headers", "log_records", "request"}`.
    pub fn logs_requests(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("logs.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }

    /// Every log record received so far, in arrival order.
    pub fn log_records(&self) -> Vec<OtlpLog> {
        self.logs_requests().iter().flat_map(|r| otlp_logs(&r["request"])).collect()
    }

    /// The logs files as received (for "nothing planted anywhere" checks).
    pub fn raw_logs(&self) -> String {
        fs::read_to_string(self.dir.join("logs.jsonl")).unwrap_or_default()
    }

    /// Waits until `check` holds for the log records received so far and returns them.
    pub fn wait_for_logs(&self, timeout: Duration, what: &str, check: impl Fn(&[OtlpLog]) -> bool) -> Vec<OtlpLog> {
        let mut logs = Vec::new();
        if wait_until(timeout, || {
            logs = self.log_records();
            check(&logs)
        }) {
            return logs;
        }
        panic!(
            "the receiver never got {what} within {timeout:?}; it got:\n{}\nreceiver stderr:\n{}",
            logs.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join("\n"),
            self.process.stderr()
        );
    }

    /// Export requests the receiver refused (`--fail-count`), in arrival order:
    /// `{"transport", "status", "spans", "span_ids", "time"}`.
    pub fn refused(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("requests.jsonl.refused")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }
}
