//! Service graph metrics, with the names and semantics of the OpenTelemetry Collector's
//! `servicegraph` connector and Tempo's metrics generator, so Grafana's service-graph
//! view and the dashboards written for them work unchanged:
//!
//! | Prometheus | kind | what |
//! |---|---|---|
//! | `traces_service_graph_request_total` | counter | requests from `client` to `server` |
//! | `traces_service_graph_request_failed_total` | counter | of those, failed (span status ERROR) |
//! | `traces_service_graph_request_server_seconds` | histogram | duration seen by the server |
//! | `traces_service_graph_request_client_seconds` | histogram | duration seen by the client |
//!
//! Labels: `client`, `server`, `connection_type` (empty between two services,
//! `virtual_node` when one end is not a service the agent saw), and the dimensions
//! `client_zone`, `server_zone` (the connector's `client_`/`server_` prefixes).
//!
//! Edges come from what this node saw. A pair (both ends on this node) is one request:
//! counted on the server side, which also records the server histogram; the client side
//! records only the client histogram. A one-sided span counts itself: a SERVER span whose
//! caller is elsewhere (the caller named by its address when it is in an internal
//! network, else `user`, Tempo's name for an uninstrumented entry), a CLIENT span whose
//! server is elsewhere (named by a `services` rule for its port, else `address:port`).
//!
//! Bounded like the RED metrics: at most `metrics.max_series` edges; more go to one
//! overflow edge (`otel_metric_overflow="true"`), counted in
//! `hoptrace_metrics_series_overflowed_total{metric="traces_service_graph"}`.

use std::{hash::BuildHasher, sync::Arc};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{now_unix_ns, BUCKETS, NB};

/// Label names, in slot order.
pub const LABELS: [&str; 5] = ["client", "server", "connection_type", "client_zone", "server_zone"];

/// A cumulative histogram (per-bucket counts, the last one `+Inf`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    pub count: u64,
    pub sum: f64,
    pub buckets: [u64; NB],
}

impl Hist {
    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        self.buckets[BUCKETS.partition_point(|&b| b < seconds)] += 1;
    }
}

/// One edge of the graph.
#[derive(Clone, Debug)]
pub struct Edge {
    /// Values of [`LABELS`].
    pub labels: [Arc<str>; 5],
    pub overflow: bool,
    pub start_unix_ns: u64,
    pub total: u64,
    pub failed: u64,
    pub server: Hist,
    pub client: Hist,
}

/// Which end of the request a span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// One observation: a finished SERVER or CLIENT span, as an edge.
pub struct Observation<'a> {
    pub side: Side,
    /// Values of [`LABELS`].
    pub labels: [&'a str; 5],
    pub seconds: f64,
    pub failed: bool,
    /// This span counts the request (false for the client side of a same-node pair).
    pub counts: bool,
}

/// Every edge, bounded.
pub struct GraphTable {
    edges: Vec<Edge>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    overflow_idx: Option<u32>,
    /// Observations recorded in the overflow edge.
    pub overflowed: u64,
    max_edges: usize,
}

impl GraphTable {
    pub fn new(max_edges: usize) -> Self {
        Self {
            edges: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            overflow_idx: None,
            overflowed: 0,
            max_edges: max_edges.max(1),
        }
    }

    /// Edges in use, the overflow edge included.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    fn slot(&mut self, labels: &[&str; 5]) -> usize {
        let h = self.hasher.hash_one(labels);
        let edges = &self.edges;
        let eq = |&i: &u32| {
            let e = &edges[i as usize];
            !e.overflow && e.labels.iter().zip(labels).all(|(a, b)| &**a == *b)
        };
        if let Some(&i) = self.index.find(h, eq) {
            return i as usize;
        }
        let named = self.edges.len() - usize::from(self.overflow_idx.is_some());
        if named >= self.max_edges {
            self.overflowed += 1;
            if let Some(i) = self.overflow_idx {
                return i as usize;
            }
            self.overflow_idx = Some(self.edges.len() as u32);
            self.edges.push(edge(Default::default(), true));
            return self.edges.len() - 1;
        }
        self.edges.push(edge(labels.map(Arc::from), false));
        let i = self.edges.len() - 1;
        let (edges, hasher) = (&self.edges, &self.hasher);
        self.index.insert_unique(h, i as u32, |&j| {
            let e = &edges[j as usize];
            let l: [&str; 5] = std::array::from_fn(|k| &*e.labels[k]);
            hasher.hash_one(l)
        });
        i
    }

    pub fn record(&mut self, o: &Observation<'_>) {
        let i = self.slot(&o.labels);
        let e = &mut self.edges[i];
        match o.side {
            Side::Server => e.server.observe(o.seconds),
            Side::Client => e.client.observe(o.seconds),
        }
        if o.counts {
            e.total += 1;
            e.failed += u64::from(o.failed);
        }
    }

    pub fn snapshot(&self) -> GraphSnapshot {
        GraphSnapshot { edges: self.edges.clone(), overflowed: self.overflowed }
    }
}

fn edge(labels: [Arc<str>; 5], overflow: bool) -> Edge {
    Edge {
        labels,
        overflow,
        start_unix_ns: now_unix_ns(),
        total: 0,
        failed: 0,
        server: Hist::default(),
        client: Hist::default(),
    }
}

/// A point-in-time copy (label strings shared).
#[derive(Clone, Debug, Default)]
pub struct GraphSnapshot {
    pub edges: Vec<Edge>,
    pub overflowed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(side: Side, client: &'static str, server: &'static str, counts: bool, failed: bool) -> Observation<'static> {
        Observation { side, labels: [client, server, "", "Z1", "Z6"], seconds: 0.3, failed, counts }
    }

    #[test]
    fn a_same_node_pair_counts_once_with_both_histograms() {
        let mut g = GraphTable::new(10);
        g.record(&obs(Side::Server, "front", "back", true, true));
        g.record(&obs(Side::Client, "front", "back", false, false));
        let s = g.snapshot();
        assert_eq!(s.edges.len(), 1);
        let e = &s.edges[0];
        assert_eq!((e.total, e.failed, e.server.count, e.client.count), (1, 1, 1, 1));
        assert_eq!(e.server.buckets[7], 1, "0.3 s is in the 0.5 bucket");
        assert_eq!(&*e.labels[0], "front");
    }

    #[test]
    fn edges_are_capped_into_one_overflow_edge() {
        let mut g = GraphTable::new(2);
        for server in ["a", "b", "c", "d"] {
            g.record(&obs(Side::Client, "front", server, true, false));
        }
        g.record(&obs(Side::Client, "front", "a", true, false));
        let s = g.snapshot();
        assert_eq!(s.edges.len(), 3, "two edges and the overflow");
        assert_eq!(s.overflowed, 2);
        let o = s.edges.iter().find(|e| e.overflow).unwrap();
        assert_eq!(o.total, 2);
        assert_eq!(s.edges.iter().find(|e| &*e.labels[1] == "a").unwrap().total, 2, "a known edge stays");
    }
}
