//! Installing what is missing, in two sets: what building and running the agent needs
//! (`cargo xtask run`) and what only the tests need (`cargo xtask test`). Every function is
//! idempotent and quick when its tool is already there, and says which case it is.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::progress::{output, run, run_logged, Progress, Step};

/// The kernel-side toolchain, pinned (see the toolchain README next to the fallback archive).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What building the agent needs from apt: LLVM 22, which bpf-linker links against.
pub const RUN_APT: &[&str] = &["llvm-22-dev"];

/// What only the tests (and `cargo xtask bench`) need from apt.
pub const TEST_APT: &[&str] = &[
    "nginx",
    "curl",
    // setpriv (the VM install test) and flock.
    "util-linux",
    "prometheus",
    "prometheus-alertmanager",
    // The message-queue e2e tests start their own brokers.
    "rabbitmq-server",
    "nats-server",
    // The VM install test runs `systemd-analyze verify`; TLS and fake-API fixtures need openssl.
    "systemd",
    "openssl",
    // The security profiles: `apparmor_parser -Q` checks deploy/security/hoptrace.apparmor,
    // and the seccomp e2e test installs deploy/security/hoptrace-seccomp.json with libseccomp.
    "apparmor",
    "libseccomp2",
    // `cargo xtask bench`: the load generator.
    "wrk",
    // The tests' Python venv (target/pyenv).
    "python3-venv",
    // The kernel matrix (`cargo xtask kernels`): guests under QEMU, busybox in their initramfs.
    "qemu-system-x86",
    "busybox-static",
];

