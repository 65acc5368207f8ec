//! The hostile corpus at **default settings** (no lowered limit: the agent a user runs)
//! against a real nginx: digit-group paths of 16 and 64 KiB, 50,000-segment paths,
//! non-ASCII and invalid UTF-8 in paths, headers and methods, huge `tracestate`, thousands
//! of distinct methods, tenants and routes, header blocks at the agent's cap. For each
//! kind: the agent's CPU time per hostile request (all its threads, from
//! /proc/PID/task/*/schedstat) is at most 5 ms, and a normal traced request sent right
//! after is exported within 2 s; the agent's RSS stays under the DaemonSet's memory limit.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use hoptrace_e2e::*;

/// CPU nanoseconds the agent's threads have run so far.
fn agent_cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The DaemonSet's memory limit in KiB (`resources.limits.memory`, in Mi).
fn daemonset_memory_limit_kib() -> u64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let limits = text.split_once("limits:").unwrap_or_else(|| panic!("no limits: in {}", path.display())).1;
    let mem = limits.lines().find_map(|l| l.trim().strip_prefix("memory:")).expect("limits.memory");
    let mi: u64 = mem.trim().strip_suffix("Mi").and_then(|v| v.parse().ok()).expect("memory limit in Mi");
    mi * 1024
}

/// Writes `bytes` in 16 KiB writes (each one syscall the kernel copies whole, under the
/// default 64 KiB capture cap), half-closes, and reads until the server closes.
fn send(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    for chunk in bytes.chunks(16 * 1024) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.read_to_end(&mut Vec::new());
}

fn request(method: &[u8], path: &[u8], headers: &[Vec<u8>]) -> Vec<u8> {
    let mut r = [method, b" ", path, b" HTTP/1.1\r\nHost: corpus.test\r\nConnection: close\r\n"].concat();
    for h in headers {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// `n` distinct uppercase words (methods) or lowercase ones (routes, tenants).
fn word(mut i: usize, base: u8) -> String {
    let mut w = String::new();
    for _ in 0..4 {
        w.push((base + (i % 26) as u8) as char);
        i /= 26;
    }
    w
}

/// Whether the bytes written to `path` past `offset` contain `needle`.
fn written_since(path: &Path, offset: u64, needle: &[u8]) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_to_end(&mut tail)).is_ok()
        && tail.windows(needle.len()).any(|w| w == needle)
}

/// One kind of hostile request, `count` of them.
struct Kind {
    name: &'static str,
    requests: Vec<Vec<u8>>,
}

fn corpus() -> Vec<Kind> {
    // Each request of a kind distinct (a word in front), so no cache in the agent can
    // answer for the one before.
    let twenty = |path: &dyn Fn(&str) -> String| -> Vec<Vec<u8>> {
        (0..20).map(|i| request(b"GET", path(&word(i, b'g')).as_bytes(), &[])).collect()
    };
    let digits = |w: &str, bytes: usize| format!("/{w}{}", "1-".repeat((bytes - w.len() - 1) / 2));
    let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut kinds = vec![
        Kind { name: "digit-group path 16 KiB", requests: twenty(&|w| digits(w, 16 * 1024)) },
        // Just under the agent's 64 KiB header-block cap: parsed and templated.
        Kind { name: "digit-group path 64 KiB - 512", requests: twenty(&|w| digits(w, 64 * 1024 - 512)) },
        // Past the cap: the head is refused by length.
        Kind { name: "digit-group path 64 KiB", requests: twenty(&|w| digits(w, 64 * 1024)) },
        Kind { name: "50,000-segment path", requests: twenty(&|w| format!("/{w}{}", "/".repeat(49_999))) },
        Kind { name: "30,000-segment path", requests: twenty(&|w| format!("/{w}{}", "/1".repeat(29_999))) },
    ];
    let mut utf8 = Vec::new();
    for i in 0..20u8 {
        let odd: &[u8] = &[0xff, 0xfe, b'/', 0xc3, 0xa9, 0xe2, 0x82, i | 0x80, b'%', 0xc3];
        let path = [b"/caf\xc3\xa9/", odd, b"/\xf0\x9f\x92\xa9".as_slice()].concat();
        let headers = vec![
            [b"x-tenant-id: t\xc3\xa9\xff".as_slice(), odd].concat(),
            [b"user-agent: \xfe\xff".as_slice(), odd].concat(),
            [b"tracestate: a=\xc3\xa9,".as_slice(), odd].concat(),
            [b"traceparent: 00-\xc3\xa9".as_slice(), odd].concat(),
        ];
        utf8.push(request(b"GET", &path, &headers));
        utf8.push(request(&[b"G\xc3\x89T".as_slice(), odd].concat(), b"/m", &headers));
        utf8.push(request(b"GET", b"/h", &[[b"host: \xff\xfe".as_slice(), odd].concat()]));
    }
    kinds.push(Kind { name: "non-ASCII and invalid UTF-8", requests: utf8 });
    let member = |i: usize| format!("k{i}={}", "v".repeat(250));
    let huge_members: Vec<String> = (0..2000).map(member).collect();
    let tracestate = [
        format!("tracestate: {}", huge_members.join(",")).into_bytes(),
        format!("tracestate: {}", (0..32).map(member).collect::<Vec<_>>().join(",")).into_bytes(),
        format!("tracestate: {}", "x=1,".repeat(15_000)).into_bytes(),
    ];
    let ts = (0..30).map(|i| request(b"GET", b"/ts", &[tp.into(), tracestate[i % 3].clone()])).collect();
    kinds.push(Kind { name: "huge tracestate", requests: ts });
    let methods = (0..3000).map(|i| request(format!("Q{}", word(i, b'A')).as_bytes(), b"/m", &[])).collect();
    kinds.push(Kind { name: "3,000 distinct methods", requests: methods });
    let tenants = (0..3000)
        .map(|i| request(b"GET", b"/t", &[format!("x-tenant-id: tn{}", word(i, b'g')).into_bytes()]))
        .collect();
    kinds.push(Kind { name: "3,000 distinct tenants", requests: tenants });
    let routes = (0..3000).map(|i| request(b"GET", format!("/r/z{}", word(i, b'g')).as_bytes(), &[])).collect();
    kinds.push(Kind { name: "3,000 distinct routes", requests: routes });
    // 250 headers of ~250 bytes: a header block at the agent's 64 KiB and 256-header caps.
    let at_cap: Vec<Vec<u8>> = (0..250).map(|i| format!("x-fill-{i:03}: {}", "1-".repeat(120)).into_bytes()).collect();
    kinds.push(Kind { name: "header block at the cap", requests: vec![request(b"GET", b"/cap", &at_cap); 20] });
    kinds
}

