//! HTTP/1 parser tests. Most run twice: each syscall's bytes as one segment, and split
//! byte by byte into many segments, since the parser must not care where the stream cut.

use hoptrace_common::Direction::{Egress, Ingress};

use super::*;
use crate::capture::stream::{GapReason, Segment};
use crate::protocols::L7Event;

/// Server view: requests arrive, responses leave.
const REQ: Direction = Ingress;
const RESP: Direction = Egress;

/// One byte per segment, same syscall timestamps.
fn split_bytes(segment: &Segment) -> Vec<Segment> {
    match segment {
        Segment::Data { offset, ts_enter_ns, ts_ns, tid, bytes } => bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| Segment::Data {
                offset: offset + i as u64,
                ts_enter_ns: *ts_enter_ns,
                ts_ns: *ts_ns,
                tid: *tid,
                bytes: vec![b],
            })
            .collect(),
        gap => vec![gap.clone()],
    }
}

struct Conn {
    parser: Http1,
    offsets: [u64; 2],
    clock: u64,
    split: bool,
    out: Vec<L7Event>,
}

impl Conn {
    fn server(split: bool) -> Self {
        Self::with(Http1::new(REQ), split)
    }

    fn with(parser: Http1, split: bool) -> Self {
        Self { parser, offsets: [0; 2], clock: 0, split, out: Vec::new() }
    }

    /// One syscall's worth of bytes; returns its (enter, exit) timestamps.
    fn send(&mut self, dir: Direction, bytes: &[u8]) -> (u64, u64) {
        self.feed(dir, bytes, self.split)
    }

    /// Always one segment: what resynchronization needs to see a message start.
    fn send_whole(&mut self, dir: Direction, bytes: &[u8]) -> (u64, u64) {
        self.feed(dir, bytes, false)
    }

    fn feed(&mut self, dir: Direction, bytes: &[u8], split: bool) -> (u64, u64) {
        self.clock += 10;
        let (enter, exit) = (self.clock, self.clock + 5);
        let offset = &mut self.offsets[dir as usize];
        let segment = Segment::Data { offset: *offset, ts_enter_ns: enter, ts_ns: exit, tid: 7, bytes: bytes.to_vec() };
        *offset += bytes.len() as u64;
        let segments = if split { split_bytes(&segment) } else { vec![segment] };
        self.parser.feed(dir, &segments, &mut self.out);
        (enter, exit)
    }

    fn gap(&mut self, dir: Direction, len: u64) {
        let offset = &mut self.offsets[dir as usize];
        let segment = Segment::Gap { offset: *offset, len, reason: GapReason::Lost };
        *offset += len;
        self.parser.feed(dir, &[segment], &mut self.out);
    }

    fn close(&mut self) {
        self.parser.close(&mut self.out);
    }

    fn take(&mut self) -> Vec<L7Event> {
        std::mem::take(&mut self.out)
    }

