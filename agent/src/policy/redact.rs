//! PII redaction for exported span attributes (LGPD: no personal data leaves the process).
//!
//! Each detector is a pure function over a `&str` returning the byte ranges it matched
//! (sorted, non-overlapping, always on ASCII boundaries). A [`Redactor`] runs the enabled
//! detectors in a fixed order, most specific first, replacing each match with
//! `{<name>}` before the next detector looks at the text. Running them in sequence is
//! what resolves overlaps: a JWT is gone before the base64 scan, a CPF before the phone
//! and number scans, and no later detector can see part of an earlier match.
//!
//! Order: bearer token, JWT, email, UUID, base64 token, hex token, CNPJ, CPF, card
//! number, phone (E.164, then Brazilian), number. Base64 runs before the numeric
//! detectors so that a token with digits in it is redacted whole rather than split
//! around a CPF-looking piece (which would leave the rest of the token behind).
//!
//! The detectors err on the side of redacting: a false positive costs a label, a false
//! negative leaks personal data.

use std::ops::Range;

/// What a redacted value was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    Email,
    Cpf,
    Cnpj,
    CardNumber,
    Phone,
    Uuid,
    HexToken,
    Base64Token,
    Jwt,
    BearerToken,
    Number,
    /// A configured custom pattern (index into the pattern list). Reserved: custom
    /// patterns are not implemented yet, so no redactor reports this.
    Custom(usize),
}

impl Detector {
    /// Every built-in detector.
    pub const ALL: [Detector; 11] = [
        Detector::Email,
        Detector::Cpf,
        Detector::Cnpj,
        Detector::CardNumber,
        Detector::Phone,
        Detector::Uuid,
        Detector::HexToken,
        Detector::Base64Token,
        Detector::Jwt,
        Detector::BearerToken,
        Detector::Number,
    ];

    /// Stable snake_case label, used in placeholders, counters and events.
    pub fn name(&self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Cpf => "cpf",
            Detector::Cnpj => "cnpj",
            Detector::CardNumber => "card_number",
            Detector::Phone => "phone",
            Detector::Uuid => "uuid",
            Detector::HexToken => "hex_token",
            Detector::Base64Token => "base64_token",
            Detector::Jwt => "jwt",
            Detector::BearerToken => "bearer_token",
            Detector::Number => "number",
            Detector::Custom(_) => "custom",
        }
    }

    /// The placeholder for a URL path segment: identifiers of no particular kind are
    /// `id`, anything with a meaning of its own keeps its name.
    pub fn path_placeholder(&self) -> &'static str {
        match self {
            Detector::Number | Detector::Uuid | Detector::HexToken | Detector::Base64Token => "id",
            d => d.name(),
        }
    }

    fn placeholder(&self) -> &'static str {
        match self {
            Detector::Email => "{email}",
            Detector::Cpf => "{cpf}",
            Detector::Cnpj => "{cnpj}",
            Detector::CardNumber => "{card_number}",
            Detector::Phone => "{phone}",
            Detector::Uuid => "{uuid}",
            Detector::HexToken => "{hex_token}",
            Detector::Base64Token => "{base64_token}",
            Detector::Jwt => "{jwt}",
            Detector::BearerToken => "{bearer_token}",
            Detector::Number => "{number}",
            Detector::Custom(_) => "{custom}",
        }
    }
}

/// A redacted value and how many matches each detector replaced (one entry per
/// detector that matched, in the order the detectors ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    pub hits: Vec<(Detector, usize)>,
}

impl Redacted {
    pub fn count(&self, d: Detector) -> usize {
        self.hits.iter().find(|(h, _)| *h == d).map_or(0, |(_, n)| *n)
    }
}

type Finder = fn(&str) -> Vec<Range<usize>>;

/// The pipeline, most specific first (see the module docs).
const PIPELINE: [(Detector, Finder); 12] = [
    (Detector::BearerToken, find_bearer_tokens),
    (Detector::Jwt, find_jwts),
    (Detector::Email, find_emails),
    (Detector::Uuid, find_uuids),
    (Detector::Base64Token, find_base64_tokens),
    (Detector::HexToken, find_hex_tokens),
    (Detector::Cnpj, find_cnpjs),
    (Detector::Cpf, find_cpfs),
    (Detector::CardNumber, find_card_numbers),
    (Detector::Phone, find_e164_phones),
    (Detector::Phone, find_br_phones),
    (Detector::Number, find_numbers),
];

