//! HTTP/2 (RFC 9113) and gRPC over it: one exchange per stream, out of a connection's
//! two byte streams — h2c with prior knowledge, h2 inside TLS (the OpenSSL plaintext
//! starts with the same connection preface), and connections joined mid-flight.
//!
//! Each direction has a frame reader (`frame`) that keeps only what it must: header
//! blocks (HEADERS, CONTINUATION, PUSH_PROMISE, bounded) and the few bytes of RST_STREAM;
//! DATA is counted, and for gRPC its 5-byte message prefixes are followed to count
//! messages, never kept. Each direction has its own HPACK decoder (`hpack`, `huffman`):
//! the dynamic table is per connection and direction. `streams` pairs a stream's request
//! and response and reports the exchange when the response ends (END_STREAM), when the
//! stream is reset, or when the connection closes.
//!
//! Joining mid-connection: the dynamic tables are unknown. What can be decoded (static
//! table, literals, entries inserted since) is; an index into the unknown part is
//! skipped, never guessed, and the exchange says so (`H2Info::partial_headers`).
//!
//! Bounds: [`MAX_STREAMS`] streams in flight, [`MAX_HEADER_BLOCK`] bytes per header block
//! (compressed) and per decoded field list, HPACK table capped; each overflow is a
//! [`L7Event::ParseError`] with its reason, so it is counted.

use hoptrace_common::{Direction, Role};

use super::{opposite, L7Event, Protocol};
use crate::capture::stream::Segment;

mod frame;
pub mod hpack;
mod huffman;
mod streams;

pub use streams::Http2;

const PROTOCOL: &str = "http2";
/// RFC 9113 §3.4: what a client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams tracked at once per connection; more are counted, not tracked.
pub const MAX_STREAMS: usize = 128;
/// Largest header block (HEADERS plus its CONTINUATIONs) buffered, and largest decoded
/// field list kept per message.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Stable labels of [`L7Event::ParseError`]s from this parser.
pub mod reason {
    pub const BAD_PREFACE: &str = "bad_preface";
    pub const GAP_IN_FRAME: &str = "gap_in_frame";
    pub const BAD_FRAME: &str = "bad_frame";
    pub const HEADER_BLOCK_TOO_LARGE: &str = "header_block_too_large";
    pub const HEADER_LIST_TOO_LARGE: &str = "header_list_too_large";
    pub const EXPECTED_CONTINUATION: &str = "expected_continuation";
    pub const TOO_MANY_STREAMS: &str = "too_many_streams";
    pub const UNMATCHED_RESPONSE: &str = "unmatched_response";
    /// A header block had fields whose HPACK index was unknown (joined mid-connection).
    pub const PARTIAL_HEADERS: &str = "partial_headers";
    pub const HPACK_TRUNCATED: &str = "hpack_truncated";
    pub const HPACK_INTEGER_OVERFLOW: &str = "hpack_integer_overflow";
    pub const HPACK_BAD_INDEX: &str = "hpack_bad_index";
    pub const HPACK_HUFFMAN: &str = "hpack_huffman";
    pub const HPACK_STRING_TOO_LONG: &str = "hpack_string_too_long";
    pub const HPACK_BAD_SIZE_UPDATE: &str = "hpack_bad_size_update";
    /// A response without a usable `:status` (absent, not 100-999, or not decodable).
    pub const MISSING_STATUS: &str = "missing_status";

    /// Every label, so metrics can pre-register them.
    pub const ALL: [&str; 16] = [
        BAD_PREFACE,
        GAP_IN_FRAME,
        BAD_FRAME,
        HEADER_BLOCK_TOO_LARGE,
        HEADER_LIST_TOO_LARGE,
        EXPECTED_CONTINUATION,
        TOO_MANY_STREAMS,
        UNMATCHED_RESPONSE,
        PARTIAL_HEADERS,
        HPACK_TRUNCATED,
        HPACK_INTEGER_OVERFLOW,
        HPACK_BAD_INDEX,
        HPACK_HUFFMAN,
        HPACK_STRING_TOO_LONG,
        HPACK_BAD_SIZE_UPDATE,
        MISSING_STATUS,
    ];
}

/// What an HTTP/2 exchange has beyond an HTTP/1 one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Info {
    pub stream_id: u32,
    /// Some header fields could not be decoded (HPACK indexes into a dynamic table the
    /// agent never saw): absent headers, traceparent included, may have been sent.
    pub partial_headers: bool,
    /// The stream was reset (RST_STREAM) with this error code.
    pub reset: Option<u32>,
    /// `content-type: application/grpc*`.
    pub grpc: Option<GrpcInfo>,
}

/// A gRPC call's outcome and size, from its trailers and message prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcInfo {
    /// `grpc-status` from the trailers (or a trailers-only response).
    pub status: Option<u32>,
    /// Messages sent each way, counted from the 5-byte length prefixes.
    pub request_messages: u32,
    pub response_messages: u32,
}

/// HTTP/2 detection: the client's connection preface (prior knowledge, h2 in TLS), or —
/// for a connection of known role that the agent joined mid-flight — bytes that read as
/// a run of well-formed frames.
pub fn detect(role: Role, direction: Direction, first: &[u8]) -> Option<Box<dyn Protocol>> {
    let expected_client = match role {
        Role::Server => Some(Direction::Ingress),
        Role::Client => Some(Direction::Egress),
        Role::Unknown => None,
    };
    let preface = first.len() >= 4 && PREFACE.starts_with(&first[..first.len().min(PREFACE.len())]);
    if preface {
        if expected_client.is_some_and(|d| d != direction) {
            return None;
        }
        return Some(Box::new(Http2::new(direction)));
    }
    let client_dir = expected_client?;
    frame::plausible(first).then(|| Box::new(Http2::joined(client_dir, direction)) as Box<dyn Protocol>)
}

impl Protocol for Http2 {
    fn name(&self) -> &'static str {
        PROTOCOL
    }

    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        self.feed_segments(direction, segments, out);
    }

    fn close(&mut self, out: &mut Vec<L7Event>) {
        self.close_all(out);
    }
}

fn parse_error(reason: &'static str) -> L7Event {
    L7Event::ParseError { protocol: PROTOCOL, reason }
}

/// The side (0 = the client's, requests; 1 = the server's, responses) of `direction`.
fn side_of(client_dir: Direction, direction: Direction) -> usize {
    usize::from(direction == opposite(client_dir))
}

#[cfg(test)]
mod tests;
