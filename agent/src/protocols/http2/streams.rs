//! The connection: frames of both directions become streams, and each stream one
//! [`HttpExchange`] when its response ends, it is reset, or the connection closes.

use hoptrace_common::Direction;

use super::frame::{self, Reader, Step};
use super::hpack::Decoder;
use super::{parse_error, reason, side_of, GrpcInfo, H2Info, MAX_HEADER_BLOCK, MAX_STREAMS};
use crate::capture::stream::Segment;
use crate::model::span::Str;
use crate::protocols::http1::{Headers, HttpRequest, HttpResponse, Outcome};
use crate::protocols::{HttpExchange, L7Event, Timing};

/// 1xx statuses remembered per stream.
const MAX_INFORMATIONAL: usize = 16;
/// `http.request.method` when the method is not known (semantic conventions).
const OTHER_METHOD: &str = "_OTHER";

/// The HTTP/2 parser of one connection.
#[derive(Debug)]
pub struct Http2 {
    client_dir: Direction,
    /// 0: the client's side (requests), 1: the server's (responses).
    sides: [Side; 2],
    streams: Vec<Stream>,
    closed: bool,
    /// Recognised without the preface (see [`Http2::joined`]).
    joined: bool,
}

/// One direction: its frames, its HPACK table, the header block being assembled.
#[derive(Debug)]
struct Side {
    reader: Reader,
    hpack: Decoder,
    block: Vec<u8>,
    open: Option<OpenBlock>,
    /// Header blocks decoded so far.
    blocks: u32,
}

#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    /// PUSH_PROMISE: decoded (the table must follow it), not reported.
    push: bool,
    overflow: bool,
    timing: Timing,
}

#[derive(Debug, Default)]
struct Stream {
    id: u32,
    request: Option<HttpRequest>,
    response: Option<HttpResponse>,
    informational: Vec<u16>,
    grpc: bool,
    grpc_status: Option<u32>,
    messages: [MessageCounter; 2],
    partial: bool,
    body: [u64; 2],
}

/// Follows gRPC's 5-byte message prefixes (flag, 4-byte length) through DATA payloads.
#[derive(Debug, Default, Clone, Copy)]
struct MessageCounter {
    got: u8,
    len: [u8; 4],
    left: u32,
    messages: u32,
    /// DATA was lost in a hole: message boundaries are no longer known.
    lost: bool,
}

impl MessageCounter {
    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.lost {
            if self.left > 0 {
                let n = b.len().min(self.left as usize);
                self.left -= n as u32;
                b = &b[n..];
                continue;
            }
            if self.got >= 1 {
                self.len[self.got as usize - 1] = b[0];
            }
            self.got += 1;
            b = &b[1..];
            if self.got == 5 {
                self.messages += 1;
                self.left = u32::from_be_bytes(self.len);
                self.got = 0;
            }
        }
    }
}

/// What a decoded header block said, beyond its fields.
#[derive(Default)]
struct Decoded {
    headers: Headers,
    method: Option<(u32, u32)>,
    path: Option<(u32, u32)>,
    status: Option<u16>,
    grpc: bool,
    grpc_status: Option<u32>,
    partial: bool,
}

impl Http2 {
    /// A connection seen from its start; `client_dir` is where the preface goes.
    pub fn new(client_dir: Direction) -> Self {
        let side = |preface| Side {
            reader: Reader::new(preface),
            hpack: Decoder::new(),
            block: Vec::new(),
            open: None,
            blocks: 0,
        };
        Self { client_dir, sides: [side(true), side(false)], streams: Vec::new(), closed: false, joined: false }
    }

    /// The client's preface came after all: the connection was new, and the server's
    /// SETTINGS (sent on accept, and seen first) only made it look joined. Both tables
    /// start empty and fully known, as long as no header block was decoded yet (a server
    /// sends none before the client's first request).
    fn fresh_after_all(&mut self) {
        self.joined = false;
        if self.sides.iter().any(|side| side.blocks > 0) {
            return;
        }
        self.sides[0].reader = Reader::new(true);
        for side in &mut self.sides {
            side.hpack = Decoder::new();
        }
    }