/// A configurable set of detectors. `Redactor::default()` enables all of them.
#[derive(Debug, Clone)]
pub struct Redactor {
    enabled: Vec<Detector>,
    /// Configured patterns, applied before the built-in detectors (`Detector::Custom(i)`).
    custom: Vec<regex::Regex>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor { enabled: Detector::ALL.to_vec(), custom: Vec::new() }
    }
}

impl Redactor {
    /// Only the given detectors.
    pub fn new(enabled: &[Detector]) -> Self {
        let mut r = Redactor { enabled: Vec::new(), custom: Vec::new() };
        for d in enabled {
            r = r.with(*d);
        }
        r
    }

    pub fn with(mut self, d: Detector) -> Self {
        if !self.enabled.contains(&d) {
            self.enabled.push(d);
        }
        self
    }

    pub fn without(mut self, d: Detector) -> Self {
        self.enabled.retain(|e| *e != d);
        self
    }

    pub fn is_enabled(&self, d: Detector) -> bool {
        self.enabled.contains(&d)
    }

    /// Adds configured patterns (regular expressions); each match becomes `{custom}`.
    pub fn with_patterns(mut self, patterns: &[String]) -> Result<Self, regex::Error> {
        for p in patterns {
            self.custom.push(regex::Regex::new(p)?);
        }
        Ok(self)
    }

    /// Replace every match of every enabled detector with `{<name>}`.
    pub fn redact_value(&self, s: &str) -> Redacted {
        let mut text = s.to_string();
        let mut hits: Vec<(Detector, usize)> = Vec::new();
        // Configured patterns first: they say what the operator knows is sensitive.
        for (i, re) in self.custom.iter().enumerate() {
            let ranges: Vec<Range<usize>> = re.find_iter(&text).map(|m| m.range()).filter(|r| !r.is_empty()).collect();
            if !ranges.is_empty() {
                text = replace_ranges(&text, &ranges, Detector::Custom(i).placeholder());
                hits.push((Detector::Custom(i), ranges.len()));
            }
        }
        for (det, find) in PIPELINE {
            if !self.is_enabled(det) {
                continue;
            }
            let ranges = find(&text);
            if ranges.is_empty() {
                continue;
            }
            text = replace_ranges(&text, &ranges, det.placeholder());
            match hits.iter_mut().find(|(h, _)| *h == det) {
                Some((_, n)) => *n += ranges.len(),
                None => hits.push((det, ranges.len())),
            }
        }
        Redacted { text, hits }
    }

    /// For URL path templating: the placeholder name to use for a segment that is, or
    /// contains, a detectable value (`"id"` for numbers, UUIDs, hex and base64 tokens;
    /// otherwise the detector's name, as in `"email"` or `"cpf"`, preferred over `"id"`
    /// when a segment holds both). `None` when nothing was detected.
    pub fn redact_path_segment(&self, seg: &str) -> Option<&'static str> {
        let r = self.redact_value(seg);
        r.hits.iter().map(|(d, _)| d.path_placeholder()).find(|p| *p != "id").or_else(|| r.hits.first().map(|_| "id"))
    }
}

fn replace_ranges(s: &str, ranges: &[Range<usize>], with: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for r in ranges {
        out.push_str(&s[at..r.start]);
        out.push_str(with);
        at = r.end;
    }
    out.push_str(&s[at..]);
    out
}

// ---------------------------------------------------------------------------------------
// Helpers over bytes. Matches consist of ASCII only, so byte ranges are char boundaries.

fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// Nothing alphanumeric just before `i`.
fn left_boundary(b: &[u8], i: usize) -> bool {
    i == 0 || !is_alnum(b[i - 1])
}

/// Nothing alphanumeric at `i` (just after a match ending at `i`).
fn right_boundary(b: &[u8], i: usize) -> bool {
    !is_alnum(at(b, i))
}

fn digits_at(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len() && b[i..i + n].iter().all(u8::is_ascii_digit)
}

fn hex_at(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len() && b[i..i + n].iter().all(u8::is_ascii_hexdigit)
}

/// Parse a fixed digit layout such as `ddd.ddd.ddd-dd`: `groups` are digit counts and
/// `seps[k]` the separator allowed (optionally) after group `k`. Returns the end and the
/// digits. Separators must be all present or all absent.
fn parse_layout(b: &[u8], start: usize, groups: &[usize], seps: &[u8]) -> Option<(usize, Vec<u8>)> {
    'mode: for with_seps in [true, false] {
        let mut i = start;
        let mut digits = Vec::with_capacity(14);
        for (k, &n) in groups.iter().enumerate() {
            if !digits_at(b, i, n) {
                continue 'mode;
            }
            digits.extend(b[i..i + n].iter().map(|c| c - b'0'));
            i += n;
            if k < seps.len() && with_seps {
                if at(b, i) != seps[k] {
                    continue 'mode;
                }
                i += 1;
            }
        }
        if right_boundary(b, i) {
            return Some((i, digits));
        }
    }
    None
}

