//! `cargo xtask bench`: what the agent costs a real server, measured on this machine.
//!
//! nginx (one worker, a fixed 200 response from memory) is loaded by `wrk` on loopback.
//! Rounds alternate *baseline* (nginx alone) and *agent* (nginx while a release
//! `hoptrace run` captures its port), so drift of the machine (other builds, thermal)
//! hits both sides alike; every figure is the median over rounds.
//!
//! Per agent round:
//! - throughput and p50/p99 latency from `wrk --latency`;
//! - agent CPU: the sum of its threads' `/proc/<pid>/task/*/schedstat` run time (ns, not
//!   the 10 ms ticks of `/proc/<pid>/stat`) over the load window plus a drain tail, divided
//!   by the requests wrk completed;
//! - kernel cost: with `kernel.bpf_stats_enabled=1`, `run_time_ns`/`run_cnt` of each of the
//!   agent's programs (its prog fds in `/proc/<pid>/fdinfo`, names via the bpf syscall)
//!   over the same window, per program and summed, divided by requests. Tail-called
//!   programs are accounted to the program that called them;
//! - drops: the agent's `/metrics` (kernel ring-buffer / map drops, userspace drops,
//!   export queue drops) and spans exported per request;
//! - memory: RSS sampled every 250 ms under load (median = steady) and `VmHWM` (peak,
//!   start-up included).
//!
//! - overload: one more agent round with the agent CPU-starved through its cgroup (cgroup
//!   v2 `cpu.max`, or v1 `cpu.cfs_quota_us`): throughput against the baseline, ring-buffer
//!   drops and bytes lost as the agent counted them once it could run again.
//!
//! CPU placement on a 2-core machine: nginx's worker is pinned to CPU 0 and wrk (one
//! thread) to CPU 1, so the two sides of the benchmark never share a core with each other;
//! the agent is left unpinned (as a node agent would be) and competes with both, which is
//! exactly the interference the throughput/latency ratios measure.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

mod args;
mod measure;
mod procs;
mod report;

pub use args::main;
use args::{BenchArgs, Sink};
use measure::*;
use procs::*;
use report::print_report;

use crate::agent::target_dir;

/// The targets.
const BPF_NS_PER_REQ: f64 = 300.0;
const CPU_US_PER_REQ: f64 = 4.0;
const THROUGHPUT_RATIO: f64 = 0.97;
const P99_RATIO: f64 = 1.05;
const RSS_STEADY_MIB: f64 = 48.0;
const PEAK_OVER_STEADY: f64 = 1.5;

fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    for tool in ["nginx", "wrk", "taskset"] {
        if which(tool).is_none() {
            bail!("{tool} not found: run `cargo xtask setup`");
        }
    }
    let agent = match &args.agent_bin {
        Some(p) => p.clone(),
        None => {
            let status =
                crate::prereq::cargo().args(["build", "--release", "-p", "hoptrace"]).current_dir(root).status()?;
            if !status.success() {
                bail!("building the release agent failed");
            }
            target_dir(root).join("release/hoptrace")
        }
    };
    let stats_was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling kernel.bpf_stats_enabled (root?)")?;
    let result = run_rounds(root, &args, &agent);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim());
    let report = result?;

    print_report(&report);
    let dir = target_dir(root).join("bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = utc_stamp();
    let path = dir.join(format!("{stamp}.json"));
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, &text)?;
    println!("\nresults: {}", path.display());
    if let Some(p) = &args.json {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
        println!("results: {}", p.display());
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn utc_stamp() -> String {
    let out = Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"]).output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_else(|| "now".into())
}

struct AgentRound {
    wrk: Wrk,
    cpu_us_per_req: f64,
    bpf: BTreeMap<String, (f64, f64)>,
    bpf_ns_per_req: f64,
    rss_steady_mib: f64,
    rss_peak_mib: f64,
    spans_per_req: f64,
    drops: BTreeMap<String, f64>,
    /// OTLP bytes the sink received per request (0 with the JSON sink).
    sink_bytes_per_req: f64,
    sink_requests: f64,
    bytes_lost_per_req: f64,
    load: f64,
}

/// A CPU cgroup that limits a process to `percent` of one CPU; the process goes back to
/// the root cgroup (and the cgroup away) when this is dropped.
struct Starved {
    dir: PathBuf,
    root: PathBuf,
    pid: u32,
}

impl Starved {
    fn new(pid: u32, percent: u32) -> Result<Self> {
        const PERIOD_US: u32 = 100_000;
        let quota = (PERIOD_US * percent / 100).max(1000);
        let (root, limits): (PathBuf, Vec<(&str, String)>) = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            let root = PathBuf::from("/sys/fs/cgroup");
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            (root, vec![("cpu.max", format!("{quota} {PERIOD_US}"))])
        } else {
            (
                PathBuf::from("/sys/fs/cgroup/cpu"),
                vec![("cpu.cfs_period_us", PERIOD_US.to_string()), ("cpu.cfs_quota_us", quota.to_string())],
            )
        };
        let dir = root.join(format!("hoptrace-bench-starved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let starved = Self { dir, root, pid };
        for (file, value) in limits {
            std::fs::write(starved.dir.join(file), &value).with_context(|| format!("writing {value} to {file}"))?;
        }
        std::fs::write(starved.dir.join("cgroup.procs"), pid.to_string())
            .context("moving the agent into the cgroup")?;
        Ok(starved)
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn agent_round(args: &BenchArgs, bin: &Path, nginx: &Nginx, log: &Path, starve: Option<u32>) -> Result<AgentRound> {
    let sink = match args.sink {
        Sink::Otlp => Some(OtlpSink::start()?),
        Sink::Json => None,
    };
    let agent = Agent::start(bin, nginx.port, sink.as_ref(), log)?;
    let pid = agent.pid();
    thread::sleep(Duration::from_millis(500));
    let starved = starve.map(|percent| Starved::new(pid, percent)).transpose()?;
    let bpf0 = bpf_stats(pid);
    let cpu0 = cpu_ns(pid);
    let m0 = agent.metrics();

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        thread::spawn(move || {
            let mut rss = Vec::new();
            thread::sleep(Duration::from_secs(1));
            while sampling.load(Ordering::Relaxed) {
                if let Some(k) = status_kib(pid, "VmRSS:") {
                    rss.push(k / 1024.0);
                }
                thread::sleep(Duration::from_millis(250));
            }
            rss
        })
    };
    let wrk = run_wrk(&args.wrk_cpus, nginx.port, args.connections, args.duration);
    sampling.store(false, Ordering::Relaxed);
    let rss = sampler.join().unwrap_or_default();
    let wrk = wrk?;
    // Starved: let it run freely again, so it can count what it missed.
    drop(starved);
    // Drain tail: the agent finishes the backlog and the exporter's 1 s batch timer fires.
    thread::sleep(Duration::from_millis(2000));
    let cpu1 = cpu_ns(pid);
    let bpf1 = bpf_stats(pid);
    let m1 = agent.metrics();
    let peak = status_kib(pid, "VmHWM:").unwrap_or(f64::NAN) / 1024.0;
    agent.stop();

    let reqs = wrk.requests;
    let mut bpf = BTreeMap::new();
    let mut total_ns = 0.0;
    for (name, (t1, n1)) in &bpf1 {
        let (t0, n0) = bpf0.get(name).copied().unwrap_or((0, 0));
        let (dt, dn) = ((t1 - t0) as f64, (n1 - n0) as f64);
        total_ns += dt;
        bpf.insert(name.clone(), (dt / reqs, if dn > 0.0 { dt / dn } else { 0.0 }));
    }
    let delta = |p: &str| metric_sum(&m1, p) - metric_sum(&m0, p);
    let mut drops = BTreeMap::new();
    for (k, v) in &m1 {
        if k.contains("drops_total") || k.contains("dropped_total") {
            let d = v - m0.get(k).copied().unwrap_or(0.0);
            drops.insert(k.clone(), d);
        }
    }
    Ok(AgentRound {
        wrk,
        cpu_us_per_req: (cpu1 - cpu0) as f64 / 1e3 / reqs,
        bpf,
        bpf_ns_per_req: total_ns / reqs,
        rss_steady_mib: median(rss),
        rss_peak_mib: peak,
        spans_per_req: delta("hoptrace_spans_total") / reqs,
        drops,
        sink_bytes_per_req: sink.as_ref().map_or(0.0, |s| s.bytes.load(Ordering::Relaxed) as f64 / reqs),
        sink_requests: sink.as_ref().map_or(0.0, |s| s.requests.load(Ordering::Relaxed) as f64),
        bytes_lost_per_req: delta("hoptrace_capture_bytes_lost_total") / reqs,
        load: loadavg(),
    })
}

fn run_rounds(root: &Path, args: &BenchArgs, bin: &Path) -> Result<Value> {
    let nginx = Nginx::start(&args.nginx_cpus)?;
    let log = target_dir(root).join("bench/agent.log");
    std::fs::create_dir_all(log.parent().unwrap())?;
    eprintln!(
        "bench: nginx :{} on CPU {}, wrk -t1 -c{} on CPU {}, {} rounds x {} s, sink {:?}, agent {}",
        nginx.port,
        args.nginx_cpus,
        args.connections,
        args.wrk_cpus,
        args.rounds,
        args.duration,
        args.sink,
        bin.display()
    );
    // Warm-up (page cache, nginx, TCP): not measured.
    run_wrk(&args.wrk_cpus, nginx.port, args.connections, 2)?;
    let mut base = Vec::new();
    let mut with = Vec::new();
    for i in 0..args.rounds {
        // Alternate which side goes first so slow drift does not favour one.
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for agent in order {
            if agent {
                let r = agent_round(args, bin, &nginx, &log, None)?;
                eprintln!(
                    "  round {} agent:    {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  cpu {:.2} us/req  bpf {:.0} ns/req  spans/req {:.2}  load {:.2}",
                    i + 1, r.wrk.rps, r.wrk.p50_us, r.wrk.p99_us, r.cpu_us_per_req, r.bpf_ns_per_req, r.spans_per_req, r.load
                );
                with.push(r);
            } else {
                let w = run_wrk(&args.wrk_cpus, nginx.port, args.connections, args.duration)?;
                eprintln!(
                    "  round {} baseline: {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
                    i + 1,
                    w.rps,
                    w.p50_us,
                    w.p99_us
                );
                base.push(w);
            }
        }
    }
    let overload = if args.starved_cpu_percent > 0 {
        let r = agent_round(args, bin, &nginx, &log, Some(args.starved_cpu_percent))?;
        let ring: f64 = r.drops.iter().filter(|(k, _)| k.contains("ringbuf")).map(|(_, v)| v).sum();
        eprintln!(
            "  overload (agent at {}% CPU): {:>9.0} req/s  p99 {:>7.0} us  ring drops {:.0}  spans/req {:.2}",
            args.starved_cpu_percent, r.wrk.rps, r.wrk.p99_us, ring, r.spans_per_req
        );
        Some(json!({
            "agent_cpu_percent": args.starved_cpu_percent,
            "rps": r.wrk.rps, "p50_us": r.wrk.p50_us, "p99_us": r.wrk.p99_us, "requests": r.wrk.requests,
            "ring_drops": ring, "drops": r.drops, "spans_per_request": r.spans_per_req,
            "bytes_lost_per_request": r.bytes_lost_per_req,
        }))
    } else {
        None
    };
    let bm = |f: fn(&Wrk) -> f64| median(base.iter().map(f).collect());
    let am = |f: &dyn Fn(&AgentRound) -> f64| median(with.iter().map(f).collect());
    let (b_rps, b_p50, b_p99) = (bm(|w| w.rps), bm(|w| w.p50_us), bm(|w| w.p99_us));
    let (a_rps, a_p50, a_p99) = (am(&|r| r.wrk.rps), am(&|r| r.wrk.p50_us), am(&|r| r.wrk.p99_us));
    let cpu = am(&|r| r.cpu_us_per_req);
    let bpf_total = am(&|r| r.bpf_ns_per_req);
    let steady = am(&|r| r.rss_steady_mib);
    let peak = am(&|r| r.rss_peak_mib);
    let mut programs = BTreeMap::new();
    for name in with.iter().flat_map(|r| r.bpf.keys()).collect::<std::collections::BTreeSet<_>>() {
        let per_req = am(&|r| r.bpf.get(name).map_or(0.0, |v| v.0));
        let per_run = am(&|r| r.bpf.get(name).map_or(0.0, |v| v.1));
        programs.insert(name.clone(), json!({ "ns_per_request": per_req, "ns_per_run": per_run }));
    }
    let mut drops = BTreeMap::new();
    for k in with.iter().flat_map(|r| r.drops.keys()).collect::<std::collections::BTreeSet<_>>() {
        // Drops are summed over rounds, not medians: one drop anywhere counts.
        drops.insert(k.clone(), with.iter().map(|r| r.drops.get(k).copied().unwrap_or(0.0)).sum::<f64>());
    }
    let ring_drops: f64 = drops.iter().filter(|(k, _)| k.contains("ringbuf")).map(|(_, v)| v).sum();
    let target = |name: &str, value: f64, limit: &str, met: bool| json!({ "target": name, "value": value, "limit": limit, "met": met });
    let targets = vec![
        target("BPF ns per request (all programs)", bpf_total, "<= 300", bpf_total <= BPF_NS_PER_REQ),
        target("agent CPU us per request", cpu, "<= 4", cpu <= CPU_US_PER_REQ),
        target("throughput ratio", a_rps / b_rps, ">= 0.97", a_rps / b_rps >= THROUGHPUT_RATIO),
        target("p99 latency ratio", a_p99 / b_p99, "<= 1.05", a_p99 / b_p99 <= P99_RATIO),
        target("RSS steady MiB", steady, "<= 48", steady <= RSS_STEADY_MIB),
        target("RSS peak / steady", peak / steady, "<= 1.5", peak / steady <= PEAK_OVER_STEADY),
        target("ring-buffer drops", ring_drops, "== 0", ring_drops == 0.0),
    ];
    Ok(json!({
        "label": args.label,
        "time": utc_stamp(),
        "agent": bin.display().to_string(),
        "settings": { "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
                      "sink": format!("{:?}", args.sink).to_lowercase(), "nginx_cpus": args.nginx_cpus, "wrk_cpus": args.wrk_cpus },
        "load_avg_median": am(&|r| r.load),
        "baseline": { "rps": b_rps, "p50_us": b_p50, "p99_us": b_p99 },
        "agent_run": { "rps": a_rps, "p50_us": a_p50, "p99_us": a_p99,
                       "cpu_us_per_request": cpu, "bpf_ns_per_request": bpf_total,
                       "spans_per_request": am(&|r| r.spans_per_req),
                       "otlp_bytes_per_request": am(&|r| r.sink_bytes_per_req),
                       "rss_steady_mib": steady, "rss_peak_mib": peak },
        "ratios": { "throughput": a_rps / b_rps, "p50": a_p50 / b_p50, "p99": a_p99 / b_p99 },
        "overload": overload.map(|mut o| {
            o["throughput_ratio"] = json!(o["rps"].as_f64().unwrap_or(f64::NAN) / b_rps);
            o["p99_ratio"] = json!(o["p99_us"].as_f64().unwrap_or(f64::NAN) / b_p99);
            o
        }),
        "bpf_programs": programs,
        "drops": drops,
        "targets": targets,
        "rounds": {
            "baseline": base.iter().map(|w| json!({"rps": w.rps, "p50_us": w.p50_us, "p99_us": w.p99_us, "requests": w.requests})).collect::<Vec<_>>(),
            "agent": with.iter().map(|r| json!({"rps": r.wrk.rps, "p50_us": r.wrk.p50_us, "p99_us": r.wrk.p99_us, "requests": r.wrk.requests,
                "cpu_us_per_request": r.cpu_us_per_req, "bpf_ns_per_request": r.bpf_ns_per_req, "spans_per_request": r.spans_per_req,
                "rss_steady_mib": r.rss_steady_mib, "rss_peak_mib": r.rss_peak_mib, "load": r.load,
                "otlp_bytes_per_request": r.sink_bytes_per_req, "otlp_export_requests": r.sink_requests,
                "bpf_ns_per_request_by_program": r.bpf.iter().map(|(k, v)| (k.clone(), v.0)).collect::<BTreeMap<_, _>>()})).collect::<Vec<_>>(),
        },
    }))
}
