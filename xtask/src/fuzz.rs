//! `cargo xtask fuzz`: the parsers' fuzz targets (fuzz/, cargo-fuzz on nightly).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{
    prereq::{cargo, rustup},
    progress::{human, output, run, say},
};

/// Seconds per fuzz target in `cargo xtask test` (a smoke run: the corpus replay plus a
/// little exploration; about a minute for the four targets once the build is warm).
pub const CI_SECONDS: u64 = 12;

/// `cargo +nightly fuzz` with the agent's eBPF build skipped (the parsers do not need it).
fn cargo_fuzz(root: &Path) -> Command {
    let mut c = rustup();
    c.args(["run", "nightly", "cargo", "fuzz"]).current_dir(root).env("AYA_BUILD_SKIP", "1");
    c
}

/// Builds the fuzz targets and runs each for `seconds`: libFuzzer replays the committed
/// corpus (fuzz/corpus/<target>, read only) and explores from it into a scratch corpus
/// under target/; a crash stops everything with its input saved under target/fuzz-artifacts.
pub fn fuzz(root: &Path, seconds: u64, targets: &[String]) -> Result<()> {
    let t = Instant::now();
    if output(cargo().args(["fuzz", "--version"])).is_none() {
        say("xtask: installing cargo-fuzz (usually ~1 min)");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
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
        say(&format!("xtask: fuzzing {target} for {seconds} s"));
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
    say(&format!(
        "xtask: fuzzed {} targets for {seconds} s each (build {}, total {})",
        targets.len(),
        human(built),
        human(t.elapsed())
    ));
    Ok(())
}
