//! Fetch (api key 1): the consumer's positions from its requests, the records from the
//! broker's responses (those before the consumer's position are skipped, as the
//! consumer skips them).

use std::collections::HashMap;

use super::metadata::topic_name;
use super::records::{parse_batches, Sink};
use super::{error, error_code_name, failure, reason, Cur, Frame, Timing, Wire, SYSTEM, W};
use crate::protocols::{L7Event, MqKind, MqOperation};

/// Consumer positions remembered per connection (topic, partition).
const MAX_POSITIONS: usize = 4096;

/// A Fetch request: remembers where the consumer reads from.
pub(super) fn on_request(
    c: &mut Cur<'_>,
    frame: &Frame,
    version: i16,
    positions: &mut HashMap<(String, i32), i64>,
    out: &mut Vec<L7Event>,
) {
    let parsed = (|| -> W<()> {
        if version >= 12 {
            c.tagged_fields()?;
        }
        parse_fetch_request(c, version, positions)
    })();
    if let Err(e) = parsed {
        out.push(error(failure(e, frame, reason::MALFORMED_FETCH)));
    }
}

/// The response to a Fetch request: one receive of the records it carries, if any.
pub(super) fn on_response(
    c: &mut Cur<'_>,
    frame: &Frame,
    version: i16,
    positions: &HashMap<(String, i32), i64>,
    timing: Timing,
    out: &mut Vec<L7Event>,
) {
    let mut sink = Sink::default();
    let mut first_error = 0i16;
    let parsed = (|| -> W<()> {
        if version >= 12 {
            c.tagged_fields()?;
        }
        parse_fetch_response(c, version, positions, &mut sink, &mut first_error)
    })();
    if let Err(e) = parsed {
        out.push(error(failure(e, frame, reason::MALFORMED_FETCH)));
    }
    sink.report(out);
    if sink.produced.is_empty() {
        return;
    }
    out.push(L7Event::Messaging(MqOperation {
        system: SYSTEM,
        kind: MqKind::Receive,
        operation_name: "fetch",
        timing,
        messages: sink.produced.into_iter().map(|p| p.message).collect(),
        error: (first_error != 0).then(|| error_code_name(first_error)),
    }));
}

/// Fetch request: remembers the position the consumer asked for per partition (fetch
/// sessions only resend partitions whose position moved, so positions are kept).
fn parse_fetch_request(c: &mut Cur<'_>, v: i16, positions: &mut HashMap<(String, i32), i64>) -> W<()> {
    let flexible = v >= 12;
    if v < 15 {
        c.i32()?; // replica id
    }
    c.i32()?; // max wait
    c.i32()?; // min bytes
    if v >= 3 {
        c.i32()?; // max bytes
    }
    if v >= 4 {
        c.i8()?; // isolation level
    }
    if v >= 7 {
        c.i32()?; // session id
        c.i32()?; // session epoch
    }
    for _ in 0..c.array_len(flexible)? {
        let (topic, _) = topic_name(c, v, flexible, 13)?;
        for _ in 0..c.array_len(flexible)? {
            let partition = c.i32()?;
            if v >= 9 {
                c.i32()?; // current leader epoch
            }
            let fetch_offset = c.i64()?;
            if v >= 12 {
                c.i32()?; // last fetched epoch
            }
            if v >= 5 {
                c.i64()?; // log start offset
            }
            c.i32()?; // partition max bytes
            if flexible {
                c.tagged_fields()?;
            }
            if positions.len() >= MAX_POSITIONS {
                positions.clear();
            }
            positions.insert((topic.clone(), partition), fetch_offset);
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    Ok(())
}

fn parse_fetch_response(
    c: &mut Cur<'_>,
    v: i16,
    positions: &HashMap<(String, i32), i64>,
    sink: &mut Sink,
    first_error: &mut i16,
) -> W<()> {
    let flexible = v >= 12;
    if v >= 1 {
        c.i32()?; // throttle time
    }
    if v >= 7 {
        let e = c.i16()?;
        if *first_error == 0 {
            *first_error = e;
        }
        c.i32()?; // session id
    }
    for _ in 0..c.array_len(flexible)? {
        let (topic, known) = topic_name(c, v, flexible, 13)?;
        for _ in 0..c.array_len(flexible)? {
            let partition = c.i32()?;
            let e = c.i16()?;
            skip_partition_header(c, v, flexible)?;
            let (records, complete) = c.records(flexible)?;
            let before = sink.produced.len();
            let from = positions.get(&(topic.clone(), partition)).copied();
            parse_batches(records, &topic, partition, Some(from.unwrap_or(i64::MIN)), false, sink);
            if !known && sink.produced.len() > before {
                sink.error(reason::TOPIC_ID_UNKNOWN);
            }
            if e != 0 && *first_error == 0 && sink.produced.len() > before {
                *first_error = e;
            }
            if !complete {
                return Err(Wire::Truncated);
            }
            if flexible {
                c.tagged_fields()?;
            }
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    Ok(())
}

/// The fields of a fetched partition between its error code and its records.
fn skip_partition_header(c: &mut Cur<'_>, v: i16, flexible: bool) -> W<()> {
    c.i64()?; // high watermark
    if v >= 4 {
        c.i64()?; // last stable offset
        if v >= 5 {
            c.i64()?; // log start offset
        }
        for _ in 0..c.array_len(flexible)? {
            c.i64()?; // producer id
            c.i64()?; // first offset
            if flexible {
                c.tagged_fields()?;
            }
        }
    }
    if v >= 11 {
        c.i32()?; // preferred read replica
    }
    Ok(())
}
