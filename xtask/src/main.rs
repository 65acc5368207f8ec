//! Developer tasks: `cargo xtask <command>`; `cargo xtask help` lists them.
//!
//! The two front doors: `run` installs only what building and running the agent needs, then
//! starts it; `test` installs the test prerequisites, runs the gates and the whole suite.
//! Both print a line per step with how long it usually takes, and are quick when everything
//! is already there.
//!
//! Arguments are parsed by hand: xtask is the first thing compiled on a fresh clone, and
//! clap's derive stack (syn, clap_builder) doubled its compile time (31 s → 15 s on 2 cores).

mod agent;
mod bench;
mod checks;
mod fuzz;
mod kernels;
mod links;
mod prereq;
mod progress;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};

use crate::progress::{run, say, Progress, Step};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

The two front doors (as root):
  run [-- ARGS]       install what the agent needs, build it (release) and run
                      `hoptrace run ARGS`: spans print as OTLP/JSON on stdout
  test [-- FILTER]    install the test prerequisites, lint, check links and deploy files,
                      build the release agent and run the whole suite on the real kernel;
                      a FILTER runs only the matching tests (and lint only warns)

Other commands:
  setup               install everything `run` and `test` need
  lint                cargo fmt --check, clippy -D warnings (SAFETY comments required) on the
                      workspace and on the kernel crate for its bpf target
  check-links         every relative link in the Markdown files resolves
  build-ebpf          build the kernel object on its own and print its size
  gen-rules           regenerate deploy/alerts/prometheusrule.yaml from hoptrace-rules.yaml
  bench [OPTIONS]     what the agent costs nginx under wrk (root; `cargo xtask bench --help`)
  kernels [--kernel 5.10|6.1|6.12|all|backports] [-- HOPTRACE_RUN_ARGS]
                      boot Debian's kernels under QEMU and run the agent's capture-to-span
                      check on each (part of the full `test`; README: kernel support)
  fuzz [--seconds N] [TARGET...]
                      run the parser fuzz targets (default 20 s each, all targets)
  help                this text
