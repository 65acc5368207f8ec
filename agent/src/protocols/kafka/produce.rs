//! Produce (api key 0): the records a client sends, reported with the offsets and
//! errors of the broker's response (or at once for `acks=0`, which gets no response).

use super::metadata::topic_name;
use super::records::{parse_batches, Produced, Sink};
use super::{error, error_code_name, failure, reason, Cur, Frame, Pending, Timing, Wire, SYSTEM, W};
use crate::protocols::{L7Event, MqKind, MqOperation};

/// A Produce request. Returns the records sent, to be completed by the response; `None`
/// for `acks=0`: no response will come, so the produce is reported now, as sent.
pub(super) fn on_request(
    c: &mut Cur<'_>,
    frame: &Frame,
    version: i16,
    out: &mut Vec<L7Event>,
) -> Option<Vec<Produced>> {
    let mut sink = Sink::default();
    let parsed = (|| -> W<i16> {
        if version >= 9 {
            c.tagged_fields()?;
        }
        parse_produce_request(c, version, &mut sink)
    })();
    let acks = match parsed {
        Ok(acks) => Some(acks),
        Err(e) => {
            out.push(error(failure(e, frame, reason::MALFORMED_PRODUCE)));
            sink.acks
        }
    };
    sink.report(out);
    if acks != Some(0) {
        return Some(sink.produced);
    }
    if !sink.produced.is_empty() {
        out.push(L7Event::Messaging(MqOperation {
            system: SYSTEM,
            kind: MqKind::Publish,
            operation_name: "produce",
            timing: frame.timing,
            messages: sink.produced.into_iter().map(|p| p.message).collect(),
            error: None,
        }));
    }
    None
}

/// The response to a Produce request: the request's records with the offsets the
/// broker gave them, and the first partition error by name.
pub(super) fn on_response(c: &mut Cur<'_>, frame: &Frame, req: Pending, timing: Timing, out: &mut Vec<L7Event>) {
    let mut results = Vec::new();
    let parsed = (|| -> W<()> {
        if req.api_version >= 9 {
            c.tagged_fields()?;
        }
        parse_produce_response(c, req.api_version, &mut results)
    })();
    if let Err(e) = parsed {
        out.push(error(failure(e, frame, reason::MALFORMED_PRODUCE)));
    }
    if req.produced.is_empty() {
        return;
    }
    let mut error_name = None;
    let messages = req
        .produced
        .into_iter()
        .map(|p| {
            let mut m = p.message;
            let result = results.iter().find(|r| r.topic == m.destination && Some(r.partition) == m.partition);
            if let Some(r) = result {
                if r.error_code != 0 {
                    error_name.get_or_insert_with(|| error_code_name(r.error_code));
                } else if r.base_offset >= 0 {
                    m.offset = Some(r.base_offset + p.relative_offset);
                }
            }
            m
        })
        .collect();
    out.push(L7Event::Messaging(MqOperation {
        system: SYSTEM,
        kind: MqKind::Publish,
        operation_name: "produce",
        timing,
        messages,
        error: error_name,
    }));
}

#[derive(Debug)]
struct PartitionResult {
    topic: String,
    partition: i32,
    error_code: i16,
    base_offset: i64,
}

/// Produce request v0-v12 (v13 names topics by id).
fn parse_produce_request(c: &mut Cur<'_>, v: i16, sink: &mut Sink) -> W<i16> {
    let flexible = v >= 9;
    if v >= 3 {
        c.string(flexible)?; // transactional id
    }
    let acks = c.i16()?;
    sink.acks = Some(acks);
    c.i32()?; // timeout
    for _ in 0..c.array_len(flexible)? {
        let (topic, known) = topic_name(c, v, flexible, 13)?;
        if !known {
            sink.error(reason::TOPIC_ID_UNKNOWN);
        }
        for _ in 0..c.array_len(flexible)? {
            let partition = c.i32()?;
            let (records, complete) = c.records(flexible)?;
            parse_batches(records, &topic, partition, None, !complete, sink);
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
    Ok(acks)
}

fn parse_produce_response(c: &mut Cur<'_>, v: i16, results: &mut Vec<PartitionResult>) -> W<()> {
    let flexible = v >= 9;
    for _ in 0..c.array_len(flexible)? {
        let (topic, _) = topic_name(c, v, flexible, 13)?;
        for _ in 0..c.array_len(flexible)? {
            let partition = c.i32()?;
            let error_code = c.i16()?;
            let base_offset = c.i64()?;
            results.push(PartitionResult { topic: topic.clone(), partition, error_code, base_offset });
            if v >= 2 {
                c.i64()?; // log append time
            }
            if v >= 5 {
                c.i64()?; // log start offset
            }
            if v >= 8 {
                for _ in 0..c.array_len(flexible)? {
                    c.i32()?;
                    c.string(flexible)?;
                    if flexible {
                        c.tagged_fields()?;
                    }
                }
                c.string(flexible)?;
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
