//! Per-connection, per-direction ordered byte streams.
//!
//! The kernel stamps every chunk with its offset in the socket's byte stream, so the
//! stream can put chunks back in order when two threads raced, and it knows exactly
//! which bytes are missing: ones the capture cap left out (known at once) and ones whose
//! record was lost (a hole that never fills). Parsers get `Segment`s in stream order and
//! never see a byte twice or out of place.

use std::collections::BTreeMap;

/// Holes older than this many buffered bytes, or chunks, are declared lost.
const MAX_PENDING_BYTES: usize = 64 * 1024;
const MAX_PENDING_CHUNKS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// Bytes beyond the per-syscall capture cap, or moved without a user buffer (sendfile).
    NotCaptured,
    /// A record never arrived (ring buffer full, read fault).
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Data {
        offset: u64,
        /// The syscall that moved these bytes: when it started and when it returned.
        ts_enter_ns: u64,
        ts_ns: u64,
        /// Thread that made the syscall (thread-per-request parent linking).
        tid: u32,
        bytes: Vec<u8>,
    },
    Gap {
        offset: u64,
        len: u64,
        reason: GapReason,
    },
}

impl Segment {
    pub fn offset(&self) -> u64 {
        match self {
            Segment::Data { offset, .. } | Segment::Gap { offset, .. } => *offset,
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            Segment::Data { bytes, .. } => bytes.len() as u64,
            Segment::Gap { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One chunk as the kernel described it.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub call_offset: u64,
    pub call_len: u32,
    pub call_captured: u32,
    pub chunk_offset: u32,
    pub ts_enter_ns: u64,
    pub ts_ns: u64,
    pub tid: u32,
    pub bytes: &'a [u8],
}

#[derive(Debug, Default)]
pub struct Stream {
    next: u64,
    pending: BTreeMap<u64, Segment>,
    pending_bytes: usize,
    /// Totals, for counters and tests.
    pub delivered_bytes: u64,
    pub not_captured_bytes: u64,
    pub lost_bytes: u64,
    pub duplicate_bytes: u64,
}

impl Stream {
    /// Offset of the next byte the stream expects.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Joins a stream in the middle (a connection first seen mid-flight): bytes before
    /// `offset` were never ours to see and are not reported as lost.
    pub fn start_at(&mut self, offset: u64) {
        if self.next == 0 && self.pending.is_empty() {
            self.next = offset;
        }
    }

    /// Adds a chunk; appends to `out` every segment that is now in order.
    pub fn push(&mut self, c: Chunk<'_>, out: &mut Vec<Segment>) {
        let start = c.call_offset + c.chunk_offset as u64;
        if !c.bytes.is_empty() {
            self.insert(
                out,
                Segment::Data {
                    offset: start,
                    ts_enter_ns: c.ts_enter_ns,
                    ts_ns: c.ts_ns,
                    tid: c.tid,
                    bytes: c.bytes.to_vec(),
                },
            );
        }
        // The record that completes the captured part also announces the uncaptured tail.
        let end_of_captured = c.chunk_offset as u64 + c.bytes.len() as u64;
        if end_of_captured == c.call_captured as u64 && c.call_len > c.call_captured {
            self.insert(
                out,
                Segment::Gap {
                    offset: c.call_offset + c.call_captured as u64,
                    len: (c.call_len - c.call_captured) as u64,
                    reason: GapReason::NotCaptured,
                },
            );
        }
        self.drain(out, false);
    }

    /// Declares every remaining hole lost and delivers everything (connection closed).
    pub fn flush(&mut self, out: &mut Vec<Segment>) {
        self.drain(out, true);
    }

    /// As `flush`, for a stream the kernel says ended at offset `end`: bytes after the last
    /// record that arrived (their records were refused by a full ring, say) are a gap too,
    /// so every byte the socket moved is accounted as delivered, not captured or lost.
    pub fn finish(&mut self, end: u64, tail: GapReason, out: &mut Vec<Segment>) {
        self.drain(out, true);
        if end > self.next {
            self.deliver(Segment::Gap { offset: self.next, len: end - self.next, reason: tail }, out);
        }
    }

    fn insert(&mut self, out: &mut Vec<Segment>, seg: Segment) {
        let start = seg.offset();
        if start + seg.len() <= self.next {
            self.duplicate_bytes += seg.len();
            return;
        }
        // In order with nothing waiting (almost every chunk): straight out. Going through
        // the map would allocate and free a B-tree node per chunk.
        if start == self.next && self.pending.is_empty() {
            self.deliver(seg, out);
            return;
        }
        self.pending_bytes += seg.len() as usize;
        if let Some(old) = self.pending.insert(start, seg) {
            self.pending_bytes -= old.len() as usize;
            self.duplicate_bytes += old.len();
        }
    }

    fn drain(&mut self, out: &mut Vec<Segment>, force: bool) {
        while let Some((&start, _)) = self.pending.first_key_value() {
            if start > self.next {
                let overloaded = self.pending_bytes > MAX_PENDING_BYTES || self.pending.len() > MAX_PENDING_CHUNKS;
                if !(force || overloaded) {
                    return;
                }
                let len = start - self.next;
                self.lost_bytes += len;
                out.push(Segment::Gap { offset: self.next, len, reason: GapReason::Lost });
                self.next = start;
            }
            let (_, seg) = self.pending.pop_first().expect("non-empty");
            self.pending_bytes -= seg.len() as usize;
            let seg = self.trim_front(seg);
            if seg.is_empty() {
                continue;
            }
            self.deliver(seg, out);
        }
    }

    /// Hands out `seg`, which starts at `self.next`.
    fn deliver(&mut self, seg: Segment, out: &mut Vec<Segment>) {
        match &seg {
            Segment::Data { bytes, .. } => self.delivered_bytes += bytes.len() as u64,
            Segment::Gap { len, reason: GapReason::NotCaptured, .. } => self.not_captured_bytes += len,
            Segment::Gap { len, .. } => self.lost_bytes += len,
        }
        self.next = seg.offset() + seg.len();
        out.push(seg);
    }

    /// Drops the part of `seg` that was already delivered (overlap never happens with a
    /// correct kernel side, but a stream must not repeat bytes if it does).
    fn trim_front(&mut self, seg: Segment) -> Segment {
        let start = seg.offset();
        if start >= self.next {
            return seg;
        }
        let skip = self.next - start;
        self.duplicate_bytes += skip.min(seg.len());
        match seg {
            Segment::Data { ts_enter_ns, ts_ns, tid, bytes, .. } => Segment::Data {
                offset: self.next,
                ts_enter_ns,
                ts_ns,
                tid,
                bytes: bytes.get(skip as usize..).unwrap_or_default().to_vec(),
            },
            Segment::Gap { len, reason, .. } => {
                Segment::Gap { offset: self.next, len: len.saturating_sub(skip), reason }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(call_offset: u64, call_len: u32, captured: u32, chunk_offset: u32, b: &[u8]) -> Chunk<'_> {
        Chunk {
            call_offset,
            call_len,
            call_captured: captured,
            chunk_offset,
            ts_enter_ns: 0,
            ts_ns: 1,
            tid: 1,
            bytes: b,
        }
    }

    fn bytes_of(segs: &[Segment]) -> Vec<u8> {
        segs.iter()
            .flat_map(|s| match s {
                Segment::Data { bytes, .. } => bytes.clone(),
                Segment::Gap { .. } => vec![],
            })
            .collect()
    }

    #[test]
    fn reassembles_chunks_and_reorders_racing_calls() {
        let mut s = Stream::default();
        let mut out = vec![];
        // Call 2 (offset 6) arrives before call 1 (offset 0): nothing is delivered yet.
        s.push(chunk(6, 5, 5, 0, b"world"), &mut out);
        assert!(out.is_empty());
        s.push(chunk(0, 6, 6, 0, b"hello "), &mut out);
        assert_eq!(bytes_of(&out), b"hello world");
        assert_eq!(s.position(), 11);
        // A call split in two chunks.
        out.clear();
        s.push(chunk(11, 4, 4, 0, b"ab"), &mut out);
        s.push(chunk(11, 4, 4, 2, b"cd"), &mut out);
        assert_eq!(bytes_of(&out), b"abcd");
    }

    #[test]
    fn finish_accounts_for_records_that_never_came() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.push(chunk(0, 5, 5, 0, b"hello"), &mut out);
        // 5..8 and 12..20 never arrived; 8..12 did.
        s.push(chunk(8, 4, 4, 0, b"abcd"), &mut out);
        s.finish(20, GapReason::Lost, &mut out);
        assert_eq!((s.delivered_bytes, s.lost_bytes, s.not_captured_bytes), (9, 11, 0));
        assert_eq!(out.last(), Some(&Segment::Gap { offset: 12, len: 8, reason: GapReason::Lost }));
        // A TLS socket's ciphertext is not copied by design: the tail is "not captured".
        let mut t = Stream::default();
        t.finish(7, GapReason::NotCaptured, &mut out);
        assert_eq!((t.lost_bytes, t.not_captured_bytes), (0, 7));
        // Nothing after the last record: no gap.
        let mut u = Stream::default();
        u.push(chunk(0, 3, 3, 0, b"abc"), &mut out);
        let n = out.len();
        u.finish(3, GapReason::Lost, &mut out);
        assert_eq!(out.len(), n);
    }

    #[test]
    fn reports_uncaptured_tail_and_lost_records() {
        let mut s = Stream::default();
        let mut out = vec![];
        // 10-byte call, only 4 captured: the 6-byte tail is a NotCaptured gap right away.
        s.push(chunk(0, 10, 4, 0, b"GET "), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], Segment::Gap { offset: 4, len: 6, reason: GapReason::NotCaptured });
        // Bytes 10..20 never arrive; 20..23 does. Flushing declares the hole lost.
        out.clear();
        s.push(chunk(20, 3, 3, 0, b"xyz"), &mut out);
        assert!(out.is_empty());
        s.flush(&mut out);
        assert_eq!(out[0], Segment::Gap { offset: 10, len: 10, reason: GapReason::Lost });
        assert_eq!(bytes_of(&out), b"xyz");
        assert_eq!((s.lost_bytes, s.not_captured_bytes, s.delivered_bytes), (10, 6, 7));
    }

    #[test]
    fn sendfile_without_payload_is_a_gap() {
        let mut s = Stream::default();
        let mut out = vec![];
        s.push(chunk(0, 100, 0, 0, b""), &mut out);
        assert_eq!(out, vec![Segment::Gap { offset: 0, len: 100, reason: GapReason::NotCaptured }]);
    }
}
