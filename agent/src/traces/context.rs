//! W3C Trace Context (Level 2) and W3C Baggage, read from captured headers.
//!
//! The agent joins its spans to the application's traces through these headers, and
//! reports where context went missing or arrived broken. The bytes come from arbitrary
//! traffic, so every parser here is strict to the specifications (a header the services
//! themselves would reject must not be trusted by the agent either) and total: any input
//! gives a value or a [`ContextError`], never a panic.
//!
//! Errors name *what* was wrong with a stable label ([`ContextError::reason`]) for
//! metrics, and never carry the header value: tracestate and baggage routinely hold user
//! or tenant data that must not end up in the agent's logs.

use thiserror::Error;

use crate::protocols::http1::trim_ows;

/// Longest tracestate the agent passes on; longer lists are cut by whole members, as the
/// spec allows ("vendors MUST propagate at least 512 characters").
pub const MAX_TRACESTATE_LEN: usize = 512;
/// The spec's limit on tracestate list-members.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Members longer than this are the first to go when a tracestate is cut (spec advice).
const TRACESTATE_LARGE_MEMBER: usize = 128;
/// Combined tracestate input beyond which the agent does not even look: 32 members of
/// the largest legal size fit in half of it, so only padding or abuse gets refused.
const MAX_TRACESTATE_INPUT: usize = 32 * 1024;
/// The Baggage spec's limits on what a platform must propagate.
pub const MAX_BAGGAGE_LEN: usize = 8192;
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// What was wrong with a trace-context or baggage header. Deliberately carries no part of
/// the header: see the module documentation.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("traceparent has the wrong length for its version")]
    TraceparentLength,
    #[error("traceparent version is invalid (ff)")]
    TraceparentVersion,
    #[error("traceparent field is not hexadecimal")]
    TraceparentHex,
    #[error("traceparent field has uppercase hex digits")]
    TraceparentUppercase,
    #[error("traceparent trace-id is all zeroes")]
    TraceparentZeroTraceId,
    #[error("traceparent parent-id is all zeroes")]
    TraceparentZeroParentId,
    #[error("traceparent field delimiter missing")]
    TraceparentDelimiter,
    #[error("tracestate input is too long to parse")]
    TracestateTooLong,
    #[error("tracestate list-member has no '='")]
    TracestateMember,
    #[error("tracestate list-member key is invalid")]
    TracestateKey,
    #[error("tracestate list-member value is invalid")]
    TracestateValue,
    #[error("tracestate has more than 32 list-members")]
    TracestateTooManyMembers,
    #[error("tracestate has a duplicate key")]
    TracestateDuplicateKey,
    #[error("baggage is not well-formed")]
    BaggageSyntax,
    #[error("baggage value has an invalid percent-encoding")]
    BaggageEncoding,
    #[error("baggage is longer than 8192 bytes")]
    BaggageTooLong,
    #[error("baggage has more than 64 list-members")]
    BaggageTooManyMembers,
}

impl ContextError {
    /// Every variant, so metrics can pre-register one series per reason.
    pub const ALL: [ContextError; 17] = [
        Self::TraceparentLength,
        Self::TraceparentVersion,
        Self::TraceparentHex,
        Self::TraceparentUppercase,
        Self::TraceparentZeroTraceId,
        Self::TraceparentZeroParentId,
        Self::TraceparentDelimiter,
        Self::TracestateTooLong,
        Self::TracestateMember,
        Self::TracestateKey,
        Self::TracestateValue,
        Self::TracestateTooManyMembers,
        Self::TracestateDuplicateKey,
        Self::BaggageSyntax,
        Self::BaggageEncoding,
        Self::BaggageTooLong,
        Self::BaggageTooManyMembers,
    ];

