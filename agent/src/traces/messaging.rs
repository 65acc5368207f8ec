//! Message-queue operations → PRODUCER / CONSUMER spans, for every protocol alike (AMQP,
//! NATS, Kafka: parsers report [`MqOperation`]s, this module never looks at a wire format).
//!
//! * Publish → PRODUCER span. Parent: the inbound request the publishing thread was
//!   serving (the pipeline's thread linking, exactly as for HTTP client calls), else the
//!   message's own valid `traceparent` (an SDK in the publisher made it), else a new trace.
//! * Receive of one message → CONSUMER span whose parent is the message's context (or a
//!   new trace). Receive of several (a batch) → one CONSUMER span in a new trace with a
//!   Link to each message's context, and `messaging.batch.message_count`.
//! * A publish without context while the thread serves a traced request, and a message
//!   consumed without context, are `mq_message_without_context` gaps.
//! * Processes that instrument themselves get no duplicate spans (same rule as HTTP), but
//!   their gaps are still judged.
//!
//! Privacy: names are redacted like routes (`destination_template`), sizes are numbers;
//! the parsers already dropped bodies, keys and every header but the trace context.

use crate::{
    capture::conntrack::Connection,
    gaps::GapKind,
    model::span::{KeyValue, SpanKind, SpanLink, SpanRecord, Status, StatusCode},
    policy::redact::{Field, Redactor},
    protocols::{MqKind, MqMessage, MqOperation},
    traces::context,
};

use super::{http, judge::mark_gap, Call, ConnView, Ctx, SpanSink, TracePipeline};

/// Most links put on one batch span (the rest are counted in `hoptrace.links.dropped`).
const MAX_LINKS: usize = 128;

/// A destination (exchange, subject, topic) with identifiers and PII replaced, segment by
/// segment (`.`, `/`, `:` separate segments): `orders.created` stays,
/// `orders.4711.created` becomes `orders.{id}.created`, `notify/joao@example.com` becomes
/// `notify/{email}`. The detectors run over the whole name first, so a value
/// that itself contains separators (an e-mail address) is replaced whole. A name past
/// [`Field::Destination`]'s cap is `{capped}`, never scanned.
pub fn destination_template(dest: &str, redactor: &Redactor) -> String {
    let text = redactor.redact_field(Field::Destination, dest).text;
    let mut out = String::with_capacity(text.len());
    let mut seg = String::new();
    let flush = |seg: &mut String, out: &mut String| {
        if !seg.is_empty() {
            let detected = crate::policy::redact::Detector::ALL
                .iter()
                .find(|d| seg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) == Some(d.name()));
            match detected {
                Some(d) => {
                    out.push('{');
                    out.push_str(d.path_placeholder());
                    out.push('}');
                }
                // A configured pattern's placeholder.
                None if seg.starts_with('{') && seg.ends_with('}') => out.push_str(seg),
                None if is_plain(seg) => out.push_str(seg),
                None => out.push_str("{id}"),
            }
        }
        seg.clear();
    };
    for ch in text.chars() {
        if matches!(ch, '.' | '/' | ':') {
            flush(&mut seg, &mut out);
            out.push(ch);
        } else {
            seg.push(ch);
        }
    }
    flush(&mut seg, &mut out);
    out
}

/// A name segment kept as is: a word with at most two digits (`orders`, `v2`, `q1`),
/// or a NATS wildcard.
fn is_plain(seg: &str) -> bool {
    seg == "*"
        || seg == ">"
        || (seg.len() <= 48
            && seg.bytes().filter(u8::is_ascii_digit).count() <= 2
            && seg.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// `messaging.operation.type`: `send` for publishes, `receive` for pulls (AMQP basic.get,
/// Kafka fetch), `process` for pushes (AMQP basic.deliver, NATS MSG/HMSG).
fn operation_type(op: &MqOperation) -> &'static str {
    match (op.kind, op.operation_name) {
        (MqKind::Publish, _) => "send",
        (MqKind::Receive, "get" | "fetch" | "Fetch") => "receive",
        (MqKind::Receive, _) => "process",
    }
}

/// A message's valid trace context with its tracestate; `Err(reason)` when it carried an
/// invalid one, `Ok(None)` when none.
fn message_context(m: &MqMessage) -> Result<Option<(context::TraceParent, String)>, &'static str> {
    let Some(tp) = &m.traceparent else {
        return Ok(None);
    };
    let tp = context::parse_traceparent(tp).map_err(|e| e.reason())?;
    let lines: Vec<&[u8]> = m.tracestate.iter().map(Vec::as_slice).collect();
    let state = context::parse_tracestate(&lines).unwrap_or_default();
    Ok(Some((tp, state)))
}

