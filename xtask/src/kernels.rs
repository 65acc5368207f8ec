//! `cargo xtask kernels`: the release agent on other kernels than the machine's own, each
//! booted under QEMU with an initramfs that runs the capture-to-span check (see
//! `kernels/guest.rs`), one result line per kernel. `cargo xtask test` runs the whole
//! matrix; the kernels are fetched once (see `kernels/fetch.rs`) and cached under
//! `target/kernels/<series>/`.

mod fetch;
mod guest;

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use fetch::Kernel;
use fetch::BACKPORTS;
pub use fetch::KERNELS;

use crate::{
    agent, prereq,
    progress::{say, Progress},
};

/// The steps [`matrix`] adds to a command's progress: fetch, boot.
pub const MATRIX_STEPS: usize = 2;

/// What the matrix needs from apt, on top of the agent's build.
pub const KERNELS_APT: &[&str] = &["qemu-system-x86", "busybox-static", "openssl"];

pub const USAGE: &str = "usage: cargo xtask kernels [--kernel 5.10|6.1|6.12|all|backports] [-- HOPTRACE_RUN_ARGS...]
  all (the default) is the CI matrix; backports is Debian's newest backported kernel
  arguments after `--` are added to the guest's `hoptrace run` (e.g. `-- --kernel-log`)";

/// `cargo xtask kernels [--kernel X]`: installs QEMU and busybox, builds the release agent,
/// then runs the matrix.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let (ours, agent_args) = match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[][..]),
    };
    let kernels = parse_args(ours)?;
    if !prereq::is_root() {
        bail!("the kernel matrix fetches packages with apt: run it as root");
    }
    let mut p = Progress::new("kernels", 4 + MATRIX_STEPS, "the agent on other kernels, under QEMU");
    prereq::rust_src(root, &mut p)?;
    let mut apt: Vec<&'static str> = prereq::RUN_APT.to_vec();
    apt.extend_from_slice(KERNELS_APT);
    prereq::apt_step(root, &mut p, "apt packages (LLVM 22, QEMU, busybox-static)", &apt, "~1 min when missing")?;
    prereq::bpf_linker(root, &mut p)?;
    let bin = agent::build_release(root, &mut p, None)?;
    matrix(root, &mut p, &bin, &kernels, agent_args)?;
    p.finish("every kernel passed");
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Vec<&'static Kernel>> {
    let mut choice = "all".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--kernel" {
            choice = it.next().context("--kernel needs a value")?.clone();
        } else if let Some(v) = a.strip_prefix("--kernel=") {
            choice = v.to_string();
        } else {
            bail!("unknown option `{a}`\n{USAGE}");
        }
    }
    if choice == "all" {
        return Ok(KERNELS.iter().collect());
    }
    match KERNELS.iter().chain([&BACKPORTS]).find(|k| k.label == choice) {
        Some(k) => Ok(vec![k]),
        None => bail!("no kernel `{choice}` in the matrix\n{USAGE}"),
    }
}

/// Two steps: fetch what is not cached, then boot each kernel. Fails when any kernel fails,
/// after all of them ran.
pub fn matrix(
    root: &Path,
    p: &mut Progress,
    agent_bin: &Path,
    kernels: &[&Kernel],
    agent_args: &[String],
) -> Result<()> {
    let labels: Vec<&str> = kernels.iter().map(|k| k.label).collect();
    let mut step = p.step(format!("Debian kernels {} (cached in target/kernels)", labels.join(", ")));
    if kernels.iter().all(|k| fetch::cached(root, k.label).is_some()) {
        step.skip("already cached");
    } else {
        step.begin("fetching with a private apt configuration", "~20 s");
        let fetched = fetch::fetch(root, kernels)?;
        step.note(&format!("fetched {}", fetched.join(", ")));
        step.done();
    }

    let mut step =
        p.step(format!("boot each kernel under QEMU (TCG) and check capture to span: {}", labels.join(", ")));
    step.begin("running", "~15 s per kernel");
    let mut failed = Vec::new();
    for k in kernels {
        match check(root, agent_bin, k, agent_args) {
            Ok(line) => say(&line),
            Err(e) => {
                let text = format!("{e:#}");
                // A result line already names the kernel; other errors (no boot) do not.
                let prefix =
                    if text.starts_with("kernel ") { String::new() } else { format!("kernel {}: FAIL: ", k.label) };
                say(&format!("{prefix}{text}"));
                failed.push(k.label);
            }
        }
    }
    if !failed.is_empty() {
        bail!("the capture-to-span check failed on kernel {}", failed.join(", "));
    }
    step.done();
    Ok(())
}

