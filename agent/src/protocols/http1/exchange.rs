//! Pairing: a response answers the oldest unanswered request (HTTP/1 has no other way
//! to say which), pipelined requests wait in order (bounded), and a message lost to a
//! desync is accounted for on its side of the queue so the pairs after it stay right.

use std::collections::VecDeque;

use hoptrace_common::Direction;

use super::body::{request_body, response_body, BodyKind};
use super::head::{parse_request_head, parse_response_head};
use super::reader::{Kind, Reader, State, Step};
use super::{reason, HttpExchange, HttpRequest, HttpResponse, Outcome, MAX_PIPELINED, PROTOCOL};
use crate::capture::stream::Segment;
use crate::protocols::{http2::Http2, L7Event, Protocol};

/// 1xx statuses remembered per exchange (a peer may send any number).
const MAX_INFORMATIONAL: usize = 16;

/// The HTTP/1 parser of one connection.
#[derive(Debug)]
pub struct Http1 {
    request_dir: Direction,
    pub(super) requests: Reader,
    pub(super) responses: Reader,
    /// Requests waiting for their final response, oldest first.
    pub(super) pending: VecDeque<Pending>,
    /// Requests pipelined behind `pending` beyond [`MAX_PIPELINED`]: not kept (already
    /// counted), but their responses come after those of `pending` and are skipped in
    /// order, so that no response is paired with the wrong request.
    overflow: u64,
    next_id: u64,
    /// The request whose body the request reader is in.
    current_request: Option<u64>,
    /// The final response being read and the request it answers. `None` between
    /// responses, during a 1xx, and for a response that answers no known request.
    inflight: Option<Answer>,
    closed: bool,
    /// `Upgrade: h2c` accepted (101): the connection is HTTP/2 from the byte after the
    /// 101's head, and everything goes to this parser (the upgraded request is stream 1).
    upgraded: Option<Box<Http2>>,
}

#[derive(Debug)]
pub(super) struct Pending {
    id: u64,
    /// `None`: a request was lost (gap, malformed); its response is dropped, which keeps
    /// the responses after it paired right.
    request: Option<HttpRequest>,
    informational: Vec<u16>,
    /// Sent while another request on the connection was still unanswered.
    pipelined: bool,
}

#[derive(Debug)]
struct Answer {
    pending: Pending,
    response: HttpResponse,
}

impl Http1 {
    /// A connection seen from its first byte in both directions.
    pub fn new(request_dir: Direction) -> Self {
        Self {
            request_dir,
            requests: Reader::new(Kind::Request, State::Idle),
            responses: Reader::new(Kind::Response, State::Idle),
            pending: VecDeque::new(),
            overflow: 0,
            next_id: 0,
            current_request: None,
            inflight: None,
            closed: false,
            upgraded: None,
        }
    }

    /// A connection joined mid-flight, first seen through a message start in `seen`:
    /// the other direction is ignored until a segment starts with a message.
    pub fn mid_stream(request_dir: Direction, seen: Direction) -> Self {
        let mut p = Self::new(request_dir);
        p.reader(seen != request_dir).state = State::Seek;
        p
    }

    fn reader(&mut self, is_request: bool) -> &mut Reader {
        if is_request {
            &mut self.requests
        } else {
            &mut self.responses
        }
    }

    /// Acts on what a reader found; false when the reader needs more input.
    fn handle(&mut self, is_request: bool, step: Step, out: &mut Vec<L7Event>) -> bool {
        match step {
            Step::More => return false,
            Step::Head => {
                let body = if is_request { self.request_head(out) } else { self.response_head(out) };
                match body {
                    Ok(body) => {
                        if self.reader(is_request).begin_body(body) {
                            self.message_end(is_request, out);
                        }
                    }
                    Err(reason) => self.desync(is_request, reason, out),
                }
            }
            Step::End => self.message_end(is_request, out),
            Step::Error(reason) => self.desync(is_request, reason, out),
        }
        true
    }

