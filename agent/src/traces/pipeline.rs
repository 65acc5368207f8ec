//! The orchestrator: in-order stream bytes in, parser events out, and one short function
//! per kind of event that hands the work to [`super::linking`], [`super::judge`],
//! [`super::instrumented`] and [`super::finish`].

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hoptrace_common::{Direction, Role};

use super::{
    context::{self, TraceParent},
    http,
    pylink::ByContext,
    served::{Served, ServedHistory},
    ConnL7, ConnView, Ctx, IdGenerator, SpanSink, TraceConfig, TracePipeline, TraceStats,
};
use crate::{
    capture::{conntrack::Connection, stream::Segment},
    gaps::GapTable,
    model::span::{hex, Resource, SpanId, TraceOrigin},
    policy::{
        redact::{Detector, Redactor},
        sampling::Sampler,
    },
    protocols::{self, http1::header_values, HttpExchange, L7Event},
    resource::{
        process::{ProcessCache, ProcessInfo},
        resolver::ResourceResolver,
    },
    util::{
        clock::Clock,
        logging::{self, RateLimiter},
    },
};

/// A request's trace context as received: the valid parent, its tracestate, and the
/// reason the headers were invalid (never their value).
pub(super) struct Inbound {
    pub parent: Option<TraceParent>,
    pub trace_state: String,
    pub invalid: Option<&'static str>,
}

impl TracePipeline {
    pub fn new(cfg: TraceConfig, resources: ResourceResolver) -> Self {
        let sampler = Sampler::new(cfg.sampling.clone());
        let mut redactor = Redactor::default();
        for d in Detector::ALL {
            if cfg.disabled_detectors.iter().any(|n| n == d.name()) {
                redactor = redactor.without(d);
            }
        }
        // Patterns were validated with the configuration; a bad one here is skipped whole.
        let redactor = redactor.clone().with_patterns(&cfg.redact_patterns).unwrap_or(redactor);
        let jobs = super::jobs::Jobs::new(&redactor);
        Self {
            cfg,
            clock: Clock::now(),
            ids: IdGenerator::new(),
            conns: Default::default(),
            busy: Default::default(),
            served: ServedHistory::default(),
            held: Default::default(),
            held_by_pid: Default::default(),
            pyctx: Default::default(),
            held_py: Default::default(),
            served_py: Default::default(),
            instrumented: Default::default(),
            processes: ProcessCache::default(),
            resources,
            close_ns: None,
            log_limit: RateLimiter::new(Duration::from_secs(10)),
            sampler,
            redactor,
            routes: Default::default(),
            route_cache: Default::default(),
            span_names: Default::default(),
            ip_names: Default::default(),
            scrub_cache: Default::default(),
            events_scratch: Vec::new(),
            client_peers: Default::default(),
            server_peers: Default::default(),
            addr_names: Default::default(),
            stitch: Default::default(),
            gap_was_first: false,
            gaps: Arc::new(Mutex::new(GapTable::default())),
            stats: TraceStats::default(),
            red: super::red::RedRecorder::default(),
            jobs,
            app_logs: Default::default(),
        }
    }

    /// New in-order bytes of one direction of `conn`.
    pub fn on_segments(&mut self, conn: &Connection, dir: Direction, segs: &[Segment], sink: &mut dyn SpanSink) {
        if segs.is_empty() {
            return;
        }
        if !self.conns.contains_key(&conn.id) {
            self.remember_peer(conn);
        }
        if !self.detect(conn, dir, segs) {
            return;
        }
        if conn.role == Role::Server && dir == Direction::Ingress {
            self.mark_serving(conn, segs);
            if self.pyctx.tracks(conn.pid) {
                self.pyctx.on_inbound(conn.pid, conn.id, segs);
            }
        }
        // A buffer kept across calls: most segments produce no event, the rest one.
        let mut events = std::mem::take(&mut self.events_scratch);
        if let Some(proto) = self.conns.get_mut(&conn.id).and_then(|s| s.proto.as_mut()) {
            proto.feed(dir, segs, &mut events);
        }
        self.handle_events(conn, &mut events, sink);
        self.events_scratch = events;
    }

