//! HPACK header-block decoding (RFC 7541), one decoder per connection and direction.
//!
//! Why not a crate: the agent must keep decoding a connection whose dynamic table it only
//! partly knows (it joined mid-connection, or a block was lost), and the crates stop at
//! the first unknown index. Here an index the decoder cannot resolve is *skipped*, never
//! guessed: the field is reported missing (`skipped`) and decoding goes on, because every
//! representation says its own length.
//!
//! What "partly known" means: the entries the decoder saw inserted are the newest ones,
//! so a reference to one of them is exact; an older reference falls in the unknown tail.
//! A size update to 0 empties the table, which is then fully known again.
//!
//! Bounds: the table never exceeds the size the peer's SETTINGS allowed, capped at
//! [`MAX_TABLE_SIZE`]; strings are capped at [`MAX_STRING`]; integers at 2^28.

use std::collections::VecDeque;

use super::huffman;

/// Largest dynamic table the agent keeps, whatever the endpoints negotiated.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Largest string literal decoded (after Huffman decoding).
pub const MAX_STRING: usize = 16 * 1024;
/// RFC 7541 §4.1: each entry costs its name and value lengths plus 32.
const ENTRY_OVERHEAD: usize = 32;
/// SETTINGS_HEADER_TABLE_SIZE's default (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded. After any of these the decoder's table is
/// no longer trusted (see [`Decoder::forget`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpackError {
    /// The block ended inside a representation.
    Truncated,
    /// An integer longer than 2^28.
    IntegerOverflow,
    /// Index 0, or past the end of a table that is fully known.
    BadIndex,
    Huffman,
    /// A string longer than [`MAX_STRING`].
    StringTooLong,
    /// A dynamic table size update above the allowed maximum, or after a field.
    BadSizeUpdate,
}

impl HpackError {
    /// Stable snake_case label (parse-error reasons).
    pub fn reason(self) -> &'static str {
        match self {
            HpackError::Truncated => "hpack_truncated",
            HpackError::IntegerOverflow => "hpack_integer_overflow",
            HpackError::BadIndex => "hpack_bad_index",
            HpackError::Huffman => "hpack_huffman",
            HpackError::StringTooLong => "hpack_string_too_long",
            HpackError::BadSizeUpdate => "hpack_bad_size_update",
        }
    }
}

/// One dynamic table entry: name and value in one allocation.
#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }
    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }
}

/// The decoder of one direction of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// Older entries exist that the decoder never saw.
    unknown_tail: bool,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

/// What a resolved index refers to.
enum Lookup<'a> {
    Known(&'a [u8], &'a [u8]),
    /// An entry older than the ones the decoder saw: skipped, never guessed.
    Unknown,
}

/// Where a literal's name comes from.
enum Name {
    Index(usize),
    Literal,
}

impl Decoder {
    /// A decoder that saw the connection start: its table is empty and fully known.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            unknown_tail: false,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// A decoder for a connection joined mid-flight: the table holds entries it never saw.
    pub fn joined() -> Self {
        let mut d = Self::new();
        d.forget();
        d
    }

    /// Everything in the table becomes unknown (a block was lost or refused). Later
    /// insertions are known again, and a size update to 0 makes the table fully known.
    pub fn forget(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_tail = true;
        // The real maximum is unknown: assuming the largest only keeps entries longer,
        // and the encoder never refers past its own (smaller) table.
        self.max_size = MAX_TABLE_SIZE;
    }

    /// Whether every index can be resolved.
    pub fn fully_known(&self) -> bool {
        !self.unknown_tail
    }

