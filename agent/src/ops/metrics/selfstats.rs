//! The `/metrics` side of this module: RED metrics plus the self-metrics whose labels are
//! not static (parse errors by protocol/reason, …), the process's memory, and the OTLP
//! metrics exporter's own counters.
//!
//! The capture loop refreshes [`EndpointMetrics::extra`] once a second; the endpoint
//! renders the RED table from a snapshot taken under its lock.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
};

use super::render;
use crate::traces::red::RedRecorder;

/// A self-metric sample with owned label values.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedSample {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl OwnedSample {
    pub fn new(name: &'static str, help: &'static str, value: f64) -> Self {
        Self { name, help, labels: Vec::new(), value }
    }

    pub fn label(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.labels.push((k, v.into()));
        self
    }
}

/// What `/metrics` renders besides the capture counters and gaps.
#[derive(Default)]
pub struct EndpointMetrics {
    pub red: OnceLock<RedRecorder>,
    pub extra: Mutex<Vec<OwnedSample>>,
    /// The endpoint's own connection handling (`ops::server`).
    pub http: HttpStats,
}

/// What the HTTP endpoint did to protect itself: connections cut and accept failures.
#[derive(Default)]
pub struct HttpStats {
    pub open: AtomicU64,
    /// Closed at the connection cap, oldest first, to admit a new one.
    pub evicted: AtomicU64,
    /// Closed for not sending a complete request head in time (idle or slowloris).
    pub header_timeouts: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl HttpStats {
    fn samples(&self) -> Vec<OwnedSample> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        const CUT: &str = "Endpoint connections closed by the agent, by reason.";
        vec![
            OwnedSample::new(
                "hoptrace_http_connections",
                "Open connections to the agent's HTTP endpoint.",
                get(&self.open),
            ),
            OwnedSample::new("hoptrace_http_connections_closed_total", CUT, get(&self.evicted))
                .label("reason", "evicted_at_cap"),
            OwnedSample::new("hoptrace_http_connections_closed_total", CUT, get(&self.header_timeouts))
                .label("reason", "header_timeout"),
            OwnedSample::new(
                "hoptrace_http_accept_errors_total",
                "Failed accepts on the HTTP endpoint (backed off).",
                get(&self.accept_errors),
            ),
        ]
    }
}

impl EndpointMetrics {
    pub fn render(&self, om: bool, out: &mut String) {
        let mut extra = self.extra.lock().map(|e| e.clone()).unwrap_or_default();
        extra.extend(self.http.samples());
        render_samples(&extra, om, out);
        if let Some(red) = self.red.get() {
            render::render(&red.snapshot(), om, out);
            super::graph::render(&red.graph_snapshot(), om, out);
        }
    }
}

/// Samples of one name must be adjacent (they are, as built).
pub fn render_samples(samples: &[OwnedSample], om: bool, out: &mut String) {
    let mut last = "";
    for s in samples {
        if s.name != last {
            let kind = if s.name.ends_with("_total") { "counter" } else { "gauge" };
            render::header(out, s.name, kind, s.help, om);
            last = s.name;
        }
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", render::escape(v))).collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{} {}", s.name, s.value);
        } else {
            let _ = writeln!(out, "{}{{{}}} {}", s.name, labels.join(","), s.value);
        }
    }
}

/// Resident memory of this process, bytes (`/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// CPU time the agent used (user + system), from `/proc/self/stat`.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let (user, system): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (user + system) as f64 / ticks as f64)
}

/// Self-metrics the capture counters do not carry: parse errors and invalid trace context
/// by reason, export request outcomes and latency, the metrics exporter's counters, the
/// ring buffer's size and the process's memory.
pub fn extra_samples(
    traces: &crate::traces::TraceStats,
    export: &crate::export::ExportStats,
    metrics_export: Option<&crate::export::metrics::exporter::MetricsExportStats>,
    ringbuf_bytes: u64,
) -> Vec<OwnedSample> {
    let mut out = Vec::new();
    trace_samples(traces, &mut out);
    export_samples(export, &mut out);
    if let Some(m) = metrics_export {
        metrics_export_samples(m, &mut out);
    }
    out.push(OwnedSample::new(
        "hoptrace_ringbuf_size_bytes",
        "Size of the kernel→agent ring buffer.",
        ringbuf_bytes as f64,
    ));
    out.push(OwnedSample::new(
        "hoptrace_ringbuf_used_bytes_max",
        "Highest ring buffer fill (bytes produced, not yet read) since the previous refresh (1 s).",
        crate::capture::ringfill::take_high_water() as f64,
    ));
    if let Some(rss) = rss_bytes() {
        out.push(OwnedSample::new(
            "hoptrace_process_resident_memory_bytes",
            "Resident memory of the agent.",
            rss as f64,
        ));
    }
    if let Some(cpu) = cpu_seconds() {
        out.push(OwnedSample::new(
            "hoptrace_process_cpu_seconds_total",
            "CPU time the agent used, user and system.",
            cpu,
        ));
    }
    out
}

