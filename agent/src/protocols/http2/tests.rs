//! HTTP/2 parser tests: RFC 7541 Appendix C vectors (dynamic table across blocks), frames
//! built here, and traffic recorded from grpcio (testdata/http2_*, recorded by
//! tests/fixtures/h2_record.py), each fed whole and split at every offset.

use hoptrace_common::{Direction, Role};

use super::hpack::{Decoder, HpackError};
use super::*;
use crate::capture::stream::Segment;
use crate::protocols::http1::Outcome;
use crate::protocols::{HttpExchange, L7Event, Protocol};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn decode_all(d: &mut Decoder, block: &str) -> (Vec<(String, String)>, u32) {
    let mut fields = Vec::new();
    let skipped = d
        .decode(&hex(block), |n, v| {
            fields.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
        })
        .unwrap();
    (fields, skipped)
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn rfc7541_c3_requests_without_huffman() {
    let mut d = Decoder::new();
    let (f, _) = decode_all(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
    assert_eq!(f, pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]));
    assert_eq!(d.size(), 57);
    let (f, _) = decode_all(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865");
    assert_eq!(f[4], ("cache-control".into(), "no-cache".into()));
    assert_eq!(d.size(), 110);
    let (f, _) = decode_all(&mut d, "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
    assert_eq!(f[2], (":path".into(), "/index.html".into()));
    assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
    assert_eq!(f[4], ("custom-key".into(), "custom-value".into()));
    assert_eq!(d.size(), 164);
    assert_eq!(d.known()[0], ("custom-key".into(), "custom-value".into()));
}

#[test]
fn rfc7541_c6_responses_with_huffman_and_eviction() {
    let mut d = Decoder::new();
    // The examples use a 256-byte table.
    d.decode(&[0x3f, 0xe1, 0x01], |_, _| {}).unwrap();
    let (f, _) = decode_all(
        &mut d,
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad
         1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    );
    assert_eq!(f[0], (":status".into(), "302".into()));
    assert_eq!(f[3], ("location".into(), "https://www.example.com".into()));
    assert_eq!(d.size(), 222);
    let (f, _) = decode_all(&mut d, "4883 640e ffc1 c0bf");
    assert_eq!(f[0], (":status".into(), "307".into()));
    assert_eq!(d.size(), 222);
    let (f, _) = decode_all(
        &mut d,
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2
         e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    );
    assert_eq!(f[0], (":status".into(), "200".into()));
    assert_eq!(f[5], ("set-cookie".into(), "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1".into()));
    assert_eq!(d.size(), 215);
}

#[test]
fn an_unknown_index_is_skipped_never_guessed() {
    // Joined mid-connection: index 62 (the newest entry) was inserted before the agent.
    let mut d = Decoder::joined();
    assert!(!d.fully_known());
    let (f, skipped) = decode_all(&mut d, "82 be 86");
    assert_eq!(f, pairs(&[(":method", "GET"), (":scheme", "http")]));
    assert_eq!(skipped, 1);
    // A literal inserted now is known, and so is a reference to it.
    let (_, skipped) = decode_all(&mut d, "400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
    assert_eq!(skipped, 0);
    let (f, skipped) = decode_all(&mut d, "be bf");
    assert_eq!((f, skipped), (pairs(&[("custom-key", "custom-value")]), 1));
    // A size update to 0 empties the table: it is fully known again, and an index past
    // its end is an error, not an unknown.
    d.decode(&[0x20], |_, _| {}).unwrap();
    assert!(d.fully_known());
    assert_eq!(d.decode(&[0xbe], |_, _| {}), Err(HpackError::BadIndex));
}

#[test]
fn hpack_refuses_bad_input_without_panicking() {
    let mut d = Decoder::new();
    assert_eq!(d.decode(&[0x80], |_, _| {}), Err(HpackError::BadIndex));
    assert_eq!(d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], |_, _| {}), Err(HpackError::IntegerOverflow));
    assert_eq!(d.decode(&[0x40, 0x05, b'a'], |_, _| {}), Err(HpackError::Truncated));
    assert_eq!(d.decode(&[0x82, 0x20], |_, _| {}), Err(HpackError::BadSizeUpdate));
    assert_eq!(d.decode(&[0x3f, 0xe1, 0xff, 0x7f], |_, _| {}), Err(HpackError::BadSizeUpdate));
    // Every byte string of length 2 and a few of length 3: never a panic.
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            let _ = Decoder::new().decode(&[a, b], |_, _| {});
            let _ = Decoder::joined().decode(&[a, b, a ^ b], |_, _| {});
        }
    }
}

