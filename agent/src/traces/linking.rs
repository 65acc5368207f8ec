//! Thread-per-request parent linking.
//!
//! A client call made on a thread that was, when the call *started*, serving an inbound
//! request is that request's child. Inbound request bytes mark the reading thread busy
//! serving that connection from that time on; a call that completes on a busy thread and
//! started after the request did is held until the server exchange completes, then
//! becomes its child. A call that completes after its request was answered (its response
//! read to the end, or its socket closed, only later) is linked by its start time to the
//! request in the thread's history of finished ones ([`super::served`]) — never by what
//! the thread is doing when the call completes. When more than one inbound request was in
//! flight on the same thread (an async runtime multiplexing requests), the agent does not
//! guess: the call stays a root span with `hoptrace.parent.unresolved` saying why.

use std::time::Instant;

use serde_json::json;

use super::{
    instrumented::Instrumented, judge::outbound_context, served::Match, Call, ConnView, Ctx, Held, SpanSink,
    TracePipeline,
};
use crate::{
    capture::{conntrack::Connection, stream::Segment},
    gaps::GapKind,
    model::span::{hex, SpanId},
    traces::context::TraceParent,
    util::logging,
};

/// A thread serving inbound requests.
#[derive(Default)]
pub(super) struct Busy {
    /// The connections served, with the time their current request's first bytes were
    /// read (kernel clock).
    conns: Vec<(u64, u64)>,
    /// Another inbound request overlapped on this thread since it was last idle.
    overlapped: bool,
}

impl Busy {
    /// When the earliest request in flight on the thread started.
    fn since(&self) -> Option<u64> {
        self.conns.iter().map(|&(_, since)| since).min()
    }
}

/// Why a call is exported without a parent: other requests were in flight on its thread.
const CONCURRENT: &str = "concurrent_requests_on_thread";

/// Why a call that was held is exported without a parent.
const NOT_COMPLETED: &str = "inbound_request_not_completed";

impl TracePipeline {
    /// Inbound request bytes make the reading thread busy serving this connection.
    pub(super) fn mark_serving(&mut self, conn: &Connection, segs: &[Segment]) {
        for s in segs {
            if let Segment::Data { tid, ts_ns, .. } = s {
                let busy = self.busy.entry((conn.pid, *tid)).or_default();
                if !busy.conns.iter().any(|&(c, _)| c == conn.id) {
                    if !busy.conns.is_empty() {
                        busy.overlapped = true;
                    }
                    busy.conns.push((conn.id, *ts_ns));
                }
            }
        }
    }

    /// Whether thread `key` was serving an inbound request when a call that started at
    /// `start` began (one still in flight, or one it has finished since).
    pub(super) fn was_serving(&self, key: (u32, u32), start: u64) -> bool {
        self.busy.get(&key).and_then(Busy::since).is_some_and(|since| start >= since)
            || self.served.find(key, start).is_some()
    }

    /// Since when thread `key` has been serving the request(s) in flight on it, if any.
    pub(super) fn serving_since(&self, key: (u32, u32)) -> Option<u64> {
        self.busy.get(&key).and_then(Busy::since)
    }

    /// The connection is gone: no thread serves it any more.
    pub(super) fn forget_serving(&mut self, conn_id: u64) {
        for busy in self.busy.values_mut() {
            busy.conns.retain(|&(c, _)| c != conn_id);
        }
        self.busy.retain(|_, b| !b.conns.is_empty());
    }

    /// The thread `key` finished serving `conn_id`; whether another request overlapped.
    pub(super) fn end_serving(&mut self, key: (u32, u32), conn_id: u64) -> bool {
        let Some(busy) = self.busy.get_mut(&key) else { return false };
        let overlapped = busy.overlapped;
        busy.conns.retain(|&(c, _)| c != conn_id);
        if busy.conns.is_empty() {
            self.busy.remove(&key);
        }
        overlapped
    }

