//! `cargo xtask bench` options, and the command's entry point.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{prereq, progress::Progress};

const USAGE: &str = "\
usage: cargo xtask bench [OPTIONS]   (root)

  --rounds N                 baseline/agent round pairs [5]
  --duration SECONDS         seconds of load per round [10]
  --connections N            wrk connections [50]
  --sink otlp|json           where the agent's spans go: otlp = OTLP/HTTP protobuf to a local
                             sink that discards (the production path); json = OTLP/JSON lines
                             to /dev/null [otlp]
  --agent-bin PATH           agent binary to measure (default: build the release agent), so
                             two builds can be compared
  --json FILE                also write the results here (they always go to
                             target/bench/<timestamp>.json)
  --nginx-cpus LIST          CPU list for nginx's worker (taskset syntax) [0]
  --wrk-cpus LIST            CPU list for wrk [1]
  --label TEXT               label stored in the JSON (the commit or change measured) []
  --starved-cpu-percent P    after the rounds, one overload round with the agent CPU-starved
                             through its cgroup to P % of one CPU (it must drop and count,
                             never slow nginx); 0 skips it [5]
";

#[derive(Debug)]
pub struct BenchArgs {
    pub rounds: usize,
    pub duration: u64,
    pub connections: u32,
    pub sink: Sink,
    pub agent_bin: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub nginx_cpus: String,
    pub wrk_cpus: String,
    pub label: String,
    pub starved_cpu_percent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Otlp,
    Json,
}

impl BenchArgs {
    fn parse(args: &[String]) -> Result<BenchArgs> {
        let mut b = BenchArgs {
            rounds: 5,
            duration: 10,
            connections: 50,
            sink: Sink::Otlp,
            agent_bin: None,
            json: None,
            nginx_cpus: "0".into(),
            wrk_cpus: "1".into(),
            label: String::new(),
            starved_cpu_percent: 5,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            let mut value = || -> Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().with_context(|| format!("{name} needs a value")),
                }
            };
            let num = |v: String| -> Result<u64> { v.parse().with_context(|| format!("{name}: not a number: {v}")) };
            match name {
                "--rounds" => b.rounds = num(value()?)? as usize,
                "--duration" => b.duration = num(value()?)?,
                "--connections" => b.connections = u32::try_from(num(value()?)?)?,
                "--sink" => {
                    b.sink = match value()?.as_str() {
                        "otlp" => Sink::Otlp,
                        "json" => Sink::Json,
                        other => bail!("--sink must be otlp or json, got {other}"),
                    }
                }
                "--agent-bin" => b.agent_bin = Some(value()?.into()),
                "--json" => b.json = Some(value()?.into()),
                "--nginx-cpus" => b.nginx_cpus = value()?,
                "--wrk-cpus" => b.wrk_cpus = value()?,
                "--label" => b.label = value()?,
                "--starved-cpu-percent" => b.starved_cpu_percent = u32::try_from(num(value()?)?)?,
                _ => bail!("unknown bench option `{arg}`\n{USAGE}"),
            }
        }
        Ok(b)
    }
}

/// `cargo xtask bench [OPTIONS]`.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return Ok(());
    }
    let args = BenchArgs::parse(args)?;
    if !prereq::is_root() {
        bail!("the benchmark loads eBPF programs and enables kernel.bpf_stats_enabled: run it as root");
    }
    let mut p = Progress::new("bench", 3, "prerequisites of the benchmark");
    let mut apt: Vec<&'static str> = prereq::RUN_APT.to_vec();
    apt.extend(["nginx", "wrk", "util-linux"]);
    prereq::apt_step(root, &mut p, "apt: LLVM 22, nginx, wrk, taskset", &apt, "~1 min")?;
    prereq::rust_src(root, &mut p)?;
    prereq::bpf_linker(root, &mut p)?;
    p.finish("ready");
    super::bench(root, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_both_ways() {
        let a: Vec<String> = ["--rounds", "3", "--sink=json", "--label", "x y", "--starved-cpu-percent=0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b = BenchArgs::parse(&a).unwrap();
        assert_eq!((b.rounds, b.sink, b.label.as_str(), b.starved_cpu_percent), (3, Sink::Json, "x y", 0));
        assert_eq!((b.duration, b.connections, b.nginx_cpus.as_str()), (10, 50, "0"));
        assert!(BenchArgs::parse(&["--bogus".to_string()]).is_err());
        assert!(BenchArgs::parse(&["--rounds".to_string()]).is_err());
    }
}
