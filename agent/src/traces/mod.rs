//! From connection streams to spans.
//!
//! Each connection gets a protocol parser (detected from its first bytes). Completed HTTP
//! exchanges become spans:
//!
//! * inbound request (server side of the connection) → SERVER span, joined to the
//!   incoming `traceparent` when it is valid, else a new trace;
//! * outbound request (client side) → CLIENT span.
//!
//! **Thread-per-request parent linking.** A client call made on a thread that is, at that
//! moment, serving an inbound request is that request's child. The pipeline marks a
//! thread busy when request bytes arrive on one of its server connections; a client
//! exchange that completes on a busy thread is held until the server exchange completes,
//! then becomes its child. When more than one inbound request was in flight on the same
//! thread (an async runtime multiplexing requests), the agent does not guess: the call
//! stays a root span with `hoptrace.parent.unresolved` saying why.
//!
//! **Services that instrument themselves** (an OpenTelemetry SDK in the process, seen in
//! its environment, or seen creating trace context: outbound `traceparent` that is not
//! the inbound one passed through) already emit their own SERVER/CLIENT spans; by default
//! the agent does not duplicate them, and counts what it suppressed.

pub mod consumer;
pub mod context;
pub mod http;
pub(crate) mod ids;
pub mod messaging;
pub mod red;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use hoptrace_common::{Direction, Role};
use serde::Serialize;
use serde_json::json;

use crate::{
    capture::conntrack::Connection,
    capture::stream::Segment,
    gaps::{Gap, GapKey, GapKind, GapTable},
    model::span::{hex, KeyValue, SpanId, SpanRecord, TraceId, TraceOrigin},
    policy::redact::Redactor,
    policy::sampling::{Decision, Sampler, SamplingConfig},
    protocols::{self, http1::header_values, HttpExchange, L7Event, MqOperation, Protocol},
    resource::process::{ProcessCache, ProcessInfo},
    traces::context::TraceParent,
    util::clock::Clock,
    util::logging::{self, RateLimiter},
};

use self::ids::IdGenerator;
use crate::resource::resolver::ResourceResolver;

/// Where finished spans go (the exporter's queue, or a test's Vec).
pub trait SpanSink {
    fn submit(&mut self, span: SpanRecord);
}

impl SpanSink for Vec<SpanRecord> {
    fn submit(&mut self, span: SpanRecord) {
        self.push(span);
    }
}

#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// Do not emit SERVER/CLIENT spans for processes that instrument themselves.
    pub suppress_instrumented: bool,
    /// How long a client call may wait for the inbound request it belongs to.
    pub hold_timeout: Duration,
    /// Request header (lowercase) → span attribute (the seed's `tenant`, `correlation_id`…).
    pub request_header_attributes: Vec<(String, String)>,
    /// Response header (lowercase) → span attribute (`model_name`, `model_version`…).
    pub response_header_attributes: Vec<(String, String)>,
    /// Response headers whose presence marks a risk signal; each becomes a span event.
    pub risk_signal_headers: Vec<String>,
    /// Record `user_agent.original` (off by default: it can identify people).
    pub record_user_agent: bool,
    /// W3C baggage keys exported as `baggage.<key>` attributes (none by default).
    pub baggage_allowlist: Vec<String>,
    /// Built-in PII detectors turned off (by name: `phone`, `number`…); all on by default.
    pub disabled_detectors: Vec<String>,
    /// Extra patterns (regular expressions) redacted as `{custom}` everywhere.
    pub redact_patterns: Vec<String>,
    /// Propagation-gap detection.
    pub gaps: GapConfig,
    pub sampling: SamplingConfig,
    /// Distinct routes kept per service before new ones go to one overflow bucket.
    pub max_routes_per_service: usize,
}

/// Which hops count as broken (see `gaps`).
#[derive(Clone, Debug)]
pub struct GapConfig {
    /// Zones whose services are entry points: requests without context are normal there.
    pub entry_zones: Vec<String>,
    /// Services (service.name) that are entry points.
    pub entry_services: Vec<String>,
    /// Peers in these networks are internal (besides processes seen on this node).
    pub internal_networks: Vec<ipnet::IpNet>,
    /// Routes (templated, e.g. `/healthz`) never reported.
    pub ignore_routes: Vec<String>,
    /// Services (service.name) whose hops are never reported, as caller or callee.
    pub ignore_services: Vec<String>,
}

