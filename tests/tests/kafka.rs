//! Kafka on the real kernel: a real Kafka-protocol broker (`tansu`, installed by
//! `cargo xtask setup`), a real producer (confluent-kafka, librdkafka) and a real
//! consumer (kafka-python), and `hoptrace run` turning their Produce and Fetch traffic
//! into PRODUCER and CONSUMER spans.

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    net::TcpStream,
    process::Command,
    time::Duration,
};

use hoptrace_e2e::*;
use serde_json::Value;
use support::*;

const PRODUCER: u64 = 4;
const CONSUMER: u64 = 5;
const PARTITIONS: usize = 3;
const RECORDS: usize = 9;

/// `tansu broker` on its own port with in-memory storage, run from its own directory.
fn start_broker(port: u16, dir: &TempDir) -> Running {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new("tansu");
    cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/", "--cluster-id", "hoptrace-e2e"])
        .current_dir(dir.path());
    without_otel_env(&mut cmd);
    let mut broker = Running::spawn(&mut cmd);
    let up = wait_until(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    if !up {
        let status = broker.exited();
        panic!("tansu did not listen on {port} ({status:?}): {}", broker.stderr());
    }
    broker
}

/// One record as a client library reported it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Record {
    partition: i64,
    offset: i64,
    traceparent: Option<String>,
}

fn client(mode: &str, port: u16, topic: &str, lib: &str, seed: u32) -> Vec<Record> {
    let mut cmd = venv("kafka_client.py");
    cmd.args([mode, "--bootstrap", &format!("127.0.0.1:{port}"), "--topic", topic])
        .args(["--partitions", &PARTITIONS.to_string(), "--count", &RECORDS.to_string()])
        .args(["--lib", lib, "--seed", &seed.to_string()]);
    without_otel_env(&mut cmd);
    let done = run(&mut cmd, TIMEOUT).expect_success();
    let mut records: Vec<Record> = done
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            Record {
                partition: v["partition"].as_i64().unwrap(),
                offset: v["offset"].as_i64().unwrap(),
                traceparent: v["traceparent"].as_str().map(str::to_string),
            }
        })
        .collect();
    records.sort();
    records
}

/// Links of every span, keyed by span id: (trace id, span id) pairs. The shared span
/// parser does not read links.
fn links(text: &str) -> HashMap<String, Vec<(String, String)>> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let req: Value = serde_json::from_str(line).unwrap();
        for rs in req["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    let l = s["links"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|l| {
                                    (l["traceId"].as_str().unwrap_or_default().to_string(),
                                     l["spanId"].as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.insert(s["spanId"].as_str().unwrap_or_default().to_string(), l);
                }
            }
        }
    }
    out
}

fn context(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].to_string(), parts[2].to_string())
}

#[test]
fn kafka_produce_and_fetch_become_producer_and_consumer_spans() {
    require_root();
    let broker_dir = TempDir::new("tansu");
    let port = free_port();
    let _broker = start_broker(port, &broker_dir);
    let topic = unique_marker("hoptrace-orders").to_lowercase();
    client("create", port, &topic, "kafka-python", 1);

    let dir = TempDir::new("kafka");
    let out = dir.join("otlp.jsonl");
    let agent = start_run(&[port], &out);
    let seed = std::process::id();
    let produced = client("produce", port, &topic, "confluent", seed);
    let consumed = client("consume", port, &topic, "kafka-python", seed);
    assert_eq!(produced, consumed, "the clients disagree");
    assert_eq!(produced.iter().filter(|r| r.traceparent.is_some()).count(), RECORDS.div_ceil(2));
    std::thread::sleep(Duration::from_millis(1500));
    let done = stop(agent);

    let text = fs::read_to_string(&out).expect("OTLP/JSON output");
    // Record keys, values and non-context headers never leave the agent.
    for leak in ["SECRET-KEY", "SECRET-VALUE", "SECRET-HDR", "secret-header"] {
        assert!(!text.contains(leak) && !done.stdout.contains(leak) && !done.stderr.contains(leak), "{leak} leaked");
    }
    let spans = parse_spans(&text);
    let links = links(&text);
    let ours = |s: &&Span| s.attrs.get("messaging.destination.name") == Some(&Value::from(topic.as_str()));

    // PRODUCER: one span per produced record, child of the record's own context (the
    // producer serves no inbound request), or a new trace.
    let producers: Vec<&Span> = spans.iter().filter(ours).filter(|s| s.kind == PRODUCER).collect();
    assert_eq!(producers.len(), RECORDS, "producer spans:\n{}", show(&spans));
    for s in &producers {
        assert_eq!(s.name, format!("produce {topic}"));
        assert_eq!(s.attrs["messaging.system"], Value::from("kafka"));
        assert_eq!(s.attrs["messaging.operation.type"], Value::from("send"));
        assert_eq!(s.attrs["messaging.operation.name"], Value::from("produce"));
        assert_eq!(int(s.attrs.get("server.port")), Some(port as i64));
        assert!(s.attrs.contains_key("messaging.message.body.size"), "{s:?}");
    }
    let producer_keys: BTreeSet<(i64, i64)> = producers
        .iter()
        .map(|s| {
            (
                s.attrs.get("messaging.destination.partition.id").and_then(|v| v.as_str().map(|p| p.parse().unwrap()).or(v.as_i64())).unwrap(),
                int(s.attrs.get("messaging.kafka.offset")).unwrap(),
            )
        })
        .collect();
    let record_keys: BTreeSet<(i64, i64)> = produced.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(producer_keys, record_keys, "partitions/offsets of the producer spans");
    for r in produced.iter().filter(|r| r.traceparent.is_some()) {
        let (trace, parent) = context(r.traceparent.as_deref().unwrap());
        assert!(
            producers.iter().any(|s| s.trace_id == trace && s.parent == parent),
            "no producer span under {r:?}:\n{}",
            show(&spans)
        );
    }

    // CONSUMER: every fetched record is covered once; a batch span links every traced
    // record's context and counts its messages, a single-message span is its child.
    let consumers: Vec<&Span> = spans.iter().filter(ours).filter(|s| s.kind == CONSUMER).collect();
    assert!(!consumers.is_empty(), "no consumer spans:\n{}", show(&spans));
    let mut covered = 0;
    let mut contexts = BTreeSet::new();
    for s in &consumers {
        assert_eq!(s.attrs["messaging.system"], Value::from("kafka"));
        assert_eq!(s.attrs["messaging.operation.type"], Value::from("receive"));
        assert_eq!(s.attrs["messaging.operation.name"], Value::from("fetch"));
        assert_eq!(int(s.attrs.get("server.port")), Some(port as i64));
        match int(s.attrs.get("messaging.batch.message_count")) {
            Some(n) => {
                covered += n;
                for l in &links[&s.span_id] {
                    contexts.insert(l.clone());
                }
            }
            None => {
                covered += 1;
                contexts.insert((s.trace_id.clone(), s.parent.clone()));
            }
        }
    }
    assert_eq!(covered, RECORDS as i64, "consumer spans:\n{}", show(&consumers.iter().map(|s| (*s).clone()).collect::<Vec<_>>()));
    assert!(consumers.iter().any(|s| int(s.attrs.get("messaging.batch.message_count")).is_some_and(|n| n >= 2)), "no batch span");
    for r in consumed.iter().filter(|r| r.traceparent.is_some()) {
        assert!(contexts.contains(&context(r.traceparent.as_deref().unwrap())), "{r:?} not linked: {contexts:?}");
    }
}
