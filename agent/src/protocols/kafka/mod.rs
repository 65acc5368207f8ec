//! Kafka: Produce and Fetch out of a client's connection to a broker.
//!
//! Kafka frames every request and response with an int32 size, so each direction is
//! framed by size alone and a hole inside a frame (the per-syscall capture cap, a lost
//! record) only truncates that frame: the parser reads what it has of it and the framing
//! goes on. A hole over a size field desynchronizes the direction until a segment starts
//! with something that looks like a frame again (a plausible request header upstream, a
//! known correlation id downstream).
//!
//! Responses do not say which API they answer, so each request's api key and version is
//! remembered under its correlation id (bounded) until its response comes. Of all APIs
//! only Produce (0) and Fetch (1) are parsed; every other frame is skipped by its size.
//! Produce requests carry the records (record batch v2) and their responses the offsets
//! and errors, so a produce is reported when its response arrives (or at once for
//! `acks=0`, which has no response). Fetch requests carry the consumer's positions and
//! Fetch responses the records.
//!
//! Privacy: record keys, values and headers are skipped in place; only the
//! `traceparent`/`tracestate` header values and the value's size are kept.
//!
//! Frames are buffered up to [`MAX_FRAME_BUFFER`] bytes; the rest of a bigger frame is
//! skipped and the frame is parsed as far as its buffered prefix goes (Kafka itself cuts
//! the last batch of a fetch response short, so a partial trailing batch is normal and
//! ignored, as the consumer ignores it).
//!
//! The parts: `framer` cuts each direction into frames, `wire` reads Kafka's
//! primitive types, `produce`, `fetch` and `metadata` read the three APIs that
//! matter, `records` reads record batches, `errors` names what went wrong.

use std::collections::{HashMap, VecDeque};

use hoptrace_common::{Direction, Role};

use super::{L7Event, Protocol, Timing};
use crate::capture::stream::Segment;

mod errors;
mod fetch;
mod framer;
mod metadata;
mod produce;
mod records;
mod wire;

pub use errors::{error_code_name, reason};
use framer::{Frame, Framer};
use records::Produced;
use wire::{Cur, Wire, W};

const PROTOCOL: &str = "kafka";
const SYSTEM: &str = "kafka";
/// Bytes of one frame kept for parsing; the rest of a bigger frame is skipped.
pub const MAX_FRAME_BUFFER: usize = 1024 * 1024;
/// Largest frame size believed (the broker's default `socket.request.max.bytes`).
pub const MAX_FRAME_SIZE: u32 = 100 * 1024 * 1024;
/// Requests waiting for their response; beyond this the oldest is forgotten.
pub const MAX_IN_FLIGHT: usize = 64;
/// Messages kept per operation (the rest are counted, not reported).
pub const MAX_MESSAGES: usize = 1024;
/// Newest API key and version believed by detection (Kafka 4.x stays well below).
const MAX_API_KEY: i16 = 100;
const MAX_API_VERSION: i16 = 30;
/// Longest client id believed by detection.
const MAX_CLIENT_ID: i16 = 1024;

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const METADATA: i16 = 3;

/// Requests a client opens a connection with: ApiVersions (every client since Kafka
/// 0.10 asks first), or Metadata / SaslHandshake from clients told not to ask.
const OPENING_API_KEYS: [i16; 3] = [18, 3, 17];

/// Kafka detection: the client side of a connection whose first outgoing bytes are a
/// plausible request header of an opening request ([`OPENING_API_KEYS`]); other binary
/// protocols whose first bytes happen to fit the header's ranges (a MongoDB message with
/// a small request id) are not claimed. The broker's side is never claimed (its
/// connections are not traced as messaging), and neither are connections the agent
/// joined mid-flight.
pub fn detect(role: Role, direction: Direction, first_bytes: &[u8]) -> Option<Box<dyn Protocol>> {
    if role != Role::Client || direction != Direction::Egress || first_bytes.len() < 6 {
        return None;
    }
    let api_key = i16::from_be_bytes([first_bytes[4], first_bytes[5]]);
    (OPENING_API_KEYS.contains(&api_key) && plausible_request(first_bytes))
        .then(|| Box::new(Kafka::default()) as Box<dyn Protocol>)
}

/// A request header (v1/v2: size, api key, api version, correlation id, client id) in
/// known ranges with a printable client id that fits the frame. Text protocols never
/// pass: their first byte alone makes a size beyond [`MAX_FRAME_SIZE`].
fn plausible_request(b: &[u8]) -> bool {
    if b.len() < 14 {
        return false;
    }
    let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let api_key = i16::from_be_bytes([b[4], b[5]]);
    let api_version = i16::from_be_bytes([b[6], b[7]]);
    let correlation_id = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let client_id_len = i16::from_be_bytes([b[12], b[13]]);
    if !(10..=MAX_FRAME_SIZE).contains(&size)
        || !(0..=MAX_API_KEY).contains(&api_key)
        || !(0..=MAX_API_VERSION).contains(&api_version)
        || correlation_id < 0
        || !(-1..=MAX_CLIENT_ID).contains(&client_id_len)
    {
        return false;
    }
    let len = client_id_len.max(0) as usize;
    if 10 + len > size as usize || b.len() < 14 + len {
        return false;
    }
    b[14..14 + len].iter().all(|c| (0x20..0x7f).contains(c))
}

fn plausible_request_payload(b: &[u8]) -> bool {
    plausible_request(b)
}

