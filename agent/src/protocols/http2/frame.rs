//! Frames of one direction (RFC 9113 §4, §6), read incrementally from in-order segments.
//!
//! Only what the exchange needs is buffered: HEADERS, CONTINUATION and PUSH_PROMISE
//! payloads (their header-block fragments, padding and priority removed) and RST_STREAM.
//! DATA payloads are handed out as ranges of the caller's segment, never copied; every
//! other frame is skipped by length. A hole inside a skipped or DATA payload is absorbed;
//! a hole anywhere else loses the framing, and the reader waits for a segment that starts
//! with a plausible frame head (segments start at syscall boundaries, as frames usually do).

use super::{reason, MAX_HEADER_BLOCK, PREFACE};
use crate::protocols::Timing;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// A frame's 9-byte head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    fn parse(b: &[u8; 9]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether this head is one a conforming peer could send (RFC 9113 §6: which frames
    /// need a stream, fixed payload lengths). Unknown frame types are legal but refused
    /// here: this is used only to recognise frames without the preface.
    fn well_formed(&self) -> bool {
        let needs_stream = matches!(self.kind, DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION);
        let stream_ok = if needs_stream { self.stream != 0 } else { self.kind == WINDOW_UPDATE || self.stream == 0 };
        let len_ok = match self.kind {
            PRIORITY => self.len == 5,
            RST_STREAM | WINDOW_UPDATE => self.len == 4,
            PING => self.len == 8,
            SETTINGS => self.len.is_multiple_of(6),
            GOAWAY => self.len >= 8,
            // SETTINGS_MAX_FRAME_SIZE's default; larger frames need a negotiation first.
            _ => self.len <= 16_384,
        };
        // Peers set only the flags a frame type defines (RFC 9113 §6).
        let flags: u8 = match self.kind {
            DATA => END_STREAM | PADDED,
            HEADERS => END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            SETTINGS | PING => 0x1,
            PUSH_PROMISE => END_HEADERS | PADDED,
            CONTINUATION => END_HEADERS,
            _ => 0,
        };
        self.kind <= CONTINUATION && stream_ok && len_ok && self.flags & !flags == 0
    }
}

/// Whether `bytes` start with well-formed frame heads, one after the other, for as far as
/// they go (at least one whole head).
pub(super) fn plausible(bytes: &[u8]) -> bool {
    let mut pos = 0;
    let mut heads = 0;
    while let Some(h) = bytes.get(pos..pos + 9) {
        let head = Head::parse(h.try_into().expect("nine bytes"));
        // The reserved bit of the stream id is never set by a sender.
        if h[5] & 0x80 != 0 || !head.well_formed() {
            return false;
        }
        heads += 1;
        pos += 9 + head.len as usize;
    }
    heads > 0
}

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Needs more input.
    More,
    /// A buffered frame is complete: its payload (header-block fragment, or RST_STREAM's
    /// error code) is in [`Reader::payload`].
    Frame(Head),
    /// DATA payload of `stream` at `[start, end)` of the segment being read.
    Data { stream: u32, start: usize, end: usize },
    /// DATA payload of `stream` lost in a hole.
    DataLost { stream: u32 },
    /// A DATA frame ended.
    DataEnd { stream: u32, end_stream: bool },
    /// The framing is lost; the reader waits for a plausible frame start.
    Error(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preface(usize),
    Head(usize),
    /// Payload being buffered: bytes left.
    Buffer(u32),
    /// The pad-length byte of a padded DATA frame.
    DataPad,
    /// DATA payload: data bytes left, then padding bytes.
    Data {
        left: u32,
        pad: u32,
    },
    /// Payload skipped: bytes left, and whether a DATA frame ends with it.
    Skip {
        left: u32,
        data_end: bool,
    },
    Lost,
}