    /// Finds the connection's parser from its first bytes; false while there is none.
    fn detect(&mut self, conn: &Connection, dir: Direction, segs: &[Segment]) -> bool {
        let state = self.conns.entry(conn.id).or_insert(ConnL7 { proto: None, tried: [false; 2], exchanges: 0 });
        if state.proto.is_some() {
            return true;
        }
        if state.tried[0] && state.tried[1] {
            return false;
        }
        let first = segs.iter().find_map(|s| match s {
            Segment::Data { bytes, .. } if !bytes.is_empty() => Some(bytes.as_slice()),
            _ => None,
        });
        let Some(first) = first else { return false };
        state.proto = protocols::detect(conn.role, dir, first);
        if state.proto.is_none() {
            state.tried[dir as usize] = true;
            if state.tried[0] && state.tried[1] {
                self.stats.connections_unknown_protocol += 1;
            }
            return false;
        }
        true
    }

    /// The connection left the table (`close_ns`: kernel time of the close, when known):
    /// report what its parser still holds. An exchange cut short by the close ends then.
    pub fn on_close(&mut self, conn: &Connection, close_ns: Option<u64>, sink: &mut dyn SpanSink) {
        let Some(state) = self.conns.get_mut(&conn.id) else {
            return;
        };
        let mut events = Vec::new();
        if let Some(proto) = state.proto.as_mut() {
            proto.close(&mut events);
        }
        self.close_ns = close_ns;
        // Still in the table while its last events are handled: they keep their order.
        self.handle_events(conn, &mut events, sink);
        self.conns.remove(&conn.id);
        self.close_ns = None;
        self.forget_serving(conn.id);
        self.pyctx.forget_conn(conn.id);
    }

    /// Handles (and drains) `events`.
    pub(super) fn handle_events(&mut self, conn: &Connection, events: &mut Vec<L7Event>, sink: &mut dyn SpanSink) {
        for ev in events.drain(..) {
            match ev {
                L7Event::Http(x) => {
                    self.stats.exchanges += 1;
                    let seq = self.conns.get_mut(&conn.id).map_or(0, |s| {
                        s.exchanges = s.exchanges.wrapping_add(1);
                        s.exchanges - 1
                    });
                    // HTTP/2: streams end in any order, but both ends of a connection
                    // number them the same way; same-node stitching pairs by stream id.
                    let seq = x.h2.as_ref().map_or(seq, |h| h.stream_id);
                    match conn.role {
                        Role::Server => self.server_exchange(conn, seq, x, sink),
                        Role::Client => self.client_exchange(conn, seq, x, sink),
                        Role::Unknown => {}
                    }
                }
                // The broker's side of a connection never gets here (its parser is silent).
                L7Event::Messaging(op) => self.messaging(conn, op, sink),
                L7Event::ParseError { protocol, reason } => {
                    *self.stats.parse_errors.entry(format!("{protocol}/{reason}")).or_default() += 1;
                }
            }
        }
    }

    fn client_exchange(&mut self, conn: &Connection, seq: u32, x: HttpExchange, sink: &mut dyn SpanSink) {
        let tid = x.request.timing.first_tid;
        let view = ConnView { seq, ..ConnView::of(conn) };
        match self.py_owner(conn, x.request.timing.first_enter_ns) {
            ByContext::Owned(owner) => self.py_call(owner, view, super::Call::Http(x), sink),
            // A call sending its own context (an SDK) is judged like any other.
            ByContext::Unowned if super::judge::outbound_context(&x).is_none() => {
                self.py_unowned(view, super::Call::Http(x), sink)
            }
            _ => self.client_call(view, tid, super::Call::Http(x), sink),
        }
    }

    /// An outgoing connection attempt failed: an error CLIENT span, linked like any call.
    /// `tid` is the connecting thread when the failure happened inside connect().
    #[allow(clippy::too_many_arguments)]
    pub fn on_connect_failed(
        &mut self,
        pid: u32,
        tid: Option<u32>,
        comm: &str,
        local: SocketAddr,
        remote: SocketAddr,
        error: &'static str,
        ts_ns: u64,
        sink: &mut dyn SpanSink,
    ) {
        let view = ConnView { pid, comm: crate::model::span::Str::from(comm.to_string()), local, remote, seq: 0 };
        let call = super::Call::Failed { error, start_ns: ts_ns };
        match tid {
            Some(_) if self.pyctx.links_by_context(pid) => self.py_unowned(view, call, sink),
            Some(tid) => self.client_call(view, tid, call, sink),
            None => self.emit_call(call, &view, None, None, None, sink),
        }
    }