    /// The exchanges so far; fails on any parse error.
    fn exchanges(&mut self) -> Vec<HttpExchange> {
        self.take()
            .into_iter()
            .map(|e| match e {
                L7Event::Http(x) => x,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }
}

fn both(test: impl Fn(bool)) {
    test(false);
    test(true);
}

/// (target, status, outcome) of each exchange, and the parse errors, in order.
#[derive(Debug, PartialEq)]
enum Ev {
    X(&'static str, Option<u16>, Outcome),
    E(&'static str),
}

fn summary(events: Vec<L7Event>) -> Vec<Ev> {
    events
        .into_iter()
        .map(|e| match e {
            L7Event::Http(x) => {
                let target = String::from_utf8_lossy(x.request.target()).into_owned();
                Ev::X(Box::leak(target.into_boxed_str()), x.response.map(|r| r.status), x.outcome)
            }
            L7Event::ParseError { protocol, reason } => {
                assert_eq!(protocol, "http1");
                Ev::E(reason)
            }
            L7Event::Messaging(op) => panic!("http1 reported a message-queue operation: {op:?}"),
        })
        .collect()
}

use Ev::{E, X};
use Outcome::*;

#[test]
fn keep_alive_exchanges_pair_in_order_with_timing() {
    both(|split| {
        let mut c = Conn::server(split);
        let (e1, x1) = c.send(REQ, b"GET /a?q=1 HTTP/1.1\r\nHost: svc\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n");
        let (e2, x2) = c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        c.send(REQ, b"DELETE /b HTTP/1.1\r\nHost: svc\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let ex = c.exchanges();
        assert_eq!(ex.len(), 2);
        let (req, resp) = (&ex[0].request, ex[0].response.as_ref().expect("response"));
        assert_eq!((req.method.as_str(), req.target(), req.version), ("GET", &b"/a?q=1"[..], 1));
        assert_eq!(req.header("host"), Some(&b"svc"[..]));
        assert_eq!(header_values(&req.headers, "x-multi").collect::<Vec<_>>(), [&b"1"[..], b"2"]);
        assert_eq!(req.timing, Timing { first_tid: 7, first_enter_ns: e1, first_exit_ns: x1, last_exit_ns: x1 });
        assert_eq!(req.body_len, 0);
        assert_eq!((resp.status, resp.version, resp.body_len), (200, 1, 5));
        assert_eq!(resp.timing, Timing { first_tid: 7, first_enter_ns: e2, first_exit_ns: x2, last_exit_ns: x2 });
        assert_eq!(ex[0].outcome, Complete);
        assert!(ex[0].informational.is_empty());
        assert_eq!((ex[1].request.method.as_str(), ex[1].response.as_ref().map(|r| r.status)), ("DELETE", Some(404)));
        c.close();
        assert!(c.take().is_empty(), "nothing pending at close");
    });
}

#[test]
fn message_timing_spans_the_syscalls_that_carry_it() {
    both(|split| {
        let mut c = Conn::server(split);
        let (e1, x1) = c.send(REQ, b"POST /upload HTTP/1.1\r\nContent-Le");
        c.send(REQ, b"ngth: 10\r\n\r\n01234");
        let (_, x3) = c.send(REQ, b"56789");
        let (e4, x4) = c.send(RESP, b"HTTP/1.1 200 OK\r\n");
        let (_, x5) = c.send(RESP, b"Content-Length: 0\r\n\r\n");
        let ex = c.exchanges();
        assert_eq!(
            ex[0].request.timing,
            Timing { first_tid: 7, first_enter_ns: e1, first_exit_ns: x1, last_exit_ns: x3 }
        );
        assert_eq!(ex[0].request.body_len, 10);
        let resp = ex[0].response.as_ref().expect("response");
        assert_eq!(resp.timing, Timing { first_tid: 7, first_enter_ns: e4, first_exit_ns: x4, last_exit_ns: x5 });
    });
}

#[test]
fn pipelined_requests_pair_fifo() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nPOST /3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
        c.send(
            RESP,
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nbbHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            summary(c.take()),
            [X("/1", Some(200), Complete), X("/2", Some(201), Complete), X("/3", Some(202), Complete)]
        );
    });
}

/// Stitching pairs exchanges by order only when no request was in flight behind another:
/// every exchange of a pipelined burst says so, sequential ones do not.
#[test]
fn pipelined_exchanges_are_flagged_sequential_ones_not() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send(REQ, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send(REQ, b"GET /b HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let flags: Vec<bool> = c.exchanges().iter().map(|x| x.pipelined).collect();
        assert_eq!(flags, [false, true, true, false]);
        // A request sent while the previous response was still being read.
        c.send(REQ, b"GET /c HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na");
        c.send(REQ, b"GET /d HTTP/1.1\r\n\r\n");
        c.send(RESP, b"b");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let flags: Vec<bool> = c.exchanges().iter().map(|x| x.pipelined).collect();
        assert_eq!(flags, [true, true]);
    });
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(
            REQ,
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;name=val\r\nhello\r\n6 ; ext=\"q\"\r\n world\r\n0\r\nX-Checksum: 1\r\nY: 2\r\n\r\n",
        );
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n1A\r\n".to_vec();
        resp.extend_from_slice(&[b'z'; 26]);
        resp.extend_from_slice(b"\r\n0\r\n\r\n");
        c.send(RESP, &resp);
        c.send(REQ, b"GET /next HTTP/1.1\r\n\r\n");
        // Bare LF line ends, as lenient peers send them.
        c.send(RESP, b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n");
        let ex = c.exchanges();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].request.body_len, 11);
        assert_eq!(ex[0].response.as_ref().map(|r| r.body_len), Some(26));
        assert_eq!(ex[1].response.as_ref().map(|r| r.body_len), Some(3));
        assert!(ex.iter().all(|x| x.outcome == Complete));
    });
}

