//! Propagation gaps: which hop lost the trace context, judged for every service
//! (instrumented or not) and recorded in the gap table (`/gaps`, alerts, `hoptrace check`).
//!
//! * an internal caller's request arrives without context: `missing_inbound_context`
//!   (not at entry zones/services, which start traces by design);
//! * an inbound request carries an invalid `traceparent`/`tracestate`: `invalid_context`;
//! * a call made while serving a traced request carries no context
//!   (`dropped_outbound_context`) or another trace's (`restarted_context`);
//! * a publish or a consumed message without context: `mq_message_without_context`.

use std::{net::SocketAddr, sync::Arc};

use serde_json::json;

use super::{context, finish::resource_str, pipeline::Inbound, Call, ConnView, Held, TracePipeline};
use crate::{
    capture::conntrack::Connection,
    gaps::{GapKeyRef, GapKind},
    model::span::{hex, KeyValue, Resource, SpanEvent, SpanId, SpanRecord, Str, TraceId},
    protocols::{http1::header_values, HttpExchange},
    traces::context::TraceParent,
    util::logging,
};

/// Peer tables hold at most this many sockets; full, they start over.
const MAX_PEERS: usize = 65536;

/// The served side of one hop: who, where, which route, and the span it belongs to.
///
/// Built for every inbound request, but gaps are rare: it holds only what the span needs
/// anyway (shared), and the caller's name and the ids as text are worked out when a gap
/// is actually recorded. Cloning copies pointers (kept in the served-request history).
#[derive(Clone)]
pub(super) struct Hop {
    /// The served process's Resource (`service.name`, `zone`).
    pub resource: Arc<Resource>,
    pub route: Str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl Hop {
    pub fn service(&self) -> &str {
        resource_str(&self.resource, "service.name")
    }

    pub fn zone(&self) -> &str {
        resource_str(&self.resource, "zone")
    }
}

/// The valid `traceparent` an outbound request carries, if any.
pub(super) fn outbound_context(x: &HttpExchange) -> Option<TraceParent> {
    header_values(&x.request.headers, "traceparent").next().and_then(|v| context::parse_traceparent(v).ok())
}

/// What is known about an outgoing span's (HTTP call, publish) link to the span that
/// encloses it, each when there is one: why it has none (`hoptrace.parent.unresolved`),
/// and the propagation gap it is part of.
pub(super) fn mark_parent_link(span: &mut SpanRecord, unresolved: Option<&'static str>, gap: Option<GapKind>) {
    if let Some(why) = unresolved {
        span.attributes.push(KeyValue::str("hoptrace.parent.unresolved", why));
    }
    if let Some(kind) = gap {
        mark_gap(span, kind);
    }
}

/// Names the gap on the span itself: an attribute and an event.
pub(super) fn mark_gap(span: &mut SpanRecord, kind: GapKind) {
    span.attributes.push(KeyValue::str("hoptrace.gap.kind", kind.as_str()));
    span.events.push(SpanEvent {
        name: "propagation_gap".into(),
        time_unix_ns: span.start_unix_ns,
        attributes: vec![KeyValue::str("hoptrace.gap.kind", kind.as_str())],
    });
}

impl TracePipeline {
    /// A connection's first traffic: remember which process owns which end of it, so the
    /// other end's hop can name its peer.
    pub(super) fn remember_peer(&mut self, conn: &Connection) {
        let peers =
            if conn.role == hoptrace_common::Role::Client { &mut self.client_peers } else { &mut self.server_peers };
        if peers.len() >= MAX_PEERS {
            peers.clear();
        }
        peers.insert((conn.tuple.local, conn.tuple.remote), (conn.pid, conn.comm.clone()));
    }

    /// The service at the other end of a hop: a process on this node when it was seen,
    /// else the address — for a caller its IP only: its port is ephemeral, and with it
    /// every call from another node would be a new `/gaps` row (the callee's port is the
    /// service's, and stays).
    fn peer_name(&mut self, seen: Option<(u32, Str)>, addr: SocketAddr, with_port: bool) -> String {
        match seen {
            Some((pid, comm)) => self.service_zone(pid, &comm).0,
            None if with_port => addr.to_string(),
            None => super::http::ip_string(addr.ip()),
        }
    }

    /// Who answered a call made on the connection `view`.
    pub(super) fn callee_name(&mut self, view: &ConnView) -> String {
        let seen = self.server_peers.get(&(view.remote, view.local)).cloned();
        self.peer_name(seen, view.remote, true)
    }

    /// The served side of the hop of an inbound request on `view`.
    pub(super) fn hop(&mut self, view: &ConnView, target: &[u8], (trace_id, span_id): (TraceId, SpanId)) -> Hop {
        let resource = self.resource_for(view.pid, &view.comm);
        let route = self.route(resource_str(&resource, "service.name"), target);
        Hop { resource, route, local: view.local, remote: view.remote, trace_id, span_id }
    }

