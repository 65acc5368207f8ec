//! From connection streams to spans, metrics and gaps.
//!
//! Each connection gets a protocol parser (detected from its first bytes). Completed HTTP
//! exchanges and message-queue operations become spans:
//!
//! * inbound request (server side of the connection) → SERVER span, joined to the
//!   incoming `traceparent` when it is valid, else a new trace;
//! * outbound request (client side) → CLIENT span; publish/receive → PRODUCER/CONSUMER.
//!
//! The files follow the steps a request takes:
//!
//! * [`pipeline`] — the orchestrator: streams in, parser events out, one short function
//!   per kind of event;
//! * [`linking`] — **thread-per-request parent linking**: a call made on a thread that was,
//!   when the call started, serving an inbound request is that request's child (calls that
//!   complete after their request did are found through [`served`], the threads' recent
//!   requests); when several inbound requests overlap on one thread (an async runtime),
//!   the agent does not guess and says so in `hoptrace.parent.unresolved`;
//! * [`pycontext`], [`pylink`] — **linking by Python Context**: in async Python services
//!   (asyncio, FastAPI on uvicorn) the `contextvars.Context` a call's thread ran in says
//!   which request it serves, on the event loop and on thread-pool threads alike;
//! * [`instrumented`] — services that instrument themselves (an OpenTelemetry SDK, seen in
//!   the environment or seen creating trace context) get no duplicate spans;
//! * [`judge`] — propagation gaps: which hop lost the context, recorded for `/gaps`;
//! * [`routes`] — templated, bounded routes;
//! * [`finish`] — every span's last steps: redact → sample → RED metrics → sink;
//! * [`http`], [`messaging`] — span building per protocol family; [`context`] — W3C
//!   `traceparent`/`tracestate`/`baggage` parsing; [`red`] — RED metric aggregation;
//!   [`consumer`] — the pipeline as a capture consumer;
//! * [`jobs`] — batch jobs (a root span per run, from exec to exit) and processes started
//!   with trace context in their environment: the parent of their calls.

pub mod config;
pub mod consumer;
pub mod context;
pub mod coverage;
mod edges;
mod finish;
pub mod http;
pub(crate) mod ids;
mod instrumented;
pub mod jobs;
mod judge;
mod linking;
pub mod logs;
pub mod messaging;
mod pipeline;
pub mod pycontext;
mod pylink;
pub mod red;
mod routes;
mod served;
mod sidedoors;
pub mod stats;
mod stitch;

// hashbrown's default hasher (foldhash): several times cheaper per lookup than std's
// SipHash, still seeded per process, so crafted keys (routes, tenants) cannot aim at it.
use hashbrown::HashMap;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

pub use self::{
    config::{GapConfig, TraceConfig},
    routes::ROUTE_OVERFLOW,
    stats::TraceStats,
    stitch::StitchStats,
};
use self::{context::TraceParent, ids::IdGenerator, instrumented::Instrumented, linking::Busy};
use crate::{
    capture::conntrack::Connection,
    gaps::GapTable,
    model::span::{SpanId, SpanRecord, Str, TraceId, TraceOrigin},
    policy::{redact::Redactor, sampling::Sampler},
    protocols::{HttpExchange, MqOperation, Protocol},
    resource::{process::ProcessCache, resolver::ResourceResolver},
    util::{clock::Clock, logging::RateLimiter},
};

/// Where finished spans go (the exporter's queue, or a test's Vec).
pub trait SpanSink {
    fn submit(&mut self, span: SpanRecord);
    /// Where log records go, when they are exported at all (access records and app lines
    /// are only built then).
    fn logs(&mut self) -> Option<&mut dyn logs::LogSink> {
        None
    }
}

impl SpanSink for Vec<SpanRecord> {
    fn submit(&mut self, span: SpanRecord) {
        self.push(span);
    }
}

