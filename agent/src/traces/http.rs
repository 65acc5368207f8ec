//! HTTP exchanges → SERVER / CLIENT spans with OpenTelemetry semantic-convention
//! attributes.
//!
//! Nothing from the request goes out verbatim except what is safe by construction: the
//! path is templated (ids, numbers, hex and anything that is not a plain word become
//! `{id}`), the query string is dropped, and header values are exported only for headers
//! explicitly mapped in the configuration.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    model::span::{KeyValue, Resource, SpanEvent, SpanId, SpanKind, SpanRecord, Status, StatusCode, Str, TraceId},
    protocols::{
        http1::{HttpRequest, Outcome},
        HttpExchange,
    },
    util::clock::Clock,
};

use super::TraceConfig;
use crate::policy::redact::{Field, Redactor};

pub struct Addrs {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The addresses as text, shared from the pipeline's cache (see `TracePipeline::addrs`).
    pub local_ip: Str,
    pub remote_ip: Str,
}

/// A path segment that is a plain word (letters, dashes, underscores, dots, with at most
/// a couple of digits, as in `v2` or `api`) is kept; anything else is an identifier.
fn is_plain_word(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    !seg.is_empty()
        && seg.len() <= 32
        && digits <= 2
        && seg.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !seg.contains('@')
}

/// `/customers/12345/orders?token=x` → `/customers/{id}/orders`;
/// `/mail/maria@example.com` → `/mail/{email}`. A segment holding anything the redactor
/// detects becomes that detector's placeholder; any other segment that is not a plain word
/// becomes `{id}`; the query string and fragment are dropped. Segments past their cap and
/// segments past the 64th become `{capped}` ([`Field`]).
pub fn route_template(target: &[u8], redactor: &Redactor) -> String {
    let target = String::from_utf8_lossy(target);
    // Absolute-form targets (proxies): keep only the path.
    let path = match target.find("://") {
        Some(i) => target[i + 3..].find('/').map_or("/", |j| &target[i + 3 + j..]),
        None => &target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    if !path.starts_with('/') {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len().min(256));
    for (n, seg) in path.split('/').skip(1).enumerate() {
        // Past the cap on segments the rest of the path is one placeholder, never scanned.
        if n >= Field::Path.cap() {
            redactor.capped.count(Field::Path);
            out.push_str("/{capped}");
            break;
        }
        out.push('/');
        if seg.is_empty() {
            continue;
        }
        match redactor.redact_path_segment(seg) {
            Some(name) => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
            None if is_plain_word(seg) => out.push_str(seg),
            None => out.push_str("{id}"),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// An address as text. IPv4 (nearly every address on the hot path) without the
/// formatting machinery, which cost more than the rest of the attribute.
pub fn ip_string(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push((b'0' + octet / 100) as char);
                }
                if octet >= 10 {
                    out.push((b'0' + octet / 10 % 10) as char);
                }
                out.push((b'0' + octet % 10) as char);
            }
            out
        }
        v6 => v6.to_string(),
    }
}

fn version(v: u8) -> &'static str {
    match v {
        0 => "1.0",
        1 => "1.1",
        _ => "2",
    }
}

/// gRPC status codes, by number (`rpc.grpc.status_code` is the number; the name goes in
/// the status message of an error span).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Semantic conventions for gRPC: a server span is an error only for codes that say the
/// server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS); a client span for any code but OK.
fn grpc_is_error(code: u32, kind: SpanKind) -> bool {
    match kind {
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        _ => code != 0,
    }
}

