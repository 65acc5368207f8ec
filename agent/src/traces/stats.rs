//! What the trace pipeline counted: spans by kind, linking outcomes, gaps, redactions,
//! sampling decisions, parse errors (`/metrics` and the agent's stop statistics).

use hashbrown::HashMap;

use serde::Serialize;

use crate::policy::sampling::Decision;

#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceStats {
    pub exchanges: u64,
    pub spans_server: u64,
    pub spans_client: u64,
    pub spans_suppressed_instrumented: u64,
    pub parents_linked_same_thread: u64,
    /// Of those, calls that completed after their request had (linked by start time).
    pub parents_linked_after_request: u64,
    pub parents_unresolved_concurrent: u64,
    /// Calls linked by the Python Context their first write ran in (see `pycontext`).
    pub parents_linked_context: u64,
    /// Calls of async Python services whose Context no request owned: unresolved.
    pub parents_unresolved_context: u64,
    /// What the Python Context mapping did (copies claimed, inherited…).
    pub python_contexts: super::pycontext::PyContextStats,
    /// CLIENT and PRODUCER spans per service: linked, unresolved or root.
    pub parent_links: super::coverage::ParentLinks,
    pub held_calls_expired: u64,
    pub connect_failures: u64,
    /// Spans whose parent context was not sampled (flags 00): honoured, not exported.
    pub spans_not_sampled: u64,
    pub propagation_gaps: u64,
    /// Requests whose route went to the overflow bucket (route cardinality cap).
    pub routes_overflowed: u64,
    /// Values replaced by the PII detectors, by detector.
    pub redactions: HashMap<&'static str, u64>,
    /// Spans by sampling decision (kept_* / dropped_*).
    pub sampling: HashMap<Decision, u64>,
    pub connections_unknown_protocol: u64,
    /// Invalid trace context headers, by reason (never the value).
    pub invalid_context: HashMap<&'static str, u64>,
    /// Parse errors, by protocol/reason.
    pub parse_errors: HashMap<String, u64>,
    /// Message-queue operations reported by the parsers, by messaging.system.
    pub mq_operations: HashMap<&'static str, u64>,
    pub spans_producer: u64,
    pub spans_consumer: u64,
}
