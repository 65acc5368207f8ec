//! Developer tasks: `cargo xtask <setup|build-ebpf|run|test>`.
//!
//! `run` and `test` install what is missing first (idempotent, a few hundred milliseconds
//! when everything is there), so the two README commands work on a fresh machine.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

mod bench;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the kernel-side toolchain, the test servers and the tests' Python venv
    /// (target/pyenv, from tests/requirements.txt) (idempotent).
    Setup,
    /// Build the eBPF object on its own and report its size (the agent's build.rs embeds
    /// the same object; this is for inspecting it).
    BuildEbpf,
    /// Build the agent (release) and run its main job; arguments after `--` go to `hoptrace run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Regenerate deploy/alerts/prometheusrule.yaml from deploy/alerts/hoptrace-rules.yaml.
    GenRules,
    /// Benchmark: nginx under wrk with and without the agent, rounds interleaved; prints
    /// medians, ratios and the issue-8 targets, writes JSON under target/bench/ (root).
    Bench(bench::BenchArgs),
    /// Run the parser fuzz targets (fuzz/, cargo-fuzz on nightly) for a while each; the
    /// committed corpus (fuzz/corpus/<target>) is replayed first. `cargo xtask test` runs
    /// this briefly; see fuzz/README.md for longer runs.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Targets to run (default: all, as `cargo fuzz list` shows them).
        targets: Vec<String>,
    },
    /// Run the whole test suite: unit tests and end-to-end tests on the real kernel (root).
    Test {
        /// Extra arguments for the test harness (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Pinned kernel-side toolchain (see shared/toolchain/README.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "nginx",
    "curl",
    "util-linux",
    "prometheus",
    "prometheus-alertmanager",
    // Message-queue e2e tests (tests/tests/mq.rs) start their own brokers.
    "rabbitmq-server",
    "nats-server",
    // The VM install test runs `systemd-analyze verify`; TLS and fake-API fixtures need openssl.
    "systemd",
    "openssl",
    // `cargo xtask bench`: the load generator.
    "wrk",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect()
}

fn setup() -> Result<()> {
    let t = Instant::now();
    let missing = apt_missing();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}: run `sudo apt-get install -y {}`", missing.join(" "));
        }
        eprintln!("xtask: installing {missing:?} with apt-get");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    // rust-src for the nightly toolchain (the bpf target builds core from source).
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("no nightly toolchain: run `rustup toolchain install nightly`")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        let ok = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let archive = workspace_root().join("../shared/toolchain/rust-src-nightly-2026-05-19.tar.xz");
            if !archive.exists() {
                bail!("cannot install rust-src: run `rustup component add rust-src --toolchain nightly`");
            }
            eprintln!("xtask: rustup failed; unpacking {}", archive.display());
            run(Command::new("tar").arg("-xJf").arg(&archive).arg("-C").arg(sysroot.join("lib/rustlib")))?;
        }
    }

    let linker_ok = output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        run(Command::new("cargo")
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
    }
    kafka_broker()?;
    python_env()?;
    eprintln!("xtask: prerequisites ready ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// The Kafka-protocol broker of the Kafka e2e test: `tansu` from crates, with only the
/// `dynostore` storage feature (its `memory://` engine needs no database or object
/// store). Installed into ~/.cargo/bin once; a cold build takes ~26 min of CPU (about 15 min on 2 idle cores).
const TANSU_VERSION: &str = "0.6.0";

fn kafka_broker() -> Result<()> {
    let ok = output(Command::new("tansu").arg("--version")).is_some_and(|v| v.contains(TANSU_VERSION));
    if !ok {
        eprintln!("xtask: installing tansu {TANSU_VERSION} (Kafka broker for the e2e tests; a cold build takes about 15 minutes on 2 idle cores)");
        run(Command::new("cargo").args(["install", &format!("tansu@{TANSU_VERSION}"), "--locked"]).args([
            "--no-default-features",
            "--features",
            "dynostore",
        ]))?;
    }
    Ok(())
}

/// FNV-1a (64-bit): a content hash that is stable across Rust releases, unlike std's
/// `DefaultHasher`, so the stamp does not go stale on a toolchain update.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The Python environment of the e2e fixtures: a venv at `target/pyenv` (made with the
/// machine's `python3` when missing or broken), with `tests/requirements.txt` installed
/// whenever that file's content differs from the last successful install (a stamp file
/// inside the venv holds the hash of what was installed).
fn python_env() -> Result<()> {
    let root = workspace_root();
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/requirements.txt");
    let stamp = venv.join(".requirements-stamp");
    let content = std::fs::read(&requirements).with_context(|| format!("cannot read {}", requirements.display()))?;
    let wanted = format!("{:016x}\n", fnv1a64(&content));

    // A venv whose base interpreter went away (pyenv switch, distro upgrade) cannot run.
    let usable = python.exists() && Command::new(&python).args(["-c", ""]).status().is_ok_and(|s| s.success());
    if !usable {
        if venv.exists() {
            eprintln!("xtask: {} is broken; recreating it", venv.display());
            std::fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
        }
        eprintln!("xtask: creating the tests' Python venv {} and installing tests/requirements.txt", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("cannot create the venv (Debian/Ubuntu: apt-get install python3-venv)")?;
    } else if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    } else {
        eprintln!("xtask: tests/requirements.txt changed; installing it into {}", venv.display());
    }
    // The stamp goes only after a successful install, so a failed one is retried next time.
    let _ = std::fs::remove_file(&stamp);
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(())
}

fn build_ebpf() -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let rustflags = ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "-p", "hoptrace-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    let object = target_dir.join("bpfel-unknown-none/release/hoptrace");
    let size = std::fs::metadata(&object)?.len();
    println!("eBPF object: {} ({size} bytes)", object.display());
    Ok(object)
}