/// `/package.Service/Method` (templated route) → (`package.Service`, `Method`).
fn grpc_names(route: &str) -> Option<(&str, &str)> {
    let (service, method) = route.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

/// What HTTP/2 streams add: `hoptrace.h2.partial_headers`, and for gRPC the `rpc.*`
/// attributes, the `Service/Method` span name and the status from `grpc-status`.
fn h2_attributes(x: &HttpExchange, route: &str, kind: SpanKind, span: &mut SpanRecord) {
    let Some(h2) = &x.h2 else { return };
    if h2.partial_headers {
        span.attributes.push(KeyValue::bool("hoptrace.h2.partial_headers", true));
    }
    if let Some(code) = h2.reset {
        span.attributes.push(KeyValue::int("hoptrace.h2.reset_error_code", code as i64));
    }
    let Some(grpc) = &h2.grpc else { return };
    span.attributes.push(KeyValue::str("rpc.system", "grpc"));
    if let Some((service, method)) = grpc_names(route) {
        span.attributes.push(KeyValue::str("rpc.service", service.to_string()));
        span.attributes.push(KeyValue::str("rpc.method", method.to_string()));
        span.name = Str::from(route[1..].to_string());
    }
    span.attributes.push(KeyValue::int("hoptrace.rpc.request.messages", grpc.request_messages as i64));
    span.attributes.push(KeyValue::int("hoptrace.rpc.response.messages", grpc.response_messages as i64));
    // Without grpc-status (trailers lost, stream reset, connection cut) the HTTP outcome
    // decides, as for HTTP.
    if let Some(code) = grpc.status {
        span.attributes.push(KeyValue::int("rpc.grpc.status_code", code as i64));
        if grpc_is_error(code, kind) {
            let name = GRPC_CODES.get(code as usize).copied().unwrap_or("UNKNOWN_CODE");
            span.status = Status { code: StatusCode::Error, message: name.into() };
        } else if x.outcome == Outcome::Complete {
            span.status = Status::default();
        }
    }
}

/// Mapped header values become attributes only when they look like identifiers: short,
/// printable, no spaces (the privacy work tightens this with detectors).
fn safe_header_value(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?.trim();
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_string())
}

/// The route and name of an HTTP span, both templated and bounded by the pipeline (see
/// `TracePipeline::route` and `TracePipeline::span_name`), shared from its caches.
pub struct Named {
    pub route: Str,
    pub name: Str,
}

/// Attributes shared by server and client spans; the peer is the connection's remote end.
fn common(cfg: &TraceConfig, req: &HttpRequest, named: &Named, addrs: &Addrs) -> Vec<KeyValue> {
    // Room for the attributes server and client spans add after these, so the vector is
    // allocated once.
    let mut a = Vec::with_capacity(14);
    a.extend([
        KeyValue::str("http.request.method", req.method.clone()),
        KeyValue::str("url.path", named.route.clone()),
        KeyValue::str("http.route", named.route.clone()),
        KeyValue::str("network.protocol.name", "http"),
        KeyValue::str("network.protocol.version", version(req.version)),
        KeyValue::str("network.transport", "tcp"),
        KeyValue::str("network.peer.address", addrs.remote_ip.clone()),
        KeyValue::int("network.peer.port", addrs.remote.port() as i64),
    ]);
    for (header, attr) in &cfg.request_header_attributes {
        if let Some(v) = req.header(header).and_then(safe_header_value) {
            a.push(KeyValue::str(attr.clone(), v));
        }
    }
    // Baggage: only allowlisted keys survive (as `baggage.<key>`), and their values are
    // redacted like any value from traffic; a malformed header drops all of it.
    if !cfg.baggage_allowlist.is_empty() {
        let lines: Vec<&[u8]> = crate::protocols::http1::header_values(&req.headers, "baggage").collect();
        if !lines.is_empty() {
            if let Ok(items) =
                crate::traces::context::parse_baggage(&lines, |k| cfg.baggage_allowlist.iter().any(|a| a == k))
            {
                for (k, v) in items {
                    if let Some(v) = safe_header_value(v.as_bytes()) {
                        a.push(KeyValue::str(format!("baggage.{k}"), v));
                    }
                }
            }
        }
    }
    if cfg.record_user_agent {
        if let Some(v) = req.header("user-agent").and_then(safe_header_value) {
            a.push(KeyValue::str("user_agent.original", v));
        }
    }
    a
}

