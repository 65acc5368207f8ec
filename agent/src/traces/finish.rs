//! Every span's last steps, in this order: CLIENT spans are built from the calls
//! ([`TracePipeline::emit_call`]); then redaction of values that came from traffic, the
//! sampling decision (head and tail), the RED metrics (every span, kept or not), and the
//! sink (kept spans only).

use super::{http, judge::outbound_context, Call, ConnView, Ctx, SpanSink, TraceConfig, TracePipeline};
use crate::{
    gaps::GapKind,
    model::span::{AnyValue, KeyValue, Resource, SpanEvent, SpanRecord, Str, TraceOrigin},
    policy::{
        redact::{Detector, Field},
        sampling::Decision,
    },
    protocols::http1::header_values,
};

/// A string attribute of a Resource (`service.name`, `zone`), empty when absent.
pub(super) fn resource_attr(r: &Resource, key: &str) -> String {
    resource_str(r, key).to_string()
}

/// [`resource_attr`] borrowed, for the per-span path.
pub(super) fn resource_str<'r>(r: &'r Resource, key: &str) -> &'r str {
    r.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value {
            AnyValue::Str(v) => Some(v.as_str()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Attributes whose values came from traffic (mapped headers, baggage).
fn from_traffic(key: &str, cfg: &TraceConfig) -> bool {
    key.starts_with("baggage.")
        || cfg.request_header_attributes.iter().any(|(_, a)| a == key)
        || cfg.response_header_attributes.iter().any(|(_, a)| a == key)
}

impl TracePipeline {
    /// Emits a CLIENT span (or a PRODUCER span for a publish). `parent` is the enclosing
    /// server span's context when linked.
    pub(super) fn emit_call(
        &mut self,
        call: Call,
        view: &ConnView,
        parent: Option<Ctx>,
        unresolved: Option<&'static str>,
        gap: Option<GapKind>,
        sink: &mut dyn SpanSink,
    ) {
        // Not linked to a request: the process's own job or environment context, if any.
        let parent = match parent {
            None if unresolved.is_none() => self.process_parent(view.pid),
            p => p,
        };
        let linked = parent.is_some();
        let x = match call {
            Call::Mq(op) => return self.emit_publish(op, view, parent, unresolved, gap, sink),
            _ if self.cfg.suppress_instrumented && self.is_instrumented(view.pid) => {
                self.stats.spans_suppressed_instrumented += 1;
                return;
            }
            Call::Failed { error, start_ns } => {
                return self.emit_failed_connect(view, parent, unresolved, error, start_ns, sink)
            }
            Call::Http(x) => x,
        };
        // The request's own traceparent (a service that propagates) decides the trace when
        // it differs from the enclosing span's.
        let ctx = match (parent, outbound_context(&x)) {
            (Some(p), Some(o)) if o.trace_id != p.trace_id => Ctx::remote(&o, String::new()),
            (Some(p), _) => p,
            (None, Some(o)) => Ctx::remote(&o, String::new()),
            (None, None) => self.new_trace(),
        };
        let span_id = self.ids.span_id();
        let resource = self.resource_for(view.pid, &view.comm);
        let route = self.route(resource_str(&resource, "service.name"), x.request.target());
        let named = http::Named { name: self.span_name(&x.request.method, &route), route };
        let addrs = view.addrs(&mut self.ip_names);
        let mut span = http::client_span(&self.cfg, &self.clock, &x, named, &addrs, resource, ctx.ids(span_id));
        self.mark_parent_link(&mut span, linked, unresolved, gap);
        self.stats.spans_client += 1;
        self.client_edge(view, &span);
        // A call without context to a server of this node: its server span may join it.
        if self.cfg.stitch
            && self.server_peers.contains_key(&(view.remote, view.local))
            && header_values(&x.request.headers, "traceparent").next().is_none()
        {
            let key = super::stitch::StitchKey { client: view.local, server: view.remote, seq: view.seq };
            self.stitch_client(key, &x, &span, sink);
        }
        self.submit(span, sink);
    }

    /// A connection attempt that failed: an error CLIENT span.
    fn emit_failed_connect(
        &mut self,
        view: &ConnView,
        parent: Option<Ctx>,
        unresolved: Option<&'static str>,
        error: &'static str,
        start_ns: u64,
        sink: &mut dyn SpanSink,
    ) {
        let linked = parent.is_some();
        let ctx = match parent {
            Some(p) => p,
            None => self.new_trace(),
        };
        let span_id = self.ids.span_id();
        let resource = self.resource_for(view.pid, &view.comm);
        let t = self.clock.to_unix_ns(start_ns);
        let mut span = http::connect_failed_span(&view.addrs(&mut self.ip_names), resource, ctx.ids(span_id), t, error);
        self.mark_parent_link(&mut span, linked, unresolved, None);
        self.stats.spans_client += 1;
        self.stats.connect_failures += 1;
        self.submit(span, sink);
    }

    /// Privacy, last step before anything is queued: every attribute value that came from
    /// traffic (mapped headers, baggage) passes the PII detectors, and so do the side doors
    /// (`tracestate`, host, user agent, method: see `sidedoors`). A hit is replaced by its
    /// placeholder and the span gets a `dlp_redacted` event naming the detector and count,
    /// never the value.
    fn redact(&mut self, span: &mut SpanRecord) {
        let mut hits: Vec<(Detector, usize)> = Vec::new();
        for attr in span.attributes.iter_mut() {
            // Built-in keys are static; keys from the configuration or from traffic
            // (mapped headers, baggage) are not: a pointer test skips most attributes.
            if matches!(attr.key, Str::Static(_)) || !from_traffic(&attr.key, &self.cfg) {
                continue;
            }
            if let AnyValue::Str(v) = &attr.value {
                let r = self.redactor.redact_field(Field::HeaderValue, v);
                if r.changed() {
                    attr.value = AnyValue::Str(r.text.into());
                    hits.extend(r.hits);
                }
            }
        }
        super::sidedoors::scrub(&self.redactor, &mut self.scrub_cache, &self.cfg.extra_http_methods, span, &mut hits);
        for (det, n) in hits {
            *self.stats.redactions.entry(det.name()).or_default() += n as u64;
            span.events.push(SpanEvent {
                name: "dlp_redacted".into(),
                time_unix_ns: span.start_unix_ns,
                attributes: vec![
                    KeyValue::str("hoptrace.dlp.detector", det.name()),
                    KeyValue::int("hoptrace.dlp.count", n as i64),
                ],
            });
        }
    }

    /// Redaction, then head and tail sampling (see `policy::sampling`): every span is
    /// counted by decision and feeds the RED metrics; only kept ones reach the sink.
    pub(super) fn submit(&mut self, span: SpanRecord, sink: &mut dyn SpanSink) {
        self.submit_with_access(span, None, sink);
    }

    /// [`Self::submit`], and the access record of a SERVER span (`access`): made from
    /// the redacted span, before sampling, so every request has one.
    pub(super) fn submit_with_access(
        &mut self,
        span: SpanRecord,
        access: Option<super::logs::access::AccessExtra>,
        sink: &mut dyn SpanSink,
    ) {
        let Some((mut span, access)) = self.stitch_intercept(span, access) else { return };
        self.redact(&mut span);
        if let Some(extra) = access {
            let cfg = &self.cfg;
            let record =
                super::logs::access::record(&span, &extra, |k| from_traffic(k, cfg), super::logs::unix_now_ns());
            if let Some(logs) = sink.logs() {
                self.app_logs.stats.access_records += 1;
                logs.submit_log(record);
            }
        }
        let decision = self.sampler.decide(&span, resource_str(&span.resource, "service.name"));
        *self.stats.sampling.entry(decision).or_default() += 1;
        if decision == Decision::DroppedParentNotSampled {
            self.stats.spans_not_sampled += 1;
        }
        // Every finished span feeds the metrics; only kept ones may become exemplars.
        self.red.record(&span, decision.kept());
        if decision.kept() {
            sink.submit(span);
        }
    }

    /// A trace the agent starts: sampled flag set; the sampler decides by trace id.
    pub(super) fn new_trace(&mut self) -> Ctx {
        Ctx {
            trace_id: self.ids.trace_id(),
            parent: [0; 8],
            flags: 1,
            trace_state: String::new(),
            origin: TraceOrigin::Agent,
        }
    }
}
