//! HTTP/1.0 and HTTP/1.1: request/response exchanges out of a connection's two byte
//! streams.
//!
//! Each direction has a `Reader` that only frames messages (header block, then a body
//! by Content-Length, chunked coding or connection close) and never keeps body bytes;
//! header blocks are handed to `httparse`. [`Http1`] pairs what the readers find: a
//! response answers the oldest unanswered request (HTTP/1 has no other way to say which).
//!
//! The stream can have holes (capture cap, lost records). A hole the framing can absorb
//! (inside a body of known length, or inside one chunk's data) is just skipped; any
//! other hole, and any malformed message, makes the direction *desynchronize*: the
//! partial message is dropped, a [`L7Event::ParseError`] says why, and the reader waits
//! for a segment that starts with a request or status line (segments start at syscall
//! boundaries, which is where messages usually start). Pairing survives a desync by
//! accounting for the lost message on its side of the queue.

use std::collections::VecDeque;

use hoptrace_common::{Direction, Role};

use super::{opposite, L7Event, Protocol};
use crate::capture::stream::Segment;

const PROTOCOL: &str = "http1";
/// Largest header block (or trailer section) buffered before giving up on a message.
pub const MAX_HEAD_LEN: usize = 64 * 1024;
/// Requests kept while waiting for a response; the ones pipelined beyond this are
/// counted and only their number is kept, so every response still pairs with its own
/// request.
pub const MAX_PIPELINED: usize = 64;
const MAX_HEADERS: usize = 256;
const MAX_CHUNK_LINE: usize = 4096;
/// 1xx statuses remembered per exchange (a peer may send any number).
const MAX_INFORMATIONAL: usize = 16;
/// Partial header blocks up to this size are checked as they arrive, so garbage is
/// refused at once instead of after 64 KiB of buffering (bounded cost per message).
const EARLY_CHECK_LEN: usize = 1024;
/// Buffers that grew past this are freed, not kept, once their message is done.
const KEEP_BUFFER: usize = 8 * 1024;
/// Request-line starts accepted by detection and resynchronization.
const METHODS: [&[u8]; 9] =
    [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

/// Stable labels of [`L7Event::ParseError`]s from this parser.
pub mod reason {
    pub const HEADER_TOO_LARGE: &str = "header_too_large";
    pub const TOO_MANY_HEADERS: &str = "too_many_headers";
    pub const INVALID_HEADER_NAME: &str = "invalid_header_name";
    pub const INVALID_HEADER_VALUE: &str = "invalid_header_value";
    pub const INVALID_NEWLINE: &str = "invalid_newline";
    pub const INVALID_STATUS: &str = "invalid_status";
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const INVALID_VERSION: &str = "invalid_version";
    pub const MALFORMED_HEAD: &str = "malformed_head";
    pub const INVALID_CONTENT_LENGTH: &str = "invalid_content_length";
    pub const INVALID_TRANSFER_ENCODING: &str = "invalid_transfer_encoding";
    pub const INVALID_CHUNK_SIZE: &str = "invalid_chunk_size";
    pub const CHUNK_LINE_TOO_LONG: &str = "chunk_line_too_long";
    pub const INVALID_CHUNK_END: &str = "invalid_chunk_end";
    pub const GAP_IN_HEADER: &str = "gap_in_header";
    pub const GAP_IN_CHUNKED_BODY: &str = "gap_in_chunked_body";
    pub const GAP_BETWEEN_MESSAGES: &str = "gap_between_messages";
    pub const TOO_MANY_PIPELINED: &str = "too_many_pipelined";
    pub const UNMATCHED_RESPONSE: &str = "unmatched_response";
    /// The connection closed in the middle of a request's header block (a client that
    /// gave up, a scanner, a truncated request): no exchange, but not silently.
    pub const CLOSED_MID_HEADER: &str = "closed_mid_header";

    /// Every label, so metrics can pre-register them.
    pub const ALL: [&str; 20] = [
        HEADER_TOO_LARGE,
        TOO_MANY_HEADERS,
        INVALID_HEADER_NAME,
        INVALID_HEADER_VALUE,
        INVALID_NEWLINE,
        INVALID_STATUS,
        INVALID_TOKEN,
        INVALID_VERSION,
        MALFORMED_HEAD,
        INVALID_CONTENT_LENGTH,
        INVALID_TRANSFER_ENCODING,
        INVALID_CHUNK_SIZE,
        CHUNK_LINE_TOO_LONG,
        INVALID_CHUNK_END,
        GAP_IN_HEADER,
        GAP_IN_CHUNKED_BODY,
        GAP_BETWEEN_MESSAGES,
        TOO_MANY_PIPELINED,
        UNMATCHED_RESPONSE,
        CLOSED_MID_HEADER,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Lowercased: HTTP field names are case-insensitive.
    pub name: String,
    /// As received (not necessarily UTF-8).
    pub value: Vec<u8>,
}

/// Kernel monotonic timestamps of the syscalls carrying the first and last byte of a
/// message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Thread whose syscall carried the first byte.
    pub first_tid: u32,
    pub first_enter_ns: u64,
    pub first_exit_ns: u64,
    pub last_exit_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Raw request-target.
    pub target: Vec<u8>,
    /// Minor version: 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
    pub timing: Timing,
    /// Body bytes (payload only, without chunk framing), including bytes lost in gaps.
    pub body_len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<Header>,
    pub timing: Timing,
    pub body_len: u64,
}

impl HttpRequest {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }
}

