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
//!
//! Every detector is linear in its input ([`detect`]), and every value is capped by
//! length before any detector sees it ([`caps`]).

mod caps;
mod checks;
mod detect;

use std::ops::Range;

pub use self::{
    caps::{CapCounters, Field, CAPPED},
    checks::{cnpj_check_digits, cnpj_valid, cpf_check_digits, cpf_valid, luhn_valid},
    detect::{
        find_base64_tokens, find_bearer_tokens, find_br_phones, find_card_numbers, find_cnpjs, find_cpfs,
        find_e164_phones, find_emails, find_hex_tokens, find_jwts, find_numbers, find_phones, find_uuids,
    },
};

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

    /// Personal data or a secret, as opposed to an identifier of no particular kind
    /// (numbers, UUIDs, hex and base64 tokens). Values that legitimately carry ids — a
    /// `tracestate` member's span id, a host name's digits, a user agent's version — are
    /// scanned for these only (see [`Redactor::redact_personal`]).
    pub fn is_personal(&self) -> bool {
        !matches!(self, Detector::Number | Detector::Uuid | Detector::HexToken | Detector::Base64Token)
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
    /// The value was past its field's cap: `text` is [`CAPPED`], nothing was scanned.
    pub capped: bool,
}

impl Redacted {
    /// The text differs from the value: a detector hit, or the cap.
    pub fn changed(&self) -> bool {
        self.capped || !self.hits.is_empty()
    }

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
    /// Values past their field's cap, by field (shared by clones).
    pub capped: CapCounters,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor { enabled: Detector::ALL.to_vec(), custom: Vec::new(), capped: CapCounters::default() }
    }
}

impl Redactor {
    /// Only the given detectors.
    pub fn new(enabled: &[Detector]) -> Self {
        let mut r = Redactor { enabled: Vec::new(), custom: Vec::new(), capped: CapCounters::default() };
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

    /// A value of `field`: past the field's cap it becomes [`CAPPED`] (counted, never
    /// scanned); below it every match of every enabled detector becomes `{<name>}`.
    pub fn redact_field(&self, field: Field, s: &str) -> Redacted {
        if s.len() > field.cap() {
            self.capped.count(field);
            return Redacted { text: CAPPED.to_string(), hits: Vec::new(), capped: true };
        }
        self.redact_value_uncapped(s)
    }

    /// A value of `field` that legitimately carries identifiers: capped as in
    /// [`Self::redact_field`], then only the personal detectors (and configured patterns)
    /// run, so `rojo=00f067aa0ba902b7` or `api-2.example.com` pass and `acme=maria@x.com`
    /// does not.
    pub fn redact_personal(&self, field: Field, s: &str) -> Redacted {
        if s.len() > field.cap() {
            self.capped.count(field);
            return Redacted { text: CAPPED.to_string(), hits: Vec::new(), capped: true };
        }
        self.run(s, Detector::is_personal)
    }

    /// A log line's body or attribute (already bounded by the line length cap): the
    /// personal detectors and configured patterns, so ids and hashes in log lines stay
    /// readable while CPFs, cards, emails, phones and JWTs do not leave.
    pub fn redact_log_text(&self, s: &str) -> Redacted {
        self.run(s, Detector::is_personal)
    }

    /// A value of no particular field ([`Field::Value`]'s cap).
    pub fn redact_value(&self, s: &str) -> Redacted {
        self.redact_field(Field::Value, s)
    }

    /// Every enabled detector over the whole of `s`, whatever its length (benchmarks and
    /// tests of the detectors themselves; traffic goes through [`Self::redact_field`]).
    pub fn redact_value_uncapped(&self, s: &str) -> Redacted {
        self.run(s, |_| true)
    }

    /// The configured patterns, then the enabled detectors that `wanted` accepts.
    fn run(&self, s: &str, wanted: fn(&Detector) -> bool) -> Redacted {
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
            if !self.is_enabled(det) || !wanted(&det) {
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
        Redacted { text, hits, capped: false }
    }

    /// For URL path templating: the placeholder name to use for a segment that is, or
    /// contains, a detectable value (`"id"` for numbers, UUIDs, hex and base64 tokens;
    /// otherwise the detector's name, as in `"email"` or `"cpf"`, preferred over `"id"`
    /// when a segment holds both), `"capped"` past [`Field::PathSegment`]'s cap. `None`
    /// when nothing was detected. A percent-encoded at-sign (`%40`) counts as one.
    pub fn redact_path_segment(&self, seg: &str) -> Option<&'static str> {
        if seg.len() > Field::PathSegment.cap() {
            self.capped.count(Field::PathSegment);
            return Some("capped");
        }
        let decoded;
        let seg = if seg.contains("%40") {
            decoded = seg.replace("%40", "@");
            decoded.as_str()
        } else {
            seg
        };
        let r = self.redact_value_uncapped(seg);
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

#[cfg(test)]
mod tests;