    fn request_head(&mut self, out: &mut Vec<L7Event>) -> Result<BodyKind, &'static str> {
        let head = parse_request_head(&mut self.requests.buf)?;
        let body = if head.method == "CONNECT" {
            // Bytes after CONNECT are the tunnel's; the response says whether it opened.
            BodyKind::Tunnel
        } else {
            request_body(&head.headers)?
        };
        let request = HttpRequest {
            method: head.method,
            target_at: head.target,
            version: head.version,
            headers: head.headers,
            timing: self.requests.timing,
            body_len: 0,
        };
        self.current_request = self.push_pending(Some(request), out);
        Ok(body)
    }

    fn response_head(&mut self, out: &mut Vec<L7Event>) -> Result<BodyKind, &'static str> {
        let head = parse_response_head(&mut self.responses.buf)?;
        if (100..200).contains(&head.status) && head.status != 101 {
            if let Some(front) = self.pending.front_mut() {
                if front.informational.len() < MAX_INFORMATIONAL {
                    front.informational.push(head.status);
                }
            }
            return Ok(BodyKind::None);
        }
        let Some(pending) = self.pending.pop_front() else {
            if self.overflow > 0 {
                // Answers a request that was pipelined beyond the limit (already counted).
                self.overflow -= 1;
                return response_body(head.status, None, &head.headers);
            }
            // The agent joined mid-connection, or the request was never seen: the body
            // is still framed, to find the next response.
            out.push(parse_error(reason::UNMATCHED_RESPONSE));
            return response_body(head.status, None, &head.headers);
        };
        if head.status == 101 && pending.request.as_ref().is_some_and(asks_h2c) {
            if let Some(request) = pending.request {
                self.upgraded = Some(Box::new(Http2::upgraded(self.request_dir, request)));
            }
            self.requests.state = State::Opaque;
            return Ok(BodyKind::Tunnel);
        }
        let method = pending.request.as_ref().map(|r| r.method.as_str());
        let body = response_body(head.status, method, &head.headers);
        match body {
            Ok(BodyKind::Tunnel) => self.requests.state = State::Opaque,
            // A refused CONNECT: the client may go on with HTTP.
            _ if method == Some("CONNECT") && self.requests.state == State::Opaque => self.requests.state = State::Seek,
            _ => {}
        }
        let response = HttpResponse {
            status: head.status,
            version: head.version,
            headers: head.headers,
            timing: self.responses.timing,
            body_len: 0,
        };
        // Set even when the body framing is invalid, so the desync reports this exchange.
        self.inflight = Some(Answer { pending, response });
        body
    }

    fn message_end(&mut self, is_request: bool, out: &mut Vec<L7Event>) {
        self.sync_request();
        if is_request {
            self.current_request = None;
            return;
        }
        if let Some(Answer { pending, mut response }) = self.inflight.take() {
            response.timing = self.responses.timing;
            response.body_len = self.responses.body_len;
            // A request queued behind this one was sent before this response ended.
            let behind = !self.pending.is_empty();
            emit(out, pending, Some(response), Outcome::Complete, behind);
        }
    }

    /// Queues a request (or a lost one). Beyond [`MAX_PIPELINED`], and behind requests
    /// already over it, a request is counted and not kept; its id is `None` then.
    fn push_pending(&mut self, request: Option<HttpRequest>, out: &mut Vec<L7Event>) -> Option<u64> {
        if self.overflow > 0 || self.pending.len() >= MAX_PIPELINED {
            self.overflow += 1;
            // A lost request (None) was counted when it was lost.
            if request.is_some() {
                out.push(parse_error(reason::TOO_MANY_PIPELINED));
            }
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let pipelined = !self.pending.is_empty() || self.inflight.is_some();
        self.pending.push_back(Pending { id, request, informational: Vec::new(), pipelined });
        Some(id)
    }

    /// Copies the request reader's progress (body so far, last byte) into the request
    /// it is reading, wherever that request is now.
    fn sync_request(&mut self) {
        let Some(id) = self.current_request else {
            return;
        };
        let (last_exit_ns, body_len) = (self.requests.timing.last_exit_ns, self.requests.body_len);
        let queued = self.pending.iter_mut().rev().find(|p| p.id == id);
        let answering = self.inflight.as_mut().map(|a| &mut a.pending).filter(|p| p.id == id);
        if let Some(request) = queued.or(answering).and_then(|p| p.request.as_mut()) {
            request.timing.last_exit_ns = last_exit_ns;
            request.body_len = body_len;
        }
    }

    /// Gives up on the current message of one direction and waits for a fresh start.
    fn desync(&mut self, is_request: bool, why: &'static str, out: &mut Vec<L7Event>) {
        out.push(parse_error(why));
        let began = matches!(self.reader(is_request).state, State::Idle | State::Head);
        if is_request {
            self.sync_request();
            self.current_request = None;
            if began {
                // A request started here and is gone; its response will still come.
                self.push_pending(None, out);
            }
        } else {
            match self.inflight.take() {
                Some(Answer { pending, mut response }) => {
                    response.timing = self.responses.timing;
                    response.body_len = self.responses.body_len;
                    emit(out, pending, Some(response), Outcome::Desync, false);
                }
                None if began => {
                    // A response started here: it answered the oldest request.
                    if let Some(pending) = self.pending.pop_front() {
                        emit(out, pending, None, Outcome::Desync, false);
                    } else {
                        self.overflow = self.overflow.saturating_sub(1);
                    }
                }
                None => {}
            }
        }
        self.reader(is_request).reset(State::Seek);
    }
}

