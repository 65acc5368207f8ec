//! Hostile traffic against a real nginx with the agent watching: random bytes, garbage
//! after a valid method, truncated and half-closed requests, a 1 MiB header block, tens
//! of thousands of distinct paths, and hundreds of connections opened and abandoned. The
//! agent must not crash, must keep its memory and its route/label cardinality bounded,
//! and must count every drop under a reason (stop log and /metrics).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::support::*;
use hoptrace_e2e::*;

/// Deterministic bytes (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Writes `bytes` (ignoring a server that closes first), half-closes, and returns what the
/// server answered before closing.
fn send_and_read(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn answered_400(reply: &[u8]) -> bool {
    reply.starts_with(b"HTTP/1.1 400")
}

/// A distinct path that the route templater keeps as it is: letters g–z only (no hex,
/// no digits, short), so every `i` is its own route.
fn word_path(mut i: usize) -> String {
    let mut w = String::from("/r/z");
    for _ in 0..5 {
        w.push((b'g' + (i % 20) as u8) as char);
        i /= 20;
    }
    w
}

#[test]
fn hostile_traffic_no_crash_bounded_every_drop_counted() {
    require_root();
    let port = free_port();
    let _nginx = Nginx::start(port, "keepalive_requests 1000000; location / { return 200 \"ok\\n\"; }");
    let listen = free_port();
    let dir = TempDir::new("hostile");
    let out = dir.join("spans.jsonl");
    const MAX_CONNECTIONS: u64 = 100;
    // nginx is no entry point: each request without context is a propagation gap with a
    // route label, which is what the label cardinality check below looks at.
    let agent = start_nginx_side_agent(
        port,
        &out,
        listen,
        &[
            "--max-connections",
            "100",
            "--idle-timeout",
            "2",
            // Spans are built (routes, redaction) and counted, but not written out.
            "--sample-ratio",
            "0",
        ],
    );
    let rss_start = rss_kib(agent.pid());
    let mut rss_max = rss_start;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // 1. Random bytes: nginx answers 400, which the agent sees with no request.
    let mut random_400 = 0;
    for _ in 0..100 {
        let garbage = rng.bytes(8192);
        random_400 += usize::from(answered_400(&send_and_read(port, &garbage)));
    }
    // 2. A valid method, then garbage: detected as HTTP, then refused by the parser.
    for _ in 0..100 {
        let mut req = b"GET ".to_vec();
        req.extend(rng.bytes(4096));
        send_and_read(port, &req);
    }
    // 3. Truncated request heads, then close.
    const TRUNCATED: u64 = 100;
    for i in 0..TRUNCATED {
        let reply = send_and_read(port, format!("GET /t/{i} HTTP/1.1\r\nHost: x\r\nX-Partial: abc").as_bytes());
        assert!(reply.is_empty(), "nginx answered a truncated head: {:?}", String::from_utf8_lossy(&reply));
    }
    // 4. Enormous header blocks: 1 MiB of headers in one request.
    const HUGE: usize = 5;
    for _ in 0..HUGE {
        let mut req = b"GET /huge HTTP/1.1\r\nHost: x\r\n".to_vec();
        while req.len() < 1 << 20 {
            req.extend_from_slice(format!("X-Fill-{}: {}\r\n", req.len(), "a".repeat(1000)).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        // nginx answers 400 (header too large) or resets; either way not a 200.
        let reply = send_and_read(port, &req);
        assert!(!reply.starts_with(b"HTTP/1.1 200"), "nginx accepted a 1 MiB header block");
    }
    rss_max = rss_max.max(rss_kib(agent.pid()));
    let m = wait_metrics(listen, TIMEOUT, "the table emptied after the garbage phases", |m| {
        m.get("hoptrace_connections_tracked") == 0
            && m.get("hoptrace_connections_opened_total") >= 100 + 100 + TRUNCATED + HUGE as u64
    });
    let garbage_conns = m.get("hoptrace_connections_opened_total");
    assert_eq!(garbage_conns, 100 + 100 + TRUNCATED + HUGE as u64, "{}", m.0);
    // Already visible on /metrics, by reason, while the agent runs.
    assert!(m.sum("hoptrace_parse_errors_total") >= random_400 as u64 + 100 + TRUNCATED + HUGE as u64, "{}", m.0);
    assert!(
        m.get("hoptrace_parse_errors_total{protocol=\"http1\",reason=\"closed_mid_header\"}") >= TRUNCATED,
        "{}",
        m.0
    );

    // 5. Distinct paths, pipelined over keep-alive connections; the sender waits for the
    //    agent to keep up (flow control through /metrics, never a timing assumption) so
    //    the ring buffer never overflows and every exchange is seen.
    const PATHS: usize = 50_000;
    // Within the agent's pipelining window (64), so that every request is an exchange.
    const BATCH: usize = 50;
    let mut conn = KeepAlive::connect(port);
    let mut sent = 0;
    while sent < PATHS {
        let mut batch = Vec::new();
        for i in sent..(sent + BATCH).min(PATHS) {
            batch.extend_from_slice(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", word_path(i)).as_bytes());
        }
        conn.send_raw(&batch);
        let n = (sent + BATCH).min(PATHS) - sent;
        for _ in 0..n {
            assert_eq!(conn.read_response(), 200);
        }
        sent += n;
        if sent % 5_000 == 0 {
            rss_max = rss_max.max(rss_kib(agent.pid()));
            wait_metrics(listen, Duration::from_secs(120), "the agent catching up", |m| {
                m.get("hoptrace_http_exchanges_total") + 5_000 >= sent as u64
            });
        }
    }
    drop(conn);
    let m = wait_metrics(listen, Duration::from_secs(120), "every distinct path seen", |m| {
        m.get("hoptrace_http_exchanges_total") >= PATHS as u64
    });
    rss_max = rss_max.max(rss_kib(agent.pid()));
    let (route_values, route_series) = route_cardinality(&m.0);

    // 6. Connections opened and abandoned: more than the table holds, idle (half of them
    //    with a half-sent request), then dropped.
    const ABANDONED: usize = 240;
    let held: Vec<TcpStream> = (0..ABANDONED)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            if i % 2 == 0 {
                s.write_all(b"GET /abandoned HTTP/1.1\r\nHost: x\r\n").unwrap();
            }
            s
        })
        .collect();
    let evicted_before = Metrics::scrape(listen).get("hoptrace_connections_evicted_idle_total");
    let m = wait_metrics(listen, TIMEOUT, "the refusals counted", |m| {
        assert!(m.get("hoptrace_connections_tracked") <= MAX_CONNECTIONS, "table over its limit: {}", m.0);
        m.get("hoptrace_userspace_drops_total{reason=\"conn_table_full\"}") >= ABANDONED as u64 - MAX_CONNECTIONS
    });
    rss_max = rss_max.max(rss_kib(agent.pid()));
    // Idle for longer than --idle-timeout: the tracked ones are evicted and counted.
    let m_evicted = wait_metrics(listen, TIMEOUT, "idle connections evicted", |m| {
        m.get("hoptrace_connections_tracked") == 0
            && m.get("hoptrace_connections_evicted_idle_total") >= evicted_before + MAX_CONNECTIONS
    });
    drop(held);
    let m_end = wait_metrics(listen, TIMEOUT, "a quiet table", |m| m.get("hoptrace_connections_tracked") == 0);
    // The connection table's books: every connection it took in left it by a close or an
    // eviction; every one it refused was counted.
    assert_eq!(
        m_end.get("hoptrace_connections_opened_total"),
        m_end.get("hoptrace_connections_closed_total") + m_end.get("hoptrace_connections_evicted_idle_total"),
        "{}",
        m_end.0
    );
    let refused = m.get("hoptrace_userspace_drops_total{reason=\"conn_table_full\"}");
    assert!(refused >= (ABANDONED as u64).saturating_sub(MAX_CONNECTIONS), "{}", m.0);
    assert!(agent_alive(&agent), "the agent died");
    http_get_body(listen, "/healthz");
    let stopped = agent.stop();
    let t = &stopped.log["traces"];
    let capture = &stopped.log["capture"];
    eprintln!(
        "hostile: RSS {rss_start} KiB at start, {rss_max} KiB max; random→400: {random_400}; distinct routes in /metrics: {route_values}, largest family: {route_series} series; evicted {}; refused {refused}\ntraces: {t}\ncapture drops: {}",
        m_evicted.get("hoptrace_connections_evicted_idle_total"),
        capture["drops"]
    );

    let errors = |reason: &str| t["parse_errors"][format!("http1/{reason}")].as_u64().unwrap_or(0);
    let total_errors: u64 = t["parse_errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    // Every garbage connection left a counted parse error: the 400s to random bytes had no
    // request, each "GET <garbage>" was refused, each truncated head was cut by a close,
    // each 1 MiB head was refused or cut.
    assert!(errors("unmatched_response") >= random_400 as u64, "{t}");
    assert!(errors("closed_mid_header") >= TRUNCATED, "{t}");
    assert!(
        total_errors >= random_400 as u64 + 100 + TRUNCATED + HUGE as u64,
        "parse errors {total_errors} for {} garbage connections: {t}",
        garbage_conns
    );
    // Random bytes nginx did not answer: neither side spoke HTTP.
    assert!(t["connections_unknown_protocol"].as_u64().unwrap() + errors("unmatched_response") >= 100, "{t}");

    // The route cap: nginx's first 1000 distinct routes are kept, every later one goes to
    // the overflow bucket and is counted; no exchange was lost (kernel drops are zero, or
    // counted and visible as holes).
    let exchanges = t["exchanges"].as_u64().unwrap();
    let kernel_drops: u64 = capture["drops"].as_object().unwrap().values().map(|v| v.as_u64().unwrap_or(0)).sum();
    if kernel_drops == 0 {
        assert_eq!(exchanges, PATHS as u64, "{t}");
    }
    assert_eq!(errors("too_many_pipelined"), 0, "{t}");
    assert_eq!(t["routes_overflowed"].as_u64().unwrap(), exchanges - 1000, "{t}");
    // /metrics: the routes it names are the capped set (1000 kept + the overflow route,
    // a few more from the other clients), and no metric family has more series than the
    // RED metrics' series cap (`metrics.max_series`, 2000 by default, + its overflow series).
    assert!(route_values <= 1001 + 16, "{route_values} distinct route values in /metrics");
    assert!(route_series <= 2000 + 1, "{route_series} series in one metric family with a route label");

    // Memory: 50 000 routes, 500 connections and 5 MiB of garbage later, the agent is
    // within a fixed budget above its start.
    let bound = rss_start + 64 * 1024;
    assert!(rss_max <= bound, "agent RSS {rss_max} KiB (start {rss_start} KiB, bound {bound} KiB)");
}

fn agent_alive(agent: &RunAgent) -> bool {
    std::path::Path::new(&format!("/proc/{}", agent.pid())).exists()
}

/// Distinct route label values in a /metrics text, and the most series any one metric
/// family has among lines carrying a route label (histogram buckets, `_sum` and `_count`
/// of one series count once).
fn route_cardinality(metrics: &str) -> (usize, usize) {
    use std::collections::{HashMap, HashSet};
    let mut routes = HashSet::new();
    let mut families: HashMap<&str, HashSet<String>> = HashMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#') && l.contains("route=\"")) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.rsplit_once('}') else {
            continue;
        };
        let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        let mut series = Vec::new();
        let mut rest = labels;
        // Label values are quoted and may hold commas: walk key="value" pairs.
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut end = 0;
            let bytes = after.as_bytes();
            while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
                end += 1;
            }
            let value = &after[..end.min(after.len())];
            let key = key.trim_start_matches(',');
            if key.ends_with("route") {
                routes.insert(value.to_string());
            }
            if key != "le" {
                series.push(format!("{key}={value}"));
            }
            rest = after.get(end + 1..).unwrap_or("");
        }
        families.entry(family).or_default().insert(series.join(","));
    }
    (routes.len(), families.values().map(HashSet::len).max().unwrap_or(0))
}