fn response_attributes(cfg: &TraceConfig, clock: &Clock, x: &HttpExchange, span: &mut SpanRecord) {
    let Some(resp) = &x.response else { return };
    // 0: an HTTP/2 `:status` that could not be decoded (joined mid-connection).
    if resp.status != 0 {
        span.attributes.push(KeyValue::int("http.response.status_code", resp.status as i64));
    }
    for (header, attr) in &cfg.response_header_attributes {
        if let Some(v) = resp.header(header).and_then(safe_header_value) {
            span.attributes.push(KeyValue::str(attr.clone(), v));
        }
    }
    // Risk signals exposed by model serving (Z6): the header's presence is the signal;
    // its name (minus the x-risk- prefix) names it. The value is never exported.
    for h in &cfg.risk_signal_headers {
        if resp.header(h).is_some() {
            let signal = h.strip_prefix("x-risk-").unwrap_or(h);
            span.events.push(SpanEvent {
                name: "risk_signal".into(),
                time_unix_ns: clock.to_unix_ns(resp.timing.first_exit_ns),
                attributes: vec![KeyValue::str("hoptrace.risk.signal", signal.to_string())],
            });
        }
    }
}

fn outcome_status(x: &HttpExchange, error_from: u16) -> Status {
    match (&x.response, x.outcome) {
        (Some(r), _) if r.status >= error_from => Status { code: StatusCode::Error, message: String::new() },
        (Some(_), Outcome::ClosedMidResponse) => {
            Status { code: StatusCode::Error, message: "connection closed mid-response".into() }
        }
        (None, _) => Status { code: StatusCode::Error, message: "connection closed before the response".into() },
        _ => Status::default(),
    }
}

/// A span with no events or links yet, its end never before its start: the one way
/// HTTP and messaging spans are put together.
#[allow(clippy::too_many_arguments)]
pub(super) fn span(
    kind: SpanKind,
    name: impl Into<Str>,
    resource: Arc<Resource>,
    ids: Ids,
    start: u64,
    end: u64,
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanRecord {
    SpanRecord {
        resource,
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent,
        trace_state: ids.trace_state,
        flags: ids.flags,
        origin: ids.origin,
        name: name.into(),
        kind,
        start_unix_ns: start,
        end_unix_ns: end.max(start),
        attributes,
        events: Vec::new(),
        links: Vec::new(),
        status,
    }
}

/// Server span: first request byte read → last response byte written.
pub fn server_span(
    cfg: &TraceConfig,
    clock: &Clock,
    x: &HttpExchange,
    named: Named,
    addrs: &Addrs,
    resource: Arc<Resource>,
    ids: Ids,
) -> SpanRecord {
    let mut attrs = common(cfg, &x.request, &named, addrs);
    attrs.push(KeyValue::str("server.address", addrs.local_ip.clone()));
    attrs.push(KeyValue::int("server.port", addrs.local.port() as i64));
    attrs.push(KeyValue::str("client.address", addrs.remote_ip.clone()));
    let start = clock.to_unix_ns(x.request.timing.first_exit_ns);
    finish(cfg, clock, x, SpanKind::Server, named.name, resource, ids, start, attrs, 500)
}

/// Identity of a span in its trace.
pub struct Ids {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// All zero for a root span.
    pub parent: SpanId,
    pub flags: u8,
    pub trace_state: String,
    pub origin: crate::model::span::TraceOrigin,
}

/// Common tail: end time (last response byte), status (errors from `error_from`), and
/// response attributes.
#[allow(clippy::too_many_arguments)]
fn finish(
    cfg: &TraceConfig,
    clock: &Clock,
    x: &HttpExchange,
    kind: SpanKind,
    name: Str,
    resource: Arc<Resource>,
    ids: Ids,
    start: u64,
    attrs: Vec<KeyValue>,
    error_from: u16,
) -> SpanRecord {
    let end = clock.to_unix_ns(x.response.as_ref().map_or(x.request.timing.last_exit_ns, |r| r.timing.last_exit_ns));
    let status = outcome_status(x, error_from);
    // HTTP/2 only (HTTP/1 pays one branch): the templated route, for the gRPC names.
    let route = x.h2.as_ref().and_then(|_| match attrs.get(1).map(|a| (&a.key, &a.value)) {
        Some((k, crate::model::span::AnyValue::Str(r))) if k == "url.path" => Some(r.clone()),
        _ => None,
    });
    let mut s = span(kind, name, resource, ids, start, end, attrs, status);
    response_attributes(cfg, clock, x, &mut s);
    if let Some(route) = route {
        h2_attributes(x, &route, kind, &mut s);
    }
    s
}

/// Client span: first request byte sent → last response byte received.
pub fn client_span(
    cfg: &TraceConfig,
    clock: &Clock,
    x: &HttpExchange,
    named: Named,
    addrs: &Addrs,
    resource: Arc<Resource>,
    ids: Ids,
) -> SpanRecord {
    let mut attrs = common(cfg, &x.request, &named, addrs);
    // HTTP/2 carries the host in `:authority` (a `host` field is optional there).
    let host = x.request.header("host").or_else(|| x.request.header(":authority")).and_then(safe_header_value);
    let host_name = host.as_deref().map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n).to_string());
    let server_address = host_name.map_or_else(|| addrs.remote_ip.clone(), Str::from);
    attrs.push(KeyValue::str("server.address", server_address));
    attrs.push(KeyValue::int("server.port", addrs.remote.port() as i64));
    let start = clock.to_unix_ns(x.request.timing.first_enter_ns);
    finish(cfg, clock, x, SpanKind::Client, named.name, resource, ids, start, attrs, 400)
}