    /// Stable snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TraceparentLength => "traceparent_length",
            Self::TraceparentVersion => "traceparent_version",
            Self::TraceparentHex => "traceparent_hex",
            Self::TraceparentUppercase => "traceparent_uppercase",
            Self::TraceparentZeroTraceId => "traceparent_zero_trace_id",
            Self::TraceparentZeroParentId => "traceparent_zero_parent_id",
            Self::TraceparentDelimiter => "traceparent_delimiter",
            Self::TracestateTooLong => "tracestate_too_long",
            Self::TracestateMember => "tracestate_member",
            Self::TracestateKey => "tracestate_key",
            Self::TracestateValue => "tracestate_value",
            Self::TracestateTooManyMembers => "tracestate_too_many_members",
            Self::TracestateDuplicateKey => "tracestate_duplicate_key",
            Self::BaggageSyntax => "baggage_syntax",
            Self::BaggageEncoding => "baggage_encoding",
            Self::BaggageTooLong => "baggage_too_long",
            Self::BaggageTooManyMembers => "baggage_too_many_members",
        }
    }
}

/// A valid `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    /// Raw trace-flags: unknown bits are kept (and ignored) as the spec asks.
    pub flags: u8,
}

impl TraceParent {
    /// The caller may have recorded this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// Level 2: the trace-id's rightmost 7 bytes are random (flag bit 1).
    pub fn random(&self) -> bool {
        self.flags & 0x02 != 0
    }
}

/// Length of a version-00 traceparent: `vv-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// Parses one `traceparent` header value (W3C Trace Context Level 2, §3.2).
///
/// Versions above 00 are parsed by their first four fields, as the spec requires for
/// forward compatibility; their flags are kept as received.
pub fn parse_traceparent(value: &[u8]) -> Result<TraceParent, ContextError> {
    let v = trim_ows(value);
    if v.len() < TRACEPARENT_LEN {
        return Err(ContextError::TraceparentLength);
    }
    let [version] = hex_field::<1>(&v[0..2])?;
    if version == 0xff {
        return Err(ContextError::TraceparentVersion);
    }
    if version == 0 && v.len() != TRACEPARENT_LEN {
        return Err(ContextError::TraceparentLength);
    }
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return Err(ContextError::TraceparentDelimiter);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(ContextError::TraceparentDelimiter);
    }
    let trace_id = hex_field::<16>(&v[3..35])?;
    let parent_id = hex_field::<8>(&v[36..52])?;
    let [flags] = hex_field::<1>(&v[53..55])?;
    if trace_id == [0; 16] {
        return Err(ContextError::TraceparentZeroTraceId);
    }
    if parent_id == [0; 8] {
        return Err(ContextError::TraceparentZeroParentId);
    }
    Ok(TraceParent { version, trace_id, parent_id, flags })
}

/// Decodes exactly `2 * N` lowercase hex digits.
fn hex_field<const N: usize>(digits: &[u8]) -> Result<[u8; N], ContextError> {
    if digits.len() != 2 * N {
        return Err(ContextError::TraceparentLength);
    }
    let mut out = [0u8; N];
    // One table lookup per digit (this runs for every traced request and call); any
    // digit outside 0-9a-f sets a high bit, checked once at the end.
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    if bad & 0xf0 != 0 {
        // The first digit that is not lowercase hex names the error, as before.
        let first = digits.iter().find(|&&d| HEX[usize::from(d)] & 0xf0 != 0);
        return Err(match first {
            Some(d) if d.is_ascii_hexdigit() => ContextError::TraceparentUppercase,
            _ => ContextError::TraceparentHex,
        });
    }
    Ok(out)
}

