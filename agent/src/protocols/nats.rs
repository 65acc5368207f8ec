//! NATS client protocol, client side of a server connection.
//!
//! Recognised by the server's greeting `INFO {` (arriving at a client) or the client's
//! `CONNECT {`. What comes out:
//!
//! * `PUB` / `HPUB` (egress) → one Publish operation per message;
//! * `MSG` / `HMSG` (ingress) → the messages completed by one read syscall form one
//!   Receive operation (several = a batch).
//!
//! Control lines and `HPUB`/`HMSG` header blocks (`NATS/1.0\r\nKey: Value\r\n…`) are
//! reassembled across syscalls (bounded); of the headers only `traceparent` and
//! `tracestate` are kept. Payloads are skipped by their size, never stored. `PING`,
//! `PONG`, `+OK`, `-ERR`, `SUB`, `UNSUB`, `INFO`, `CONNECT` are ignored.
//!
//! The server's side of a connection is recognised and ignored. A gap inside a payload
//! is harmless; anywhere else that direction is given up (`nats/gap_lost_sync`).

use hoptrace_common::{Direction, Role};

use super::{
    mq_common::{timing, ClientConnection, ReceiveBatch, SegmentReader, Syscall},
    L7Event, MqKind, MqMessage, MqOperation, Protocol,
};
use crate::capture::stream::Segment;

const NAME: &str = "nats";
const SYSTEM: &str = "nats";
/// Longest control line kept (INFO and CONNECT with credentials are the long ones).
const MAX_LINE: usize = 64 * 1024;
/// Largest header block kept; larger ones are skipped (counted) with the payload.
const MAX_HEADERS: usize = 64 * 1024;
/// The largest message size a NATS server can be configured to accept (`max_payload`
/// is at most 64 MiB); a larger size on a message line is garbage, not a message.
const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;

pub fn detect(role: Role, direction: Direction, first_bytes: &[u8]) -> Option<Box<dyn Protocol>> {
    let from_server = first_bytes.starts_with(b"INFO {") || first_bytes.starts_with(b"INFO\t{");
    let from_client = first_bytes.starts_with(b"CONNECT {") || first_bytes.starts_with(b"CONNECT\t{");
    let client_end = match (direction, from_server, from_client) {
        (Direction::Ingress, true, _) | (Direction::Egress, _, true) => true,
        (Direction::Egress, true, _) | (Direction::Ingress, _, true) => false,
        _ => return None,
    };
    match (role, client_end) {
        (Role::Client | Role::Unknown, true) => Some(Box::new(Nats::new(true))),
        (Role::Server | Role::Unknown, false) => Some(Box::new(Nats::new(false))),
        _ => None,
    }
}

/// A message whose header block is being read.
struct InHeaders {
    kind: MqKind,
    name: &'static str,
    subject: String,
    header_len: usize,
    total_len: u64,
    start: Syscall,
}

#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
    buf_start: Syscall,
    /// Payload bytes (and its CRLF) still to skip.
    skip: u64,
    headers: Option<InHeaders>,
    dead: bool,
    batch: ReceiveBatch,
}

pub struct Nats(ClientConnection<Reader>);

impl Nats {
    fn new(client: bool) -> Self {
        Self(ClientConnection::new(client, Reader::default(), Reader::default()))
    }
}

impl Protocol for Nats {
    fn name(&self) -> &'static str {
        NAME
    }

    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        self.0.feed(direction, segments, out);
    }

    fn close(&mut self, _out: &mut Vec<L7Event>) {
        self.0.close();
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
                if self.buf.is_empty() && self.headers.is_none() && *len <= self.skip {
                    self.skip -= len;
                } else {
                    out.push(err("gap_lost_sync"));
                    self.dead = true;
                    self.buf = Vec::new();
                }
                return;
            }
        };
        while !data.is_empty() && !self.dead {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.buf.is_empty() {
                self.buf_start = now;
            }
            if self.headers.is_some() {
                let taken = self.header_block(data, now, out);
                data = &data[taken..];
                continue;
            }
            // A control line.
            let (line_part, found) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..=i], true),
                None => (data, false),
            };
            if self.buf.len() + line_part.len() > MAX_LINE {
                out.push(err("line_too_long"));
                self.dead = true;
                self.buf = Vec::new();
                return;
            }
            self.buf.extend_from_slice(line_part);
            data = &data[line_part.len()..];
            if found {
                let line = std::mem::take(&mut self.buf);
                self.line(&line, now, out);
            }
        }
        self.batch.flush(SYSTEM, now, out);
    }
}