/// Scan `s`, trying `matcher` at every left-boundary position whose byte satisfies
/// `starts`; on a match, continue after it.
fn scan(s: &str, starts: impl Fn(u8) -> bool, matcher: impl Fn(&[u8], usize) -> Option<usize>) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if starts(b[i]) && left_boundary(b, i) {
            if let Some(end) = matcher(b, i) {
                out.push(i..end);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Check digits.

/// CPF check digits (mod 11) for the first nine digits (each 0–9).
pub fn cpf_check_digits(d: &[u8; 9]) -> [u8; 2] {
    let dv = |ds: &[u8]| {
        let w = ds.len() as u32 + 1;
        let s: u32 = ds.iter().enumerate().map(|(i, &x)| x as u32 * (w - i as u32)).sum();
        ((s * 10) % 11 % 10) as u8
    };
    let d1 = dv(d);
    let mut ten = [0u8; 10];
    ten[..9].copy_from_slice(d);
    ten[9] = d1;
    [d1, dv(&ten)]
}

/// 11 digits (each 0–9) with valid CPF check digits, not all the same digit.
pub fn cpf_valid(d: &[u8]) -> bool {
    d.len() == 11 && d.iter().any(|&x| x != d[0]) && cpf_check_digits(d[..9].try_into().unwrap()) == [d[9], d[10]]
}

/// CNPJ check digits (mod 11, weights 2–9 cycling) for the first twelve digits.
pub fn cnpj_check_digits(d: &[u8; 12]) -> [u8; 2] {
    let dv = |ds: &[u8]| {
        let s: u32 = ds.iter().rev().enumerate().map(|(i, &x)| x as u32 * (2 + (i as u32 % 8))).sum();
        let r = s % 11;
        if r < 2 {
            0
        } else {
            (11 - r) as u8
        }
    };
    let d1 = dv(d);
    let mut thirteen = [0u8; 13];
    thirteen[..12].copy_from_slice(d);
    thirteen[12] = d1;
    [d1, dv(&thirteen)]
}

/// 14 digits (each 0–9) with valid CNPJ check digits, not all the same digit.
pub fn cnpj_valid(d: &[u8]) -> bool {
    d.len() == 14 && d.iter().any(|&x| x != d[0]) && cnpj_check_digits(d[..12].try_into().unwrap()) == [d[12], d[13]]
}

/// Luhn checksum over digits (each 0–9).
pub fn luhn_valid(d: &[u8]) -> bool {
    let s: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = x as u32;
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    !d.is_empty() && s.is_multiple_of(10)
}

// ---------------------------------------------------------------------------------------
// Detectors.

/// CPF: `12345678909` or `123.456.789-09`, valid check digits only.
pub fn find_cpfs(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c.is_ascii_digit(),
        |b, i| {
            let (end, d) = parse_layout(b, i, &[3, 3, 3, 2], b"..-")?;
            cpf_valid(&d).then_some(end)
        },
    )
}

/// CNPJ: `12345678000195` or `12.345.678/0001-95`, valid check digits only.
pub fn find_cnpjs(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c.is_ascii_digit(),
        |b, i| {
            let (end, d) = parse_layout(b, i, &[2, 3, 3, 4, 2], b"../-")?;
            cnpj_valid(&d).then_some(end)
        },
    )
}

/// Card numbers: 13–19 digits, plain or grouped by single spaces or dashes (groups of
/// four, or the 4-6-5 / 4-6-4 layouts), Luhn-valid only.
pub fn find_card_numbers(s: &str) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || !left_boundary(b, i) || (i > 0 && b[i - 1] == b'+') {
            i += 1;
            continue;
        }
        // The run of digit groups joined by single separators.
        let mut groups: Vec<Range<usize>> = Vec::new();
        let mut j = i;
        loop {
            let g0 = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            groups.push(g0..j);
            if (at(b, j) == b' ' || at(b, j) == b'-') && at(b, j + 1).is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let run_end = j;
        let found = card_in_groups(b, &groups);
        match found {
            Some(r) => {
                i = r.end;
                out.push(r);
            }
            None => i = run_end.max(i + 1),
        }
    }
    out
}

