//! Exported strings that came from traffic but are neither mapped headers nor routes:
//! the `tracestate` of spans and links, the `Host` header (→ `server.address`),
//! `user_agent.original`, and the HTTP method. Each passes the same detectors as any
//! value from traffic before a span is queued, so personal data cannot leave by a side
//! door.
//!
//! Values that legitimately carry identifiers (a vendor's span id in `tracestate`, a
//! host name's digits) are scanned for personal data and secrets only
//! ([`Redactor::redact_personal`]).

use hashbrown::HashMap;

use crate::{
    model::span::{AnyValue, SpanRecord, Str},
    policy::redact::{Detector, Field, Redactor},
};

/// Distinct values remembered per field, at most; full, the cache starts over.
const CACHE_MAX: usize = 4096;
/// Longer values are scanned every time: below every side door's cap, so a cached value
/// was never capped (and capping, which counts, runs for every capped value).
const CACHE_VALUE_MAX: usize = 256;

/// What the detectors made of a value: its replacement and hits, `None` when clean.
type Verdict = Option<(Str, Vec<(Detector, usize)>)>;

/// Side-door verdicts for `Host` and `User-Agent` values, which repeat on almost every
/// request: scanning them with every detector was 8k instructions per request, a lookup
/// is about a hundred. Bounded; values only, in memory.
#[derive(Default)]
pub(super) struct ScrubCache {
    host: HashMap<Box<str>, Verdict>,
    header: HashMap<Box<str>, Verdict>,
}

impl ScrubCache {
    fn verdict(&mut self, redactor: &Redactor, field: Field, v: &str) -> Verdict {
        let scan = || {
            let r = redactor.redact_personal(field, v);
            r.changed().then(|| (Str::from(r.text), r.hits))
        };
        if v.len() > CACHE_VALUE_MAX {
            return scan();
        }
        let map = if field == Field::Host { &mut self.host } else { &mut self.header };
        if let Some(verdict) = map.get(v) {
            return verdict.clone();
        }
        let verdict = scan();
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(v.into(), verdict.clone());
        verdict
    }
}

/// The methods semantic conventions name (`http.request.method`); any other becomes
/// [`OTHER_METHOD`], plus the configured extras.
pub const KNOWN_METHODS: [&str; 10] =
    ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"];
/// Semantic conventions' value for a method outside the known set.
pub const OTHER_METHOD: &str = "_OTHER";

/// Every side door of `span`; detector hits are added to `hits`.
pub(super) fn scrub(
    redactor: &Redactor,
    cache: &mut ScrubCache,
    extra_methods: &[String],
    span: &mut SpanRecord,
    hits: &mut Vec<(Detector, usize)>,
) {
    scrub_trace_state(redactor, &mut span.trace_state, hits);
    for link in &mut span.links {
        scrub_trace_state(redactor, &mut link.trace_state, hits);
    }
    let mut method_renamed = None;
    for attr in &mut span.attributes {
        let AnyValue::Str(v) = &attr.value else { continue };
        match attr.key.as_str() {
            "server.address" | "user_agent.original" => {
                let field = if attr.key == "server.address" { Field::Host } else { Field::HeaderValue };
                if let Some((text, found)) = cache.verdict(redactor, field, v) {
                    attr.value = AnyValue::Str(text);
                    hits.extend(found);
                }
            }
            "http.request.method" if !known_method(v, extra_methods) => {
                method_renamed = Some(std::mem::replace(&mut attr.value, AnyValue::Str(OTHER_METHOD.into())));
            }
            _ => {}
        }
    }
    // The name is `{method} {route}`; for an unknown method semantic conventions say `HTTP`.
    if let Some(AnyValue::Str(original)) = method_renamed {
        span.name = match span.name.strip_prefix(original.as_str()) {
            Some(rest) => format!("HTTP{rest}").into(),
            None => "HTTP".into(),
        };
    }
}

fn known_method(m: &str, extra: &[String]) -> bool {
    KNOWN_METHODS.contains(&m) || extra.iter().any(|e| e == m)
}