    /// Calls made from thread `key` while it served the request of `start..=end`.
    pub(super) fn take_children(&mut self, key: (u32, u32), start: u64, end: u64) -> Vec<Held> {
        let mut children = Vec::new();
        if let Some(list) = self.held.get_mut(&key) {
            let (inside, rest): (Vec<Held>, Vec<Held>) =
                list.drain(..).partition(|h| (start..=end).contains(&h.call.start_ns()));
            *list = rest;
            children = inside;
        }
        self.held.retain(|_, l| !l.is_empty());
        children
    }

    /// An outbound call, by what its thread was doing when the call started: serving a
    /// request still in flight (held until it completes), serving one that has completed
    /// since (linked now), or nothing (emitted now).
    pub(super) fn client_call(&mut self, view: ConnView, tid: u32, call: Call, sink: &mut dyn SpanSink) {
        let key = (view.pid, tid);
        let start = call.start_ns();
        if self.busy.get(&key).and_then(Busy::since).is_some_and(|since| start >= since) {
            self.held.entry(key).or_default().push(Held { call, conn: view, since: Instant::now() });
            return;
        }
        let held = Held { call, conn: view, since: Instant::now() };
        let Some(held) = self.link_to_served(key, held, sink) else { return };
        let (call, view) = (held.call, held.conn);
        if let Call::Http(x) = &call {
            if outbound_context(x).is_some() {
                if self.busy.keys().any(|(pid, _)| *pid == view.pid) {
                    let held = Held { call, conn: view.clone(), since: Instant::now() };
                    self.held_by_pid.entry(view.pid).or_default().push(held);
                    return;
                }
                // Sent trace context while serving nothing: the process made it up itself.
                self.mark_instrumented(view.pid, Instrumented::CreatesContext);
            }
        }
        self.emit_call(call, &view, None, None, None, sink);
    }

    /// Calls with their own context that other threads of the process made while this
    /// request (`start..=end`) was served: a passed-through inbound context is a plain
    /// call; any other context means the process creates context itself (an SDK), and one
    /// from another trace is a restarted-context gap.
    pub(super) fn settle_other_threads(
        &mut self,
        conn: &Connection,
        start: u64,
        end: u64,
        inbound: Option<&TraceParent>,
        sink: &mut dyn SpanSink,
    ) {
        let Some(list) = self.held_by_pid.get_mut(&conn.pid) else { return };
        let (inside, rest): (Vec<Held>, Vec<Held>) =
            list.drain(..).partition(|h| (start..=end).contains(&h.call.start_ns()));
        *list = rest;
        self.held_by_pid.retain(|_, l| !l.is_empty());
        let mut passed_through = Vec::new();
        for h in inside {
            let Call::Http(x) = &h.call else { continue };
            let out = outbound_context(x);
            match (out, inbound) {
                (Some(o), Some(i)) if o.trace_id == i.trace_id && o.parent_id == i.parent_id => passed_through.push(h),
                (out, _) => {
                    self.mark_instrumented(conn.pid, Instrumented::CreatesContext);
                    if let (Some(o), Some(i)) = (out, inbound) {
                        if o.trace_id != i.trace_id {
                            let (service, zone) = self.service_zone(conn.pid, &conn.comm);
                            let callee = self.callee_name(&h.conn);
                            let route = self.route(&service, x.request.target());
                            let trace = hex(&i.trace_id);
                            self.record_gap(
                                GapKind::RestartedContext,
                                &service,
                                &zone,
                                &callee,
                                &route,
                                &trace,
                                "",
                                "",
                            );
                        }
                    }
                }
            }
        }
        for h in passed_through {
            self.emit_call(h.call, &h.conn, None, None, None, sink);
        }
    }

    /// The calls a request's thread made while serving it, as children of its span
    /// `span_id` — unless another request overlapped on the thread, then unresolved.
    pub(super) fn emit_children(
        &mut self,
        children: Vec<Held>,
        gaps: Vec<Option<GapKind>>,
        overlapped: bool,
        ctx: &Ctx,
        span_id: SpanId,
        sink: &mut dyn SpanSink,
    ) {
        for (child, gap) in children.into_iter().zip(gaps) {
            if overlapped {
                self.stats.parents_unresolved_concurrent += 1;
                self.emit_call(child.call, &child.conn, None, Some(CONCURRENT), gap, sink);
            } else {
                self.stats.parents_linked_same_thread += 1;
                self.emit_call(child.call, &child.conn, Some(ctx.child_of(span_id)), None, gap, sink);
            }
        }
    }

