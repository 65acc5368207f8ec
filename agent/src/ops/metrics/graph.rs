//! The service-graph metrics on `/metrics` (names and labels of the OpenTelemetry
//! Collector's `servicegraph` connector and Tempo's metrics generator; see
//! [`crate::traces::red::graph`]), and their bound.

use std::fmt::Write as _;

use super::render::{escape, header};
use crate::traces::red::{
    graph::{Edge, GraphSnapshot, Hist, LABELS},
    BUCKETS,
};

fn labels(e: &Edge) -> String {
    if e.overflow {
        return "otel_metric_overflow=\"true\"".into();
    }
    // client, server and connection_type are always written (Grafana's service graph
    // groups by them; connection_type is empty between two services).
    let mut parts = Vec::with_capacity(5);
    for (i, (name, value)) in LABELS.iter().zip(&e.labels).enumerate() {
        if i < 3 || !value.is_empty() {
            parts.push(format!("{name}=\"{}\"", escape(value)));
        }
    }
    parts.join(",")
}

fn histogram(out: &mut String, name: &str, help: &str, edges: &[(String, &Hist)], om: bool) {
    if edges.is_empty() {
        return;
    }
    header(out, name, "histogram", help, om);
    for (l, h) in edges {
        let mut cumulative = 0;
        for (b, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(b).map_or_else(|| "+Inf".into(), |bound| format!("{bound}"));
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
    }
}

/// Appends the service-graph metrics and their cardinality self-metrics.
pub fn render(snap: &GraphSnapshot, om: bool, out: &mut String) {
    let all: Vec<(String, &Edge)> = snap.edges.iter().map(|e| (labels(e), e)).collect();
    let counted: Vec<&(String, &Edge)> = all.iter().filter(|(_, e)| e.total > 0).collect();
    if !counted.is_empty() {
        let name = "traces_service_graph_request_total";
        header(out, name, "counter", "Requests between two nodes of the service graph.", om);
        for (l, e) in &counted {
            let _ = writeln!(out, "{name}{{{l}}} {}", e.total);
        }
        let name = "traces_service_graph_request_failed_total";
        header(out, name, "counter", "Failed requests between two nodes of the service graph.", om);
        for (l, e) in &counted {
            let _ = writeln!(out, "{name}{{{l}}} {}", e.failed);
        }
    }
    let server: Vec<(String, &Hist)> =
        all.iter().filter(|(_, e)| e.server.count > 0).map(|(l, e)| (l.clone(), &e.server)).collect();
    let client: Vec<(String, &Hist)> =
        all.iter().filter(|(_, e)| e.client.count > 0).map(|(l, e)| (l.clone(), &e.client)).collect();
    histogram(
        out,
        "traces_service_graph_request_server_seconds",
        "Request duration as seen by the server.",
        &server,
        om,
    );
    histogram(
        out,
        "traces_service_graph_request_client_seconds",
        "Request duration as seen by the client.",
        &client,
        om,
    );
    header(
        out,
        "hoptrace_service_graph_edges",
        "gauge",
        "Service-graph edges in use (bounded by metrics.max_series).",
        om,
    );
    let _ = writeln!(out, "hoptrace_service_graph_edges {}", snap.edges.len());
    let name = "hoptrace_service_graph_overflowed_total";
    header(out, name, "counter", "Requests recorded in the service graph's overflow edge.", om);
    let _ = writeln!(out, "{name} {}", snap.overflowed);
}