fn error(reason: &'static str) -> L7Event {
    L7Event::ParseError { protocol: PROTOCOL, reason }
}

/// The label of a failed parse: a frame that ran short because the capture cut it says
/// why it was cut; one that ran short on its own, or could not be Kafka, is `malformed`.
fn failure(e: Wire, frame: &Frame, malformed: &'static str) -> &'static str {
    match e {
        Wire::Truncated => frame.truncated.unwrap_or(malformed),
        Wire::Malformed(why) => why,
    }
}

/// A request waiting for its response.
struct Pending {
    correlation_id: i32,
    api_key: i16,
    api_version: i16,
    timing: Timing,
    /// Produce only: the records sent, with their offset relative to the batch's base.
    produced: Vec<Produced>,
}

/// The Kafka parser of one client connection.
#[derive(Default)]
pub struct Kafka {
    requests: Framer,
    responses: Framer,
    pending: VecDeque<Pending>,
    /// The consumer's fetch position per (topic, partition), from its Fetch requests:
    /// a fetch response may start with records before it, which the consumer skips.
    positions: HashMap<(String, i32), i64>,
    closed: bool,
}

impl Protocol for Kafka {
    fn name(&self) -> &'static str {
        PROTOCOL
    }

    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        if self.closed {
            return;
        }
        let mut frames = Vec::new();
        for seg in segments {
            match direction {
                Direction::Egress => self.requests.push(seg, &plausible_request_payload, &mut frames, out),
                Direction::Ingress => {
                    let pending = &self.pending;
                    let known = |b: &[u8]| {
                        b.len() >= 8 && {
                            let id = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                            pending.iter().any(|p| p.correlation_id == id)
                        }
                    };
                    self.responses.push(seg, &known, &mut frames, out);
                }
            }
            for frame in frames.drain(..) {
                match direction {
                    Direction::Egress => self.on_request(frame, out),
                    Direction::Ingress => self.on_response(frame, out),
                }
            }
        }
    }

    fn close(&mut self, out: &mut Vec<L7Event>) {
        if self.closed {
            return;
        }
        self.closed = true;
        for p in self.pending.drain(..) {
            if p.api_key == PRODUCE || p.api_key == FETCH {
                out.push(error(reason::CLOSED_BEFORE_RESPONSE));
            }
        }
    }
}

/// The request header (v1/v2) at the start of a request frame: api key, api version,
/// correlation id (the client id is skipped), `None` when it is not a plausible one.
fn request_header(c: &mut Cur<'_>) -> Option<(i16, i16, i32)> {
    let header = (|| -> W<(i16, i16, i32)> {
        let api_key = c.i16()?;
        let api_version = c.i16()?;
        let correlation_id = c.i32()?;
        c.string(false)?; // client id
        Ok((api_key, api_version, correlation_id))
    })();
    let (api_key, api_version, correlation_id) = header.ok()?;
    ((0..=MAX_API_KEY).contains(&api_key) && (0..=MAX_API_VERSION).contains(&api_version)).then_some((
        api_key,
        api_version,
        correlation_id,
    ))
}

impl Kafka {
    fn on_request(&mut self, frame: Frame, out: &mut Vec<L7Event>) {
        let mut c = Cur::new(&frame.bytes);
        let Some((api_key, api_version, correlation_id)) = request_header(&mut c) else {
            out.push(error(reason::INVALID_REQUEST_HEADER));
            return;
        };
        let produced = match api_key {
            PRODUCE => match produce::on_request(&mut c, &frame, api_version, out) {
                Some(produced) => produced,
                // acks=0: no response will come, the produce was reported as sent.
                None => return,
            },
            FETCH => {
                fetch::on_request(&mut c, &frame, api_version, &mut self.positions, out);
                Vec::new()
            }
            _ => Vec::new(),
        };
        if self.pending.len() >= MAX_IN_FLIGHT {
            self.pending.pop_front();
            out.push(error(reason::TOO_MANY_IN_FLIGHT));
        }
        self.pending.push_back(Pending { correlation_id, api_key, api_version, timing: frame.timing, produced });
    }

    fn on_response(&mut self, frame: Frame, out: &mut Vec<L7Event>) {
        let mut c = Cur::new(&frame.bytes);
        let Some(req) = self.answered(&mut c, out) else {
            out.push(error(reason::UNMATCHED_RESPONSE));
            return;
        };
        let timing = Timing { last_exit_ns: frame.timing.last_exit_ns, ..req.timing };
        match req.api_key {
            PRODUCE => produce::on_response(&mut c, &frame, req, timing, out),
            FETCH => fetch::on_response(&mut c, &frame, req.api_version, &self.positions, timing, out),
            METADATA if req.api_version >= 10 => metadata::on_response(&mut c, req.api_version, out),
            _ => {}
        }
    }

    /// The request a response answers, by the correlation id it starts with. Responses
    /// come back in request order: older unanswered requests are lost (and counted).
    fn answered(&mut self, c: &mut Cur<'_>, out: &mut Vec<L7Event>) -> Option<Pending> {
        let correlation_id = c.i32().ok()?;
        let idx = self.pending.iter().position(|p| p.correlation_id == correlation_id)?;
        for _ in 0..idx {
            self.pending.pop_front();
            out.push(error(reason::RESPONSE_MISSING));
        }
        self.pending.pop_front()
    }
}

#[cfg(test)]
mod tests;