impl HttpResponse {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name == name).map(|h| h.value.as_slice())
}

/// Every value of header `name` (lowercase), in order: for list headers such as
/// tracestate and baggage that may be split over several lines.
pub fn header_values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers.iter().filter(move |h| h.name == name).map(|h| h.value.as_slice())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The final response was read to its end (for a body delimited by the connection
    /// closing: the close came).
    Complete,
    ClosedBeforeResponse,
    ClosedMidResponse,
    /// The response was lost to a gap or could not be parsed.
    Desync,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    pub request: HttpRequest,
    pub response: Option<HttpResponse>,
    /// 1xx statuses seen before the final response.
    pub informational: Vec<u16>,
    pub outcome: Outcome,
}

/// HTTP/1 detection: a request line in the request direction, or a status line in the
/// response direction (the agent may join a connection mid-flight). A role that
/// disagrees with where the bytes were seen rejects the connection.
pub fn detect(role: Role, direction: Direction, first_bytes: &[u8]) -> Option<Box<dyn Protocol>> {
    let request_dir = if starts_request(first_bytes) {
        direction
    } else if starts_response(first_bytes) {
        opposite(direction)
    } else {
        return None;
    };
    let expected = match role {
        Role::Server => Some(Direction::Ingress),
        Role::Client => Some(Direction::Egress),
        Role::Unknown => None,
    };
    if expected.is_some_and(|d| d != request_dir) {
        return None;
    }
    // A known role means the connection was seen from its start; otherwise, or when a
    // response came first, the other direction may be mid-message.
    Some(Box::new(if role != Role::Unknown && request_dir == direction {
        Http1::new(request_dir)
    } else {
        Http1::mid_stream(request_dir, direction)
    }))
}

fn starts_request(bytes: &[u8]) -> bool {
    METHODS.iter().any(|m| bytes.starts_with(m))
}

fn starts_response(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.")
}

/// The HTTP/1 parser of one connection.
#[derive(Debug)]
pub struct Http1 {
    request_dir: Direction,
    requests: Reader,
    responses: Reader,
    /// Requests waiting for their final response, oldest first.
    pending: VecDeque<Pending>,
    /// Requests pipelined behind `pending` beyond [`MAX_PIPELINED`]: not kept (already
    /// counted), but their responses come after those of `pending` and are skipped in
    /// order, so that no response is paired with the wrong request.
    overflow: u64,
    next_id: u64,
    /// The request whose body the request reader is in.
    current_request: Option<u64>,
    /// The final response being read and the request it answers. `None` between
    /// responses, during a 1xx, and for a response that answers no known request.
    inflight: Option<Answer>,
    closed: bool,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    /// `None`: a request was lost (gap, malformed); its response is dropped, which keeps
    /// the responses after it paired right.
    request: Option<HttpRequest>,
    informational: Vec<u16>,
}