/// The Kafka-protocol broker of the Kafka e2e test: `tansu`, with only the `dynostore`
/// storage feature (its `memory://` engine needs no database or object store).
const TANSU_VERSION: &str = "0.6.0";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo` (the toolchain xtask runs under) without the environment `cargo run` gave xtask.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    without_cargo_run_env(&mut c);
    c
}

/// `rustup` (for `rustup run nightly ...`), likewise.
pub fn rustup() -> Command {
    let mut c = Command::new("rustup");
    without_cargo_run_env(&mut c);
    c
}

/// Removes what `cargo run` sets for xtask itself (`CARGO`, `CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`…). Some build scripts (ring's) list those in `rerun-if-env-changed`, and
/// cargo compares them with its own environment: a build started by xtask and one started
/// from a shell would each invalidate the other and rebuild ring and everything above it.
fn without_cargo_run_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k == "CARGO"
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(k, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
        {
            cmd.env_remove(&key);
        }
    }
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, else `$CARGO_HOME/bin`,
/// else `~/.cargo/bin`.
fn cargo_bin_dir() -> PathBuf {
    if let Some(root) = std::env::var_os("CARGO_INSTALL_ROOT") {
        return PathBuf::from(root).join("bin");
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

/// Logs of the quiet steps, so a failure can be read in full.
pub fn log_path(root: &Path, name: &str) -> PathBuf {
    root.join("target/xtask").join(format!("{name}.log"))
}

pub fn apt_missing(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect()
}

/// apt-get update + install of `missing` (quiet; output in target/xtask/apt.log).
pub fn apt_install(root: &Path, step: &Step, missing: &[&str], usually: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "missing packages {missing:?}: run `sudo apt-get install -y {}` (or run xtask as root)",
            missing.join(" ")
        );
    }
    let log = log_path(root, "apt");
    let _beat = step.heartbeat(Duration::from_secs(20), usually);
    run_logged(Command::new("apt-get").args(["update", "-qq"]), &log)?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
    )
}

/// One apt step: skipped when everything is installed.
pub fn apt_step(root: &Path, p: &mut Progress, what: &str, packages: &[&'static str], usually: &str) -> Result<()> {
    let mut step = p.step(what);
    let missing = apt_missing(packages);
    if missing.is_empty() {
        step.skip("already installed");
        return Ok(());
    }
    step.begin(&format!("installing {}", missing.join(" ")), usually);
    apt_install(root, &step, &missing, usually)?;
    step.done();
    Ok(())
}

/// rust-src for the nightly toolchain (the bpf target builds `core` from source). When
/// rustup cannot reach its server, the archive of the machine's exact nightly is unpacked
/// instead (`shared/toolchain` next to the checkout).
pub fn rust_src(root: &Path, p: &mut Progress) -> Result<()> {
    let mut step = p.step("rust-src for the nightly toolchain");
    let sysroot = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("no nightly toolchain: run `rustup toolchain install nightly`")?;
    let sysroot = PathBuf::from(sysroot.trim());
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        step.skip("already installed");
        return Ok(());
    }
    step.begin("installing", "~2 s");
    let ok =
        rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]).status().is_ok_and(|s| s.success());
    if !ok {
        unpack_rust_src(root, &step, &sysroot)?;
    }
    step.done();
    Ok(())
}

const RUST_SRC_ARCHIVE_DATE: &str = "2026-05-19";

fn unpack_rust_src(root: &Path, step: &Step, sysroot: &Path) -> Result<()> {
    let name = format!("rust-src-nightly-{RUST_SRC_ARCHIVE_DATE}.tar.xz");
    // The main checkout sits next to `shared/`; worktrees one level deeper.
    let archive =
        ["../shared/toolchain", "../../shared/toolchain"].iter().map(|d| root.join(d).join(&name)).find(|p| p.exists());
    let manual = "run `rustup component add rust-src --toolchain nightly`";
    let Some(archive) = archive else {
        bail!("cannot install rust-src and no fallback archive {name}: {manual}");
    };
    // The archive is only valid for the nightly it was taken from.
    let version = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    if !version.contains(&format!("commit-date: {RUST_SRC_ARCHIVE_DATE}")) {
        bail!(
            "cannot install rust-src; {} is for nightly {RUST_SRC_ARCHIVE_DATE}, not this one: {manual}",
            archive.display()
        );
    }
    step.note(&format!("rustup failed; unpacking {}", archive.display()));
    run(Command::new("tar").arg("-xJf").arg(&archive).arg("-C").arg(sysroot.join("lib/rustlib")))
}

/// The installed bpf-linker when it is the pinned version.
pub fn bpf_linker_ok() -> bool {
    output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
        || output(Command::new(cargo_bin_dir().join("bpf-linker")).arg("--version"))
            .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

pub const BPF_LINKER_USUALLY: &str = "~40 s on 2 cores";

/// Builds and installs bpf-linker against LLVM 22; returns the installed binary.
///
/// Built at opt-level 0 without debug info: half the build time (36 s instead of 77 s
/// measured on 2 cores), and the kernel object it links is byte-for-byte the same (the work
/// happens in LLVM, which comes prebuilt from apt).
pub fn install_bpf_linker(root: &Path, step: &Step) -> Result<PathBuf> {
    let log = log_path(root, "bpf-linker");
    let _ = std::fs::remove_file(&log);
    step.note(&format!("cargo install output: {}", log.display()));
    let _beat = step.heartbeat(Duration::from_secs(20), BPF_LINKER_USUALLY);
    run_logged(
        cargo()
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0"),
        &log,
    )?;
    let bin = cargo_bin_dir().join("bpf-linker");
    let version = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    if !version.contains(BPF_LINKER_VERSION) {
        bail!("installed {} but it reports {version:?}", bin.display());
    }
    Ok(bin)
}

/// The bpf-linker step in the foreground (setup, test).
pub fn bpf_linker(root: &Path, p: &mut Progress) -> Result<()> {
    let mut step = p.step(format!("bpf-linker {BPF_LINKER_VERSION} (built against LLVM 22)"));
    if bpf_linker_ok() {
        step.skip("already installed");
        return Ok(());
    }
    step.begin("building", BPF_LINKER_USUALLY);
    install_bpf_linker(root, &step)?;
    step.done();
    Ok(())
}

/// tansu, the Kafka broker of the e2e tests: a cold build is ~26 min of CPU. cargo's own
/// progress shows, with a heartbeat for its long silent crates.
pub fn kafka_broker(p: &mut Progress) -> Result<()> {
    let mut step = p.step(format!("tansu {TANSU_VERSION}, the Kafka broker of the e2e tests"));
    if output(Command::new("tansu").arg("--version")).is_some_and(|v| v.contains(TANSU_VERSION)) {
        step.skip("already installed");
        return Ok(());
    }
    let usually = "~15 min on 2 idle cores: the longest step, once per machine";
    step.begin("building", usually);
    let _beat = step.heartbeat(Duration::from_secs(60), usually);
    run(cargo().args(["install", &format!("tansu@{TANSU_VERSION}"), "--locked"]).args([
        "--no-default-features",
        "--features",
        "dynostore",
    ]))?;
    step.done();
    Ok(())
}

/// cargo-fuzz, for the parsers' fuzz smoke run.
pub fn cargo_fuzz(p: &mut Progress) -> Result<()> {
    let mut step = p.step("cargo-fuzz");
    if output(cargo().args(["fuzz", "--version"])).is_some() {
        step.skip("already installed");
        return Ok(());
    }
    let usually = "~1 min on 2 cores";
    step.begin("building", usually);
    let _beat = step.heartbeat(Duration::from_secs(30), usually);
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    step.done();
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
pub fn python_env(root: &Path, p: &mut Progress) -> Result<()> {
    let title = "the tests' Python venv (target/pyenv, tests/requirements.txt)";
    venv_step(root, p, title, "target/pyenv", "tests/requirements.txt", "~1 min")
}

/// Apache Airflow for the real-Airflow job test, in its own venv (`target/airflow-venv`):
/// its dependencies would fight the fixtures' pins.
pub fn airflow_env(root: &Path, p: &mut Progress) -> Result<()> {
    let title = "Apache Airflow for the job test (target/airflow-venv, tests/requirements-airflow.txt)";
    venv_step(root, p, title, "target/airflow-venv", "tests/requirements-airflow.txt", "~2 min")
}

/// The async services of the Python Context-linking tests, one venv per CPython build
/// under test: Debian's statically linked, stripped `/usr/bin/python3.11`
/// (`target/pyenv-debian3.11`) and a 3.12 with a shared libpython (`target/pyenv-3.12`,
/// from `python3.12` on PATH or a pyenv install). A missing interpreter is said, not
/// installed: the tests that need it fail naming the venv.
pub fn python_versions_env(root: &Path, p: &mut Progress) -> Result<()> {
    let reqs = "tests/requirements-async.txt";
    let debian = PathBuf::from("/usr/bin/python3.11");
    let mut found = vec![("target/pyenv-debian3.11", debian.exists().then_some(debian))];
    found.push(("target/pyenv-3.12", find_python("3.12")));
    for (dir, python) in found {
        let title = format!("the async-linking venv {dir} ({reqs})");
        match python {
            Some(python) => venv_step_with(root, p, &title, &python, dir, reqs, "~1 min")?,
            None => p.step(&title).skip("no interpreter for it on this machine"),
        }
    }
    Ok(())
}

/// `python3.X` on PATH, else the newest `~/.pyenv/versions/3.X.*`.
fn find_python(minor: &str) -> Option<PathBuf> {
    let name = format!("python{minor}");
    if let Some(p) = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(&name)).find(|p| p.is_file()))
    {
        // pyenv shims exist for every name but fail for versions not selected.
        if Command::new(&p).args(["-c", ""]).status().is_ok_and(|s| s.success()) {
            return Some(p);
        }
    }
    let home = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))?;
    let mut versions: Vec<PathBuf> = std::fs::read_dir(home.join("versions"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{minor}.")))
        .map(|e| e.path().join("bin").join(&name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// A venv at `dir` with `requirements` installed, redone when that file changes.
fn venv_step(root: &Path, p: &mut Progress, title: &str, dir: &str, requirements: &str, usually: &str) -> Result<()> {
    venv_step_with(root, p, title, Path::new("python3"), dir, requirements, usually)
}

/// [`venv_step`] with the interpreter the venv is made from.
fn venv_step_with(
    root: &Path,
    p: &mut Progress,
    title: &str,
    base: &Path,
    dir: &str,
    requirements: &str,
    usually: &str,
) -> Result<()> {
    let mut step = p.step(title);
    let venv = root.join(dir);
    let python = venv.join("bin/python");
    let requirements = root.join(requirements);
    let stamp = venv.join(".requirements-stamp");
    let content = std::fs::read(&requirements).with_context(|| format!("cannot read {}", requirements.display()))?;
    let wanted = format!("{:016x}\n", fnv1a64(&content));

    // A venv whose base interpreter went away (pyenv switch, distro upgrade) cannot run.
    let usable = python.exists() && Command::new(&python).args(["-c", ""]).status().is_ok_and(|s| s.success());
    if usable && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        step.skip("up to date");
        return Ok(());
    }
    step.begin("installing", usually);
    if !usable {
        if venv.exists() {
            step.note(&format!("{} is broken; recreating it", venv.display()));
            std::fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
        }
        run(Command::new(base).args(["-m", "venv"]).arg(&venv))
            .context("cannot create the venv (Debian/Ubuntu: apt-get install python3-venv)")?;
    }
    // The stamp goes only after a successful install, so a failed one is retried next time.
    let _ = std::fs::remove_file(&stamp);
    let _beat = step.heartbeat(Duration::from_secs(30), usually);
    run_logged(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        &log_path(root, "pip"),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    step.done();
    Ok(())
}

/// Everything the tests need, in order; `fuzz` adds cargo-fuzz (full runs and `setup`).
pub const TEST_PREREQ_STEPS: usize = 9;

pub fn test_prereqs(root: &Path, p: &mut Progress, fuzz: bool) -> Result<()> {
    let mut all: Vec<&'static str> = RUN_APT.to_vec();
    all.extend_from_slice(TEST_APT);
    apt_step(root, p, "apt packages of the agent and the tests", &all, "~2 min when all are missing")?;
    rust_src(root, p)?;
    bpf_linker(root, p)?;
    kafka_broker(p)?;
    python_env(root, p)?;
    airflow_env(root, p)?;
    python_versions_env(root, p)?;
    if fuzz {
        cargo_fuzz(p)?;
    }
    Ok(())
}
