//! The embedded sink used when no collector endpoint is configured: one OTLP/JSON line
//! (an `ExportTraceServiceRequest`) per batch, to stdout or appended to a file, so the
//! agent's output can be piped into anything that reads OTLP/JSON (e.g. a collector's
//! file receiver).

use std::fs::{File, OpenOptions};
use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::config::{ConfigError, JsonOutput};
use super::retry::ExportFailure;
use super::Accepted;

pub(crate) enum JsonSink {
    Stdout,
    File(File),
}

impl JsonSink {
    pub fn open(output: &JsonOutput) -> Result<Self, ConfigError> {
        match output {
            JsonOutput::Stdout => Ok(Self::Stdout),
            JsonOutput::File(path) => {
                OpenOptions::new().create(true).append(true).open(path).map(Self::File).map_err(|e| {
                    ConfigError::InvalidEndpoint {
                        endpoint: path.display().to_string(),
                        reason: format!("cannot open OTLP/JSON output file: {e}"),
                    }
                })
            }
        }
    }

    pub fn export(&mut self, request: &ExportTraceServiceRequest) -> Result<Accepted, ExportFailure> {
        self.export_message(request)
    }

    /// One OTLP/JSON line of any signal's export request (logs use this too).
    pub fn export_message<M: serde::Serialize>(&mut self, request: &M) -> Result<Accepted, ExportFailure> {
        let mut line = serde_json::to_string(request).map_err(|e| ExportFailure::permanent("json", e.to_string()))?;
        line.push('\n');
        let written = match self {
            // One locked write per line: other threads printing to stdout cannot split it.
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            }
            // O_APPEND and a single write keep lines whole in a file shared with others.
            Self::File(f) => f.write_all(line.as_bytes()),
        };
        written.map_err(|e| ExportFailure::permanent("json output", e.to_string()))?;
        Ok(Accepted::default())
    }
}

/// The OTLP/JSON encoding of `request` (one line, no trailing newline).
///
/// opentelemetry-proto's serde derives already follow the OTLP/JSON rules: lowerCamelCase
/// names, ids as lowercase hex, enums as integers, 64-bit integers (timestamps, `intValue`)
/// as decimal strings; the tests pin that down.
pub fn encode_json(request: &ExportTraceServiceRequest) -> Result<String, serde_json::Error> {
    serde_json::to_string(request)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::export::otlp::tests::{resource, span};
    use crate::export::otlp::to_request;
    use crate::model::span::{AnyValue, KeyValue, SpanEvent, SpanKind, SpanLink, Status, StatusCode};

    #[test]
    fn otlp_json_is_spec_shaped() {
        let r = resource("checkout");
        let mut s = span(&r, 0xab);
        s.parent_span_id = [0x0f; 8];
        s.kind = SpanKind::Client;
        s.status = Status { code: StatusCode::Error, message: "boom".into() };
        s.attributes.push(KeyValue { key: "ratio".into(), value: AnyValue::Double(0.25) });
        s.attributes.push(KeyValue::bool("cached", false));
        s.events.push(SpanEvent {
            name: "retry".into(),
            time_unix_ns: 1_700_000_000_100_000_000,
            attributes: vec![KeyValue::int("attempt", 2)],
        });
        s.links.push(SpanLink {
            trace_id: [0xcd; 16],
            span_id: [0xef; 8],
            trace_state: String::new(),
            attributes: vec![],
        });
        let spans = vec![s, span(&r, 1)];
        let text = encode_json(&to_request(&spans)).unwrap();
        assert!(!text.contains('\n'));
        let v: Value = serde_json::from_str(&text).unwrap();

        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "checkout"}})
        );
        let ss = &rs["scopeSpans"][0];
        assert_eq!(ss["scope"]["name"], "hoptrace");
        assert_eq!(ss["scope"]["version"], env!("CARGO_PKG_VERSION"));
        let sp = &ss["spans"][0];
        assert_eq!(sp["traceId"], "abababababababababababababababab");
        assert_eq!(sp["spanId"], "acacacacacacacac");
        assert_eq!(sp["parentSpanId"], "0f0f0f0f0f0f0f0f");
        assert_eq!(sp["name"], "GET /items/171");
        assert_eq!(sp["kind"], 3);
        assert_eq!(sp["flags"], 1);
        assert_eq!(sp["startTimeUnixNano"], "1700000000000000171");
        assert_eq!(sp["endTimeUnixNano"], "1700000000500000171");
        assert_eq!(sp["status"], json!({"code": 2, "message": "boom"}));
        assert_eq!(
            sp["attributes"],
            json!([
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "http.response.status_code", "value": {"intValue": "200"}},
                {"key": "seq", "value": {"intValue": "171"}},
                {"key": "ratio", "value": {"doubleValue": 0.25}},
                {"key": "cached", "value": {"boolValue": false}},
            ])
        );
        assert_eq!(
            sp["events"],
            json!([{
                "timeUnixNano": "1700000000100000000",
                "name": "retry",
                "attributes": [{"key": "attempt", "value": {"intValue": "2"}}],
                "droppedAttributesCount": 0,
            }])
        );
        assert_eq!(sp["links"][0]["traceId"], "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd");
        assert_eq!(sp["links"][0]["spanId"], "efefefefefefefef");
        // A root span has an empty parent id; absent or "" both decode to empty bytes.
        let root = &ss["spans"][1];
        assert!(root.get("parentSpanId").is_none_or(|p| p == ""), "{root}");

        // And it round-trips through the same decoder a Rust collector would use.
        let back: ExportTraceServiceRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, to_request(&spans));
    }
}
