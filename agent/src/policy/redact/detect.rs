//! The detectors: pure functions over a `&str` returning the byte ranges they matched
//! (sorted, non-overlapping, always on ASCII boundaries).
//!
//! Every detector is linear in its input: one pass, and at each position at most a
//! bounded window (a document layout, the five digit groups a card number can span, the
//! 255 bytes of an email domain). A value from the wire is chosen by whoever sends it,
//! and one request with a detector that looks at every pair of digit groups once cost
//! the agent 17 s of CPU (issue 15). The unit tests count the steps
//! ([`steps`]) to keep it that way.

use std::ops::Range;

use super::checks::{cnpj_valid, cpf_valid, luhn_valid};

#[cfg(test)]
thread_local! {
    static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// One unit of detector work (a byte looked at, a candidate tried): counted in tests so
/// that linearity is asserted without timing, free otherwise.
#[inline(always)]
fn step() {
    #[cfg(test)]
    STEPS.with(|s| s.set(s.get() + 1));
}

/// The steps this thread's detectors took since the last call (tests only).
#[cfg(test)]
pub fn steps() -> u64 {
    STEPS.with(|s| s.replace(0))
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
    i + n <= b.len()
        && b[i..i + n].iter().all(|c| {
            step();
            c.is_ascii_digit()
        })
}

fn hex_at(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len()
        && b[i..i + n].iter().all(|c| {
            step();
            c.is_ascii_hexdigit()
        })
}

/// Parse a fixed digit layout such as `ddd.ddd.ddd-dd`: `groups` are digit counts and
/// `seps[k]` the separator allowed (optionally) after group `k`. Returns the end and the
/// digits (at most 14). Separators must be all present or all absent.
fn parse_layout(b: &[u8], start: usize, groups: &[usize], seps: &[u8]) -> Option<(usize, [u8; 14], usize)> {
    'mode: for with_seps in [true, false] {
        let mut i = start;
        let mut digits = [0u8; 14];
        let mut n_digits = 0;
        for (k, &n) in groups.iter().enumerate() {
            if !digits_at(b, i, n) || n_digits + n > digits.len() {
                continue 'mode;
            }
            for (d, c) in digits[n_digits..n_digits + n].iter_mut().zip(&b[i..i + n]) {
                *d = c - b'0';
            }
            n_digits += n;
            i += n;
            if k < seps.len() && with_seps {
                if at(b, i) != seps[k] {
                    continue 'mode;
                }
                i += 1;
            }
        }
        if right_boundary(b, i) {
            return Some((i, digits, n_digits));
        }
    }
    None
}

/// Scan `s`, trying `matcher` at every left-boundary position whose byte satisfies
/// `starts`; on a match, continue after it. Linear as long as each matcher looks at a
/// bounded window, or at a run no other start position shares.
fn scan(s: &str, starts: impl Fn(u8) -> bool, matcher: impl Fn(&[u8], usize) -> Option<usize>) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        step();
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

fn runs(s: &str, f: impl Fn(u8) -> bool) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        step();
        if f(b[i]) {
            let st = i;
            while i < b.len() && f(b[i]) {
                step();
                i += 1;
            }
            out.push(st..i);
        } else {
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Detectors.

/// CPF: `12345678909` or `123.456.789-09`, valid check digits only.
pub fn find_cpfs(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c.is_ascii_digit(),
        |b, i| {
            let (end, d, n) = parse_layout(b, i, &[3, 3, 3, 2], b"..-")?;
            cpf_valid(&d[..n]).then_some(end)
        },
    )
}

/// CNPJ: `12345678000195` or `12.345.678/0001-95`, valid check digits only.
pub fn find_cnpjs(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c.is_ascii_digit(),
        |b, i| {
            let (end, d, n) = parse_layout(b, i, &[2, 3, 3, 4, 2], b"../-")?;
            cnpj_valid(&d[..n]).then_some(end)
        },
    )
}

/// The most digit groups a card number spans: 19 digits at most, every group but the
/// last of four (`4-4-4-4-3`), or the 4-6-5 / 4-6-4 layouts.
const CARD_MAX_GROUPS: usize = 5;

/// Card numbers: 13–19 digits, plain or grouped by single spaces or dashes (groups of
/// four, or the 4-6-5 / 4-6-4 layouts), Luhn-valid only.
///
/// A run of digit groups (`1-1-1-…`) is tried group by group, each with the at most
/// [`CARD_MAX_GROUPS`] groups that follow it: linear in the run, whatever its length.
pub fn find_card_numbers(s: &str) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        step();
        if !b[i].is_ascii_digit() || !left_boundary(b, i) || (i > 0 && b[i - 1] == b'+') {
            i += 1;
            continue;
        }
        // The run of digit groups joined by single separators.
        groups.clear();
        let mut j = i;
        loop {
            let g0 = j;
            while j < b.len() && b[j].is_ascii_digit() {
                step();
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
        match card_in_groups(b, &groups) {
            Some(r) => {
                i = r.end;
                out.push(r);
            }
            None => i = run_end.max(i + 1),
        }
    }
    out
}

