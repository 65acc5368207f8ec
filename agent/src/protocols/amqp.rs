//! AMQP 0-9-1 (RabbitMQ), client side of a broker connection.
//!
//! A connection is recognised by the protocol header the client sends first
//! (`AMQP\0\0\x09\x01`). Frames are reassembled across syscalls (a syscall may also carry
//! several frames); body frames are skipped by their size and never stored. What comes
//! out:
//!
//! * `basic.publish` + its content header (egress) → one Publish operation per message;
//! * `basic.deliver` / `basic.get-ok` + content header (ingress) → the messages completed
//!   by one read syscall form one Receive operation (several = a batch).
//!
//! Content frames belong to the method last seen on the same channel. Of the content
//! header only the body size and, from the `headers` field table, `traceparent` and
//! `tracestate` are kept; the table is walked value by value (nested tables and arrays
//! included) so every other value is skipped unread.
//!
//! The broker's side of a connection is recognised too, and ignored: the broker is not a
//! messaging service of its own.
//!
//! A gap in the captured stream inside a body frame is harmless (the body is skipped
//! anyway); anywhere else the frame boundaries are lost and that direction is given up
//! (counted as `amqp/gap_lost_sync`).

use std::collections::HashMap;

use hoptrace_common::{Direction, Role};

use super::{
    mq_common::{timing, ClientConnection, ReceiveBatch, SegmentReader, Syscall},
    L7Event, MqKind, MqMessage, MqOperation, Protocol,
};
use crate::capture::stream::Segment;

pub const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
const NAME: &str = "amqp";
const SYSTEM: &str = "rabbitmq";
/// Largest method or content-header frame kept to parse (RabbitMQ's default frame_max is
/// 128 KiB); larger ones are skipped and counted.
const MAX_FRAME: usize = 256 * 1024;
const FRAME_END: u8 = 0xCE;
/// Channels with a method waiting for its content header, per direction.
const MAX_PENDING_CHANNELS: usize = 2048;
/// Nesting of field tables/arrays walked before the table is declared malformed.
const MAX_DEPTH: usize = 16;

pub fn detect(role: Role, direction: Direction, first_bytes: &[u8]) -> Option<Box<dyn Protocol>> {
    if !first_bytes.starts_with(PROTOCOL_HEADER) {
        return None;
    }
    // The protocol header travels client → broker.
    match (role, direction) {
        (Role::Client | Role::Unknown, Direction::Egress) => Some(Box::new(Amqp::new(true))),
        (Role::Server | Role::Unknown, Direction::Ingress) => Some(Box::new(Amqp::new(false))),
        _ => None,
    }
}

/// A method waiting for its content header on one channel.
struct Pending {
    kind: MqKind,
    name: &'static str,
    exchange: String,
    routing_key: String,
    start: Syscall,
}

#[derive(Default)]
struct Reader {
    /// Bytes of a method or header frame not complete yet (bounded by `MAX_FRAME`).
    buf: Vec<u8>,
    /// Syscall that carried `buf[0]`.
    buf_start: Syscall,
    /// Bytes still to skip: the rest of a body or heartbeat frame (payload + frame end),
    /// or of an oversized frame.
    skip: u64,
    /// Egress only: the 8-byte protocol header has not been consumed yet.
    expect_protocol_header: bool,
    /// Sync lost (gap, garbage): nothing more is parsed in this direction.
    dead: bool,
    pending: HashMap<u16, Pending>,
    batch: ReceiveBatch,
}

pub struct Amqp(ClientConnection<Reader>);

impl Amqp {
    fn new(client: bool) -> Self {
        Self(ClientConnection::new(
            client,
            Reader { expect_protocol_header: true, ..Reader::default() },
            Reader::default(),
        ))
    }
}

impl Protocol for Amqp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        self.0.feed(direction, segments, out);
    }

    fn close(&mut self, out: &mut Vec<L7Event>) {
        for r in self.0.close().into_iter().flatten() {
            if !r.pending.is_empty() {
                out.push(L7Event::ParseError { protocol: NAME, reason: "method_without_content_at_close" });
                r.pending.clear();
            }
        }
    }
}

fn err(reason: &'static str) -> L7Event {
    L7Event::ParseError { protocol: NAME, reason }
}