/// The trace pipeline: one per agent, fed by the capture loop's thread.
pub struct TracePipeline {
    cfg: TraceConfig,
    clock: Clock,
    ids: IdGenerator,
    /// Per-connection protocol state.
    conns: HashMap<u64, ConnL7>,
    /// Threads serving inbound requests, by (pid, tid).
    busy: HashMap<(u32, u32), Busy>,
    /// Requests threads finished serving: calls that complete later are linked by start.
    served: served::ServedHistory,
    /// Calls waiting for the inbound request their thread serves, by (pid, tid).
    held: HashMap<(u32, u32), Vec<Held>>,
    /// Calls with their own `traceparent` made while the process served requests on other
    /// threads (async runtimes, thread pools): held until those requests complete to learn
    /// whether the process passed the inbound context through or created its own.
    held_by_pid: HashMap<u32, Vec<Held>>,
    /// Python Contexts → the requests they belong to (see [`pycontext`]).
    pyctx: pycontext::PyContexts,
    /// Calls owned by a request not answered yet, by its claim.
    held_py: HashMap<u64, Vec<Held>>,
    /// Answered requests whose Contexts' calls may still complete, by claim.
    served_py: HashMap<u64, pylink::ServedByContext>,
    /// Processes that instrument themselves, with the start time of the process the
    /// verdict is about: pids are reused, and a new process must not inherit it (its spans
    /// would be suppressed). Bounded like the peer tables.
    instrumented: HashMap<u32, (Instrumented, u64)>,
    processes: ProcessCache,
    resources: ResourceResolver,
    /// Set while handling the events a connection close produced.
    close_ns: Option<u64>,
    log_limit: RateLimiter,
    sampler: Sampler,
    redactor: Redactor,
    /// Distinct routes in use per service (bounded by `max_routes_per_service`; idle
    /// ones give way, see `routes`).
    routes: HashMap<String, routes::RouteSet>,
    /// Request path (query and fragment cut off) → its template. Templating runs every
    /// PII detector over every segment; services repeat their paths, so the answer is
    /// remembered. Bounded: emptied when full. Raw paths stay in this process's memory
    /// only, like the request bytes they come from.
    route_cache: HashMap<Box<[u8]>, Str>,
    /// HTTP span names by (method, route), bounded like `route_cache`.
    span_names: HashMap<(Str, Str), Str>,
    /// Addresses as text (span attributes), bounded like `route_cache`.
    ip_names: HashMap<std::net::IpAddr, Str>,
    /// Side-door verdicts of repeated `Host`/`User-Agent` values (see `sidedoors`).
    scrub_cache: sidedoors::ScrubCache,
    /// Parser events of one `on_segments` call, kept to reuse the allocation.
    events_scratch: Vec<crate::protocols::L7Event>,
    /// Client sockets on this node by (local, remote): who the peer of a server socket is.
    client_peers: HashMap<(SocketAddr, SocketAddr), (u32, Str)>,
    /// Server sockets on this node by (local, remote): who answered a client call. Kept
    /// after close (the hop is judged when the caller's request completes), bounded.
    server_peers: HashMap<(SocketAddr, SocketAddr), (u32, Str)>,
    /// Remote addresses as `ip:port` text (service-graph virtual nodes), bounded.
    addr_names: HashMap<SocketAddr, Str>,
    /// Same-node stitching: offers, held traces, rewrites (see [`stitch`]).
    stitch: stitch::Stitcher,
    /// The last gap recorded was the first of its hop (its trace is the `/gaps` example).
    gap_was_first: bool,
    /// Broken hops, shared with the HTTP endpoint and `hoptrace check`.
    pub gaps: Arc<Mutex<GapTable>>,
    pub stats: TraceStats,
    /// RED metrics of every finished span, sampled or not (see [`red`]).
    pub red: red::RedRecorder,
    /// Batch jobs and processes started with trace context (see [`jobs`]).
    jobs: jobs::Jobs,
    /// Access records and app log lines (see [`logs`]).
    pub app_logs: logs::app::AppLogs,
}

