//! Kafka on the real kernel: a real Kafka-protocol broker (`tansu`, installed by
//! `cargo xtask setup`), a real producer (confluent-kafka, librdkafka) and a real
//! consumer (kafka-python), and `hoptrace run` turning their Produce and Fetch traffic
//! into PRODUCER and CONSUMER spans.

use std::{collections::BTreeSet, fs, net::TcpStream, process::Command, time::Duration};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const PRODUCER: u64 = 4;
const CONSUMER: u64 = 5;
const PARTITIONS: usize = 3;
const RECORDS: usize = 9;
/// Fixed: the broker is fresh per test, and a name with digits would be templated.
const TOPIC: &str = "hoptrace-orders";

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

fn client(mode: &str, port: u16, lib: &str, seed: u32, count: usize, context: &str) -> Vec<Record> {
    let mut cmd = venv("kafka_client.py");
    cmd.args([mode, "--bootstrap", &format!("127.0.0.1:{port}"), "--topic", TOPIC])
        .args(["--partitions", &PARTITIONS.to_string(), "--count", &count.to_string()])
        .args(["--lib", lib, "--seed", &seed.to_string(), "--context", context]);
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

/// (trace id, span id) of a `traceparent`.
fn context(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].to_string(), parts[2].to_string())
}

/// Messages a messaging span covers.
fn message_count(s: &Span) -> i64 {
    int(s.attrs.get("messaging.batch.message_count")).unwrap_or(1)
}

#[test]
fn kafka_produce_and_fetch_become_producer_and_consumer_spans() {
    require_root();
    let broker_dir = TempDir::new("tansu");
    let port = free_port();
    let _broker = start_broker(port, &broker_dir);
    client("create", port, "kafka-python", 1, 0, "none");

    let dir = TempDir::new("kafka");
    let out = dir.join("otlp.jsonl");
    let agent = start_run(&[port], &out);
    // A: librdkafka producer whose records carry trace context (half of them), as an
    // SDK-instrumented producer would; B: kafka-python producer without any context.
    let a = client("produce", port, "confluent", 11, RECORDS, "mixed");
    let b = client("produce", port, "kafka-python", 12, RECORDS, "none");
    let consumed = client("consume", port, "kafka-python", 13, 2 * RECORDS, "none");
    let mut produced: Vec<Record> = a.iter().chain(&b).cloned().collect();
    produced.sort();
    assert_eq!(produced, consumed, "the clients disagree");
    let traced: Vec<&Record> = a.iter().filter(|r| r.traceparent.is_some()).collect();
    assert_eq!(traced.len(), RECORDS.div_ceil(2));
    assert!(b.iter().all(|r| r.traceparent.is_none()));
    let covered = |spans: &[Span], kind: u64| -> i64 {
        spans
            .iter()
            .filter(|s| s.kind == kind && s.attrs.get("messaging.destination.name") == Some(&Value::from(TOPIC)))
            .map(message_count)
            .sum()
    };
    wait_for_spans_in(&out, "spans covering B's produced and every consumed record", |s| {
        covered(s, PRODUCER) >= RECORDS as i64 && covered(s, CONSUMER) >= 2 * RECORDS as i64
    });
    let done = stop(agent);

    let text = fs::read_to_string(&out).expect("OTLP/JSON output");
    // Record keys, values and non-context headers never leave the agent.
    for leak in ["SECRET-KEY", "SECRET-VALUE", "SECRET-HDR", "secret-header"] {
        assert!(!text.contains(leak) && !done.stdout.contains(leak) && !done.stderr.contains(leak), "{leak} leaked");
    }
    let spans = parse_spans(&text);
    let ours = |s: &&Span| s.attrs.get("messaging.destination.name") == Some(&Value::from(TOPIC));
    let common = |s: &Span, op_type: &str, op_name: &str| {
        assert_eq!(s.name, format!("{op_name} {TOPIC}"), "{s:?}");
        assert_eq!(s.attrs["messaging.system"], Value::from("kafka"), "{s:?}");
        assert_eq!(s.attrs["messaging.operation.type"], Value::from(op_type), "{s:?}");
        assert_eq!(s.attrs["messaging.operation.name"], Value::from(op_name), "{s:?}");
        assert_eq!(int(s.attrs.get("server.port")), Some(port as i64), "{s:?}");
        assert_eq!(s.attrs["server.address"], Value::from("127.0.0.1"), "{s:?}");
        if message_count(s) == 1 {
            assert!(int(s.attrs.get("messaging.kafka.offset")).is_some(), "{s:?}");
            assert!(s.attrs.contains_key("messaging.destination.partition.id"), "{s:?}");
            assert!(int(s.attrs.get("messaging.message.body.size")).is_some_and(|n| n > 0), "{s:?}");
        }
    };

    // PRODUCER: B's produces, in new traces. A makes its own context (like an SDK), so
    // the agent adds no duplicate spans for it.
    let producers: Vec<&Span> = spans.iter().filter(ours).filter(|s| s.kind == PRODUCER).collect();
    for s in &producers {
        common(s, "send", "produce");
        assert_eq!(s.parent, "", "{s:?}");
        for r in &traced {
            assert_ne!(s.trace_id, context(r.traceparent.as_deref().unwrap()).0, "duplicate of A's span: {s:?}");
        }
    }
    assert_eq!(
        producers.iter().map(|s| message_count(s)).sum::<i64>(),
        RECORDS as i64,
        "producer spans:\n{}",
        show(&spans)
    );

    // CONSUMER: every fetched record covered once; a batch span links every traced
    // record's context; a single-message span is the child of its context.
    let consumers: Vec<&Span> = spans.iter().filter(ours).filter(|s| s.kind == CONSUMER).collect();
    let mut contexts = BTreeSet::new();
    for s in &consumers {
        common(s, "receive", "fetch");
        if message_count(s) > 1 {
            contexts.extend(s.links.iter().map(|(t, sp, _)| (t.clone(), sp.clone())));
        } else if !s.parent.is_empty() {
            contexts.insert((s.trace_id.clone(), s.parent.clone()));
        }
    }
    assert_eq!(
        consumers.iter().map(|s| message_count(s)).sum::<i64>(),
        2 * RECORDS as i64,
        "consumer spans:\n{}",
        show(&spans)
    );
    assert!(consumers.iter().any(|s| message_count(s) >= 2), "no batch span");
    let want: BTreeSet<(String, String)> = traced.iter().map(|r| context(r.traceparent.as_deref().unwrap())).collect();
    assert_eq!(contexts, want, "consumer links/parents vs the records' contexts");
    // Records without context: the consumer's gap.
    assert!(
        consumers.iter().any(|s| s.attrs.get("hoptrace.gap.kind") == Some(&Value::from("mq_message_without_context"))),
        "no mq_message_without_context gap:\n{}",
        show(&spans)
    );
}
