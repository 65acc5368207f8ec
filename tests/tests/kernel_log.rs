//! Kernel-side diagnostics (aya-log) on the real kernel: off by default, and with
//! `HOPTRACE_KERNEL_LOG=1` a record written by the kernel programs comes out as one of
//! the agent's JSON log lines.
//!
//! The trigger is TLS between two in-memory BIOs (Python's `ssl.MemoryBIO`): SSL_read and
//! SSL_write run with no socket behind them and no SSL_set_fd, so the OpenSSL return probe
//! holds plaintext whose socket it cannot know. The kernel counts that
//! (`tls_socket_unknown`) and, when diagnostics are on, logs which process it was.
//!
//! Self-contained (only `hoptrace_e2e`), so it can become a module of a single test binary.

use std::{process::Command, time::Instant};

use hoptrace_e2e::*;
use serde_json::Value;

/// Repeats a TLS exchange over memory BIOs every 100 ms until stdin closes, so the test
/// does not depend on when the agent attached its probes to the process's libssl.
const MEMORY_BIO_TLS: &str = r#"
import select, ssl, sys
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(sys.argv[1], sys.argv[2])
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE

def exchange():
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    while not all(done):
        for i, end in enumerate((client, server)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.write(b"kernel-log probe")
    s_in.write(c_out.read())
    assert server.read(100) == b"kernel-log probe"

print("exchanging", flush=True)
while True:
    exchange()
    if select.select([sys.stdin], [], [], 0.1)[0] and not sys.stdin.read(1):
        break
"#;

/// `hoptrace capture` on a port nothing uses (no connection output), stats every 200 ms.
fn start_capture(kernel_log: bool) -> Running {
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["capture", "--port", &free_port().to_string(), "--stats-interval", "0.2"]);
    if kernel_log {
        cmd.env("HOPTRACE_KERNEL_LOG", "1");
    } else {
        cmd.env_remove("HOPTRACE_KERNEL_LOG");
    }
    let agent = Running::spawn(&mut cmd);
    let ready = wait_until(READY_TIMEOUT, || agent.stdout().contains("\"event\":\"ready\""));
    assert!(ready, "capture not ready; stderr:\n{}", agent.stderr());
    agent
}

/// The TLS fixture, running until its stdin is closed.
fn start_memory_bio_tls(dir: &TempDir) -> Running {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    self_signed_cert(&cert, &key);
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(MEMORY_BIO_TLS).arg(&cert).arg(&key).env("PYTHONUNBUFFERED", "1");
    let mut fixture = Running::spawn_piped(without_otel_env(&mut cmd));
    fixture.wait_for_line("exchanging", TIMEOUT);
    fixture
}

fn stop(agent: Running, mut fixture: Running) -> Finished {
    fixture.close_stdin();
    fixture.finish(TIMEOUT).expect_success();
    agent.signal(libc::SIGINT);
    let done = agent.finish(TIMEOUT);
    assert!(done.status.success(), "capture exited with {}; stderr:\n{}", done.status, done.stderr);
    done
}

fn kernel_lines(stderr: &str) -> Vec<Value> {
    stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["source"] == "kernel").collect()
}

#[test]
fn kernel_log_line_comes_out_when_enabled() {
    require_root();
    let dir = TempDir::new("kernel-log-on");
    let mut agent = start_capture(true);
    let started = Instant::now();
    let fixture = start_memory_bio_tls(&dir);
    let needle = format!("tls: plaintext of process {} on an SSL object whose socket is not known", fixture.pid());
    let line = agent.wait_for_stderr(&needle, TIMEOUT);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    assert_eq!(v["level"], "warn", "{line}");
    assert_eq!(v["source"], "kernel", "{line}");
    assert_eq!(v["target"], "hoptrace::tls", "{line}");
    let site = v["site"].as_str().unwrap_or_default();
    assert!(site.starts_with("ebpf/programs/src/tls.rs:"), "{line}");
    let done = stop(agent, fixture);
    // At most one line per call site per second, though the fixture hits it ~10 times a second.
    let lines = kernel_lines(&done.stderr);
    let from_site = lines.iter().filter(|l| l["site"] == site).count();
    let allowed = started.elapsed().as_secs() as usize + 1;
    assert!((1..=allowed).contains(&from_site), "{from_site} lines from {site} in {allowed} s:\n{}", done.stderr);
}

#[test]
fn kernel_log_is_off_by_default() {
    require_root();
    let dir = TempDir::new("kernel-log-off");
    let agent = start_capture(false);
    let fixture = start_memory_bio_tls(&dir);
    // The kernel reached the logging site: its drop counter moved.
    let hit = wait_until(TIMEOUT, || {
        agent
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["event"] == "stats" && v["drops"]["tls_socket_unknown"].as_u64().unwrap_or(0) > 0)
    });
    assert!(hit, "no tls_socket_unknown drop was counted; stdout:\n{}", agent.stdout());
    // A clean stop drains whatever the kernel logged; with the switch off there is nothing.
    let done = stop(agent, fixture);
    assert_eq!(kernel_lines(&done.stderr), Vec::<Value>::new(), "{}", done.stderr);
}