/// Drops every `tracestate` member a personal-data detector hits, or that is past
/// [`Field::TraceState`]'s cap (counted there); the others stay, in order.
fn scrub_trace_state(redactor: &Redactor, ts: &mut String, hits: &mut Vec<(Detector, usize)>) {
    if ts.is_empty() {
        return;
    }
    let mut kept = String::new();
    let mut dropped = false;
    for member in ts.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let r = redactor.redact_personal(Field::TraceState, member);
        if r.changed() {
            dropped = true;
            hits.extend(r.hits);
            continue;
        }
        if !kept.is_empty() {
            kept.push(',');
        }
        kept.push_str(member);
    }
    if dropped {
        *ts = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::{KeyValue, SpanKind, SpanLink};

    fn span(method: &str, host: &str, trace_state: &str) -> SpanRecord {
        SpanRecord {
            resource: Default::default(),
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: [0; 8],
            trace_state: trace_state.into(),
            flags: 1,
            origin: Default::default(),
            name: format!("{method} /items/{{id}}").into(),
            kind: SpanKind::Client,
            start_unix_ns: 1,
            end_unix_ns: 2,
            attributes: vec![
                KeyValue::str("http.request.method", method.to_string()),
                KeyValue::str("server.address", host.to_string()),
                KeyValue::str("url.path", "/items/{id}"),
            ],
            events: Vec::new(),
            links: vec![SpanLink {
                trace_id: [3; 16],
                span_id: [4; 8],
                trace_state: trace_state.into(),
                attributes: Vec::new(),
            }],
            status: Default::default(),
        }
    }

    fn attr<'a>(s: &'a SpanRecord, k: &str) -> &'a str {
        match &s.attributes.iter().find(|a| a.key == k).unwrap().value {
            AnyValue::Str(v) => v,
            v => panic!("{k}: {v:?}"),
        }
    }

    #[test]
    fn tracestate_members_with_personal_data_are_dropped_ids_kept() {
        let r = Redactor::default();
        let mut s =
            span("GET", "api-2.example.com", "rojo=00f067aa0ba902b7,acme=maria@x.com,congo=t61rcWkgMzE,dd=s:1;t.dm:-0");
        let mut hits = Vec::new();
        scrub(&r, &mut ScrubCache::default(), &[], &mut s, &mut hits);
        assert_eq!(s.trace_state, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,dd=s:1;t.dm:-0");
        assert_eq!(s.links[0].trace_state, s.trace_state);
        assert_eq!(hits, vec![(Detector::Email, 1), (Detector::Email, 1)]);
        // Nothing personal: untouched (and the host name's digits stay).
        assert_eq!(attr(&s, "server.address"), "api-2.example.com");
        let mut clean = span("GET", "10.0.0.7", "rojo=00f067aa0ba902b7");
        scrub(&r, &mut ScrubCache::default(), &[], &mut clean, &mut hits);
        assert_eq!((clean.trace_state.as_str(), attr(&clean, "server.address")), ("rojo=00f067aa0ba902b7", "10.0.0.7"));
    }

    #[test]
    fn a_tracestate_member_past_its_cap_is_dropped_and_counted() {
        let r = Redactor::default();
        let mut s = span("GET", "h", &format!("a=1,big={},b=2", "v".repeat(600)));
        scrub(&r, &mut ScrubCache::default(), &[], &mut s, &mut Vec::new());
        assert_eq!(s.trace_state, "a=1,b=2");
        assert_eq!(r.capped.get(Field::TraceState), 2, "the span's and the link's");
    }

    #[test]
    fn host_and_user_agent_pass_the_personal_detectors() {
        let r = Redactor::default();
        let mut s = span("GET", "maria@x.com", "");
        s.attributes.push(KeyValue::str("user_agent.original", "curl/8.5.0 (cpf 111.444.777-35)"));
        let mut hits = Vec::new();
        scrub(&r, &mut ScrubCache::default(), &[], &mut s, &mut hits);
        assert_eq!(attr(&s, "server.address"), "{email}");
        assert_eq!(attr(&s, "user_agent.original"), "curl/8.5.0 (cpf {cpf})");
        assert_eq!(hits, vec![(Detector::Email, 1), (Detector::Cpf, 1)]);
        let mut long = span("GET", &"h".repeat(300), "");
        scrub(&r, &mut ScrubCache::default(), &[], &mut long, &mut hits);
        assert_eq!(attr(&long, "server.address"), "{capped}");
    }

    #[test]
    fn unknown_methods_become_other_and_never_reach_the_name() {
        let r = Redactor::default();
        for m in KNOWN_METHODS {
            let mut s = span(m, "h", "");
            scrub(&r, &mut ScrubCache::default(), &[], &mut s, &mut Vec::new());
            assert_eq!((attr(&s, "http.request.method"), s.name.to_string()), (m, format!("{m} /items/{{id}}")));
        }
        let mut s = span("MARIA_SILVA", "h", "");
        scrub(&r, &mut ScrubCache::default(), &[], &mut s, &mut Vec::new());
        assert_eq!((attr(&s, "http.request.method"), s.name.as_str()), (OTHER_METHOD, "HTTP /items/{id}"));
        // Case matters: methods are case-sensitive tokens.
        let mut s = span("get", "h", "");
        scrub(&r, &mut ScrubCache::default(), &[], &mut s, &mut Vec::new());
        assert_eq!(attr(&s, "http.request.method"), OTHER_METHOD);
        // Configured extras are kept.
        let mut s = span("PROPFIND", "h", "");
        scrub(&r, &mut ScrubCache::default(), &["PROPFIND".into()], &mut s, &mut Vec::new());
        assert_eq!((attr(&s, "http.request.method"), s.name.as_str()), ("PROPFIND", "PROPFIND /items/{id}"));
    }

    /// A repeated value is answered from the cache with the same replacement and hits, so
    /// every span is redacted and counted alike.
    #[test]
    fn repeated_values_get_the_same_verdict_from_the_cache() {
        let r = Redactor::default();
        let mut cache = ScrubCache::default();
        for _ in 0..3 {
            let mut s = span("GET", "maria@example.com", "");
            let mut hits = Vec::new();
            scrub(&r, &mut cache, &[], &mut s, &mut hits);
            assert_eq!(attr(&s, "server.address"), "{email}");
            assert_eq!(hits.len(), 1, "{hits:?}");
        }
        assert_eq!(cache.host.len(), 1);
    }
}
