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
//! partial message is dropped, a [`L7Event::ParseError`](super::L7Event::ParseError)
//! says why, and the reader waits for a segment that starts with a request or status
//! line (segments start at syscall boundaries, which is where messages usually start).
//! Pairing survives a desync by accounting for the lost message on its side of the queue.
//!
//! The parts: `reader` frames one direction, `head` parses header blocks with
//! httparse, `body` decides how a message's body is delimited, and `exchange` pairs
//! requests with responses.

use hoptrace_common::{Direction, Role};

use crate::model::span::Str;

use super::{opposite, Protocol};

mod body;
mod exchange;
mod head;
mod headers;
mod reader;

pub use exchange::Http1;
pub use headers::Headers;

const PROTOCOL: &str = "http1";
/// Largest header block (or trailer section) buffered before giving up on a message.
pub const MAX_HEAD_LEN: usize = 64 * 1024;
/// Requests kept while waiting for a response; the ones pipelined beyond this are
/// counted and only their number is kept, so every response still pairs with its own
/// request.
pub const MAX_PIPELINED: usize = 64;
/// Buffers that grew past this are freed, not kept, once their message is done.
const KEEP_BUFFER: usize = 8 * 1024;
/// Request-line starts accepted by detection and resynchronization.
const METHODS: [&[u8]; 9] =
    [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

/// Stable labels of [`L7Event::ParseError`](super::L7Event::ParseError)s from this parser.
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
    /// As received; the registered methods are static strings (no allocation).
    pub method: Str,
    /// Where the raw request-target is in the header block: see [`HttpRequest::target`].
    target_at: (u32, u32),
    /// Minor version: 0 = HTTP/1.0, 1 = HTTP/1.1; 2 = HTTP/2.
    pub version: u8,
    pub headers: Headers,
    pub timing: Timing,
    /// Body bytes (payload only, without chunk framing), including bytes lost in gaps.
    pub body_len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub version: u8,
    pub headers: Headers,
    pub timing: Timing,
    pub body_len: u64,
}

impl HttpRequest {
    /// A request whose fields came from elsewhere than an HTTP/1 head (HTTP/2): the
    /// target is the value at `target_at` in `headers` (empty: not known).
    pub(crate) fn from_fields(
        method: Str,
        target_at: (u32, u32),
        version: u8,
        headers: Headers,
        timing: Timing,
    ) -> Self {
        Self { method, target_at, version, headers, timing, body_len: 0 }
    }

    /// The raw request-target.
    pub fn target(&self) -> &[u8] {
        let (start, end) = self.target_at;
        self.headers.block().get(start as usize..end as usize).unwrap_or_default()
    }

    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
}

impl HttpResponse {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
}

/// Every value of header `name` (lowercase), in order: for list headers such as
/// tracestate and baggage that may be split over several lines.
pub fn header_values<'a>(headers: &'a Headers, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers.values(name)
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
    /// A boxed slice, not a `Vec`: 8 bytes less keeps the exchange at 256 bytes, the size
    /// up to which the moves of an exchange through the pipeline are a few vector copies
    /// (one more field cost 0.8% more instructions per request, all in `memcpy`).
    pub informational: Box<[u16]>,
    pub outcome: Outcome,
    /// Another request on the connection was in flight while this one was (HTTP/1
    /// pipelining): pairing this exchange with the other end's by order is not trusted.
    pub pipelined: bool,
    /// What only HTTP/2 streams have (stream id, gRPC, partial headers); `None` for
    /// HTTP/1. Boxed: HTTP/1 exchanges, the common case, stay as small as they were.
    pub h2: Option<Box<super::http2::H2Info>>,
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

/// Strips HTTP optional whitespace (spaces and tabs) from both ends (RFC 9110 OWS).
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests;