/// Parse errors by protocol and reason, invalid trace context by reason, parent links by
/// service.
fn trace_samples(traces: &crate::traces::TraceStats, out: &mut Vec<OwnedSample>) {
    let mut sorted: Vec<(&String, &u64)> = traces.parse_errors.iter().collect();
    sorted.sort();
    for (key, n) in sorted {
        let (protocol, reason) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let help = "Protocol parse errors, by protocol and reason.";
        out.push(
            OwnedSample::new("hoptrace_parse_errors_total", help, *n as f64)
                .label("protocol", protocol)
                .label("reason", reason),
        );
    }
    let mut sorted: Vec<(&&str, &u64)> = traces.invalid_context.iter().collect();
    sorted.sort();
    for (reason, n) in sorted {
        let help = "Inbound requests whose trace context headers were invalid, by reason.";
        out.push(OwnedSample::new("hoptrace_invalid_trace_context_total", help, *n as f64).label("reason", *reason));
    }
    parent_link_samples(&traces.parent_links, out);
    python_context_samples(&traces.python_contexts, traces.parents_linked_context, out);
}

/// What the Python Context mapping did (see `traces::pycontext`).
fn python_context_samples(p: &crate::traces::pycontext::PyContextStats, linked: u64, out: &mut Vec<OwnedSample>) {
    let help = "Python Context events: copies (claimed by a request, claimed_pipelined, inherited from a \
                request's Context, unowned), arms no copy took (arms_expired), Contexts re-created at an owned \
                address (reused), writes and writes_owned, owners_expired.";
    for (event, n) in [
        ("copies", p.copies),
        ("claimed", p.claimed),
        ("claimed_pipelined", p.claimed_pipelined),
        ("inherited", p.inherited),
        ("unowned", p.unowned),
        ("arms_expired", p.arms_expired),
        ("reused", p.reused),
        ("writes", p.writes),
        ("writes_owned", p.writes_owned),
        ("owners_expired", p.owners_expired),
    ] {
        out.push(OwnedSample::new("hoptrace_python_contexts_total", help, n as f64).label("event", event));
    }
    let help = "Outbound calls linked to their request by the Python Context they ran in.";
    out.push(OwnedSample::new("hoptrace_parents_linked_by_context_total", help, linked as f64));
}

/// CLIENT and PRODUCER spans per service by parent link outcome: how well each service's
/// calls are attributed to the requests they serve (a kind appears once it has a span).
fn parent_link_samples(links: &crate::traces::coverage::ParentLinks, out: &mut Vec<OwnedSample>) {
    use crate::traces::coverage::{LinkOutcome, ServiceLinks};
    let help = "Outbound (CLIENT, PRODUCER) spans by service and parent link: linked to the inbound request \
                served, unresolved (several requests in flight on the thread), or root (no request served).";
    let mut rows: Vec<(Option<&str>, &ServiceLinks)> =
        links.services.iter().map(|(name, row)| (Some(name.as_str()), row)).collect();
    rows.sort_by_key(|(name, _)| *name);
    rows.push((None, &links.overflow));
    for (service, row) in rows {
        for (kind, counts) in [("client", &row.client), ("producer", &row.producer)] {
            if LinkOutcome::ALL.iter().all(|o| counts.get(*o) == 0) {
                continue;
            }
            for outcome in LinkOutcome::ALL {
                let sample = OwnedSample::new("hoptrace_parent_links_total", help, counts.get(outcome) as f64);
                let sample = match service {
                    Some(name) => sample.label("service_name", name),
                    None => sample.label("otel_metric_overflow", "true"),
                };
                out.push(sample.label("span_kind", kind).label("outcome", outcome.as_str()));
            }
        }
    }
}

/// The span exporter's requests by outcome, last latency, spans submitted.
fn export_samples(export: &crate::export::ExportStats, out: &mut Vec<OwnedSample>) {
    let help = "OTLP span export requests, by outcome (failed attempts include retried ones).";
    out.push(
        OwnedSample::new("hoptrace_export_requests_total", help, export.export_requests_ok as f64)
            .label("outcome", "ok"),
    );
    out.push(
        OwnedSample::new("hoptrace_export_requests_total", help, export.export_requests_failed as f64)
            .label("outcome", "failed"),
    );
    out.push(OwnedSample::new(
        "hoptrace_export_last_request_duration_seconds",
        "Round trip of the last span export request, whatever its outcome.",
        export.last_export_latency_us as f64 / 1e6,
    ));
    out.push(OwnedSample::new(
        "hoptrace_export_spans_submitted_total",
        "Spans handed to the exporter (after sampling).",
        export.spans_submitted as f64,
    ));
}

/// The OTLP metrics exporter's requests by outcome, rejected points, last latency.
fn metrics_export_samples(m: &crate::export::metrics::exporter::MetricsExportStats, out: &mut Vec<OwnedSample>) {
    use std::sync::atomic::Ordering::Relaxed;
    let help = "OTLP metrics export requests, by outcome.";
    out.push(
        OwnedSample::new("hoptrace_metrics_export_requests_total", help, m.requests_ok.load(Relaxed) as f64)
            .label("outcome", "ok"),
    );
    out.push(
        OwnedSample::new("hoptrace_metrics_export_requests_total", help, m.requests_failed.load(Relaxed) as f64)
            .label("outcome", "failed"),
    );
    out.push(OwnedSample::new(
        "hoptrace_metrics_export_data_points_rejected_total",
        "Metric data points the collector reported rejected.",
        m.data_points_rejected.load(Relaxed) as f64,
    ));
    out.push(OwnedSample::new(
        "hoptrace_metrics_export_last_request_duration_seconds",
        "Round trip of the last metrics export, retries included.",
        m.last_latency_us.load(Relaxed) as f64 / 1e6,
    ));
}
