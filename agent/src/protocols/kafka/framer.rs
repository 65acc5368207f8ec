//! Size framing of one direction: every Kafka request and response is an int32 size and
//! that many bytes. Frames are buffered up to [`MAX_FRAME_BUFFER`]; a hole inside a frame
//! truncates it, a hole over a size field loses the boundaries until a segment starts
//! with something that looks like a frame again.

use super::{error, reason, Timing, MAX_FRAME_BUFFER, MAX_FRAME_SIZE};
use crate::capture::stream::Segment;
use crate::protocols::L7Event;

/// One frame as the framer delivers it: the payload after the size field (or its
/// buffered prefix), and the syscalls that carried its first and last byte.
pub(super) struct Frame {
    pub bytes: Vec<u8>,
    /// Some of the payload is missing, and why: [`reason::GAP_IN_FRAME`] or
    /// [`reason::FRAME_TOO_LARGE`] (reported when the parse runs short because of it).
    pub truncated: Option<&'static str>,
    pub timing: Timing,
}

enum Phase {
    /// Reading the 4-byte size of the next frame.
    Size {
        got: [u8; 4],
        n: usize,
    },
    Body {
        bytes: Vec<u8>,
        remaining: u64,
        truncated: Option<&'static str>,
    },
    /// Lost track of frame boundaries; waiting for a segment that starts a frame.
    Desync,
}

/// Size framing of one direction.
pub(super) struct Framer {
    phase: Phase,
    timing: Timing,
}

impl Default for Framer {
    fn default() -> Self {
        Framer { phase: Phase::Size { got: [0; 4], n: 0 }, timing: Timing::default() }
    }
}

impl Framer {
    /// Consumes one segment; complete frames go to `frames`. `starts_frame` judges
    /// whether a data segment may start a frame after a desync.
    pub fn push(
        &mut self,
        seg: &Segment,
        starts_frame: &dyn Fn(&[u8]) -> bool,
        frames: &mut Vec<Frame>,
        out: &mut Vec<L7Event>,
    ) {
        match seg {
            Segment::Gap { len, .. } => self.gap(*len, frames, out),
            Segment::Data { ts_enter_ns, ts_ns, tid, bytes, .. } => {
                let syscall = Timing {
                    first_tid: *tid,
                    first_enter_ns: *ts_enter_ns,
                    first_exit_ns: *ts_ns,
                    last_exit_ns: *ts_ns,
                };
                self.data(bytes, syscall, starts_frame, frames, out);
            }
        }
    }

    /// `len` bytes the capture lost: inside a frame's payload they only truncate it.
    fn gap(&mut self, len: u64, frames: &mut Vec<Frame>, out: &mut Vec<L7Event>) {
        match &mut self.phase {
            Phase::Desync => {}
            Phase::Size { n: 0, .. } => self.desync(reason::GAP_BETWEEN_FRAMES, out),
            Phase::Size { .. } => self.desync(reason::GAP_IN_FRAME, out),
            Phase::Body { remaining, truncated, .. } => {
                truncated.get_or_insert(reason::GAP_IN_FRAME);
                if len < *remaining {
                    *remaining -= len;
                } else {
                    let beyond = len - *remaining;
                    *remaining = 0;
                    self.finish(frames);
                    if beyond > 0 {
                        self.desync(reason::GAP_IN_FRAME, out);
                    }
                }
            }
        }
    }

    /// The bytes of one syscall (`syscall`: its timing).
    fn data(
        &mut self,
        bytes: &[u8],
        syscall: Timing,
        starts_frame: &dyn Fn(&[u8]) -> bool,
        frames: &mut Vec<Frame>,
        out: &mut Vec<L7Event>,
    ) {
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            match &mut self.phase {
                Phase::Desync => {
                    if pos == 0 && starts_frame(rest) {
                        self.phase = Phase::Size { got: [0; 4], n: 0 };
                    } else {
                        return;
                    }
                }
                Phase::Size { got, n } => {
                    if *n == 0 {
                        self.timing = syscall;
                    }
                    let take = (4 - *n).min(rest.len());
                    got[*n..*n + take].copy_from_slice(&rest[..take]);
                    *n += take;
                    pos += take;
                    if *n == 4 {
                        let size = u32::from_be_bytes(*got);
                        if !(4..=MAX_FRAME_SIZE).contains(&size) {
                            self.desync(reason::INVALID_FRAME_SIZE, out);
                            return;
                        }
                        self.phase = Phase::Body {
                            bytes: Vec::with_capacity((size as usize).min(64 * 1024)),
                            remaining: size as u64,
                            truncated: None,
                        };
                    }
                }
                Phase::Body { bytes: buf, remaining, truncated } => {
                    let take = (*remaining).min(rest.len() as u64) as usize;
                    if truncated.is_none() {
                        let room = MAX_FRAME_BUFFER - buf.len();
                        if take > room {
                            *truncated = Some(reason::FRAME_TOO_LARGE);
                        }
                        buf.extend_from_slice(&rest[..take.min(room)]);
                    }
                    *remaining -= take as u64;
                    pos += take;
                    self.timing.last_exit_ns = syscall.last_exit_ns;
                    if *remaining == 0 {
                        self.finish(frames);
                    }
                }
            }
        }
    }

    fn finish(&mut self, frames: &mut Vec<Frame>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Size { got: [0; 4], n: 0 });
        if let Phase::Body { bytes, truncated, .. } = phase {
            frames.push(Frame { bytes, truncated, timing: self.timing });
        }
    }

    fn desync(&mut self, why: &'static str, out: &mut Vec<L7Event>) {
        out.push(error(why));
        self.phase = Phase::Desync;
    }
}
