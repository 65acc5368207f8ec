//! Propagation gaps: the hops where trace context was lost, and the table of them.
//!
//! The trace pipeline decides *that* a hop is broken (see `traces`); this module names the
//! kinds, keeps the bounded table of broken hops (`GET /gaps`, `hoptrace check`, alerts,
//! the `hoptrace_propagation_gaps_total` metric), and knows nothing of how they were found.

use hashbrown::{Equivalent, HashMap};
use serde::Serialize;

/// What went wrong on a hop. The names are the `kind` label everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// A request from an internal peer arrived without valid context at a service that is
    /// not an entry point.
    MissingInboundContext,
    /// While serving a request that carried context, the service called out without any.
    DroppedOutboundContext,
    /// While serving a traced request, the service called out with a *different* trace id.
    RestartedContext,
    /// A malformed `traceparent`/`tracestate` on the wire.
    InvalidContext,
    /// A message published or consumed without context (message queues).
    MqMessageWithoutContext,
}

impl GapKind {
    pub const ALL: [GapKind; 5] = [
        GapKind::MissingInboundContext,
        GapKind::DroppedOutboundContext,
        GapKind::RestartedContext,
        GapKind::InvalidContext,
        GapKind::MqMessageWithoutContext,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::MissingInboundContext => "missing_inbound_context",
            GapKind::DroppedOutboundContext => "dropped_outbound_context",
            GapKind::RestartedContext => "restarted_context",
            GapKind::InvalidContext => "invalid_context",
            GapKind::MqMessageWithoutContext => "mq_message_without_context",
        }
    }
}

/// One broken hop: labels of the gap metric, with bounded cardinality (routes are
/// templated, unknown peers are `unknown`, and the table itself is capped).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GapKey {
    pub kind: GapKind,
    /// The service that lost (or received without) the context.
    pub service: String,
    pub zone: String,
    /// The other end of the hop: the caller for inbound kinds, the callee for outbound.
    pub peer_service: String,
    pub route: String,
}

/// A [`GapKey`] borrowed: the table is looked up with it, so a gap already in the table
/// (the usual case: a broken hop breaks every request) costs no allocation. Its fields and
/// their order are [`GapKey`]'s, so both hash alike.
#[derive(Clone, Copy, Debug, Hash)]
pub struct GapKeyRef<'a> {
    pub kind: GapKind,
    pub service: &'a str,
    pub zone: &'a str,
    pub peer_service: &'a str,
    pub route: &'a str,
}

impl Equivalent<GapKey> for GapKeyRef<'_> {
    fn equivalent(&self, k: &GapKey) -> bool {
        self.kind == k.kind
            && self.service == k.service
            && self.zone == k.zone
            && self.peer_service == k.peer_service
            && self.route == k.route
    }
}

impl GapKeyRef<'_> {
    pub fn to_owned(&self) -> GapKey {
        GapKey {
            kind: self.kind,
            service: self.service.to_string(),
            zone: self.zone.to_string(),
            peer_service: self.peer_service.to_string(),
            route: self.route.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GapEntry {
    pub count: u64,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    /// A trace id where the gap happened (lowercase hex), to open in a trace viewer.
    pub example_trace_id: String,
    /// What exactly was wrong, for `invalid_context` (a reason label, never a value).
    pub detail: String,
}

/// A gap as reported by the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub key: GapKey,
    pub time_unix_ns: u64,
    pub trace_id: String,
    pub span_id: String,
    pub detail: String,
}

/// The bounded table of broken hops.
#[derive(Debug)]
pub struct GapTable {
    entries: HashMap<GapKey, GapEntry>,
    max_entries: usize,
    /// Gaps not tabled because the table was full (still counted in totals).
    pub overflow: u64,
    pub total: u64,
}

impl Default for GapTable {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl GapTable {
    pub fn new(max_entries: usize) -> Self {
        Self { entries: HashMap::default(), max_entries, overflow: 0, total: 0 }
    }

    /// Records a gap; returns true when it is the first of its key (worth a log line).
    pub fn record(&mut self, gap: &Gap) -> bool {
        let k = &gap.key;
        let key = GapKeyRef {
            kind: k.kind,
            service: &k.service,
            zone: &k.zone,
            peer_service: &k.peer_service,
            route: &k.route,
        };
        self.record_ref(&key, gap.time_unix_ns, &gap.detail, || gap.trace_id.clone())
    }

    /// [`Self::record`] without building the gap: the key is copied and `example_trace_id`
    /// called only when the key is new.
    pub fn record_ref(
        &mut self,
        key: &GapKeyRef<'_>,
        time_unix_ns: u64,
        detail: &str,
        example_trace_id: impl FnOnce() -> String,
    ) -> bool {
        self.total += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.count += 1;
            e.last_seen_unix_ns = e.last_seen_unix_ns.max(time_unix_ns);
            return false;
        }
        if self.entries.len() >= self.max_entries {
            self.overflow += 1;
            return false;
        }
        let entry = GapEntry {
            count: 1,
            first_seen_unix_ns: time_unix_ns,
            last_seen_unix_ns: time_unix_ns,
            example_trace_id: example_trace_id(),
            detail: detail.to_string(),
        };
        self.entries.insert(key.to_owned(), entry);
        true
    }

    /// A trace was moved (same-node stitching): example ids naming `old` name `new`.
    /// Called only when a hop's first gap was in a trace that is being stitched.
    pub fn retrace(&mut self, old: &str, new: &str) {
        for e in self.entries.values_mut().filter(|e| e.example_trace_id == old) {
            e.example_trace_id = new.to_string();
        }
    }

    /// Every broken hop, most frequent first.
    pub fn rows(&self) -> Vec<(GapKey, GapEntry)> {
        let mut rows: Vec<(GapKey, GapEntry)> = self.entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        rows
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(kind: GapKind, service: &str, t: u64) -> Gap {
        Gap {
            key: GapKey {
                kind,
                service: service.into(),
                zone: "Z6".into(),
                peer_service: "gw".into(),
                route: "/predict".into(),
            },
            time_unix_ns: t,
            trace_id: format!("{t:032x}"),
            span_id: "00f067aa0ba902b7".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn table_counts_per_hop_and_is_bounded() {
        let mut t = GapTable::new(2);
        assert!(t.record(&gap(GapKind::DroppedOutboundContext, "a", 1)));
        assert!(!t.record(&gap(GapKind::DroppedOutboundContext, "a", 5)));
        assert!(t.record(&gap(GapKind::MissingInboundContext, "b", 2)));
        assert!(!t.record(&gap(GapKind::InvalidContext, "c", 3)));
        assert_eq!((t.len(), t.overflow, t.total), (2, 1, 4));
        let rows = t.rows();
        assert_eq!(rows[0].1.count, 2);
        assert_eq!((rows[0].1.first_seen_unix_ns, rows[0].1.last_seen_unix_ns), (1, 5));
        assert_eq!(rows[0].1.example_trace_id, format!("{:032x}", 1));
    }
}