#[derive(Debug)]
struct Answer {
    pending: Pending,
    response: HttpResponse,
}

impl Http1 {
    /// A connection seen from its first byte in both directions.
    pub fn new(request_dir: Direction) -> Self {
        Self {
            request_dir,
            requests: Reader::new(Kind::Request, State::Idle),
            responses: Reader::new(Kind::Response, State::Idle),
            pending: VecDeque::new(),
            overflow: 0,
            next_id: 0,
            current_request: None,
            inflight: None,
            closed: false,
        }
    }

    /// A connection joined mid-flight, first seen through a message start in `seen`:
    /// the other direction is ignored until a segment starts with a message.
    pub fn mid_stream(request_dir: Direction, seen: Direction) -> Self {
        let mut p = Self::new(request_dir);
        p.reader(seen != request_dir).state = State::Seek;
        p
    }

    fn reader(&mut self, is_request: bool) -> &mut Reader {
        if is_request {
            &mut self.requests
        } else {
            &mut self.responses
        }
    }

    /// Acts on what a reader found; false when the reader needs more input.
    fn handle(&mut self, is_request: bool, step: Step, out: &mut Vec<L7Event>) -> bool {
        match step {
            Step::More => return false,
            Step::Head => {
                let body = if is_request { self.request_head(out) } else { self.response_head(out) };
                match body {
                    Ok(body) => {
                        if self.reader(is_request).begin_body(body) {
                            self.message_end(is_request, out);
                        }
                    }
                    Err(reason) => self.desync(is_request, reason, out),
                }
            }
            Step::End => self.message_end(is_request, out),
            Step::Error(reason) => self.desync(is_request, reason, out),
        }
        true
    }

    fn request_head(&mut self, out: &mut Vec<L7Event>) -> Result<BodyKind, &'static str> {
        let head = parse_request_head(&self.requests.buf)?;
        let body = if head.method == "CONNECT" {
            // Bytes after CONNECT are the tunnel's; the response says whether it opened.
            BodyKind::Tunnel
        } else {
            request_body(&head.headers)?
        };
        let request = HttpRequest {
            method: head.method,
            target: head.target,
            version: head.version,
            headers: head.headers,
            timing: self.requests.timing,
            body_len: 0,
        };
        self.current_request = self.push_pending(Some(request), out);
        Ok(body)
    }

    fn response_head(&mut self, out: &mut Vec<L7Event>) -> Result<BodyKind, &'static str> {
        let head = parse_response_head(&self.responses.buf)?;
        if (100..200).contains(&head.status) && head.status != 101 {
            if let Some(front) = self.pending.front_mut() {
                if front.informational.len() < MAX_INFORMATIONAL {
                    front.informational.push(head.status);
                }
            }
            return Ok(BodyKind::None);
        }
        let Some(pending) = self.pending.pop_front() else {
            if self.overflow > 0 {
                // Answers a request that was pipelined beyond the limit (already counted).
                self.overflow -= 1;
                return response_body(head.status, None, &head.headers);
            }
            // The agent joined mid-connection, or the request was never seen: the body
            // is still framed, to find the next response.
            out.push(parse_error(reason::UNMATCHED_RESPONSE));
            return response_body(head.status, None, &head.headers);
        };
        let method = pending.request.as_ref().map(|r| r.method.as_str());
        let body = response_body(head.status, method, &head.headers);
        match body {
            Ok(BodyKind::Tunnel) => self.requests.state = State::Opaque,
            // A refused CONNECT: the client may go on with HTTP.
            _ if method == Some("CONNECT") && self.requests.state == State::Opaque => self.requests.state = State::Seek,
            _ => {}
        }
        let response = HttpResponse {
            status: head.status,
            version: head.version,
            headers: head.headers,
            timing: self.responses.timing,
            body_len: 0,
        };
        // Set even when the body framing is invalid, so the desync reports this exchange.
        self.inflight = Some(Answer { pending, response });
        body
    }

    fn message_end(&mut self, is_request: bool, out: &mut Vec<L7Event>) {
        self.sync_request();
        if is_request {
            self.current_request = None;
            return;
        }
        if let Some(Answer { pending, mut response }) = self.inflight.take() {
            response.timing = self.responses.timing;
            response.body_len = self.responses.body_len;
            emit(out, pending, Some(response), Outcome::Complete);
        }
    }

    /// Queues a request (or a lost one). Beyond [`MAX_PIPELINED`], and behind requests
    /// already over it, a request is counted and not kept; its id is `None` then.
    fn push_pending(&mut self, request: Option<HttpRequest>, out: &mut Vec<L7Event>) -> Option<u64> {
        if self.overflow > 0 || self.pending.len() >= MAX_PIPELINED {
            self.overflow += 1;
            // A lost request (None) was counted when it was lost.
            if request.is_some() {
                out.push(parse_error(reason::TOO_MANY_PIPELINED));
            }
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending { id, request, informational: Vec::new() });
        Some(id)
    }

    /// Copies the request reader's progress (body so far, last byte) into the request
    /// it is reading, wherever that request is now.
    fn sync_request(&mut self) {
        let Some(id) = self.current_request else {
            return;
        };
        let (last_exit_ns, body_len) = (self.requests.timing.last_exit_ns, self.requests.body_len);
        let queued = self.pending.iter_mut().rev().find(|p| p.id == id);
        let answering = self.inflight.as_mut().map(|a| &mut a.pending).filter(|p| p.id == id);
        if let Some(request) = queued.or(answering).and_then(|p| p.request.as_mut()) {
            request.timing.last_exit_ns = last_exit_ns;
            request.body_len = body_len;
        }
    }

    /// Gives up on the current message of one direction and waits for a fresh start.
    fn desync(&mut self, is_request: bool, why: &'static str, out: &mut Vec<L7Event>) {
        out.push(parse_error(why));
        let began = matches!(self.reader(is_request).state, State::Idle | State::Head);
        if is_request {
            self.sync_request();
            self.current_request = None;
            if began {
                // A request started here and is gone; its response will still come.
                self.push_pending(None, out);
            }
        } else {
            match self.inflight.take() {
                Some(Answer { pending, mut response }) => {
                    response.timing = self.responses.timing;
                    response.body_len = self.responses.body_len;
                    emit(out, pending, Some(response), Outcome::Desync);
                }
                None if began => {
                    // A response started here: it answered the oldest request.
                    if let Some(pending) = self.pending.pop_front() {
                        emit(out, pending, None, Outcome::Desync);
                    } else {
                        self.overflow = self.overflow.saturating_sub(1);
                    }
                }
                None => {}
            }
        }
        self.reader(is_request).reset(State::Seek);
    }
}

