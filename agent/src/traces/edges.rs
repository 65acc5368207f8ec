//! Service-graph edges of finished HTTP spans (see [`super::red::graph`] for the metrics
//! and their semantics): who called whom, named from what this node knows.

use std::sync::Arc;

use super::{finish::resource_str, ConnView, TracePipeline};
use crate::{
    model::span::{Resource, SpanRecord, StatusCode, Str},
    traces::red::graph::{Observation, Side},
};

/// Remote addresses named as text at most; full, the cache starts over.
const MAX_ADDR_NAMES: usize = 4096;

/// Tempo's name for the caller of an entry span (the agent cannot name an outside caller
/// without growing a series per client address).
const USER: &str = "user";
const VIRTUAL: &str = "virtual_node";

fn seconds(span: &SpanRecord) -> f64 {
    span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9
}

impl TracePipeline {
    /// The Resource of the process at the other end of `key` in `table`, when it is on
    /// this node.
    fn peer_resource(
        &mut self,
        client_side: bool,
        key: &(std::net::SocketAddr, std::net::SocketAddr),
    ) -> Option<(u32, Arc<Resource>)> {
        let table = if client_side { &self.client_peers } else { &self.server_peers };
        let (pid, comm) = table.get(key).cloned()?;
        Some((pid, self.resource_for(pid, &comm)))
    }

    /// A SERVER span: the edge from its caller. The request counts here.
    pub(super) fn server_edge(&mut self, view: &ConnView, span: &SpanRecord) {
        let caller = self.peer_resource(true, &(view.remote, view.local));
        let ip_text;
        let (client, client_zone, connection_type) = match &caller {
            Some((_, r)) => (resource_str(r, "service.name"), resource_str(r, "zone"), ""),
            None if self.cfg.gaps.internal_networks.iter().any(|n| n.contains(&view.remote.ip())) => {
                ip_text = view.addrs(&mut self.ip_names).remote_ip;
                (ip_text.as_str(), "", VIRTUAL)
            }
            None => (USER, "", VIRTUAL),
        };
        let r = &span.resource;
        let labels = [client, resource_str(r, "service.name"), connection_type, client_zone, resource_str(r, "zone")];
        let failed = span.status.code == StatusCode::Error;
        self.red.record_edge(&Observation { side: Side::Server, labels, seconds: seconds(span), failed, counts: true });
    }

    /// A CLIENT span: the edge to its server. The request counts here only when the
    /// server is not on this node (else its SERVER span counts it).
    pub(super) fn client_edge(&mut self, view: &ConnView, span: &SpanRecord) {
        let callee = self.peer_resource(false, &(view.remote, view.local));
        // A server of this node that instruments itself gets no SERVER span from the agent
        // (its SDK reports it): the request counts here then.
        let counts = match &callee {
            None => true,
            Some((pid, _)) => self.cfg.suppress_instrumented && self.is_instrumented(*pid),
        };
        let port = view.remote.port();
        // Named by a `services` rule for its port, else by its address.
        let ruled = self.resources.service_for_port(port).is_some();
        let addr_text = if callee.is_none() && !ruled { self.addr_name(view.remote) } else { Str::Static("") };
        let (server, server_zone, connection_type) = match &callee {
            Some((_, r)) => (resource_str(r, "service.name"), resource_str(r, "zone"), ""),
            None => (self.resources.service_for_port(port).unwrap_or(addr_text.as_str()), "", VIRTUAL),
        };
        let r = &span.resource;
        let labels = [resource_str(r, "service.name"), server, connection_type, resource_str(r, "zone"), server_zone];
        let failed = span.status.code == StatusCode::Error;
        self.red.record_edge(&Observation { side: Side::Client, labels, seconds: seconds(span), failed, counts });
    }

    fn addr_name(&mut self, addr: std::net::SocketAddr) -> Str {
        if self.addr_names.len() >= MAX_ADDR_NAMES && !self.addr_names.contains_key(&addr) {
            self.addr_names.clear();
        }
        self.addr_names.entry(addr).or_insert_with(|| Str::from(addr.to_string())).clone()
    }
}
