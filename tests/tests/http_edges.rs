//! HTTP/1.1 edge cases through `hoptrace run` on the real kernel: pipelining on one
//! keep-alive connection, a chunked response, a 500, a malformed `traceparent`, and a
//! `traceparent` sitting behind 6 KiB of other headers.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::support::*;
use hoptrace_e2e::*;

/// Writes `raw` in one go and reads until `last` has arrived (the end of the last
/// response).
fn exchange(port: u16, raw: &[u8], last: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while count_occurrences(&got, last) == 0 {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "server closed early; got:\n{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn pipelined_chunked_error_and_malformed_context() {
    require_root();
    let server = PyServer::start("edge_server.py", &["0"]);
    let port = server.port();
    let dir = TempDir::new("edges");
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    let agent = start_run_listening(&[port], &out, listen, &[]);

    let good = "4bf92f3577b34da6a3ce929d0e0e4736";
    // Three pipelined requests in one write, one keep-alive connection: the first carries
    // context, the second none, the third a malformed (uppercase) traceparent.
    let pipelined = format!(
        "GET /ok HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{good}-00f067aa0ba902b7-01\r\n\r\n\
         GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /fail HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{}-00F067AA0BA902B7-01\r\n\r\n",
        good.to_uppercase()
    );
    let got = exchange(port, pipelined.as_bytes(), b"boom\n");
    assert_eq!(count_occurrences(&got, b"HTTP/1.1 "), 3, "{}", String::from_utf8_lossy(&got));

    // traceparent after 6 KiB of other headers, in a separate connection.
    let far = "0af7651916cd43dd8448eb211c80319c";
    let filler: String = (0..96).map(|i| format!("x-filler-{i:03}: {}\r\n", "f".repeat(50))).collect();
    assert!(filler.len() > 6 * 1024);
    let late = format!("GET /ok?late=1 HTTP/1.1\r\nHost: x\r\n{filler}traceparent: 00-{far}-b7ad6b7169203331-01\r\nConnection: close\r\n\r\n");
    exchange(port, late.as_bytes(), b"ok\n");

    // Model serving (Z6): model headers become the seed's attributes, a risk header an event.
    let predict = "GET /predict HTTP/1.1\r\nHost: x\r\nX-Tenant-Id: banking-core\r\nConnection: close\r\n\r\n";
    exchange(port, predict.as_bytes(), b"ok\n");

    // A parent that was not sampled (flags 00): honoured, nothing exported for it.
    let unsampled = "11111111111111111111111111111111";
    let req = format!("GET /ok?u=1 HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{unsampled}-2222222222222222-00\r\nConnection: close\r\n\r\n");
    exchange(port, req.as_bytes(), b"ok\n");

    // Seen: the exported SERVER spans, and the unsampled one as a count.
    wait_for_spans_in(&out, "the SERVER spans of /ok (2), /chunked, /fail and /predict", |s| {
        let n = |name: &str| s.iter().filter(|s| s.kind == SERVER && s.name == name).count();
        n("GET /ok") >= 2 && n("GET /chunked") >= 1 && n("GET /fail") >= 1 && n("GET /predict") >= 1
    });
    wait_metrics(listen, TIMEOUT, "the unsampled request", |m| m.get("hoptrace_spans_not_sampled_total") >= 1);
    let done = stop(agent);
    let spans = parse_spans(&fs::read_to_string(&out).expect("OTLP/JSON output"));
    let server_spans: Vec<&Span> = spans.iter().filter(|s| s.kind == SERVER).collect();
    let find = |name: &str| -> Vec<&Span> { server_spans.iter().copied().filter(|s| s.name == name).collect() };

    // Pipelining: each request paired with its own response, in order.
    let ok = find("GET /ok");
    let chunked = find("GET /chunked");
    let fail = find("GET /fail");
    assert_eq!((ok.len(), chunked.len(), fail.len()), (2, 1, 1), "{}", show(&spans));
    let first = ok.iter().find(|s| s.trace_id == good).unwrap_or_else(|| panic!("{}", show(&spans)));
    assert_eq!(first.parent, "00f067aa0ba902b7");
    assert_eq!(int(first.attrs.get("http.response.status_code")), Some(200));

    // Chunked response: parsed to its end (the 500 after it still pairs), no context leak.
    assert_eq!(int(chunked[0].attrs.get("http.response.status_code")), Some(200));
    assert_ne!(chunked[0].trace_id, good, "context leaked into the next pipelined request");
    assert!(chunked[0].parent.is_empty());

    // 500: an error on the server span; the malformed header is ignored, not trusted.
    assert_eq!(int(fail[0].attrs.get("http.response.status_code")), Some(500));
    assert_eq!(fail[0].status, 2, "5xx must be an error on a server span");
    assert_eq!(first.status, 0);
    assert_ne!(fail[0].trace_id, good);
    assert_ne!(fail[0].trace_id.to_lowercase(), good);
    assert!(fail[0].parent.is_empty(), "malformed traceparent must be treated as absent");

    // traceparent after 6 KiB of headers is still found.
    let late_span =
        ok.iter().find(|s| s.trace_id == far).unwrap_or_else(|| panic!("late traceparent lost:\n{}", show(&spans)));
    assert_eq!(late_span.parent, "b7ad6b7169203331");

    let predict = find("GET /predict");
    assert_eq!(predict.len(), 1, "{}", show(&spans));
    for (k, v) in [("model_name", "churn"), ("model_version", "2.3.1"), ("tenant", "banking-core")] {
        assert_eq!(predict[0].attrs.get(k), Some(&serde_json::Value::from(v)), "{k}: {:?}", predict[0]);
    }
    let risk: Vec<_> = predict[0].events.iter().filter(|(n, _)| n == "risk_signal").collect();
    assert_eq!(risk.len(), 1, "{:?}", predict[0].events);
    assert_eq!(risk[0].1.get("hoptrace.risk.signal"), Some(&serde_json::Value::from("abuse")));

    assert!(spans.iter().all(|s| s.trace_id != unsampled), "unsampled trace exported:\n{}", show(&spans));

    // The invalid header was counted by reason, and its value never left the process.
    let stopped = stopped_log(&done);
    assert_eq!(stopped["traces"]["spans_not_sampled"], 1, "{stopped}");
    assert_eq!(stopped["traces"]["invalid_context"]["traceparent_uppercase"], 1, "{stopped}");
    // …and logged once, as JSON, joined to the span it concerns.
    let warn: Vec<serde_json::Value> = done
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "traceparent_uppercase")
        .collect();
    assert_eq!(warn.len(), 1, "{}", done.stderr);
    assert_eq!(
        (warn[0]["trace_id"].as_str(), warn[0]["span_id"].as_str()),
        (Some(fail[0].trace_id.as_str()), Some(fail[0].span_id.as_str()))
    );
    assert!(!done.stderr.to_lowercase().contains(&good.to_lowercase()), "header value in the logs");
    let text = fs::read_to_string(&out).unwrap();
    assert!(!text.to_lowercase().contains("00f067aa0ba902b7-01"), "raw header text exported");
    assert!(!text.contains("late=1"), "query string exported");
    assert!(!text.contains("joao@example.com") && !text.contains("0.97"), "a risk header value was exported");
}
