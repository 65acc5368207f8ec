//! Building the release agent, and `cargo xtask run`: install only what building and running
//! the agent needs, build it, start it.
//!
//! On a fresh machine the slow part is compiling: bpf-linker (~40 s) and the agent (~3 min on
//! 2 cores). Only the last step of the agent's build needs bpf-linker: agent/build.rs builds the
//! kernel object (aya-build, a nested nightly cargo) and links it with bpf-linker. So bpf-linker
//! is installed in the background while the agent's dependencies compile, and the nested build
//! is pointed at a small wrapper (`CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER`, inherited by the
//! nested cargo) that waits for the install to finish before it runs the real linker. The
//! wait is a shared `flock` on a file the install holds exclusively, so the wrapper also stops
//! waiting (and fails with the log's name) if xtask dies or the install fails.

use std::{
    fs::File,
    os::unix::{fs::PermissionsExt, io::AsRawFd},
    path::{Path, PathBuf},
    process::Command,
    thread::JoinHandle,
};

use anyhow::{bail, Context, Result};

use crate::{
    prereq::{self, cargo, is_root, log_path, BPF_LINKER_USUALLY, BPF_LINKER_VERSION, RUN_APT},
    progress::{run, say, Progress, Step},
};

const LLVM_USUALLY: &str = "~25 s";
pub const BUILD_USUALLY: &str = "~3 min on 2 cores from nothing, seconds when up to date";

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// `cargo build --release -p hoptrace`, its output live; `linker` is the waiting wrapper when
/// bpf-linker is still being installed.
pub fn build_release(root: &Path, p: &mut Progress, linker: Option<&Path>) -> Result<PathBuf> {
    let mut step = p.step("the agent (cargo build --release -p hoptrace)");
    let doing = if linker.is_some() { "building; the kernel object's link waits for bpf-linker" } else { "building" };
    step.begin(doing, BUILD_USUALLY);
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "hoptrace"]).current_dir(root);
    if let Some(linker) = linker {
        cmd.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
    }
    run(&mut cmd)?;
    step.done();
    Ok(target_dir(root).join("release/hoptrace"))
}

/// LLVM and bpf-linker being installed on a thread while the agent builds.
struct Background {
    thread: JoinHandle<Result<()>>,
    wrapper: PathBuf,
}

impl Background {
    fn start(root: &Path, llvm: Option<Step>, linker: Step, llvm_missing: Vec<&'static str>) -> Result<Background> {
        let dir = root.join("target/xtask");
        std::fs::create_dir_all(&dir)?;
        let lock_path = dir.join("bpf-linker.lock");
        let ready = dir.join("bpf-linker.ready");
        let _ = std::fs::remove_file(&ready);
        let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
        // SAFETY: the descriptor belongs to `lock`, which stays open until the install ends.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}: {}", lock_path.display(), std::io::Error::last_os_error());
        }
        let wrapper = dir.join("bpf-linker-when-ready");
        write_wrapper(&wrapper, &lock_path, &ready, &log_path(root, "bpf-linker"))?;

        let root = root.to_path_buf();
        let thread = std::thread::spawn(move || {
            // The wrapper reads the linker's path from `ready`; no file means "failed".
            let result = install(&root, llvm, linker, &llvm_missing).and_then(|bin| {
                std::fs::write(&ready, bin.as_os_str().as_encoded_bytes())
                    .with_context(|| format!("cannot write {}", ready.display()))
            });
            drop(lock);
            result
        });
        Ok(Background { thread, wrapper })
    }

    fn wait(self) -> Result<()> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the bpf-linker install thread panicked"),
        }
    }
}

/// The background work; the steps were announced by the caller, so the lines stay in order.
fn install(root: &Path, llvm: Option<Step>, linker: Step, llvm_missing: &[&str]) -> Result<PathBuf> {
    if let Some(llvm) = llvm {
        prereq::apt_install(root, &llvm, llvm_missing, LLVM_USUALLY)?;
        llvm.done();
    }
    let bin = prereq::install_bpf_linker(root, &linker)?;
    linker.done();
    Ok(bin)
}

/// A shell script standing in for bpf-linker in the nested kernel-object build.
fn write_wrapper(path: &Path, lock: &Path, ready: &Path, log: &Path) -> Result<()> {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let script = format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask run` (xtask/src/agent.rs) for one build of the agent that\n\
         # started while bpf-linker was being installed: wait for the install, then link.\n\
         flock -s {lock} true\n\
         bin=$(cat {ready} 2>/dev/null)\n\
         if [ -x \"$bin\" ]; then exec \"$bin\" \"$@\"; fi\n\
         echo \"xtask: bpf-linker {BPF_LINKER_VERSION} could not be installed; see {log}\" >&2\n\
         exit 1\n",
        lock = q(lock),
        ready = q(ready),
        log = q(log),
    );
    std::fs::write(path, script).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `cargo xtask run`.
pub fn run_agent(root: &Path, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the agent loads eBPF programs and needs root: run it as root (e.g. `sudo -E env PATH=$PATH cargo xtask run`)");
    }
    let mut p = Progress::new("run", 5, "install what the agent needs, build it, start it");
    prereq::rust_src(root, &mut p)?;
    let llvm_missing = prereq::apt_missing(RUN_APT);
    let mut llvm = p.step("LLVM 22 (apt llvm-22-dev)");
    let mut linker = p.step(format!("bpf-linker {BPF_LINKER_VERSION} (built against LLVM 22)"));
    let linker_ok = prereq::bpf_linker_ok();
    if llvm_missing.is_empty() {
        llvm.skip("already installed");
    } else if linker_ok {
        llvm.begin("installing", LLVM_USUALLY);
        prereq::apt_install(root, &llvm, &llvm_missing, LLVM_USUALLY)?;
        llvm.done();
    } else {
        llvm.begin("installing in the background", LLVM_USUALLY);
    }
    let background = if linker_ok {
        linker.skip("already installed");
        None
    } else {
        let after = if llvm_missing.is_empty() { "" } else { " after LLVM" };
        linker.begin(&format!("building in the background{after}"), BPF_LINKER_USUALLY);
        let llvm = (!llvm_missing.is_empty()).then_some(llvm);
        Some(Background::start(root, llvm, linker, llvm_missing)?)
    };
    let built = build_release(root, &mut p, background.as_ref().map(|b| b.wrapper.as_path()));
    // The install's own error explains a build that failed for want of the linker.
    if let Some(b) = background {
        b.wait()?;
    }
    let bin = built?;

    let step = p.step("starting the agent");
    let shown = bin.strip_prefix(root).unwrap_or(&bin).display().to_string();
    step.note(&format!(
        "{shown} run {}: spans print as OTLP/JSON lines on stdout (no collector configured), \
         the agent's own logs as JSON lines on stderr; Ctrl-C stops it",
        args.join(" ")
    ));
    p.finish("installed and built; starting the agent");
    let mut child =
        Command::new(&bin).arg("run").args(args).spawn().with_context(|| format!("cannot start {}", bin.display()))?;
    // Ctrl-C reaches the agent too (same process group): let it flush and print its final
    // counters before xtask returns. Set after the spawn, so the agent keeps the default.
    // SAFETY: installing SIG_IGN for SIGINT has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait()?;
    say(&format!("xtask run: the agent exited ({status}) {} after xtask started", crate::progress::human(p.elapsed())));
    if !status.success() {
        bail!("{shown} run exited with {status}");
    }
    Ok(())
}