impl Protocol for Http1 {
    fn name(&self) -> &'static str {
        PROTOCOL
    }

    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        if self.closed {
            return;
        }
        let is_request = direction == self.request_dir;
        for segment in segments {
            match segment {
                Segment::Data { ts_enter_ns, ts_ns, tid, bytes, .. } => {
                    let mut pos = 0;
                    loop {
                        let step = self.reader(is_request).data(bytes, &mut pos, *ts_enter_ns, *ts_ns, *tid);
                        if !self.handle(is_request, step, out) {
                            break;
                        }
                    }
                }
                Segment::Gap { len, .. } => {
                    let mut left = *len;
                    loop {
                        let step = self.reader(is_request).gap(&mut left);
                        if !self.handle(is_request, step, out) {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn close(&mut self, out: &mut Vec<L7Event>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.sync_request();
        if self.requests.state == State::Head {
            // A request head that never completed is not an exchange, but it is traffic
            // the agent saw and could not report: count it.
            out.push(parse_error(reason::CLOSED_MID_HEADER));
        }
        match self.inflight.take() {
            Some(Answer { pending, mut response }) => {
                response.timing = self.responses.timing;
                response.body_len = self.responses.body_len;
                let outcome = if self.responses.state == State::UntilClose {
                    Outcome::Complete
                } else {
                    Outcome::ClosedMidResponse
                };
                emit(out, pending, Some(response), outcome);
            }
            None => {
                if self.responses.state == State::Head {
                    if let Some(pending) = self.pending.pop_front() {
                        emit(out, pending, None, Outcome::ClosedMidResponse);
                    }
                }
            }
        }
        for pending in std::mem::take(&mut self.pending) {
            emit(out, pending, None, Outcome::ClosedBeforeResponse);
        }
        self.overflow = 0;
        self.requests.reset(State::Opaque);
        self.responses.reset(State::Opaque);
    }
}

fn emit(out: &mut Vec<L7Event>, p: Pending, response: Option<HttpResponse>, outcome: Outcome) {
    if let Some(request) = p.request {
        out.push(L7Event::Http(HttpExchange { request, response, informational: p.informational, outcome }));
    }
}

fn parse_error(reason: &'static str) -> L7Event {
    L7Event::ParseError { protocol: PROTOCOL, reason }
}

// ---------------------------------------------------------------------------------------
// Header blocks.

struct RequestHead {
    method: String,
    target: Vec<u8>,
    version: u8,
    headers: Vec<Header>,
}

struct ResponseHead {
    status: u16,
    version: u8,
    headers: Vec<Header>,
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => reason::INVALID_HEADER_NAME,
        httparse::Error::HeaderValue => reason::INVALID_HEADER_VALUE,
        httparse::Error::NewLine => reason::INVALID_NEWLINE,
        httparse::Error::Status => reason::INVALID_STATUS,
        httparse::Error::Token => reason::INVALID_TOKEN,
        httparse::Error::TooManyHeaders => reason::TOO_MANY_HEADERS,
        httparse::Error::Version => reason::INVALID_VERSION,
    }
}

fn response_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    // Old servers still fold long header lines; clients accept it, so does the agent.
    config.allow_obsolete_multiline_headers_in_responses(true);
    config
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<Header> {
    headers.iter().map(|h| Header { name: h.name.to_ascii_lowercase(), value: h.value.to_vec() }).collect()
}

/// httparse's header slots, left uninitialized: filling 256 `EMPTY_HEADER`s (8 KiB) on
/// every parse cost more than parsing a typical head.
fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses a complete header block (`buf` ends with its empty line).
fn parse_request_head(buf: &[u8]) -> Result<RequestHead, &'static str> {
    let mut headers = uninit_headers();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reason::MALFORMED_HEAD),
        Err(e) => return Err(httparse_reason(e)),
    }
    match (req.method, req.path, req.version) {
        (Some(method), Some(path), Some(version)) => Ok(RequestHead {
            method: method.to_owned(),
            target: path.as_bytes().to_vec(),
            version,
            headers: owned_headers(req.headers),
        }),
        _ => Err(reason::MALFORMED_HEAD),
    }
}