impl TracePipeline {
    /// Entry point from `handle_events`.
    pub(super) fn messaging(&mut self, conn: &Connection, op: MqOperation, sink: &mut dyn SpanSink) {
        // The broker is not a messaging service: its end of a connection is not traced,
        // whatever a parser reports (they are meant to stay silent there).
        if conn.role == hoptrace_common::Role::Server {
            *self.stats.parse_errors.entry(format!("{}/operation_on_broker_side", op.system)).or_default() += 1;
            return;
        }
        *self.stats.mq_operations.entry(op.system).or_default() += 1;
        match op.kind {
            MqKind::Publish => {
                let view = ConnView::of(conn);
                // A publish with its own context while serving nothing: the process makes
                // trace context itself (an SDK), like an HTTP call with a fresh traceparent.
                let own = op.messages.iter().any(|m| matches!(message_context(m), Ok(Some(_))));
                let tid = op.timing.first_tid;
                let busy_thread = self.was_serving((view.pid, tid), op.timing.first_enter_ns);
                if own
                    && !busy_thread
                    && !self.busy.keys().any(|(pid, _)| *pid == view.pid)
                    && !self.instrumented.contains_key(&view.pid)
                {
                    self.mark_instrumented(view.pid, super::Instrumented::CreatesContext);
                }
                match self.py_owner(conn, op.timing.first_enter_ns) {
                    super::pylink::ByContext::Owned(owner) => self.py_call(owner, view, Call::Mq(op), sink),
                    super::pylink::ByContext::Unowned if !own => self.py_unowned(view, Call::Mq(op), sink),
                    _ => self.client_call(view, tid, Call::Mq(op), sink),
                }
            }
            MqKind::Receive => self.receive(conn, op, sink),
        }
    }

    /// The gap of a publish made while serving an inbound request (`traced`: it carried
    /// context): judged when that request completes.
    pub(super) fn publish_gap(&mut self, op: &MqOperation, traced: bool) -> Option<GapKind> {
        let without = op.messages.iter().any(|m| !matches!(message_context(m), Ok(Some(_))));
        (traced && without).then_some(GapKind::MqMessageWithoutContext)
    }

    /// Records an `mq_message_without_context` gap for `view`'s service.
    fn mq_gap(&mut self, view: &ConnView, name: &str, trace: &str, span: &str, detail: &str) {
        let (service, zone) = self.service_zone(view.pid, &view.comm);
        let broker = self.callee_name(view);
        self.record_gap(GapKind::MqMessageWithoutContext, &service, &zone, &broker, name, trace, span, detail);
    }

    /// A PRODUCER span (from `emit_call`): `parent` is the serving request's span when
    /// the thread linking found one, `gap` what `server_exchange` judged.
    pub(super) fn emit_publish(
        &mut self,
        op: MqOperation,
        view: &ConnView,
        parent: Option<Ctx>,
        unresolved: Option<&'static str>,
        gap: Option<GapKind>,
        sink: &mut dyn SpanSink,
    ) {
        if self.cfg.suppress_instrumented && self.is_instrumented(view.pid) {
            self.stats.spans_suppressed_instrumented += 1;
            return;
        }
        let own = op.messages.first().and_then(|m| message_context(m).ok().flatten());
        let linked = parent.is_some();
        let ctx = match (parent, own) {
            (Some(p), _) => p,
            (None, Some((tp, state))) => Ctx::remote(&tp, state),
            (None, None) => self.new_trace(),
        };
        let span_id = self.ids.span_id();
        let mut span = self.mq_span(&op, view, SpanKind::Producer, ctx.ids(span_id));
        self.mark_parent_link(&mut span, linked, unresolved, gap);
        self.stats.spans_producer += 1;
        self.submit(span, sink);
    }

