//! Record batches (magic 2) as Produce requests and Fetch responses carry them: the
//! records' offsets, value sizes and trace-context headers; gzip batches are looked
//! into (bounded), other codecs only counted.
//!
//! Privacy: keys, values and other headers are skipped in place, never copied.

use std::io::Read;

use super::{error, reason, Cur, Wire, MAX_MESSAGES, W};
use crate::protocols::{L7Event, MqMessage};

/// Decompressed size of one gzip batch that is looked into.
const MAX_DECOMPRESSED: u64 = 4 * 1024 * 1024;
/// Trace-context header values longer than this are not trace context.
const MAX_CONTEXT_VALUE: usize = 512;
const MAX_TRACESTATE: usize = 8;
/// Size of a record batch v2 header, up to and including the record count.
const BATCH_HEADER: usize = 61;

/// One record found: the message as reported, and (for a produce, whose offsets the
/// broker assigns) its offset relative to the batch's base.
pub(super) struct Produced {
    pub message: MqMessage,
    pub relative_offset: i64,
}

/// Messages found in one request or response, with the problems met on the way.
#[derive(Default)]
pub(super) struct Sink {
    pub produced: Vec<Produced>,
    pub acks: Option<i16>,
    dropped: bool,
    errors: Vec<&'static str>,
}

impl Sink {
    fn push(&mut self, p: Produced) {
        if self.produced.len() < MAX_MESSAGES {
            self.produced.push(p);
        } else if !self.dropped {
            self.dropped = true;
            self.errors.push(reason::TOO_MANY_MESSAGES);
        }
    }
    pub fn error(&mut self, why: &'static str) {
        if !self.errors.contains(&why) {
            self.errors.push(why);
        }
    }
    pub fn report(&mut self, out: &mut Vec<L7Event>) {
        out.extend(self.errors.drain(..).map(error));
    }
}

/// Record batches (magic 2) of one partition. `fetch_from`: `Some(position)` for a
/// fetch response (records before the consumer's position are skipped as the consumer
/// skips them; a trailing partial batch is the broker's cut and ignored), `None` for a
/// produce request (offsets are relative to the batch, the broker assigns them).
/// `cut`: the bytes end early because the capture did (keep the records that are whole).
pub(super) fn parse_batches(
    mut data: &[u8],
    topic: &str,
    partition: i32,
    fetch_from: Option<i64>,
    cut: bool,
    sink: &mut Sink,
) {
    while data.len() >= 12 {
        let base_offset = i64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
        let batch_len = i32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
        if batch_len < (BATCH_HEADER - 12) as i32 {
            sink.error(reason::INVALID_RECORD_BATCH);
            return;
        }
        let end = 12 + batch_len as usize;
        let whole = data.len() >= end;
        if !whole && (fetch_from.is_some() && !cut || data.len() < BATCH_HEADER) {
            return;
        }
        let batch = Batch { bytes: &data[..end.min(data.len())], base_offset, whole, topic, partition, fetch_from };
        batch.parse(sink);
        if !whole {
            return;
        }
        data = &data[end..];
    }
}

/// One record batch (or the prefix of one that the bytes hold) and where it belongs.
struct Batch<'a> {
    bytes: &'a [u8],
    base_offset: i64,
    /// All of the batch is in `bytes`.
    whole: bool,
    topic: &'a str,
    partition: i32,
    fetch_from: Option<i64>,
}

