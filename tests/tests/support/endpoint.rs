//! A keep-alive HTTP/1.1 client with exact request counts, the agent's `/metrics`, and the
//! export accounting check.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hoptrace_e2e::*;

/// One HTTP/1.1 connection kept alive across requests; every response is read whole
/// (Content-Length framing, as nginx and the Python fixtures answer), so the number of
/// exchanges on the wire is exactly the number of calls.
pub struct KeepAlive {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes written to and read from the connection so far.
    pub bytes_written: u64,
    pub bytes_read: u64,
}

impl KeepAlive {
    pub fn connect(port: u16) -> KeepAlive {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        KeepAlive { stream, buf: Vec::new(), bytes_written: 0, bytes_read: 0 }
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// `GET path` with `headers` (each "Name: value"); returns the status.
    pub fn get(&mut self, path: &str, headers: &[&str]) -> u16 {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes());
        self.read_response()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("write to the server: {e}"));
        self.bytes_written += bytes.len() as u64;
    }

    /// Reads one Content-Length-framed response; returns its status.
    pub fn read_response(&mut self) -> u16 {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 =
            head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse().expect("Content-Length"));
        while self.buf.len() < head_end + length {
            self.fill();
        }
        self.buf.drain(..head_end + length);
        status
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).unwrap_or_else(|e| panic!("read from the server: {e}"));
        assert!(n > 0, "the server closed the connection mid-response: {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
        self.bytes_read += n as u64;
    }
}

/// `GET http://127.0.0.1:<port><path>` on a fresh connection, body returned (the agent's
/// own endpoint; it closes after answering).
pub fn http_get_body(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the agent's endpoint {port}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// The agent's `/metrics` (Prometheus text).
pub struct Metrics(pub String);

impl Metrics {
    /// The agent's counters; waits for its first refresh (a second after start) so that
    /// every series exists.
    pub fn scrape(listen_port: u16) -> Metrics {
        let mut body = String::new();
        wait_until(TIMEOUT, || {
            body = http_get_body(listen_port, "/metrics");
            body.contains("hoptrace_capture_records_total")
        });
        Metrics(body)
    }

    /// The value of the series `series` exactly as written (`name` or `name{k="v"}`).
    pub fn get(&self, series: &str) -> u64 {
        self.0
            .lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse::<u64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{}", self.0))
    }
}

impl Metrics {
    /// Sum of every series of metric `name` (all label sets); 0 when there is none.
    pub fn sum(&self, name: &str) -> u64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    }
}

/// `hoptrace run` arguments for an agent whose HTTP endpoint is on its own port.
pub fn listen_args(port: u16) -> [String; 2] {
    ["--listen".into(), format!("127.0.0.1:{port}")]
}

/// Starts an agent that watches only nginx's side of `port` (this test process is
/// excluded: its own sockets would double every count), writes OTLP/JSON to `out` and
/// serves `/metrics` on `listen`; `extra` are further `hoptrace run` arguments.
pub fn start_nginx_side_agent(port: u16, out: &std::path::Path, listen: u16, extra: &[&str]) -> RunAgent {
    let test_pid = std::process::id().to_string();
    let listen = listen_args(listen);
    let mut args = vec!["--output", out.to_str().unwrap(), "--exclude-pid", &test_pid, &listen[0], &listen[1]];
    args.extend_from_slice(extra);
    RunAgent::start(&[port], &args, Vec::<(String, String)>::new())
}

/// Every span submitted is exported, or counted under exactly one drop reason, and
/// nothing is left queued: the exporter's books balance.
pub fn assert_export_accounted(stopped: &Stopped) {
    let e = |k: &str| stopped.export(k);
    let accounted = e("spans_exported")
        + e("spans_dropped_queue_full")
        + e("spans_dropped_non_retryable")
        + e("spans_dropped_retries_exhausted")
        + e("spans_dropped_shutdown")
        + e("spans_rejected_by_collector");
    assert_eq!(
        (e("spans_submitted"), e("queue_depth")),
        (accounted, 0),
        "export counters do not add up: {}",
        stopped.log["export"]
    );
    // Every span the pipeline kept reached the exporter.
    assert_eq!(
        e("spans_submitted"),
        stopped.traces("spans_server") + stopped.traces("spans_client"),
        "{}",
        stopped.log
    );
}

/// Polls `/metrics` until `check` holds; panics with the last scrape after `timeout`.
pub fn wait_metrics(listen_port: u16, timeout: Duration, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut last = Metrics(String::new());
    if wait_until(timeout, || {
        last = Metrics::scrape(listen_port);
        check(&last)
    }) {
        return last;
    }
    panic!("/metrics never showed {what} within {timeout:?}:\n{}", last.0)
}
