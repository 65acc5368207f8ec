//! The agent restarts while the applications keep their connections open: the new agent
//! picks the keep-alive connections up on their next bytes (roles from the processes'
//! listening sockets), joins a request that was half sent across the restart without
//! inventing an exchange for it (counted as a parse error instead), and attributes every
//! later span to the right process, kind and parent.

use std::{fs, process::Command};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

fn port_of(s: &Span, key: &str) -> Option<i64> {
    int(s.attrs.get(key))
}

fn pid_of(s: &Span) -> Option<i64> {
    int(s.resource.get("process.pid"))
}

/// Whether the server `pid` has read all `sent` bytes of its connection `server_port` ↔
/// `client_port` and gone back to sleep: its kernel received them all, the socket's
/// receive queue is empty, and every thread of the process sleeps — so the read that
/// emptied the queue has returned, and the agent's probe on that syscall's exit has fired.
fn server_read_everything(pid: u32, server_port: u16, client_port: u16, sent: u64) -> bool {
    let filter = format!("( sport = :{server_port} and dport = :{client_port} )");
    let ss = run(Command::new("ss").args(["-tinH", "state", "established", &filter]), TIMEOUT).expect_success().stdout;
    let recv_q = ss.split_whitespace().next().and_then(|q| q.parse::<u64>().ok());
    let received = ss.split_whitespace().find_map(|w| w.strip_prefix("bytes_received:")?.parse::<u64>().ok());
    let threads = fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    let sleeping = threads.into_iter().all(|t| {
        let stat = t.ok().and_then(|t| fs::read_to_string(t.path().join("stat")).ok()).unwrap_or_default();
        // The state is the first field after the command name's closing parenthesis.
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
    });
    recv_q == Some(0) && received == Some(sent) && sleeping
}