/// The server of a client span known only by its address (a failed connect, a message
/// broker): it is both the server and the network peer, over TCP.
pub(super) fn remote_server_attributes(remote: SocketAddr) -> [KeyValue; 5] {
    [
        KeyValue::str("server.address", ip_string(remote.ip())),
        KeyValue::int("server.port", remote.port() as i64),
        KeyValue::str("network.peer.address", ip_string(remote.ip())),
        KeyValue::int("network.peer.port", remote.port() as i64),
        KeyValue::str("network.transport", "tcp"),
    ]
}

/// A connection attempt that failed: an error CLIENT span named after what was tried.
pub fn connect_failed_span(
    addrs: &Addrs,
    resource: Arc<Resource>,
    ids: Ids,
    time: u64,
    error: &'static str,
) -> SpanRecord {
    let mut attrs = Vec::from(remote_server_attributes(addrs.remote));
    attrs.push(KeyValue::str("error.type", error));
    let status = Status { code: StatusCode::Error, message: format!("connect failed: {error}") };
    span(SpanKind::Client, "connect", resource, ids, time, time, attrs, status)
}

#[cfg(test)]
mod tests {
    use crate::policy::redact::Redactor;

    fn route_template(t: &[u8]) -> String {
        super::route_template(t, &Redactor::default())
    }

