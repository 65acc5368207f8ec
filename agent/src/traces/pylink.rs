//! Parent linking by Python Context ([`super::pycontext`]): a call whose first write ran
//! in a Context owned by a request is that request's child, whatever thread made it and
//! however many requests the thread multiplexes. Calls of other processes, and calls
//! whose Context belongs to no request, go through thread linking ([`super::linking`]).

use std::time::Instant;

use super::{pycontext::Owner, Call, ConnView, Ctx, Held, SpanSink, TracePipeline};
use crate::{
    capture::{conntrack::Connection, events::PyContext},
    gaps::GapKind,
    protocols::HttpExchange,
    traces::{context::TraceParent, judge::Hop},
};

/// A request a Context was claimed for, answered: what its later calls continue.
pub(super) struct ServedByContext {
    pub child: Ctx,
    pub inbound: Option<TraceParent>,
    pub hop: Hop,
    pub at: Instant,
}

/// Why a call of an async Python service is exported without a parent.
const UNOWNED: &str = "python_context_unowned";

/// What the Python Context says about a call.
pub(super) enum ByContext {
    /// Made in a Context owned by this request.
    Owned(Owner),
    /// Made by an async Python service, in a Context no request owns.
    Unowned,
    /// Not an async Python service: thread linking applies.
    NotTracked,
}

/// Answered requests remembered for calls that complete later (bounded; aged out with
/// the hold timeout).
const MAX_SERVED: usize = 16384;

impl TracePipeline {
    /// What a thread of a selected Python process ran in.
    pub fn on_py_context(&mut self, ev: &PyContext) {
        match *ev {
            PyContext::Copied { pid, tid, ts_ns, context, parent } => {
                self.pyctx.on_copied(pid, tid, ts_ns, context, parent)
            }
            PyContext::Write { pid, tid, ts_enter_ns, conn_id, context } => {
                self.pyctx.on_write(pid, tid, conn_id, ts_enter_ns, context)
            }
        }
    }

    /// A process exited: its Contexts mean nothing any more.
    pub fn forget_python(&mut self, pid: u32) {
        self.pyctx.forget_pid(pid);
    }

    /// What the Context mapping did so far.
    pub fn python_stats(&self) -> super::pycontext::PyContextStats {
        self.pyctx.stats
    }

    /// The request a client call was made for, by the Context of its first write.
    pub(super) fn py_owner(&self, conn: &Connection, start_ns: u64) -> ByContext {
        if !self.pyctx.tracks(conn.pid) {
            return ByContext::NotTracked;
        }
        match self.pyctx.call_owner(conn.id, start_ns) {
            Some(o) => ByContext::Owned(o),
            None if self.pyctx.links_by_context(conn.pid) => ByContext::Unowned,
            None => ByContext::NotTracked,
        }
    }

    /// A call of an async Python service whose Context belongs to no request (or was not
    /// seen): unresolved. Its thread says nothing: an event loop serves every request.
    pub(super) fn py_unowned(&mut self, view: ConnView, call: Call, sink: &mut dyn SpanSink) {
        self.stats.parents_unresolved_context += 1;
        self.emit_call(call, &view, None, Some(UNOWNED), None, sink);
    }

    /// A call owned by a request: linked now when the request was answered, else held
    /// until it is.
    pub(super) fn py_call(&mut self, owner: Owner, view: ConnView, call: Call, sink: &mut dyn SpanSink) {
        let held = Held { call, conn: view, since: Instant::now() };
        let Some(s) = self.served_py.get(&owner.claim) else {
            self.held_py.entry(owner.claim).or_default().push(held);
            return;
        };
        let (ctx, inbound, hop) = (s.child.clone(), s.inbound, s.hop.clone());
        let children = [held];
        self.learn_from_children(children[0].conn.pid, &children, inbound.as_ref());
        let [held] = children;
        let gap = self.judge_child(&hop, &held, inbound.as_ref(), false);
        self.stats.parents_linked_context += 1;
        self.stats.parents_linked_after_request += 1;
        self.emit_call(held.call, &held.conn, Some(ctx), None, gap, sink);
    }

    /// The calls held for request `seq` of `conn` (a server exchange that completes now),
    /// and its claim.
    pub(super) fn py_children(&mut self, conn: &Connection, seq: u32) -> (Option<u64>, Vec<Held>) {
        if !self.pyctx.tracks(conn.pid) {
            return (None, Vec::new());
        }
        let Some(owner) = self.pyctx.claim_of((conn.id, seq)) else { return (None, Vec::new()) };
        let children = self.held_py.remove(&owner.claim).unwrap_or_default();
        self.stats.parents_linked_context += children.len() as u64;
        (Some(owner.claim), children)
    }

    /// The calls held for a request, with their hops judged, ready to be emitted as its
    /// children (what they say about the process is learnt before: `server_exchange`).
    pub(super) fn judge_py(
        &mut self,
        children: Vec<Held>,
        hop: &Hop,
        inbound: Option<&TraceParent>,
    ) -> Vec<(Held, Option<GapKind>)> {
        if children.is_empty() {
            return Vec::new();
        }
        let gaps: Vec<_> = children.iter().map(|c| self.judge_child(hop, c, inbound, false)).collect();
        children.into_iter().zip(gaps).collect()
    }

    /// A request of a Python process was answered: later calls of its Contexts link to
    /// `served`; a request pipelined behind it gets its Context next.
    pub(super) fn py_answered(
        &mut self,
        conn: &Connection,
        seq: u32,
        x: &HttpExchange,
        claim: Option<u64>,
        (child, inbound, hop): (&Ctx, Option<TraceParent>, &Hop),
    ) {
        if !self.pyctx.tracks(conn.pid) {
            return;
        }
        if let Some(r) = &x.response {
            self.pyctx.on_answered(conn.pid, r.timing.first_tid, conn.id, seq, r.timing.last_exit_ns);
        }
        let Some(claim) = claim else { return };
        if self.served_py.len() >= MAX_SERVED {
            let timeout = self.cfg.hold_timeout;
            self.served_py.retain(|_, s| s.at.elapsed() <= timeout);
            if self.served_py.len() >= MAX_SERVED {
                self.served_py.clear();
            }
        }
        let served = ServedByContext { child: child.clone(), inbound, hop: hop.clone(), at: Instant::now() };
        self.served_py.insert(claim, served);
    }

    /// Once a second: held calls of requests never answered go out unresolved (with
    /// the other held calls, see `tick`); old answers and owners go.
    pub(super) fn py_tick(&mut self) -> Vec<Held> {
        self.pyctx.tick();
        self.stats.python_contexts = self.pyctx.stats;
        let timeout = self.cfg.hold_timeout;
        self.served_py.retain(|_, s| s.at.elapsed() <= timeout);
        let mut expired = Vec::new();
        for list in self.held_py.values_mut() {
            let (old, keep): (Vec<Held>, Vec<Held>) = list.drain(..).partition(|h| h.since.elapsed() > timeout);
            *list = keep;
            expired.extend(old);
        }
        self.held_py.retain(|_, l| !l.is_empty());
        expired
    }
}
