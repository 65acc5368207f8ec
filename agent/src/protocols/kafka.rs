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

use std::collections::{HashMap, VecDeque};
use std::io::Read;

use hoptrace_common::{Direction, Role};

use super::{L7Event, MqKind, MqMessage, MqOperation, Protocol, Timing};
use crate::capture::stream::Segment;

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
/// Decompressed size of one gzip batch that is looked into.
const MAX_DECOMPRESSED: u64 = 4 * 1024 * 1024;
/// Consumer positions remembered per connection (topic, partition).
const MAX_POSITIONS: usize = 4096;
/// Trace-context header values longer than this are not trace context.
const MAX_CONTEXT_VALUE: usize = 512;
const MAX_TRACESTATE: usize = 8;
/// Newest API key and version believed by detection (Kafka 4.x stays well below).
const MAX_API_KEY: i16 = 100;
const MAX_API_VERSION: i16 = 30;
/// Longest client id believed by detection.
const MAX_CLIENT_ID: i16 = 1024;

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const METADATA: i16 = 3;
/// Topic ids remembered (agent-wide).
const MAX_TOPIC_IDS: usize = 4096;

/// Topic names by topic id, learned from Metadata responses (v10+). Fetch v13+ and
/// Produce v13+ name topics only by id, and a client often asks for metadata on another
/// connection than the one it fetches on (librdkafka's bootstrap connection), so the map
/// is shared by every Kafka connection of the agent. Ids are random 128-bit UUIDs, so
/// clusters do not collide; bounded by clearing when full.
static TOPIC_IDS: std::sync::LazyLock<std::sync::Mutex<HashMap<[u8; 16], String>>> =
    std::sync::LazyLock::new(Default::default);

fn remember_topic_id(id: [u8; 16], name: String) {
    let mut ids = TOPIC_IDS.lock().unwrap_or_else(|e| e.into_inner());
    if ids.len() >= MAX_TOPIC_IDS && !ids.contains_key(&id) {
        ids.clear();
    }
    ids.insert(id, name);
}

fn topic_by_id(id: [u8; 16]) -> Option<String> {
    TOPIC_IDS.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
}

/// Stable labels of [`L7Event::ParseError`]s from this parser.
pub mod reason {
    pub const INVALID_FRAME_SIZE: &str = "invalid_frame_size";
    pub const INVALID_REQUEST_HEADER: &str = "invalid_request_header";
    pub const GAP_IN_FRAME: &str = "gap_in_frame";
    pub const GAP_BETWEEN_FRAMES: &str = "gap_between_frames";
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const MALFORMED_PRODUCE: &str = "malformed_produce";
    pub const MALFORMED_FETCH: &str = "malformed_fetch";
    pub const INVALID_RECORD_BATCH: &str = "invalid_record_batch";
    pub const LEGACY_MESSAGE_FORMAT: &str = "legacy_message_format";
    pub const COMPRESSED_BATCH: &str = "compressed_batch";
    pub const DECOMPRESS_FAILED: &str = "decompress_failed";
    pub const TOO_MANY_MESSAGES: &str = "too_many_messages";
    pub const TOO_MANY_IN_FLIGHT: &str = "too_many_in_flight";
    pub const UNMATCHED_RESPONSE: &str = "unmatched_response";
    pub const RESPONSE_MISSING: &str = "response_missing";
    pub const CLOSED_BEFORE_RESPONSE: &str = "closed_before_response";
    pub const TOPIC_ID_UNKNOWN: &str = "topic_id_unknown";

    /// Every label, so metrics can pre-register them.
    pub const ALL: [&str; 17] = [
        INVALID_FRAME_SIZE,
        INVALID_REQUEST_HEADER,
        GAP_IN_FRAME,
        GAP_BETWEEN_FRAMES,
        FRAME_TOO_LARGE,
        MALFORMED_PRODUCE,
        MALFORMED_FETCH,
        INVALID_RECORD_BATCH,
        LEGACY_MESSAGE_FORMAT,
        COMPRESSED_BATCH,
        DECOMPRESS_FAILED,
        TOO_MANY_MESSAGES,
        TOO_MANY_IN_FLIGHT,
        UNMATCHED_RESPONSE,
        RESPONSE_MISSING,
        CLOSED_BEFORE_RESPONSE,
        TOPIC_ID_UNKNOWN,
    ];
}

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

/// One frame as the framer delivers it: the payload after the size field (or its
/// buffered prefix), and the syscalls that carried its first and last byte.
struct Frame {
    bytes: Vec<u8>,
    /// Some of the payload is missing, and why: [`reason::GAP_IN_FRAME`] or
    /// [`reason::FRAME_TOO_LARGE`] (reported when the parse runs short because of it).
    truncated: Option<&'static str>,
    timing: Timing,
}

enum Phase {
    /// Reading the 4-byte size of the next frame.
    Size {
        got: [u8; 4],
        n: usize,
    },
    Body {
        bytes: Vec<u8>,
        remaining: u64,
        truncated: Option<&'static str>,
    },
    /// Lost track of frame boundaries; waiting for a segment that starts a frame.
    Desync,
}

/// Size framing of one direction.
struct Framer {
    phase: Phase,
    timing: Timing,
}

impl Default for Framer {
    fn default() -> Self {
        Framer { phase: Phase::Size { got: [0; 4], n: 0 }, timing: Timing::default() }
    }
}