/// One kernel: initramfs, boot, verdict. `Ok` is the result line of a pass; `Err` says what
/// failed, with the agent's error (a verifier log in full) when it printed one.
fn check(root: &Path, agent_bin: &Path, k: &Kernel, agent_args: &[String]) -> Result<String> {
    let cached = fetch::cached(root, k.label).context("kernel not fetched")?;
    let dir = fetch::cache_dir(root, k.label);
    let (trace, parent) = ids();
    let (tls_trace, tls_parent) = ids();
    let tls_dir = root.join("target/kernels/tls");
    guest::tls_files(&tls_dir)?;
    let initrd = dir.join("initramfs.cpio");
    let plan = guest::Plan { ids: guest::Ids { trace, parent, tls_trace, tls_parent }, agent_args };
    guest::initramfs(agent_bin, &tls_dir, &initrd, &plan)?;
    let log = dir.join("serial.log");
    let (serial, took) = guest::boot(&cached.vmlinuz, &initrd, &log)?;
    let _ = std::fs::remove_file(&initrd);
    let Some(o) = guest::parse(&serial) else {
        bail!("the guest ({}) printed no result line; serial log: {}", cached.release, log.display());
    };
    let line = result_line(k, &o, took, &plan.ids.trace);
    if o.passed() {
        return Ok(line);
    }
    let log_text = if o.agent_log.is_empty() { String::new() } else { format!("\n{}", o.agent_log.join("\n")) };
    bail!("{line}{log_text}\nserial log: {}", log.display())
}

/// `kernel 6.1 (6.1.0-50-cloud-amd64, Debian 12): PASS boot+check 13.7 s, ...`.
fn result_line(k: &Kernel, o: &guest::Outcome, took: Duration, trace: &str) -> String {
    let verdict = if o.passed() { "PASS" } else { "FAIL" };
    let load =
        o.load_ms.map_or("never ready".to_string(), |ms| format!("agent ready after {:.1} s", ms as f64 / 1000.0));
    let programs = o.programs.map_or("-".to_string(), |n| n.to_string());
    let yes = |b: bool| if b { "yes" } else { "no" };
    let error = o.error_line().map_or("none".to_string(), str::to_string);
    format!(
        "kernel {} ({}, {}): {verdict}: boot+check {:.1} s under TCG, {load}, {programs} tracepoint attachments, \
         SERVER span joined to trace {trace}: {}, HTTPS CLIENT span through the OpenSSL uprobes: {}, \
         agent exit {}, error: {error}",
        k.label,
        o.kernel,
        k.shipped_by,
        took.as_secs_f64(),
        yes(o.joined),
        yes(o.tls),
        o.agent_exit,
    )
}

/// A fresh trace id and parent span id for each guest, so a span from an earlier run can
/// never satisfy the check.
fn ids() -> (String, String) {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // Two calls in the same nanosecond still differ.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let seed =
        nanos ^ u64::from(std::process::id()).rotate_left(32) ^ CALLS.fetch_add(1, Ordering::Relaxed).rotate_left(48);
    (format!("{:016x}{:016x}", mix(seed), mix(seed ^ 1)), format!("{:016x}", mix(seed ^ 2) | 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_choice() {
        let all = parse_args(&[]).unwrap();
        assert_eq!(all.iter().map(|k| k.label).collect::<Vec<_>>(), ["5.10", "6.1", "6.12"]);
        assert_eq!(parse_args(&["--kernel".into(), "6.1".into()]).unwrap()[0].suite, "bookworm");
        assert_eq!(parse_args(&["--kernel=5.10".into()]).unwrap()[0].suite, "bullseye");
        assert_eq!(parse_args(&["--kernel=backports".into()]).unwrap()[0].suite, "trixie-backports");
        assert!(parse_args(&["--kernel".into(), "4.19".into()]).unwrap_err().to_string().contains("no kernel `4.19`"));
    }

    #[test]
    fn fresh_ids() {
        let (t, p) = ids();
        assert_eq!((t.len(), p.len()), (32, 16));
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()) && t != "0".repeat(32) && p != "0".repeat(16));
        assert_ne!(ids().0, t);
    }
}