    /// A connection upgraded from HTTP/1.1 (`Upgrade: h2c` answered 101): the upgraded
    /// request is stream 1, already sent; its response comes as HTTP/2 frames right
    /// after the 101, and the client's preface follows.
    pub fn upgraded(client_dir: Direction, request: HttpRequest) -> Self {
        let mut p = Self::new(client_dir);
        p.streams.push(Stream { id: 1, request: Some(request), ..Default::default() });
        p
    }

    /// A connection joined mid-flight, recognised by frames seen in `seen`: both HPACK
    /// tables are partly unknown, and the other direction waits for a frame start.
    pub fn joined(client_dir: Direction, seen: Direction) -> Self {
        let mut p = Self::new(client_dir);
        p.joined = true;
        for (i, side) in p.sides.iter_mut().enumerate() {
            side.hpack = Decoder::joined();
            side.reader = if i == side_of(client_dir, seen) { Reader::new(false) } else { Reader::lost() };
        }
        p
    }

    pub(super) fn feed_segments(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        if self.closed {
            return;
        }
        let s = side_of(self.client_dir, direction);
        for segment in segments {
            match segment {
                Segment::Data { bytes, .. } if s == 0 && self.joined && starts_preface(bytes) => {
                    self.fresh_after_all();
                    self.feed_segments(direction, std::slice::from_ref(segment), out);
                }
                Segment::Data { ts_enter_ns, ts_ns, tid, bytes, .. } => {
                    let timing = Timing {
                        first_tid: *tid,
                        first_enter_ns: *ts_enter_ns,
                        first_exit_ns: *ts_ns,
                        last_exit_ns: *ts_ns,
                    };
                    self.sides[s].reader.segment(bytes, timing);
                    let mut pos = 0;
                    loop {
                        let step = self.sides[s].reader.data(bytes, &mut pos);
                        if step == Step::More {
                            break;
                        }
                        self.step(s, step, bytes, out);
                    }
                }
                Segment::Gap { len, .. } => {
                    let mut left = *len;
                    loop {
                        let step = self.sides[s].reader.gap(&mut left);
                        if step == Step::More {
                            break;
                        }
                        self.step(s, step, &[], out);
                    }
                }
            }
        }
    }

    fn step(&mut self, s: usize, step: Step, bytes: &[u8], out: &mut Vec<L7Event>) {
        let last_exit = self.sides[s].reader.timing.last_exit_ns;
        match step {
            Step::More => {}
            Step::Frame(head) => self.frame(s, head, out),
            Step::Data { stream, start, end } => {
                if let Some(st) = self.stream(stream) {
                    st.body[s] += (end - start) as u64;
                    if st.grpc {
                        st.messages[s].feed(bytes.get(start..end).unwrap_or_default());
                    }
                }
            }
            Step::DataLost { stream } => {
                if let Some(st) = self.stream(stream) {
                    st.messages[s].lost = true;
                }
            }
            Step::DataEnd { stream, end_stream } => {
                if let Some(st) = self.stream(stream) {
                    st.touch(s, last_exit);
                }
                if end_stream && s == 1 {
                    self.finish(stream, Outcome::Complete, None, out);
                }
            }
            Step::Error(why) => {
                out.push(parse_error(why));
                // A header block may be lost with the framing: the table is not trusted.
                let side = &mut self.sides[s];
                side.hpack.forget();
                side.open = None;
                side.block.clear();
            }
        }
    }