#[test]
fn head_responses_have_no_body() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"HEAD /big HTTP/1.1\r\n\r\nGET /small HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let ex = c.exchanges();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].response.as_ref().map(|r| r.body_len), Some(0));
        assert_eq!(ex[0].response.as_ref().and_then(|r| r.header("content-length")), Some(&b"1234"[..]));
        assert_eq!(ex[1].response.as_ref().map(|r| r.body_len), Some(2));
    });
}

#[test]
fn continue_then_final_response() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 100 Continue\r\n\r\n");
        let (_, body_exit) = c.send(REQ, b"data");
        c.send(
            RESP,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        let ex = c.exchanges();
        assert_eq!(ex.len(), 1);
        assert_eq!(*ex[0].informational, [100, 103]);
        assert_eq!(ex[0].response.as_ref().map(|r| r.status), Some(201));
        assert_eq!((ex[0].request.body_len, ex[0].request.timing.last_exit_ns), (4, body_exit));
        assert_eq!(ex[0].outcome, Complete);
    });
}

#[test]
fn early_final_response_reports_the_request_body_seen_so_far() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"PUT /f HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789");
        c.send(RESP, b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let ex = c.exchanges();
        assert_eq!((ex[0].request.body_len, ex[0].response.as_ref().map(|r| r.status)), (10, Some(413)));
        c.send(REQ, &[b'x'; 90]);
        c.close();
        assert!(c.take().is_empty());
    });
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 204 No Content\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 500\r\nETag: \"x\"\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!");
        assert_eq!(
            summary(c.take()),
            [X("/1", Some(204), Complete), X("/2", Some(304), Complete), X("/3", Some(200), Complete)]
        );
    });
}

#[test]
fn response_without_length_reads_until_close() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET / HTTP/1.0\r\n\r\n");
        c.send(RESP, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part ");
        let (_, last) = c.send(RESP, b"second part");
        assert!(c.take().is_empty(), "not complete before the close");
        c.close();
        let ex = c.exchanges();
        let resp = ex[0].response.as_ref().expect("response");
        assert_eq!((resp.version, resp.body_len, resp.timing.last_exit_ns), (0, 22, last));
        assert_eq!(ex[0].request.version, 0);
        assert_eq!(ex[0].outcome, Complete);

        let mut c = Conn::server(split);
        c.send(REQ, b"GET / HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody");
        c.gap(RESP, 1000);
        c.close();
        assert_eq!(c.exchanges()[0].response.as_ref().map(|r| r.body_len), Some(1004));
    });
}

#[test]
fn close_reports_pending_and_partial_responses() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /done HTTP/1.1\r\n\r\nGET /half HTTP/1.1\r\n\r\nGET /none HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123");
        c.close();
        let events = c.take();
        assert_eq!(
            summary(events.clone()),
            [
                X("/done", Some(200), Complete),
                X("/half", Some(200), ClosedMidResponse),
                X("/none", None, ClosedBeforeResponse)
            ]
        );
        let L7Event::Http(half) = &events[1] else { panic!() };
        assert_eq!(half.response.as_ref().map(|r| r.body_len), Some(4));
        // Closing again, or feeding after the close, reports nothing.
        c.close();
        c.send(REQ, b"GET /late HTTP/1.1\r\n\r\n");
        assert!(c.take().is_empty());

        let mut c = Conn::server(split);
        c.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-");
        c.close();
        assert_eq!(summary(c.take()), [X("/a", None, ClosedMidResponse)]);

        // A request whose header block never completed is not an exchange, but it is
        // counted (a truncated request used to vanish without a trace).
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /a HTTP/1.1\r\nHost");
        c.close();
        assert_eq!(summary(c.take()), [E(reason::CLOSED_MID_HEADER)]);

        // Same after earlier complete exchanges on the connection; a connection closed
        // between messages reports nothing.
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /ok HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 204 No Content\r\n\r\n");
        c.send(REQ, b"POST /cut HTTP/1.1\r\nContent-Le");
        c.close();
        assert_eq!(summary(c.take()), [X("/ok", Some(204), Complete), E(reason::CLOSED_MID_HEADER)]);
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /ok HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 204 No Content\r\n\r\n");
        c.close();
        assert_eq!(summary(c.take()), [X("/ok", Some(204), Complete)]);
    });
}