/// The frame reader of one direction.
#[derive(Debug)]
pub(super) struct Reader {
    state: State,
    head_buf: [u8; 9],
    pub head: Head,
    pub payload: Vec<u8>,
    /// The buffered payload passed its bound: only its length is kept.
    overflow: bool,
    /// Syscalls that carried the current frame's first and last bytes.
    pub timing: Timing,
}

impl Reader {
    /// `preface`: the client's side of a connection seen from its start.
    pub fn new(preface: bool) -> Self {
        let state = if preface { State::Preface(0) } else { State::Head(0) };
        Self {
            state,
            head_buf: [0; 9],
            head: Head::default(),
            payload: Vec::new(),
            overflow: false,
            timing: Timing::default(),
        }
    }

    /// A reader that must first find a frame start (the other side of a joined connection).
    pub fn lost() -> Self {
        Self { state: State::Lost, ..Self::new(false) }
    }

    /// A new segment begins (`timing` of its syscall): a lost reader resumes if it starts
    /// with a plausible frame head.
    pub fn segment(&mut self, bytes: &[u8], timing: Timing) {
        if self.state == State::Lost && plausible(bytes) {
            self.state = State::Head(0);
        }
        if matches!(self.state, State::Head(0) | State::Preface(0)) {
            self.timing = timing;
        }
        self.timing.last_exit_ns = timing.last_exit_ns;
    }

    /// Reads from `bytes[*pos..]`.
    pub fn data(&mut self, bytes: &[u8], pos: &mut usize) -> Step {
        while *pos < bytes.len() {
            if let Some(step) = self.advance(bytes, pos) {
                return step;
            }
        }
        // A frame that ends exactly at the segment's end still has to say so.
        match self.state {
            State::Skip { left: 0, data_end } => self.skipped(0, data_end).unwrap_or(Step::More),
            State::Data { left: 0, pad } => {
                self.state = State::Skip { left: pad, data_end: true };
                self.skipped(pad, true).unwrap_or(Step::More)
            }
            _ => Step::More,
        }
    }

    /// One move of the state machine over `bytes[*pos..]` (not empty); a step to report.
    fn advance(&mut self, bytes: &[u8], pos: &mut usize) -> Option<Step> {
        let rest = &bytes[*pos..];
        match self.state {
            State::Lost => {
                *pos = bytes.len();
                Some(Step::More)
            }
            State::Preface(got) => {
                let n = rest.len().min(PREFACE.len() - got);
                if rest[..n] != PREFACE[got..got + n] {
                    self.state = State::Lost;
                    return Some(Step::Error(reason::BAD_PREFACE));
                }
                *pos += n;
                self.state = if got + n == PREFACE.len() { State::Head(0) } else { State::Preface(got + n) };
                None
            }
            State::Head(got) => {
                let n = rest.len().min(9 - got);
                self.head_buf[got..got + n].copy_from_slice(&rest[..n]);
                *pos += n;
                if got + n < 9 {
                    self.state = State::Head(got + n);
                    return None;
                }
                self.begin(Head::parse(&self.head_buf))
            }
            State::Buffer(left) => {
                let n = rest.len().min(left as usize);
                if !self.overflow {
                    self.payload.extend_from_slice(&rest[..n]);
                }
                *pos += n;
                self.state = State::Buffer(left - n as u32);
                (left as usize == n).then(|| self.buffered())
            }
            State::DataPad => {
                *pos += 1;
                self.data_pad(u32::from(rest[0]))
            }
            State::Data { left, pad } => {
                let n = rest.len().min(left as usize);
                let start = *pos;
                *pos += n;
                self.state = if left as usize == n {
                    State::Skip { left: pad, data_end: true }
                } else {
                    State::Data { left: left - n as u32, pad }
                };
                (n > 0).then_some(Step::Data { stream: self.head.stream, start, end: start + n })
            }
            State::Skip { left, data_end } => {
                let n = rest.len().min(left as usize);
                *pos += n;
                self.skipped(left - n as u32, data_end)
            }
        }
    }