fn parse_response_head(buf: &[u8]) -> Result<ResponseHead, &'static str> {
    let mut headers = uninit_headers();
    let mut resp = httparse::Response::new(&mut []);
    match response_config().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reason::MALFORMED_HEAD),
        Err(e) => return Err(httparse_reason(e)),
    }
    match (resp.code, resp.version) {
        // httparse takes any three digits; there is no 0xx class (RFC 9110 §15), and a
        // status below 100 would be exported as if it were a final answer.
        (Some(status), Some(_)) if status < 100 => Err(reason::INVALID_STATUS),
        (Some(status), Some(version)) => Ok(ResponseHead { status, version, headers: owned_headers(resp.headers) }),
        _ => Err(reason::MALFORMED_HEAD),
    }
}

/// Checks a header block still arriving, so that garbage is refused before it fills the
/// buffer. `Partial` means "fine so far".
fn early_check(kind: Kind, buf: &[u8]) -> Result<(), &'static str> {
    let mut headers = uninit_headers();
    let result = match kind {
        Kind::Request => httparse::Request::new(&mut []).parse_with_uninit_headers(buf, &mut headers),
        Kind::Response => response_config().parse_response_with_uninit_headers(
            &mut httparse::Response::new(&mut []),
            buf,
            &mut headers,
        ),
    };
    result.map(|_| ()).map_err(httparse_reason)
}

/// End (exclusive) of the first empty line at or after `from`: the end of a header
/// block whose start has no leading newlines. Bare LF line ends are accepted, as
/// httparse accepts them.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    tail.iter().enumerate().filter(|&(_, &b)| b == b'\n').find_map(|(i, _)| match (tail.get(i + 1), tail.get(i + 2)) {
        (Some(b'\n'), _) => Some(from + i + 2),
        (Some(b'\r'), Some(b'\n')) => Some(from + i + 3),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// Message bodies (RFC 9112 §6).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    /// The connection stops being HTTP (CONNECT, 101 Switching Protocols).
    Tunnel,
}