fn card_in_groups(b: &[u8], groups: &[Range<usize>]) -> Option<Range<usize>> {
    let layout_ok = |lens: &[usize]| -> bool {
        let total: usize = lens.iter().sum();
        if !(13..=19).contains(&total) {
            return false;
        }
        if lens.len() == 1 {
            return true;
        }
        let (last, init) = lens.split_last().unwrap();
        (init.iter().all(|&n| n == 4) && (1..=4).contains(last)) || lens == [4, 6, 5] || lens == [4, 6, 4]
    };
    for a in 0..groups.len() {
        for z in (a..groups.len()).rev() {
            let lens: Vec<usize> = groups[a..=z].iter().map(|g| g.len()).collect();
            if !layout_ok(&lens) {
                continue;
            }
            let digits: Vec<u8> = groups[a..=z].iter().flat_map(|g| b[g.clone()].iter().map(|c| c - b'0')).collect();
            let (start, end) = (groups[a].start, groups[z].end);
            if luhn_valid(&digits) && right_boundary(b, end) && left_boundary(b, start) {
                return Some(start..end);
            }
        }
    }
    None
}

/// Brazilian phone numbers: optional `+55`, a two-digit area code (optionally in
/// parentheses), then 8 digits (first 2–9) or 9 digits (first 9), with optional
/// space, dash or dot separators: `+55 11 91234-5678`, `(11) 91234-5678`,
/// `11912345678`, `11 3234-5678`.
pub fn find_br_phones(s: &str) -> Vec<Range<usize>> {
    scan(s, |c| c.is_ascii_digit() || c == b'+' || c == b'(', br_phone_at)
}

fn br_phone_at(b: &[u8], start: usize) -> Option<usize> {
    let is_sep = |c: u8| c == b' ' || c == b'-' || c == b'.';
    let mut i = start;
    if at(b, i) == b'+' {
        if !(at(b, i + 1) == b'5' && at(b, i + 2) == b'5') {
            return None;
        }
        i += 3;
        if is_sep(at(b, i)) {
            i += 1;
        }
    }
    // Area code.
    if at(b, i) == b'(' {
        if !(digits_at(b, i + 1, 2) && at(b, i + 1) != b'0' && at(b, i + 3) == b')') {
            return None;
        }
        i += 4;
        if at(b, i) == b' ' {
            i += 1;
        }
    } else {
        if !(digits_at(b, i, 2) && at(b, i) != b'0') {
            return None;
        }
        i += 2;
        if is_sep(at(b, i)) {
            i += 1;
        }
    }
    // Subscriber number.
    for first in [5usize, 4] {
        let lead = at(b, i);
        if (first == 5 && lead != b'9') || (first == 4 && !(b'2'..=b'9').contains(&lead)) {
            continue;
        }
        if !digits_at(b, i, first) {
            continue;
        }
        let mut j = i + first;
        if is_sep(at(b, j)) {
            j += 1;
        }
        if digits_at(b, j, 4) && right_boundary(b, j + 4) {
            return Some(j + 4);
        }
    }
    None
}

/// E.164-style international numbers: `+` then 8–15 digits, optionally grouped by
/// single spaces or dashes (`+14155552671`, `+44 20 7946 0958`).
pub fn find_e164_phones(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c == b'+',
        |b, i| {
            let mut j = i + 1;
            let mut n = 0;
            let mut end = None;
            while j < b.len() {
                if b[j].is_ascii_digit() {
                    n += 1;
                    j += 1;
                    end = Some(j);
                } else if n > 0 && (b[j] == b' ' || b[j] == b'-') && at(b, j + 1).is_ascii_digit() {
                    j += 1;
                } else {
                    break;
                }
            }
            let end = end?;
            ((8..=15).contains(&n) && right_boundary(b, end)).then_some(end)
        },
    )
}

/// All phone numbers (E.164 first, so that the tail of a foreign number is not taken
/// for a Brazilian one; then Brazilian), sorted and non-overlapping.
pub fn find_phones(s: &str) -> Vec<Range<usize>> {
    let mut out = find_e164_phones(s);
    for r in find_br_phones(s) {
        if !out.iter().any(|o| o.start < r.end && r.start < o.end) {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.start);
    out
}

/// Emails: `local@domain.tld` (also with a percent-encoded `%40` at-sign, as in paths).
pub fn find_emails(s: &str) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let local_ch = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let domain_ch = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut floor = 0;
    let mut i = 0;
    while i < b.len() {
        let at_len = if b[i] == b'@' {
            1
        } else if b[i] == b'%' && at(b, i + 1) == b'4' && at(b, i + 2) == b'0' {
            3
        } else {
            i += 1;
            continue;
        };
        let mut l = i;
        while l > floor && local_ch(b[l - 1]) {
            l -= 1;
        }
        while l < i && b[l] == b'.' {
            l += 1;
        }
        let d0 = i + at_len;
        let mut e = d0;
        while e < b.len() && domain_ch(b[e]) {
            e += 1;
        }
        while e > d0 && (b[e - 1] == b'.' || b[e - 1] == b'-') {
            e -= 1;
        }
        let domain = &b[d0..e];
        let ok = l < i
            && domain.first().is_some_and(|c| c.is_ascii_alphanumeric())
            && domain.iter().rposition(|&c| c == b'.').is_some_and(|dot| {
                let tld = &domain[dot + 1..];
                dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
            });
        if ok {
            out.push(l..e);
            floor = e;
            i = e;
        } else {
            i += at_len;
        }
    }
    out
}