    /// An inbound request and its response: the SERVER span, with the calls made while
    /// it was served as its children, and the hops judged for lost context.
    fn server_exchange(&mut self, conn: &Connection, seq: u32, x: HttpExchange, sink: &mut dyn SpanSink) {
        let key = (conn.pid, x.request.timing.first_tid);
        let overlapped = self.end_serving(key, conn.id);
        let start = x.request.timing.first_exit_ns;
        let end = match &x.response {
            Some(r) => r.timing.last_exit_ns,
            None => self.close_ns.unwrap_or(x.request.timing.last_exit_ns),
        };
        let children = self.take_children(key, start, end);
        let (py_claim, py_children) = self.py_children(conn, seq);
        let inbound = self.inbound_context(&x);
        self.learn_from_children(conn.pid, &children, inbound.parent.as_ref());
        // Before the verdict below: an SDK service's calls (held by their Context) say it
        // instruments itself, and then its SERVER span is its SDK's to report.
        self.learn_from_children(conn.pid, &py_children, inbound.parent.as_ref());
        self.settle_other_threads(conn, start, end, inbound.parent.as_ref(), sink);
        let suppressed = self.cfg.suppress_instrumented && self.is_instrumented(conn.pid);

        let view = ConnView { seq, ..ConnView::of(conn) };
        let span_id = self.ids.span_id();
        let (mut ctx, stitched) = self.server_context(&view, &x, &inbound, span_id);
        // Propagation gaps: judged for every service, instrumented or not.
        let hop = self.hop(&view, x.request.target(), (ctx.trace_id, span_id));
        if ctx.origin == TraceOrigin::Remote && !self.is_internal(&hop) {
            // From outside: "not sampled" must not hide errors and risk signals.
            ctx.origin = TraceOrigin::External;
        }
        self.gap_was_first = false;
        // HTTP/2 headers not all decodable: a missing traceparent may just be one the agent
        // could not read, so it is not judged a propagation gap.
        let unreadable = x.h2.as_ref().is_some_and(|h| h.partial_headers) && inbound.parent.is_none();
        let inbound_gap = if unreadable { None } else { self.judge_inbound(&hop, &inbound) };
        if inbound_gap.is_some() && self.gap_was_first {
            self.stitch_example_gap(ctx.trace_id);
        }
        let child_gaps: Vec<_> =
            children.iter().map(|c| self.judge_child(&hop, c, inbound.parent.as_ref(), overlapped)).collect();
        let py_children = self.judge_py(py_children, &hop, inbound.parent.as_ref());
        if suppressed {
            self.stats.spans_suppressed_instrumented += 1 + (children.len() + py_children.len()) as u64;
            return;
        }
        self.emit_children(children, child_gaps, overlapped, &ctx, span_id, sink);
        self.emit_py_children(py_children, &ctx, span_id, sink);
        let resource = hop.resource.clone();
        let child = ctx.child_of(span_id);
        let named = http::Named { route: hop.route.clone(), name: self.span_name(&x.request.method, &hop.route) };
        let addrs = view.addrs(&mut self.ip_names);
        let mut span = http::server_span(&self.cfg, &self.clock, &x, named, &addrs, resource, ctx.ids(span_id));
        // Calls of this request that complete later are linked by their start time.
        self.py_answered(conn, seq, &x, py_claim, (&child, inbound.parent, &hop));
        self.served.push(key, Served { start, end, overlapped, child, inbound: inbound.parent, hop });
        span.end_unix_ns = span.end_unix_ns.max(self.clock.to_unix_ns(end));
        if let Some(kind) = inbound_gap {
            super::judge::mark_gap(&mut span, kind);
        }
        if stitched {
            span.attributes.push(crate::model::span::KeyValue::bool("hoptrace.context.stitched", true));
        }
        self.server_edge(&view, &span);
        if let Some(reason) = inbound.invalid {
            self.log_invalid_context(reason, &span.trace_id, &span_id, view.pid, &span.name);
        }
        self.stats.spans_server += 1;
        let access = self.access_extra(&x, &view, sink);
        self.submit_with_access(span, access, sink);
    }

    /// What an access record needs beyond the span, when access records are made.
    fn access_extra(
        &mut self,
        x: &HttpExchange,
        view: &ConnView,
        sink: &mut dyn SpanSink,
    ) -> Option<super::logs::access::AccessExtra> {
        if !self.app_logs.cfg.access_enabled || sink.logs().is_none() {
            return None;
        }
        let peer = self.client_peers.get(&(view.remote, view.local)).cloned();
        Some(super::logs::access::AccessExtra {
            request_body_bytes: x.request.body_len,
            response_body_bytes: x.response.as_ref().map_or(0, |r| r.body_len),
            peer: peer.map(|(pid, comm)| self.resource_for(pid, &comm)),
        })
    }