impl SegmentReader for Reader {
    fn segment(&mut self, seg: &Segment, out: &mut Vec<L7Event>) {
        if self.dead {
            return;
        }
        let (mut data, now) = match seg {
            Segment::Data { bytes, ts_enter_ns, ts_ns, tid, .. } => {
                (bytes.as_slice(), Syscall { tid: *tid, enter_ns: *ts_enter_ns, exit_ns: *ts_ns })
            }
            Segment::Gap { len, .. } => {
                // Lost bytes inside a frame being skipped cost nothing.
                if self.buf.is_empty() && !self.expect_protocol_header && *len <= self.skip {
                    self.skip -= len;
                } else {
                    self.give_up(out, "gap_lost_sync");
                }
                return;
            }
        };
        while !data.is_empty() && !self.dead {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.buf.is_empty() {
                self.buf_start = now;
            }
            // Only what the current frame needs is buffered: its header first, then its
            // payload; body frames switch to skipping as soon as their header is known.
            let need = if self.expect_protocol_header {
                PROTOCOL_HEADER.len()
            } else if self.buf.len() < 7 {
                7
            } else {
                7 + frame_size(&self.buf) + 1
            };
            let take = (need - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < need {
                continue;
            }
            if self.expect_protocol_header {
                self.expect_protocol_header = false;
                if self.buf != PROTOCOL_HEADER {
                    self.give_up(out, "bad_protocol_header");
                }
                self.buf.clear();
                continue;
            }
            if self.buf.len() == 7 {
                self.frame_header(out);
                continue;
            }
            if !self.complete_frame(now, out) {
                break;
            }
        }
        self.batch.flush(SYSTEM, now, out);
    }
}

impl Reader {
    /// A frame's 7-byte header is buffered: keep method and content-header frames, skip
    /// bodies and heartbeats (and oversized frames, counted) without buffering them.
    fn frame_header(&mut self, out: &mut Vec<L7Event>) {
        let (ty, size) = (self.buf[0], frame_size(&self.buf));
        match ty {
            1 | 2 if size < MAX_FRAME => {}
            1 | 2 => {
                out.push(err("frame_too_large"));
                let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
                self.pending.remove(&channel);
                self.skip = size as u64 + 1;
                self.buf.clear();
            }
            3 | 8 => {
                self.skip = size as u64 + 1;
                self.buf.clear();
            }
            _ => self.give_up(out, "bad_frame_type"),
        }
    }

    /// A complete method or content-header frame is buffered; false when it is broken
    /// (the parser gave up).
    fn complete_frame(&mut self, now: Syscall, out: &mut Vec<L7Event>) -> bool {
        let frame = std::mem::take(&mut self.buf);
        if frame[frame.len() - 1] != FRAME_END {
            self.give_up(out, "bad_frame_end");
            return false;
        }
        let channel = u16::from_be_bytes([frame[1], frame[2]]);
        let payload = &frame[7..frame.len() - 1];
        let start = self.buf_start;
        if frame[0] == 1 {
            self.method(channel, payload, start, out);
        } else {
            self.content_header(channel, payload, now, out);
        }
        true
    }

    fn give_up(&mut self, out: &mut Vec<L7Event>, reason: &'static str) {
        out.push(err(reason));
        self.dead = true;
        self.buf = Vec::new();
        self.pending.clear();
    }

    fn method(&mut self, channel: u16, p: &[u8], start: Syscall, out: &mut Vec<L7Event>) {
        if p.len() < 4 {
            out.push(err("short_method"));
            return;
        }
        let (class, method) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
        let mut c = Cursor { b: &p[4..] };
        let parsed = match (class, method) {
            // basic.publish: reserved short, exchange, routing-key, bits.
            (60, 40) => (|| {
                c.take(2)?;
                Some((MqKind::Publish, "publish", c.shortstr()?, c.shortstr()?))
            })(),
            // basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key.
            (60, 60) => (|| {
                c.shortstr()?;
                c.take(9)?;
                Some((MqKind::Receive, "deliver", c.shortstr()?, c.shortstr()?))
            })(),
            // basic.get-ok: delivery-tag, redelivered, exchange, routing-key, message-count.
            (60, 71) => (|| {
                c.take(9)?;
                Some((MqKind::Receive, "get", c.shortstr()?, c.shortstr()?))
            })(),
            _ => return,
        };
        let Some((kind, name, exchange, routing_key)) = parsed else {
            out.push(err("short_method"));
            return;
        };
        if self.pending.len() >= MAX_PENDING_CHANNELS && !self.pending.contains_key(&channel) {
            out.push(err("too_many_channels"));
            return;
        }
        if self.pending.insert(channel, Pending { kind, name, exchange, routing_key, start }).is_some() {
            out.push(err("method_without_content"));
        }
    }