    fn frame(&mut self, s: usize, head: frame::Head, out: &mut Vec<L7Event>) {
        let side = &mut self.sides[s];
        match head.kind {
            frame::HEADERS | frame::PUSH_PROMISE => {
                if side.open.is_some() {
                    out.push(parse_error(reason::EXPECTED_CONTINUATION));
                    side.hpack.forget();
                }
                side.block.clear();
                side.block.extend_from_slice(&side.reader.payload);
                side.open = Some(OpenBlock {
                    stream: head.stream,
                    end_stream: head.kind == frame::HEADERS && head.flags & frame::END_STREAM != 0,
                    push: head.kind == frame::PUSH_PROMISE,
                    overflow: false,
                    timing: side.reader.timing,
                });
            }
            frame::CONTINUATION => match side.open.as_mut() {
                Some(open) if open.stream == head.stream => {
                    open.timing.last_exit_ns = side.reader.timing.last_exit_ns;
                    if side.block.len() + side.reader.payload.len() > MAX_HEADER_BLOCK {
                        open.overflow = true;
                    } else {
                        side.block.extend_from_slice(&side.reader.payload);
                    }
                }
                _ => {
                    out.push(parse_error(reason::EXPECTED_CONTINUATION));
                    side.hpack.forget();
                    side.open = None;
                    return;
                }
            },
            frame::RST_STREAM => {
                let p = &side.reader.payload;
                let code = p.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let outcome = match self.stream(head.stream) {
                    Some(st) if st.response.is_some() => Outcome::ClosedMidResponse,
                    _ => Outcome::ClosedBeforeResponse,
                };
                self.finish(head.stream, outcome, Some(code), out);
                return;
            }
            _ => return,
        }
        if head.flags & frame::END_HEADERS != 0 {
            if let Some(open) = self.sides[s].open.take() {
                self.block_done(s, open, out);
            }
        }
    }

    /// A complete header block of `open.stream`, seen on side `s`.
    fn block_done(&mut self, s: usize, open: OpenBlock, out: &mut Vec<L7Event>) {
        if open.overflow {
            out.push(parse_error(reason::HEADER_BLOCK_TOO_LARGE));
            self.sides[s].hpack.forget();
            return;
        }
        let d = self.decode(s, out);
        if open.push {
            return;
        }
        if s == 0 {
            self.request_block(open, d, out);
        } else {
            self.response_block(open, d, out);
        }
    }

    fn decode(&mut self, s: usize, out: &mut Vec<L7Event>) -> Decoded {
        let side = &mut self.sides[s];
        side.blocks += 1;
        let mut d = Decoded::default();
        let mut too_large = false;
        let result = side.hpack.decode(&side.block, |name, value| {
            if d.headers.block_len() + name.len() + value.len() > MAX_HEADER_BLOCK {
                too_large = true;
                return;
            }
            let at = d.headers.push(name, value);
            match name {
                b":method" => d.method = Some(at),
                b":path" => d.path = Some(at),
                b":status" => {
                    let status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    d.status = status.filter(|s| (100..=999).contains(s));
                }
                b"content-type" => d.grpc = value.starts_with(b"application/grpc"),
                b"grpc-status" => d.grpc_status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
                _ => {}
            }
        });
        side.block.clear();
        match result {
            Ok(0) => {}
            Ok(_) => {
                out.push(parse_error(reason::PARTIAL_HEADERS));
                d.partial = true;
            }
            Err(e) => {
                out.push(parse_error(e.reason()));
                side.hpack.forget();
                d.partial = true;
            }
        }
        if too_large {
            out.push(parse_error(reason::HEADER_LIST_TOO_LARGE));
            d.partial = true;
        }
        d
    }

    fn request_block(&mut self, open: OpenBlock, d: Decoded, out: &mut Vec<L7Event>) {
        if self.stream(open.stream).is_none() {
            if self.streams.len() >= MAX_STREAMS {
                out.push(parse_error(reason::TOO_MANY_STREAMS));
                return;
            }
            self.streams.push(Stream { id: open.stream, ..Default::default() });
        }
        let Some(st) = self.stream(open.stream) else { return };
        if st.request.is_some() {
            // Request trailers: nothing the span needs.
            return;
        }
        let method = d.method.map_or(Str::from(OTHER_METHOD), |at| method_str(d.headers.value_at(at)));
        let target = d.path.unwrap_or((0, 0));
        st.request = Some(HttpRequest::from_fields(method, target, 2, d.headers, open.timing));
        st.grpc = d.grpc;
        st.partial |= d.partial;
    }