impl TracePipeline {
    /// What same-node stitching did (`hoptrace_stitch_total{outcome}`).
    pub fn stitch_stats(&self) -> &StitchStats {
        &self.stitch.stats
    }

    /// Values from traffic replaced whole because they were past their field's length
    /// cap, by field (`hoptrace_values_capped_total{field}`).
    pub fn capped_values(&self) -> Vec<(&'static str, u64)> {
        self.redactor.capped.snapshot()
    }
}

/// Per-connection protocol state.
struct ConnL7 {
    proto: Option<Box<dyn Protocol>>,
    /// Detection was attempted and failed in these directions; give up after both.
    tried: [bool; 2],
    /// HTTP exchanges reported so far: the next one's order on the connection.
    exchanges: u32,
}

/// An outbound call: an HTTP exchange, a message publish, or a connection attempt that
/// failed.
enum Call {
    Http(HttpExchange),
    Mq(MqOperation),
    Failed { error: &'static str, start_ns: u64 },
}

impl Call {
    fn start_ns(&self) -> u64 {
        match self {
            Call::Http(x) => x.request.timing.first_enter_ns,
            Call::Mq(op) => op.timing.first_enter_ns,
            Call::Failed { start_ns, .. } => *start_ns,
        }
    }
}

/// A client call waiting for the server exchange it was made from.
struct Held {
    call: Call,
    conn: ConnView,
    since: Instant,
}

/// The connection facts a span needs (connections may be gone by the time it is built).
#[derive(Clone, Debug)]
struct ConnView {
    pid: u32,
    /// Process name from the kernel: the service name of last resort when the process is
    /// gone before /proc could be read (short-lived clients).
    comm: Str,
    local: SocketAddr,
    remote: SocketAddr,
    /// The HTTP exchange's order on its connection (same-node stitching pairs by it).
    seq: u32,
}

impl ConnView {
    fn of(c: &Connection) -> Self {
        Self { pid: c.pid, comm: c.comm.clone(), local: c.tuple.local, remote: c.tuple.remote, seq: 0 }
    }

    fn addrs(&self, ips: &mut HashMap<std::net::IpAddr, Str>) -> http::Addrs {
        let mut text = |ip: std::net::IpAddr| {
            if ips.len() >= 4096 && !ips.contains_key(&ip) {
                ips.clear();
            }
            ips.entry(ip).or_insert_with(|| Str::from(http::ip_string(ip))).clone()
        };
        let (local_ip, remote_ip) = (text(self.local.ip()), text(self.remote.ip()));
        http::Addrs { local: self.local, remote: self.remote, local_ip, remote_ip }
    }
}

/// The trace context a span continues.
#[derive(Clone)]
struct Ctx {
    trace_id: TraceId,
    parent: SpanId,
    flags: u8,
    trace_state: String,
    origin: TraceOrigin,
}

impl Ctx {
    /// Continues the trace a `traceparent` received from another process names.
    fn remote(tp: &TraceParent, trace_state: String) -> Ctx {
        Ctx { trace_id: tp.trace_id, parent: tp.parent_id, flags: tp.flags, trace_state, origin: TraceOrigin::Remote }
    }

    /// The context of a child of span `span_id` in this context.
    fn child_of(&self, span_id: SpanId) -> Ctx {
        Ctx {
            trace_id: self.trace_id,
            parent: span_id,
            flags: self.flags,
            trace_state: self.trace_state.clone(),
            origin: self.origin,
        }
    }

    /// The identity of a new span `span_id` in this context.
    fn ids(self, span_id: SpanId) -> http::Ids {
        http::Ids {
            trace_id: self.trace_id,
            span_id,
            parent: self.parent,
            flags: self.flags,
            trace_state: self.trace_state,
            origin: self.origin,
        }
    }
}

#[cfg(test)]
mod tests;
