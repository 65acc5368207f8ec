//! "Run on a VM" (README): `deploy/systemd/install.sh` into a staging root (DESTDIR), the
//! installed binary checking the installed configuration, `systemd-analyze verify` on the
//! installed unit, and the unit's ExecStart run with the unit's own capability set,
//! NoNewPrivileges and an unprivileged uid (through `setpriv`), capturing real traffic. systemd is not PID 1 on
//! the test machines, so `systemctl enable --now` itself is the one step not run here.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mode(p: &std::path::Path) -> u32 {
    fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// Capability numbers (linux/capability.h) of the names the unit may use.
fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("capability {other} unknown to this test: add it"),
    }
}

fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn vm_install_then_the_units_command_runs_with_the_units_capabilities() {
    require_root();
    let dest = TempDir::new("vm-root");
    let install = || {
        run(
            Command::new("sh")
                .arg(repo().join("deploy/systemd/install.sh"))
                .arg(hoptrace_bin())
                .env("DESTDIR", dest.path()),
            TIMEOUT,
        )
        .expect_success()
    };
    install();
    let bin = dest.join("usr/local/bin/hoptrace");
    let config = dest.join("etc/hoptrace/hoptrace.yaml");
    let unit_path = dest.join("etc/systemd/system/hoptrace.service");
    assert_eq!((mode(&bin), mode(&config), mode(&unit_path)), (0o755, 0o644, 0o644));
    let shipped = fs::read_to_string(repo().join("deploy/hoptrace.yaml")).unwrap();
    assert_eq!(fs::read_to_string(&config).unwrap(), shipped);
    let checked = run(Command::new(&bin).arg("--check-config").arg(&config), TIMEOUT).expect_success();
    assert!(checked.stdout.contains(": ok"), "{checked:?}");

    // Installing again keeps the operator's configuration.
    fs::write(&config, format!("{shipped}# edited on this VM\n")).unwrap();
    let again = install();
    assert!(fs::read_to_string(&config).unwrap().ends_with("# edited on this VM\n"), "{again:?}");
    assert_eq!(fs::read_to_string(dest.join("etc/hoptrace/hoptrace.yaml.dist")).unwrap(), shipped);

    // The installed unit, its paths moved into the staging root. verify also checks that
    // ExecStart's binary exists; any warning fails.
    let unit = fs::read_to_string(&unit_path).unwrap();
    let staged = |s: &str| {
        s.replace("/usr/local/bin/hoptrace", bin.to_str().unwrap())
            .replace("/etc/hoptrace/", &format!("{}/", dest.join("etc/hoptrace").display()))
    };
    let verify_dir = dest.join("verify");
    fs::create_dir(&verify_dir).unwrap();
    fs::write(verify_dir.join("hoptrace.service"), staged(&unit)).unwrap();
    let v = run(Command::new("systemd-analyze").arg("verify").arg(verify_dir.join("hoptrace.service")), TIMEOUT);
    assert!(
        v.status.success() && v.stdout.trim().is_empty() && v.stderr.trim().is_empty(),
        "systemd-analyze verify: {v:?}"
    );

    // ExecStart with CapabilityBoundingSet / AmbientCapabilities / NoNewPrivileges as
    // systemd would apply them (an unprivileged uid with exactly that set, ambient).
    let caps: Vec<&str> = unit_value(&unit, "CapabilityBoundingSet").split_whitespace().collect();
    assert_eq!(caps, unit_value(&unit, "AmbientCapabilities").split_whitespace().collect::<Vec<_>>());
    assert!(!caps.contains(&"CAP_SYS_ADMIN"), "the unit must not need CAP_SYS_ADMIN");
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bounding =
        u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim(), 16).unwrap();
    // A container running these tests may itself lack one (CAP_SYS_RESOURCE, which only
    // raises RLIMIT_MEMLOCK for kernels before 5.11): it cannot be granted, so it is left
    // out, and said so.
    let (usable, missing): (Vec<&str>, Vec<&str>) = caps.iter().partition(|c| bounding & (1 << cap_number(c)) != 0);
    assert!(usable.contains(&"CAP_BPF") && usable.contains(&"CAP_PERFMON"), "this machine cannot grant {missing:?}");
    if !missing.is_empty() {
        eprintln!("note: {missing:?} not in this test's own bounding set; run without them");
    }
    let set = std::iter::once("-all".to_owned())
        .chain(usable.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let exec = staged(unit_value(&unit, "ExecStart"));
    let mut cmd = Command::new("setpriv");
    cmd.args(["--no-new-privs", "--bounding-set", &set, "--inh-caps", &set, "--ambient-caps", &set]);
    // DynamicUser: systemd runs it as an unprivileged uid of its own; `nobody` stands in
    // for it, so the capabilities above are all the agent has (ambient, not uid 0's).
    assert_eq!(unit_value(&unit, "DynamicUser"), "yes", "the unit runs as its own user");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    cmd.args(exec.split_whitespace());
    without_otel_env(&mut cmd);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    let server = PyServer::start("chain_service.py", &["0"]);
    // A word, not an id: route templating keeps it (it would turn a unique marker into /{id}).
    let marker = "vm-install";
    assert_eq!(curl_get(&format!("http://127.0.0.1:{}/{marker}", server.port())).status, 200);
    assert!(
        wait_until(TIMEOUT, || agent.stdout().contains(marker)),
        "no span for /{marker} from the installed agent; stderr:\n{}",
        agent.stderr()
    );
    agent.signal(libc::SIGINT);
    let done = agent.finish(TIMEOUT);
    assert!(done.status.success(), "{}", done.stderr);
    let spans = parse_spans(&done.stdout);
    let span = spans
        .iter()
        .find(|s| s.kind == SERVER && s.attrs.get("url.path") == Some(&Value::from(format!("/{marker}"))))
        .unwrap_or_else(|| panic!("no SERVER span for /{marker}"));
    assert_eq!(span.service, "chain_service");
    // The installed configuration is the one in effect (its resource attributes).
    assert_eq!(span.resource.get("deployment.environment.name"), Some(&Value::from("prod")));
}