    fn receive(&mut self, conn: &Connection, op: MqOperation, sink: &mut dyn SpanSink) {
        let view = ConnView::of(conn);
        let contexts: Vec<Result<Option<(context::TraceParent, String)>, &'static str>> =
            op.messages.iter().map(message_context).collect();
        let single = op.messages.len() == 1;
        let ctx = match contexts.first() {
            Some(Ok(Some((tp, state)))) if single => Ctx::remote(tp, state.clone()),
            _ => self.new_trace(),
        };
        let span_id = self.ids.span_id();
        let (trace_hex, span_hex) = (crate::model::span::hex(&ctx.trace_id), crate::model::span::hex(&span_id));
        let mut span = self.mq_span(&op, &view, SpanKind::Consumer, ctx.ids(span_id));
        // Every message consumed without (valid) context is a gap of the consumer's.
        let mut gap = false;
        for c in &contexts {
            let detail = match c {
                Ok(Some(_)) => continue,
                Ok(None) => "",
                Err(reason) => {
                    *self.stats.invalid_context.entry(reason).or_default() += 1;
                    reason
                }
            };
            gap = true;
            self.mq_gap(&view, &span.name, &trace_hex, &span_hex, detail);
        }
        if gap {
            mark_gap(&mut span, GapKind::MqMessageWithoutContext);
        }
        if !single {
            let mut dropped = 0i64;
            for c in contexts.into_iter().flatten().flatten() {
                if span.links.len() >= MAX_LINKS {
                    dropped += 1;
                    continue;
                }
                span.links.push(SpanLink {
                    trace_id: c.0.trace_id,
                    span_id: c.0.parent_id,
                    trace_state: c.1,
                    attributes: Vec::new(),
                });
            }
            if dropped > 0 {
                span.attributes.push(KeyValue::int("hoptrace.links.dropped", dropped));
            }
        }
        if self.cfg.suppress_instrumented && self.is_instrumented(view.pid) {
            self.stats.spans_suppressed_instrumented += 1;
            return;
        }
        self.stats.spans_consumer += 1;
        self.submit(span, sink);
    }

    /// `"{operation} {destination}"` (just the operation when the destination is empty or
    /// the operation spans several), and the templated destination when there is one.
    pub(super) fn mq_span_name(&self, op: &MqOperation) -> (String, Option<String>) {
        let dests: std::collections::BTreeSet<&str> = op.messages.iter().map(|m| m.destination.as_str()).collect();
        let destination = match dests.first() {
            Some(d) if dests.len() == 1 => Some(destination_template(d, &self.redactor)),
            _ => None,
        };
        let name = match &destination {
            Some(d) if !d.is_empty() => format!("{} {d}", op.operation_name),
            _ => op.operation_name.to_string(),
        };
        (name, destination)
    }

    /// The span of one operation with the messaging semantic-convention attributes.
    fn mq_span(&mut self, op: &MqOperation, view: &ConnView, kind: SpanKind, ids: http::Ids) -> SpanRecord {
        let (name, destination) = self.mq_span_name(op);
        let mut attrs = vec![
            KeyValue::str("messaging.system", op.system),
            KeyValue::str("messaging.operation.type", operation_type(op)),
            KeyValue::str("messaging.operation.name", op.operation_name),
        ];
        if let Some(d) = &destination {
            attrs.push(KeyValue::str("messaging.destination.name", d.clone()));
        }
        if op.messages.len() == 1 {
            let m = &op.messages[0];
            attrs.push(KeyValue::int("messaging.message.body.size", m.body_size.min(i64::MAX as u64) as i64));
            if let Some(k) = m.routing_key.as_deref().filter(|k| !k.is_empty()) {
                attrs.push(KeyValue::str(
                    "messaging.rabbitmq.destination.routing_key",
                    destination_template(k, &self.redactor),
                ));
            }
            if let Some(o) = m.offset {
                attrs.push(KeyValue::int("messaging.kafka.offset", o));
            }
        } else {
            attrs.push(KeyValue::int("messaging.batch.message_count", op.messages.len() as i64));
        }
        let partitions: std::collections::BTreeSet<i32> = op.messages.iter().filter_map(|m| m.partition).collect();
        if partitions.len() == 1 {
            attrs.push(KeyValue::str(
                "messaging.destination.partition.id",
                partitions.first().copied().unwrap_or(0).to_string(),
            ));
        }
        attrs.extend(http::remote_server_attributes(view.remote));
        let status = match &op.error {
            Some(e) => {
                attrs.push(KeyValue::str("error.type", e.clone()));
                Status { code: StatusCode::Error, message: String::new() }
            }
            None => Status::default(),
        };
        let resource = self.resource_for(view.pid, &view.comm);
        let start = self.clock.to_unix_ns(op.timing.first_enter_ns);
        let end = self.clock.to_unix_ns(op.timing.last_exit_ns);
        http::span(kind, name, resource, ids, start, end, attrs, status)
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline on operations as the parsers report them (the parsers' own tests use
    //! bytes recorded from real clients).
    use hoptrace_common::{Direction, Role};

    use super::*;
    use crate::{
        capture::stream::Segment,
        model::span::{hex, AnyValue},
        protocols::{L7Event, Timing},
        resource::resolver::ResourceResolver,
        traces::TraceConfig,
    };

    const PID: u32 = 5151;
    const TID: u32 = 5152;
    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn conn(id: u64, role: Role, local: &str, remote: &str) -> Connection {
        crate::traces::tests::conn_of(PID, id, role, local, remote)
    }

    fn op(kind: MqKind, name: &'static str, at: u64, messages: Vec<MqMessage>) -> MqOperation {
        MqOperation {
            system: "rabbitmq",
            kind,
            operation_name: name,
            timing: Timing { first_tid: TID, first_enter_ns: at, first_exit_ns: at + 1, last_exit_ns: at + 2 },
            messages,
            error: None,
        }
    }

    fn msg(dest: &str, tp: Option<&[u8]>) -> MqMessage {
        MqMessage {
            destination: dest.into(),
            routing_key: Some("orders".into()),
            body_size: 12,
            traceparent: tp.map(<[u8]>::to_vec),
            ..MqMessage::default()
        }
    }

    fn pipeline() -> TracePipeline {
        TracePipeline::new(TraceConfig::default(), ResourceResolver::new(Vec::new(), Vec::new()))
    }

    fn attr<'a>(s: &'a SpanRecord, k: &str) -> Option<&'a AnyValue> {
        s.attributes.iter().find(|a| a.key == k).map(|a| &a.value)
    }

