//! Message queues on the real kernel with real brokers and real clients: RabbitMQ
//! (Debian's rabbitmq-server, pika) and NATS (Debian's nats-server, nats-py). The agent
//! must join consumers to the producer's trace through the message headers, link every
//! message of a batch, parent a publish to the request its thread was serving, report
//! messages without context as gaps, and never let a body or private header out.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const BROKER_START: Duration = Duration::from_secs(180);

/// A RabbitMQ node of the test's own: own ports, own data under a TempDir, its own epmd
/// (in the foreground, so it goes away with the test). Dropping it kills them.
struct RabbitMq {
    _server: Running,
    _epmd: Running,
    port: u16,
    _dir: TempDir,
}

impl RabbitMq {
    fn start() -> (RabbitMq, Duration) {
        let t = Instant::now();
        let dir = TempDir::new("rabbitmq");
        let (port, dist, epmd_port) = (free_port(), free_port(), free_port());
        fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        fs::write(dir.join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
        let epmd = Running::spawn(Command::new("epmd").args(["-port", &epmd_port.to_string()]));
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
        cmd.env("HOME", dir.path())
            .env("RABBITMQ_NODENAME", format!("hoptrace-{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", p("pid"));
        let mut server = Running::spawn(&mut cmd);
        let ready = wait_until(BROKER_START, || {
            assert!(server.exited().is_none(), "rabbitmq-server exited:\n{}\n{}", server.stdout(), server.stderr());
            amqp_answers(port)
        });
        assert!(ready, "RabbitMQ not ready after {BROKER_START:?}:\n{}", server.stdout());
        (RabbitMq { _server: server, _epmd: epmd, port, _dir: dir }, t.elapsed())
    }
}

/// The broker answers the AMQP protocol header with a method frame (connection.start).
/// The connection has no consumer: the agent is not running yet, or ignores it.
fn amqp_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 1];
    s.write_all(b"AMQP\x00\x00\x09\x01").is_ok() && s.read_exact(&mut b).is_ok() && b[0] == 1
}

struct Nats {
    _server: Running,
    port: u16,
}

impl Nats {
    fn start() -> (Nats, Duration) {
        let t = Instant::now();
        let port = free_port();
        let server = Running::spawn(Command::new("nats-server").args(["-a", "127.0.0.1", "-p", &port.to_string()]));
        let ready = wait_until(BROKER_START, || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            let mut b = [0u8; 5];
            s.read_exact(&mut b).is_ok() && &b == b"INFO "
        });
        assert!(ready, "nats-server not ready:\n{}", server.stderr());
        (Nats { _server: server, port }, t.elapsed())
    }
}

fn client(args: &[&str]) -> Command {
    let mut c = venv("mq_client.py");
    without_otel_env(&mut c);
    c.args(args);
    c
}

/// "SENT <trace> <span>" lines of an SDK publisher.
fn sent(done: &Finished) -> Vec<(String, String)> {
    done.stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("SENT ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

fn str_attr<'a>(s: &'a Span, k: &str) -> Option<&'a str> {
    s.attrs.get(k).and_then(Value::as_str)
}

fn start_agent(dir: &TempDir, ports: &[u16]) -> (Running, std::path::PathBuf, u16) {
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    (start_run_listening(ports, &out, listen, &[]), out, listen)
}

/// The rows of the agent's `/gaps`; panics unless the agent answers with a gap table.
fn gaps(listen: u16) -> Vec<Value> {
    let body = http_get_body(listen, "/gaps");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/gaps is not JSON ({e}): {body}"));
    v["gaps"].as_array().cloned().unwrap_or_else(|| panic!("/gaps has no gaps list: {v}"))
}

/// Nothing private left the agent: not in spans, not in logs.
fn assert_private(marker: &str, out: &Path, agent_stderr: &str) {
    let exported = fs::read(out).unwrap();
    assert_eq!(count_occurrences(&exported, marker.as_bytes()), 0, "marker in the exported spans");
    assert_eq!(count_occurrences(agent_stderr.as_bytes(), marker.as_bytes()), 0, "marker in the agent's logs");
}

