//! Framing of one direction: a header block, then a body by Content-Length, chunked
//! coding or connection close. Body bytes are counted and skipped, never kept; holes
//! the framing can absorb are skipped, any other is reported as a [`Step::Error`].

use super::body::{parse_chunk_size, BodyKind};
use super::head::{early_check, find_head_end};
use super::{reason, starts_request, starts_response, Timing, KEEP_BUFFER, MAX_HEAD_LEN};

const MAX_CHUNK_LINE: usize = 4096;
/// Partial header blocks up to this size are checked as they arrive, so garbage is
/// refused at once instead of after 64 KiB of buffering (bounded cost per message).
const EARLY_CHECK_LEN: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Skipping until a data segment starts with a message.
    Seek,
    /// Not HTTP any more (tunnel), or closed.
    Opaque,
    /// Between messages: empty lines are skipped, anything else starts a message.
    Idle,
    /// Buffering a header block.
    Head,
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    ChunkDataEnd {
        cr: bool,
    },
    /// Trailer lines until an empty one; `line` counts the current line's bytes.
    Trailers {
        line: usize,
        total: usize,
    },
    UntilClose,
}

/// What a reader found.
#[derive(Debug)]
pub(super) enum Step {
    /// Needs more input.
    More,
    /// A header block is complete in `buf`: the owner must `begin_body` or desync.
    Head,
    /// The message ended.
    End,
    Error(&'static str),
}

#[derive(Debug)]
pub(super) struct Reader {
    kind: Kind,
    pub(super) state: State,
    /// The header block or chunk-size line being read.
    pub(super) buf: Vec<u8>,
    /// How much of `buf` was searched for the end of the header block.
    scanned: usize,
    /// Of the current (or last) message.
    pub(super) timing: Timing,
    pub(super) body_len: u64,
}

impl Reader {
    pub(super) fn new(kind: Kind, state: State) -> Self {
        Self { kind, state, buf: Vec::new(), scanned: 0, timing: Timing::default(), body_len: 0 }
    }

    pub(super) fn reset(&mut self, state: State) {
        self.state = state;
        self.clear_buf();
    }

    fn clear_buf(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.scanned = 0;
    }

    /// After `Step::Head`; true when the message has no body and is already complete.
    pub(super) fn begin_body(&mut self, body: BodyKind) -> bool {
        self.clear_buf();
        let (state, ended) = match body {
            BodyKind::None | BodyKind::Length(0) => (State::Idle, true),
            BodyKind::Length(n) => (State::Body { remaining: n }, false),
            BodyKind::Chunked => (State::ChunkSize, false),
            BodyKind::UntilClose => (State::UntilClose, false),
            BodyKind::Tunnel => (State::Opaque, true),
        };
        self.state = state;
        ended
    }

    /// Consumes `bytes[*pos..]` (one data segment) until something happens.
    pub(super) fn data(&mut self, bytes: &[u8], pos: &mut usize, enter: u64, exit: u64, tid: u32) -> Step {
        while let Some(rest) = bytes.get(*pos..).filter(|r| !r.is_empty()) {
            let found = match self.state {
                State::Opaque => {
                    *pos = bytes.len();
                    None
                }
                State::Seek => {
                    self.seek(rest, pos, bytes.len());
                    None
                }
                State::Idle => {
                    self.idle(
                        rest,
                        pos,
                        Timing { first_tid: tid, first_enter_ns: enter, first_exit_ns: exit, last_exit_ns: exit },
                    );
                    None
                }
                State::Head => self.head(rest, pos, exit),
                State::Body { remaining } => {
                    let left = self.skip_body(remaining, rest.len(), pos, exit);
                    self.state = if left == 0 { State::Idle } else { State::Body { remaining: left } };
                    (left == 0).then_some(Step::End)
                }
                State::ChunkData { remaining } => {
                    let left = self.skip_body(remaining, rest.len(), pos, exit);
                    self.state = if left == 0 {
                        State::ChunkDataEnd { cr: false }
                    } else {
                        State::ChunkData { remaining: left }
                    };
                    None
                }
                State::ChunkSize => self.chunk_size(rest, pos, exit),
                State::ChunkDataEnd { cr } => self.chunk_data_end(cr, rest, pos, exit),
                State::Trailers { line, total } => self.trailers(line, total, rest, pos, exit),
                State::UntilClose => {
                    self.timing.last_exit_ns = exit;
                    self.body_len = self.body_len.saturating_add(rest.len() as u64);
                    *pos = bytes.len();
                    None
                }
            };
            if let Some(step) = found {
                return step;
            }
        }
        Step::More
    }

    /// Skipping to a message start: only a segment's first byte may be one (segments
    /// start at syscall boundaries, where messages usually start).
    fn seek(&mut self, rest: &[u8], pos: &mut usize, segment_len: usize) {
        let starts = match self.kind {
            Kind::Request => starts_request(rest),
            Kind::Response => starts_response(rest),
        };
        if *pos == 0 && starts {
            self.state = State::Idle;
        } else {
            *pos = segment_len;
        }
    }

    /// Between messages: skips empty lines; anything else starts a message (`first`:
    /// the syscall that carries its first byte).
    fn idle(&mut self, rest: &[u8], pos: &mut usize, first: Timing) {
        let blank = rest.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        *pos += blank;
        if blank < rest.len() {
            self.timing = first;
            self.body_len = 0;
            self.clear_buf();
            self.state = State::Head;
        }
    }