    fn seg(ts: u64, bytes: &[u8]) -> Vec<Segment> {
        vec![Segment::Data { offset: 0, ts_enter_ns: ts, ts_ns: ts + 1, tid: TID, bytes: bytes.to_vec() }]
    }

    /// A publish made while the thread serves a traced request: the request's child, and
    /// a gap because the message itself carries no context.
    #[test]
    fn publish_on_a_serving_thread_is_the_requests_child() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let server = conn(1, Role::Server, "127.0.0.1:8000", "127.0.0.1:50000");
        let broker = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:5672");
        let req = b"GET /publish HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        p.on_segments(&server, Direction::Ingress, &seg(10, req), &mut spans);
        p.handle_events(
            &broker,
            &mut vec![L7Event::Messaging(op(MqKind::Publish, "publish", 20, vec![msg("", None)]))],
            &mut spans,
        );
        assert!(spans.is_empty(), "held for its request");
        p.on_segments(
            &server,
            Direction::Egress,
            &seg(40, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut spans,
        );
        let srv = spans.iter().find(|s| s.kind == SpanKind::Server).expect("server");
        let prod = spans.iter().find(|s| s.kind == SpanKind::Producer).expect("producer");
        assert_eq!((prod.trace_id, prod.parent_span_id), (srv.trace_id, srv.span_id));
        assert_eq!(prod.name, "publish");
        assert_eq!(attr(prod, "messaging.operation.type"), Some(&AnyValue::Str("send".into())));
        assert_eq!(attr(prod, "hoptrace.gap.kind"), Some(&AnyValue::Str("mq_message_without_context".into())));
        assert_eq!(p.gaps.lock().unwrap().rows()[0].0.kind, GapKind::MqMessageWithoutContext);
    }

