//! Message bodies (RFC 9112 §6): how a message's body is delimited (none, a length,
//! chunked coding, the connection's end, or a tunnel), and the numbers of its framing.

use super::{header_values, reason, trim_ows, Headers};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    /// The connection stops being HTTP (CONNECT, 101 Switching Protocols).
    Tunnel,
}

pub(super) fn request_body(headers: &Headers) -> Result<BodyKind, &'static str> {
    if let Some(chunked) = transfer_encoding_chunked(headers) {
        // A request cannot be delimited by close: any coding but a final chunked is fatal.
        return if chunked { Ok(BodyKind::Chunked) } else { Err(reason::INVALID_TRANSFER_ENCODING) };
    }
    Ok(match content_length(headers)? {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::None,
    })
}

pub(super) fn response_body(status: u16, method: Option<&str>, headers: &Headers) -> Result<BodyKind, &'static str> {
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
fn transfer_encoding_chunked(headers: &Headers) -> Option<bool> {
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
fn content_length(headers: &Headers) -> Result<Option<u64>, &'static str> {
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
pub(super) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
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