impl Batch<'_> {
    fn parse(&self, sink: &mut Sink) {
        let batch = self.bytes;
        let magic = batch[16] as i8;
        if magic != 2 {
            sink.error(reason::LEGACY_MESSAGE_FORMAT);
            return;
        }
        let attributes = i16::from_be_bytes([batch[21], batch[22]]);
        let count = i32::from_be_bytes(batch[57..61].try_into().expect("4 bytes"));
        let is_control = attributes & 0x20 != 0;
        if is_control {
            return;
        }
        let records = &batch[BATCH_HEADER..];
        let msg = |offset_delta: i64| self.message(offset_delta);
        let keep = |p: &Produced| match self.fetch_from {
            Some(from) => p.message.offset.is_some_and(|o| o >= from),
            None => true,
        };
        match attributes & 0x7 {
            0 => parse_records(records, count, &msg, &keep, sink),
            1 if self.whole => {
                let mut plain = Vec::new();
                let read = flate2::read::GzDecoder::new(records).take(MAX_DECOMPRESSED).read_to_end(&mut plain);
                match read {
                    Ok(_) => parse_records(&plain, count, &msg, &keep, sink),
                    Err(_) => {
                        sink.error(reason::DECOMPRESS_FAILED);
                        count_only(count, &msg, &keep, sink);
                    }
                }
            }
            _ => {
                // snappy/lz4/zstd (or gzip cut short): the records cannot be
                // read, but how many there are is known from the batch header.
                sink.error(reason::COMPRESSED_BATCH);
                count_only(count, &msg, &keep, sink);
            }
        }
    }

    /// The message of the record at `offset_delta` in this batch.
    fn message(&self, offset_delta: i64) -> Produced {
        let rel_base = if self.fetch_from.is_some() { self.base_offset } else { 0 };
        Produced {
            message: MqMessage {
                destination: self.topic.to_string(),
                partition: Some(self.partition),
                offset: self.fetch_from.map(|_| self.base_offset + offset_delta),
                ..Default::default()
            },
            relative_offset: rel_base + offset_delta,
        }
    }
}

/// Messages of a batch whose records cannot be read: offsets only, no context.
fn count_only(count: i32, msg: &dyn Fn(i64) -> Produced, keep: &dyn Fn(&Produced) -> bool, sink: &mut Sink) {
    for delta in 0..count.clamp(0, MAX_MESSAGES as i32 + 1) {
        let p = msg(delta as i64);
        if keep(&p) {
            sink.push(p);
        }
    }
}

/// The records of an uncompressed batch: keeps the value's size and the trace-context
/// headers; keys, values and other headers are skipped without being copied.
fn parse_records(
    data: &[u8],
    count: i32,
    msg: &dyn Fn(i64) -> Produced,
    keep: &dyn Fn(&Produced) -> bool,
    sink: &mut Sink,
) {
    let mut c = Cur::new(data);
    for _ in 0..count.max(0) {
        let record = (|| -> W<Produced> {
            let len = c.varint()?;
            if len < 0 {
                return Err(Wire::Malformed(reason::INVALID_RECORD_BATCH));
            }
            let mut r = Cur::new(c.take(len as usize)?);
            // Inside a record whose length is known, running short means a bad record.
            parse_record(&mut r, msg).map_err(|e| match e {
                Wire::Truncated => Wire::Malformed(reason::INVALID_RECORD_BATCH),
                other => other,
            })
        })();
        match record {
            Ok(p) => {
                if keep(&p) {
                    sink.push(p);
                }
            }
            // Records cut by the end of the captured bytes: the rest are unknown.
            Err(Wire::Truncated) => return,
            Err(Wire::Malformed(why)) => {
                sink.error(why);
                return;
            }
        }
    }
}

/// The inside of one record (after its length): offset delta, value size, and the
/// `traceparent`/`tracestate` header values.
fn parse_record(r: &mut Cur<'_>, msg: &dyn Fn(i64) -> Produced) -> W<Produced> {
    r.i8()?; // attributes
    r.varint()?; // timestamp delta
    let offset_delta = r.varint()?;
    let mut p = msg(offset_delta);
    r.skip_varbytes()?; // key
    p.message.body_size = r.skip_varbytes()?;
    let headers = r.varint()?;
    for _ in 0..headers.max(0) {
        let klen = r.varint()?;
        let key = r.take(usize::try_from(klen).map_err(|_| Wire::Malformed(reason::INVALID_RECORD_BATCH))?)?;
        let vlen = r.varint()?;
        let value = if vlen >= 0 { Some(r.take(vlen as usize)?) } else { None };
        let Some(value) = value.filter(|v| v.len() <= MAX_CONTEXT_VALUE) else {
            continue;
        };
        if key.eq_ignore_ascii_case(b"traceparent") {
            p.message.traceparent = Some(value.to_vec());
        } else if key.eq_ignore_ascii_case(b"tracestate") && p.message.tracestate.len() < MAX_TRACESTATE {
            p.message.tracestate.push(value.to_vec());
        }
    }
    Ok(p)
}