#[test]
fn mq_rabbitmq_context_through_headers_links_for_batches_and_gaps() {
    require_root();
    let (rabbit, took) = RabbitMq::start();
    eprintln!("mq: RabbitMQ ready in {:.1} s", took.as_secs_f64());
    let dir = TempDir::new("mq-rabbit");
    let http_port = free_port();
    let (agent, out, listen) = start_agent(&dir, &[rabbit.port, http_port]);
    let port = rabbit.port.to_string();
    let secret = unique_marker("amqp-secret");

    // A: SDK publisher (context in the AMQP headers) → uninstrumented consumer.
    let mut consumer_a = Running::spawn(&mut client(&["rabbit-consume", &port, "qa", "1"]));
    consumer_a.wait_for_line("READY", TIMEOUT);
    let published =
        run(&mut client(&["rabbit-publish", &port, "qa", "1", "--sdk", "--secret", &secret]), TIMEOUT).expect_success();
    let sdk_a = sent(&published);
    assert_eq!(sdk_a.len(), 1, "{}", published.stdout);
    let consumer_a_pid = consumer_a.pid();
    consumer_a.finish(TIMEOUT).expect_success();

    // B: an uninstrumented service publishes while serving a traced HTTP request.
    let mut consumer_b = Running::spawn(&mut client(&["rabbit-consume", &port, "qb", "1"]));
    consumer_b.wait_for_line("READY", TIMEOUT);
    let mut publisher = Running::spawn(&mut client(&["http-publisher", &http_port.to_string(), &port, "qb"]));
    publisher.wait_for_line("READY", TIMEOUT);
    let curl = run(
        Command::new("curl")
            .args(["-sf", "-m", "10", "-H", &format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01")])
            .arg(format!("http://127.0.0.1:{http_port}/publish")),
        TIMEOUT,
    );
    assert!(curl.status.success(), "{}", curl.stderr);
    let consumer_b_pid = consumer_b.pid();
    consumer_b.finish(TIMEOUT).expect_success();

    // C: three SDK-published messages queued while a prefetching consumer reads nothing;
    // it then reads them in one syscall: one batch.
    let go = dir.join("go");
    let mut consumer_c = Running::spawn(&mut client(&[
        "rabbit-consume",
        &port,
        "qc",
        "3",
        "--prefetch",
        "10",
        "--go",
        &go.to_string_lossy(),
    ]));
    consumer_c.wait_for_line("READY", TIMEOUT);
    let published = run(&mut client(&["rabbit-publish", &port, "qc", "3", "--sdk"]), TIMEOUT).expect_success();
    let sdk_c = sent(&published);
    assert_eq!(sdk_c.len(), 3, "{}", published.stdout);
    fs::write(&go, "").unwrap();
    let consumer_c_pid = consumer_c.pid();
    consumer_c.finish(TIMEOUT).expect_success();

    // D: basic.get of a message published without context.
    run(&mut client(&["rabbit-publish", &port, "qd", "1"]), TIMEOUT).expect_success();
    let getter = Running::spawn(&mut client(&["rabbit-get", &port, "qd", "1"]));
    let getter_pid = getter.pid();
    getter.finish(TIMEOUT).expect_success();

    let expect = |spans: &[Span]| {
        spans.iter().filter(|s| s.kind == CONSUMER).count() >= 4
            && spans.iter().any(|s| s.kind == PRODUCER && s.name == "publish")
    };
    wait_for_spans_in(&out, "four CONSUMER spans and the publish", expect);
    let gap_rows = gaps(listen);
    drop(publisher);
    let done = stop(agent);
    let spans = spans_in(&out);
    let consumer_of = |pid: u32| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| {
                s.kind == CONSUMER && s.resource.get("process.pid").and_then(|v| int(Some(v))) == Some(pid as i64)
            })
            .collect()
    };

    // A: the consumer's span is the SDK producer span's child, in its trace.
    let a = consumer_of(consumer_a_pid);
    assert_eq!(a.len(), 1, "{}", show(&spans));
    let a = a[0];
    assert_eq!((a.trace_id.as_str(), a.parent.as_str()), (sdk_a[0].0.as_str(), sdk_a[0].1.as_str()), "{a:?}");
    assert_eq!(a.name, "deliver");
    assert_eq!(str_attr(a, "messaging.system"), Some("rabbitmq"));
    assert_eq!(str_attr(a, "messaging.operation.type"), Some("process"));
    assert_eq!(str_attr(a, "messaging.operation.name"), Some("deliver"));
    assert_eq!(str_attr(a, "messaging.destination.name"), Some(""));
    assert_eq!(str_attr(a, "messaging.rabbitmq.destination.routing_key"), Some("qa"));
    assert_eq!(int(a.attrs.get("messaging.message.body.size")), Some(format!("message 0 {secret}").len() as i64));
    assert_eq!(int(a.attrs.get("server.port")), Some(rabbit.port as i64));
    assert_eq!(str_attr(a, "network.transport"), Some("tcp"));
    assert!(!a.attrs.contains_key("hoptrace.gap.kind"), "{a:?}");
    // The SDK publisher makes its own spans: the agent adds none.
    assert!(!spans.iter().any(|s| s.kind == PRODUCER && s.trace_id == sdk_a[0].0), "{}", show(&spans));

    // B: PRODUCER child of the publisher's SERVER span; no context injected → gap on both
    // ends, and the consumer starts a new trace.
    let server =
        spans.iter().find(|s| s.kind == SERVER && s.trace_id == TRACE).unwrap_or_else(|| panic!("{}", show(&spans)));
    let producer =
        spans.iter().find(|s| s.kind == PRODUCER && s.trace_id == TRACE).unwrap_or_else(|| panic!("{}", show(&spans)));
    assert_eq!(producer.parent, server.span_id);
    assert_eq!(producer.name, "publish");
    assert_eq!(str_attr(producer, "messaging.operation.type"), Some("send"));
    assert_eq!(str_attr(producer, "messaging.rabbitmq.destination.routing_key"), Some("qb"));
    assert_eq!(str_attr(producer, "hoptrace.gap.kind"), Some("mq_message_without_context"));
    let b = consumer_of(consumer_b_pid);
    assert_eq!(b.len(), 1, "{}", show(&spans));
    assert!(b[0].parent.is_empty() && b[0].trace_id != TRACE, "{:?}", b[0]);
    assert_eq!(str_attr(b[0], "hoptrace.gap.kind"), Some("mq_message_without_context"));
    let mq_gaps: Vec<&Value> = gap_rows.iter().filter(|r| r["kind"] == "mq_message_without_context").collect();
    assert!(
        mq_gaps.iter().any(|r| r["service"] == producer.service.as_str() && r["example_trace_id"] == TRACE),
        "{gap_rows:?}"
    );
    assert!(mq_gaps.iter().any(|r| r["service"] == b[0].service.as_str()), "{gap_rows:?}");

    // C: one span for the batch, a link to each message's context (with its tracestate).
    let c = consumer_of(consumer_c_pid);
    assert_eq!(c.len(), 1, "one read, one batch: {}", show(&spans));
    let c = c[0];
    assert_eq!(int(c.attrs.get("messaging.batch.message_count")), Some(3));
    assert!(!c.attrs.contains_key("messaging.message.body.size"));
    assert_eq!(c.name, "deliver");
    let mut links: Vec<(String, String)> = c.links.iter().map(|l| (l.0.clone(), l.1.clone())).collect();
    let mut want = sdk_c.clone();
    links.sort();
    want.sort();
    assert_eq!(links, want, "{c:?}");
    assert!(c.links.iter().all(|l| l.2 == "mq=1"), "{c:?}");
    assert!(!sdk_c.iter().any(|(t, _)| *t == c.trace_id), "a batch is not any one message's child");

    // D: basic.get is a pull: receive.
    let d = consumer_of(getter_pid);
    assert_eq!(d.len(), 1, "{}", show(&spans));
    assert_eq!((d[0].name.as_str(), str_attr(d[0], "messaging.operation.type")), ("get", Some("receive")));
    assert_eq!(str_attr(d[0], "hoptrace.gap.kind"), Some("mq_message_without_context"));

    assert_private(&secret, &out, &done.stderr);
    let stopped = stopped_log(&done);
    eprintln!("mq: agent counters {}", stopped);
}