    /// Buffers a header block until its empty line (bounded), refusing garbage early.
    fn head(&mut self, rest: &[u8], pos: &mut usize, exit: u64) -> Option<Step> {
        self.timing.last_exit_ns = exit;
        let old = self.buf.len();
        // The usual case: the whole block is in this segment. Copy just the block, not
        // the body bytes behind it.
        if old == 0 {
            if let Some(end) = find_head_end(rest, 0).filter(|&end| end <= MAX_HEAD_LEN) {
                self.buf.extend_from_slice(rest.get(..end).unwrap_or_default());
                *pos += end;
                return Some(Step::Head);
            }
        }
        let take = rest.len().min(MAX_HEAD_LEN.saturating_sub(old));
        self.buf.extend_from_slice(rest.get(..take).unwrap_or_default());
        if let Some(end) = find_head_end(&self.buf, self.scanned.saturating_sub(3)) {
            *pos += end.saturating_sub(old);
            self.buf.truncate(end);
            return Some(Step::Head);
        }
        *pos += take;
        self.scanned = self.buf.len();
        if self.buf.len() >= MAX_HEAD_LEN {
            return Some(Step::Error(reason::HEADER_TOO_LARGE));
        }
        if self.buf.len() <= EARLY_CHECK_LEN {
            if let Err(why) = early_check(self.kind, &self.buf) {
                return Some(Step::Error(why));
            }
        }
        None
    }

    /// A chunk-size line (bounded); size 0 starts the trailers.
    fn chunk_size(&mut self, rest: &[u8], pos: &mut usize, exit: u64) -> Option<Step> {
        self.timing.last_exit_ns = exit;
        let newline = rest.iter().position(|&b| b == b'\n');
        let part = rest.get(..newline.unwrap_or(rest.len())).unwrap_or_default();
        if self.buf.len() + part.len() > MAX_CHUNK_LINE {
            return Some(Step::Error(reason::CHUNK_LINE_TOO_LONG));
        }
        self.buf.extend_from_slice(part);
        *pos += part.len();
        if newline.is_some() {
            *pos += 1;
            let Some(size) = parse_chunk_size(&self.buf) else {
                return Some(Step::Error(reason::INVALID_CHUNK_SIZE));
            };
            self.buf.clear();
            self.state =
                if size == 0 { State::Trailers { line: 0, total: 0 } } else { State::ChunkData { remaining: size } };
        }
        None
    }

    /// The CRLF (or bare LF) after a chunk's data.
    fn chunk_data_end(&mut self, cr: bool, rest: &[u8], pos: &mut usize, exit: u64) -> Option<Step> {
        self.timing.last_exit_ns = exit;
        *pos += 1;
        match rest.first() {
            Some(b'\r') if !cr => self.state = State::ChunkDataEnd { cr: true },
            Some(b'\n') => self.state = State::ChunkSize,
            _ => return Some(Step::Error(reason::INVALID_CHUNK_END)),
        }
        None
    }

    /// Trailer lines, skipped (bounded in total), until an empty one ends the message.
    fn trailers(&mut self, line: usize, total: usize, rest: &[u8], pos: &mut usize, exit: u64) -> Option<Step> {
        self.timing.last_exit_ns = exit;
        let newline = rest.iter().position(|&b| b == b'\n');
        let part = rest.get(..newline.unwrap_or(rest.len())).unwrap_or_default();
        let line = line + part.iter().filter(|&&b| b != b'\r').count();
        let total = total + part.len() + usize::from(newline.is_some());
        if total > MAX_HEAD_LEN {
            return Some(Step::Error(reason::HEADER_TOO_LARGE));
        }
        *pos += part.len();
        self.state = State::Trailers { line, total };
        if newline.is_some() {
            *pos += 1;
            if line == 0 {
                self.state = State::Idle;
                return Some(Step::End);
            }
            self.state = State::Trailers { line: 0, total };
        }
        None
    }

    /// Skips up to `remaining` body bytes of the `available` ones; returns what remains.
    fn skip_body(&mut self, remaining: u64, available: usize, pos: &mut usize, exit: u64) -> u64 {
        let n = remaining.min(available as u64);
        *pos += n as usize;
        self.body_len = self.body_len.saturating_add(n);
        self.timing.last_exit_ns = exit;
        remaining - n
    }

    /// Consumes `*left` missing bytes until something happens.
    pub(super) fn gap(&mut self, left: &mut u64) -> Step {
        while *left > 0 {
            match self.state {
                State::Seek | State::Opaque => *left = 0,
                State::UntilClose => {
                    self.body_len = self.body_len.saturating_add(*left);
                    *left = 0;
                }
                State::Idle => return Step::Error(reason::GAP_BETWEEN_MESSAGES),
                State::Head => return Step::Error(reason::GAP_IN_HEADER),
                State::Body { remaining } => {
                    let n = remaining.min(*left);
                    *left -= n;
                    self.body_len = self.body_len.saturating_add(n);
                    if n == remaining {
                        self.state = State::Idle;
                        return Step::End;
                    }
                    self.state = State::Body { remaining: remaining - n };
                }
                // A hole inside one chunk's data is harmless: its end is known.
                State::ChunkData { remaining } if *left <= remaining => {
                    self.body_len = self.body_len.saturating_add(*left);
                    self.state = if *left == remaining {
                        State::ChunkDataEnd { cr: false }
                    } else {
                        State::ChunkData { remaining: remaining - *left }
                    };
                    *left = 0;
                }
                State::ChunkData { .. } | State::ChunkSize | State::ChunkDataEnd { .. } | State::Trailers { .. } => {
                    return Step::Error(reason::GAP_IN_CHUNKED_BODY)
                }
            }
        }
        Step::More
    }
}
