//! RED metrics in the Prometheus text format (0.0.4) and in OpenMetrics 1.0, the one
//! format that carries exemplars: `…_bucket{…} 3 # {trace_id="…",span_id="…"} 0.31 1700000000.5`.
//!
//! Names are the OpenTelemetry → Prometheus translation: dots become underscores, the unit
//! `s` adds `_seconds`, counters end in `_total`; attributes become labels the same way
//! (`service.name` → `service_name`). Absent attributes are omitted, as Prometheus does
//! with empty labels.

use std::fmt::Write as _;

use crate::model::span::hex;
use crate::traces::red::{Family, Series, Snapshot, BUCKETS};

/// Label values escaped for both formats.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `service.name` → `service_name`.
fn label_name(attr: &str) -> String {
    attr.replace('.', "_")
}

/// Writes `# HELP`/`# TYPE` for a family. In OpenMetrics a counter's family name has no
/// `_total` (its samples do).
pub fn header(out: &mut String, name: &str, kind: &str, help: &str, om: bool) {
    let family = if om && kind == "counter" { name.strip_suffix("_total").unwrap_or(name) } else { name };
    let _ = writeln!(out, "# HELP {family} {help}");
    let _ = writeln!(out, "# TYPE {family} {kind}");
}

fn labels(s: &Series) -> String {
    if s.overflow {
        return "otel_metric_overflow=\"true\"".into();
    }
    let mut parts = Vec::with_capacity(6);
    for (name, value) in s.family.attribute_names().iter().zip(&s.labels) {
        if !value.is_empty() {
            parts.push(format!("{}=\"{}\"", label_name(name), escape(value)));
        }
    }
    parts.join(",")
}

fn braces(l: &str) -> String {
    if l.is_empty() {
        String::new()
    } else {
        format!("{{{l}}}")
    }
}

fn histogram(out: &mut String, name: &str, help: &str, series: &[&Series], om: bool) {
    if series.is_empty() {
        return;
    }
    header(out, name, "histogram", help, om);
    for s in series {
        let l = labels(s);
        let sep = if l.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, (n, exemplar)) in s.buckets.iter().zip(&s.exemplars).enumerate() {
            cumulative += n;
            let le = BUCKETS.get(b).map_or_else(|| "+Inf".into(), |bound| format!("{bound}"));
            let _ = write!(out, "{name}_bucket{{{l}{sep}le=\"{le}\"}} {cumulative}");
            if let (true, Some(e)) = (om, exemplar) {
                let _ = write!(
                    out,
                    " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {:.3}",
                    hex(&e.trace_id),
                    hex(&e.span_id),
                    e.value,
                    e.time_unix_ns as f64 / 1e9
                );
            }
            out.push('\n');
        }
        let _ = writeln!(out, "{name}_sum{} {}", braces(&l), s.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(&l), s.count);
    }
}

fn counter(out: &mut String, name: &str, help: &str, series: &[&Series], value: fn(&Series) -> u64, om: bool) {
    if series.is_empty() {
        return;
    }
    header(out, name, "counter", help, om);
    for s in series {
        let _ = writeln!(out, "{name}{} {}", braces(&labels(s)), value(s));
    }
}

/// Appends every RED metric of `snap`, and the cardinality self-metrics.
pub fn render(snap: &Snapshot, om: bool, out: &mut String) {
    render_http(snap, om, out);
    render_messaging(snap, om, out);
    render_rpc(snap, om, out);
    render_cardinality(snap, om, out);
}

fn of<'a>(snap: &'a Snapshot, fams: &[Family]) -> Vec<&'a Series> {
    snap.series.iter().filter(|s| fams.contains(&s.family)).collect()
}

fn render_http(snap: &Snapshot, om: bool, out: &mut String) {
    let server = of(snap, &[Family::HttpServer]);
    let client = of(snap, &[Family::HttpClient]);
    histogram(
        out,
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests seen by hoptrace.",
        &server,
        om,
    );
    counter(
        out,
        "hoptrace_http_server_request_errors_total",
        "HTTP server requests that failed (5xx or no complete response).",
        &server,
        |s| s.errors,
        om,
    );
    histogram(
        out,
        "http_client_request_duration_seconds",
        "Duration of HTTP client requests seen by hoptrace.",
        &client,
        om,
    );
    counter(
        out,
        "hoptrace_http_client_request_errors_total",
        "HTTP client requests that failed (4xx, 5xx, no response, connect failure).",
        &client,
        |s| s.errors,
        om,
    );
}

fn render_messaging(snap: &Snapshot, om: bool, out: &mut String) {
    let messaging = of(snap, &[Family::MessagingProducer, Family::MessagingConsumer]);
    histogram(
        out,
        "messaging_client_operation_duration_seconds",
        "Duration of messaging publish and consume operations.",
        &messaging,
        om,
    );
    counter(
        out,
        "messaging_client_sent_messages_total",
        "Messages published.",
        &of(snap, &[Family::MessagingProducer]),
        |s| s.messages,
        om,
    );
    counter(
        out,
        "messaging_client_consumed_messages_total",
        "Messages consumed.",
        &of(snap, &[Family::MessagingConsumer]),
        |s| s.messages,
        om,
    );
    counter(
        out,
        "hoptrace_messaging_client_operation_errors_total",
        "Messaging operations that failed.",
        &messaging,
        |s| s.errors,
        om,
    );
}

fn render_rpc(snap: &Snapshot, om: bool, out: &mut String) {
    for (fam, side, failed) in [
        (Family::RpcServer, "server", "server failures: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, or no complete response"),
        (Family::RpcClient, "client", "any status but OK, or no complete response"),
    ] {
        let series = of(snap, &[fam]);
        let help = format!("Duration of RPC {side} calls (gRPC) seen by hoptrace.");
        histogram(out, &format!("rpc_{side}_duration_seconds"), &help, &series, om);
        let help = format!("RPC {side} calls that failed ({failed}).");
        counter(out, &format!("hoptrace_rpc_{side}_errors_total"), &help, &series, |s| s.errors, om);
    }
}

/// The cardinality self-metrics: active series and overflowed spans per metric.
fn render_cardinality(snap: &Snapshot, om: bool, out: &mut String) {
    header(out, "hoptrace_metrics_series", "gauge", "Active RED metric series (bounded by metrics.max_series).", om);
    for f in Family::ALL {
        let _ = writeln!(out, "hoptrace_metrics_series{{metric=\"{}\"}} {}", f.label(), snap.counts[f as usize]);
    }
    header(
        out,
        "hoptrace_metrics_series_overflowed_total",
        "counter",
        "Spans recorded in a metric's overflow series because metrics.max_series was reached.",
        om,
    );
    for f in Family::ALL {
        let _ = writeln!(
            out,
            "hoptrace_metrics_series_overflowed_total{{metric=\"{}\"}} {}",
            f.label(),
            snap.overflowed[f as usize]
        );
    }
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus asks for it first).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
