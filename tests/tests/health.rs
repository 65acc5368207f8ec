//! `/healthz` follows the capture loop: 200 while it ticks — also under sustained load,
//! where the ring never empties and only a bounded drain lets the tick run — and 503 once
//! the loop has been held for longer than `--stall-timeout`, while the endpoint's own
//! thread still answers. The hold is real: the agent's capture thread (its main thread) is
//! stopped with ptrace, alone; every other thread of the agent runs on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use hoptrace_e2e::*;

/// `GET path` on the agent's endpoint: status and body, whatever the status.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to the endpoint: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status: {head}"));
    (status, body.to_string())
}

fn nginx_with_body(dir: &TempDir, port: u16) -> Nginx {
    std::fs::write(dir.join("body"), "h".repeat(8 * 1024)).unwrap();
    Nginx::start(
        port,
        &format!(
            "keepalive_requests 1000000; sendfile off; location / {{ root {}; try_files /body =404; }}",
            dir.path().display()
        ),
    )
}

#[test]
fn healthz_200_and_ticks_keep_coming_under_sustained_load() {
    require_root();
    let dir = TempDir::new("health-load");
    let port = free_port();
    let _nginx = nginx_with_body(&dir, port);
    let listen = free_port();
    let agent = start_nginx_side_agent(port, &dir.join("spans.jsonl"), listen, &["--sample-ratio", "0"]);
    let before = Metrics::scrape(listen);

    // Four keep-alive clients as fast as they go, while the endpoint is watched.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = KeepAlive::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(c.get("/load", &[]), 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    let mut healthz = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let (status, body) = get(listen, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"), "/healthz under load after {:?}", start.elapsed());
        healthz += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = Metrics::scrape(listen);
    let window = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let requests: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let ticks = during.get("hoptrace_capture_loop_ticks_total") - before.get("hoptrace_capture_loop_ticks_total");
    let records = during.get("hoptrace_capture_records_total") - before.get("hoptrace_capture_records_total");
    let bounded = during.get("hoptrace_capture_drains_bounded_total");
    eprintln!(
        "{requests} requests, {records} ring records, {ticks} ticks and {bounded} bounded drains in {window:?}; \
         /healthz 200 {healthz} times"
    );
    // The load was real: the ring carried thousands of records a second.
    assert!(records > 10_000, "only {records} records: no sustained load\n{}", during.0);
    // A tick a second, give or take the scrape's own refresh lag (the samples are a tick old).
    assert!(ticks + 2 >= window.as_secs(), "{ticks} ticks in {window:?} under load:\n{}", during.0);
    let stopped = agent.stop();
    assert!(stopped.counter("capture", "loop_ticks") >= ticks, "{}", stopped.log);
}

/// The agent's capture thread held by ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT stop that
/// one thread, unlike SIGSTOP which stops them all); released on drop.
struct Held(i32);

impl Held {
    fn hold(tid: i32) -> Held {
        // SAFETY: plain ptrace requests on a thread id; no memory is passed.
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        assert_eq!(seized, 0, "PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error());
        let held = Held(tid);
        // SAFETY: as above.
        let interrupted = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(interrupted, 0, "PTRACE_INTERRUPT {tid}: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for the tracee's stop; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(waited, tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "thread {tid} not stopped: status {status:#x}");
        held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: detaching a tracee this thread seized; it resumes.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

#[test]
fn healthz_503_while_the_capture_loop_is_held_and_200_once_it_ticks_again() {
    require_root();
    let dir = TempDir::new("health-held");
    let port = free_port();
    let _nginx = nginx_with_body(&dir, port);
    let listen = free_port();
    let agent = start_nginx_side_agent(port, &dir.join("spans.jsonl"), listen, &["--stall-timeout", "2"]);
    wait_metrics(listen, TIMEOUT, "a first tick", |m| m.get("hoptrace_capture_loop_ticks_total") >= 1);
    assert_eq!(get(listen, "/healthz"), (200, "ok\n".to_string()));

    // The capture loop runs on the agent's main thread (its tid is the pid).
    let held = Held::hold(agent.pid() as i32);
    let ticks = Metrics::scrape(listen).get("hoptrace_capture_loop_ticks_total");
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = get(listen, "/healthz");
            last.0 == 503
        }),
        "/healthz still {last:?} with the capture loop held"
    );
    assert!(last.1.starts_with("capture loop stalled: last tick "), "{last:?}");
    // The endpoint answers, and the counters it serves stand still: no tick while held.
    let frozen = Metrics::scrape(listen);
    assert_eq!(frozen.get("hoptrace_capture_loop_ticks_total"), ticks, "ticked while held");
    assert_eq!(get(listen, "/readyz").0, 200, "/readyz is about start-up, not liveness");

    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = get(listen, "/healthz");
            last.0 == 200
        }),
        "/healthz still {last:?} after the capture loop was released"
    );
    agent.stop();
}