// ---- frames built here --------------------------------------------------------------

/// A literal field without indexing, new name, no Huffman.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A literal field with incremental indexing, new name.
fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut b = lit(name, value);
    b[0] = 0x40;
    b
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A client's bytes: preface, SETTINGS, a unary gRPC call on stream 1 (its traceparent
/// inserted into the table), a GET on stream 3 split over HEADERS + CONTINUATION with
/// padding and priority, and stream 1's traceparent referred to by index on stream 5.
fn client_bytes() -> Vec<u8> {
    let mut c = PREFACE.to_vec();
    c.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    let mut h = vec![0x83, 0x86]; // POST, http
    h.extend(lit(":path", "/helloworld.Greeter/SayHello"));
    h.extend(lit("content-type", "application/grpc"));
    h.extend(lit_indexed("traceparent", TP));
    c.extend(frame(0x1, 0x4, 1, &h));
    let mut body = grpc_message(b"\x0a\x05world");
    body.extend(grpc_message(b"\x0a\x03two"));
    c.extend(frame(0x0, 0x1, 1, &body));
    // Stream 3: PADDED | PRIORITY HEADERS without END_HEADERS, then CONTINUATION.
    let mut p = vec![2]; // pad length
    p.extend([0, 0, 0, 0, 16]); // priority
    p.extend([0x82, 0x86]);
    p.extend([0, 0]); // padding
    c.extend(frame(0x1, 0x8 | 0x20 | 0x1, 3, &p));
    c.extend(frame(0x9, 0x4, 3, &lit(":path", "/orders/42?email=a@b.c")));
    c.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
    // Stream 5: GET with the table's traceparent (index 62).
    let mut h5 = vec![0x82, 0x86];
    h5.extend(lit(":path", "/x"));
    h5.push(0xbe);
    c.extend(frame(0x1, 0x5, 5, &h5));
    c
}

/// The server's bytes: SETTINGS and its ack, stream 3's 404 answered first (streams are
/// interleaved), a PING, stream 1's response in DATA + trailers, stream 5 reset.
fn server_bytes() -> Vec<u8> {
    let mut s = frame(0x4, 0, 0, &[]);
    s.extend(frame(0x4, 0x1, 0, &[]));
    let mut h1 = vec![0x88];
    h1.extend(lit("content-type", "application/grpc"));
    s.extend(frame(0x1, 0x4, 1, &h1));
    s.extend(frame(0x1, 0x5, 3, &[0x8d])); // 404, END_STREAM
    s.extend(frame(0x6, 0, 0, &[0; 8]));
    let reply = grpc_message(b"\x0a\x0bhello world");
    s.extend(frame(0x0, 0, 1, &reply[..3]));
    s.extend(frame(0x0, 0, 1, &reply[3..]));
    let mut t = lit("grpc-status", "5");
    t.extend(lit("grpc-message", "not found"));
    s.extend(frame(0x1, 0x5, 1, &t));
    s.extend(frame(0x3, 0, 5, &8u32.to_be_bytes())); // CANCEL
    s
}

fn data(bytes: &[u8], ts: u64) -> Segment {
    Segment::Data { offset: 0, ts_enter_ns: ts, ts_ns: ts + 1, tid: 7, bytes: bytes.to_vec() }
}

/// Feeds the client bytes (cut at `cut`) then the server bytes (cut at `cut` too).
fn run(cut: usize) -> Vec<L7Event> {
    let (c, s) = (client_bytes(), server_bytes());
    let mut p = detect(Role::Server, Direction::Ingress, &c).expect("preface detected");
    let mut out = Vec::new();
    let feed = |p: &mut Box<dyn Protocol>, dir, b: &[u8], out: &mut Vec<L7Event>| {
        let k = cut.min(b.len());
        p.feed(dir, &[data(&b[..k], 10)], out);
        p.feed(dir, &[data(&b[k..], 20)], out);
    };
    feed(&mut p, Direction::Ingress, &c, &mut out);
    feed(&mut p, Direction::Egress, &s, &mut out);
    p.close(&mut out);
    out
}

fn exchanges(events: &[L7Event]) -> Vec<&HttpExchange> {
    events
        .iter()
        .filter_map(|e| match e {
            L7Event::Http(x) => Some(x),
            _ => None,
        })
        .collect()
}

