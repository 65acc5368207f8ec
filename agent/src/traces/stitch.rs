//! Same-node stitching: an uninstrumented service on this node calls another one on this
//! node without forwarding `traceparent`. The agent saw both ends of that connection, so
//! the callee's SERVER span becomes the child of the caller's CLIENT span, in the
//! caller's trace, marked `hoptrace.context.stitched=true`. The hop is still reported as a
//! `missing_inbound_context` gap (judged before any of this), so alerts keep pointing at
//! the service that drops the context.
//!
//! Pairing: the client socket's (local, remote) is the server socket's (remote, local);
//! on that connection the n-th exchange the client completed is the n-th the server
//! answered (HTTP/1 answers in order), and the kernel timestamps must agree (the client
//! wrote before the server read; the server wrote its response before the client finished
//! reading it). Never stitched: a request that carried any `traceparent`, an exchange
//! that was pipelined (another request in flight on the connection: counted as
//! ambiguous), timestamps that disagree (counted), two different connections.
//!
//! Ordering: either end may finish first. The server usually does (it writes the response
//! before the client reads it, and the client's call waits for its own inbound request
//! to finish), so its spans — the SERVER span and everything in its new trace — are held
//! here until the client span comes, then rewritten into the client's trace. A client
//! span that comes first leaves an *offer* the server span takes at once. Both are
//! bounded in number and in time (`traces.hold_timeout_ms`); held spans that outlive it
//! go out unstitched, counted.

use std::{net::SocketAddr, time::Instant};

use hashbrown::HashMap;

use super::{logs::access::AccessExtra, Ctx, SpanSink, TracePipeline};
use crate::{
    model::span::{KeyValue, SpanId, SpanRecord, TraceId},
    protocols::HttpExchange,
};

/// A held span and its access record's extra (SERVER spans with access records on).
type Held = (SpanRecord, Option<AccessExtra>);

/// Offers (client spans waiting for their server span) kept at most.
const MAX_OFFERS: usize = 4096;
/// Server spans' traces held at most.
const MAX_PENDING: usize = 1024;
/// Spans held per trace (the SERVER span and the calls it made); more go out unstitched.
const MAX_SPANS_PER_PENDING: usize = 64;
/// Same-node hops without context followed in a row (a → b → c …).
const MAX_CHAIN: usize = 16;
/// Rewritten traces remembered (for calls linked to a stitched request after it ended).
const MAX_REMAPS: usize = 4096;

/// One exchange on one connection, from the client's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct StitchKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The exchange's order on the connection (0 = first seen).
    pub seq: u32,
}

/// A client span waiting for its server span.
struct Offer {
    /// The context the server span continues (a child of the CLIENT span).
    ctx: Ctx,
    /// When the client wrote the request, and finished reading the response (kernel).
    req_start: u64,
    resp_end: u64,
    since: Instant,
}

/// A server span's trace, held until its client span comes.
struct Pending {
    key: StitchKey,
    server_span: SpanId,
    /// When the server read the request, and started writing the response (kernel).
    req_read: u64,
    resp_write: u64,
    /// With the access record's extra of SERVER spans, made when the span is released.
    spans: Vec<(SpanRecord, Option<AccessExtra>)>,
    since: Instant,
    /// Its trace is the example id of a `/gaps` row: renamed when stitched.
    gap_example: bool,
}

/// The context a stitched trace's spans are moved into.
struct Remap {
    ctx: Ctx,
    since: Instant,
}

/// What stitching did, for `/metrics` (`hoptrace_stitch_total{outcome}`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StitchStats {
    /// Server spans put under the client span of the same exchange.
    pub stitched: u64,
    /// Pipelined exchanges: pairing by order not trusted, not stitched.
    pub ambiguous: u64,
    /// Same connection and order, but the timestamps disagree: not stitched.
    pub mismatched: u64,
    /// Held server spans whose client span never came in time: exported unstitched.
    pub expired: u64,
    /// Client offers no server span claimed in time (the server end was not HTTP, or
    /// suppressed as self-instrumented).
    pub offers_expired: u64,
    /// Tables full (or too many spans in one held trace): not stitched.
    pub overflow: u64,
}

/// Offers, held traces and rewrites. Empty (one length check per span) while no
/// same-node call without context is in flight.
#[derive(Default)]
pub(super) struct Stitcher {
    offers: HashMap<StitchKey, Offer>,
    pending: HashMap<TraceId, Pending>,
    by_key: HashMap<StitchKey, TraceId>,
    remaps: HashMap<TraceId, Remap>,
    pub stats: StitchStats,
}

