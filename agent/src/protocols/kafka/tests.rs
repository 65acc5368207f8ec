//! The fixtures under `testdata/kafka/` are real traffic: each directory is one run
//! of `tests/fixtures/kafka_client.py` (confluent-kafka or kafka-python) against a
//! real broker (tansu), recorded by `tests/fixtures/kafka_record_proxy.py`
//! (`conn-N.txt`: one line per recv, `>` client to broker, `<` broker to client),
//! with what the client library itself reported about every record in
//! `client.jsonl` (partition, offset, traceparent).

use std::path::PathBuf;

use super::*;
use crate::capture::stream::GapReason;
use crate::protocols::{MqKind, MqMessage, MqOperation};

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
    assert_eq!((all[0].timing.first_tid, all[0].timing.first_enter_ns, all[0].timing.last_exit_ns), (7, 3000, 3001));
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
            last_seen: 0,
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
    p.feed(Direction::Ingress, &[Segment::Data { offset: 0, ts_enter_ns: 1, ts_ns: 2, tid: 1, bytes: resp }], &mut out);
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