    /// A padded DATA frame's pad length: what is left of the payload is data, then padding.
    fn data_pad(&mut self, pad: u32) -> Option<Step> {
        let Some(left) = self.head.len.checked_sub(1 + pad) else {
            self.state = State::Lost;
            return Some(Step::Error(reason::BAD_FRAME));
        };
        self.state = State::Data { left, pad };
        None
    }

    /// After `left` more skipped bytes: the frame's end, if it came.
    fn skipped(&mut self, left: u32, data_end: bool) -> Option<Step> {
        self.state = State::Skip { left, data_end };
        if left > 0 {
            return None;
        }
        self.state = State::Head(0);
        data_end.then_some(Step::DataEnd { stream: self.head.stream, end_stream: self.head.flags & END_STREAM != 0 })
    }

    /// A frame head is complete: decides how its payload is read.
    fn begin(&mut self, head: Head) -> Option<Step> {
        self.head = head;
        self.payload.clear();
        self.overflow = false;
        match head.kind {
            DATA if head.flags & PADDED != 0 && head.len > 0 => self.state = State::DataPad,
            DATA => self.state = State::Data { left: head.len, pad: 0 },
            HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM => {
                self.overflow = head.len as usize > MAX_HEADER_BLOCK;
                self.state = State::Buffer(head.len);
            }
            _ => self.state = State::Skip { left: head.len, data_end: false },
        }
        if head.len == 0 {
            return match head.kind {
                DATA => {
                    self.state = State::Head(0);
                    Some(Step::DataEnd { stream: head.stream, end_stream: head.flags & END_STREAM != 0 })
                }
                HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM => Some(self.buffered()),
                _ => {
                    self.state = State::Head(0);
                    None
                }
            };
        }
        None
    }

    /// A buffered frame is complete: strips padding and priority from header frames.
    fn buffered(&mut self) -> Step {
        self.state = State::Head(0);
        if self.overflow {
            return Step::Error(reason::HEADER_BLOCK_TOO_LARGE);
        }
        let head = self.head;
        if matches!(head.kind, HEADERS | PUSH_PROMISE) {
            let p = &self.payload;
            let pad = if head.flags & PADDED != 0 { p.first().map_or(usize::MAX, |&b| b as usize + 1) } else { 0 };
            let skip = usize::from(head.flags & PADDED != 0)
                + if head.kind == HEADERS && head.flags & PRIORITY_FLAG != 0 { 5 } else { 0 }
                + if head.kind == PUSH_PROMISE { 4 } else { 0 };
            let trailing = pad.saturating_sub(usize::from(head.flags & PADDED != 0));
            if pad == usize::MAX || skip + trailing > p.len() {
                self.state = State::Lost;
                return Step::Error(reason::BAD_FRAME);
            }
            let end = p.len() - trailing;
            self.payload.truncate(end);
            self.payload.drain(..skip);
        }
        Step::Frame(head)
    }

    /// A hole of `*left` bytes. Absorbed inside a skipped or DATA payload; elsewhere the
    /// framing is lost.
    pub fn gap(&mut self, left: &mut u64) -> Step {
        while *left > 0 {
            match self.state {
                State::Lost => {
                    *left = 0;
                    return Step::More;
                }
                State::Skip { left: l, data_end } => {
                    let n = (*left).min(u64::from(l)) as u32;
                    *left -= u64::from(n);
                    if let Some(step) = self.skipped(l - n, data_end) {
                        return step;
                    }
                }
                State::Data { left: l, pad } => {
                    let n = (*left).min(u64::from(l)) as u32;
                    *left -= u64::from(n);
                    self.state = State::Skip { left: l - n + pad, data_end: true };
                    return Step::DataLost { stream: self.head.stream };
                }
                _ => {
                    // Inside a frame head or a kept payload, or between frames: where the
                    // next frame starts is unknown.
                    *left = 0;
                    self.state = State::Lost;
                    return Step::Error(reason::GAP_IN_FRAME);
                }
            }
        }
        Step::More
    }
}