    /// Publishing with its own context while serving nothing: the process instruments
    /// itself; no duplicate PRODUCER span.
    #[test]
    fn publish_with_own_context_marks_the_process_instrumented() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let broker = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:5672");
        p.handle_events(
            &broker,
            &mut vec![L7Event::Messaging(op(MqKind::Publish, "publish", 20, vec![msg("", Some(TP))]))],
            &mut spans,
        );
        assert!(spans.is_empty());
        assert_eq!(p.stats.spans_suppressed_instrumented, 1);
        let cfg = TraceConfig { suppress_instrumented: false, ..TraceConfig::default() };
        let mut p = TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new()));
        p.handle_events(
            &broker,
            &mut vec![L7Event::Messaging(op(MqKind::Publish, "publish", 20, vec![msg("", Some(TP))]))],
            &mut spans,
        );
        assert_eq!(hex(&spans[0].trace_id), "4bf92f3577b34da6a3ce929d0e0e4736", "the message's own context");
        assert_eq!(hex(&spans[0].parent_span_id), "00f067aa0ba902b7");
    }

    #[test]
    fn single_receive_joins_the_message_trace_and_batches_link() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let broker = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:4222");
        let mut one = op(MqKind::Receive, "HMSG", 20, vec![msg("orders.4711.created", Some(TP))]);
        one.system = "nats";
        p.handle_events(&broker, &mut vec![L7Event::Messaging(one)], &mut spans);
        let c = &spans[0];
        assert_eq!(
            (c.kind, hex(&c.trace_id), hex(&c.parent_span_id)),
            (SpanKind::Consumer, "4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into())
        );
        assert_eq!(c.name, "HMSG orders.{id}.created", "destinations are templated like routes");
        assert_eq!(attr(c, "messaging.operation.type"), Some(&AnyValue::Str("process".into())));
        assert_eq!(attr(c, "messaging.message.body.size"), Some(&AnyValue::Int(12)));
        assert_eq!(p.stats.propagation_gaps, 0);

        let tp2 = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut with_state = msg("q", Some(tp2));
        with_state.tracestate = vec![b"mq=1".to_vec()];
        let batch = op(
            MqKind::Receive,
            "get",
            30,
            vec![msg("q", Some(TP)), with_state, msg("q", None), msg("q", Some(b"00-garbage"))],
        );
        p.handle_events(&broker, &mut vec![L7Event::Messaging(batch)], &mut spans);
        let b = &spans[1];
        assert!(b.is_root(), "a batch starts its own trace");
        assert_eq!(b.links.len(), 2);
        assert_eq!(
            (hex(&b.links[1].trace_id), b.links[1].trace_state.as_str()),
            ("0af7651916cd43dd8448eb211c80319c".into(), "mq=1")
        );
        assert_eq!(attr(b, "messaging.batch.message_count"), Some(&AnyValue::Int(4)));
        assert_eq!(attr(b, "messaging.operation.type"), Some(&AnyValue::Str("receive".into())));
        assert!(attr(b, "messaging.message.body.size").is_none());
        // The message without context and the one with a broken one: two gaps.
        assert_eq!(p.stats.propagation_gaps, 2);
        assert_eq!(p.stats.invalid_context.values().sum::<u64>(), 1);
    }

    #[test]
    fn several_destinations_name_the_operation_only_and_errors_are_errors() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let broker = conn(2, Role::Client, "127.0.0.1:50001", "127.0.0.1:9092");
        let mut fetch = op(MqKind::Receive, "fetch", 20, vec![msg("a", Some(TP)), msg("b", Some(TP))]);
        fetch.system = "kafka";
        fetch.error = Some("NOT_LEADER_OR_FOLLOWER".into());
        fetch.messages[0].partition = Some(3);
        fetch.messages[1].partition = Some(3);
        p.handle_events(&broker, &mut vec![L7Event::Messaging(fetch)], &mut spans);
        let s = &spans[0];
        assert_eq!(s.name, "fetch");
        assert!(attr(s, "messaging.destination.name").is_none());
        assert_eq!(attr(s, "messaging.destination.partition.id"), Some(&AnyValue::Str("3".into())));
        assert_eq!(attr(s, "error.type"), Some(&AnyValue::Str("NOT_LEADER_OR_FOLLOWER".into())));
        assert_eq!(s.status.code, StatusCode::Error);
    }

    #[test]
    fn the_broker_side_is_never_traced() {
        let mut p = pipeline();
        let mut spans: Vec<SpanRecord> = Vec::new();
        let broker_end = conn(3, Role::Server, "127.0.0.1:5672", "127.0.0.1:50001");
        p.handle_events(
            &broker_end,
            &mut vec![L7Event::Messaging(op(MqKind::Receive, "deliver", 20, vec![msg("", None)]))],
            &mut spans,
        );
        assert!(spans.is_empty());
        assert_eq!(p.stats.propagation_gaps, 0);
        assert_eq!(p.stats.parse_errors.get("rabbitmq/operation_on_broker_side"), Some(&1));
    }

    #[test]
    fn destinations_are_templated() {
        let r = Redactor::default();
        assert_eq!(destination_template("orders.created", &r), "orders.created");
        assert_eq!(destination_template("orders.*.>", &r), "orders.*.>");
        assert_eq!(destination_template("notify/joao@example.com", &r), "notify/{email}");
        // Dots are legal in an address: the detector takes the widest match, never less.
        assert!(!destination_template("user.joao@example.com.events", &r).contains("joao"));
        assert_eq!(destination_template("amq.gen-JzTY20BRgKO-HjmUJj0wLg", &r), "amq.{id}");
        assert_eq!(destination_template("", &r), "");
        // Past the cap: one placeholder, counted, never scanned.
        assert_eq!(destination_template(&"a.1".repeat(10_000), &r), "{capped}");
        assert_eq!(r.capped.get(Field::Destination), 1);
    }
}