impl Framer {
    /// Consumes one segment; complete frames go to `frames`. `starts_frame` judges
    /// whether a data segment may start a frame after a desync.
    fn push(
        &mut self,
        seg: &Segment,
        starts_frame: &dyn Fn(&[u8]) -> bool,
        frames: &mut Vec<Frame>,
        out: &mut Vec<L7Event>,
    ) {
        match seg {
            Segment::Gap { len, .. } => match &mut self.phase {
                Phase::Desync => {}
                Phase::Size { n: 0, .. } => self.desync(reason::GAP_BETWEEN_FRAMES, out),
                Phase::Size { .. } => self.desync(reason::GAP_IN_FRAME, out),
                Phase::Body { remaining, truncated, .. } => {
                    truncated.get_or_insert(reason::GAP_IN_FRAME);
                    if *len < *remaining {
                        *remaining -= len;
                    } else {
                        let beyond = *len - *remaining;
                        *remaining = 0;
                        self.finish(frames);
                        if beyond > 0 {
                            self.desync(reason::GAP_IN_FRAME, out);
                        }
                    }
                }
            },
            Segment::Data { ts_enter_ns, ts_ns, tid, bytes, .. } => {
                let mut pos = 0;
                while pos < bytes.len() {
                    let rest = &bytes[pos..];
                    match &mut self.phase {
                        Phase::Desync => {
                            if pos == 0 && starts_frame(rest) {
                                self.phase = Phase::Size { got: [0; 4], n: 0 };
                            } else {
                                return;
                            }
                        }
                        Phase::Size { got, n } => {
                            if *n == 0 {
                                self.timing = Timing {
                                    first_tid: *tid,
                                    first_enter_ns: *ts_enter_ns,
                                    first_exit_ns: *ts_ns,
                                    last_exit_ns: *ts_ns,
                                };
                            }
                            let take = (4 - *n).min(rest.len());
                            got[*n..*n + take].copy_from_slice(&rest[..take]);
                            *n += take;
                            pos += take;
                            if *n == 4 {
                                let size = u32::from_be_bytes(*got);
                                if !(4..=MAX_FRAME_SIZE).contains(&size) {
                                    self.desync(reason::INVALID_FRAME_SIZE, out);
                                    return;
                                }
                                self.phase = Phase::Body {
                                    bytes: Vec::with_capacity((size as usize).min(64 * 1024)),
                                    remaining: size as u64,
                                    truncated: None,
                                };
                            }
                        }
                        Phase::Body { bytes: buf, remaining, truncated } => {
                            let take = (*remaining).min(rest.len() as u64) as usize;
                            if truncated.is_none() {
                                let room = MAX_FRAME_BUFFER - buf.len();
                                if take > room {
                                    *truncated = Some(reason::FRAME_TOO_LARGE);
                                }
                                buf.extend_from_slice(&rest[..take.min(room)]);
                            }
                            *remaining -= take as u64;
                            pos += take;
                            self.timing.last_exit_ns = *ts_ns;
                            if *remaining == 0 {
                                self.finish(frames);
                            }
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self, frames: &mut Vec<Frame>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Size { got: [0; 4], n: 0 });
        if let Phase::Body { bytes, truncated, .. } = phase {
            frames.push(Frame { bytes, truncated, timing: self.timing });
        }
    }

    fn desync(&mut self, why: &'static str, out: &mut Vec<L7Event>) {
        out.push(error(why));
        self.phase = Phase::Desync;
    }
}

fn error(reason: &'static str) -> L7Event {
    L7Event::ParseError { protocol: PROTOCOL, reason }
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

struct Produced {
    message: MqMessage,
    relative_offset: i64,
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

fn plausible_request_payload(b: &[u8]) -> bool {
    plausible_request(b)
}

impl Kafka {
    fn on_request(&mut self, frame: Frame, out: &mut Vec<L7Event>) {
        let mut c = Cur::new(&frame.bytes);
        let header = (|| -> W<(i16, i16, i32)> {
            let api_key = c.i16()?;
            let api_version = c.i16()?;
            let correlation_id = c.i32()?;
            c.string(false)?; // client id
            Ok((api_key, api_version, correlation_id))
        })();
        let Ok((api_key, api_version, correlation_id)) = header else {
            out.push(error(reason::INVALID_REQUEST_HEADER));
            return;
        };
        if !(0..=MAX_API_KEY).contains(&api_key) || !(0..=MAX_API_VERSION).contains(&api_version) {
            out.push(error(reason::INVALID_REQUEST_HEADER));
            return;
        }
        let mut produced = Vec::new();
        match api_key {
            PRODUCE => {
                let flexible = api_version >= 9;
                let mut sink = Sink::default();
                let parsed = (|| -> W<i16> {
                    if flexible {
                        c.tagged_fields()?;
                    }
                    parse_produce_request(&mut c, api_version, &mut sink)
                })();
                let acks = match parsed {
                    Ok(acks) => Some(acks),
                    Err(Wire::Truncated) => {
                        out.push(error(frame.truncated.unwrap_or(reason::MALFORMED_PRODUCE)));
                        sink.acks
                    }
                    Err(Wire::Malformed(why)) => {
                        out.push(error(why));
                        sink.acks
                    }
                };
                sink.report(out);
                produced = sink.produced;
                if acks == Some(0) {
                    // No response will come: the produce is complete as sent.
                    if !produced.is_empty() {
                        out.push(L7Event::Messaging(MqOperation {
                            system: SYSTEM,
                            kind: MqKind::Publish,
                            operation_name: "produce",
                            timing: frame.timing,
                            messages: produced.into_iter().map(|p| p.message).collect(),
                            error: None,
                        }));
                    }
                    return;
                }
            }
            FETCH => {
                let flexible = api_version >= 12;
                let positions = &mut self.positions;
                let parsed = (|| -> W<()> {
                    if flexible {
                        c.tagged_fields()?;
                    }
                    parse_fetch_request(&mut c, api_version, positions)
                })();
                match parsed {
                    Ok(()) => {}
                    Err(Wire::Truncated) => out.push(error(frame.truncated.unwrap_or(reason::MALFORMED_FETCH))),
                    Err(Wire::Malformed(why)) => out.push(error(why)),
                }
            }
            _ => {}
        }
        if self.pending.len() >= MAX_IN_FLIGHT {
            self.pending.pop_front();
            out.push(error(reason::TOO_MANY_IN_FLIGHT));
        }
        self.pending.push_back(Pending { correlation_id, api_key, api_version, timing: frame.timing, produced });
    }

    fn on_response(&mut self, frame: Frame, out: &mut Vec<L7Event>) {
        let mut c = Cur::new(&frame.bytes);
        let Ok(correlation_id) = c.i32() else {
            out.push(error(reason::UNMATCHED_RESPONSE));
            return;
        };
        // Responses come back in request order: older unanswered requests are lost.
        let Some(idx) = self.pending.iter().position(|p| p.correlation_id == correlation_id) else {
            out.push(error(reason::UNMATCHED_RESPONSE));
            return;
        };
        for _ in 0..idx {
            self.pending.pop_front();
            out.push(error(reason::RESPONSE_MISSING));
        }
        let req = self.pending.pop_front().expect("found above");
        let timing = Timing { last_exit_ns: frame.timing.last_exit_ns, ..req.timing };
        match req.api_key {
            PRODUCE => {
                let mut results = Vec::new();
                let parsed = (|| -> W<()> {
                    if req.api_version >= 9 {
                        c.tagged_fields()?;
                    }
                    parse_produce_response(&mut c, req.api_version, &mut results)
                })();
                if let Err(e) = parsed {
                    out.push(error(match e {
                        Wire::Truncated => frame.truncated.unwrap_or(reason::MALFORMED_PRODUCE),
                        Wire::Malformed(why) => why,
                    }));
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
                        let result =
                            results.iter().find(|r| r.topic == m.destination && Some(r.partition) == m.partition);
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
            FETCH => {
                let mut sink = Sink::default();
                let mut first_error = 0i16;
                let parsed = (|| -> W<()> {
                    if req.api_version >= 12 {
                        c.tagged_fields()?;
                    }
                    parse_fetch_response(&mut c, req.api_version, &self.positions, &mut sink, &mut first_error)
                })();
                if let Err(e) = parsed {
                    out.push(error(match e {
                        Wire::Truncated => frame.truncated.unwrap_or(reason::MALFORMED_FETCH),
                        Wire::Malformed(why) => why,
                    }));
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
            METADATA if req.api_version >= 10 => {
                let parsed = (|| -> W<()> {
                    if req.api_version >= 9 {
                        c.tagged_fields()?;
                    }
                    parse_metadata_response(&mut c, req.api_version)
                })();
                // Only the topic ids matter here; a metadata response cut short by the
                // capture still taught the ids before the cut.
                if let Err(Wire::Malformed(why)) = parsed {
                    out.push(error(why));
                }
            }
            _ => {}
        }
    }
}

/// Messages found in one request or response, with the problems met on the way.
#[derive(Default)]
struct Sink {
    produced: Vec<Produced>,
    acks: Option<i16>,
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
    fn error(&mut self, why: &'static str) {
        if !self.errors.contains(&why) {
            self.errors.push(why);
        }
    }
    fn report(&mut self, out: &mut Vec<L7Event>) {
        out.extend(self.errors.drain(..).map(error));
    }
}

#[derive(Debug)]
struct PartitionResult {
    topic: String,
    partition: i32,
    error_code: i16,
    base_offset: i64,
}

/// A topic field: its name, or from v`ids_from` on a topic id (KIP-516) resolved
/// through [`TOPIC_IDS`]; an id never seen in metadata is reported as its hex form.
fn topic_name(c: &mut Cur<'_>, version: i16, flexible: bool, ids_from: i16) -> W<(String, bool)> {
    if version >= ids_from {
        let id: [u8; 16] = c.arr()?;
        Ok(match topic_by_id(id) {
            Some(name) => (name, true),
            None => (id.iter().map(|b| format!("{b:02x}")).collect(), false),
        })
    } else {
        Ok((String::from_utf8_lossy(c.string(flexible)?.unwrap_or_default()).into_owned(), true))
    }
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

/// Metadata response: only the topic name ↔ id pairs (v10+) are kept.
fn parse_metadata_response(c: &mut Cur<'_>, v: i16) -> W<()> {
    let flexible = v >= 9;
    if v >= 3 {
        c.i32()?; // throttle time
    }
    for _ in 0..c.array_len(flexible)? {
        c.i32()?; // node id
        c.string(flexible)?; // host
        c.i32()?; // port
        if v >= 1 {
            c.string(flexible)?; // rack
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    if v >= 2 {
        c.string(flexible)?; // cluster id
    }
    if v >= 1 {
        c.i32()?; // controller id
    }
    for _ in 0..c.array_len(flexible)? {
        c.i16()?; // error code
        let name = c.string(flexible)?.map(|n| String::from_utf8_lossy(n).into_owned());
        if v >= 10 {
            let id: [u8; 16] = c.arr()?;
            if let Some(name) = name.filter(|_| id != [0; 16]) {
                remember_topic_id(id, name);
            }
        }
        if v >= 1 {
            c.i8()?; // is internal
        }
        for _ in 0..c.array_len(flexible)? {
            c.i16()?; // error code
            c.i32()?; // partition index
            c.i32()?; // leader id
            if v >= 7 {
                c.i32()?; // leader epoch
            }
            let node_lists = if v >= 5 { 3 } else { 2 };
            for _ in 0..node_lists {
                let n = c.array_len(flexible)?;
                c.take(n.checked_mul(4).ok_or(Wire::Malformed("invalid_length"))?)?;
            }
            if flexible {
                c.tagged_fields()?;
            }
        }
        if v >= 8 {
            c.i32()?; // topic authorized operations
        }
        if flexible {
            c.tagged_fields()?;
        }
    }
    Ok(())
}

/// Size of a record batch v2 header, up to and including the record count.
const BATCH_HEADER: usize = 61;

/// Record batches (magic 2) of one partition. `fetch_from`: `Some(position)` for a
/// fetch response (records before the consumer's position are skipped as the consumer
/// skips them; a trailing partial batch is the broker's cut and ignored), `None` for a
/// produce request (offsets are relative to the batch, the broker assigns them).
/// `cut`: the bytes end early because the capture did (keep the records that are whole).
fn parse_batches(mut data: &[u8], topic: &str, partition: i32, fetch_from: Option<i64>, cut: bool, sink: &mut Sink) {
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
        let batch = &data[..end.min(data.len())];
        let magic = batch[16] as i8;
        if magic != 2 {
            sink.error(reason::LEGACY_MESSAGE_FORMAT);
        } else {
            let attributes = i16::from_be_bytes([batch[21], batch[22]]);
            let count = i32::from_be_bytes(batch[57..61].try_into().expect("4 bytes"));
            let is_control = attributes & 0x20 != 0;
            if !is_control {
                let rel_base = if fetch_from.is_some() { base_offset } else { 0 };
                let records = &batch[BATCH_HEADER..];
                let msg = |offset_delta: i64| Produced {
                    message: MqMessage {
                        destination: topic.to_string(),
                        partition: Some(partition),
                        offset: fetch_from.map(|_| base_offset + offset_delta),
                        ..Default::default()
                    },
                    relative_offset: rel_base + offset_delta,
                };
                let keep = |p: &Produced| match fetch_from {
                    Some(from) => p.message.offset.is_some_and(|o| o >= from),
                    None => true,
                };
                match attributes & 0x7 {
                    0 => parse_records(records, count, &msg, &keep, sink),
                    1 if whole => {
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
        }
        if !whole {
            return;
        }
        data = &data[end..];
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
            let inner = (|| -> W<Produced> {
                r.i8()?; // attributes
                r.varint()?; // timestamp delta
                let offset_delta = r.varint()?;
                let mut p = msg(offset_delta);
                r.skip_varbytes()?; // key
                p.message.body_size = r.skip_varbytes()?;
                let headers = r.varint()?;
                for _ in 0..headers.max(0) {
                    let klen = r.varint()?;
                    let key =
                        r.take(usize::try_from(klen).map_err(|_| Wire::Malformed(reason::INVALID_RECORD_BATCH))?)?;
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
            })();
            // Inside a record whose length is known, running short means a bad record.
            inner.map_err(|e| match e {
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

/// Why a read failed: the bytes ended (a cut frame) or could not be Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Truncated,
    Malformed(&'static str),
}

type W<T> = Result<T, Wire>;

/// Big-endian reader over one buffered frame, with Kafka's primitive types.
struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cur<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cur { b, p: 0 }
    }
    fn take(&mut self, n: usize) -> W<&'a [u8]> {
        if self.b.len() - self.p < n {
            self.p = self.b.len();
            return Err(Wire::Truncated);
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> W<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn i8(&mut self) -> W<i8> {
        Ok(i8::from_be_bytes(self.arr()?))
    }
    fn i16(&mut self) -> W<i16> {
        Ok(i16::from_be_bytes(self.arr()?))
    }
    fn i32(&mut self) -> W<i32> {
        Ok(i32::from_be_bytes(self.arr()?))
    }
    fn i64(&mut self) -> W<i64> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    fn uvarint(&mut self) -> W<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.take(1)?[0];
            v |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Wire::Malformed("invalid_varint"))
    }
    /// Zigzag varint (record fields).
    fn varint(&mut self) -> W<i64> {
        let u = self.uvarint()?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }
    /// A varint-length byte field (record key/value), skipped; its length (0 for null).
    fn skip_varbytes(&mut self) -> W<u64> {
        let len = self.varint()?;
        if len > 0 {
            self.take(len as usize)?;
        }
        Ok(len.max(0) as u64)
    }
    fn length(&mut self, compact: bool) -> W<Option<usize>> {
        if compact {
            let n = self.uvarint()?;
            if n == 0 {
                return Ok(None);
            }
            usize::try_from(n - 1).map(Some).map_err(|_| Wire::Malformed("invalid_length"))
        } else {
            let n = self.i32()?;
            if n < -1 {
                return Err(Wire::Malformed("invalid_length"));
            }
            Ok(usize::try_from(n).ok())
        }
    }
    fn string(&mut self, compact: bool) -> W<Option<&'a [u8]>> {
        let len = if compact {
            self.length(true)?
        } else {
            let n = self.i16()?;
            if n < -1 {
                return Err(Wire::Malformed("invalid_length"));
            }
            usize::try_from(n).ok()
        };
        len.map(|n| self.take(n)).transpose()
    }
    fn array_len(&mut self, compact: bool) -> W<usize> {
        let n = self.length(compact)?.unwrap_or(0);
        // Every element takes at least one byte: a bigger count is not Kafka (and must
        // not drive a long loop), unless the frame was cut, which ends the loop anyway.
        if n > MAX_FRAME_SIZE as usize {
            return Err(Wire::Malformed("invalid_length"));
        }
        Ok(n)
    }
    /// A RECORDS field: its bytes as far as they are here, and whether that is all.
    fn records(&mut self, compact: bool) -> W<(&'a [u8], bool)> {
        let len = self.length(compact)?.unwrap_or(0);
        let have = len.min(self.b.len() - self.p);
        let s = &self.b[self.p..self.p + have];
        self.p += have;
        Ok((s, have == len))
    }
    fn tagged_fields(&mut self) -> W<()> {
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(usize::try_from(size).map_err(|_| Wire::Malformed("invalid_length"))?)?;
        }
        Ok(())
    }
}

/// Kafka's error code names (the `errors` table of the protocol), stable labels for
/// `error.type`.
pub fn error_code_name(code: i16) -> String {
    const NAMES: [&str; 83] = [
        "NONE",
        "OFFSET_OUT_OF_RANGE",
        "CORRUPT_MESSAGE",
        "UNKNOWN_TOPIC_OR_PARTITION",
        "INVALID_FETCH_SIZE",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_OR_FOLLOWER",
        "REQUEST_TIMED_OUT",
        "BROKER_NOT_AVAILABLE",
        "REPLICA_NOT_AVAILABLE",
        "MESSAGE_TOO_LARGE",
        "STALE_CONTROLLER_EPOCH",
        "OFFSET_METADATA_TOO_LARGE",
        "NETWORK_EXCEPTION",
        "COORDINATOR_LOAD_IN_PROGRESS",
        "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR",
        "INVALID_TOPIC_EXCEPTION",
        "RECORD_LIST_TOO_LARGE",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "INVALID_REQUIRED_ACKS",
        "ILLEGAL_GENERATION",
        "INCONSISTENT_GROUP_PROTOCOL",
        "INVALID_GROUP_ID",
        "UNKNOWN_MEMBER_ID",
        "INVALID_SESSION_TIMEOUT",
        "REBALANCE_IN_PROGRESS",
        "INVALID_COMMIT_OFFSET_SIZE",
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "INVALID_TIMESTAMP",
        "UNSUPPORTED_SASL_MECHANISM",
        "ILLEGAL_SASL_STATE",
        "UNSUPPORTED_VERSION",
        "TOPIC_ALREADY_EXISTS",
        "INVALID_PARTITIONS",
        "INVALID_REPLICATION_FACTOR",
        "INVALID_REPLICA_ASSIGNMENT",
        "INVALID_CONFIG",
        "NOT_CONTROLLER",
        "INVALID_REQUEST",
        "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        "POLICY_VIOLATION",
        "OUT_OF_ORDER_SEQUENCE_NUMBER",
        "DUPLICATE_SEQUENCE_NUMBER",
        "INVALID_PRODUCER_EPOCH",
        "INVALID_TXN_STATE",
        "INVALID_PRODUCER_ID_MAPPING",
        "INVALID_TRANSACTION_TIMEOUT",
        "CONCURRENT_TRANSACTIONS",
        "TRANSACTION_COORDINATOR_FENCED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "SECURITY_DISABLED",
        "OPERATION_NOT_ATTEMPTED",
        "KAFKA_STORAGE_ERROR",
        "LOG_DIR_NOT_FOUND",
        "SASL_AUTHENTICATION_FAILED",
        "UNKNOWN_PRODUCER_ID",
        "REASSIGNMENT_IN_PROGRESS",
        "DELEGATION_TOKEN_AUTH_DISABLED",
        "DELEGATION_TOKEN_NOT_FOUND",
        "DELEGATION_TOKEN_OWNER_MISMATCH",
        "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED",
        "DELEGATION_TOKEN_AUTHORIZATION_FAILED",
        "DELEGATION_TOKEN_EXPIRED",
        "INVALID_PRINCIPAL_TYPE",
        "NON_EMPTY_GROUP",
        "GROUP_ID_NOT_FOUND",
        "FETCH_SESSION_ID_NOT_FOUND",
        "INVALID_FETCH_SESSION_EPOCH",
        "LISTENER_NOT_FOUND",
        "TOPIC_DELETION_DISABLED",
        "FENCED_LEADER_EPOCH",
        "UNKNOWN_LEADER_EPOCH",
        "UNSUPPORTED_COMPRESSION_TYPE",
        "STALE_BROKER_EPOCH",
        "OFFSET_NOT_AVAILABLE",
        "MEMBER_ID_REQUIRED",
        "PREFERRED_LEADER_NOT_AVAILABLE",
        "GROUP_MAX_SIZE_REACHED",
        "FENCED_INSTANCE_ID",
    ];
    match code {
        -1 => "UNKNOWN_SERVER_ERROR".to_string(),
        0.. if (code as usize) < NAMES.len() => NAMES[code as usize].to_string(),
        _ => format!("KAFKA_ERROR_{code}"),
    }
}

#[cfg(test)]
mod tests {
    //! The fixtures under `testdata/kafka/` are real traffic: each directory is one run
    //! of `tests/fixtures/kafka_client.py` (confluent-kafka or kafka-python) against a
    //! real broker (tansu), recorded by `tests/fixtures/kafka_record_proxy.py`
    //! (`conn-N.txt`: one line per recv, `>` client to broker, `<` broker to client),
    //! with what the client library itself reported about every record in
    //! `client.jsonl` (partition, offset, traceparent).
    use std::path::PathBuf;

    use super::*;
    use crate::capture::stream::GapReason;

    type Chunk = (Direction, Vec<u8>);

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn dir(run: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/protocols/testdata/kafka").join(run)
    }

    /// Every recorded connection of a run, in file order.
    fn connections(run: &str) -> Vec<Vec<Chunk>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir(run))
            .expect("fixture dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("conn-")))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no connections in {run}");
        files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .expect("fixture")
                    .lines()
                    .map(|l| {
                        let (mark, h) = l.split_once(' ').expect("line");
                        let d = if mark == ">" { Direction::Egress } else { Direction::Ingress };
                        (d, hex(h))
                    })
                    .collect()
            })
            .collect()
    }

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
    struct Seen {
        partition: i32,
        offset: i64,
        traceparent: Option<String>,
    }

    fn client_view(run: &str) -> Vec<Seen> {
        let mut v: Vec<Seen> = std::fs::read_to_string(dir(run).join("client.jsonl"))
            .expect("client.jsonl")
            .lines()
            .map(|l| {
                let j: serde_json::Value = serde_json::from_str(l).expect("json");
                Seen {
                    partition: j["partition"].as_i64().expect("partition") as i32,
                    offset: j["offset"].as_i64().expect("offset"),
                    traceparent: j["traceparent"].as_str().map(str::to_string),
                }
            })
            .collect();
        v.sort();
        v
    }

    /// Feeds one connection, each recorded chunk cut into pieces of `piece` bytes
    /// (0 = as recorded), through detection like the pipeline does.
    fn run_conn(conn: &[Chunk], piece: usize) -> Vec<L7Event> {
        let mut out = Vec::new();
        let mut parser: Option<Box<dyn Protocol>> = None;
        let mut offsets = [0u64; 2];
        for (i, (d, bytes)) in conn.iter().enumerate() {
            let ts = 1000 * (i as u64 + 1);
            let step = if piece == 0 { bytes.len() } else { piece };
            let segs: Vec<Segment> = bytes
                .chunks(step)
                .map(|b| {
                    let s = Segment::Data {
                        offset: offsets[*d as usize],
                        ts_enter_ns: ts,
                        ts_ns: ts + 1,
                        tid: 7,
                        bytes: b.to_vec(),
                    };
                    offsets[*d as usize] += b.len() as u64;
                    s
                })
                .collect();
            if parser.is_none() {
                parser = detect(Role::Client, *d, &bytes[..]);
                if parser.is_none() {
                    assert_eq!(*d, Direction::Ingress, "the first request must be detected");
                    continue;
                }
            }
            parser.as_mut().expect("parser").feed(*d, &segs, &mut out);
        }
        if let Some(p) = parser.as_mut() {
            p.close(&mut out);
        }
        out
    }

    use crate::protocols::mq_common::tests::ops;

    fn errors(events: &[L7Event]) -> Vec<&'static str> {
        events
            .iter()
            .filter_map(|e| match e {
                L7Event::ParseError { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn seen(ops: &[&MqOperation], kind: MqKind) -> Vec<Seen> {
        let mut v: Vec<Seen> = ops
            .iter()
            .filter(|o| o.kind == kind)
            .flat_map(|o| o.messages.iter())
            .map(|m| Seen {
                partition: m.partition.expect("partition"),
                offset: m.offset.expect("offset"),
                traceparent: m.traceparent.as_ref().map(|t| String::from_utf8(t.clone()).expect("utf8")),
            })
            .collect();
        v.sort();
        v
    }

    /// A run's connections parsed with `piece`-byte segments: what the agent would report.
    fn parse_run(run: &str, piece: usize) -> Vec<L7Event> {
        connections(run).iter().flat_map(|c| run_conn(c, piece)).collect()
    }

    fn check_run(run: &str, kind: MqKind) {
        let expected = client_view(run);
        assert!(expected.len() >= 6, "fixture {run} too small");
        let partitions: std::collections::BTreeSet<i32> = expected.iter().map(|s| s.partition).collect();
        assert!(partitions.len() >= 2, "fixture {run} must span partitions");
        let baseline = parse_run(run, 0);
        assert_eq!(errors(&baseline), Vec::<&str>::new(), "{run}");
        let all = ops(&baseline);
        assert!(all.iter().all(|o| o.system == "kafka" && o.error.is_none()));
        assert!(all.iter().all(|o| o.timing.first_enter_ns <= o.timing.last_exit_ns));
        assert_eq!(seen(&all, kind), expected, "{run}: parser vs client library");
        // Several records of one batch / several partitions in one operation.
        assert!(all.iter().any(|o| o.kind == kind && o.messages.len() >= 2), "{run}: no batch");
        for m in all.iter().flat_map(|o| o.messages.iter()) {
            assert!(m.destination.starts_with("hoptrace-"), "{run}: topic {}", m.destination);
            assert!(m.body_size > 0);
            assert_eq!(m.traceparent.is_some(), !m.tracestate.is_empty());
        }
        // Split everywhere: every chunk fed byte by byte gives the same operations.
        let bytewise = parse_run(run, 1);
        assert_eq!(errors(&bytewise), Vec::<&str>::new(), "{run}");
        assert_eq!(seen(&ops(&bytewise), kind), expected, "{run}: byte by byte");
        // Nothing but trace context and names leaves the parser.
        let text = format!("{baseline:?}");
        assert!(!text.contains("SECRET"), "{run}: payload leaked");
    }

    /// Every fixture run (directory), by kind; the error run is checked on its own.
    fn runs(kind: MqKind) -> Vec<String> {
        let suffix = if kind == MqKind::Publish { "produce" } else { "fetch" };
        let mut v: Vec<String> = std::fs::read_dir(dir(""))
            .expect("testdata/kafka")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.ends_with("-error") && !n.ends_with("-acks0") && !n.ends_with(".md"))
            .filter(|n| n.contains(&format!("-{suffix}")) || (kind == MqKind::Receive && n.contains("-consume")))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn produce_matches_what_the_client_encoded_or_reported() {
        let runs = runs(MqKind::Publish);
        // v3..v13 encoded by kafka-python, gzip included.
        assert!(runs.len() >= 9, "{runs:?}");
        for run in runs {
            check_run(&run, MqKind::Publish);
        }
    }

    #[test]
    fn fetch_matches_what_the_client_encoded_or_reported() {
        let runs = runs(MqKind::Receive);
        // v4..v18 encoded by kafka-python, gzip included.
        assert!(runs.len() >= 10, "{runs:?}");
        for run in runs {
            check_run(&run, MqKind::Receive);
        }
    }

    /// A partition error in the produce response: the operation carries Kafka's error
    /// name, that partition's records have no offset, the others do.
    #[test]
    fn produce_error_is_named_and_other_partitions_get_offsets() {
        let run = "encoded-produce-v9-error";
        let events = parse_run(run, 0);
        assert_eq!(errors(&events), Vec::<&str>::new());
        let all = ops(&events);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].error.as_deref(), Some("NOT_LEADER_OR_FOLLOWER"));
        assert_eq!(all[0].messages.len(), 9);
        let with_offsets: Vec<&MqMessage> = all[0].messages.iter().filter(|m| m.offset.is_some()).collect();
        assert!(all[0].messages.iter().filter(|m| m.partition == Some(1)).all(|m| m.offset.is_none()));
        let ok = seen(
            &[&MqOperation { messages: with_offsets.into_iter().cloned().collect(), ..all[0].clone() }],
            MqKind::Publish,
        );
        assert_eq!(ok, client_view(run));
    }

    /// `acks=0`: the broker never answers, so the produce is reported at once, without
    /// offsets, and nothing waits for a response.
    #[test]
    fn produce_without_acks_is_reported_at_request_time() {
        let conn = &connections("encoded-produce-v9-acks0")[0];
        // ApiVersions request and response, then the produce request alone.
        assert_eq!(conn.len(), 3);
        let out = run_conn(conn, 0);
        assert_eq!(errors(&out), Vec::<&str>::new(), "nothing was left waiting");
        let all = ops(&out);
        assert_eq!(all.len(), 1, "{out:?}");
        assert_eq!(all[0].kind, MqKind::Publish);
        assert_eq!(all[0].messages.len(), 9);
        assert!(all[0].messages.iter().all(|m| m.offset.is_none()));
        assert_eq!(all[0].messages.iter().filter(|m| m.traceparent.is_some()).count(), 5);
        // The request's own syscall (third chunk) is the whole operation.
        assert_eq!(
            (all[0].timing.first_tid, all[0].timing.first_enter_ns, all[0].timing.last_exit_ns),
            (7, 3000, 3001)
        );
    }

    /// Every chunk of a produce connection split in two at every offset, one chunk at
    /// a time (the rest as recorded).
    #[test]
    fn produce_split_at_every_offset() {
        for run in runs(MqKind::Publish) {
            let run = run.as_str();
            let expected = client_view(run);
            for conn in connections(run) {
                let want = seen(&ops(&run_conn(&conn, 0)), MqKind::Publish);
                for (i, (_, bytes)) in conn.iter().enumerate() {
                    // Detection sees only the first segment of a connection: it needs
                    // the whole request header there (clients write a request at once).
                    let first = if i == 0 { 14 + bytes[13] as usize } else { 1 };
                    for cut in first..bytes.len() {
                        let mut split = conn[..i].to_vec();
                        let (d, b) = &conn[i];
                        split.push((*d, b[..cut].to_vec()));
                        split.push((*d, b[cut..].to_vec()));
                        split.extend_from_slice(&conn[i + 1..]);
                        let events = run_conn(&split, 0);
                        assert!(errors(&events).is_empty(), "{run} chunk {i} cut {cut}");
                        assert_eq!(seen(&ops(&events), MqKind::Publish), want, "{run} chunk {i} cut {cut}");
                    }
                }
            }
            assert_eq!(seen(&ops(&parse_run(run, 0)), MqKind::Publish), expected);
        }
    }

    /// All recorded chunks of one direction that follow each other, in one segment
    /// (several frames per syscall).
    #[test]
    fn several_frames_per_segment() {
        for run in runs(MqKind::Publish).into_iter().chain(runs(MqKind::Receive)) {
            let run = run.as_str();
            let kind = if run.contains("produce") { MqKind::Publish } else { MqKind::Receive };
            let mut all = Vec::new();
            for conn in connections(run) {
                let mut merged: Vec<Chunk> = Vec::new();
                for (d, b) in conn {
                    match merged.last_mut() {
                        Some((ld, lb)) if *ld == d => lb.extend_from_slice(&b),
                        _ => merged.push((d, b)),
                    }
                }
                all.extend(run_conn(&merged, 0));
            }
            assert_eq!(seen(&ops(&all), kind), client_view(run), "{run}");
        }
    }

    /// Feeds a connection chunk by chunk; chunk `hole` loses its last `len` bytes to
    /// the capture cap. Returns every event with the index of the chunk that produced it.
    fn run_with_hole(conn: &[Chunk], hole: Option<(usize, usize)>) -> Vec<(usize, L7Event)> {
        let mut parser = detect(Role::Client, Direction::Egress, &conn[0].1).expect("kafka");
        let mut all = Vec::new();
        let mut offsets = [0u64; 2];
        for (i, (d, b)) in conn.iter().enumerate() {
            let o = &mut offsets[*d as usize];
            let data = |bytes: &[u8], offset: u64| Segment::Data {
                offset,
                ts_enter_ns: 1,
                ts_ns: 2,
                tid: 1,
                bytes: bytes.to_vec(),
            };
            let segs = match hole {
                Some((idx, len)) if idx == i => {
                    let cut = b.len() - len;
                    vec![
                        data(&b[..cut], *o),
                        Segment::Gap { offset: *o + cut as u64, len: len as u64, reason: GapReason::NotCaptured },
                    ]
                }
                _ => vec![data(b, *o)],
            };
            *o += b.len() as u64;
            let mut out = Vec::new();
            parser.feed(*d, &segs, &mut out);
            all.extend(out.into_iter().map(|e| (i, e)));
        }
        all
    }

    /// A hole at the end of a fetch response costs that response's records after the
    /// hole, is counted, and the framing goes on: every later response is reported.
    #[test]
    fn hole_inside_a_response_is_counted_and_framing_survives() {
        let mut tried = 0;
        for run in runs(MqKind::Receive) {
            let run = run.as_str();
            for conn in connections(run) {
                let baseline = run_with_hole(&conn, None);
                // The chunk that ends the first fetch response with records.
                let Some(&(idx, _)) = baseline.iter().find(|(_, e)| matches!(e, L7Event::Messaging(_))) else {
                    continue;
                };
                if conn[idx].1.len() < 40 {
                    continue;
                }
                tried += 1;
                let holed = run_with_hole(&conn, Some((idx, conn[idx].1.len() / 2)));
                let errs: Vec<_> = holed
                    .iter()
                    .filter_map(|(_, e)| match e {
                        L7Event::ParseError { reason, .. } => Some(*reason),
                        _ => None,
                    })
                    .collect();
                assert_eq!(errs, vec![reason::GAP_IN_FRAME], "{run}");
                let after = |v: &[(usize, L7Event)]| -> Vec<L7Event> {
                    v.iter().filter(|(i, _)| *i > idx).map(|(_, e)| e.clone()).collect()
                };
                assert_eq!(after(&holed), after(&baseline), "{run}: later responses");
                let lost: Vec<L7Event> = holed.iter().filter(|(i, _)| *i == idx).map(|(_, e)| e.clone()).collect();
                let full: Vec<L7Event> = baseline.iter().filter(|(i, _)| *i == idx).map(|(_, e)| e.clone()).collect();
                let count = |v: &[L7Event]| ops(v).iter().map(|o| o.messages.len()).sum::<usize>();
                assert!(count(&lost) < count(&full), "{run}: the cut records are not reported");
            }
        }
        assert!(tried > 0, "no fetch response with records in the fixtures");
    }

    /// Kafka bytes through the whole trace pipeline (detection, parser, messaging spans):
    /// a fetch of several records is one CONSUMER span linking each traced record, a
    /// produce one PRODUCER span.
    #[test]
    fn fetch_and_produce_through_the_trace_pipeline() {
        use crate::{
            capture::conntrack::{Connection, RoleSource, Tuple},
            capture::stream::Stream,
            model::span::{AnyValue, SpanKind, SpanRecord},
            resource::resolver::ResourceResolver,
            traces::{TraceConfig, TracePipeline},
        };
        // The producer's records carry their own context, which makes it look
        // SDK-instrumented; keep its span here instead of suppressing it as a duplicate.
        let cfg = TraceConfig { suppress_instrumented: false, ..TraceConfig::default() };
        let mut pipeline = TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new()));
        let mut spans: Vec<SpanRecord> = Vec::new();
        for (id, run) in [(1, "encoded-fetch-v12"), (2, "encoded-produce-v9")] {
            let c = Connection {
                id,
                tuple: Tuple {
                    local: format!("127.0.0.1:{}", 40000 + id).parse().unwrap(),
                    remote: "127.0.0.1:9092".parse().unwrap(),
                },
                role: Role::Client,
                role_source: RoleSource::Syscall,
                via: hoptrace_common::Syscall::Connect,
                pid: 4242 + id as u32,
                ppid: 1,
                fd: 3,
                comm: "consumer".into(),
                cgroup_id: 0,
                opened_ns: 0,
                last_seen: std::time::Instant::now(),
                streams: [Stream::default(), Stream::default()],
            };
            let mut offsets = [0u64; 2];
            for (i, (d, b)) in connections(run)[0].iter().enumerate() {
                let seg = Segment::Data {
                    offset: offsets[*d as usize],
                    ts_enter_ns: 1000 * i as u64 + 1,
                    ts_ns: 1000 * i as u64 + 2,
                    tid: 77,
                    bytes: b.clone(),
                };
                offsets[*d as usize] += b.len() as u64;
                pipeline.on_segments(&c, *d, &[seg], &mut spans);
            }
        }
        pipeline.flush(&mut spans);
        let attr = |s: &SpanRecord, k: &str| s.attributes.iter().find(|a| a.key == k).map(|a| a.value.clone());
        let consumer: Vec<&SpanRecord> = spans.iter().filter(|s| s.kind == SpanKind::Consumer).collect();
        assert_eq!(consumer.len(), 1, "{spans:#?}");
        let c = consumer[0];
        assert_eq!(c.name, "fetch hoptrace-encoded");
        assert_eq!(attr(c, "messaging.system"), Some(AnyValue::Str("kafka".into())));
        assert_eq!(attr(c, "messaging.batch.message_count"), Some(AnyValue::Int(7)));
        let expected: std::collections::BTreeSet<String> = client_view("encoded-fetch-v12")
            .into_iter()
            .filter_map(|r| r.traceparent)
            .map(|tp| tp.split('-').nth(2).unwrap().to_string())
            .collect();
        let linked: std::collections::BTreeSet<String> =
            c.links.iter().map(|l| crate::model::span::hex(&l.span_id)).collect();
        assert_eq!(linked, expected);
        let producer: Vec<&SpanRecord> = spans.iter().filter(|s| s.kind == SpanKind::Producer).collect();
        assert_eq!(producer.len(), 1, "{spans:#?}");
        assert_eq!(producer[0].name, "produce hoptrace-encoded");
        assert_eq!(attr(producer[0], "messaging.batch.message_count"), Some(AnyValue::Int(9)));
        // Parent: the first record's own context (record 0 of partition 0).
        let first = client_view("encoded-produce-v9").into_iter().find(|r| r.partition == 0 && r.offset == 5).unwrap();
        let tp = first.traceparent.expect("record 0 is traced");
        assert_eq!(crate::model::span::hex(&producer[0].parent_span_id), tp.split('-').nth(2).unwrap());
        assert!(!format!("{spans:?}").contains("SECRET"));
    }

    #[test]
    fn detection_is_strict() {
        let conn = &connections("encoded-produce-v9")[0];
        let first = &conn[0].1;
        assert!(detect(Role::Client, Direction::Egress, first).is_some());
        assert!(detect(Role::Server, Direction::Ingress, first).is_none(), "broker side");
        assert!(detect(Role::Unknown, Direction::Egress, first).is_none());
        assert!(detect(Role::Client, Direction::Ingress, first).is_none());
        for text in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdef",
            b"AMQP\x00\x00\x09\x01",
            b"CONNECT {\"verbose\":false}\r\n",
            b"PING\r\n",
        ] {
            assert!(detect(Role::Client, Direction::Egress, text).is_none(), "{text:?}");
        }
        // A MongoDB OP_MSG with request id 1 fits a Produce v1 header: not an opening request.
        let mut mongo = 0x2du32.to_be_bytes().to_vec();
        mongo.extend_from_slice(&1u32.to_be_bytes());
        mongo.extend_from_slice(&0u32.to_be_bytes());
        mongo.extend_from_slice(&2013u32.to_be_bytes());
        mongo.extend_from_slice(&[0; 29]);
        assert!(detect(Role::Client, Direction::Egress, &mongo).is_none());
        // Header fields out of range: api key, version, negative correlation id,
        // client id not printable or longer than the frame.
        let mut bad = first.clone();
        bad[4..6].copy_from_slice(&500i16.to_be_bytes());
        assert!(detect(Role::Client, Direction::Egress, &bad).is_none());
        let mut bad = first.clone();
        bad[8] = 0x80;
        assert!(detect(Role::Client, Direction::Egress, &bad).is_none());
        let mut bad = first.clone();
        bad[14] = 0x01;
        assert!(detect(Role::Client, Direction::Egress, &bad).is_none());
        assert!(detect(Role::Client, Direction::Egress, &first[..10]).is_none());
    }

    #[test]
    fn responses_without_request_and_garbage_are_counted() {
        let conn = &connections("encoded-produce-v9")[0];
        let mut p = detect(Role::Client, Direction::Egress, &conn[0].1).expect("kafka");
        let mut out = Vec::new();
        // A response to a correlation id never asked.
        let mut resp = 8u32.to_be_bytes().to_vec();
        resp.extend_from_slice(&0x7fff_0000i32.to_be_bytes());
        resp.extend_from_slice(&[0; 4]);
        p.feed(
            Direction::Ingress,
            &[Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: resp }],
            &mut out,
        );
        assert_eq!(errors(&out), vec![reason::UNMATCHED_RESPONSE]);
        // An absurd frame size upstream desynchronizes; a real request resynchronizes.
        out.clear();
        p.feed(
            Direction::Egress,
            &[Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec() }],
            &mut out,
        );
        assert_eq!(errors(&out), vec![reason::INVALID_FRAME_SIZE]);
        out.clear();
        p.feed(
            Direction::Egress,
            &[Segment::Data { offset: 18, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: b"more garbage".to_vec() }],
            &mut out,
        );
        assert!(out.is_empty());
        p.feed(
            Direction::Egress,
            &[Segment::Data { offset: 30, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: conn[0].1.clone() }],
            &mut out,
        );
        assert!(errors(&out).is_empty());
    }

    #[test]
    fn error_names() {
        assert_eq!(error_code_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_code_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_code_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_code_name(82), "FENCED_INSTANCE_ID");
        assert_eq!(error_code_name(999), "KAFKA_ERROR_999");
    }
}
