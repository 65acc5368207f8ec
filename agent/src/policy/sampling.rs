//! Which spans leave the node.
//!
//! Head sampling is parent-based: a trace context that arrived on the wire carries the
//! decision in its sampled flag, and the agent honours it (both ways). For traces the
//! agent starts itself, the decision comes from the trace id, exactly as OpenTelemetry's
//! TraceIdRatioBased sampler computes it, so every agent on every node — and the SDKs —
//! decides the same for the same trace. Ratios can differ per service and route (critical
//! routes at 100%, health checks at 0%).
//!
//! Local tail rules then rescue agent-started spans the ratio dropped when they matter: an
//! error, a request slower than its threshold, a risk signal. (A context whose upstream
//! said "not sampled" is not rescued: half a trace the caller chose not to keep helps no
//! one.) At the edge it is different: a "not sampled" flag from a peer outside
//! `gaps.internal_networks` (`TraceOrigin::External`) does not override the error and
//! risk-signal rules, or any client could hide its own requests by sending `-00`
//! (`sampling.trust_external_sampled_flag: true` restores plain parent-based sampling).
//! RED metrics and gap detection run before this, on every request.

use hashbrown::HashMap;

use serde::Serialize;

use crate::model::span::{AnyValue, SpanRecord, StatusCode, TraceId, TraceOrigin};

/// A per-service / per-route override; `None` fields match anything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingRule {
    pub service: Option<String>,
    pub route: Option<String>,
    pub ratio: f64,
    /// Spans slower than this are kept whatever the ratio.
    pub slow_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Fraction of agent-started traces kept (0.0–1.0).
    pub ratio: f64,
    /// Default slow threshold for the tail rule (None: no slow rule).
    pub slow_ms: Option<u64>,
    pub keep_errors: bool,
    pub keep_risk_signals: bool,
    /// Let a "not sampled" flag from a peer outside `gaps.internal_networks` drop spans
    /// that the error and risk-signal rules would keep (off: an outside client cannot
    /// hide its own errors or risky requests).
    pub trust_external_sampled_flag: bool,
    /// First match wins.
    pub rules: Vec<SamplingRule>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            ratio: 1.0,
            slow_ms: Some(1000),
            keep_errors: true,
            keep_risk_signals: true,
            trust_external_sampled_flag: false,
            rules: Vec::new(),
        }
    }
}

/// Why a span was kept or dropped (counter labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    KeptParentSampled,
    KeptRatio,
    KeptError,
    KeptSlow,
    KeptRiskSignal,
    DroppedParentNotSampled,
    DroppedRatio,
}

impl Decision {
    pub const ALL: [Decision; 7] = [
        Decision::KeptParentSampled,
        Decision::KeptRatio,
        Decision::KeptError,
        Decision::KeptSlow,
        Decision::KeptRiskSignal,
        Decision::DroppedParentNotSampled,
        Decision::DroppedRatio,
    ];

    /// Metric label value (same as the JSON key).
    pub fn label(self) -> &'static str {
        match self {
            Decision::KeptParentSampled => "kept_parent_sampled",
            Decision::KeptRatio => "kept_ratio",
            Decision::KeptError => "kept_error",
            Decision::KeptSlow => "kept_slow",
            Decision::KeptRiskSignal => "kept_risk_signal",
            Decision::DroppedParentNotSampled => "dropped_parent_not_sampled",
            Decision::DroppedRatio => "dropped_ratio",
        }
    }

    pub fn kept(self) -> bool {
        !matches!(self, Decision::DroppedParentNotSampled | Decision::DroppedRatio)
    }
}

/// OpenTelemetry's TraceIdRatioBased: the lower 8 bytes of the trace id, big-endian,
/// shifted right by one, compared with ratio × 2^63.
pub fn ratio_keeps(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    x < (ratio * (1u64 << 63) as f64) as u64
}

fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match &a.value {
        AnyValue::Str(s) => Some(s.as_str()),
        _ => None,
    })
}

fn is_risk_signal(e: &crate::model::span::SpanEvent) -> bool {
    e.name == "risk_signal"
}

