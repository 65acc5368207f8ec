//! The agent's HTTP endpoint protects itself: a pile of idle connections does not lock a
//! scrape out (at the connection cap the oldest is closed), a slowloris client that never
//! finishes its request head is cut at the header read timeout, and both are counted.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::support::*;
use hoptrace_e2e::*;

/// The agent's `HEADER_READ_TIMEOUT` (agent/src/ops/server.rs).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// More than the agent's `MAX_CONNECTIONS` (64).
const IDLE: usize = 200;

/// Whether the server closed `s` (EOF or reset) within `within`; `tick` runs every
/// 200 ms while waiting (a slowloris trickle), and a failed write counts as closed too.
fn closed_within(
    s: &mut TcpStream,
    within: Duration,
    mut tick: impl FnMut(&mut TcpStream) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 512];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
        if !tick(s) {
            return Some(start.elapsed());
        }
    }
    None
}

#[test]
fn idle_connections_do_not_block_a_scrape_and_slowloris_is_cut() {
    require_root();
    let dir = TempDir::new("endpoint-guard");
    let listen = free_port();
    let agent = start_run_listening(&[free_port()], &dir.join("otlp.jsonl"), listen, &[]);
    Metrics::scrape(listen);

    // Slowloris: a request head that never ends, one header line every 200 ms.
    let mut slow = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let mut n = 0;
    let cut = closed_within(&mut slow, HEADER_TIMEOUT * 3, |s| {
        n += 1;
        s.write_all(format!("X-Slow-{n}: 1\r\n").as_bytes()).is_ok()
    });
    let cut = cut.expect("a slowloris client was never cut");
    assert!(cut >= HEADER_TIMEOUT - Duration::from_millis(500), "cut after {cut:?}: earlier than the header timeout");

    // Far more idle connections than the cap, then a scrape: it is served at once.
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| TcpStream::connect(("127.0.0.1", listen)).unwrap()).collect();
    let started = Instant::now();
    let body = http_get_body(listen, "/metrics");
    assert!(body.contains("hoptrace_capture_records_total"), "no scrape while {IDLE} connections idle: {body:?}");
    assert!(started.elapsed() < HEADER_TIMEOUT, "the scrape waited {:?} behind idle connections", started.elapsed());

    // Every idle connection is closed by the agent (evicted or timed out), none lingers.
    for (i, s) in idle.iter_mut().enumerate() {
        let closed = closed_within(s, HEADER_TIMEOUT * 3, |_| true);
        assert!(closed.is_some(), "idle connection {i} still open after {:?}", HEADER_TIMEOUT * 3);
    }
    let m = wait_metrics(listen, TIMEOUT, "the cut connections counted", |m| {
        m.get("hoptrace_http_connections_closed_total{reason=\"evicted_at_cap\"}") >= (IDLE - 64) as u64
            && m.get("hoptrace_http_connections_closed_total{reason=\"header_timeout\"}") >= 1
    });
    assert!(m.get("hoptrace_http_connections") <= 64, "{}", m.0);
    stop(agent);
}
