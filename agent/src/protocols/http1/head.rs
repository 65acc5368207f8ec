//! Header blocks (RFC 9112 §2-5): the request or status line and the header fields,
//! parsed by httparse into owned, lowercased [`Header`]s.

use super::reader::Kind;
use super::{reason, Header};

const MAX_HEADERS: usize = 256;

pub(super) struct RequestHead {
    pub method: String,
    pub target: Vec<u8>,
    pub version: u8,
    pub headers: Vec<Header>,
}

pub(super) struct ResponseHead {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<Header>,
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
pub(super) fn parse_request_head(buf: &[u8]) -> Result<RequestHead, &'static str> {
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

pub(super) fn parse_response_head(buf: &[u8]) -> Result<ResponseHead, &'static str> {
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
pub(super) fn early_check(kind: Kind, buf: &[u8]) -> Result<(), &'static str> {
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
pub(super) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    tail.iter().enumerate().filter(|&(_, &b)| b == b'\n').find_map(|(i, _)| match (tail.get(i + 1), tail.get(i + 2)) {
        (Some(b'\n'), _) => Some(from + i + 2),
        (Some(b'\r'), Some(b'\n')) => Some(from + i + 3),
        _ => None,
    })
}
