//! `hoptrace capture` against real servers on the real kernel.
//!
//! Other tests run at the same time and the agent sees every process, so each capture is
//! narrowed with `--port` to the test's own servers (except where the point is to see
//! everything), and assertions match events by pid and port, never by position.

use hoptrace_e2e::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

/// The client-side open of `client_pid` towards `server_port`, if seen yet.
fn client_open(events: &[Value], client_pid: u32, server_port: u16) -> Option<&Value> {
    select(events).kind("open").pid(client_pid).remote_port(server_port).first().copied()
}

/// Events on the server side of the connection whose client uses `client_port`.
fn server_side(events: &[Value], server_port: u16, client_port: u16) -> Events<'_> {
    select(events).local_port(server_port).remote_port(client_port)
}

/// Every descriptor opened on `conn_id` has been closed (a forking server's parent and child
/// each hold one, under the same or different conn_ids).
fn closed(events: &[Value], conn_id: u64) -> bool {
    let on_conn = select(events).conn(conn_id);
    let opens = on_conn.clone().kind("open").len();
    opens > 0 && on_conn.kind("close").len() >= opens
}

/// True once the agent has reported the client's connection to `server_port` and every
/// descriptor on both of its ends (client, and server parent/children) as closed.
fn exchange_done(events: &[Value], client_pid: u32, server_port: u16) -> bool {
    let Some(client) = client_open(events, client_pid, server_port) else {
        return false;
    };
    let server_conns = server_side(events, server_port, client.get_port("local_port")).distinct("conn_id");
    closed(events, client.get_u64("conn_id"))
        && !server_conns.is_empty()
        && server_conns.iter().all(|&id| closed(events, id))
}

/// The printable start of a direction's stream: the prefix of its data event at offset 0.
fn stream_prefix(data: &Events) -> String {
    let first = data
        .iter()
        .find(|e| e.get_u64("stream_offset") == 0 && e.get_u64("len") > 0)
        .unwrap_or_else(|| panic!("no data at stream offset 0 among:\n{}", data.show()));
    first.get_str("payload_prefix").to_string()
}

/// Data events of one direction must tile the stream: each starts where the previous ended.
fn assert_contiguous(data: &Events) {
    let mut spans: Vec<(u64, u64)> = data.iter().map(|e| (e.get_u64("stream_offset"), e.get_u64("len"))).collect();
    spans.sort_unstable();
    let mut next = 0;
    for (offset, len) in spans {
        assert_eq!(offset, next, "gap or overlap in stream offsets:\n{}", data.show());
        next += len;
    }
}

fn assert_loopback(open: &Value) {
    for key in ["local_addr", "remote_addr"] {
        assert_eq!(open.get_str(key), "127.0.0.1", "{key} in {open}");
    }
    assert_eq!(open.get_str("family"), "ipv4", "{open}");
}

#[test]
fn nginx_request_and_response_both_sides() {
    require_root();
    let nginx = Nginx::start(free_port(), NGINX_HELLO);
    let port = nginx.port();
    let agent = Agent::start(&["--port", &port.to_string(), "--show-payload"]);

    let response = curl_get(&format!("http://127.0.0.1:{port}/hello"));
    assert_eq!((response.status, response.body.as_str()), (200, "hello\n"));
    agent.wait_for(|ev| exchange_done(ev, response.pid, port), TIMEOUT);
    let workers = nginx.worker_pids();
    let events = agent.stop();

    let client = select(&events).kind("open").pid(response.pid).only("open from curl");
    assert_eq!(client.get_str("role"), "client", "{client}");
    assert_eq!(client.get_str("via"), "connect", "{client}");
    assert_eq!(client.get_port("remote_port"), port, "{client}");
    assert_loopback(client);
    let ephemeral = client.get_port("local_port");

    let server = server_side(&events, port, ephemeral).kind("open").only("open in nginx");
    assert_eq!(server.get_str("role"), "server", "{server}");
    assert!(["accept", "accept4"].contains(&server.get_str("via")), "{server}");
    assert!(workers.contains(&(server.get_u64("pid") as u32)), "not a worker {workers:?}: {server}");
    assert_eq!(server.get_u64("ppid"), u64::from(nginx.master_pid()), "{server}");
    assert_loopback(server);

    let data = select(&events).kind("data");
    let on = |open: &Value, direction| data.clone().conn(open.get_u64("conn_id")).direction(direction);
    let (request_out, request_in) = (on(client, "egress"), on(server, "ingress"));
    let (response_out, response_in) = (on(server, "egress"), on(client, "ingress"));
    for (stream, start) in [
        (&request_out, "GET /hello HTTP/1.1"),
        (&request_in, "GET /hello HTTP/1.1"),
        (&response_out, "HTTP/1.1 200"),
        (&response_in, "HTTP/1.1 200"),
    ] {
        let prefix = stream_prefix(stream);
        assert!(prefix.starts_with(start), "payload_prefix {prefix:?} does not start with {start:?}");
        assert_contiguous(stream);
    }
    assert_eq!(request_out.distinct("pid"), BTreeSet::from([u64::from(response.pid)]));
    assert_eq!(request_in.distinct("pid"), BTreeSet::from([server.get_u64("pid")]));
    assert_eq!(request_out.sum("len"), request_in.sum("len"), "request bytes differ between the two sides");
    assert_eq!(response_out.sum("len"), response_in.sum("len"), "response bytes differ between the two sides");

    // The close totals agree with the data lines.
    for (open, egress, ingress) in [(client, &request_out, &response_in), (server, &response_out, &request_in)] {
        let close = select(&events).kind("close").conn(open.get_u64("conn_id")).only("close");
        assert_eq!(close.get_u64("bytes_egress"), egress.sum("len"), "{close}");
        assert_eq!(close.get_u64("bytes_ingress"), ingress.sum("len"), "{close}");
    }
}