/// Group lengths that make a card number (see [`find_card_numbers`]).
fn card_layout_ok(lens: &[usize]) -> bool {
    let total: usize = lens.iter().sum();
    if !(13..=19).contains(&total) {
        return false;
    }
    match lens.split_last() {
        None => false,
        Some((_, [])) => true,
        Some((last, init)) => {
            (init.iter().all(|&n| n == 4) && (1..=4).contains(last)) || lens == [4, 6, 5] || lens == [4, 6, 4]
        }
    }
}

/// The first card number in a run of digit groups: from each group on, the longest
/// layout of at most [`CARD_MAX_GROUPS`] groups that is Luhn-valid.
fn card_in_groups(b: &[u8], groups: &[Range<usize>]) -> Option<Range<usize>> {
    let mut lens = [0usize; CARD_MAX_GROUPS];
    for a in 0..groups.len() {
        let last = (a + CARD_MAX_GROUPS).min(groups.len());
        for z in (a..last).rev() {
            step();
            let n = z - a + 1;
            for (l, g) in lens.iter_mut().zip(&groups[a..=z]) {
                *l = g.len();
            }
            if !card_layout_ok(&lens[..n]) {
                continue;
            }
            // At most 19 digits: the layout says so.
            let mut digits = [0u8; 19];
            let mut k = 0;
            for c in groups[a..=z].iter().flat_map(|g| &b[g.clone()]) {
                step();
                digits[k] = c - b'0';
                k += 1;
            }
            let (start, end) = (groups[a].start, groups[z].end);
            if luhn_valid(&digits[..k]) && right_boundary(b, end) && left_boundary(b, start) {
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
/// single spaces or dashes (`+14155552671`, `+44 20 7946 0958`). The look ahead stops
/// at the 16th digit: nothing longer is a phone number.
pub fn find_e164_phones(s: &str) -> Vec<Range<usize>> {
    scan(
        s,
        |c| c == b'+',
        |b, i| {
            let mut j = i + 1;
            let mut n = 0;
            let mut end = None;
            while j < b.len() && n <= 15 {
                step();
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

/// The longest domain name (RFC 1035): the email detector looks no further.
const EMAIL_DOMAIN_MAX: usize = 255;

fn email_local_ch(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"._%+-".contains(&c)
}

fn email_domain_ch(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
}

/// The end of a valid email domain starting at `d0` (at most [`EMAIL_DOMAIN_MAX`]
/// bytes, trailing dots and dashes trimmed), or `None`.
fn email_domain_end(b: &[u8], d0: usize) -> Option<usize> {
    let mut e = d0;
    while e < b.len() && e - d0 < EMAIL_DOMAIN_MAX && email_domain_ch(b[e]) {
        step();
        e += 1;
    }
    while e > d0 && (b[e - 1] == b'.' || b[e - 1] == b'-') {
        e -= 1;
    }
    let domain = &b[d0..e];
    let ok = domain.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && domain.iter().rposition(|&c| c == b'.').is_some_and(|dot| {
            let tld = &domain[dot + 1..];
            dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
        });
    ok.then_some(e)
}

/// Emails: `local@domain.tld` (also with a percent-encoded `%40` at-sign, as in paths).
///
/// One forward pass: the local part is the run of local-part characters before the
/// at-sign (tracked as the scan goes, never scanned backwards: `%40` is itself made of
/// such characters, and `a%40a%40…` re-scanned from every at-sign was quadratic), minus
/// its leading dots.
pub fn find_emails(s: &str) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let mut out: Vec<Range<usize>> = Vec::new();
    // The first non-dot of the run of local-part characters that ends at `i`.
    let mut lead: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        step();
        let at_len = if b[i] == b'@' {
            1
        } else if b[i] == b'%' && at(b, i + 1) == b'4' && at(b, i + 2) == b'0' {
            3
        } else {
            if !email_local_ch(b[i]) {
                lead = None;
            } else if lead.is_none() && b[i] != b'.' {
                lead = Some(i);
            }
            i += 1;
            continue;
        };
        let local = lead.filter(|&l| l < i);
        match (local, email_domain_end(b, i + at_len)) {
            (Some(l), Some(e)) => {
                out.push(l..e);
                lead = None;
                i = e;
            }
            _ => {
                // `@` ends a local part; `%40` is part of the next one.
                if at_len == 1 {
                    lead = None;
                } else if lead.is_none() {
                    lead = Some(i);
                }
                i += at_len;
            }
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

/// JWTs: three base64url parts separated by dots, the first starting with `eyJ` (the
/// signature may be empty, as with `alg: none`). A part starts a base64url run, so each
/// run is looked at by at most three attempts.
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
                    step();
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
/// whitespace. The token is looked for only after whitespace: `bearer/bearer/…` must not
/// scan to the end of the value from every `bearer`.
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
                step();
                j += 1;
            }
            let t0 = j;
            if t0 == ws0 {
                return None;
            }
            while j < b.len() && !b[j].is_ascii_whitespace() {
                step();
                j += 1;
            }
            (j > t0).then_some(j)
        },
    )
}

/// Numbers: runs of at least four digits.
pub fn find_numbers(s: &str) -> Vec<Range<usize>> {
    runs(s, |c| c.is_ascii_digit()).into_iter().filter(|r| r.len() >= 4).collect()
}
