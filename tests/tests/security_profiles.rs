//! The shipped seccomp profile (deploy/security/hoptrace-seccomp.json) applied to the real
//! agent, installed with libseccomp the way a container runtime installs a Localhost
//! profile (tests/fixtures/seccomp_exec.py): the agent loads its programs, captures a
//! request and exports its span under it; what the profile must deny (ptrace attach) is
//! denied (and allowed without it); and the filter is really in force (the same profile without `bpf` stops the
//! load). The AppArmor profile cannot be enforced on this kernel (no AppArmor LSM); its
//! syntax is checked by `apparmor_parser -Q` in xtask/check_deploy.py.

use std::{fs, path::PathBuf, process::Command};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

fn profile() -> PathBuf {
    fixture("../../deploy/security/hoptrace-seccomp.json")
}

/// `cmd` run under the seccomp profile at `profile`.
fn confined(profile: &std::path::Path, program: &std::path::Path) -> Command {
    let mut cmd = python("seccomp_exec.py");
    cmd.arg(profile).arg(program);
    cmd
}

#[test]
fn the_agent_runs_and_exports_under_the_seccomp_profile() {
    require_root();
    let server = PyServer::start("edge_server.py", &["0"]);
    let dir = TempDir::new("seccomp");
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    let mut cmd = confined(&profile(), &hoptrace_bin());
    cmd.args(["run", "--port", &server.port().to_string(), "--output"]).arg(&out);
    cmd.args(["--listen", &format!("127.0.0.1:{listen}")]);
    without_otel_env(&mut cmd);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "the agent is not under a seccomp filter:\n{status}");

    let trace = "5eccc0e0000000000000000000000001";
    let tp = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
    run(
        Command::new("curl").args(["-s", "-m", "5", "-H", &tp, &format!("http://127.0.0.1:{}/ok", server.port())]),
        TIMEOUT,
    )
    .expect_success();
    wait_for_spans_in(&out, "the request's SERVER span", |s| s.iter().any(|s| s.trace_id == trace && s.kind == SERVER));
    // The endpoint (accept, the metrics snapshot) works under it too.
    let m = Metrics::scrape(listen);
    assert!(m.get("hoptrace_capture_records_total") > 0, "{}", m.0);
    let done = stop(agent);
    let stopped = stopped_log(&done);
    assert_eq!(stopped["export"]["export_requests_failed"], Value::from(0), "{stopped}");
    assert!(!done.stderr.contains("Operation not permitted"), "a system call was refused:\n{}", done.stderr);
}

#[test]
fn the_seccomp_profile_denies_ptrace_and_is_really_enforced() {
    require_root();
    // The same attach, unconfined then confined: allowed to root, refused under the profile.
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let attach = |cmd: &mut Command| run(cmd.arg(target.pid().to_string()), TIMEOUT).expect_success().stdout;
    let free = Running::spawn(Command::new("sleep").arg("60"));
    let unconfined = run(python("ptrace_attach.py").arg(free.pid().to_string()), TIMEOUT).expect_success().stdout;
    assert_eq!(unconfined.trim(), "ptrace attach: ok", "the control attach (no profile) failed");
    let mut cmd = confined(&profile(), std::path::Path::new("python3"));
    cmd.arg(fixture("ptrace_attach.py"));
    assert_eq!(attach(&mut cmd).trim(), "ptrace attach: EPERM", "ptrace attach not refused under the profile");

    // Without `bpf` in the allow-list the agent cannot load: the filter is what the
    // previous test ran under, not a no-op.
    let dir = TempDir::new("seccomp-nobpf");
    let mut p: Value = serde_json::from_str(&fs::read_to_string(profile()).unwrap()).unwrap();
    for rule in p["syscalls"].as_array_mut().unwrap() {
        rule["names"].as_array_mut().unwrap().retain(|n| n != "bpf");
    }
    let nobpf = dir.join("nobpf.json");
    fs::write(&nobpf, p.to_string()).unwrap();
    let mut cmd = confined(&nobpf, &hoptrace_bin());
    cmd.args(["run", "--port", "1", "--listen", "off", "--output", "/dev/null", "--duration", "5"]);
    let done = run(&mut cmd, READY_TIMEOUT);
    assert!(!done.status.success(), "the agent loaded without bpf(): {}", done.stderr);
    assert!(done.stderr.contains("Operation not permitted"), "{}", done.stderr);
}
