//! Shared drivers for hoptrace's fuzz targets.
//!
//! [`fuzz_protocol`] plays a connection the way the trace pipeline does
//! (`traces::TracePipeline::on_segments`): the first data of a direction goes to the
//! detector, the parser it returns gets every later segment, and the connection closes at
//! the end. The input is a small script, so the fuzzer controls the role, the interleaving
//! of the two directions, where the stream is cut into segments (parsers must not care)
//! and where bytes are missing (capture-cap and lost-record gaps).
//!
//! Adding a protocol: its parser joins `protocols::DETECTORS`, which the `protocols` target
//! already fuzzes; a target of its own is `#![no_main]` and one line,
//! `hoptrace_fuzz::protocol_target!(path::detect);`, in `fuzz_targets/<name>.rs` (plus its
//! `[[bin]]` entry in Cargo.toml).

use hoptrace::protocols::{Detector, L7Event, Protocol};
use hoptrace::capture::stream::{GapReason, Segment};
use hoptrace_common::{Direction, Role};

/// A fuzz target for one protocol's detector (and so its parser). The target file also
/// needs `#![no_main]` (an inner attribute cannot come from a macro).
#[macro_export]
macro_rules! protocol_target {
    ($detect:path) => {
        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            $crate::fuzz_protocol($detect, data);
        });
    };
}

/// Reads the script in `data` and plays it against `detect`'s parser.
///
/// Script: byte 0 is the role (`% 3`: unknown, client, server). Then operations, each one
/// byte `op` followed by its operands:
/// - `op & 1`: the direction (0 egress, 1 ingress);
/// - `(op >> 1) & 3`: 0 or 1 → data: the next byte `n` gives the length (`n + 1`, or
///   `(n + 1) * 64` when `op & 0x40`), taken from the rest of the input, and `op & 0x20`
///   cuts it into segments of `op & 0x1f + 1` bytes delivered in one `feed` call;
///   2 → a gap of the next byte's value (`* 4096` when `op & 0x40`) bytes, reason by
///   `op & 0x20`; 3 → close the connection (the script ends).
/// Running out of input closes the connection.
pub fn fuzz_protocol(detect: Detector, data: &[u8]) {
    let Some((&role, mut rest)) = data.split_first() else {
        return;
    };
    let role = match role % 3 {
        0 => Role::Unknown,
        1 => Role::Client,
        _ => Role::Server,
    };
    let mut conn = Conn {
        detect,
        role,
        parser: None,
        tried: [false; 2],
        offsets: [0; 2],
        clock: 0,
        out: Vec::new(),
    };
    while let Some((&op, after)) = rest.split_first() {
        rest = after;
        let dir = if op & 1 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        match (op >> 1) & 3 {
            0 | 1 => {
                let Some((&n, after)) = rest.split_first() else {
                    break;
                };
                let len = if op & 0x40 != 0 {
                    (n as usize + 1) * 64
                } else {
                    n as usize + 1
                };
                let len = len.min(after.len());
                let (bytes, after) = after.split_at(len);
                rest = after;
                let piece = if op & 0x20 != 0 {
                    (op & 0x1f) as usize + 1
                } else {
                    usize::MAX
                };
                conn.data(dir, bytes, piece);
            }
            2 => {
                let Some((&n, after)) = rest.split_first() else {
                    break;
                };
                rest = after;
                let len = if op & 0x40 != 0 {
                    n as u64 * 4096
                } else {
                    n as u64
                };
                let reason = if op & 0x20 != 0 {
                    GapReason::Lost
                } else {
                    GapReason::NotCaptured
                };
                conn.gap(dir, len, reason);
            }
            _ => break,
        }
    }
    conn.close();
}

struct Conn {
    detect: Detector,
    role: Role,
    parser: Option<Box<dyn Protocol>>,
    tried: [bool; 2],
    offsets: [u64; 2],
    clock: u64,
    out: Vec<L7Event>,
}

impl Conn {
    fn data(&mut self, dir: Direction, bytes: &[u8], piece: usize) {
        if bytes.is_empty() {
            return;
        }
        if self.parser.is_none() {
            if self.tried[dir as usize] && self.tried[1 - dir as usize] {
                return;
            }
            self.parser = (self.detect)(self.role, dir, bytes);
            if self.parser.is_none() {
                self.tried[dir as usize] = true;
                return;
            }
        }
        self.clock += 1_000;
        let mut segments = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            segments.push(Segment::Data {
                offset: self.offsets[dir as usize],
                ts_enter_ns: self.clock,
                ts_ns: self.clock + 500,
                tid: 7,
                bytes: chunk.to_vec(),
            });
            self.offsets[dir as usize] += chunk.len() as u64;
        }
        self.feed(dir, &segments);
    }

    fn gap(&mut self, dir: Direction, len: u64, reason: GapReason) {
        if len == 0 || self.parser.is_none() {
            return;
        }
        let seg = Segment::Gap {
            offset: self.offsets[dir as usize],
            len,
            reason,
        };
        self.offsets[dir as usize] += len;
        self.feed(dir, &[seg]);
    }

    fn feed(&mut self, dir: Direction, segments: &[Segment]) {
        if let Some(p) = self.parser.as_mut() {
            p.feed(dir, segments, &mut self.out);
        }
        self.check();
    }

    fn close(&mut self) {
        if let Some(p) = self.parser.as_mut() {
            p.close(&mut self.out);
            // Closing twice, or feeding after the close, must be harmless and silent.
            let before = self.out.len();
            p.close(&mut self.out);
            p.feed(
                Direction::Ingress,
                &[Segment::Data {
                    offset: 0,
                    ts_enter_ns: 0,
                    ts_ns: 0,
                    tid: 0,
                    bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                }],
                &mut self.out,
            );
            assert_eq!(
                self.out.len(),
                before,
                "a closed parser reported more events"
            );
        }
        self.check();
    }

    /// Invariants on what parsers report (beyond "no panic, no overflow").
    fn check(&mut self) {
        for ev in self.out.drain(..) {
            match ev {
                L7Event::Http(x) => {
                    assert!(
                        x.request.timing.first_enter_ns <= x.request.timing.last_exit_ns,
                        "{x:?}"
                    );
                    if let Some(r) = &x.response {
                        // 0 only for an HTTP/2 status the parser could not read, and then
                        // the exchange says its headers are partial.
                        let partial = x.h2.as_ref().is_some_and(|h| h.partial_headers);
                        assert!((100..=999).contains(&r.status) || (r.status == 0 && partial), "status {}", r.status);
                    }
                    assert!(
                        x.informational.len() <= 16,
                        "{} 1xx kept",
                        x.informational.len()
                    );
                }
                L7Event::ParseError { protocol, reason } => {
                    assert!(!protocol.is_empty() && !reason.is_empty());
                    assert!(
                        reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                        "label {reason:?}"
                    );
                }
                L7Event::Messaging(m) => {
                    assert!(
                        !m.system.is_empty() && !m.operation_name.is_empty(),
                        "{m:?}"
                    );
                }
            }
        }
    }
}