impl Protocol for Http1 {
    fn name(&self) -> &'static str {
        PROTOCOL
    }

    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>) {
        if let Some(h2) = self.upgraded.as_mut() {
            return h2.feed(direction, segments, out);
        }
        if self.closed {
            return;
        }
        let is_request = direction == self.request_dir;
        for (i, segment) in segments.iter().enumerate() {
            match segment {
                Segment::Data { offset, ts_enter_ns, ts_ns, tid, bytes } => {
                    let mut pos = 0;
                    loop {
                        let step = self.reader(is_request).data(bytes, &mut pos, *ts_enter_ns, *ts_ns, *tid);
                        if !self.handle(is_request, step, out) {
                            break;
                        }
                        if let Some(h2) = self.upgraded.as_mut() {
                            // The rest of this segment and the segments after it are HTTP/2.
                            let rest = Segment::Data {
                                offset: offset + pos as u64,
                                ts_enter_ns: *ts_enter_ns,
                                ts_ns: *ts_ns,
                                tid: *tid,
                                bytes: bytes.get(pos..).unwrap_or_default().to_vec(),
                            };
                            h2.feed(direction, std::slice::from_ref(&rest), out);
                            h2.feed(direction, segments.get(i + 1..).unwrap_or_default(), out);
                            return;
                        }
                    }
                }
                Segment::Gap { len, .. } => {
                    let mut left = *len;
                    loop {
                        let step = self.reader(is_request).gap(&mut left);
                        if !self.handle(is_request, step, out) {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn close(&mut self, out: &mut Vec<L7Event>) {
        if let Some(h2) = self.upgraded.as_mut() {
            return h2.close(out);
        }
        if self.closed {
            return;
        }
        self.closed = true;
        self.sync_request();
        if self.requests.state == State::Head {
            // A request head that never completed is not an exchange, but it is traffic
            // the agent saw and could not report: count it.
            out.push(parse_error(reason::CLOSED_MID_HEADER));
        }
        match self.inflight.take() {
            Some(Answer { pending, mut response }) => {
                response.timing = self.responses.timing;
                response.body_len = self.responses.body_len;
                let outcome = if self.responses.state == State::UntilClose {
                    Outcome::Complete
                } else {
                    Outcome::ClosedMidResponse
                };
                let behind = !self.pending.is_empty();
                emit(out, pending, Some(response), outcome, behind);
            }
            None => {
                if self.responses.state == State::Head {
                    if let Some(pending) = self.pending.pop_front() {
                        let behind = !self.pending.is_empty();
                        emit(out, pending, None, Outcome::ClosedMidResponse, behind);
                    }
                }
            }
        }
        let several = self.pending.len() > 1;
        for pending in std::mem::take(&mut self.pending) {
            emit(out, pending, None, Outcome::ClosedBeforeResponse, several);
        }
        self.overflow = 0;
        self.requests.reset(State::Opaque);
        self.responses.reset(State::Opaque);
    }
}

/// `behind`: another request was queued behind this one when it was answered (or cut).
fn emit(out: &mut Vec<L7Event>, p: Pending, response: Option<HttpResponse>, outcome: Outcome, behind: bool) {
    if let Some(request) = p.request {
        let pipelined = p.pipelined || behind;
        out.push(L7Event::Http(HttpExchange {
            request,
            response,
            informational: p.informational.into_boxed_slice(),
            outcome,
            pipelined,
            h2: None,
        }));
    }
}

/// A request asking to continue in HTTP/2 over cleartext (`Upgrade: h2c`, RFC 7540 §3.2).
fn asks_h2c(request: &HttpRequest) -> bool {
    request
        .header("upgrade")
        .is_some_and(|v| v.split(|&b| b == b',').any(|t| super::trim_ows(t).eq_ignore_ascii_case(b"h2c")))
}

fn parse_error(reason: &'static str) -> L7Event {
    L7Event::ParseError { protocol: PROTOCOL, reason }
}