    fn response_block(&mut self, open: OpenBlock, d: Decoded, out: &mut Vec<L7Event>) {
        let Some(st) = self.stream(open.stream) else {
            out.push(parse_error(reason::UNMATCHED_RESPONSE));
            return;
        };
        st.partial |= d.partial;
        if d.grpc_status.is_some() {
            st.grpc_status = d.grpc_status;
        }
        match (&mut st.response, d.status) {
            (None, Some(status @ 100..=199)) => {
                if st.informational.len() < MAX_INFORMATIONAL {
                    st.informational.push(status);
                }
                return;
            }
            (None, status) => {
                // `:status` missing, invalid or not decodable (joined mid-connection): 0,
                // never a guess, and the stream's headers count as partial.
                if status.is_none() {
                    out.push(parse_error(reason::MISSING_STATUS));
                    st.partial = true;
                }
                let status = status.unwrap_or(0);
                st.response =
                    Some(HttpResponse { status, version: 2, headers: d.headers, timing: open.timing, body_len: 0 });
            }
            (Some(r), _) => r.timing.last_exit_ns = open.timing.last_exit_ns,
        }
        if open.end_stream {
            self.finish(open.stream, Outcome::Complete, None, out);
        }
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// Reports stream `id` (if tracked and its request was seen) and forgets it.
    fn finish(&mut self, id: u32, outcome: Outcome, reset: Option<u32>, out: &mut Vec<L7Event>) {
        let Some(i) = self.streams.iter().position(|s| s.id == id) else { return };
        let st = self.streams.swap_remove(i);
        out.extend(st.exchange(outcome, reset).map(L7Event::Http));
    }

    pub(super) fn close_all(&mut self, out: &mut Vec<L7Event>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut streams = std::mem::take(&mut self.streams);
        streams.sort_by_key(|s| s.id);
        for st in streams {
            let outcome =
                if st.response.is_some() { Outcome::ClosedMidResponse } else { Outcome::ClosedBeforeResponse };
            out.extend(st.exchange(outcome, None).map(L7Event::Http));
        }
    }
}

impl Stream {
    /// A frame of this stream ended on side `s` at `last_exit`.
    fn touch(&mut self, s: usize, last_exit: u64) {
        if s == 0 {
            if let Some(r) = self.request.as_mut() {
                r.timing.last_exit_ns = last_exit;
            }
        } else if let Some(r) = self.response.as_mut() {
            r.timing.last_exit_ns = last_exit;
        }
    }

    fn exchange(self, outcome: Outcome, reset: Option<u32>) -> Option<HttpExchange> {
        let mut request = self.request?;
        request.body_len = self.body[0];
        let response = self.response.map(|mut r| {
            r.body_len = self.body[1];
            r
        });
        let grpc = self.grpc.then(|| GrpcInfo {
            status: self.grpc_status,
            request_messages: self.messages[0].messages,
            response_messages: self.messages[1].messages,
        });
        let h2 = H2Info { stream_id: self.id, partial_headers: self.partial, reset, grpc };
        Some(HttpExchange {
            request,
            response,
            informational: self.informational.into_boxed_slice(),
            outcome,
            pipelined: false,
            h2: Some(Box::new(h2)),
        })
    }
}

/// Whether a segment starts with the client connection preface (or all of it so far).
fn starts_preface(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && super::PREFACE.starts_with(&bytes[..bytes.len().min(super::PREFACE.len())])
}

/// The registered methods are shared statics; any other is copied once.
fn method_str(method: &[u8]) -> Str {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"];
    match KNOWN.iter().find(|m| m.as_bytes() == method) {
        Some(&m) => Str::from(m),
        None => match std::str::from_utf8(method) {
            Ok(m) if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                Str::from(m.to_owned())
            }
            _ => Str::from(OTHER_METHOD),
        },
    }
}