/// UUIDs: 8-4-4-4-12 hex digits.
pub fn find_uuids(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c.is_ascii_hexdigit(),
        |b, i| {
            let mut j = i;
            for (k, n) in [8, 4, 4, 4, 12].into_iter().enumerate() {
                if !hex_at(b, j, n) {
                    return None;
                }
                j += n;
                if k < 4 {
                    if at(b, j) != b'-' {
                        return None;
                    }
                    j += 1;
                }
            }
            right_boundary(b, j).then_some(j)
        },
    )
}

/// Hex tokens: runs of at least 16 hex digits with at least one letter (all-digit runs
/// are numbers).
pub fn find_hex_tokens(s: &str) -> Vec<Range<usize>> {
    runs(s, |c| c.is_ascii_hexdigit())
        .into_iter()
        .filter(|r| r.len() >= 16 && s.as_bytes()[r.clone()].iter().any(u8::is_ascii_alphabetic))
        .collect()
}

fn b64_ch(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"+/_-".contains(&c)
}

fn b64url_ch(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Base64 / base64url tokens: runs of at least 20 base64 characters (plus any `=`
/// padding) mixing letters and digits. Runs of hex digits only are left to the hex
/// detector.
pub fn find_base64_tokens(s: &str) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    runs(s, b64_ch)
        .into_iter()
        .filter(|r| {
            let t = &b[r.clone()];
            r.len() >= 20
                && t.iter().any(u8::is_ascii_alphabetic)
                && t.iter().any(u8::is_ascii_digit)
                && !t.iter().all(u8::is_ascii_hexdigit)
        })
        .map(|r| {
            let mut end = r.end;
            while end < b.len() && b[end] == b'=' && end - r.end < 2 {
                end += 1;
            }
            r.start..end
        })
        .collect()
}

fn runs(s: &str, f: impl Fn(u8) -> bool) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if f(b[i]) {
            let st = i;
            while i < b.len() && f(b[i]) {
                i += 1;
            }
            out.push(st..i);
        } else {
            i += 1;
        }
    }
    out
}

/// JWTs: three base64url parts separated by dots, the first starting with `eyJ` (the
/// signature may be empty, as with `alg: none`).
pub fn find_jwts(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c == b'e',
        |b, i| {
            if !(at(b, i + 1) == b'y' && at(b, i + 2) == b'J') || (i > 0 && b64url_ch(b[i - 1])) {
                return None;
            }
            let part = |mut j: usize| {
                while j < b.len() && b64url_ch(b[j]) {
                    j += 1;
                }
                j
            };
            let e1 = part(i);
            if at(b, e1) != b'.' {
                return None;
            }
            let e2 = part(e1 + 1);
            if e2 == e1 + 1 || at(b, e2) != b'.' {
                return None;
            }
            Some(part(e2 + 1))
        },
    )
}

/// Bearer tokens: `Bearer <token>` (case-insensitive), the whole thing up to the next
/// whitespace.
pub fn find_bearer_tokens(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c == b'b' || c == b'B',
        |b, i| {
            if !(i + 6 <= b.len() && b[i..i + 6].eq_ignore_ascii_case(b"bearer")) {
                return None;
            }
            let mut j = i + 6;
            let ws0 = j;
            while at(b, j) == b' ' || at(b, j) == b'\t' {
                j += 1;
            }
            let t0 = j;
            while j < b.len() && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            (j > ws0 && t0 > ws0 && j > t0).then_some(j)
        },
    )
}

/// Numbers: runs of at least four digits.
pub fn find_numbers(s: &str) -> Vec<Range<usize>> {
    runs(s, |c| c.is_ascii_digit()).into_iter().filter(|r| r.len() >= 4).collect()
}

#[cfg(test)]
mod tests;