    /// The calls a request's Contexts made (see [`super::pylink`]): its children, even
    /// when other requests overlapped on the thread.
    pub(super) fn emit_py_children(
        &mut self,
        children: Vec<(Held, Option<GapKind>)>,
        ctx: &Ctx,
        span_id: SpanId,
        sink: &mut dyn SpanSink,
    ) {
        for (child, gap) in children {
            self.emit_call(child.call, &child.conn, Some(ctx.child_of(span_id)), None, gap, sink);
        }
    }

    /// A call that completed after the request its thread was serving when it started:
    /// linked to that request now (or unresolved when requests overlapped then). Returns
    /// the call when the thread's history has no request for it.
    fn link_to_served(&mut self, key: (u32, u32), held: Held, sink: &mut dyn SpanSink) -> Option<Held> {
        let (ctx, inbound, hop) = match self.served.find(key, held.call.start_ns()) {
            None => return Some(held),
            Some(Match::Overlapped) => {
                self.stats.parents_unresolved_concurrent += 1;
                self.emit_call(held.call, &held.conn, None, Some(CONCURRENT), None, sink);
                return None;
            }
            Some(Match::One(s)) => (s.child.clone(), s.inbound, s.hop.clone()),
        };
        let children = [held];
        self.learn_from_children(key.0, &children, inbound.as_ref());
        let [held] = children;
        let gap = self.judge_child(&hop, &held, inbound.as_ref(), false);
        self.stats.parents_linked_same_thread += 1;
        self.stats.parents_linked_after_request += 1;
        self.emit_call(held.call, &held.conn, Some(ctx), None, gap, sink);
        None
    }

    /// Periodic housekeeping: held calls whose inbound request never completed are
    /// emitted on their own; old history goes.
    pub fn tick(&mut self, sink: &mut dyn SpanSink) {
        let timeout = self.cfg.hold_timeout;
        if !self.app_logs.is_idle() {
            self.app_logs_tick(crate::util::clock::monotonic_ns(), sink);
        }
        self.served.expire(timeout);
        self.stitch_tick(sink);
        let mut expired = Vec::new();
        for list in self.held.values_mut().chain(self.held_by_pid.values_mut()) {
            let (old, keep): (Vec<Held>, Vec<Held>) = list.drain(..).partition(|h| h.since.elapsed() > timeout);
            *list = keep;
            expired.extend(old);
        }
        self.held.retain(|_, l| !l.is_empty());
        self.held_by_pid.retain(|_, l| !l.is_empty());
        expired.extend(self.py_tick());
        for h in expired {
            self.stats.held_calls_expired += 1;
            if let Some(suppressed) = self.log_limit.allow(&format!("held_expired/{}", h.conn.pid)) {
                logging::log(
                    "info",
                    "an outbound call waited too long for the inbound request it was made from; exported as a root span",
                    json!({ "pid": h.conn.pid, "suppressed_since_last": suppressed }),
                );
            }
            self.emit_call(h.call, &h.conn, None, Some(NOT_COMPLETED), None, sink);
        }
    }

    /// Shutdown: every held call goes out on its own.
    pub fn flush(&mut self, sink: &mut dyn SpanSink) {
        self.stats.python_contexts = self.pyctx.stats;
        self.app_logs_flush(sink);
        let mut held: Vec<Held> = self.held.drain().flat_map(|(_, l)| l).collect();
        held.extend(self.held_by_pid.drain().flat_map(|(_, l)| l));
        held.extend(self.held_py.drain().flat_map(|(_, l)| l));
        for h in held {
            self.emit_call(h.call, &h.conn, None, Some(NOT_COMPLETED), None, sink);
        }
        self.stitch_flush(sink);
    }
}