impl Default for GapConfig {
    fn default() -> Self {
        Self {
            entry_zones: vec!["Z1".into()],
            entry_services: Vec::new(),
            internal_networks: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            ignore_routes: ["/health", "/healthz", "/ready", "/readyz", "/live", "/livez", "/metrics"]
                .map(String::from)
                .to_vec(),
            ignore_services: Vec::new(),
        }
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            suppress_instrumented: true,
            hold_timeout: Duration::from_secs(10),
            // The seed's attribute schema (no PII): request headers name the caller's
            // tenant, business correlation id and consuming app (Z7)…
            request_header_attributes: [
                ("x-tenant-id", "tenant"),
                ("x-correlation-id", "correlation_id"),
                ("x-component", "component"),
                ("x-consumer-app", "consumer_app"),
                ("x-use-case", "use_case"),
                ("x-purpose", "purpose"),
                ("x-sdk-version", "sdk.version"),
            ]
            .map(|(h, a)| (h.to_string(), a.to_string()))
            .to_vec(),
            // …and model-serving responses (Z6) the model that answered.
            response_header_attributes: [
                ("x-model-name", "model_name"),
                ("x-model-version", "model_version"),
                ("x-model-stage", "model_stage"),
                ("x-policy-digest", "policy_digest"),
            ]
            .map(|(h, a)| (h.to_string(), a.to_string()))
            .to_vec(),
            risk_signal_headers: ["x-risk-abuse", "x-risk-scraping", "x-risk-jailbreak"].map(String::from).to_vec(),
            record_user_agent: false,
            baggage_allowlist: Vec::new(),
            disabled_detectors: Vec::new(),
            redact_patterns: Vec::new(),
            gaps: GapConfig::default(),
            sampling: SamplingConfig::default(),
            max_routes_per_service: 1000,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceStats {
    pub exchanges: u64,
    pub spans_server: u64,
    pub spans_client: u64,
    pub spans_suppressed_instrumented: u64,
    pub parents_linked_same_thread: u64,
    pub parents_unresolved_concurrent: u64,
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

/// Per-connection protocol state.
struct ConnL7 {
    proto: Option<Box<dyn Protocol>>,
    /// Detection was attempted and failed in these directions; give up after both.
    tried: [bool; 2],
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
    comm: String,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
}

impl ConnView {
    fn of(c: &Connection) -> Self {
        Self { pid: c.pid, comm: c.comm.clone(), local: c.tuple.local, remote: c.tuple.remote }
    }
}

#[derive(Default)]
struct Busy {
    conns: Vec<u64>,
    /// Another inbound request overlapped on this thread since it was last idle.
    overlapped: bool,
}

/// Why the agent believes a process instruments itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Instrumented {
    SdkEnvironment,
    CreatesContext,
}

pub struct TracePipeline {
    cfg: TraceConfig,
    clock: Clock,
    ids: IdGenerator,
    conns: HashMap<u64, ConnL7>,
    busy: HashMap<(u32, u32), Busy>,
    held: HashMap<(u32, u32), Vec<Held>>,
    /// Calls with their own `traceparent` made while the process served requests on other
    /// threads (async runtimes, thread pools): held until those requests complete to learn
    /// whether the process passed the inbound context through or created its own.
    held_by_pid: HashMap<u32, Vec<Held>>,
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
    /// Distinct routes seen per service (bounded by `max_routes_per_service`).
    routes: HashMap<String, std::collections::HashSet<String>>,
    /// Request path (query and fragment cut off) → its template. Templating runs every
    /// PII detector over every segment; services repeat their paths, so the answer is
    /// remembered. Bounded: emptied when full. Raw paths stay in this process's memory
    /// only, like the request bytes they come from.
    route_cache: HashMap<Box<[u8]>, String>,
    /// Client sockets on this node by (local, remote): who the peer of a server socket is.
    client_peers: HashMap<(std::net::SocketAddr, std::net::SocketAddr), (u32, String)>,
    /// Server sockets on this node by (local, remote): who answered a client call. Kept
    /// after close (the hop is judged when the caller's request completes), bounded.
    server_peers: HashMap<(std::net::SocketAddr, std::net::SocketAddr), (u32, String)>,
    /// Broken hops, shared with the HTTP endpoint and `hoptrace check`.
    pub gaps: Arc<std::sync::Mutex<GapTable>>,
    pub stats: TraceStats,
    /// RED metrics of every finished span, sampled or not (see `crate::traces::red`).
    pub red: crate::traces::red::RedRecorder,
}

/// The trace context a span continues.
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

impl TracePipeline {
    pub fn new(cfg: TraceConfig, resources: ResourceResolver) -> Self {
        let sampler = Sampler::new(cfg.sampling.clone());
        let mut redactor = Redactor::default();
        for d in crate::policy::redact::Detector::ALL {
            if cfg.disabled_detectors.iter().any(|n| n == d.name()) {
                redactor = redactor.without(d);
            }
        }
        // Patterns were validated with the configuration; a bad one here is skipped whole.
        let redactor = redactor.clone().with_patterns(&cfg.redact_patterns).unwrap_or(redactor);
        Self {
            cfg,
            clock: Clock::now(),
            ids: IdGenerator::new(),
            conns: HashMap::new(),
            busy: HashMap::new(),
            held: HashMap::new(),
            held_by_pid: HashMap::new(),
            instrumented: HashMap::new(),
            processes: ProcessCache::default(),
            resources,
            close_ns: None,
            log_limit: RateLimiter::new(Duration::from_secs(10)),
            sampler,
            redactor,
            routes: HashMap::new(),
            route_cache: HashMap::new(),
            client_peers: HashMap::new(),
            server_peers: HashMap::new(),
            gaps: Arc::new(std::sync::Mutex::new(GapTable::default())),
            stats: TraceStats::default(),
            red: crate::traces::red::RedRecorder::default(),
        }
    }

    /// New in-order bytes of one direction of `conn`.
    pub fn on_segments(&mut self, conn: &Connection, dir: Direction, segs: &[Segment], sink: &mut dyn SpanSink) {
        if segs.is_empty() {
            return;
        }
        if !self.conns.contains_key(&conn.id) {
            let peers = if conn.role == Role::Client { &mut self.client_peers } else { &mut self.server_peers };
            if peers.len() >= 65536 {
                peers.clear();
            }
            peers.insert((conn.tuple.local, conn.tuple.remote), (conn.pid, conn.comm.clone()));
        }
        let state = self.conns.entry(conn.id).or_insert(ConnL7 { proto: None, tried: [false; 2] });
        if state.proto.is_none() {
            if state.tried[0] && state.tried[1] {
                return;
            }
            let first = segs.iter().find_map(|s| match s {
                Segment::Data { bytes, .. } if !bytes.is_empty() => Some(bytes.as_slice()),
                _ => None,
            });
            let Some(first) = first else { return };
            state.proto = protocols::detect(conn.role, dir, first);
            if state.proto.is_none() {
                state.tried[dir as usize] = true;
                if state.tried[0] && state.tried[1] {
                    self.stats.connections_unknown_protocol += 1;
                }
                return;
            }
        }
        // Inbound request bytes make the reading thread busy serving this connection.
        if conn.role == Role::Server && dir == Direction::Ingress {
            for s in segs {
                if let Segment::Data { tid, .. } = s {
                    let busy = self.busy.entry((conn.pid, *tid)).or_default();
                    if !busy.conns.contains(&conn.id) {
                        if !busy.conns.is_empty() {
                            busy.overlapped = true;
                        }
                        busy.conns.push(conn.id);
                    }
                }
            }
        }
        let mut events = Vec::new();
        if let Some(proto) = state.proto.as_mut() {
            proto.feed(dir, segs, &mut events);
        }
        self.handle_events(conn, events, sink);
    }

    /// The connection left the table (`close_ns`: kernel time of the close, when known):
    /// report what its parser still holds. An exchange cut short by the close ends then.
    pub fn on_close(&mut self, conn: &Connection, close_ns: Option<u64>, sink: &mut dyn SpanSink) {
        let Some(mut state) = self.conns.remove(&conn.id) else {
            return;
        };
        let mut events = Vec::new();
        if let Some(proto) = state.proto.as_mut() {
            proto.close(&mut events);
        }
        self.close_ns = close_ns;
        self.handle_events(conn, events, sink);
        self.close_ns = None;
        for busy in self.busy.values_mut() {
            busy.conns.retain(|&c| c != conn.id);
        }
        self.busy.retain(|_, b| !b.conns.is_empty());
    }

    /// Periodic housekeeping: held calls whose inbound request never completed are
    /// emitted on their own.
    pub fn tick(&mut self, sink: &mut dyn SpanSink) {
        let timeout = self.cfg.hold_timeout;
        let mut expired = Vec::new();
        for list in self.held.values_mut().chain(self.held_by_pid.values_mut()) {
            let (old, keep): (Vec<Held>, Vec<Held>) = list.drain(..).partition(|h| h.since.elapsed() > timeout);
            *list = keep;
            expired.extend(old);
        }
        self.held.retain(|_, l| !l.is_empty());
        self.held_by_pid.retain(|_, l| !l.is_empty());
        for h in expired {
            self.stats.held_calls_expired += 1;
            if let Some(suppressed) = self.log_limit.allow(&format!("held_expired/{}", h.conn.pid)) {
                logging::log(
                    "info",
                    "an outbound call waited too long for the inbound request it was made from; exported as a root span",
                    json!({ "pid": h.conn.pid, "suppressed_since_last": suppressed }),
                );
            }
            self.emit_call(h.call, &h.conn, None, Some("inbound_request_not_completed"), None, sink);
        }
    }

    /// The templated route of a request target, bounded per service: past
    /// `max_routes_per_service` distinct routes, new ones share one overflow bucket (so a
    /// scan of a million distinct paths cannot blow up memory, spans or metric labels).
    fn route(&mut self, service: &str, target: &[u8]) -> String {
        const ROUTE_CACHE_MAX: usize = 4096;
        let path = target.split(|&b| b == b'?' || b == b'#').next().unwrap_or_default();
        let route = match self.route_cache.get(path) {
            Some(r) => r.clone(),
            None => {
                let r = http::route_template(path, &self.redactor);
                if self.route_cache.len() >= ROUTE_CACHE_MAX {
                    self.route_cache.clear();
                }
                self.route_cache.insert(path.into(), r.clone());
                r
            }
        };
        let max = self.cfg.max_routes_per_service;
        if !self.routes.contains_key(service) {
            self.routes.insert(service.to_string(), Default::default());
        }
        let known = self.routes.get_mut(service).expect("inserted above");
        if known.contains(&route) {
            return route;
        }
        if known.len() < max {
            known.insert(route.clone());
            return route;
        }
        self.stats.routes_overflowed += 1;
        ROUTE_OVERFLOW.to_string()
    }

    /// service.name and zone of a process, from its Resource.
    fn service_zone(&mut self, pid: u32, comm: &str) -> (String, String) {
        let r = self.resource_for(pid, comm);
        let get = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| match &a.value {
                    crate::model::span::AnyValue::Str(v) => Some(v.clone()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        (get("service.name"), get("zone"))
    }

    /// The service at the other end of a hop: a process on this node when it was seen,
    /// else the address (bounded by the gap table's size).
    fn peer_name(&mut self, seen: &Option<(u32, String)>, addr: std::net::SocketAddr) -> String {
        match seen {
            Some((pid, comm)) => self.service_zone(*pid, comm).0,
            None => addr.to_string(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_gap(
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
        if self.cfg.gaps.ignore_routes.iter().any(|r| r == route)
            || self.cfg.gaps.ignore_services.iter().any(|s| s == service || s == peer)
        {
            return;
        }
        let gap = Gap {
            key: GapKey {
                kind,
                service: service.to_string(),
                zone: zone.to_string(),
                peer_service: peer.to_string(),
                route: route.to_string(),
            },
            time_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            detail: detail.to_string(),
        };
        self.stats.propagation_gaps += 1;
        let first = self.gaps.lock().map(|mut t| t.record(&gap)).unwrap_or(false);
        let key = format!("gap/{}/{service}/{peer}/{route}", kind.as_str());
        if let Some(suppressed) = self.log_limit.allow(&key) {
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

    /// Head and tail sampling (see `sampling`): every span is counted by decision; only
    /// kept ones reach the sink.
    /// Privacy, last step before anything is queued: every attribute value that came from
    /// traffic (mapped headers, baggage) passes the PII detectors. A hit is replaced by its
    /// placeholder and the span gets a `dlp_redacted` event naming the detector and count,
    /// never the value.
    fn redact(&mut self, span: &mut SpanRecord) {
        let from_traffic = |key: &str, cfg: &TraceConfig| {
            key.starts_with("baggage.")
                || cfg.request_header_attributes.iter().any(|(_, a)| a == key)
                || cfg.response_header_attributes.iter().any(|(_, a)| a == key)
        };
        let mut hits: Vec<(crate::policy::redact::Detector, usize)> = Vec::new();
        for attr in span.attributes.iter_mut() {
            if !from_traffic(&attr.key, &self.cfg) {
                continue;
            }
            if let crate::model::span::AnyValue::Str(v) = &attr.value {
                let r = self.redactor.redact_value(v);
                if !r.hits.is_empty() {
                    attr.value = crate::model::span::AnyValue::Str(r.text);
                    hits.extend(r.hits);
                }
            }
        }
        for (det, n) in hits {
            *self.stats.redactions.entry(det.name()).or_default() += n as u64;
            span.events.push(crate::model::span::SpanEvent {
                name: "dlp_redacted".into(),
                time_unix_ns: span.start_unix_ns,
                attributes: vec![
                    KeyValue::str("hoptrace.dlp.detector", det.name()),
                    KeyValue::int("hoptrace.dlp.count", n as i64),
                ],
            });
        }
    }

    fn submit(&mut self, mut span: SpanRecord, sink: &mut dyn SpanSink) {
        self.redact(&mut span);
        let service = span
            .resource
            .attributes
            .iter()
            .find(|a| a.key == "service.name")
            .and_then(|a| match &a.value {
                crate::model::span::AnyValue::Str(v) => Some(v.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let decision = self.sampler.decide(&span, &service);
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
    fn new_trace(&mut self) -> Ctx {
        Ctx {
            trace_id: self.ids.trace_id(),
            parent: [0; 8],
            flags: 1,
            trace_state: String::new(),
            origin: TraceOrigin::Agent,
        }
    }

    /// Shutdown: every held call goes out on its own.
    pub fn flush(&mut self, sink: &mut dyn SpanSink) {
        let mut held: Vec<Held> = self.held.drain().flat_map(|(_, l)| l).collect();
        held.extend(self.held_by_pid.drain().flat_map(|(_, l)| l));
        for h in held {
            self.emit_call(h.call, &h.conn, None, Some("inbound_request_not_completed"), None, sink);
        }
    }

    fn handle_events(&mut self, conn: &Connection, events: Vec<L7Event>, sink: &mut dyn SpanSink) {
        for ev in events {
            match ev {
                L7Event::Http(x) => {
                    self.stats.exchanges += 1;
                    match conn.role {
                        Role::Server => self.server_exchange(conn, x, sink),
                        Role::Client => self.client_exchange(conn, x, sink),
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

    fn client_exchange(&mut self, conn: &Connection, x: HttpExchange, sink: &mut dyn SpanSink) {
        let tid = x.request.timing.first_tid;
        self.client_call(ConnView::of(conn), tid, Call::Http(x), sink);
    }

    /// An outgoing connection attempt failed: an error CLIENT span, linked like any call.
    #[allow(clippy::too_many_arguments)]
    /// `tid` is the connecting thread when the failure happened inside connect().
    pub fn on_connect_failed(
        &mut self,
        pid: u32,
        tid: Option<u32>,
        comm: &str,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        error: &'static str,
        ts_ns: u64,
        sink: &mut dyn SpanSink,
    ) {
        let view = ConnView { pid, comm: comm.to_string(), local, remote };
        let call = Call::Failed { error, start_ns: ts_ns };
        match tid {
            Some(tid) => self.client_call(view, tid, call, sink),
            None => self.emit_call(call, &view, None, None, None, sink),
        }
    }

    fn client_call(&mut self, view: ConnView, tid: u32, call: Call, sink: &mut dyn SpanSink) {
        let key = (view.pid, tid);
        if self.busy.get(&key).is_some_and(|b| !b.conns.is_empty()) {
            self.held.entry(key).or_default().push(Held { call, conn: view, since: Instant::now() });
            return;
        }
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

    /// The request's trace context; invalid headers are counted, and their reason kept so
    /// the span can be logged (never the header value).
    fn inbound_context(&mut self, x: &HttpExchange) -> (Option<TraceParent>, String, Option<&'static str>) {
        let mut values = header_values(&x.request.headers, "traceparent");
        let (first, second) = (values.next(), values.next());
        let mut invalid = None;
        let parent = match (first, second) {
            (Some(v), None) => match context::parse_traceparent(v) {
                Ok(tp) => Some(tp),
                Err(e) => {
                    invalid = Some(e.reason());
                    None
                }
            },
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
        let state = if parent.is_some() {
            let lines: Vec<&[u8]> = header_values(&x.request.headers, "tracestate").collect();
            match context::parse_tracestate(&lines) {
                Ok(s) => s,
                Err(e) => {
                    *self.stats.invalid_context.entry(e.reason()).or_default() += 1;
                    invalid = Some(e.reason());
                    String::new()
                }
            }
        } else {
            String::new()
        };
        (parent, state, invalid)
    }

    fn mark_instrumented(&mut self, pid: u32, why: Instrumented) {
        let start = self.processes.get(pid).map_or(0, |p| p.start_time);
        if self.instrumented.len() >= MAX_INSTRUMENTED && !self.instrumented.contains_key(&pid) {
            // Verdicts are cheap to learn again; forgetting them only risks duplicates.
            self.instrumented.clear();
        }
        self.instrumented.insert(pid, (why, start));
    }

    fn is_instrumented(&mut self, pid: u32) -> bool {
        let info = self.processes.get(pid);
        if let Some(&(_why, start)) = self.instrumented.get(&pid) {
            // Unknown now (the process is gone, /proc unreadable): keep the verdict.
            if info.as_ref().is_none_or(|p| p.start_time == start) {
                return true;
            }
            // The pid belongs to another process now.
            self.instrumented.remove(&pid);
        }
        if info.is_some_and(|p| p.otel_sdk_env) {
            self.mark_instrumented(pid, Instrumented::SdkEnvironment);
            return true;
        }
        false
    }

    fn server_exchange(&mut self, conn: &Connection, x: HttpExchange, sink: &mut dyn SpanSink) {
        let tid = x.request.timing.first_tid;
        let key = (conn.pid, tid);
        let mut overlapped = false;
        if let Some(busy) = self.busy.get_mut(&key) {
            overlapped = busy.overlapped;
            busy.conns.retain(|&c| c != conn.id);
            if busy.conns.is_empty() {
                self.busy.remove(&key);
            }
        }
        let start = x.request.timing.first_exit_ns;
        let end = match &x.response {
            Some(r) => r.timing.last_exit_ns,
            None => self.close_ns.unwrap_or(x.request.timing.last_exit_ns),
        };
        // Calls made from this thread while it served the request.
        let mut children = Vec::new();
        if let Some(list) = self.held.get_mut(&key) {
            let (inside, rest): (Vec<Held>, Vec<Held>) = list.drain(..).partition(|h| {
                let t = h.call.start_ns();
                t >= start && t <= end
            });
            *list = rest;
            children = inside;
        }
        self.held.retain(|_, l| !l.is_empty());

        let (inbound, trace_state, invalid) = self.inbound_context(&x);
        // A process that sends trace context it did not receive creates spans itself.
        for child in &children {
            if let Call::Mq(op) = &child.call {
                let own = op
                    .messages
                    .iter()
                    .filter_map(|m| m.traceparent.as_deref())
                    .find_map(|v| context::parse_traceparent(v).ok());
                if own.is_some_and(|o| {
                    inbound.as_ref().is_none_or(|i| i.trace_id != o.trace_id || i.parent_id != o.parent_id)
                }) {
                    self.mark_instrumented(conn.pid, Instrumented::CreatesContext);
                }
            }
            let Call::Http(x) = &child.call else { continue };
            if let Some(v) = header_values(&x.request.headers, "traceparent").next() {
                if let Ok(out) = context::parse_traceparent(v) {
                    let passed_through =
                        inbound.as_ref().is_some_and(|i| i.trace_id == out.trace_id && i.parent_id == out.parent_id);
                    if !passed_through {
                        self.mark_instrumented(conn.pid, Instrumented::CreatesContext);
                    }
                }
            }
        }
        // Calls with their own context made on other threads while this request was served.
        let mut passed_through = Vec::new();
        if let Some(list) = self.held_by_pid.get_mut(&conn.pid) {
            let (inside, rest): (Vec<Held>, Vec<Held>) = list.drain(..).partition(|h| {
                let t = h.call.start_ns();
                t >= start && t <= end
            });
            *list = rest;
            for h in inside {
                let Call::Http(x) = &h.call else { continue };
                let same = match (outbound_context(x), &inbound) {
                    (Some(out), Some(i)) => out.trace_id == i.trace_id && out.parent_id == i.parent_id,
                    _ => false,
                };
                if same {
                    passed_through.push(h);
                } else {
                    self.mark_instrumented(conn.pid, Instrumented::CreatesContext);
                    let restarted = match (outbound_context(x), &inbound) {
                        (Some(out), Some(i)) => out.trace_id != i.trace_id,
                        _ => false,
                    };
                    if restarted {
                        let (service, zone) = self.service_zone(conn.pid, &conn.comm);
                        let callee = self
                            .peer_name(&self.server_peers.get(&(h.conn.remote, h.conn.local)).cloned(), h.conn.remote);
                        let route = self.route(&service, &x.request.target);
                        let trace = inbound.as_ref().map(|i| hex(&i.trace_id)).unwrap_or_default();
                        self.record_gap(GapKind::RestartedContext, &service, &zone, &callee, &route, &trace, "", "");
                    }
                }
            }
        }
        self.held_by_pid.retain(|_, l| !l.is_empty());
        let suppressed = self.cfg.suppress_instrumented && self.is_instrumented(conn.pid);
        for h in passed_through {
            self.emit_call(h.call, &h.conn, None, None, None, sink);
        }

        let ctx = match &inbound {
            Some(tp) => Ctx::remote(tp, trace_state),
            None => self.new_trace(),
        };
        let span_id = self.ids.span_id();
        let view = ConnView::of(conn);

        // Propagation gaps: judged for every service, instrumented or not.
        let (service, zone) = self.service_zone(view.pid, &view.comm);
        let route = self.route(&service, &x.request.target);
        let caller = self.peer_name(&self.client_peers.get(&(view.remote, view.local)).cloned(), view.remote);
        let internal = self.client_peers.contains_key(&(view.remote, view.local))
            || self.cfg.gaps.internal_networks.iter().any(|n| n.contains(&view.remote.ip()));
        let (trace_hex, span_hex) = (hex(&ctx.trace_id), hex(&span_id));
        let mut inbound_gap = None;
        if let Some(reason) = invalid {
            inbound_gap = Some(GapKind::InvalidContext);
            self.record_gap(GapKind::InvalidContext, &service, &zone, &caller, &route, &trace_hex, &span_hex, reason);
        } else if inbound.is_none()
            && internal
            && !self.cfg.gaps.entry_services.contains(&service)
            && !self.cfg.gaps.entry_zones.contains(&zone)
            && !self.cfg.gaps.ignore_services.contains(&caller)
        {
            inbound_gap = Some(GapKind::MissingInboundContext);
            self.record_gap(
                GapKind::MissingInboundContext,
                &service,
                &zone,
                &caller,
                &route,
                &trace_hex,
                &span_hex,
                "",
            );
        }
        let mut child_gaps = Vec::with_capacity(children.len());
        for child in &children {
            let mut gap = None;
            // Overlapping requests on the thread: which one the call served is unknown, so
            // its hop is not judged against this one's context either.
            if let (Call::Mq(op), false) = (&child.call, overlapped) {
                if let Some(kind) = self.publish_gap(op, inbound.is_some()) {
                    let broker = self.peer_name(
                        &self.server_peers.get(&(child.conn.remote, child.conn.local)).cloned(),
                        child.conn.remote,
                    );
                    let (name, _) = self.mq_span_name(op);
                    self.record_gap(kind, &service, &zone, &broker, &name, &trace_hex, &span_hex, "");
                    gap = Some(kind);
                }
            }
            if let (Call::Http(cx), Some(i), false) = (&child.call, &inbound, overlapped) {
                let kind = match outbound_context(cx) {
                    None => Some(GapKind::DroppedOutboundContext),
                    Some(o) if o.trace_id != i.trace_id => Some(GapKind::RestartedContext),
                    Some(_) => None,
                };
                if let Some(kind) = kind {
                    let callee = self.peer_name(
                        &self.server_peers.get(&(child.conn.remote, child.conn.local)).cloned(),
                        child.conn.remote,
                    );
                    let child_route = self.route(&service, &cx.request.target);
                    self.record_gap(kind, &service, &zone, &callee, &child_route, &trace_hex, &span_hex, "");
                    gap = Some(kind);
                }
            }
            child_gaps.push(gap);
        }

        if suppressed {
            self.stats.spans_suppressed_instrumented += 1 + children.len() as u64;
            return;
        }
        for (child, gap) in children.into_iter().zip(child_gaps) {
            if overlapped {
                self.stats.parents_unresolved_concurrent += 1;
                self.emit_call(child.call, &child.conn, None, Some("concurrent_requests_on_thread"), gap, sink);
            } else {
                self.stats.parents_linked_same_thread += 1;
                let parent = Ctx {
                    trace_id: ctx.trace_id,
                    parent: span_id,
                    flags: ctx.flags,
                    trace_state: ctx.trace_state.clone(),
                    origin: ctx.origin,
                };
                self.emit_call(child.call, &child.conn, Some(parent), None, gap, sink);
            }
        }
        let resource = self.resource_for(view.pid, &view.comm);
        let mut span =
            http::server_span(&self.cfg, &self.clock, &x, &route, &view_addrs(&view), resource, ctx.ids(span_id));
        span.end_unix_ns = span.end_unix_ns.max(self.clock.to_unix_ns(end));
        if let Some(kind) = inbound_gap {
            mark_gap(&mut span, kind);
        }
        if let Some(reason) = invalid {
            if let Some(suppressed) = self.log_limit.allow(&format!("invalid_context/{reason}/{}", view.pid)) {
                logging::log(
                    "warn",
                    "invalid trace context on an inbound request; started a new trace",
                    json!({
                        "reason": reason,
                        "trace_id": hex(&span.trace_id),
                        "span_id": hex(&span.span_id),
                        "pid": view.pid,
                        "route": span.name,
                        "suppressed_since_last": suppressed,
                    }),
                );
            }
        }
        self.stats.spans_server += 1;
        self.submit(span, sink);
    }

    /// Emits a CLIENT span. `parent` is the enclosing server span's context when linked.
    fn emit_call(
        &mut self,
        call: Call,
        view: &ConnView,
        parent: Option<Ctx>,
        unresolved: Option<&'static str>,
        gap: Option<GapKind>,
        sink: &mut dyn SpanSink,
    ) {
        let call = match call {
            Call::Mq(op) => return self.emit_publish(op, view, parent, unresolved, gap, sink),
            other => other,
        };
        if self.cfg.suppress_instrumented && self.is_instrumented(view.pid) {
            self.stats.spans_suppressed_instrumented += 1;
            return;
        }
        let x = match call {
            Call::Http(x) => x,
            Call::Mq(_) => unreachable!("publishes returned above"),
            Call::Failed { error, start_ns } => {
                let ctx = match parent {
                    Some(p) => p,
                    None => self.new_trace(),
                };
                let span_id = self.ids.span_id();
                let resource = self.resource_for(view.pid, &view.comm);
                let t = self.clock.to_unix_ns(start_ns);
                let mut span = http::connect_failed_span(&view_addrs(view), resource, ctx.ids(span_id), t, error);
                if let Some(why) = unresolved {
                    span.attributes.push(KeyValue::str("hoptrace.parent.unresolved", why));
                }
                self.stats.spans_client += 1;
                self.stats.connect_failures += 1;
                self.submit(span, sink);
                return;
            }
        };
        // The request's own traceparent (a service that propagates) decides the trace when
        // it differs from the enclosing span's.
        let outbound = outbound_context(&x);
        let ctx = match (parent, outbound) {
            (Some(p), Some(o)) if o.trace_id != p.trace_id => Ctx::remote(&o, String::new()),
            (Some(p), _) => p,
            (None, Some(o)) => Ctx::remote(&o, String::new()),
            (None, None) => self.new_trace(),
        };
        let span_id = self.ids.span_id();
        let resource = self.resource_for(view.pid, &view.comm);
        let service = resource_service(&resource);
        let route = self.route(&service, &x.request.target);
        let mut span =
            http::client_span(&self.cfg, &self.clock, &x, &route, &view_addrs(view), resource, ctx.ids(span_id));
        mark_parent_link(&mut span, unresolved, gap);
        self.stats.spans_client += 1;
        self.submit(span, sink);
    }

    fn resource_for(&mut self, pid: u32, comm: &str) -> Arc<crate::model::span::Resource> {
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
}

/// The route every request past a service's route cap is reported under.
pub const ROUTE_OVERFLOW: &str = "/{overflow}";

/// `service.name` of a Resource.
fn resource_service(r: &crate::model::span::Resource) -> String {
    r.attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| match &a.value {
            crate::model::span::AnyValue::Str(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What is known about an outgoing span's (HTTP call, publish) link to the span that
/// encloses it, each when there is one: why it has none (`hoptrace.parent.unresolved`),
/// and the propagation gap it is part of.
fn mark_parent_link(span: &mut SpanRecord, unresolved: Option<&'static str>, gap: Option<GapKind>) {
    if let Some(why) = unresolved {
        span.attributes.push(KeyValue::str("hoptrace.parent.unresolved", why));
    }
    if let Some(kind) = gap {
        mark_gap(span, kind);
    }
}

/// Names the gap on the span itself: an attribute and an event.
fn mark_gap(span: &mut SpanRecord, kind: GapKind) {
    span.attributes.push(KeyValue::str("hoptrace.gap.kind", kind.as_str()));
    span.events.push(crate::model::span::SpanEvent {
        name: "propagation_gap".into(),
        time_unix_ns: span.start_unix_ns,
        attributes: vec![KeyValue::str("hoptrace.gap.kind", kind.as_str())],
    });
}

/// The valid `traceparent` an outbound request carries, if any.
fn outbound_context(x: &HttpExchange) -> Option<TraceParent> {
    header_values(&x.request.headers, "traceparent").next().and_then(|v| context::parse_traceparent(v).ok())
}

fn view_addrs(v: &ConnView) -> http::Addrs {
    http::Addrs { local: v.local, remote: v.remote }
}

/// Processes remembered as instrumenting themselves.
const MAX_INSTRUMENTED: usize = 65536;

#[cfg(test)]
mod tests {
    //! The pipeline on synthetic connections: what the kernel would have delivered.
    use std::time::Instant;

    use hoptrace_common::{Direction, Role, Syscall};

    use super::*;
    use crate::{capture::conntrack::RoleSource, capture::stream::Stream};

    const PID: u32 = 4242;
    const TID: u32 = 4243;

    fn conn(id: u64, role: Role, local: &str, remote: &str) -> Connection {
        conn_of(PID, id, role, local, remote)
    }

    /// A connection of process `pid` as the connection table hands it to the pipeline
    /// (shared with the messaging tests).
    pub(super) fn conn_of(pid: u32, id: u64, role: Role, local: &str, remote: &str) -> Connection {
        Connection {
            id,
            tuple: crate::capture::conntrack::Tuple { local: local.parse().unwrap(), remote: remote.parse().unwrap() },
            role,
            role_source: RoleSource::Syscall,
            via: if role == Role::Server { Syscall::Accept } else { Syscall::Connect },
            pid,
            ppid: 1,
            fd: 3,
            comm: "svc".into(),
            cgroup_id: 0,
            opened_ns: 0,
            last_seen: Instant::now(),
            streams: [Stream::default(), Stream::default()],
        }
    }

    fn seg(ts: u64, bytes: &[u8]) -> Vec<Segment> {
        vec![Segment::Data { offset: 0, ts_enter_ns: ts, ts_ns: ts + 1, tid: TID, bytes: bytes.to_vec() }]
    }

    fn pipeline() -> TracePipeline {
        TracePipeline::new(TraceConfig::default(), ResourceResolver::new(Vec::new(), Vec::new()))
    }

    const REQ: &[u8] =
        b"GET /in HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    const CALL: &[u8] = b"GET /out HTTP/1.1\r\nHost: b\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    /// One inbound request on the thread: the call made meanwhile is its child.
    #[test]
    fn call_on_the_serving_thread_is_a_child() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let server = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
        let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
        p.on_segments(&server, Direction::Ingress, &seg(10, REQ), &mut spans);
        p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
        p.on_segments(&client, Direction::Ingress, &seg(30, OK), &mut spans);
        assert!(spans.is_empty(), "the call waits for its inbound request");
        p.on_segments(&server, Direction::Egress, &seg(40, OK), &mut spans);
        let srv = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Server).expect("server span");
        let cli = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Client).expect("client span");
        assert_eq!((cli.trace_id, cli.parent_span_id), (srv.trace_id, srv.span_id));
        assert_eq!(p.stats.parents_linked_same_thread, 1);
        // The inbound request had context, the call none: a dropped-context hop.
        assert_eq!(p.stats.propagation_gaps, 1);
        let gaps = p.gaps.lock().unwrap().rows();
        assert_eq!(gaps[0].0.kind, GapKind::DroppedOutboundContext);
    }

    /// A scan of many distinct paths cannot grow routes (spans, metric labels) unbounded.
    #[test]
    fn routes_are_capped_per_service() {
        let cfg = TraceConfig { max_routes_per_service: 2, ..TraceConfig::default() };
        let mut p = TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new()));
        assert_eq!(p.route("svc", b"/a/1"), "/a/{id}");
        assert_eq!(p.route("svc", b"/b"), "/b");
        assert_eq!(p.route("svc", b"/a/2"), "/a/{id}", "a known route stays");
        assert_eq!(p.route("svc", b"/c"), ROUTE_OVERFLOW);
        assert_eq!(p.route("other", b"/c"), "/c", "the cap is per service");
        assert_eq!(p.stats.routes_overflowed, 1);
    }

    /// Two inbound requests overlapping on one thread (an event loop): the agent cannot
    /// know which one the call belongs to and says so instead of guessing.
    #[test]
    fn overlapping_requests_on_one_thread_are_not_guessed() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let a = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
        let b = conn(3, Role::Server, "127.0.0.1:8000", "127.0.0.1:50002");
        let client = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9000");
        p.on_segments(&a, Direction::Ingress, &seg(10, REQ), &mut spans);
        p.on_segments(&b, Direction::Ingress, &seg(11, REQ), &mut spans);
        p.on_segments(&client, Direction::Egress, &seg(20, CALL), &mut spans);
        p.on_segments(&client, Direction::Ingress, &seg(30, OK), &mut spans);
        p.on_segments(&a, Direction::Egress, &seg(40, OK), &mut spans);
        p.on_segments(&b, Direction::Egress, &seg(41, OK), &mut spans);
        p.flush(&mut spans);
        let cli = spans.iter().find(|s| s.kind == crate::model::span::SpanKind::Client).expect("client span");
        assert!(cli.is_root(), "{cli:?}");
        let unresolved = cli.attributes.iter().find(|a| a.key == "hoptrace.parent.unresolved");
        assert_eq!(
            unresolved.map(|a| &a.value),
            Some(&crate::model::span::AnyValue::Str("concurrent_requests_on_thread".into()))
        );
        assert_eq!((p.stats.parents_linked_same_thread, p.stats.parents_unresolved_concurrent), (0, 1));
        assert_eq!(p.stats.propagation_gaps, 0, "an unattributable call is not judged");
    }

    #[test]
    fn an_instrumented_verdict_does_not_pass_to_a_reused_pid() {
        // This test process is real: /proc gives its start time.
        let me = std::process::id();
        let mut p = pipeline();
        let sdk_env = p.processes.get(me).expect("own /proc entry").otel_sdk_env;
        p.mark_instrumented(me, Instrumented::CreatesContext);
        assert!(p.is_instrumented(me));
        // A verdict about an earlier process that had this pid (another start time).
        let (why, start) = p.instrumented[&me];
        p.instrumented.insert(me, (why, start.wrapping_add(1)));
        assert_eq!(p.is_instrumented(me), sdk_env, "a reused pid inherited the verdict");
        // A pid whose process is gone keeps its verdict (its last spans may still come).
        p.mark_instrumented(PID, Instrumented::CreatesContext);
        assert!(p.is_instrumented(PID));
    }
}
