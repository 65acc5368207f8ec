//! Self-tests of the fixtures, without the agent: when a capture test fails, these say
//! whether the scenario itself still works.

use hoptrace_e2e::*;
use std::fs;

#[test]
fn nginx_serves_from_its_workers() {
    require_root();
    let nginx = Nginx::start(free_port(), NGINX_HELLO);
    assert_eq!(nginx.worker_pids().len(), 2);
    assert!(!nginx.worker_pids().contains(&nginx.master_pid()));
    let response = curl_get(&format!("http://127.0.0.1:{}/hello", nginx.port()));
    assert_eq!((response.status, response.body.as_str()), (200, "hello\n"));
}

#[test]
fn forking_server_answers_from_children_and_takes_big_headers() {
    let server = PyServer::start("forking_http_server.py", &[]);
    let first = curl_get(&format!("http://127.0.0.1:{}/", server.port()));
    let second = curl_get(&format!("http://127.0.0.1:{}/", server.port()));
    let served: Vec<_> = [&first, &second].iter().map(|r| r.header("X-Served-By-Pid").unwrap().to_string()).collect();
    assert_ne!(served[0], server.pid().to_string());
    assert_ne!(served[0], served[1], "each connection gets its own child");

    let files = TempDir::new("fixture-bigheader");
    let out = files.join("request");
    let size = 64 * 1024;
    let done = run(
        python("client.py")
            .args(["bigheader", "--port", &server.port().to_string(), "--size", &size.to_string(), "--out"])
            .arg(&out),
        TIMEOUT,
    )
    .expect_success();
    assert_eq!(done.stdout.trim(), size.to_string());
    assert_eq!(fs::read(&out).unwrap().len(), size);
}

#[test]
fn client_negative_modes_run() {
    for mode in ["pipe", "unix", "udp"] {
        let done = run(python("client.py").args([mode, "--marker", &unique_marker(mode)]), TIMEOUT).expect_success();
        assert_eq!(done.stdout.trim(), "OK", "{mode}");
    }
}