    /// The caller of a hop as a service name (a process on this node) or an address, and
    /// whether it is on this node or in an internal network.
    fn caller(&mut self, hop: &Hop) -> (String, bool) {
        let internal = self.is_internal(hop);
        let seen = self.client_peers.get(&(hop.remote, hop.local)).cloned();
        (self.peer_name(seen, hop.remote, false), internal)
    }

    /// The caller is a process on this node or in an internal network.
    pub(super) fn is_internal(&self, hop: &Hop) -> bool {
        self.client_peers.contains_key(&(hop.remote, hop.local))
            || self.cfg.gaps.internal_networks.iter().any(|n| n.contains(&hop.remote.ip()))
    }

    /// The inbound side of a hop: invalid context, or none from an internal caller.
    pub(super) fn judge_inbound(&mut self, hop: &Hop, inbound: &Inbound) -> Option<GapKind> {
        if inbound.invalid.is_none() && inbound.parent.is_some() {
            return None;
        }
        let (caller, internal) = self.caller(hop);
        let g = &self.cfg.gaps;
        let kind = match inbound.invalid {
            Some(_) => GapKind::InvalidContext,
            None if internal
                && !g.entry_services.iter().any(|s| s == hop.service())
                && !g.entry_zones.iter().any(|z| z == hop.zone())
                && !g.ignore_services.contains(&caller) =>
            {
                GapKind::MissingInboundContext
            }
            None => return None,
        };
        let detail = inbound.invalid.unwrap_or("");
        self.record_hop_gap(kind, hop, &caller, &hop.route, detail);
        Some(kind)
    }

    /// The outbound side of a hop: a call made while serving a request. Overlapping
    /// requests on the thread: which one the call served is unknown, so its hop is not
    /// judged against this one's context either.
    pub(super) fn judge_child(
        &mut self,
        hop: &Hop,
        child: &Held,
        inbound: Option<&TraceParent>,
        overlapped: bool,
    ) -> Option<GapKind> {
        if overlapped {
            return None;
        }
        let (kind, name) = match &child.call {
            Call::Mq(op) => (self.publish_gap(op, inbound.is_some())?, self.mq_span_name(op).0),
            Call::Http(cx) => {
                let i = inbound?;
                let kind = match outbound_context(cx) {
                    None => GapKind::DroppedOutboundContext,
                    Some(o) if o.trace_id != i.trace_id => GapKind::RestartedContext,
                    Some(_) => return None,
                };
                (kind, self.route(hop.service(), cx.request.target()).to_string())
            }
            Call::Failed { .. } => return None,
        };
        let callee = self.callee_name(&child.conn);
        self.record_hop_gap(kind, hop, &callee, &name, "");
        Some(kind)
    }

    fn record_hop_gap(&mut self, kind: GapKind, hop: &Hop, peer: &str, route: &str, detail: &str) {
        let key = GapKeyRef { kind, service: hop.service(), zone: hop.zone(), peer_service: peer, route };
        self.record_gap_at(key, detail, &|| (hex(&hop.trace_id), hex(&hop.span_id)));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_gap(
        &mut self,
        kind: GapKind,
        service: &str,
        zone: &str,
        peer: &str,
        route: &str,
        trace_id: &str,
        span_id: &str,
        detail: &str,
    ) {
        let key = GapKeyRef { kind, service, zone, peer_service: peer, route };
        self.record_gap_at(key, detail, &|| (trace_id.to_string(), span_id.to_string()));
    }

    /// Counts a broken hop in the table and logs it (rate-limited). Called for every
    /// request on a broken hop, so a hop already in the table costs a lookup: no string
    /// is built unless the hop is new or its log line is due (`ids`: the trace and span
    /// ids as hex, only worked out then).
    fn record_gap_at(&mut self, key: GapKeyRef<'_>, detail: &str, ids: &dyn Fn() -> (String, String)) {
        let GapKeyRef { kind, service, zone, peer_service: peer, route } = key;
        if self.cfg.gaps.ignore_routes.iter().any(|r| r == route)
            || self.cfg.gaps.ignore_services.iter().any(|s| s == service || s == peer)
        {
            return;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        self.stats.propagation_gaps += 1;
        let first = self.gaps.lock().map(|mut t| t.record_ref(&key, now, detail, || ids().0)).unwrap_or(false);
        self.gap_was_first = first;
        let Some(suppressed) = self.log_limit.allow_parts(("gap", key)) else { return };
        let (trace_id, span_id) = ids();
        logging::log(
            "warn",
            "trace context lost on a hop",
            json!({
                "kind": kind.as_str(),
                "service": service,
                "zone": zone,
                "peer_service": peer,
                "route": route,
                "detail": detail,
                "trace_id": trace_id,
                "span_id": span_id,
                "first_of_its_kind": first,
                "suppressed_since_last": suppressed,
            }),
        );
    }
}