#[test]
fn streams_become_exchanges_at_every_split() {
    let total = client_bytes().len().max(server_bytes().len());
    for cut in 0..=total {
        let events = run(cut);
        let errors: Vec<_> = events.iter().filter(|e| matches!(e, L7Event::ParseError { .. })).collect();
        assert!(errors.is_empty(), "cut {cut}: {errors:?}");
        let xs = exchanges(&events);
        assert_eq!(xs.len(), 3, "cut {cut}: {events:?}");
        // Stream 3 ends first, then 1, then 5 (reset).
        let (x3, x1, x5) = (xs[0], xs[1], xs[2]);
        assert_eq!(x3.request.target(), b"/orders/42?email=a@b.c", "cut {cut}");
        assert_eq!((x3.request.method.as_str(), x3.response.as_ref().map(|r| r.status)), ("GET", Some(404)));
        assert_eq!(x3.request.version, 2);
        assert_eq!(x1.request.target(), b"/helloworld.Greeter/SayHello");
        assert_eq!(x1.request.header("traceparent"), Some(TP.as_bytes()));
        let h1 = x1.h2.as_ref().unwrap();
        assert_eq!(h1.stream_id, 1);
        let grpc = h1.grpc.as_ref().expect("grpc");
        assert_eq!((grpc.status, grpc.request_messages, grpc.response_messages), (Some(5), 2, 1), "cut {cut}");
        assert_eq!(x1.outcome, Outcome::Complete);
        assert_eq!(x1.request.body_len, 22);
        assert_eq!(x5.request.header("traceparent"), Some(TP.as_bytes()), "indexed from the dynamic table");
        assert_eq!(x5.h2.as_ref().unwrap().reset, Some(8));
        assert_eq!(x5.outcome, Outcome::ClosedBeforeResponse);
        assert!(xs.iter().all(|x| !x.h2.as_ref().unwrap().partial_headers));
    }
}

#[test]
fn joined_mid_connection_decodes_what_it_can_and_says_so() {
    // The agent starts after the preface, the SETTINGS and stream 1: it sees stream 5,
    // whose traceparent is an index into a table it never saw.
    let c = client_bytes();
    let at = c.windows(9).position(|w| w[3] == 0x1 && w[8] == 5).expect("stream 5 HEADERS");
    let mut p = detect(Role::Server, Direction::Ingress, &c[at..]).expect("frames recognised");
    assert!(detect(Role::Unknown, Direction::Ingress, &c[at..]).is_none(), "no role: no guess");
    let mut out = Vec::new();
    p.feed(Direction::Ingress, &[data(&c[at..], 1)], &mut out);
    p.feed(Direction::Egress, &[data(&frame(0x1, 0x5, 5, &[0x88]), 2)], &mut out);
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 1, "{out:?}");
    let x = xs[0];
    assert_eq!((x.request.method.as_str(), x.request.target()), ("GET", b"/x".as_slice()));
    assert_eq!(x.request.header("traceparent"), None);
    assert!(x.h2.as_ref().unwrap().partial_headers);
    assert!(out.contains(&L7Event::ParseError { protocol: "http2", reason: reason::PARTIAL_HEADERS }));
}

/// A server sends SETTINGS on accept, so the agent may see it before the client's
/// preface: the connection is recognised as joined, then found new when the preface
/// comes, and nothing is partial.
#[test]
fn server_settings_first_then_the_preface_is_a_fresh_connection() {
    let (c, s) = (client_bytes(), server_bytes());
    let settings = frame(0x4, 0, 0, &[]);
    let mut p = detect(Role::Server, Direction::Egress, &settings).expect("frames recognised");
    let mut out = Vec::new();
    p.feed(Direction::Egress, &[data(&settings, 1)], &mut out);
    p.feed(Direction::Ingress, &[data(&c, 2)], &mut out);
    p.feed(Direction::Egress, &[data(&s[9..], 3)], &mut out);
    p.close(&mut out);
    assert!(!out.iter().any(|e| matches!(e, L7Event::ParseError { .. })), "{out:?}");
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 3);
    assert!(xs.iter().all(|x| !x.h2.as_ref().unwrap().partial_headers), "{xs:?}");
    assert_eq!(xs[2].request.header("traceparent"), Some(TP.as_bytes()));
}