/// Whether the two ends' kernel timestamps tell the same story.
fn consistent(offer_req_start: u64, offer_resp_end: u64, req_read: u64, resp_write: u64) -> bool {
    offer_req_start <= req_read && resp_write <= offer_resp_end
}

/// Kernel times of the server side: request read, response write start.
fn server_times(x: &HttpExchange) -> (u64, u64) {
    (x.request.timing.first_exit_ns, x.response.as_ref().map_or(0, |r| r.timing.first_enter_ns))
}

/// Kernel times of the client side: request write, response read end.
fn client_times(x: &HttpExchange) -> (u64, u64) {
    (x.request.timing.first_enter_ns, x.response.as_ref().map_or(u64::MAX, |r| r.timing.last_exit_ns))
}

impl Stitcher {
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.remaps.is_empty()
    }

    /// A span about to be finished: held when its trace waits for a client span,
    /// moved into the client's trace when it was stitched already, else returned.
    ///
    /// Stitches chain (a → b → c on one node, none forwarding context): the trace a span
    /// moves into may itself be held or moved, so this follows up to [`MAX_CHAIN`] steps.
    fn intercept(&mut self, mut span: SpanRecord, access: Option<AccessExtra>) -> Option<Held> {
        for _ in 0..MAX_CHAIN {
            if let Some(p) = self.pending.get_mut(&span.trace_id) {
                if p.spans.len() < MAX_SPANS_PER_PENDING {
                    p.spans.push((span, access));
                    return None;
                }
                self.stats.overflow += 1;
                return Some((span, access));
            }
            let Some(r) = self.remaps.get(&span.trace_id) else { return Some((span, access)) };
            span.trace_id = r.ctx.trace_id;
            span.flags = r.ctx.flags;
            span.trace_state.clone_from(&r.ctx.trace_state);
            span.origin = r.ctx.origin;
        }
        Some((span, access))
    }

    fn remember_remap(&mut self, from: TraceId, ctx: Ctx) {
        if self.remaps.len() >= MAX_REMAPS {
            self.remaps.clear();
        }
        self.remaps.insert(from, Remap { ctx, since: Instant::now() });
    }

    /// Takes the held trace of `key`, if any.
    fn take_pending(&mut self, key: &StitchKey) -> Option<(TraceId, Pending)> {
        let trace = self.by_key.remove(key)?;
        self.pending.remove(&trace).map(|p| (trace, p))
    }

    /// Everything older than `ttl`: offers and rewrites go, held traces are returned.
    fn expire(&mut self, ttl: std::time::Duration) -> Vec<Pending> {
        let before = self.offers.len();
        self.offers.retain(|_, o| o.since.elapsed() <= ttl);
        self.stats.offers_expired += (before - self.offers.len()) as u64;
        self.remaps.retain(|_, r| r.since.elapsed() <= ttl);
        let old: Vec<TraceId> = self.pending.iter().filter(|(_, p)| p.since.elapsed() > ttl).map(|(t, _)| *t).collect();
        let mut out = Vec::with_capacity(old.len());
        for t in old {
            if let Some(p) = self.pending.remove(&t) {
                self.by_key.remove(&p.key);
                out.push(p);
            }
        }
        self.stats.expired += out.len() as u64;
        out
    }
}

/// What the server side of an exchange does about stitching.
pub(super) enum ServerStitch {
    /// Continue this context (the client span came first).
    Linked(Ctx),
    /// Hold the trace until the client span comes.
    Hold(StitchKey),
    /// Nothing (not a same-node hop, context present, ambiguous, inconsistent).
    No,
}

impl TracePipeline {
    /// The server end of a same-node exchange that arrived without any trace context:
    /// take the client's offer, or say the trace must wait for it.
    pub(super) fn stitch_server(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        seq: u32,
        x: &HttpExchange,
    ) -> ServerStitch {
        if !self.cfg.stitch || !self.client_peers.contains_key(&(remote, local)) {
            return ServerStitch::No;
        }
        let key = StitchKey { client: remote, server: local, seq };
        let offer = self.stitch.offers.remove(&key);
        if x.pipelined {
            self.stitch.stats.ambiguous += 1;
            return ServerStitch::No;
        }
        let (req_read, resp_write) = server_times(x);
        match offer {
            Some(o) if consistent(o.req_start, o.resp_end, req_read, resp_write) => {
                self.stitch.stats.stitched += 1;
                ServerStitch::Linked(o.ctx)
            }
            Some(_) => {
                self.stitch.stats.mismatched += 1;
                ServerStitch::No
            }
            None if self.stitch.pending.len() >= MAX_PENDING => {
                self.stitch.stats.overflow += 1;
                ServerStitch::No
            }
            None => ServerStitch::Hold(key),
        }
    }