    #[test]
    fn ip_string_matches_display() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        for v4 in [[0, 0, 0, 0], [127, 0, 0, 1], [10, 99, 100, 255], [192, 168, 1, 20], [255, 255, 255, 255]] {
            let ip = IpAddr::V4(Ipv4Addr::from(v4));
            assert_eq!(super::ip_string(ip), ip.to_string());
        }
        for x in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(x, x, 7, x));
            assert_eq!(super::ip_string(ip), ip.to_string());
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(super::ip_string(v6), "::1");
    }

    #[test]
    fn routes_are_templated_and_queries_dropped() {
        assert_eq!(route_template(b"/customers/12345/orders?token=abc"), "/customers/{id}/orders");
        assert_eq!(route_template(b"/users/550e8400-e29b-41d4-a716-446655440000"), "/users/{id}");
        assert_eq!(route_template(b"/api/v2/predict"), "/api/v2/predict");
        assert_eq!(route_template(b"/mail/joao@example.com"), "/mail/{email}");
        assert_eq!(route_template(b"/cpf/529.982.247-25/x"), "/cpf/{cpf}/x");
        assert_eq!(route_template(b"/cards/4111111111111111"), "/cards/{card_number}");
        assert_eq!(route_template(b"/files/deadbeefcafe0123"), "/files/{id}");
        assert_eq!(route_template(b"http://svc:8080/a/1?x"), "/a/{id}");
        assert_eq!(route_template(b"*"), "/");
        assert_eq!(route_template(b"/"), "/");
    }

    /// The recorded grpcio calls (protocols/testdata/http2_grpc.*) as spans: rpc.* attributes,
    /// `Service/Method` names, HTTP/2 version, and the status per side by the semantic
    /// conventions (NOT_FOUND: an error for the client, not for the server).
    #[test]
    fn grpc_exchanges_become_rpc_spans() {
        use std::sync::Arc;

        use hoptrace_common::{Direction, Role};

        use super::{client_span, server_span, Addrs, Ids, Named};
        use crate::capture::stream::Segment;
        use crate::model::span::{AnyValue, Resource, StatusCode, Str, TraceOrigin};
        use crate::protocols::{self, L7Event};
        use crate::traces::TraceConfig;
        use crate::util::clock::Clock;

        let seg = |b: &[u8]| Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: b.to_vec() };
        let c = include_bytes!("../protocols/testdata/http2_grpc.c2s");
        let s = include_bytes!("../protocols/testdata/http2_grpc.s2c");
        let mut p = protocols::detect(Role::Server, Direction::Ingress, c).expect("http2");
        let mut out = Vec::new();
        p.feed(Direction::Ingress, &[seg(c)], &mut out);
        p.feed(Direction::Egress, &[seg(s)], &mut out);
        let ip = Str::from("127.0.0.1");
        let addrs = Addrs {
            local: "127.0.0.1:50051".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            local_ip: ip.clone(),
            remote_ip: ip,
        };
        let ids = || Ids {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: [0; 8],
            flags: 1,
            trace_state: String::new(),
            origin: TraceOrigin::Agent,
        };
        let (cfg, clock, res) = (TraceConfig::default(), Clock::now(), Arc::new(Resource::default()));
        let mut seen = Vec::new();
        for ev in out {
            let L7Event::Http(x) = ev else { continue };
            let route = Str::from(String::from_utf8_lossy(x.request.target()).into_owned());
            let named = || Named { route: route.clone(), name: Str::from("POST route") };
            let server = server_span(&cfg, &clock, &x, named(), &addrs, res.clone(), ids());
            let client = client_span(&cfg, &clock, &x, named(), &addrs, res.clone(), ids());
            let get = |sp: &crate::model::span::SpanRecord, k: &str| {
                sp.attributes.iter().find(|a| a.key == k).map(|a| match &a.value {
                    AnyValue::Str(v) => v.to_string(),
                    AnyValue::Int(v) => v.to_string(),
                    other => format!("{other:?}"),
                })
            };
            for sp in [&server, &client] {
                assert_eq!(get(sp, "rpc.system").as_deref(), Some("grpc"));
                assert_eq!(get(sp, "rpc.service").as_deref(), Some("hoptrace.test.Greeter"));
                assert_eq!(get(sp, "network.protocol.version").as_deref(), Some("2"));
            }
            seen.push((
                server.name.to_string(),
                get(&server, "rpc.method").unwrap(),
                get(&server, "rpc.grpc.status_code").unwrap(),
                server.status.code == StatusCode::Error,
                client.status.code == StatusCode::Error,
                get(&server, "hoptrace.rpc.response.messages").unwrap(),
            ));
        }
        let row = |m: &str, code: &str, client_error, msgs: &str| {
            (
                format!("hoptrace.test.Greeter/{m}"),
                m.to_string(),
                code.to_string(),
                false,
                client_error,
                msgs.to_string(),
            )
        };
        assert_eq!(
            seen,
            vec![row("SayHello", "0", false, "1"), row("Missing", "5", true, "0"), row("Count", "0", false, "3")]
        );
        assert!(super::grpc_is_error(14, crate::model::span::SpanKind::Server));
        assert!(!super::grpc_is_error(1, crate::model::span::SpanKind::Server));
    }
}
