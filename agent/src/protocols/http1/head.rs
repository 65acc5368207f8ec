//! Header blocks (RFC 9112 §2-5): the request or status line and the header fields,
//! parsed by httparse and kept as one block with an index ([`Headers`]).

use crate::model::span::Str;

use super::headers::{span_in, Headers};
use super::reader::Kind;
use super::reason;

const MAX_HEADERS: usize = 256;

pub(super) struct RequestHead {
    pub method: Str,
    /// Where the request-target is in `headers`' block.
    pub target: (u32, u32),
    pub version: u8,
    pub headers: Headers,
}

pub(super) struct ResponseHead {
    pub status: u16,
    pub version: u8,
    pub headers: Headers,
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

/// The registered methods are shared statics; any other is copied once.
fn method_str(method: &str) -> Str {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"];
    match KNOWN.iter().find(|&&m| m == method) {
        Some(&m) => Str::from(m),
        None => Str::from(method.to_owned()),
    }
}

/// httparse's header slots, left uninitialized: filling 256 `EMPTY_HEADER`s (8 KiB) on
/// every parse cost more than parsing a typical head.
fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses a complete header block (`buf` ends with its empty line). On success the
/// block moves out of `buf` into the result (no copy); on error `buf` is left as is.
pub(super) fn parse_request_head(buf: &mut Vec<u8>) -> Result<RequestHead, &'static str> {
    let mut headers = uninit_headers();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reason::MALFORMED_HEAD),
        Err(e) => return Err(httparse_reason(e)),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(reason::MALFORMED_HEAD);
    };
    let (method, target, index) = (method_str(method), span_in(buf, path.as_bytes()), Headers::index(buf, req.headers));
    Ok(RequestHead { method, target, version, headers: Headers::new(std::mem::take(buf), index) })
}

/// Like [`parse_request_head`], for a status line and its fields.
pub(super) fn parse_response_head(buf: &mut Vec<u8>) -> Result<ResponseHead, &'static str> {
    let mut headers = uninit_headers();
    let mut resp = httparse::Response::new(&mut []);
    match response_config().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reason::MALFORMED_HEAD),
        Err(e) => return Err(httparse_reason(e)),
    }
    let (status, version) = match (resp.code, resp.version) {
        // httparse takes any three digits; there is no 0xx class (RFC 9110 §15), and a
        // status below 100 would be exported as if it were a final answer.
        (Some(status), Some(_)) if status < 100 => return Err(reason::INVALID_STATUS),
        (Some(status), Some(version)) => (status, version),
        _ => return Err(reason::MALFORMED_HEAD),
    };
    let index = Headers::index(buf, resp.headers);
    Ok(ResponseHead { status, version, headers: Headers::new(std::mem::take(buf), index) })
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
    // One vectorized search per line, not a loop per byte. (Two prebuilt memmem
    // searchers, "\n\r\n" and "\n\n", measured 15% more instructions on typical heads.)
    memchr::memchr_iter(b'\n', tail).find_map(|i| match (tail.get(i + 1), tail.get(i + 2)) {
        (Some(b'\n'), _) => Some(from + i + 2),
        (Some(b'\r'), Some(b'\n')) => Some(from + i + 3),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::find_head_end;

    /// The definition: the first '\n' followed by "\n" or "\r\n".
    fn reference(buf: &[u8], from: usize) -> Option<usize> {
        let tail = buf.get(from..)?;
        (0..tail.len()).filter(|&i| tail[i] == b'\n').find_map(|i| match (tail.get(i + 1), tail.get(i + 2)) {
            (Some(b'\n'), _) => Some(from + i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(from + i + 3),
            _ => None,
        })
    }

    #[test]
    fn head_end_matches_its_definition() {
        // Every string of up to 7 bytes over the alphabet that matters, at every start.
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=7u32 {
            for mut code in 0..3usize.pow(len) {
                let mut buf = Vec::new();
                for _ in 0..len {
                    buf.push(alphabet[code % 3]);
                    code /= 3;
                }
                for from in 0..=buf.len() + 1 {
                    assert_eq!(find_head_end(&buf, from), reference(&buf, from), "{buf:?} from {from}");
                }
            }
        }
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\n\n";
        assert_eq!(find_head_end(head, 0), Some(27));
    }
}
