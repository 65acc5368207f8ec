//! The cardinality review (`GET /cardinality`, `hoptrace report cardinality`): how many
//! distinct values each attribute takes, per metric and per service, highest first, with
//! the caps that bound them — for the periodic review of standard attributes.
//!
//! Worked out from the RED series and service-graph edges when asked (nothing on the
//! per-request path): a metric attribute's distinct values are exactly what the series
//! hold. Span-only attributes (`url.path`, `client.address`…) are not counted here.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::traces::red::{
    graph::{GraphSnapshot, LABELS},
    Family, Snapshot,
};

/// One row: `values` distinct values of `attribute` in `metric`, within `service` (or
/// every service when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub metric: &'static str,
    pub service: Option<String>,
    pub attribute: &'static str,
    pub values: usize,
    /// What bounds it.
    pub cap: &'static str,
}

fn cap_of(attribute: &str) -> &'static str {
    match attribute {
        "http.route" => "traces.max_routes_per_service per service; metrics.max_series per metric",
        "http.response.status_class" => "6 classes",
        "http.request.method" => "semantic-convention methods + traces.http_methods, else _OTHER",
        "messaging.operation.type" => "semantic-convention operation types",
        _ => "metrics.max_series per metric",
    }
}

/// Every (metric, service, attribute) count and every (metric, attribute) total, highest
/// first.
pub fn rows(red: &Snapshot, graph: &GraphSnapshot) -> Vec<Row> {
    type Sets = BTreeMap<(&'static str, Option<String>, &'static str), BTreeSet<String>>;
    let mut sets: Sets = BTreeMap::new();
    for s in red.series.iter().filter(|s| !s.overflow) {
        let metric = s.family.label();
        let service = s.labels[0].to_string();
        for (attr, value) in s.family.attribute_names().iter().zip(&s.labels).skip(1) {
            for svc in [Some(service.clone()), None] {
                sets.entry((metric, svc, attr)).or_default().insert(value.to_string());
            }
        }
        sets.entry((metric, None, "service.name")).or_default().insert(service);
    }
    for e in graph.edges.iter().filter(|e| !e.overflow) {
        for (attr, value) in LABELS.iter().zip(&e.labels) {
            sets.entry(("traces_service_graph", None, attr)).or_default().insert(value.to_string());
        }
    }
    let mut out: Vec<Row> = sets
        .into_iter()
        .map(|((metric, service, attribute), v)| Row {
            metric,
            service,
            attribute,
            values: v.len(),
            cap: cap_of(attribute),
        })
        .collect();
    out.sort_by(|a, b| {
        b.values
            .cmp(&a.values)
            .then_with(|| (a.metric, &a.service, a.attribute).cmp(&(b.metric, &b.service, b.attribute)))
    });
    out
}

/// The `/cardinality` document: rows, and per metric the series in use against the cap.
pub fn json(red: &Snapshot, graph: &GraphSnapshot, max_series: Option<usize>) -> Value {
    let series: Vec<Value> = Family::ALL
        .iter()
        .map(|f| json!({ "metric": f.label(), "series": red.counts[*f as usize], "overflowed": red.overflowed[*f as usize] }))
        .chain([json!({ "metric": "traces_service_graph", "series": graph.edges.len(), "overflowed": graph.overflowed })])
        .collect();
    let rows: Vec<Value> = rows(red, graph)
        .into_iter()
        .map(|r| json!({ "metric": r.metric, "service": r.service, "attribute": r.attribute, "values": r.values, "cap": r.cap }))
        .collect();
    json!({ "max_series": max_series, "series": series, "attributes": rows })
}

/// The report as a table (what `hoptrace report cardinality` prints).
pub fn table(doc: &Value) -> String {
    let mut out = String::from(
        "METRIC                                        SERVICE            ATTRIBUTE                     VALUES  CAP\n",
    );
    for r in doc["attributes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<45} {:<18} {:<29} {:>6}  {}\n",
            r["metric"].as_str().unwrap_or_default(),
            r["service"].as_str().unwrap_or("*"),
            r["attribute"].as_str().unwrap_or_default(),
            r["values"],
            r["cap"].as_str().unwrap_or_default()
        ));
    }
    out.push_str("\nMETRIC                                        SERIES  OVERFLOWED\n");
    for s in doc["series"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<45} {:>6}  {}\n",
            s["metric"].as_str().unwrap_or_default(),
            s["series"],
            s["overflowed"]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::span::SpanKind,
        traces::red::{
            tests::{http, span},
            RedTable,
        },
    };

    #[test]
    fn distinct_values_per_metric_and_service_highest_first() {
        let mut t = RedTable::new(100);
        for (route, tenant) in [("/a", "acme"), ("/b", "acme"), ("/c", "globex")] {
            t.record(&span(SpanKind::Server, 10, http(route, Some(tenant), Some(200)), 1), false, false);
        }
        let rows = rows(&t.snapshot(), &GraphSnapshot::default());
        let top = &rows[0];
        assert_eq!((top.metric, top.attribute, top.values), ("http.server.request.duration", "http.route", 3));
        let tenant = rows.iter().find(|r| r.attribute == "tenant" && r.service.is_none()).unwrap();
        assert_eq!(tenant.values, 2);
        assert!(rows.windows(2).all(|w| w[0].values >= w[1].values));
        let doc = json(&t.snapshot(), &GraphSnapshot::default(), Some(100));
        let text = table(&doc);
        assert!(text.lines().nth(1).unwrap().contains("http.route"), "{text}");
    }
}