";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Everything after the command, with a leading `--` dropped (`cargo xtask run -- --port 80`).
fn passthrough(args: &[String]) -> Vec<String> {
    match args.first() {
        Some(a) if a == "--" => args[1..].to_vec(),
        _ => args.to_vec(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("xtask: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest = &args[1..];
    let no_options = || -> Result<()> {
        if let Some(a) = rest.first() {
            bail!("`{command}` takes no arguments, got `{a}` (see `cargo xtask help`)");
        }
        Ok(())
    };
    match command.as_str() {
        "run" => agent::run_agent(&root, &passthrough(rest)),
        "test" => test(&root, &passthrough(rest)),
        "setup" => no_options().and_then(|()| setup(&root)),
        "lint" => no_options().and_then(|()| checks::lint(&root)),
        "check-links" => no_options().and_then(|()| links::check_links(&root)),
        "build-ebpf" => no_options().and_then(|()| build_ebpf(&root)),
        "gen-rules" => no_options().and_then(|()| {
            std::fs::write(root.join(checks::PROMETHEUS_RULE), checks::prometheus_rule(&root)?)?;
            say(&format!("wrote {}", checks::PROMETHEUS_RULE));
            Ok(())
        }),
        "bench" => bench::main(&root, rest),
        "kernels" => kernels::main(&root, rest),
        "fuzz" => {
            let (seconds, targets) = fuzz_args(rest)?;
            fuzz::fuzz(&root, seconds, &targets)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

fn fuzz_args(args: &[String]) -> Result<(u64, Vec<String>)> {
    let mut seconds = 20;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--seconds" {
            Some(it.next().context("--seconds needs a value")?.as_str())
        } else {
            a.strip_prefix("--seconds=")
        };
        match value {
            Some(v) => seconds = v.parse().with_context(|| format!("--seconds: not a number: {v}"))?,
            None if a.starts_with('-') => {
                bail!("unknown fuzz option `{a}` (see `cargo xtask help`)")
            }
            None => targets.push(a.clone()),
        }
    }
    Ok((seconds, targets))
}

/// `cargo xtask setup`: everything, for `run`, `test` and `bench`.
fn setup(root: &Path) -> Result<()> {
    let mut p = Progress::new("setup", prereq::TEST_PREREQ_STEPS, "install everything run and test need");
    prereq::test_prereqs(root, &mut p, true)?;
    p.finish("everything installed");
    Ok(())
}

fn build_ebpf(root: &Path) -> Result<()> {
    let mut p = Progress::new("build-ebpf", 3, "build the kernel object on its own");
    prereq::rust_src(root, &mut p)?;
    prereq::apt_step(root, &mut p, "LLVM 22 (apt llvm-22-dev)", prereq::RUN_APT, "~25 s")?;
    prereq::bpf_linker(root, &mut p)?;
    let target_dir = root.join("target/ebpf");
    let rustflags =
        [&format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH), "-Cdebuginfo=2", "-Clink-arg=--btf"]
            .join("\x1f");
    run(prereq::rustup()
        .args(["run", "nightly", "cargo", "build", "-p", "hoptrace-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    let object = target_dir.join("bpfel-unknown-none/release/hoptrace");
    let size = std::fs::metadata(&object)?.len();
    println!("eBPF object: {} ({size} bytes)", object.display());
    Ok(())
}

/// A gate of the full suite, run as `step`; in a filtered run (a developer iterating on some
/// tests) its failure is reported and the run goes on.
fn gate(step: &Step, result: Result<()>, full: bool) -> Result<()> {
    match result {
        Ok(()) => {
            step.done();
            Ok(())
        }
        Err(e) if !full => {
            step.failed(&format!("{e:#}; a filtered run goes on, the full `cargo xtask test` fails on it"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `cargo xtask test`: prerequisites, gates, the release build, the suite, the fuzz smoke run.
fn test(root: &Path, filter: &[String]) -> Result<()> {
    if !prereq::is_root() {
        bail!("the end-to-end tests load eBPF programs and need root: run them as root (e.g. `sudo -E env PATH=$PATH cargo xtask test`)");
    }
    let full = filter.is_empty();
    let prereq_steps = prereq::TEST_PREREQ_STEPS - usize::from(!full);
    // The full run adds the kernel matrix and the fuzz smoke run.
    let total = prereq_steps + 6 + usize::from(full) * (kernels::MATRIX_STEPS + 1);
    let what = if full { "the whole suite" } else { "a filtered run" };
    let mut p = Progress::new("test", total, what);
    prereq::test_prereqs(root, &mut p, full)?;

    let mut step = p.step("lint (cargo fmt --check; clippy on the workspace and on the kernel crate)");
    step.begin("checking", "~3 min when nothing is built yet, ~20 s when warm");
    gate(&step, checks::lint(root), full)?;

    let mut step = p.step("relative links in the Markdown files");
    step.begin("checking", "under a second");
    gate(&step, links::check_links(root), full)?;

    let mut step = p.step("alert rules (promtool) and deployment files");
    step.begin("checking", "~10 s");
    checks::check_rules(root)?;
    checks::check_deploy(root)?;
    step.done();

    // The suite runs the release binary, the one users run.
    let bin = agent::build_release(root, &mut p, None)?;

    let mut step = p.step("the shipped configurations (hoptrace --check-config)");
    step.begin("checking", "under a second");
    run(Command::new(&bin).arg("--check-config").arg(root.join("deploy/hoptrace.yaml")))?;
    run(Command::new(&bin).arg("--check-config").arg(root.join(checks::DEPLOY_CONFIG)))?;
    step.done();

    let mut step = p.step(format!("cargo test --workspace (HOPTRACE_BIN={})", bin.display()));
    step.begin(
        "running",
        if full {
            "~4 min to build the tests the first time, then several minutes of e2e tests"
        } else {
            "the test build, then the matching tests"
        },
    );
    run(agent_cargo_test(root, filter).env("HOPTRACE_BIN", &bin))?;
    step.done();

    // The other kernels and the parsers' fuzz smoke run, only for the whole suite.
    if full {
        kernels::matrix(root, &mut p, &bin, &kernels::KERNELS.iter().collect::<Vec<_>>(), &[])?;
        let mut step = p.step(format!("fuzz smoke run ({} s per target)", fuzz::CI_SECONDS));
        step.begin("running", "~1 min once built; the first build ~3 min");
        fuzz::fuzz(root, fuzz::CI_SECONDS, &[])?;
        step.done();
    }
    p.finish(if full { "the whole suite passed" } else { "the filtered run passed" });
    Ok(())
}

fn agent_cargo_test(root: &Path, filter: &[String]) -> Command {
    let mut c = prereq::cargo();
    c.args(["test", "--workspace", "--exclude", "hoptrace-ebpf", "--"]).args(filter).current_dir(root);
    c
}
