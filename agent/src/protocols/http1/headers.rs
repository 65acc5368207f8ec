//! A message's header block kept as received, in one buffer, with where each field is.
//!
//! Why not a `Vec` of owned (name, value) pairs: that was two allocations per field
//! (≈ 20 per request and its response), the largest single cost of the pipeline. One
//! block plus one small index costs two allocations per message, whatever its size.

use std::ops::Range;

/// Where one field's name and value lie in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// The header fields of one message. Names are lowercased in the block (HTTP field
/// names are case-insensitive); values are as received (not necessarily UTF-8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    block: Vec<u8>,
    fields: Vec<Field>,
}

fn range((start, end): (u32, u32)) -> Range<usize> {
    start as usize..end as usize
}

/// Offsets of `part` inside `block` (`part` must be a sub-slice of it).
pub(super) fn span_in(block: &[u8], part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize).saturating_sub(block.as_ptr() as usize).min(block.len());
    let end = (start + part.len()).min(block.len());
    (start as u32, end as u32)
}

impl Headers {
    /// Indexes httparse's `parsed` fields, which borrow from `block` (the block is taken
    /// afterwards, by [`Headers::new`]). Blocks are capped far below 4 GiB, so offsets fit in u32.
    pub(super) fn index(block: &[u8], parsed: &[httparse::Header<'_>]) -> Vec<Field> {
        parsed
            .iter()
            .map(|h| Field { name: span_in(block, h.name.as_bytes()), value: span_in(block, h.value) })
            .collect()
    }

    /// The block and its index from [`Headers::index`]; lowercases the names in place.
    pub(super) fn new(mut block: Vec<u8>, fields: Vec<Field>) -> Self {
        for f in &fields {
            if let Some(name) = block.get_mut(range(f.name)) {
                name.make_ascii_lowercase();
            }
        }
        Self { block, fields }
    }

    /// Appends one field (HTTP/2: fields come one by one out of HPACK, not as one block);
    /// the name is lowercased. Returns where the value lies in the block.
    pub(crate) fn push(&mut self, name: &[u8], value: &[u8]) -> (u32, u32) {
        let n0 = self.block.len();
        self.block.extend(name.iter().map(u8::to_ascii_lowercase));
        let v0 = self.block.len();
        self.block.extend_from_slice(value);
        let (n0, v0, end) = (n0 as u32, v0 as u32, self.block.len() as u32);
        self.fields.push(Field { name: (n0, v0), value: (v0, end) });
        (v0, end)
    }

    /// The bytes at `at` (as returned by [`Headers::push`]).
    pub(crate) fn value_at(&self, at: (u32, u32)) -> &[u8] {
        self.block.get(range(at)).unwrap_or_default()
    }

    /// Bytes held by the block (the caller bounds it).
    pub(crate) fn block_len(&self) -> usize {
        self.block.len()
    }

    /// The block a message's other parts (method, target) are indexed into.
    pub(super) fn block(&self) -> &[u8] {
        &self.block
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether field `f` is named `name`; the length test first (most fields differ in
    /// length), so a lookup costs a few instructions per field.
    fn is(&self, f: &Field, name: &str) -> bool {
        (f.name.1 - f.name.0) as usize == name.len() && self.block.get(range(f.name)) == Some(name.as_bytes())
    }

    /// Every field, in order: (lowercase name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|f| {
            // httparse accepted the name as a token: ASCII, so valid UTF-8.
            let name = self.block.get(range(f.name)).and_then(|n| std::str::from_utf8(n).ok()).unwrap_or_default();
            (name, self.block.get(range(f.value)).unwrap_or_default())
        })
    }

    /// First value of field `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let f = self.fields.iter().find(|f| self.is(f, name))?;
        self.block.get(range(f.value))
    }

    /// Every value of field `name` (lowercase), in order: for list fields such as
    /// tracestate and baggage that may be split over several lines.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.fields.iter().filter(move |f| self.is(f, name)).map(|f| self.block.get(range(f.value)).unwrap_or_default())
    }
}