#[test]
fn gaps_inside_a_sized_body_are_skipped() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789");
        c.gap(REQ, 80);
        let (_, req_last) = c.send(REQ, b"0123456789");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        let (_, resp_last) = c.send(RESP, b"abc");
        // The body ends inside the gap: the last data segment is the last touch.
        c.gap(RESP, 997);
        c.send(REQ, b"GET /after HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 204 No Content\r\n\r\n");
        let ex = c.exchanges();
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[0].request.body_len, ex[0].request.timing.last_exit_ns), (100, req_last));
        let resp = ex[0].response.as_ref().expect("response");
        assert_eq!((resp.body_len, resp.timing.last_exit_ns), (1000, resp_last));
        assert_eq!(ex[1].response.as_ref().map(|r| r.status), Some(204));
    });
}

#[test]
fn gap_in_request_header_desyncs_then_resyncs() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /lost HTTP/1.1\r\nHost: x\r\n");
        c.gap(REQ, 100);
        c.send(REQ, b"rest-of-header: y\r\n\r\n");
        // The lost request's response is dropped, keeping the next pair right.
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send_whole(REQ, b"GET /next HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [E("gap_in_header"), X("/next", Some(201), Complete)]);
    });
}

#[test]
fn gap_in_response_header_desyncs_then_resyncs() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Le");
        c.gap(RESP, 50);
        c.send(RESP, b"ngth: 0\r\n\r\n");
        c.send_whole(RESP, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [E("gap_in_header"), X("/a", None, Desync), X("/b", Some(202), Complete)]);
    });
}

#[test]
fn gap_at_a_message_boundary_counts_as_a_lost_message() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        c.gap(REQ, 40);
        c.send_whole(REQ, b"GET /c HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.gap(RESP, 45);
        c.send_whole(RESP, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            summary(c.take()),
            [
                E("gap_between_messages"),
                X("/a", Some(200), Complete),
                E("gap_between_messages"),
                X("/c", Some(203), Complete)
            ]
        );
    });
}

#[test]
fn gaps_in_chunked_bodies() {
    both(|split| {
        // Inside one chunk's data: its end is known, nothing is lost.
        let mut c = Conn::server(split);
        c.send(REQ, b"GET / HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nab");
        c.gap(RESP, 6);
        c.send(RESP, b"\r\n0\r\n\r\n");
        let ex = c.exchanges();
        assert_eq!((ex[0].outcome, ex[0].response.as_ref().map(|r| r.body_len)), (Complete, Some(8)));

        // Across a chunk-size line: the framing is lost.
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab");
        c.gap(RESP, 20);
        c.send(RESP, b"\r\n0\r\n\r\n");
        c.send_whole(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let events = c.take();
        assert_eq!(
            summary(events.clone()),
            [E("gap_in_chunked_body"), X("/x", Some(200), Desync), X("/y", Some(200), Complete)]
        );
        let L7Event::Http(x) = &events[1] else { panic!() };
        assert_eq!(x.response.as_ref().map(|r| r.body_len), Some(2));

        // In a chunked request body: the request stays paired.
        let mut c = Conn::server(split);
        c.send(REQ, b"POST /z HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n");
        c.gap(REQ, 10);
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [E("gap_in_chunked_body"), X("/z", Some(200), Complete)]);
    });
}