    /// The context a SERVER span continues: the inbound one, the client span's of the same
    /// exchange on this node (stitched: true), or a new trace — held until that client
    /// span comes when this is a same-node hop without context (see `stitch`).
    fn server_context(&mut self, view: &ConnView, x: &HttpExchange, inbound: &Inbound, span_id: SpanId) -> (Ctx, bool) {
        if let Some(tp) = &inbound.parent {
            return (Ctx::remote(tp, inbound.trace_state.clone()), false);
        }
        // Any traceparent at all, even an invalid one: the caller tried; never stitched.
        // Nor when HTTP/2 headers were not all decodable: one of them may have been it.
        let partial = x.h2.as_ref().is_some_and(|h| h.partial_headers);
        if partial || inbound.invalid.is_some() || header_values(&x.request.headers, "traceparent").next().is_some() {
            return (self.new_trace(), false);
        }
        match self.stitch_server(view.local, view.remote, view.seq, x) {
            super::stitch::ServerStitch::Linked(ctx) => (ctx, true),
            super::stitch::ServerStitch::Hold(key) => {
                let ctx = self.new_trace();
                self.stitch_hold(key, ctx.trace_id, span_id, x);
                (ctx, false)
            }
            super::stitch::ServerStitch::No => (self.new_trace(), false),
        }
    }

    /// The request's trace context; invalid headers are counted, and their reason kept so
    /// the span can be logged (never the header value).
    fn inbound_context(&mut self, x: &HttpExchange) -> Inbound {
        let mut values = header_values(&x.request.headers, "traceparent");
        let (first, second) = (values.next(), values.next());
        let mut invalid = None;
        let parent = match (first, second) {
            (Some(v), None) => context::parse_traceparent(v).map_err(|e| invalid = Some(e.reason())).ok(),
            // Several traceparent headers: invalid per the spec.
            (Some(_), Some(_)) => {
                invalid = Some("traceparent_multiple");
                None
            }
            _ => None,
        };
        if let Some(reason) = invalid {
            *self.stats.invalid_context.entry(reason).or_default() += 1;
        }
        let mut trace_state = String::new();
        if parent.is_some() {
            let lines: Vec<&[u8]> = header_values(&x.request.headers, "tracestate").collect();
            match context::parse_tracestate(&lines) {
                Ok(s) => trace_state = s,
                Err(e) => {
                    *self.stats.invalid_context.entry(e.reason()).or_default() += 1;
                    invalid = Some(e.reason());
                }
            }
        }
        Inbound { parent, trace_state, invalid }
    }

    fn log_invalid_context(&mut self, reason: &str, trace_id: &[u8], span_id: &SpanId, pid: u32, route: &str) {
        if let Some(suppressed) = self.log_limit.allow(&format!("invalid_context/{reason}/{pid}")) {
            logging::log(
                "warn",
                "invalid trace context on an inbound request; started a new trace",
                serde_json::json!({
                    "reason": reason,
                    "trace_id": hex(trace_id),
                    "span_id": hex(span_id),
                    "pid": pid,
                    "route": route,
                    "suppressed_since_last": suppressed,
                }),
            );
        }
    }

    pub(super) fn resource_for(&mut self, pid: u32, comm: &str) -> Arc<Resource> {
        // Per span: borrow the cached process info; copy it only in the rare case where
        // the executable is unknown (gone or a zombie already: short-lived clients) and the
        // kernel's name has to stand in for it.
        match self.processes.get(pid) {
            Some(p) if !p.exe_name.is_empty() => self.resources.resolve(pid, Some(&p)),
            other => {
                let mut info = other.map(|p| (*p).clone()).unwrap_or_else(|| ProcessInfo { pid, ..Default::default() });
                info.exe_name = comm.to_string();
                self.resources.resolve(pid, Some(&info))
            }
        }
    }

    /// service.name and zone of a process, from its Resource.
    pub(super) fn service_zone(&mut self, pid: u32, comm: &str) -> (String, String) {
        let r = self.resource_for(pid, comm);
        (super::finish::resource_attr(&r, "service.name"), super::finish::resource_attr(&r, "zone"))
    }
}