/// Lowercase hex digit → its value; anything else → a value with high bits set.
static HEX: [u8; 256] = {
    let mut t = [0xf0u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses the `tracestate` header lines of one message (combined with ',' as HTTP
/// does) and returns the normalized list: members joined by ',' without whitespace.
///
/// Empty list-members are dropped (HTTP list syntax allows them). A result longer than
/// [`MAX_TRACESTATE_LEN`] is cut by whole members: the last member longer than 128
/// characters first, repeatedly, then from the end, until it fits.
pub fn parse_tracestate(values: &[&[u8]]) -> Result<String, ContextError> {
    let input: usize = values.iter().map(|v| v.len() + 1).sum();
    if input > MAX_TRACESTATE_INPUT {
        return Err(ContextError::TracestateTooLong);
    }
    let mut members: Vec<(&[u8], &[u8])> = Vec::new();
    for member in values.iter().flat_map(|v| v.split(|&b| b == b',')) {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        if members.len() == MAX_TRACESTATE_MEMBERS {
            return Err(ContextError::TracestateTooManyMembers);
        }
        let eq = member.iter().position(|&b| b == b'=').ok_or(ContextError::TracestateMember)?;
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !tracestate_key_ok(key) {
            return Err(ContextError::TracestateKey);
        }
        if !tracestate_value_ok(value) {
            return Err(ContextError::TracestateValue);
        }
        if members.iter().any(|(k, _)| *k == key) {
            return Err(ContextError::TracestateDuplicateKey);
        }
        members.push((key, member));
    }

    let joined_len =
        |ms: &[(&[u8], &[u8])]| ms.iter().map(|(_, m)| m.len()).sum::<usize>() + ms.len().saturating_sub(1);
    while joined_len(&members) > MAX_TRACESTATE_LEN {
        match members.iter().rposition(|(_, m)| m.len() > TRACESTATE_LARGE_MEMBER) {
            Some(i) => members.remove(i),
            None => members.pop().unwrap_or_default(),
        };
    }

    let mut out = String::with_capacity(joined_len(&members));
    for (i, (_, member)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Validated above: every byte is printable ASCII.
        out.push_str(std::str::from_utf8(member).map_err(|_| ContextError::TracestateValue)?);
    }
    Ok(out)
}

/// `simple-key` (lcalpha then up to 255 of lcalpha, digit, `_-*/`) or
/// `tenant-id@system-id` (up to 241 and 14 characters).
fn tracestate_key_ok(key: &[u8]) -> bool {
    let rest_ok = |s: &[u8]| s.iter().all(|&c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/'));
    let mut parts = key.splitn(2, |&b| b == b'@');
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        None => match first.split_first() {
            Some((c, rest)) => c.is_ascii_lowercase() && rest.len() <= 255 && rest_ok(rest),
            None => false,
        },
        Some(system) => {
            let tenant_ok = match first.split_first() {
                Some((c, rest)) => (c.is_ascii_lowercase() || c.is_ascii_digit()) && rest.len() <= 240 && rest_ok(rest),
                None => false,
            };
            let system_ok = match system.split_first() {
                Some((c, rest)) => c.is_ascii_lowercase() && rest.len() <= 13 && rest_ok(rest),
                None => false,
            };
            tenant_ok && system_ok
        }
    }
}

/// 1 to 256 printable ASCII characters other than ',' and '=', not ending in a space.
fn tracestate_value_ok(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value.last() != Some(&b' ')
        && value.iter().all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// Parses the `baggage` header lines of one message (W3C Baggage) and returns the
/// members whose key passes `allowed`, values percent-decoded (invalid UTF-8 becomes
/// U+FFFD, as the spec says). Properties are validated and dropped.
///
/// Every member is checked, allowed or not: a header with a syntax error anywhere is
/// rejected whole, as a conforming platform would. Empty list-members are skipped
/// (HTTP list syntax allows them); duplicate keys are all returned, in order.
pub fn parse_baggage(values: &[&[u8]], allowed: impl Fn(&str) -> bool) -> Result<Vec<(String, String)>, ContextError> {
    let input = values.iter().map(|v| v.len()).sum::<usize>() + values.len().saturating_sub(1);
    if input > MAX_BAGGAGE_LEN {
        return Err(ContextError::BaggageTooLong);
    }
    let mut out = Vec::new();
    let mut count = 0;
    for member in values.iter().flat_map(|v| v.split(|&b| b == b',')) {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_BAGGAGE_MEMBERS {
            return Err(ContextError::BaggageTooManyMembers);
        }
        let mut parts = member.split(|&b| b == b';');
        let pair = parts.next().unwrap_or_default();
        let (key, value) = match baggage_pair(pair)? {
            (key, Some(value)) => (key, value),
            (_, None) => return Err(ContextError::BaggageSyntax),
        };
        for property in parts {
            baggage_pair(property)?;
        }
        percent_decode(value, &mut Vec::new())?;
        let key = std::str::from_utf8(key).map_err(|_| ContextError::BaggageSyntax)?;
        if allowed(key) {
            let mut decoded = Vec::with_capacity(value.len());
            percent_decode(value, &mut decoded)?;
            out.push((key.to_owned(), String::from_utf8_lossy(&decoded).into_owned()));
        }
    }
    Ok(out)
}

/// `key OWS "=" OWS value` or, for properties, a bare `key`.
fn baggage_pair(s: &[u8]) -> Result<(&[u8], Option<&[u8]>), ContextError> {
    let s = trim_ows(s);
    let (key, value) = match s.iter().position(|&b| b == b'=') {
        Some(eq) => (trim_ows(&s[..eq]), Some(trim_ows(&s[eq + 1..]))),
        None => (s, None),
    };
    if key.is_empty() || !key.iter().all(|&c| is_tchar(c)) {
        return Err(ContextError::BaggageSyntax);
    }
    if let Some(value) = value {
        if !value.iter().all(|&c| is_baggage_octet(c)) {
            return Err(ContextError::BaggageSyntax);
        }
    }
    Ok((key, value))
}

/// RFC 9110 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Printable US-ASCII except whitespace, '"', ',', ';' and '\'.
fn is_baggage_octet(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// Decodes `%XX` escapes into `out`; a '%' not followed by two hex digits is an error.
fn percent_decode(value: &[u8], out: &mut Vec<u8>) -> Result<(), ContextError> {
    let mut i = 0;
    while let Some(&c) = value.get(i) {
        if c == b'%' {
            let hi = value.get(i + 1).and_then(|&d| hex_digit(d));
            let lo = value.get(i + 2).and_then(|&d| hex_digit(d));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(ContextError::BaggageEncoding),
            }
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(())
}

fn hex_digit(d: u8) -> Option<u8> {
    (d as char).to_digit(16).map(|n| n as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContextError::*;

    const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PID: &str = "00f067aa0ba902b7";

    fn tp(s: &str) -> Result<TraceParent, ContextError> {
        parse_traceparent(s.as_bytes())
    }

    fn ts(lines: &[&str]) -> Result<String, ContextError> {
        let v: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        parse_tracestate(&v)
    }

    fn bg(lines: &[&str]) -> Result<Vec<(String, String)>, ContextError> {
        let v: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        parse_baggage(&v, |_| true)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn traceparent_spec_examples() {
        let t = tp(&format!("00-{TID}-{PID}-01")).expect("valid");
        assert_eq!(t.version, 0);
        assert_eq!(crate::model::span::hex(&t.trace_id), TID);
        assert_eq!(crate::model::span::hex(&t.parent_id), PID);
        assert!(t.sampled());
        assert!(!t.random());
        let t = tp(&format!("00-{TID}-{PID}-00")).expect("valid");
        assert!(!t.sampled());
        // Level 2 random flag.
        let t = tp(&format!("00-{TID}-{PID}-03")).expect("valid");
        assert!(t.sampled() && t.random());
    }

    #[test]
    fn traceparent_unknown_flags_are_kept_and_ignored() {
        let t = tp(&format!("00-{TID}-{PID}-09")).expect("valid");
        assert_eq!(t.flags, 0x09);
        assert!(t.sampled());
        assert_eq!(tp(&format!("00-{TID}-{PID}-fe")).map(|t| t.sampled()), Ok(false));
    }

    #[test]
    fn traceparent_tolerates_ows() {
        assert!(tp(&format!(" \t00-{TID}-{PID}-01 \t")).is_ok());
        assert_eq!(tp(&format!("00-{TID}-{PID}-01\n")), Err(TraceparentLength));
    }

    #[test]
    fn traceparent_lengths() {
        assert_eq!(tp(""), Err(TraceparentLength));
        assert_eq!(tp("00"), Err(TraceparentLength));
        assert_eq!(tp(&format!("00-{TID}-{PID}-0")), Err(TraceparentLength));
        assert_eq!(tp(&format!("00-{TID}-{PID}-011")), Err(TraceparentLength));
        assert_eq!(tp(&format!("00-{TID}-{PID}-01-")), Err(TraceparentLength));
        assert_eq!(tp(&format!("00-{TID}0-{PID}-01")), Err(TraceparentLength));
        // Fields of the wrong size, total length right: delimiters end up misplaced.
        assert_eq!(tp(&format!("00-{TID}0-{}-01", &PID[1..])), Err(TraceparentDelimiter));
    }

    #[test]
    fn traceparent_versions() {
        assert_eq!(tp(&format!("ff-{TID}-{PID}-01")), Err(TraceparentVersion));
        // Higher versions: first four fields, then either the end or a '-'.
        let t = tp(&format!("cc-{TID}-{PID}-01")).expect("future version");
        assert_eq!((t.version, t.flags), (0xcc, 1));
        assert!(tp(&format!("01-{TID}-{PID}-01-what-the-future-holds")).is_ok());
        assert_eq!(tp(&format!("01-{TID}-{PID}-01x")), Err(TraceparentDelimiter));
        assert_eq!(tp(&format!("01-{TID}-{PID}-0")), Err(TraceparentLength));
        assert_eq!(tp(&format!("0g-{TID}-{PID}-01")), Err(TraceparentHex));
        assert_eq!(tp(&format!("0A-{TID}-{PID}-01")), Err(TraceparentUppercase));
    }

    #[test]
    fn traceparent_hex_and_case() {
        let upper = TID.to_uppercase();
        assert_eq!(tp(&format!("00-{upper}-{PID}-01")), Err(TraceparentUppercase));
        assert_eq!(tp(&format!("00-{TID}-00F067AA0BA902B7-01")), Err(TraceparentUppercase));
        assert_eq!(tp(&format!("00-{TID}-{PID}-0A")), Err(TraceparentUppercase));
        assert_eq!(tp(&format!("00-{TID}-{PID}-0x")), Err(TraceparentHex));
        let bad = format!("{}g", &TID[..31]);
        assert_eq!(tp(&format!("00-{bad}-{PID}-01")), Err(TraceparentHex));
        let bad = format!("{}é", &PID[..14]);
        assert_eq!(tp(&format!("00-{TID}-{bad}-01")), Err(TraceparentHex));
    }

    #[test]
    fn traceparent_delimiters() {
        assert_eq!(tp(&format!("00_{TID}-{PID}-01")), Err(TraceparentDelimiter));
        assert_eq!(tp(&format!("00-{TID}_{PID}-01")), Err(TraceparentDelimiter));
        assert_eq!(tp(&format!("00-{TID}-{PID}_01")), Err(TraceparentDelimiter));
    }

    #[test]
    fn traceparent_zero_ids() {
        let zt = "0".repeat(32);
        let zp = "0".repeat(16);
        assert_eq!(tp(&format!("00-{zt}-{PID}-01")), Err(TraceparentZeroTraceId));
        assert_eq!(tp(&format!("00-{TID}-{zp}-01")), Err(TraceparentZeroParentId));
    }

    #[test]
    fn tracestate_spec_examples() {
        assert_eq!(ts(&["congo=t61rcWkgMzE"]).as_deref(), Ok("congo=t61rcWkgMzE"));
        assert_eq!(
            ts(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Ok("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        // Two header lines are one list.
        assert_eq!(
            ts(&["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]).as_deref(),
            Ok("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(ts(&["fw529a3039@dt=1", "a=b"]).as_deref(), Ok("fw529a3039@dt=1,a=b"));
        assert_eq!(ts(&["1tenant@vendor=x"]).as_deref(), Ok("1tenant@vendor=x"));
    }

    #[test]
    fn tracestate_whitespace_and_empty_members() {
        assert_eq!(ts(&[" a=1 ,\t, b=2\t,,"]).as_deref(), Ok("a=1,b=2"));
        assert_eq!(ts(&["", " "]).as_deref(), Ok(""));
        assert_eq!(ts(&[]).as_deref(), Ok(""));
        // A leading space belongs to the value (chr includes SP); a trailing one is OWS.
        assert_eq!(ts(&["a= x "]).as_deref(), Ok("a= x"));
    }

    #[test]
    fn tracestate_invalid_members() {
        assert_eq!(ts(&["novalue"]), Err(TracestateMember));
        assert_eq!(ts(&["a="]), Err(TracestateValue));
        assert_eq!(ts(&["=b"]), Err(TracestateKey));
        assert_eq!(ts(&["A=b"]), Err(TracestateKey));
        assert_eq!(ts(&["1a=b"]), Err(TracestateKey));
        assert_eq!(ts(&["a b=c"]), Err(TracestateKey));
        assert_eq!(ts(&["a =c"]), Err(TracestateKey));
        assert_eq!(ts(&["a@=c"]), Err(TracestateKey));
        assert_eq!(ts(&["@a=c"]), Err(TracestateKey));
        assert_eq!(ts(&["a@1b=c"]), Err(TracestateKey));
        assert_eq!(ts(&["a@b@c=d"]), Err(TracestateKey));
        assert_eq!(ts(&["a=b=c"]), Err(TracestateValue));
        assert_eq!(ts(&["a=b\u{7f}"]), Err(TracestateValue));
        assert_eq!(ts(&["a=\tb"]), Err(TracestateValue));
        assert_eq!(ts(&["a=é"]), Err(TracestateValue));
        assert_eq!(ts(&["a=1,a=2"]), Err(TracestateDuplicateKey));
        assert_eq!(ts(&["a=1", "a=2"]), Err(TracestateDuplicateKey));
    }

    #[test]
    fn tracestate_size_limits_of_keys_and_values() {
        let key256 = format!("a{}", "b".repeat(255));
        assert!(ts(&[&format!("{key256}=v")]).is_ok());
        assert_eq!(ts(&[&format!("{key256}b=v")]), Err(TracestateKey));
        let tenant241 = "t".repeat(241);
        assert!(ts(&[&format!("{tenant241}@sys4567890abcd=v")]).is_ok());
        assert_eq!(ts(&[&format!("{tenant241}t@s=v")]), Err(TracestateKey));
        assert_eq!(ts(&["t@sys4567890abcde=v"]), Err(TracestateKey));
        let value256 = "v".repeat(256);
        assert!(ts(&[&format!("a={value256}")]).is_ok());
        assert_eq!(ts(&[&format!("a={value256}v")]), Err(TracestateValue));
    }

    #[test]
    fn tracestate_member_count() {
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(ts(&[&members.join(",")]).is_ok());
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(ts(&[&members.join(",")]), Err(TracestateTooManyMembers));
        // Empty members do not count.
        let mut with_empty = (0..32).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",,");
        with_empty.push_str(", ,");
        assert!(ts(&[&with_empty]).is_ok());
    }

    #[test]
    fn tracestate_truncation_drops_large_members_first() {
        // 4 members of 100 chars + one of 200: 601 chars joined. Dropping the large one
        // (not the last) is enough.
        let small = |k: &str| format!("{k}={}", "x".repeat(98 - k.len() + 1));
        let big = format!("big={}", "y".repeat(196));
        let input = [small("a"), big, small("b"), small("c"), small("d")];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        let out = ts(&[&refs.join(",")]).expect("valid");
        assert!(out.len() <= MAX_TRACESTATE_LEN);
        assert_eq!(out, [small("a"), small("b"), small("c"), small("d")].join(","));
    }

    #[test]
    fn tracestate_truncation_then_drops_from_the_end() {
        let members: Vec<String> = (0..10).map(|i| format!("k{i}={}", "z".repeat(97))).collect();
        let out = ts(&[&members.join(",")]).expect("valid");
        // Each member is 100 chars: 5 fit in 504 chars.
        assert_eq!(out, members[..5].join(","));
        let exact: Vec<String> = (0..4).map(|i| format!("k{i}={}", "z".repeat(125))).collect();
        assert_eq!(exact.join(",").len(), 4 * 128 + 3);
        assert_eq!(ts(&[&exact.join(",")]).expect("valid"), exact[..3].join(","));
    }

    #[test]
    fn tracestate_refuses_absurd_input() {
        let padding = " ".repeat(40 * 1024);
        assert_eq!(ts(&[&format!("a=b,{padding}")]), Err(TracestateTooLong));
    }

    #[test]
    fn baggage_spec_examples() {
        assert_eq!(
            bg(&["key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue"]),
            Ok(pairs(&[("key1", "value1"), ("key2", "value2"), ("key3", "value3")]))
        );
        assert_eq!(
            bg(&["userId=alice,serverNode=DF%2028,isProduction=false"]),
            Ok(pairs(&[("userId", "alice"), ("serverNode", "DF 28"), ("isProduction", "false")]))
        );
        assert_eq!(bg(&["key1=value1", "key2=value2"]), Ok(pairs(&[("key1", "value1"), ("key2", "value2")])));
    }

    #[test]
    fn baggage_decoding() {
        assert_eq!(bg(&["k=%E2%9C%93"]), Ok(pairs(&[("k", "✓")])));
        assert_eq!(bg(&["k=%e2%9c%93"]), Ok(pairs(&[("k", "✓")])));
        // Not UTF-8 once decoded: replacement character, as the spec asks.
        assert_eq!(bg(&["k=a%FFb"]), Ok(pairs(&[("k", "a\u{fffd}b")])));
        assert_eq!(bg(&["k=a+b"]), Ok(pairs(&[("k", "a+b")])));
        assert_eq!(bg(&["k="]), Ok(pairs(&[("k", "")])));
        assert_eq!(bg(&["k=%"]), Err(BaggageEncoding));
        assert_eq!(bg(&["k=%4"]), Err(BaggageEncoding));
        assert_eq!(bg(&["k=%zz"]), Err(BaggageEncoding));
    }

    #[test]
    fn baggage_filter_and_duplicates() {
        let v: [&[u8]; 1] = [b"a=1,secret=2;p,b=3,a=4"];
        let out = parse_baggage(&v, |k| k != "secret").expect("valid");
        assert_eq!(out, pairs(&[("a", "1"), ("b", "3"), ("a", "4")]));
        // A syntax error in a filtered-out member still rejects the header.
        let v: [&[u8]; 1] = [b"a=1,secret=x y"];
        assert_eq!(parse_baggage(&v, |k| k == "a"), Err(BaggageSyntax));
    }

    #[test]
    fn baggage_syntax_errors() {
        for bad in [
            "novalue",
            "=v",
            "k v=1",
            "k=v v",
            "k=\"v\"",
            "k=v\\",
            "k=v;",
            "k=v;;p",
            "k=v;p=x y",
            "k=v;=x",
            "k(=v",
            "k=é",
            "k=\u{7f}",
        ] {
            assert_eq!(bg(&[bad]), Err(BaggageSyntax), "{bad:?}");
        }
        // Empty list-members are skipped, as HTTP lists allow.
        assert_eq!(bg(&[" , k=v ,, "]), Ok(pairs(&[("k", "v")])));
    }

    #[test]
    fn baggage_limits() {
        let members: Vec<String> = (0..64).map(|i| format!("k{i}=v")).collect();
        assert_eq!(bg(&[&members.join(",")]).map(|v| v.len()), Ok(64));
        let members: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        assert_eq!(bg(&[&members.join(",")]), Err(BaggageTooManyMembers));
        let big = format!("k={}", "v".repeat(8190));
        assert_eq!(bg(&[&big]).map(|v| v.len()), Ok(1));
        assert_eq!(bg(&[&format!("{big}v")]), Err(BaggageTooLong));
        // The limit is on the combined header.
        assert_eq!(bg(&[&big[..4096], &big[..4096]]), Err(BaggageTooLong));
    }

    #[test]
    fn reasons_are_unique_snake_case_labels() {
        let mut seen = std::collections::HashSet::new();
        for e in ContextError::ALL {
            let r = e.reason();
            assert!(r.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'), "{r}");
            assert!(seen.insert(r), "duplicate {r}");
        }
    }

    #[test]
    fn errors_never_echo_the_input() {
        let marker = "secretmarker";
        let inputs = [
            format!("00-{marker}"),
            format!("00-{TID}-{PID}-{marker}"),
            format!("ff-{TID}-{PID}-01-{marker}"),
            format!("{marker}={marker} {marker}"),
            marker.to_string(),
            format!("k=v;{marker} {marker}"),
            format!("k=%{marker}"),
            format!("{marker}={},x={}", "y".repeat(300), "z".repeat(9000)),
        ];
        for input in &inputs {
            let b = input.as_bytes();
            let errors =
                [parse_traceparent(b).err(), parse_tracestate(&[b]).err(), parse_baggage(&[b], |_| true).err()];
            for e in errors.into_iter().flatten() {
                let text = format!("{e} {e:?}");
                assert!(!text.contains(marker), "{text}");
                assert!(!text.contains(input.as_str()), "{text}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"0123456789abcdefABCDEF-=,;% \t@xyz\xff";
        for _ in 0..2000 {
            let len = (next() % 80) as usize;
            let v: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let _ = parse_traceparent(&v);
            let _ = parse_tracestate(&[&v, &v]);
            let _ = parse_baggage(&[&v], |_| true);
        }
    }
}