fn request_body(headers: &[Header]) -> Result<BodyKind, &'static str> {
    if let Some(chunked) = transfer_encoding_chunked(headers) {
        // A request cannot be delimited by close: any coding but a final chunked is fatal.
        return if chunked { Ok(BodyKind::Chunked) } else { Err(reason::INVALID_TRANSFER_ENCODING) };
    }
    Ok(match content_length(headers)? {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::None,
    })
}

fn response_body(status: u16, method: Option<&str>, headers: &[Header]) -> Result<BodyKind, &'static str> {
    if status == 101 || (method == Some("CONNECT") && (200..300).contains(&status)) {
        return Ok(BodyKind::Tunnel);
    }
    if method == Some("HEAD") || status < 200 || status == 204 || status == 304 {
        return Ok(BodyKind::None);
    }
    if let Some(chunked) = transfer_encoding_chunked(headers) {
        return Ok(if chunked { BodyKind::Chunked } else { BodyKind::UntilClose });
    }
    Ok(match content_length(headers)? {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::UntilClose,
    })
}

/// `None` without Transfer-Encoding; otherwise whether its last coding is chunked.
fn transfer_encoding_chunked(headers: &[Header]) -> Option<bool> {
    let mut present = false;
    let mut last: &[u8] = b"";
    for value in header_values(headers, "transfer-encoding") {
        present = true;
        for coding in value.split(|&b| b == b',').map(trim_ows).filter(|c| !c.is_empty()) {
            last = coding;
        }
    }
    present.then(|| last.eq_ignore_ascii_case(b"chunked"))
}