    /// Decodes one complete header block, calling `field(name, value)` for each field it
    /// can resolve. Returns how many fields it had to skip (unknown indexes).
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<u32, HpackError> {
        let mut pos = 0;
        let (mut skipped, mut any_field) = (0u32, false);
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let index = integer(block, &mut pos, 7)?;
                match self.lookup(index)? {
                    Lookup::Known(n, v) => field(n, v),
                    Lookup::Unknown => skipped += 1,
                }
            } else if b & 0xc0 == 0x40 {
                let index = integer(block, &mut pos, 6)?;
                let name = if index == 0 { Name::Literal } else { Name::Index(index) };
                skipped += self.literal(block, &mut pos, name, true, &mut field)?;
            } else if b & 0xe0 == 0x20 {
                let size = integer(block, &mut pos, 5)?;
                // The agent may see a SETTINGS change after the blocks that use it (the two
                // directions are fed separately): any size up to the agent's cap is taken.
                if any_field || size > MAX_TABLE_SIZE {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.resize(size);
                continue;
            } else {
                // 0000xxxx without indexing, 0001xxxx never indexed: same for a decoder.
                let index = integer(block, &mut pos, 4)?;
                let name = if index == 0 { Name::Literal } else { Name::Index(index) };
                skipped += self.literal(block, &mut pos, name, false, &mut field)?;
            }
            any_field = true;
        }
        Ok(skipped)
    }

    fn literal(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        name: Name,
        index: bool,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<u32, HpackError> {
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let mut value_buf = std::mem::take(&mut self.value_buf);
        let result = self.literal_with(block, pos, name, index, field, &mut name_buf, &mut value_buf);
        (self.name_buf, self.value_buf) = (name_buf, value_buf);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn literal_with(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        name: Name,
        index: bool,
        field: &mut impl FnMut(&[u8], &[u8]),
        name_buf: &mut Vec<u8>,
        value_buf: &mut Vec<u8>,
    ) -> Result<u32, HpackError> {
        name_buf.clear();
        let known_name = match name {
            Name::Literal => {
                string(block, pos, name_buf)?;
                true
            }
            Name::Index(i) => match self.lookup(i)? {
                Lookup::Known(n, _) => {
                    name_buf.extend_from_slice(n);
                    true
                }
                Lookup::Unknown => false,
            },
        };
        value_buf.clear();
        string(block, pos, value_buf)?;
        if known_name {
            field(name_buf, value_buf);
        }
        if index {
            if known_name {
                self.insert(name_buf, value_buf);
            } else {
                // An entry the decoder cannot know goes in front of the ones it knows.
                self.forget();
            }
        }
        Ok(u32::from(!known_name))
    }

    fn lookup(&self, index: usize) -> Result<Lookup<'_>, HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex);
        }
        if let Some(&(n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok(Lookup::Known(n.as_bytes(), v.as_bytes()));
        }
        match self.entries.get(index - 1 - STATIC_TABLE.len()) {
            Some(e) => Ok(Lookup::Known(e.name(), e.value())),
            None if self.unknown_tail => Ok(Lookup::Unknown),
            None => Err(HpackError::BadIndex),
        }
    }

    fn resize(&mut self, size: usize) {
        self.max_size = size;
        if size == 0 {
            // Empty: every later index is one the decoder sees inserted.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
        }
        self.evict(0);
    }

    /// Evicts the oldest known entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.bytes.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
            return;
        }
        self.evict(size);
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.entries.push_front(Entry { bytes: bytes.into_boxed_slice(), name_len: name.len() });
        self.size += size;
    }

    /// Entries known, newest first (tests).
    #[cfg(test)]
    pub fn known(&self) -> Vec<(String, String)> {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.entries.iter().map(|e| (s(e.name()), s(e.value()))).collect()
    }

    /// Size of the known entries (tests).
    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 7541 §5.1: an integer with an N-bit prefix, at most 2^28.
fn integer(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let max = (1usize << prefix) - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)? as usize & max;
    *pos += 1;
    if first < max {
        return Ok(first);
    }
    let (mut value, mut shift) = (max, 0u32);
    loop {
        let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// RFC 7541 §5.2: a string literal, appended to `buf` (Huffman-decoded if it is coded).
fn string(block: &[u8], pos: &mut usize, buf: &mut Vec<u8>) -> Result<(), HpackError> {
    let huff = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let raw = block.get(*pos..*pos + len).ok_or(HpackError::Truncated)?;
    *pos += len;
    if !huff {
        if len > MAX_STRING {
            return Err(HpackError::StringTooLong);
        }
        buf.extend_from_slice(raw);
        return Ok(());
    }
    huffman::decode(raw, buf, MAX_STRING).map_err(|e| match e {
        huffman::HuffmanError::TooLong => HpackError::StringTooLong,
        _ => HpackError::Huffman,
    })
}

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];