impl Reader {
    /// Bytes of an HPUB/HMSG header block; when it is complete, the message is reported
    /// and its body skipped. Returns how many bytes of `data` were taken.
    fn header_block(&mut self, data: &[u8], now: Syscall, out: &mut Vec<L7Event>) -> usize {
        let Some(h) = &self.headers else { return 0 };
        let take = (h.header_len - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == h.header_len {
            let h = self.headers.take().expect("headers");
            let block = std::mem::take(&mut self.buf);
            let mut msg = MqMessage { destination: h.subject, ..MqMessage::default() };
            msg.body_size = h.total_len - h.header_len as u64;
            trace_headers(&block, &mut msg);
            self.skip = msg.body_size + 2;
            self.message(h.kind, h.name, h.start, now, msg, out);
        }
        take
    }

    fn message(
        &mut self,
        kind: MqKind,
        name: &'static str,
        start: Syscall,
        now: Syscall,
        msg: MqMessage,
        out: &mut Vec<L7Event>,
    ) {
        match kind {
            MqKind::Publish => out.push(L7Event::Messaging(MqOperation {
                system: SYSTEM,
                kind,
                operation_name: name,
                timing: timing(start, now),
                messages: vec![msg],
                error: None,
            })),
            MqKind::Receive => {
                if !self.batch.push(SYSTEM, name, start, now, msg, out) {
                    out.push(err("batch_too_large"));
                }
            }
        }
    }

    fn line(&mut self, line: &[u8], now: Syscall, out: &mut Vec<L7Event>) {
        let start = self.buf_start;
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        let Some(op) = words.next() else { return };
        let args: Vec<&str> = words.collect();
        let op = op.to_ascii_uppercase();
        // (kind, name, has headers, argument count without reply-to)
        let (kind, name, with_headers, n) = match op.as_str() {
            "PUB" => (MqKind::Publish, "PUB", false, 2),
            "HPUB" => (MqKind::Publish, "HPUB", true, 3),
            "MSG" => (MqKind::Receive, "MSG", false, 3),
            "HMSG" => (MqKind::Receive, "HMSG", true, 4),
            "INFO" | "CONNECT" | "SUB" | "UNSUB" | "PING" | "PONG" | "+OK" | "-ERR" => return,
            _ => {
                out.push(err("unknown_operation"));
                self.dead = true;
                return;
            }
        };
        // The reply-to subject is the optional second-to-last (or third-to-last) word.
        if args.len() != n && args.len() != n + 1 {
            out.push(err("bad_message_line"));
            self.dead = true;
            return;
        }
        let sizes: Option<Vec<u64>> =
            args[args.len() - if with_headers { 2 } else { 1 }..].iter().map(|s| s.parse().ok()).collect();
        let Some(sizes) = sizes else {
            out.push(err("bad_message_line"));
            self.dead = true;
            return;
        };
        // Sizes come from the wire: anything past the largest payload a server accepts
        // is not NATS (and `size + 2` must not overflow).
        if sizes.iter().any(|&n| n > MAX_PAYLOAD) {
            out.push(err("bad_message_line"));
            self.dead = true;
            return;
        }
        let subject = args[0].to_string();
        if !with_headers {
            let msg = MqMessage { destination: subject, body_size: sizes[0], ..MqMessage::default() };
            self.skip = sizes[0] + 2;
            self.message(kind, name, start, now, msg, out);
            return;
        }
        let (header_len, total_len) = (sizes[0], sizes[1]);
        if header_len > total_len {
            out.push(err("bad_message_line"));
            self.dead = true;
            return;
        }
        if header_len > MAX_HEADERS as u64 {
            out.push(err("headers_too_large"));
            let msg = MqMessage { destination: subject, body_size: total_len - header_len, ..MqMessage::default() };
            self.skip = total_len + 2;
            self.message(kind, name, start, now, msg, out);
            return;
        }
        self.headers = Some(InHeaders { kind, name, subject, header_len: header_len as usize, total_len, start });
    }
}

/// `NATS/1.0[ status]\r\n` then `Key: Value` lines: keeps the trace context only.
fn trace_headers(block: &[u8], msg: &mut MqMessage) {
    for line in block.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if key.eq_ignore_ascii_case(b"traceparent") {
            if msg.traceparent.is_none() {
                msg.traceparent = Some(value.to_vec());
            }
        } else if key.eq_ignore_ascii_case(b"tracestate") {
            msg.tracestate.push(value.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::mq_common::tests::{feed_split, feed_whole, no_errors, ops};

    // nats-py 2.16.0 against nats-server 2.9.10: a subscriber that received two HMSG
    // (SDK context + a private header) and two MSG; an SDK publisher (HPUB); a plain one.
    const SUB_IN: &[u8] = include_bytes!("testdata/nats_sub.s2c");
    const SUB_OUT: &[u8] = include_bytes!("testdata/nats_sub.c2s");
    const PUB_SDK: &[u8] = include_bytes!("testdata/nats_pub_sdk.c2s");
    const PUB: &[u8] = include_bytes!("testdata/nats_pub.c2s");

    fn client() -> Box<dyn Protocol> {
        detect(Role::Client, Direction::Ingress, SUB_IN).expect("nats client")
    }

    #[test]
    fn detection() {
        assert_eq!(detect(Role::Client, Direction::Egress, PUB).expect("connect").name(), "nats");
        assert!(detect(Role::Client, Direction::Egress, SUB_IN).is_none(), "INFO comes from the server");
        let mut server = detect(Role::Server, Direction::Egress, SUB_IN).expect("server side");
        let mut out = Vec::new();
        server.feed(Direction::Ingress, &feed_whole(PUB_SDK), &mut out);
        assert!(out.is_empty(), "the server's side produces nothing");
    }

    #[test]
    fn received_messages_at_every_split() {
        for events in feed_split(client, Direction::Ingress, SUB_IN) {
            no_errors(&events);
            let msgs: Vec<(&str, &MqMessage)> =
                ops(&events).iter().flat_map(|o| o.messages.iter().map(|m| (o.operation_name, m))).collect();
            assert_eq!(msgs.len(), 4);
            assert!(ops(&events).iter().all(|o| o.kind == MqKind::Receive));
            assert_eq!(msgs.iter().map(|m| m.0).collect::<Vec<_>>(), ["HMSG", "HMSG", "MSG", "MSG"]);
            for (name, m) in &msgs {
                assert_eq!(m.destination, "orders.created");
                assert_eq!(m.traceparent.is_some(), *name == "HMSG");
            }
            assert_eq!(msgs[0].1.body_size, "message 0 SECRETMARK".len() as u64);
            assert_eq!(msgs[0].1.tracestate, vec![b"mq=1".to_vec()]);
            assert!(!format!("{events:?}").contains("SECRETMARK"));
        }
        // Whole: the two HMSG came in one read, the two MSG in another (as recorded,
        // concatenated here: one read of everything makes one HMSG and one MSG operation).
        let mut p = client();
        let mut out = Vec::new();
        p.feed(Direction::Ingress, &feed_whole(SUB_IN), &mut out);
        p.feed(Direction::Egress, &feed_whole(SUB_OUT), &mut out);
        no_errors(&out);
        let o = ops(&out);
        assert_eq!(
            o.iter().map(|o| (o.operation_name, o.messages.len())).collect::<Vec<_>>(),
            [("HMSG", 2), ("MSG", 2)]
        );
    }

    #[test]
    fn published_messages_at_every_split() {
        let make = || detect(Role::Client, Direction::Egress, PUB).expect("nats");
        for (bytes, name, ctx) in [(PUB_SDK, "HPUB", true), (PUB, "PUB", false)] {
            for events in feed_split(make, Direction::Egress, bytes) {
                no_errors(&events);
                let o = ops(&events);
                assert_eq!(o.len(), 2);
                for op in o {
                    assert_eq!((op.kind, op.operation_name, op.messages.len()), (MqKind::Publish, name, 1));
                    assert_eq!(op.messages[0].traceparent.is_some(), ctx);
                    assert_eq!(op.messages[0].destination, "orders.created");
                }
                assert!(!format!("{events:?}").contains("SECRETMARK"));
            }
        }
    }

    #[test]
    fn garbage_and_gaps_are_counted() {
        let mut p = client();
        let mut out = Vec::new();
        p.feed(Direction::Ingress, &feed_whole(b"MSG a 1 notanumber\r\n"), &mut out);
        assert_eq!(out, vec![err("bad_message_line")]);
        let mut p = client();
        let mut out = Vec::new();
        let segs = vec![
            Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 7, bytes: b"MSG a 1 10\r\nab".to_vec() },
            Segment::Gap { offset: 14, len: 4, reason: crate::capture::stream::GapReason::Lost },
            Segment::Data {
                offset: 18,
                ts_enter_ns: 3,
                ts_ns: 4,
                tid: 7,
                bytes: b"ghij\r\nPING\r\nMSG b 1 0\r\n\r\n".to_vec(),
            },
        ];
        p.feed(Direction::Ingress, &segs, &mut out);
        no_errors(&out);
        assert_eq!(ops(&out).iter().map(|o| o.messages[0].destination.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let segs = vec![Segment::Gap { offset: 40, len: 4, reason: crate::capture::stream::GapReason::Lost }];
        p.feed(Direction::Ingress, &segs, &mut out);
        assert_eq!(out.last(), Some(&err("gap_lost_sync")));
    }

    #[test]
    fn huge_sizes_are_errors_not_overflows() {
        // `u64::MAX + 2` (the payload and its CRLF) panicked in debug builds and wrapped
        // to a one-byte skip in release ones.
        for line in [
            &b"MSG a 1 18446744073709551615\r\n"[..],
            b"HMSG a 1 18446744073709551615 18446744073709551615\r\n",
            b"HMSG a 1 100000 18446744073709551615\r\n",
            b"PUB a 67108865\r\n",
        ] {
            let mut p = client();
            let mut out = Vec::new();
            p.feed(Direction::Ingress, &feed_whole(line), &mut out);
            p.feed(Direction::Ingress, &feed_whole(b"MSG b 1 0\r\n\r\n"), &mut out);
            assert_eq!(out, vec![err("bad_message_line")], "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_closed_parser_is_silent() {
        let mut p = client();
        let mut out = Vec::new();
        p.close(&mut out);
        p.feed(Direction::Ingress, &feed_whole(b"MSG a 1 x\r\n"), &mut out);
        p.feed(Direction::Egress, &feed_whole(b"\x00garbage\r\n"), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
