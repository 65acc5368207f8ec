//! Overload: the agent cannot keep up (here it consumes nothing at all: SIGSTOP, the
//! slowest consumer there is) while nginx serves traffic. The application must not be
//! slowed down by it — every request completes while the agent is frozen, which is only
//! possible if nothing in the kernel path waits for the agent — and everything the agent
//! could not take must be counted: the ring buffer's refusals by reason, and every byte
//! nginx moved is either captured, not copied by design, or counted lost.

use std::time::Duration;

use crate::support::*;
use hoptrace_e2e::*;

#[test]
fn frozen_agent_never_blocks_the_application_and_counts_every_byte_it_missed() {
    require_root();
    // Large enough responses that the 4 MiB ring fills within a few thousand requests;
    // copied through write (sendfile off), so the kernel programs copy them.
    let dir = TempDir::new("overload");
    std::fs::write(dir.join("body"), "o".repeat(8 * 1024)).unwrap();
    let port = free_port();
    let _nginx = Nginx::start(
        port,
        &format!(
            "keepalive_requests 1000000; sendfile off; location / {{ root {}; try_files /body =404; }}",
            dir.path().display()
        ),
    );
    let listen = free_port();
    let out = dir.join("spans.jsonl");
    // Only nginx's side, so the bytes nginx moved are exactly what this test moved.
    let agent = start_nginx_side_agent(port, &out, listen, &[]);
    let before = Metrics::scrape(listen);
    assert_eq!(before.get("hoptrace_kernel_drops_total{reason=\"ringbuf_full\"}"), 0);

    // Frozen: from here the agent reads nothing until SIGCONT.
    agent.signal(libc::SIGSTOP);
    const REQUESTS: usize = 4_000;
    let mut conns: Vec<KeepAlive> = (0..4).map(|_| KeepAlive::connect(port)).collect();
    for i in 0..REQUESTS {
        let c = &mut conns[i % 4];
        assert_eq!(c.get(&format!("/overload/{i}"), &[]), 200);
    }
    // All answered while the agent was frozen: nothing on nginx's path waited for it.
    let moved: u64 = conns.iter().map(|c| c.bytes_written + c.bytes_read).sum();
    drop(conns);
    agent.signal(libc::SIGCONT);

    let m = wait_metrics(listen, Duration::from_secs(60), "the overload's connections closed and accounted", |m| {
        m.get("hoptrace_connections_closed_total") >= 4 && m.get("hoptrace_connections_tracked") == 0
    });
    let refused = m.get("hoptrace_kernel_drops_total{reason=\"ringbuf_full\"}");
    assert!(refused > 0, "the ring never overflowed; the test did not overload the agent:\n{}", m.0);
    let captured = m.get("hoptrace_capture_bytes_captured_total");
    let not_captured = m.get("hoptrace_capture_bytes_not_captured_total");
    let lost = m.get("hoptrace_capture_bytes_lost_total");
    assert!(lost > 0, "{}", m.0);
    // Every byte nginx moved is accounted for, exactly once.
    assert_eq!(
        captured + not_captured + lost,
        moved,
        "captured {captured} + not captured {not_captured} + lost {lost} != moved {moved}:\n{}",
        m.0
    );
    // Fewer exchanges than requests (what was lost is lost), but never more.
    let exchanges = m.get("hoptrace_http_exchanges_total");
    assert!(exchanges < REQUESTS as u64, "{exchanges} exchanges from {REQUESTS} requests");

    // Once the agent runs again it captures normally: no drop for traffic it can follow.
    let mut c = KeepAlive::connect(port);
    for i in 0..50 {
        assert_eq!(c.get(&format!("/after/{i}"), &[]), 200);
    }
    drop(c);
    let after = wait_metrics(listen, TIMEOUT, "the requests after the overload", |m| {
        m.get("hoptrace_http_exchanges_total") >= exchanges + 50
    });
    assert_eq!(after.get("hoptrace_kernel_drops_total{reason=\"ringbuf_full\"}"), refused, "{}", after.0);
    let stopped = agent.stop();
    assert_export_accounted(&stopped);
}
