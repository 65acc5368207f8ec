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
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Baseline/agent round pairs.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Where the agent's spans go: `otlp` = OTLP/HTTP protobuf to a local sink that
    /// discards (the production path); `json` = OTLP/JSON lines to /dev/null.
    #[arg(long, value_enum, default_value_t = Sink::Otlp)]
    sink: Sink,
    /// Agent binary to measure (default: build the release agent and use it); lets two
    /// builds be compared.
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Also write the results here (they always go to target/bench/<timestamp>.json).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// CPU list for nginx's worker (taskset syntax).
    #[arg(long, default_value = "0")]
    nginx_cpus: String,
    /// CPU list for wrk.
    #[arg(long, default_value = "1")]
    wrk_cpus: String,
    /// Label stored in the JSON (e.g. the commit or the change being measured).
    #[arg(long, default_value = "")]
    label: String,
    /// After the rounds, one overload round: the agent CPU-starved through its cgroup
    /// (this percentage of one CPU) while wrk runs; it must drop and count, never slow
    /// nginx. 0 skips it.
    #[arg(long, default_value_t = 5)]
    starved_cpu_percent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Sink {
    Otlp,
    Json,
}

/// The targets.
const BPF_NS_PER_REQ: f64 = 300.0;
const CPU_US_PER_REQ: f64 = 4.0;
const THROUGHPUT_RATIO: f64 = 0.97;
const P99_RATIO: f64 = 1.05;
const RSS_STEADY_MIB: f64 = 48.0;
const PEAK_OVER_STEADY: f64 = 1.5;

pub fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    for tool in ["nginx", "wrk", "taskset"] {
        if which(tool).is_none() {
            bail!("{tool} not found: run `cargo xtask setup`");
        }
    }
    let agent = match &args.agent_bin {
        Some(p) => p.clone(),
        None => {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "-p", "hoptrace"])
                .current_dir(root)
                .status()?;
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

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
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

// ---------------------------------------------------------------- processes

struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    fn start(cpus: &str) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("hoptrace-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        // One worker, no access log (a file write per request would be the benchmark's
        // own noise), a fixed body served from memory.
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/px;\n\
               fastcgi_temp_path {d}/fc;\n  uwsgi_temp_path {d}/uw;\n  scgi_temp_path {d}/sc;\n\
               keepalive_requests 1000000;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type text/plain; return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("taskset")
            .args(["-c", cpus, "nginx", "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, dir, port })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and worker.
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// OTLP/HTTP collector stand-in: accepts POSTs, discards the bodies, answers 200 with an
/// empty (valid) ExportTraceServiceResponse.
struct OtlpSink {
    port: u16,
    /// Export requests received.
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl OtlpSink {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, b, s) = (requests.clone(), bytes.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, b) = (r.clone(), b.clone());
                thread::spawn(move || {
                    let _ = serve_otlp(conn, &r, &b);
                });
            }
        });
        Ok(Self { port, requests, bytes, stop })
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_otlp(conn: TcpStream, requests: &AtomicU64, bytes: &AtomicU64) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut body = Vec::new();
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
    }
}

struct Agent {
    child: Child,
    listen: u16,
}