const RULES: &str = "deploy/alerts/hoptrace-rules.yaml";
const RULES_TEST: &str = "deploy/alerts/hoptrace-rules.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/alerts/prometheusrule.yaml";

/// The PrometheusRule manifest: the plain rules file's groups under `spec`, so there is
/// one source of truth.
fn prometheus_rule(root: &Path) -> Result<String> {
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
fn check_rules(root: &Path) -> Result<()> {
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
const DEPLOY_CONFIG: &str = "target/deploy/hoptrace.yaml";

/// The deployment files: Kubernetes manifests and the collector config
/// (xtask/check_deploy.py, offline schemas from kubernetes-validate; the Prometheus
/// Operator CRDs get a structural check there instead), and the systemd unit
/// (`systemd-analyze verify`, when the tool exists).
fn check_deploy(root: &Path) -> Result<()> {
    let python = root.join("target/pyenv/bin/python");
    run(Command::new(python).arg("xtask/check_deploy.py").arg(root).arg(root.join(DEPLOY_CONFIG)).current_dir(root))?;

    if output(Command::new("systemd-analyze").arg("--version")).is_none() {
        eprintln!("xtask: systemd-analyze not found; {SYSTEMD_UNIT} not verified");
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

/// Seconds per fuzz target in `cargo xtask test` (a smoke run: the corpus replay plus a
/// little exploration; about a minute for the four targets once the build is warm).
const CI_FUZZ_SECONDS: u64 = 12;

/// `cargo +nightly fuzz` with the agent's eBPF build skipped (the parsers do not need it).
fn cargo_fuzz(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz"]).current_dir(root).env("AYA_BUILD_SKIP", "1");
    c
}

/// Builds the fuzz targets and runs each for `seconds`: libFuzzer replays the committed
/// corpus (fuzz/corpus/<target>, read only) and explores from it into a scratch corpus
/// under target/; a crash stops everything with its input saved under target/fuzz-artifacts.
fn fuzz(root: &Path, seconds: u64, targets: &[String]) -> Result<()> {
    let t = Instant::now();
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        eprintln!("xtask: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets: Vec<String> = if targets.is_empty() {
        let list = output(cargo_fuzz(root).arg("list")).context("cargo fuzz list failed")?;
        list.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    } else {
        targets.to_vec()
    };
    run(cargo_fuzz(root).args(["build", "-O"]))?;
    let built = t.elapsed();
    for target in &targets {
        let scratch = root.join("target/fuzz-corpus").join(target);
        let artifacts = root.join("target/fuzz-artifacts").join(target);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&artifacts)?;
        let status = cargo_fuzz(root)
            .args(["run", "-O", target])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed: its input is in {}; fix the bug, then commit the input as \
                 fuzz/corpus/{target}/regression-<name> (replayed by every run) and as a unit test",
                artifacts.display()
            );
        }
    }
    eprintln!(
        "xtask: fuzzed {} targets for {seconds} s each (build {:.0} s, total {:.0} s)",
        targets.len(),
        built.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup(),
        Task::GenRules => {
            std::fs::write(root.join(PROMETHEUS_RULE), prometheus_rule(&root)?)?;
            println!("wrote {PROMETHEUS_RULE}");
            Ok(())
        }
        Task::BuildEbpf => {
            setup()?;
            build_ebpf().map(|_| ())
        }
        Task::Run { args } => {
            setup()?;
            run(cargo(&root).args(["build", "--release", "-p", "hoptrace"]))?;
            let bin = root.join("target/release/hoptrace");
            let mut cmd = Command::new(bin);
            cmd.arg("run").args(&args);
            run(&mut cmd)
        }
        Task::Bench(args) => {
            if !is_root() {
                bail!("the benchmark loads eBPF programs and enables kernel.bpf_stats_enabled: run it as root");
            }
            setup()?;
            bench::bench(&root, args)
        }
        Task::Fuzz { seconds, targets } => fuzz(&root, seconds, &targets),
        Task::Test { args } => {
            if !is_root() {
                bail!("the end-to-end tests load eBPF programs and need root: run `sudo -E cargo xtask test`");
            }
            setup()?;
            check_rules(&root)?;
            check_deploy(&root)?;
            run(cargo(&root).args(["build", "-p", "hoptrace"]))?;
            let bin = root.join("target/debug/hoptrace");
            // The shipped configurations (and the ConfigMap's copy) must pass their checker.
            run(Command::new(&bin).arg("--check-config").arg(root.join("deploy/hoptrace.yaml")))?;
            run(Command::new(&bin).arg("--check-config").arg(root.join(DEPLOY_CONFIG)))?;
            run(cargo(&root)
                .args(["test", "--workspace", "--exclude", "hoptrace-ebpf", "--"])
                .args(&args)
                .env("HOPTRACE_BIN", bin))?;
            // The parsers' fuzz smoke run, only for the whole suite (not a filtered run).
            if args.is_empty() {
                fuzz(&root, CI_FUZZ_SECONDS, &[])?;
            }
            Ok(())
        }
    }
}