/// Content-Length; repeated values (several lines or a list) must all agree.
fn content_length(headers: &[Header]) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in header_values(headers, "content-length") {
        for item in value.split(|&b| b == b',').map(trim_ows) {
            let n = parse_decimal(item).ok_or(reason::INVALID_CONTENT_LENGTH)?;
            if length.is_some_and(|l| l != n) {
                return Err(reason::INVALID_CONTENT_LENGTH);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// `chunk-size [ chunk-ext ]` (line without its end); extensions are ignored.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (size, ext) = line.split_at(digits);
    if size.is_empty() {
        return None;
    }
    let ext = trim_ows(ext);
    if !ext.is_empty() && ext.first() != Some(&b';') {
        return None;
    }
    size.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

// ---------------------------------------------------------------------------------------
// Framing of one direction.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
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
enum Step {
    /// Needs more input.
    More,
    /// A header block is complete in `buf`: the owner must `begin_body` or desync.
    Head,
    /// The message ended.
    End,
    Error(&'static str),
}

#[derive(Debug)]
struct Reader {
    kind: Kind,
    state: State,
    /// The header block or chunk-size line being read.
    buf: Vec<u8>,
    /// How much of `buf` was searched for the end of the header block.
    scanned: usize,
    /// Of the current (or last) message.
    timing: Timing,
    body_len: u64,
}

impl Reader {
    fn new(kind: Kind, state: State) -> Self {
        Self { kind, state, buf: Vec::new(), scanned: 0, timing: Timing::default(), body_len: 0 }
    }

    fn reset(&mut self, state: State) {
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
    fn begin_body(&mut self, body: BodyKind) -> bool {
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
    fn data(&mut self, bytes: &[u8], pos: &mut usize, enter: u64, exit: u64, tid: u32) -> Step {
        while let Some(rest) = bytes.get(*pos..).filter(|r| !r.is_empty()) {
            match self.state {
                State::Opaque => *pos = bytes.len(),
                State::Seek => {
                    let starts = match self.kind {
                        Kind::Request => starts_request(rest),
                        Kind::Response => starts_response(rest),
                    };
                    if *pos == 0 && starts {
                        self.state = State::Idle;
                    } else {
                        *pos = bytes.len();
                    }
                }
                State::Idle => {
                    let blank = rest.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                    *pos += blank;
                    if blank < rest.len() {
                        self.timing =
                            Timing { first_tid: tid, first_enter_ns: enter, first_exit_ns: exit, last_exit_ns: exit };
                        self.body_len = 0;
                        self.clear_buf();
                        self.state = State::Head;
                    }
                }
                State::Head => {
                    self.timing.last_exit_ns = exit;
                    let old = self.buf.len();
                    let take = rest.len().min(MAX_HEAD_LEN.saturating_sub(old));
                    self.buf.extend_from_slice(rest.get(..take).unwrap_or_default());
                    if let Some(end) = find_head_end(&self.buf, self.scanned.saturating_sub(3)) {
                        *pos += end.saturating_sub(old);
                        self.buf.truncate(end);
                        return Step::Head;
                    }
                    *pos += take;
                    self.scanned = self.buf.len();
                    if self.buf.len() >= MAX_HEAD_LEN {
                        return Step::Error(reason::HEADER_TOO_LARGE);
                    }
                    if self.buf.len() <= EARLY_CHECK_LEN {
                        if let Err(why) = early_check(self.kind, &self.buf) {
                            return Step::Error(why);
                        }
                    }
                }
                State::Body { remaining } => {
                    let left = self.skip_body(remaining, rest.len(), pos, exit);
                    if left == 0 {
                        self.state = State::Idle;
                        return Step::End;
                    }
                    self.state = State::Body { remaining: left };
                }
                State::ChunkData { remaining } => {
                    let left = self.skip_body(remaining, rest.len(), pos, exit);
                    self.state = if left == 0 {
                        State::ChunkDataEnd { cr: false }
                    } else {
                        State::ChunkData { remaining: left }
                    };
                }
                State::ChunkSize => {
                    self.timing.last_exit_ns = exit;
                    let newline = rest.iter().position(|&b| b == b'\n');
                    let part = rest.get(..newline.unwrap_or(rest.len())).unwrap_or_default();
                    if self.buf.len() + part.len() > MAX_CHUNK_LINE {
                        return Step::Error(reason::CHUNK_LINE_TOO_LONG);
                    }
                    self.buf.extend_from_slice(part);
                    *pos += part.len();
                    if newline.is_some() {
                        *pos += 1;
                        let Some(size) = parse_chunk_size(&self.buf) else {
                            return Step::Error(reason::INVALID_CHUNK_SIZE);
                        };
                        self.buf.clear();
                        self.state = if size == 0 {
                            State::Trailers { line: 0, total: 0 }
                        } else {
                            State::ChunkData { remaining: size }
                        };
                    }
                }
                State::ChunkDataEnd { cr } => {
                    self.timing.last_exit_ns = exit;
                    *pos += 1;
                    match rest.first() {
                        Some(b'\r') if !cr => self.state = State::ChunkDataEnd { cr: true },
                        Some(b'\n') => self.state = State::ChunkSize,
                        _ => return Step::Error(reason::INVALID_CHUNK_END),
                    }
                }
                State::Trailers { line, total } => {
                    self.timing.last_exit_ns = exit;
                    let newline = rest.iter().position(|&b| b == b'\n');
                    let part = rest.get(..newline.unwrap_or(rest.len())).unwrap_or_default();
                    let line = line + part.iter().filter(|&&b| b != b'\r').count();
                    let total = total + part.len() + usize::from(newline.is_some());
                    if total > MAX_HEAD_LEN {
                        return Step::Error(reason::HEADER_TOO_LARGE);
                    }
                    *pos += part.len();
                    self.state = State::Trailers { line, total };
                    if newline.is_some() {
                        *pos += 1;
                        if line == 0 {
                            self.state = State::Idle;
                            return Step::End;
                        }
                        self.state = State::Trailers { line: 0, total };
                    }
                }
                State::UntilClose => {
                    self.timing.last_exit_ns = exit;
                    self.body_len = self.body_len.saturating_add(rest.len() as u64);
                    *pos = bytes.len();
                }
            }
        }
        Step::More
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
    fn gap(&mut self, left: &mut u64) -> Step {
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

/// Strips HTTP optional whitespace (spaces and tabs) from both ends (RFC 9110 OWS).
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests;