impl Agent {
    fn start(bin: &Path, nginx_port: u16, sink: Option<&OtlpSink>, log: &Path) -> Result<Self> {
        let listen = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--port", &nginx_port.to_string(), "--listen", &format!("127.0.0.1:{listen}")]);
        match sink {
            Some(s) => {
                cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("http://127.0.0.1:{}/v1/traces", s.port));
                cmd.env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
            }
            None => {
                cmd.args(["--output", "/dev/null"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = Self { child, listen };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!("agent exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            if http_get(listen, "/readyz").is_some_and(|b| b.starts_with("ready")) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 60 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let text = http_get(self.listen, "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

// ---------------------------------------------------------------- measurements

#[derive(Debug, Default, Clone, Copy)]
struct Wrk {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn run_wrk(cpus: &str, port: u16, connections: u32, secs: u64) -> Result<Wrk> {
    let out = Command::new("taskset")
        .args(["-c", cpus, "wrk", "-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot parse wrk output:\n{text}"))
}

fn duration_us(s: &str) -> Option<f64> {
    let i = s.find(|c: char| c.is_ascii_alphabetic())?;
    let v: f64 = s[..i].parse().ok()?;
    Some(match &s[i..] {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => w.p50_us = duration_us(v)?,
            ["99%", v] => w.p99_us = duration_us(v)?,
            ["Requests/sec:", v] => w.rps = v.parse().ok()?,
            [n, "requests", "in", ..] => w.requests = n.parse().ok()?,
            _ => {}
        }
    }
    (w.requests > 0.0 && w.p99_us > 0.0).then_some(w)
}

/// CPU time (ns) of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// name → (run_time_ns, run_cnt) of the BPF programs `pid` holds.
fn bpf_stats(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(t), Some(n)) = (field("prog_id:"), field("run_time_ns:"), field("run_cnt:")) else {
            continue;
        };
        let name = prog_name(id as u32).unwrap_or_else(|| format!("prog{id}"));
        // The same program may be held by several fds (one per attachment): count it once.
        out.insert(name, (t, n));
    }
    out
}

/// A program's name from its id: BPF_PROG_GET_FD_BY_ID, then BPF_OBJ_GET_INFO_BY_FD for
/// the first 80 bytes of `struct bpf_prog_info` (uapi; `name[16]` is at byte 64).
fn prog_name(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: the bpf syscall reads `attr` (zero-padded, size given) and writes nothing back.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 80];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: the kernel writes at most info_len (80) bytes into `info`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), attr.len()) };
    // SAFETY: fd came from the syscall above.
    unsafe { libc::close(fd as i32) };
    if r != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn metric_sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
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

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
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

fn print_report(r: &Value) {
    let f = |p: &str| r.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    println!("\n{:<34} {:>12} {:>12} {:>8}", "median over rounds", "baseline", "agent", "ratio");
    for (name, key) in [("throughput (req/s)", "rps"), ("latency p50 (us)", "p50_us"), ("latency p99 (us)", "p99_us")] {
        let (b, a) = (f(&format!("/baseline/{key}")), f(&format!("/agent_run/{key}")));
        println!("{name:<34} {b:>12.0} {a:>12.0} {:>8.3}", a / b);
    }
    println!("{:<34} {:>12} {:>12.2}", "agent CPU (us/request)", "", f("/agent_run/cpu_us_per_request"));
    println!("{:<34} {:>12} {:>12.2}", "spans exported per request", "", f("/agent_run/spans_per_request"));
    println!("{:<34} {:>12} {:>12.0}", "OTLP bytes received per request", "", f("/agent_run/otlp_bytes_per_request"));
    println!("{:<34} {:>12} {:>12.1}", "RSS steady (MiB)", "", f("/agent_run/rss_steady_mib"));
    println!("{:<34} {:>12} {:>12.1}", "RSS peak VmHWM (MiB)", "", f("/agent_run/rss_peak_mib"));
    println!("{:<34} {:>12} {:>12.0}", "BPF total (ns/request)", "", f("/agent_run/bpf_ns_per_request"));
    if let Some(p) = r.get("bpf_programs").and_then(Value::as_object) {
        for (name, v) in p {
            let per_req = v["ns_per_request"].as_f64().unwrap_or(0.0);
            if per_req >= 0.5 {
                println!(
                    "  {name:<32} {:>12} {per_req:>12.0}   ({:.0} ns/run)",
                    "",
                    v["ns_per_run"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    if let Some(d) = r.get("drops").and_then(Value::as_object) {
        let nonzero: Vec<_> = d.iter().filter(|(_, v)| v.as_f64().unwrap_or(0.0) != 0.0).collect();
        if nonzero.is_empty() {
            println!("drops (all rounds)                 none");
        }
        for (k, v) in nonzero {
            println!("drop {k} = {v}");
        }
    }
    println!("load average (median)              {:.2}", f("/load_avg_median"));
    if r.get("overload").is_some_and(|o| !o.is_null()) {
        println!(
            "\noverload: agent at {:.0}% of one CPU  throughput ratio {:.3}  p99 ratio {:.3}  ring drops {:.0} (counted)  bytes lost/request {:.0}  spans/request {:.2}",
            f("/overload/agent_cpu_percent"),
            f("/overload/throughput_ratio"),
            f("/overload/p99_ratio"),
            f("/overload/ring_drops"),
            f("/overload/bytes_lost_per_request"),
            f("/overload/spans_per_request")
        );
    }
    println!("\n{:<36} {:>12} {:>10}  met", "target", "value", "limit");
    for t in r["targets"].as_array().into_iter().flatten() {
        println!(
            "{:<36} {:>12.3} {:>10}  {}",
            t["target"].as_str().unwrap_or(""),
            t["value"].as_f64().unwrap_or(f64::NAN),
            t["limit"].as_str().unwrap_or(""),
            if t["met"].as_bool() == Some(true) { "MET" } else { "not met" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 50 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.02ms  300.00us   9.00ms   90.00%\n\
  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    1.30ms\n     99%    2.50ms\n\
  412345 requests in 10.00s, 60.00MB read\nRequests/sec:  41234.50\nTransfer/sec:      6.00MB\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!((w.requests, w.rps, w.p50_us, w.p99_us), (412345.0, 41234.5, 812.0, 2500.0));
    }
}