#[test]
fn oversized_header_block_desyncs() {
    both(|split| {
        let mut c = Conn::server(split);
        let mut big = b"GET /huge HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 70 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        c.send(REQ, &big);
        assert!(c.parser.requests.buf.len() <= MAX_HEAD_LEN);
        c.send(RESP, b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n");
        c.send_whole(REQ, b"GET /ok HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [E("header_too_large"), X("/ok", Some(200), Complete)]);
        assert!(c.parser.requests.buf.capacity() <= KEEP_BUFFER);
    });
}

#[test]
fn a_header_block_just_under_the_cap_is_fine() {
    let mut c = Conn::server(false);
    let mut req = b"GET /big HTTP/1.1\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', MAX_HEAD_LEN - req.len() - 4));
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req.len(), MAX_HEAD_LEN);
    c.send(REQ, &req);
    c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(summary(c.take()), [X("/big", Some(200), Complete)]);
}

#[test]
fn garbage_is_a_parse_error_not_a_panic() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
        c.send(RESP, b"\x15\x03\x03\x00\x02\x02\x28");
        c.close();
        assert_eq!(summary(c.take()), [E("invalid_token"), E("invalid_version")]);

        let mut c = Conn::server(split);
        c.send(REQ, b"GET / HTTP/9.9\r\n\r\n");
        c.send(REQ, b"GET /\x01 HTTP/1.1\r\n\r\n");
        c.send(REQ, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n");
        c.send(REQ, b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n");
        c.send(REQ, b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        c.send(REQ, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        c.send(REQ, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        c.send(REQ, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY");
        let reasons: Vec<Ev> = summary(c.take());
        // Each bad message desyncs; only the first is parsed (no resync in split mode).
        assert_eq!(reasons.first(), Some(&E("invalid_version")));
        if !split {
            assert_eq!(
                reasons,
                [
                    E("invalid_version"),
                    E("invalid_token"),
                    E("invalid_header_name"),
                    E("invalid_content_length"),
                    E("invalid_content_length"),
                    E("invalid_transfer_encoding"),
                    E("invalid_chunk_size"),
                    E("invalid_chunk_end"),
                ]
            );
        }
    });
}

#[test]
fn agreeing_content_lengths_are_accepted() {
    let mut c = Conn::server(false);
    c.send(REQ, b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabc");
    c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.exchanges()[0].request.body_len, 3);
}

#[test]
fn blank_lines_between_messages_are_ignored() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n");
        c.send(REQ, b"GET /b HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [X("/a", Some(200), Complete), X("/b", Some(200), Complete)]);
    });
}

#[test]
fn too_many_pipelined_requests_are_counted_and_never_mispaired() {
    // Regression: the oldest request used to be dropped, so every later response was
    // paired with the request after its own (wrong status and timing on every span).
    both(|split| {
        let mut c = Conn::server(split);
        let extra = 10;
        let mut reqs = Vec::new();
        for i in 0..MAX_PIPELINED + extra {
            reqs.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        c.send(REQ, &reqs);
        assert_eq!(summary(c.take()), (0..extra).map(|_| E("too_many_pipelined")).collect::<Vec<_>>());
        assert_eq!(c.parser.pending.len(), MAX_PIPELINED);
        // Each response says which request it answers (status 200 + i).
        for i in 0..MAX_PIPELINED + extra {
            c.send(RESP, format!("HTTP/1.1 {} OK\r\nContent-Length: 0\r\n\r\n", 200 + i).as_bytes());
        }
        let got = summary(c.take());
        let want: Vec<Ev> = (0..MAX_PIPELINED)
            .map(|i| X(Box::leak(format!("/{i}").into_boxed_str()), Some(200 + i as u16), Complete))
            .collect();
        assert_eq!(got, want);
        // Once the overflow is answered, the connection pairs as usual again.
        c.send(REQ, b"GET /after HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [X("/after", Some(202), Complete)]);

        // A request arriving while earlier ones are still over the limit queues behind
        // them: also counted, also never mispaired.
        let mut c = Conn::server(split);
        c.send(REQ, &reqs);
        c.take();
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send(REQ, b"GET /late HTTP/1.1\r\n\r\n");
        let got = summary(c.take());
        assert_eq!(got, [X("/0", Some(200), Complete), E("too_many_pipelined")]);
        c.close();
        assert_eq!(c.take().len(), MAX_PIPELINED - 1, "the kept requests close unanswered");
    });
}

#[test]
fn status_below_100_is_invalid() {
    // Found by `cargo xtask fuzz` (fuzz/corpus/http1/regression-status-099): httparse
    // accepts "099", which was paired and exported as a final response.
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 099 Continue\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.send(REQ, b"GET /b HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 204 No Content\r\n\r\n");
        let got = summary(c.take());
        assert_eq!(got[..2], [E("invalid_status"), X("/a", None, Desync)]);
        if !split {
            // Resynchronized on the next status line (byte-split segments never start
            // with a whole one, so that variant stays desynchronized).
            assert_eq!(got[2..], [E("unmatched_response"), X("/b", Some(204), Complete)]);
        }
    });
}

#[test]
fn response_without_request_is_reported_and_skipped() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        c.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(c.take()), [E("unmatched_response"), X("/a", Some(200), Complete)]);
    });
}