#[test]
fn keepalive_connection_opened_before_agent() {
    require_root();
    // The connection stays silent while the agent loads; keep nginx from timing it out.
    let config = format!("client_header_timeout 300s; keepalive_timeout 300s; {NGINX_HELLO}");
    let nginx = Nginx::start(free_port(), &config);
    let port = nginx.port();
    let files = TempDir::new("keepalive");
    let (ready, go) = (files.join("ready"), files.join("go"));
    let client = Running::spawn(
        python("client.py")
            .args(["keepalive", "--port", &port.to_string(), "--count", "3"])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--go-file")
            .arg(&go),
    );
    let client_pid = client.pid();
    assert!(wait_until(TIMEOUT, || ready.exists()), "client.py never connected");
    let client_port: u16 = fs::read_to_string(&ready).unwrap().trim().parse().unwrap();

    let dump = TempDir::new("keepalive-dump");
    let agent = Agent::start(&["--port", &port.to_string(), "--dump-dir", dump.arg()]);
    fs::write(&go, "").unwrap();
    client.finish(TIMEOUT).expect_success();
    agent.wait_for(|ev| exchange_done(ev, client_pid, port), TIMEOUT);
    let workers = nginx.worker_pids();
    let events = agent.stop();

    let client = select(&events).kind("open").pid(client_pid).only("open from client.py");
    assert_eq!(client.get_str("via"), "first_data", "{client}");
    assert_eq!(client.get_str("role"), "client", "{client}");
    assert_eq!((client.get_port("local_port"), client.get_port("remote_port")), (client_port, port), "{client}");
    assert_loopback(client);

    let server = server_side(&events, port, client_port).kind("open").only("open in nginx");
    assert_eq!(server.get_str("via"), "first_data", "{server}");
    assert_eq!(server.get_str("role"), "server", "{server}");
    assert!(workers.contains(&(server.get_u64("pid") as u32)), "not a worker {workers:?}: {server}");
    assert_eq!(server.get_u64("ppid"), u64::from(nginx.master_pid()), "{server}");
    assert_loopback(server);

    let stream = |open: &Value, direction| stream_bytes(dump.path(), open.get_u64("conn_id"), direction);
    for (side, direction, needle) in [
        (client, "egress", "GET /keepalive/"),
        (server, "ingress", "GET /keepalive/"),
        (server, "egress", "HTTP/1.1 200"),
        (client, "ingress", "HTTP/1.1 200"),
    ] {
        let bytes = stream(side, direction);
        let seen = count_occurrences(&bytes, needle.as_bytes());
        assert_eq!(seen, 3, "{needle:?} in {direction} of {side}:\n{}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn large_header_blocks_reassembled_exactly() {
    require_root();
    let server = PyServer::start("forking_http_server.py", &[]);
    let port = server.port();
    let dump = TempDir::new("bigheader-dump");
    let files = TempDir::new("bigheader");
    let agent = Agent::start(&["--port", &port.to_string(), "--dump-dir", dump.arg()]);

    let mut sent = Vec::new();
    for size in [8 * 1024, 32 * 1024] {
        let out = files.join(&format!("request-{size}"));
        let client = run(
            python("client.py")
                .args(["bigheader", "--port", &port.to_string(), "--size", &size.to_string(), "--out"])
                .arg(&out),
            TIMEOUT,
        )
        .expect_success();
        sent.push((client.pid, fs::read(&out).unwrap()));
    }
    agent.wait_for(|ev| sent.iter().all(|(pid, _)| exchange_done(ev, *pid, port)), TIMEOUT);
    let events = agent.stop();

    for (pid, request) in &sent {
        let size = request.len() as u64;
        assert!(size > 4096, "the block must span several 4 KiB capture chunks");
        let client = select(&events).kind("open").pid(*pid).only("open from client.py");
        let client_conn = client.get_u64("conn_id");
        let client_out = select(&events).kind("data").conn(client_conn).direction("egress");
        assert_eq!(stream_bytes(dump.path(), client_conn, "egress"), *request, "client egress of {size} B block");
        assert_eq!((client_out.sum("len"), client_out.sum("captured")), (size, size), "{}", client_out.show());

        // Served by a forked child: find the server side through its data, whatever the pid.
        let server_in = server_side(&events, port, client.get_port("local_port")).kind("data").direction("ingress");
        let server_conn = *server_in
            .distinct("conn_id")
            .iter()
            .next()
            .unwrap_or_else(|| panic!("no server-side ingress for {client}"));
        assert_eq!(server_in.distinct("conn_id").len(), 1, "{}", server_in.show());
        let reassembled = stream_bytes(dump.path(), server_conn, "ingress");
        assert_eq!(reassembled, *request, "server ingress of {size} B block");
        assert_eq!(count_occurrences(&reassembled, b"\r\ntraceparent: 00-"), 1, "traceparent lost");
        assert_eq!((server_in.sum("len"), server_in.sum("captured")), (size, size), "{}", server_in.show());
        assert_contiguous(&server_in);
    }
}

#[test]
fn prefork_servers_attributed_to_right_pid() {
    require_root();
    let nginx = Nginx::start(free_port(), NGINX_HELLO);
    let py_port = free_port();
    let agent = Agent::start(&["--port", &nginx.port().to_string(), "--port", &py_port.to_string()]);
    // Started after the agent, so its listener and every per-request child are new to it.
    let py = PyServer::start("forking_http_server.py", &["--port", &py_port.to_string()]);

    let mut clients = Vec::new();
    let mut served_by = BTreeSet::new();
    for _ in 0..4 {
        let response = curl_get(&format!("http://127.0.0.1:{}/", nginx.port()));
        assert_eq!(response.status, 200);
        clients.push((response.pid, nginx.port()));
        let response = curl_get(&format!("http://127.0.0.1:{py_port}/"));
        assert_eq!(response.status, 200);
        let child: u32 = response.header("X-Served-By-Pid").and_then(|p| p.parse().ok()).expect("X-Served-By-Pid");
        served_by.insert(child);
        clients.push((response.pid, py_port));
    }
    assert!(!served_by.contains(&py.pid()), "fixture answered from its listener");
    agent.wait_for(|ev| clients.iter().all(|&(pid, port)| exchange_done(ev, pid, port)), TIMEOUT);
    let workers = nginx.worker_pids();
    let events = agent.stop();

    for &(pid, port) in &clients {
        let open = client_open(&events, pid, port).unwrap_or_else(|| panic!("no open from curl {pid} to {port}"));
        assert_eq!(open.get_str("role"), "client", "{open}");
    }

    // Python: the parent accepts, the forked child reads and writes.
    let py_side = select(&events).local_port(py_port);
    let py_data = py_side.clone().kind("data");
    assert!(!py_data.is_empty(), "no server-side data on the python port");
    for event in py_side.iter() {
        assert_eq!(event.get_str("role"), "server", "{event}");
    }
    for event in py_data.iter() {
        assert!(
            served_by.contains(&(event.get_u64("pid") as u32)),
            "data not from a serving child {served_by:?}: {event}"
        );
    }
    for event in py_side.clone().kind("open").iter() {
        let pid = event.get_u64("pid") as u32;
        assert!(pid == py.pid() || served_by.contains(&pid), "open from an unknown process: {event}");
    }
    for &child in &served_by {
        let opens = py_side.clone().kind("open").pid(child);
        assert!(!opens.is_empty(), "no open for the descriptor child {child} inherited");
        assert_eq!(opens.distinct("ppid"), BTreeSet::from([u64::from(py.pid())]), "{}", opens.show());
        let child_data = py_data.clone().pid(child);
        assert!(child_data.distinct("conn_id").is_subset(&opens.distinct("conn_id")), "{}", child_data.show());
        for direction in ["ingress", "egress"] {
            assert!(!child_data.clone().direction(direction).is_empty(), "no {direction} from child {child}");
        }
    }

    // nginx: every connection lives in a worker, never in the master.
    let nginx_side = select(&events).local_port(nginx.port());
    assert!(!nginx_side.clone().kind("data").is_empty(), "no server-side data on the nginx port");
    for event in nginx_side.iter() {
        let pid = event.get_u64("pid") as u32;
        assert!(workers.contains(&pid), "not a worker {workers:?} (master {}): {event}", nginx.master_pid());
        if event.kind() == "open" {
            assert_eq!(event.get_u64("ppid"), u64::from(nginx.master_pid()), "{event}");
        }
    }
}

#[test]
fn pipe_unix_udp_not_reported() {
    require_root();
    let server = PyServer::start("forking_http_server.py", &[]);
    // No --port: nothing may be filtered out before the agent decides what is TCP.
    let agent = Agent::start(&["--show-payload"]);

    let mut negatives = Vec::new();
    for mode in ["pipe", "unix", "udp"] {
        let marker = unique_marker(mode);
        let done = run(python("client.py").args([mode, "--marker", &marker]), TIMEOUT).expect_success();
        negatives.push((mode, marker, done.pid));
    }
    // Positive control, after the negatives: once it shows up, their events would have too.
    let marker = unique_marker("tcp");
    let tcp =
        run(python("client.py").args(["tcp", "--port", &server.port().to_string(), "--marker", &marker]), TIMEOUT)
            .expect_success();
    let mentions = |event: &Value, marker: &str| event.to_string().contains(marker);
    let reported = |events: &[Value]| {
        let hits = select(events).kind("data").filter(|e| mentions(e, &marker));
        !hits.clone().pid(tcp.pid).direction("egress").is_empty()
            && !hits.local_port(server.port()).direction("ingress").is_empty()
    };
    let seen = agent.wait_for(reported, TIMEOUT);
    let events = agent.stop();
    assert!(seen, "positive control: the TCP request with marker {marker} was not reported on both sides");

    for (mode, marker, pid) in &negatives {
        let leaked = select(&events).filter(|e| mentions(e, marker));
        assert!(leaked.is_empty(), "{mode} traffic reported:\n{}", leaked.show());
        let by_pid = select(&events).pid(*pid);
        assert!(by_pid.is_empty(), "events from the {mode} fixture (pid {pid}):\n{}", by_pid.show());
    }
}

#[test]
fn loader_errors() {
    require_root();
    let bin = hoptrace_bin();

    let unprivileged = run(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(&bin)
            .args(["capture", "--duration", "1"]),
        READY_TIMEOUT,
    );
    assert!(!unprivileged.status.success(), "{unprivileged:#?}");
    assert!(unprivileged.stderr.contains("hoptrace: error:"), "{unprivileged:#?}");
    assert!(unprivileged.stderr.contains("needs root"), "{unprivileged:#?}");

    // In a private mount namespace, so the host's tracefs stays mounted for other tests.
    let without_tracefs = |args: &str| {
        let script = "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; \
                      umount -l /sys/kernel/debug 2>/dev/null; exec \"$0\" capture \"$@\"";
        run(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", script])
                .arg(&bin)
                .args(args.split_whitespace()),
            READY_TIMEOUT,
        )
    };

    let refused = without_tracefs("--no-mount-tracefs --duration 1");
    assert!(!refused.status.success(), "{refused:#?}");
    assert!(refused.stderr.contains("hoptrace: error:"), "{refused:#?}");
    assert!(refused.stderr.contains("tracefs is not mounted"), "{refused:#?}");
    assert!(refused.stderr.contains("mount -t tracefs tracefs /sys/kernel/tracing"), "{refused:#?}");

    let mounted = without_tracefs("--duration 2").expect_success();
    let ready =
        mounted.stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|e| e.kind() == "ready");
    assert!(ready, "no ready line after mounting tracefs itself: {mounted:#?}");
}