    /// Starts holding the trace `trace_id` of SERVER span `span_id` for `key`.
    pub(super) fn stitch_hold(&mut self, key: StitchKey, trace_id: TraceId, span_id: SpanId, x: &HttpExchange) {
        let (req_read, resp_write) = server_times(x);
        let p = Pending {
            key,
            server_span: span_id,
            req_read,
            resp_write,
            spans: Vec::new(),
            since: Instant::now(),
            gap_example: false,
        };
        if let Some(old) = self.stitch.by_key.insert(key, trace_id) {
            // The same exchange twice cannot happen on one connection; a reused 4-tuple
            // whose first trace is still held: that one goes unstitched at expiry.
            self.stitch.pending.remove(&old);
        }
        self.stitch.pending.insert(trace_id, p);
    }

    /// The client end of a same-node exchange that sent no trace context: release the
    /// server's held trace into the CLIENT span's trace, or leave an offer for it.
    pub(super) fn stitch_client(
        &mut self,
        key: StitchKey,
        x: &HttpExchange,
        client: &SpanRecord,
        sink: &mut dyn SpanSink,
    ) {
        let ctx = Ctx {
            trace_id: client.trace_id,
            parent: client.span_id,
            flags: client.flags,
            trace_state: client.trace_state.clone(),
            origin: client.origin,
        };
        let (req_start, resp_end) = client_times(x);
        let Some((trace, pending)) = self.stitch.take_pending(&key) else {
            if x.pipelined {
                // The server end will see it pipelined too, or mismatch: no offer.
                return;
            }
            if self.stitch.offers.len() >= MAX_OFFERS {
                self.stitch.stats.overflow += 1;
                return;
            }
            self.stitch.offers.insert(key, Offer { ctx, req_start, resp_end, since: Instant::now() });
            return;
        };
        let ok = !x.pipelined && consistent(req_start, resp_end, pending.req_read, pending.resp_write);
        if !ok {
            *(if x.pipelined { &mut self.stitch.stats.ambiguous } else { &mut self.stitch.stats.mismatched }) += 1;
            return self.release(pending.spans, sink);
        }
        self.stitch.stats.stitched += 1;
        if pending.gap_example {
            if let Ok(mut g) = self.gaps.lock() {
                g.retrace(&crate::model::span::hex(&trace), &crate::model::span::hex(&ctx.trace_id));
            }
        }
        let mut spans = pending.spans;
        for (s, _) in spans.iter_mut().filter(|(s, _)| s.span_id == pending.server_span) {
            s.parent_span_id = ctx.parent;
            s.attributes.push(KeyValue::bool("hoptrace.context.stitched", true));
        }
        self.stitch.remember_remap(trace, ctx);
        self.release(spans, sink);
    }

    /// Finishes spans that were held (rewritten on the way when their trace was stitched).
    fn release(&mut self, spans: Vec<Held>, sink: &mut dyn SpanSink) {
        for (s, access) in spans {
            self.submit_with_access(s, access, sink);
        }
    }

    /// The held trace `trace_id` is the example of a `/gaps` row.
    pub(super) fn stitch_example_gap(&mut self, trace_id: TraceId) {
        if let Some(p) = self.stitch.pending.get_mut(&trace_id) {
            p.gap_example = true;
        }
    }

    /// First step of [`TracePipeline::submit`]: `None` when the span is held.
    pub(super) fn stitch_intercept(&mut self, span: SpanRecord, access: Option<AccessExtra>) -> Option<Held> {
        if self.stitch.idle() {
            return Some((span, access));
        }
        self.stitch.intercept(span, access)
    }

    /// Periodic: held traces whose client span never came go out as they are.
    pub(super) fn stitch_tick(&mut self, sink: &mut dyn SpanSink) {
        let ttl = self.cfg.hold_timeout;
        for p in self.stitch.expire(ttl) {
            self.release(p.spans, sink);
        }
    }

    /// Shutdown: everything held goes out.
    pub(super) fn stitch_flush(&mut self, sink: &mut dyn SpanSink) {
        self.stitch.by_key.clear();
        let held: Vec<Pending> = self.stitch.pending.drain().map(|(_, p)| p).collect();
        for p in held {
            self.release(p.spans, sink);
        }
    }
}

#[cfg(test)]
mod tests;