#[test]
fn detection_wants_the_preface_or_frames_from_a_known_role() {
    assert!(detect(Role::Server, Direction::Ingress, PREFACE).is_some());
    assert!(detect(Role::Unknown, Direction::Egress, &PREFACE[..10]).is_some());
    assert!(detect(Role::Server, Direction::Egress, PREFACE).is_none(), "a server does not send the preface");
    assert!(detect(Role::Server, Direction::Ingress, b"GET / HTTP/1.1\r\n").is_none());
    assert!(detect(Role::Server, Direction::Ingress, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").is_none());
    // Kafka: a 4-byte size, api key, version, correlation id.
    assert!(detect(Role::Server, Direction::Ingress, &hex("0000003a 0003 000c 00000001 0007 72646b61")).is_none());
    assert!(detect(Role::Client, Direction::Ingress, &frame(0x4, 0, 0, &[])).is_some());
    let registry = crate::protocols::detect(Role::Client, Direction::Egress, PREFACE).expect("registered");
    assert_eq!(registry.name(), "http2");
}

#[test]
fn bounds_are_counted() {
    let mut p: Box<dyn Protocol> = Box::new(Http2::new(Direction::Ingress));
    let mut c = PREFACE.to_vec();
    for i in 0..(MAX_STREAMS as u32 + 2) {
        c.extend(frame(0x1, 0x4, 2 * i + 1, &[0x82, 0x86, 0x84]));
    }
    // A header block over the bound.
    c.extend(frame(0x1, 0x0, 999, &vec![0; MAX_HEADER_BLOCK + 1]));
    let mut out = Vec::new();
    p.feed(Direction::Ingress, &[data(&c, 1)], &mut out);
    let count =
        |out: &[L7Event], r| out.iter().filter(|e| **e == L7Event::ParseError { protocol: "http2", reason: r }).count();
    assert_eq!(count(&out, reason::TOO_MANY_STREAMS), 2);
    assert_eq!(count(&out, reason::HEADER_BLOCK_TOO_LARGE), 1);
    // A hole in a frame head loses the framing, counted; a new segment with a frame
    // head resumes.
    p.feed(
        Direction::Ingress,
        &[Segment::Gap { offset: 0, len: 5, reason: crate::capture::stream::GapReason::Lost }],
        &mut out,
    );
    p.feed(Direction::Ingress, &[data(&frame(0x8, 0, 0, &[0, 0, 1, 0]), 2)], &mut out);
    assert_eq!(count(&out, reason::GAP_IN_FRAME), 1);
    p.close(&mut out);
    assert_eq!(exchanges(&out).len(), MAX_STREAMS);
}

// ---- recorded traffic -----------------------------------------------------------------

/// grpcio's client and server (tests/fixtures/h2_record.py): SayHello (OK), Missing
/// (NOT_FOUND, trailers-only), Count (three streamed messages), each with a traceparent
/// and `tenant` metadata; grpcio's HPACK indexes them and refers back by index.
#[test]
fn recorded_grpcio_calls_at_every_split() {
    let c = include_bytes!("../testdata/http2_grpc.c2s");
    let s = include_bytes!("../testdata/http2_grpc.s2c");
    for cut in 0..=c.len().max(s.len()) {
        let mut p = detect(Role::Client, Direction::Egress, c).expect("preface");
        let mut out = Vec::new();
        for (dir, b) in [(Direction::Egress, &c[..]), (Direction::Ingress, &s[..])] {
            let k = cut.min(b.len());
            p.feed(dir, &[data(&b[..k], 10)], &mut out);
            p.feed(dir, &[data(&b[k..], 20)], &mut out);
        }
        p.close(&mut out);
        assert!(!out.iter().any(|e| matches!(e, L7Event::ParseError { .. })), "cut {cut}: {out:?}");
        let xs = exchanges(&out);
        let calls: Vec<_> = xs
            .iter()
            .map(|x| {
                let g = x.h2.as_ref().and_then(|h| h.grpc.clone()).expect("grpc");
                let target = String::from_utf8_lossy(x.request.target()).into_owned();
                (target, g.status, g.request_messages, g.response_messages, x.outcome)
            })
            .collect();
        let want = |m: &str, status, responses| {
            (format!("/hoptrace.test.Greeter/{m}"), Some(status), 1, responses, Outcome::Complete)
        };
        assert_eq!(calls, vec![want("SayHello", 0, 1), want("Missing", 5, 0), want("Count", 0, 3)], "cut {cut}");
        for x in &xs {
            assert_eq!(x.request.header("traceparent"), Some(TP.as_bytes()));
            assert_eq!(x.request.header("tenant"), Some(b"acme".as_slice()));
            assert_eq!((x.request.method.as_str(), x.response.as_ref().map(|r| r.status)), ("POST", Some(200)));
        }
    }
}

/// Recognising frames without the preface must not claim other traffic: random bytes
/// (a million 32-byte segments) are almost never taken for HTTP/2 frames.
#[test]
fn random_bytes_are_rarely_taken_for_frames() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut claimed = 0;
    for _ in 0..1_000_000 {
        let mut seg = [0u8; 32];
        for b in seg.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        claimed += usize::from(detect(Role::Server, Direction::Ingress, &seg).is_some());
    }
    assert!(claimed <= 2, "{claimed} random segments claimed");
}

/// The exchange stays at 256 bytes (see `HttpExchange::informational`): HTTP/1's cost per
/// request must not grow because HTTP/2 exists.
#[test]
fn an_exchange_is_still_256_bytes() {
    assert_eq!(std::mem::size_of::<HttpExchange>(), 256);
}

/// Found by the fuzzer (fuzz/corpus/http2/regression-status-0): a response whose
/// `:status` is not a status. It is counted, the status is 0 and the headers partial,
/// never a made-up status.
#[test]
fn a_response_without_a_usable_status_is_counted_not_guessed() {
    let mut c = PREFACE.to_vec();
    c.extend(frame(0x1, 0x5, 1, &[0x82, 0x86, 0x84]));
    for status in ["0", "1000", "abc"] {
        let mut p: Box<dyn Protocol> = Box::new(Http2::new(Direction::Ingress));
        let mut out = Vec::new();
        p.feed(Direction::Ingress, &[data(&c, 1)], &mut out);
        let mut h = vec![0x08, status.len() as u8]; // :status (static 8), literal value
        h.extend_from_slice(status.as_bytes());
        p.feed(Direction::Egress, &[data(&frame(0x1, 0x5, 1, &h), 2)], &mut out);
        assert!(out.contains(&L7Event::ParseError { protocol: "http2", reason: reason::MISSING_STATUS }), "{out:?}");
        let x = exchanges(&out)[0];
        assert_eq!(x.response.as_ref().map(|r| r.status), Some(0));
        assert!(x.h2.as_ref().unwrap().partial_headers);
    }
}

/// `Upgrade: h2c` (RFC 7540 §3.2): the HTTP/1.1 request becomes stream 1, answered in
/// HTTP/2 frames right after the 101 (same segment); the client's preface comes later and
/// a second request goes on stream 3. No HTTP/1 exchange for the 101.
#[test]
fn upgrade_h2c_continues_in_http2_at_every_split() {
    let request = b"GET /up?secret=1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
    let mut server = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    server.extend(frame(0x4, 0, 0, &[]));
    server.extend(frame(0x1, 0x5, 1, &[0x88])); // 200, END_STREAM
    let mut client = PREFACE.to_vec();
    client.extend(frame(0x4, 0, 0, &[]));
    let mut h3 = vec![0x82, 0x86];
    h3.extend(lit(":path", "/second"));
    client.extend(frame(0x1, 0x5, 3, &h3));
    let reply3 = frame(0x1, 0x5, 3, &[0x8d]); // 404
    for cut in 0..=server.len() {
        let mut p = crate::protocols::detect(Role::Server, Direction::Ingress, request).expect("http1");
        let mut out = Vec::new();
        p.feed(Direction::Ingress, &[data(request, 1)], &mut out);
        p.feed(Direction::Egress, &[data(&server[..cut], 2), data(&server[cut..], 3)], &mut out);
        p.feed(Direction::Ingress, &[data(&client, 4)], &mut out);
        p.feed(Direction::Egress, &[data(&reply3, 5)], &mut out);
        p.close(&mut out);
        assert!(!out.iter().any(|e| matches!(e, L7Event::ParseError { .. })), "cut {cut}: {out:?}");
        let xs = exchanges(&out);
        let got: Vec<_> = xs
            .iter()
            .map(|x| {
                (x.request.target().to_vec(), x.response.as_ref().map(|r| r.status), x.h2.as_ref().map(|h| h.stream_id))
            })
            .collect();
        assert_eq!(
            got,
            vec![(b"/up?secret=1".to_vec(), Some(200), Some(1)), (b"/second".to_vec(), Some(404), Some(3))],
            "cut {cut}"
        );
    }
}