#[test]
fn protocol_switches_stop_parsing() {
    both(|split| {
        let mut c = Conn::server(split);
        c.send(REQ, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        c.send(RESP, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
        c.send(REQ, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        c.close();
        assert_eq!(summary(c.take()), [X("/ws", Some(101), Complete)]);

        let mut c = Conn::server(split);
        c.send(REQ, b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01");
        c.send(RESP, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        c.send(REQ, b"\x16\x03\x01 binary");
        c.send(RESP, b"\x16\x03\x03 binary");
        c.close();
        assert_eq!(summary(c.take()), [X("db.internal:5432", Some(200), Complete)]);
    });
}

#[test]
fn refused_connect_goes_back_to_http() {
    let mut c = Conn::server(false);
    c.send(REQ, b"CONNECT db.internal:5432 HTTP/1.1\r\n\r\n");
    c.send(RESP, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
    c.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
    c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(summary(c.take()), [X("db.internal:5432", Some(407), Complete), X("/a", Some(200), Complete)]);
}

#[test]
fn connections_do_not_share_state() {
    both(|split| {
        let mut bad = Conn::server(split);
        let mut good = Conn::server(split);
        bad.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        good.send(REQ, b"GET /a HTTP/1.1\r\n\r\n");
        bad.send(RESP, b"garbage\r\n\r\n");
        good.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(summary(bad.take()), [E("invalid_version"), X("/a", None, Desync)]);
        assert_eq!(summary(good.take()), [X("/a", Some(200), Complete)]);
    });
}

#[test]
fn detection_follows_roles_and_directions() {
    let req = b"GET / HTTP/1.1\r\n";
    let resp = b"HTTP/1.1 200 OK\r\n";
    let cases: [(Role, Direction, &[u8], bool); 12] = [
        (Role::Server, Ingress, req, true),
        (Role::Server, Egress, req, false),
        (Role::Server, Egress, resp, true),
        (Role::Server, Ingress, resp, false),
        (Role::Client, Egress, req, true),
        (Role::Client, Ingress, req, false),
        (Role::Client, Ingress, resp, true),
        (Role::Client, Egress, resp, false),
        (Role::Unknown, Ingress, req, true),
        (Role::Unknown, Egress, req, true),
        (Role::Unknown, Ingress, resp, true),
        (Role::Unknown, Egress, resp, true),
    ];
    for (role, dir, bytes, want) in cases {
        assert_eq!(detect(role, dir, bytes).is_some(), want, "{role:?} {dir:?} {bytes:?}");
    }
    for not_http in [&b"GETX / HTTP/1.1"[..], b"get / HTTP/1.1", b"GE", b"HTTP/2 200", b"PRI * HTTP/2.0", b""] {
        assert!(detect(Role::Unknown, Ingress, not_http).is_none(), "{not_http:?}");
    }
    for method in METHODS {
        assert!(detect(Role::Server, Ingress, method).is_some());
    }
}

#[test]
fn unknown_role_infers_the_request_direction() {
    // A client whose connect() the agent missed: requests leave, responses arrive.
    let mut p = detect(Role::Unknown, Egress, b"GET / HTTP/1.1\r\n").expect("http");
    let mut out = Vec::new();
    let data = |b: &[u8]| vec![Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 7, bytes: b.to_vec() }];
    p.feed(Egress, &data(b"GET /c HTTP/1.1\r\n\r\n"), &mut out);
    p.feed(Ingress, &data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), &mut out);
    assert_eq!(summary(out), [X("/c", Some(200), Complete)]);
}

#[test]
fn joining_mid_connection_skips_partial_messages_quietly() {
    // First bytes seen: a response arriving at a client. The request side is mid-body.
    assert!(detect(Role::Unknown, Ingress, b"HTTP/1.1 200 OK\r\n").is_some());
    let mut c = Conn::with(Http1::mid_stream(Egress, Ingress), false);
    c.send(Egress, b"rest of an upload body");
    c.send(Ingress, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    c.send(Egress, b"GET /next HTTP/1.1\r\n\r\n");
    c.send(Ingress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(summary(c.take()), [E("unmatched_response"), X("/next", Some(200), Complete)]);
}

#[test]
fn reasons_are_unique_snake_case_labels() {
    let mut seen = std::collections::HashSet::new();
    for r in reason::ALL {
        assert!(r.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'), "{r}");
        assert!(seen.insert(r), "duplicate {r}");
    }
}

/// Tiny deterministic PRNG so the property tests need no crate and always replay.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const CORPUS_REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\nHEAD /d HTTP/1.0\r\n\r\nCONNECT h:1 HTTP/1.1\r\n\r\n";
const CORPUS_RESP: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close";

/// Feeds `rounds` random scripts built by `chunk` and checks the parser's invariants.
fn fuzz(seed: u64, rounds: usize, mut chunk: impl FnMut(&mut XorShift, bool) -> Vec<u8>) {
    let mut rng = XorShift(seed);
    for _ in 0..rounds {
        let mut p = Http1::new(REQ);
        let mut out = Vec::new();
        let mut offsets = [0u64; 2];
        for _ in 0..rng.below(12) + 1 {
            let dir = if rng.below(2) == 0 { REQ } else { RESP };
            let offset = &mut offsets[dir as usize];
            let mut segments = Vec::new();
            if rng.below(8) == 0 {
                let len = rng.below(300) as u64 + 1;
                segments.push(Segment::Gap { offset: *offset, len, reason: GapReason::NotCaptured });
                *offset += len;
            } else {
                let bytes = chunk(&mut rng, dir == REQ);
                // Cut the syscall's bytes at random points.
                let mut rest = bytes.as_slice();
                while !rest.is_empty() {
                    let (head, tail) = rest.split_at(rng.below(rest.len()) + 1);
                    segments.push(Segment::Data {
                        offset: *offset,
                        ts_enter_ns: 1,
                        ts_ns: 2,
                        tid: 7,
                        bytes: head.to_vec(),
                    });
                    *offset += head.len() as u64;
                    rest = tail;
                }
            }
            p.feed(dir, &segments, &mut out);
            assert!(p.pending.len() <= MAX_PIPELINED);
            assert!(p.requests.buf.len() <= MAX_HEAD_LEN && p.responses.buf.len() <= MAX_HEAD_LEN);
        }
        p.close(&mut out);
        for e in out {
            if let L7Event::ParseError { reason, .. } = e {
                assert!(reason::ALL.contains(&reason), "{reason}");
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    fuzz(0x2545_f491_4f6c_dd1d, 400, |rng, _| {
        let len = rng.below(200);
        (0..len).map(|_| rng.next() as u8).collect()
    });
}

#[test]
fn mutated_http_never_panics() {
    fuzz(0x9e37_79b9_7f4a_7c15, 600, |rng, is_request| {
        let corpus = if is_request { CORPUS_REQ } else { CORPUS_RESP };
        let start = rng.below(corpus.len());
        let end = start + rng.below(corpus.len() - start) + 1;
        let mut bytes = corpus[start..end].to_vec();
        for _ in 0..rng.below(4) {
            let i = rng.below(bytes.len());
            bytes[i] = match rng.below(4) {
                0 => b'\r',
                1 => b'\n',
                2 => b'0' + (rng.below(10) as u8),
                _ => rng.next() as u8,
            };
        }
        bytes
    });
}

#[test]
fn resync_happens_only_at_segment_starts() {
    // Segments start at syscall boundaries, where messages start; a request line right
    // after a framing error inside a segment is more likely body bytes than a message.
    let mut c = Conn::server(false);
    c.send(REQ, b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXGET /x HTTP/1.1\r\n\r\n");
    c.send(REQ, b"GET /y HTTP/1.1\r\n\r\n");
    c.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(summary(c.take()), [E("invalid_chunk_end"), X("/a", Some(200), Complete), X("/y", Some(200), Complete)]);
}