#[test]
fn agent_restart_with_open_keepalive_connections() {
    require_root();
    let downstream = PyServer::start("chain_service.py", &["0"]);
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", downstream.port())]);
    let dir = TempDir::new("restart");
    let ports = [front.port(), downstream.port()];
    let test_pid = i64::from(std::process::id());
    let (front_pid, down_pid) = (i64::from(front.pid()), i64::from(downstream.pid()));

    // Agent 1 sees the connection open and three exchanges.
    let out1 = dir.join("spans1.jsonl");
    let agent1 = start_run(&ports, &out1);
    let mut conn = KeepAlive::connect(front.port());
    for i in 0..3 {
        assert_eq!(conn.get(&format!("/orders/{i}"), &[]), 200);
    }
    // A request half sent when the agent goes away.
    conn.send_raw(b"GET /orders/half HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad");
    // The front's side of the half request must have been read before agent 1 stops.
    assert!(
        wait_until(TIMEOUT, || server_read_everything(
            front.pid(),
            front.port(),
            conn.local_port(),
            conn.bytes_written
        )),
        "the front never read the half-sent request"
    );
    let done1 = stop(agent1);
    let log1 = stopped_log(&done1);
    let spans1 = parse_spans(&std::fs::read_to_string(&out1).unwrap_or_default());
    let front_servers1: Vec<&Span> =
        spans1.iter().filter(|s| pid_of(s) == Some(front_pid) && s.kind == SERVER).collect();
    assert_eq!(front_servers1.len(), 3, "agent 1:\n{}", show(&spans1));
    assert_eq!(
        log1["traces"]["parse_errors"]["http1/closed_mid_header"], 2,
        "the half-sent request at shutdown must be counted, on both sides: {}",
        log1["traces"]
    );

    // The applications never noticed: same processes, same connection.
    let out2 = dir.join("spans2.jsonl");
    let agent2 = start_run(&ports, &out2);
    conn.send_raw(b": x\r\n\r\n");
    assert_eq!(conn.read_response(), 200);
    // Traced requests: the front must join each one's context from the wire.
    let parents: Vec<(String, String)> = (0..3)
        .map(|i| {
            (
                format!("{:032x}", 0xabc0_0000_0000_0000_0000_0000_0000_0010u128 + i),
                format!("{:016x}", 0x5150_0000_0000_0001u64 + i as u64),
            )
        })
        .collect();
    for (i, (trace, parent)) in parents.iter().enumerate() {
        let tp = format!("traceparent: 00-{trace}-{parent}-01");
        assert_eq!(conn.get(&format!("/orders/{}", 100 + i), &[&tp]), 200);
    }
    let client_port = i64::from(conn.local_port());
    drop(conn);
    wait_for_spans_in(&out2, "the front's 3 SERVER spans and 3 calls, and the downstream's 4 spans", |s| {
        let n = |pid: i64, kind: u64| s.iter().filter(|s| pid_of(s) == Some(pid) && s.kind == kind).count();
        n(front_pid, SERVER) >= 3 && n(front_pid, CLIENT) >= 3 && n(down_pid, SERVER) >= 4
    });
    let done2 = stop(agent2);
    let log2 = stopped_log(&done2);
    let spans2 = parse_spans(&std::fs::read_to_string(&out2).unwrap_or_default());
    let all = show(&spans2);
    eprintln!("agent 2 traces: {}", log2["traces"]);

    // No crash, clean stop (stop() checked the exit status); the half request's response
    // had no request the new agent saw: counted, not turned into a span.
    assert!(
        log2["traces"]["parse_errors"]["http1/unmatched_response"].as_u64().unwrap_or(0) >= 1,
        "{}",
        log2["traces"]
    );

    // The front's SERVER spans: exactly the three traced requests, each joined to the
    // context it carried, on the front's port, from our connection.
    let front_servers: Vec<&Span> =
        spans2.iter().filter(|s| pid_of(s) == Some(front_pid) && s.kind == SERVER).collect();
    assert_eq!(front_servers.len(), 3, "{all}");
    for (s, (trace, parent)) in front_servers.iter().zip(&parents) {
        assert_eq!((&s.trace_id, &s.parent), (trace, parent), "{s:?}");
        assert_eq!(s.attrs.get("http.route").and_then(Value::as_str), Some("/orders/{id}"), "{s:?}");
        assert_eq!(port_of(s, "server.port"), Some(i64::from(front.port())), "{s:?}");
        assert_eq!(port_of(s, "network.peer.port"), Some(client_port), "{s:?}");
    }
    // Each traced request's call to the downstream is its child (same thread), a CLIENT
    // span of the front towards the downstream's port.
    for srv in &front_servers {
        let calls: Vec<&Span> = spans2
            .iter()
            .filter(|s| pid_of(s) == Some(front_pid) && s.kind == CLIENT && s.parent == srv.span_id)
            .collect();
        assert_eq!(calls.len(), 1, "call of {}:\n{all}", srv.span_id);
        assert_eq!(calls[0].trace_id, srv.trace_id);
        assert_eq!(port_of(calls[0], "server.port"), Some(i64::from(downstream.port())), "{:?}", calls[0]);
    }
    // The downstream served four calls (the half request's too), all as SERVER spans.
    let down: Vec<&Span> = spans2.iter().filter(|s| pid_of(s) == Some(down_pid)).collect();
    assert_eq!(down.len(), 4, "{all}");
    assert!(
        down.iter().all(|s| s.kind == SERVER && port_of(s, "server.port") == Some(i64::from(downstream.port()))),
        "{all}"
    );
    // Mis-attribution: this process only ever was a client, the front only a server on
    // its own port, and nothing else turned up.
    for s in &spans2 {
        let pid = pid_of(s);
        assert!(
            [Some(front_pid), Some(down_pid), Some(test_pid)].contains(&pid),
            "span of an unexpected process: {s:?}"
        );
        if pid == Some(test_pid) {
            assert_eq!(s.kind, CLIENT, "this test process as a server? {s:?}");
        }
        if pid == Some(front_pid) && s.kind == SERVER {
            assert_eq!(port_of(s, "server.port"), Some(i64::from(front.port())), "{s:?}");
        }
    }
    // This process sent its own traceparent: it instruments itself, so its CLIENT spans
    // are suppressed (counted), not duplicated.
    assert!(spans2.iter().all(|s| pid_of(s) != Some(test_pid) || s.kind == CLIENT));
    assert!(log2["traces"]["spans_suppressed_instrumented"].as_u64().unwrap_or(0) >= 1, "{}", log2["traces"]);
}