#[test]
fn mq_nats_headers_join_the_trace_and_plain_messages_are_gaps() {
    require_root();
    let (nats, took) = Nats::start();
    eprintln!("mq: nats-server ready in {:.2} s", took.as_secs_f64());
    let dir = TempDir::new("mq-nats");
    let (agent, out, listen) = start_agent(&dir, &[nats.port]);
    let port = nats.port.to_string();
    let secret = unique_marker("nats-secret");

    let mut sub = Running::spawn(&mut client(&["nats-sub", &port, "orders.created", "1"]));
    sub.wait_for_line("READY", TIMEOUT);
    let published =
        run(&mut client(&["nats-pub", &port, "orders.created", "1", "--sdk", "--secret", &secret]), TIMEOUT)
            .expect_success();
    let sdk = sent(&published);
    assert_eq!(sdk.len(), 1, "{}", published.stdout);
    let sub_pid = sub.pid();
    sub.finish(TIMEOUT).expect_success();

    let mut plain_sub = Running::spawn(&mut client(&["nats-sub", &port, "orders.plain", "1"]));
    plain_sub.wait_for_line("READY", TIMEOUT);
    let plain_pub = Running::spawn(&mut client(&["nats-pub", &port, "orders.plain", "1", "--secret", &secret]));
    let plain_pub_pid = plain_pub.pid();
    plain_pub.finish(TIMEOUT).expect_success();
    let plain_sub_pid = plain_sub.pid();
    plain_sub.finish(TIMEOUT).expect_success();

    wait_for_spans_in(&out, "three messaging spans", |s| {
        s.iter().filter(|s| s.kind == CONSUMER || s.kind == PRODUCER).count() >= 3
    });
    let gap_rows = gaps(listen);
    let done = stop(agent);
    let spans = spans_in(&out);
    let of = |pid: u32, kind: u64| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.kind == kind && s.resource.get("process.pid").and_then(|v| int(Some(v))) == Some(pid as i64))
            .collect()
    };

    let hmsg = of(sub_pid, CONSUMER);
    assert_eq!(hmsg.len(), 1, "{}", show(&spans));
    assert_eq!((hmsg[0].trace_id.as_str(), hmsg[0].parent.as_str()), (sdk[0].0.as_str(), sdk[0].1.as_str()));
    assert_eq!(hmsg[0].name, "HMSG orders.created");
    assert_eq!(str_attr(hmsg[0], "messaging.system"), Some("nats"));
    assert_eq!(str_attr(hmsg[0], "messaging.operation.type"), Some("process"));
    assert_eq!(str_attr(hmsg[0], "messaging.destination.name"), Some("orders.created"));
    assert!(!hmsg[0].attrs.contains_key("hoptrace.gap.kind"));

    let msg = of(plain_sub_pid, CONSUMER);
    assert_eq!(msg.len(), 1, "{}", show(&spans));
    assert_eq!(msg[0].name, "MSG orders.plain");
    assert!(msg[0].parent.is_empty());
    assert_eq!(str_attr(msg[0], "hoptrace.gap.kind"), Some("mq_message_without_context"));
    assert!(
        gap_rows.iter().any(|r| r["kind"] == "mq_message_without_context" && r["route"] == "MSG orders.plain"),
        "{gap_rows:?}"
    );
    // The plain publisher served no request: a root PRODUCER span, not a gap.
    let p = of(plain_pub_pid, PRODUCER);
    assert_eq!(p.len(), 1, "{}", show(&spans));
    assert_eq!((p[0].name.as_str(), str_attr(p[0], "messaging.operation.type")), ("PUB orders.plain", Some("send")));
    assert!(!p[0].attrs.contains_key("hoptrace.gap.kind"));
    // The SDK publisher: no duplicate span.
    assert!(!spans.iter().any(|s| s.kind == PRODUCER && s.trace_id == sdk[0].0), "{}", show(&spans));

    assert_private(&secret, &out, &done.stderr);
}
