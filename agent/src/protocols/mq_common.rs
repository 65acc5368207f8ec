//! Pieces the message-queue parsers share: which syscall a byte came from, and the
//! per-direction byte reader that keeps only what is being parsed (bounded) and skips
//! payloads without storing them.

use hoptrace_common::Direction;

use super::{L7Event, MqKind, MqMessage, MqOperation, Timing};
use crate::capture::stream::Segment;

/// The syscall that carried a byte (for span timing and thread linking).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Syscall {
    pub tid: u32,
    pub enter_ns: u64,
    pub exit_ns: u64,
}

/// Timing from the syscall of an operation's first byte to the one of its last byte.
pub(crate) fn timing(first: Syscall, last: Syscall) -> Timing {
    Timing {
        first_tid: first.tid,
        first_enter_ns: first.enter_ns,
        first_exit_ns: first.exit_ns,
        last_exit_ns: last.exit_ns,
    }
}

/// Messages received in one read syscall: they become one [`MqOperation`] (a batch when
/// more than one), so a consumer that got several deliveries at once gets one span with a
/// link per message instead of pretending each had its own receive.
#[derive(Default)]
pub(crate) struct ReceiveBatch {
    op: Option<(&'static str, Syscall)>,
    messages: Vec<MqMessage>,
}

impl ReceiveBatch {
    /// Most messages kept per read; more are counted by the caller as dropped.
    pub const MAX: usize = 1024;

    /// Adds a message that started in syscall `start`. A different operation name starts
    /// a new operation (flushed into `out`).
    pub fn push(
        &mut self,
        system: &'static str,
        name: &'static str,
        start: Syscall,
        now: Syscall,
        msg: MqMessage,
        out: &mut Vec<super::L7Event>,
    ) -> bool {
        if self.op.is_some_and(|(n, _)| n != name) {
            self.flush(system, now, out);
        }
        if self.messages.len() >= Self::MAX {
            return false;
        }
        self.op.get_or_insert((name, start));
        self.messages.push(msg);
        true
    }

    /// The read syscall `now` ended: what it completed is one operation.
    pub fn flush(&mut self, system: &'static str, now: Syscall, out: &mut Vec<super::L7Event>) {
        let Some((name, start)) = self.op.take() else {
            return;
        };
        out.push(super::L7Event::Messaging(MqOperation {
            system,
            kind: MqKind::Receive,
            operation_name: name,
            timing: timing(start, now),
            messages: std::mem::take(&mut self.messages),
            error: None,
        }));
    }
}

/// What parses one direction of a broker connection, a segment at a time.
pub(crate) trait SegmentReader {
    fn segment(&mut self, seg: &Segment, out: &mut Vec<L7Event>);
}

/// The two directions of a broker connection, as the AMQP and NATS parsers both route
/// them: only the client's end is parsed (the broker is not a messaging service of its
/// own), and once the connection is closed late bytes (a reused parser, a racing record)
/// are ignored.
pub(crate) struct ClientConnection<R> {
    /// This end is the client (the broker's end produces nothing).
    client: bool,
    egress: R,
    ingress: R,
    closed: bool,
}

impl<R: SegmentReader> ClientConnection<R> {
    pub fn new(client: bool, egress: R, ingress: R) -> Self {
        Self { client, egress, ingress, closed: false }
    }

    /// Hands `segments` to the reader of `direction`.
    pub fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        if !self.client || self.closed {
            return;
        }
        let r = match direction {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        for seg in segments {
            r.segment(seg, out);
        }
    }

    /// Marks the connection closed. The first time, returns both readers (egress, then
    /// ingress) so the parser can report what was left unfinished; after that, nothing.
    pub fn close(&mut self) -> Option<[&mut R; 2]> {
        if std::mem::replace(&mut self.closed, true) {
            return None;
        }
        Some([&mut self.egress, &mut self.ingress])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use hoptrace_common::Direction;

    use crate::{
        capture::stream::Segment,
        protocols::{L7Event, Protocol},
    };

    /// The messaging operations among a parser's events.
    pub fn ops(events: &[L7Event]) -> Vec<&crate::protocols::MqOperation> {
        events.iter().filter_map(|e| if let L7Event::Messaging(o) = e { Some(o) } else { None }).collect()
    }

    /// Fails the test on any parse error.
    pub fn no_errors(events: &[L7Event]) {
        let errs: Vec<_> = events.iter().filter(|e| matches!(e, L7Event::ParseError { .. })).collect();
        assert!(errs.is_empty(), "{errs:?}");
    }

    /// The whole stream as one syscall.
    pub fn feed_whole(bytes: &[u8]) -> Vec<Segment> {
        vec![Segment::Data { offset: 0, ts_enter_ns: 10, ts_ns: 11, tid: 7, bytes: bytes.to_vec() }]
    }

    /// The stream cut in two syscalls at every offset, each fed to a new parser: the
    /// events of each run.
    pub fn feed_split(make: impl Fn() -> Box<dyn Protocol>, dir: Direction, bytes: &[u8]) -> Vec<Vec<L7Event>> {
        (1..bytes.len())
            .map(|cut| {
                let mut p = make();
                let mut out = Vec::new();
                let a = Segment::Data { offset: 0, ts_enter_ns: 10, ts_ns: 11, tid: 7, bytes: bytes[..cut].to_vec() };
                let b = Segment::Data {
                    offset: cut as u64,
                    ts_enter_ns: 20,
                    ts_ns: 21,
                    tid: 7,
                    bytes: bytes[cut..].to_vec(),
                };
                // Both ways the stream hands segments over: together, and one call each.
                if cut % 2 == 0 {
                    p.feed(dir, &[a, b], &mut out);
                } else {
                    p.feed(dir, &[a], &mut out);
                    p.feed(dir, &[b], &mut out);
                }
                out
            })
            .collect()
    }
}