    fn content_header(&mut self, channel: u16, p: &[u8], now: Syscall, out: &mut Vec<L7Event>) {
        let Some(m) = self.pending.remove(&channel) else {
            // Content of a method this parser does not track (e.g. basic.return).
            return;
        };
        let mut msg = MqMessage { destination: m.exchange, routing_key: Some(m.routing_key), ..MqMessage::default() };
        if let Err(reason) = properties(p, &mut msg) {
            out.push(err(reason));
        }
        match m.kind {
            MqKind::Publish => out.push(L7Event::Messaging(MqOperation {
                system: SYSTEM,
                kind: MqKind::Publish,
                operation_name: m.name,
                timing: timing(m.start, now),
                messages: vec![msg],
                error: None,
            })),
            MqKind::Receive => {
                if !self.batch.push(SYSTEM, m.name, m.start, now, msg, out) {
                    out.push(err("batch_too_large"));
                }
            }
        }
    }
}

/// Size field of a frame header (type, channel, size).
fn frame_size(h: &[u8]) -> usize {
    u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
    }
    fn shortstr_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn shortstr(&mut self) -> Option<String> {
        self.shortstr_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn longstr(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Content header payload: class, weight, body size, property flags, properties. Only
/// the body size and the trace context of the `headers` table are read.
fn properties(p: &[u8], msg: &mut MqMessage) -> Result<(), &'static str> {
    let mut c = Cursor { b: p };
    c.take(4).ok_or("short_content_header")?;
    msg.body_size = c.u64().ok_or("short_content_header")?;
    let mut flags = c.u16().ok_or("short_content_header")?;
    let first = flags;
    // Bit 0 set: another flags word follows (never used by 0-9-1's basic class).
    while flags & 1 == 1 {
        flags = c.u16().ok_or("short_content_header")?;
    }
    // Properties in flag order from bit 15: content-type, content-encoding, headers.
    if first & (1 << 15) != 0 {
        c.shortstr_bytes().ok_or("short_content_header")?;
    }
    if first & (1 << 14) != 0 {
        c.shortstr_bytes().ok_or("short_content_header")?;
    }
    if first & (1 << 13) != 0 {
        let table = c.longstr().ok_or("short_content_header")?;
        trace_headers(table, msg)?;
    }
    Ok(())
}

/// Walks the `headers` field table, keeping `traceparent` and `tracestate` (string
/// values) and skipping every other value by its type.
fn trace_headers(table: &[u8], msg: &mut MqMessage) -> Result<(), &'static str> {
    let mut c = Cursor { b: table };
    while !c.b.is_empty() {
        let name = c.shortstr_bytes().ok_or("bad_field_table")?;
        let ty = c.u8().ok_or("bad_field_table")?;
        let value = skip_value(&mut c, ty, 0)?;
        let string = matches!(ty, b'S' | b'x');
        if string && name.eq_ignore_ascii_case(b"traceparent") {
            // Field names are unique in a table; a client that repeats one: first wins.
            if msg.traceparent.is_none() {
                msg.traceparent = Some(value[4..].to_vec());
            }
        } else if string && name.eq_ignore_ascii_case(b"tracestate") {
            msg.tracestate.push(value[4..].to_vec());
        }
    }
    Ok(())
}

/// Skips one field value of type `ty` (RabbitMQ's 0-9-1 type table, which real clients
/// use), returning its raw bytes.
fn skip_value<'a>(c: &mut Cursor<'a>, ty: u8, depth: usize) -> Result<&'a [u8], &'static str> {
    let fixed = match ty {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'u' | b'U' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'S' | b'x' | b'F' | b'A' => {
            let whole = c.b;
            let inner = c.longstr().ok_or("bad_field_table")?;
            if depth >= MAX_DEPTH {
                return Err("field_table_too_deep");
            }
            match ty {
                b'F' => {
                    let mut t = Cursor { b: inner };
                    while !t.b.is_empty() {
                        t.shortstr_bytes().ok_or("bad_field_table")?;
                        let ty = t.u8().ok_or("bad_field_table")?;
                        skip_value(&mut t, ty, depth + 1)?;
                    }
                }
                b'A' => {
                    let mut t = Cursor { b: inner };
                    while !t.b.is_empty() {
                        let ty = t.u8().ok_or("bad_field_table")?;
                        skip_value(&mut t, ty, depth + 1)?;
                    }
                }
                _ => {}
            }
            return Ok(&whole[..4 + inner.len()]);
        }
        _ => return Err("bad_field_type"),
    };
    c.take(fixed).ok_or("bad_field_table")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::mq_common::tests::{feed_split, feed_whole, no_errors, ops};

    const PUBLISH_SDK: &[u8] = include_bytes!("testdata/amqp_publish_sdk.c2s");
    const PUBLISH_SDK_BROKER: &[u8] = include_bytes!("testdata/amqp_publish_sdk.s2c");
    const CONSUME: &[u8] = include_bytes!("testdata/amqp_consume.s2c");
    const CONSUME_CLIENT: &[u8] = include_bytes!("testdata/amqp_consume.c2s");
    const GET: &[u8] = include_bytes!("testdata/amqp_get.s2c");

    fn client() -> Box<dyn Protocol> {
        detect(Role::Client, Direction::Egress, PUBLISH_SDK).expect("amqp client")
    }

    /// pika 1.4.4 publishing two messages with SDK-injected context and a nested private
    /// header table (recorded from a real RabbitMQ 3.10 connection).
    #[test]
    fn publish_with_trace_context_at_every_split() {
        for events in feed_split(client, Direction::Egress, PUBLISH_SDK) {
            no_errors(&events);
            let ops = ops(&events);
            assert_eq!(ops.len(), 2);
            for (i, op) in ops.iter().enumerate() {
                assert_eq!((op.system, op.kind, op.operation_name), ("rabbitmq", MqKind::Publish, "publish"));
                let m = &op.messages[..];
                assert_eq!(m.len(), 1);
                assert_eq!(m[0].destination, "");
                assert_eq!(m[0].routing_key.as_deref(), Some("q1"));
                assert_eq!(m[0].body_size, format!("message {i} SECRETMARK").len() as u64);
                let tp = String::from_utf8(m[0].traceparent.clone().unwrap()).unwrap();
                assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
                assert_eq!(m[0].tracestate, vec![b"mq=1".to_vec()]);
            }
            let dump = format!("{events:?}");
            assert!(!dump.contains("SECRETMARK"), "{dump}");
        }
        let mut p = client();
        let mut out = Vec::new();
        p.feed(Direction::Ingress, &feed_whole(PUBLISH_SDK_BROKER), &mut out);
        no_errors(&out);
        assert!(ops(&out).is_empty(), "the broker's answers (confirms) are no messages");
    }

    /// Two deliveries (prefetch 10) read at once are one operation; split, they are
    /// delivered as they complete and never lost.
    #[test]
    fn deliveries_in_one_read_are_one_batch() {
        let mut p = client();
        let mut out = Vec::new();
        p.feed(Direction::Egress, &feed_whole(CONSUME_CLIENT), &mut out);
        p.feed(Direction::Ingress, &feed_whole(CONSUME), &mut out);
        no_errors(&out);
        let o = ops(&out);
        assert_eq!(o.len(), 1, "{o:?}");
        assert_eq!((o[0].kind, o[0].operation_name, o[0].messages.len()), (MqKind::Receive, "deliver", 2));
        assert!(o[0].messages.iter().all(|m| m.traceparent.is_some() && m.routing_key.as_deref() == Some("q1")));
        for events in feed_split(client, Direction::Ingress, CONSUME) {
            no_errors(&events);
            let n: usize = ops(&events).iter().map(|o| o.messages.len()).sum();
            assert_eq!(n, 2);
            assert!(!format!("{events:?}").contains("SECRETMARK"));
        }
    }

    /// pika publishing three messages with no headers table at all.
    #[test]
    fn publish_without_headers() {
        const PUBLISH: &[u8] = include_bytes!("testdata/amqp_publish.c2s");
        for events in feed_split(client, Direction::Egress, PUBLISH) {
            no_errors(&events);
            let o = ops(&events);
            assert_eq!(o.len(), 3);
            assert!(o.iter().all(|o| o.messages.len() == 1
                && o.messages[0].traceparent.is_none()
                && o.messages[0].routing_key.as_deref() == Some("q2")));
        }
    }

    #[test]
    fn get_ok_messages_without_context() {
        for events in feed_split(client, Direction::Ingress, GET) {
            no_errors(&events);
            let o = ops(&events);
            let n: usize = o.iter().map(|o| o.messages.len()).sum();
            assert_eq!(n, 3);
            assert!(o.iter().all(|o| o.operation_name == "get" && o.kind == MqKind::Receive));
            assert!(o
                .iter()
                .flat_map(|o| &o.messages)
                .all(|m| m.traceparent.is_none() && m.routing_key.as_deref() == Some("q2")));
        }
    }

    #[test]
    fn the_broker_side_is_ignored_and_garbage_gives_up() {
        let mut broker = detect(Role::Server, Direction::Ingress, PUBLISH_SDK).expect("broker side");
        let mut out = Vec::new();
        broker.feed(Direction::Ingress, &feed_whole(PUBLISH_SDK), &mut out);
        assert!(out.is_empty());
        assert!(detect(Role::Client, Direction::Egress, b"GET / HTTP/1.1\r\n").is_none());

        let mut p = client();
        let mut bytes = PROTOCOL_HEADER.to_vec();
        bytes.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, FRAME_END]);
        p.feed(Direction::Egress, &feed_whole(&bytes), &mut out);
        assert_eq!(out, vec![err("bad_frame_type")]);
    }

    /// A gap inside a body is skipped; elsewhere the direction is given up, counted.
    #[test]
    fn gaps() {
        let mut p = client();
        let mut out = Vec::new();
        let segs = vec![
            Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 7, bytes: PUBLISH_SDK[..20].to_vec() },
            Segment::Gap { offset: 20, len: 5, reason: crate::capture::stream::GapReason::Lost },
        ];
        p.feed(Direction::Egress, &segs, &mut out);
        assert_eq!(out, vec![err("gap_lost_sync")]);
    }

    #[test]
    fn field_tables_nested_and_malformed() {
        // {"a": {"b": [1, "x"]}, "traceparent": "tp", "tracestate": "s"}
        let mut t = Vec::new();
        t.extend_from_slice(b"\x01aF");
        let inner: &[u8] = b"\x01bA\x00\x00\x00\x0bI\x00\x00\x00\x01S\x00\x00\x00\x01x";
        t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        t.extend_from_slice(inner);
        t.extend_from_slice(b"\x0btraceparentS\x00\x00\x00\x02tp\x0atracestateS\x00\x00\x00\x01s");
        let mut m = MqMessage::default();
        trace_headers(&t, &mut m).unwrap();
        assert_eq!((m.traceparent.as_deref(), m.tracestate.len()), (Some(&b"tp"[..]), 1));
        let mut m = MqMessage::default();
        assert_eq!(trace_headers(b"\x01aZ", &mut m), Err("bad_field_type"));
        assert_eq!(trace_headers(b"\x01aS\x00\x00\x00\x09ab", &mut m), Err("bad_field_table"));
    }

    /// Found by the `protocols` fuzz target: bytes fed after the close produced a parse
    /// error (fuzz/corpus/protocols/regression-amqp-feed-after-close).
    #[test]
    fn a_closed_parser_is_silent() {
        let mut p = client();
        let mut out = Vec::new();
        p.feed(Direction::Egress, &feed_whole(b"AMQP\x00\x00\x09\x01"), &mut out);
        p.close(&mut out);
        let before = out.len();
        p.close(&mut out);
        p.feed(Direction::Ingress, &feed_whole(b"GET / HTTP/1.1\r\n\r\n"), &mut out);
        p.feed(Direction::Egress, &feed_whole(b"\x01\x00\x01garbage"), &mut out);
        assert_eq!(out.len(), before, "{out:?}");
    }
}
