//! The static gates of `cargo xtask test`: formatting and clippy (`cargo xtask lint`), the
//! alert rules and the deployment files.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{
    prereq::{cargo, rustup},
    progress::{output, run, say},
};

/// `cargo fmt --check`, clippy on the workspace for the host, and clippy on the kernel crate
/// for its own target (on the host its programs are compiled out, so the host pass sees little
/// of them). Every check runs; the error lists the ones that failed.
pub fn lint(root: &Path) -> Result<()> {
    const CLIPPY_ARGS: &[&str] = &["-D", "warnings", "-W", "clippy::undocumented_unsafe_blocks"];
    let mut failed = Vec::new();

    say("xtask lint: cargo fmt --all -- --check");
    if cargo().args(["fmt", "--all", "--", "--check"]).current_dir(root).status()?.success() {
        say("xtask lint: formatting ok");
    } else {
        failed.push("formatting (fix: cargo fmt --all)");
    }

    say("xtask lint: cargo clippy --workspace --all-targets");
    let host = cargo()
        .args(["clippy", "--workspace", "--all-targets", "--keep-going", "--"])
        .args(CLIPPY_ARGS)
        .current_dir(root)
        .status()?;
    if !host.success() {
        failed.push("clippy on the workspace");
    }

    // The kernel crate as aya-build compiles it (nightly, bpf target, core from source), in a
    // target directory of its own so it never invalidates the agent's build.
    say("xtask lint: cargo +nightly clippy -p hoptrace-ebpf --target bpfel-unknown-none");
    let kernel = rustup()
        .args(["run", "nightly", "cargo", "clippy", "-p", "hoptrace-ebpf", "--bins", "--keep-going"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/lint-ebpf"))
        .arg("--")
        .args(CLIPPY_ARGS)
        .env("CARGO_ENCODED_RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(root)
        .status()?;
    if !kernel.success() {
        failed.push("clippy on the kernel crate (bpf target)");
    }

    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    say("xtask lint: clean");
    Ok(())
}

const RULES: &str = "deploy/alerts/hoptrace-rules.yaml";
const RULES_TEST: &str = "deploy/alerts/hoptrace-rules.test.yaml";
pub const PROMETHEUS_RULE: &str = "deploy/alerts/prometheusrule.yaml";

/// The PrometheusRule manifest: the plain rules file's groups under `spec`, so there is
/// one source of truth.
pub fn prometheus_rule(root: &Path) -> Result<String> {
    let rules = std::fs::read_to_string(root.join(RULES)).with_context(|| format!("reading {RULES}"))?;
    let mut out = String::from(
        "# Generated from hoptrace-rules.yaml by `cargo xtask gen-rules`; do not edit.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: hoptrace\n  namespace: hoptrace\n  labels:\n    app.kubernetes.io/name: hoptrace\n\
         spec:\n",
    );
    for line in rules.lines().filter(|l| !l.starts_with('#')) {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// promtool on the rules and their unit tests, and the generated manifest up to date.
pub fn check_rules(root: &Path) -> Result<()> {
    run(Command::new("promtool").args(["check", "rules", RULES]).current_dir(root))?;
    run(Command::new("promtool").args(["test", "rules", RULES_TEST]).current_dir(root))?;
    let committed = std::fs::read_to_string(root.join(PROMETHEUS_RULE)).unwrap_or_default();
    if committed != prometheus_rule(root)? {
        bail!("{PROMETHEUS_RULE} is stale: run `cargo xtask gen-rules` and commit it");
    }
    Ok(())
}

const SYSTEMD_UNIT: &str = "deploy/systemd/hoptrace.service";
/// The ConfigMap's embedded agent configuration, extracted by check_deploy.py.
pub const DEPLOY_CONFIG: &str = "target/deploy/hoptrace.yaml";

/// The deployment files: Kubernetes manifests and the collector config
/// (xtask/check_deploy.py, offline schemas from kubernetes-validate; the Prometheus
/// Operator CRDs get a structural check there instead), and the systemd unit
/// (`systemd-analyze verify`, when the tool exists).
pub fn check_deploy(root: &Path) -> Result<()> {
    let python = root.join("target/pyenv/bin/python");
    run(Command::new(python).arg("xtask/check_deploy.py").arg(root).arg(root.join(DEPLOY_CONFIG)).current_dir(root))?;

    if output(Command::new("systemd-analyze").arg("--version")).is_none() {
        say(&format!("xtask: systemd-analyze not found; {SYSTEMD_UNIT} not verified"));
        return Ok(());
    }
    // verify insists that ExecStart's binary exists: check a copy that starts an existing
    // executable (this one) instead of /usr/local/bin/hoptrace.
    let unit = std::fs::read_to_string(root.join(SYSTEMD_UNIT)).with_context(|| format!("reading {SYSTEMD_UNIT}"))?;
    let exe = std::env::current_exe()?;
    let dir = root.join("target/deploy");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("hoptrace.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/hoptrace", &exe.to_string_lossy()))?;
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().context("running systemd-analyze")?;
    // Unknown keys are only warnings (exit 0): any output is a failure.
    let report = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !report.trim().is_empty() {
        bail!("systemd-analyze verify {SYSTEMD_UNIT}:\n{report}");
    }
    Ok(())
}