#[test]
fn hostile_corpus_at_default_settings_costs_little_cpu_and_never_delays_a_normal_request() {
    require_root();
    let port = free_port();
    // nginx takes what the corpus sends (long lines, big header blocks), so the agent sees
    // complete exchanges, responses included.
    let _nginx = Nginx::start(
        port,
        "keepalive_requests 1000000; large_client_header_buffers 16 128k; location / { return 200 \"ok\\n\"; }",
    );
    let listen = free_port();
    let dir = TempDir::new("corpus");
    let out = dir.join("spans.jsonl");
    let agent = start_nginx_side_agent(port, &out, listen, &[]);
    let pid = agent.pid();
    let limit_kib = daemonset_memory_limit_kib();
    let mut rss_max = rss_kib(pid);
    let mut report = Vec::new();
    for (i, kind) in corpus().into_iter().enumerate() {
        let n = kind.requests.len() as u64;
        let cpu_before = agent_cpu_ns(pid);
        for r in &kind.requests {
            send(port, r);
        }
        // A normal traced request right after: exported within 2 s of being sent.
        let trace_id = format!("{:016x}{:016x}", 0x5eed_0000 + i, std::process::id());
        let normal = request(b"GET", b"/normal", &[format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01").into()]);
        // Only what the agent writes from now on is searched (the file grows by thousands
        // of spans per kind; rescanning it whole would time the test, not the agent).
        let written = std::fs::metadata(&out).map_or(0, |m| m.len());
        let sent = Instant::now();
        send(port, &normal);
        let exported = wait_until(Duration::from_secs(10), || written_since(&out, written, trace_id.as_bytes()));
        let latency = sent.elapsed();
        let cpu = agent_cpu_ns(pid) - cpu_before;
        rss_max = rss_max.max(rss_kib(pid));
        let per_request_us = cpu / n / 1000;
        report.push(format!(
            "{:32} {n:5} requests: {per_request_us:5} µs CPU each, normal request exported after {latency:?}, RSS {} KiB",
            kind.name,
            rss_kib(pid)
        ));
        eprintln!("{}", report.last().unwrap());
        assert!(exported, "{}: the normal request's span was never exported", kind.name);
        assert!(latency <= Duration::from_secs(2), "{}: normal request exported after {latency:?}", kind.name);
        assert!(per_request_us <= 5_000, "{}: {per_request_us} µs of agent CPU per request", kind.name);
        assert!(rss_max < limit_kib, "{}: RSS {rss_max} KiB over the DaemonSet's {limit_kib} KiB", kind.name);
    }
    let m = Metrics::scrape(listen);
    let capped: Vec<&str> = m.0.lines().filter(|l| l.starts_with("hoptrace_values_capped_total")).collect();
    eprintln!("{}\nmax RSS {rss_max} KiB (limit {limit_kib} KiB)\n{}", report.join("\n"), capped.join("\n"));
    // The caps were reached (the corpus is hostile) and counted: the long segments of the
    // two digit-group kinds the agent parses, the paths of the two many-segment kinds.
    assert!(m.get("hoptrace_values_capped_total{field=\"path_segment\"}") >= 40, "{}", m.0);
    assert!(m.get("hoptrace_values_capped_total{field=\"path\"}") >= 40, "{}", m.0);
    let stopped = agent.stop();
    assert_export_accounted(&stopped);
}