pub struct Sampler {
    cfg: SamplingConfig,
    pub counts: HashMap<Decision, u64>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        Self { cfg, counts: HashMap::new() }
    }

    fn rule(&self, service: &str, route: &str) -> Option<&SamplingRule> {
        self.cfg.rules.iter().find(|r| {
            r.service.as_deref().is_none_or(|s| s == service) && r.route.as_deref().is_none_or(|x| x == route)
        })
    }

    /// Decides (and counts) whether `span`, of service `service`, is exported.
    pub fn decide(&mut self, span: &SpanRecord, service: &str) -> Decision {
        let d = self.decision(span, service);
        *self.counts.entry(d).or_default() += 1;
        d
    }

    fn decision(&self, span: &SpanRecord, service: &str) -> Decision {
        let sampled = span.flags & 1 == 1;
        match span.origin {
            TraceOrigin::Remote if sampled => return Decision::KeptParentSampled,
            TraceOrigin::Remote => return Decision::DroppedParentNotSampled,
            TraceOrigin::External if sampled => return Decision::KeptParentSampled,
            TraceOrigin::External if self.cfg.trust_external_sampled_flag => return Decision::DroppedParentNotSampled,
            TraceOrigin::External => {
                return self.keep_signal(span).unwrap_or(Decision::DroppedParentNotSampled);
            }
            TraceOrigin::Agent => {}
        }
        let route = str_attr(span, "http.route").unwrap_or("");
        let rule = self.rule(service, route);
        let ratio = rule.map_or(self.cfg.ratio, |r| r.ratio);
        if ratio_keeps(&span.trace_id, ratio) {
            return Decision::KeptRatio;
        }
        if self.cfg.keep_errors && span.status.code == StatusCode::Error {
            return Decision::KeptError;
        }
        let slow_ms = rule.and_then(|r| r.slow_ms).or(self.cfg.slow_ms);
        if let Some(ms) = slow_ms {
            if span.end_unix_ns.saturating_sub(span.start_unix_ns) >= ms * 1_000_000 {
                return Decision::KeptSlow;
            }
        }
        if self.cfg.keep_risk_signals && span.events.iter().any(is_risk_signal) {
            return Decision::KeptRiskSignal;
        }
        Decision::DroppedRatio
    }

    /// The keep rules an outside "not sampled" flag cannot override: errors, risk signals.
    fn keep_signal(&self, span: &SpanRecord) -> Option<Decision> {
        if self.cfg.keep_errors && span.status.code == StatusCode::Error {
            return Some(Decision::KeptError);
        }
        if self.cfg.keep_risk_signals && span.events.iter().any(is_risk_signal) {
            return Some(Decision::KeptRiskSignal);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::span::{KeyValue, Resource, SpanEvent, SpanKind, Status};

    fn span(trace_id: TraceId, origin: TraceOrigin, flags: u8) -> SpanRecord {
        SpanRecord {
            resource: Arc::new(Resource::default()),
            trace_id,
            span_id: [1; 8],
            parent_span_id: [0; 8],
            trace_state: String::new(),
            flags,
            origin,
            name: "GET /x".into(),
            kind: SpanKind::Server,
            start_unix_ns: 0,
            end_unix_ns: 1_000_000,
            attributes: vec![KeyValue::str("http.route", "/x")],
            events: Vec::new(),
            links: Vec::new(),
            status: Status::default(),
        }
    }

    /// Random trace ids from a fixed-seed generator (reproducible).
    fn ids(n: usize) -> Vec<TraceId> {
        let mut g = crate::traces::ids::IdGenerator::seeded(7);
        (0..n).map(|_| g.trace_id()).collect()
    }

    #[test]
    fn ratio_is_within_statistical_bounds_and_identical_across_instances() {
        let cfg = SamplingConfig { ratio: 0.1, slow_ms: None, ..Default::default() };
        let (mut a, mut b) = (Sampler::new(cfg.clone()), Sampler::new(cfg));
        let mut kept = 0;
        for id in ids(10_000) {
            let s = span(id, TraceOrigin::Agent, 1);
            let (da, db) = (a.decide(&s, "svc"), b.decide(&s, "svc"));
            assert_eq!(da, db, "two agents must decide the same for the same trace");
            kept += da.kept() as u32;
        }
        // Binomial(10000, 0.1): mean 1000, sd 30; 5 sd either side.
        assert!((850..=1150).contains(&kept), "kept {kept} of 10000 at ratio 0.1");
    }

    #[test]
    fn tail_rules_keep_errors_slow_and_risk_at_ratio_zero_and_parents_are_honoured() {
        let mut s = Sampler::new(SamplingConfig { ratio: 0.0, ..Default::default() });
        let id = [9; 16];
        assert_eq!(s.decide(&span(id, TraceOrigin::Agent, 1), "svc"), Decision::DroppedRatio);
        let mut err = span(id, TraceOrigin::Agent, 1);
        err.status = Status { code: StatusCode::Error, message: String::new() };
        assert_eq!(s.decide(&err, "svc"), Decision::KeptError);
        let mut slow = span(id, TraceOrigin::Agent, 1);
        slow.end_unix_ns = 2_000_000_000;
        assert_eq!(s.decide(&slow, "svc"), Decision::KeptSlow);
        let mut risky = span(id, TraceOrigin::Agent, 1);
        risky.events.push(SpanEvent { name: "risk_signal".into(), time_unix_ns: 0, attributes: vec![] });
        assert_eq!(s.decide(&risky, "svc"), Decision::KeptRiskSignal);
        // Parent-based, both ways, whatever the ratio.
        assert_eq!(s.decide(&span(id, TraceOrigin::Remote, 1), "svc"), Decision::KeptParentSampled);
        let mut remote_err = span(id, TraceOrigin::Remote, 0);
        remote_err.status.code = StatusCode::Error;
        assert_eq!(s.decide(&remote_err, "svc"), Decision::DroppedParentNotSampled);
    }

    /// An outside client sending `sampled=0` cannot hide its errors or risk signals; its
    /// plain requests still honour the flag, and the switch restores full trust.
    #[test]
    fn external_not_sampled_does_not_override_error_and_risk_rules() {
        let id = [9; 16];
        let mut err = span(id, TraceOrigin::External, 0);
        err.status.code = StatusCode::Error;
        let mut risky = span(id, TraceOrigin::External, 0);
        risky.events.push(SpanEvent { name: "risk_signal".into(), time_unix_ns: 0, attributes: vec![] });
        let mut slow = span(id, TraceOrigin::External, 0);
        slow.end_unix_ns = 5_000_000_000;
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.decide(&err, "svc"), Decision::KeptError);
        assert_eq!(s.decide(&risky, "svc"), Decision::KeptRiskSignal);
        assert_eq!(s.decide(&slow, "svc"), Decision::DroppedParentNotSampled, "only errors and risk signals");
        assert_eq!(s.decide(&span(id, TraceOrigin::External, 0), "svc"), Decision::DroppedParentNotSampled);
        assert_eq!(s.decide(&span(id, TraceOrigin::External, 1), "svc"), Decision::KeptParentSampled);
        let mut off = Sampler::new(SamplingConfig { keep_errors: false, ..Default::default() });
        assert_eq!(off.decide(&err, "svc"), Decision::DroppedParentNotSampled, "keep_errors: false still applies");
        let mut trusting = Sampler::new(SamplingConfig { trust_external_sampled_flag: true, ..Default::default() });
        assert_eq!(trusting.decide(&err, "svc"), Decision::DroppedParentNotSampled);
        assert_eq!(trusting.decide(&risky, "svc"), Decision::DroppedParentNotSampled);
    }

    #[test]
    fn per_route_rules_override_the_default() {
        let cfg = SamplingConfig {
            ratio: 1.0,
            rules: vec![SamplingRule { service: None, route: Some("/healthz".into()), ratio: 0.0, slow_ms: None }],
            slow_ms: None,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        let mut health = span([3; 16], TraceOrigin::Agent, 1);
        health.attributes = vec![KeyValue::str("http.route", "/healthz")];
        assert_eq!(s.decide(&health, "svc"), Decision::DroppedRatio);
        assert_eq!(s.decide(&span([3; 16], TraceOrigin::Agent, 1), "svc"), Decision::KeptRatio);
        assert_eq!(s.counts[&Decision::DroppedRatio], 1);
    }
}
