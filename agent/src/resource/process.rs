//! What the agent knows about a process, read once from /proc and cached.
//!
//! Used to build a service's Resource (executable, command line, container, runtime) and
//! to recognise services that already carry an OpenTelemetry SDK (`OTEL_*` environment).

use hashbrown::HashMap;
use std::sync::Arc;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Executable file name (`python3.11`, `nginx`).
    pub exe_name: String,
    /// Full executable path.
    pub exe_path: String,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
    /// Container id from the cgroup path, when the process runs in one.
    pub container_id: Option<String>,
    /// Kubernetes pod UID from a kubelet cgroup path (any cgroup line, v1 or v2).
    pub pod_uid: Option<String>,
    /// cgroup v2 path (or the first v1 path), for rules.
    pub cgroup: String,
    /// python / node / java / go / ruby / dotnet / php, when recognisable.
    pub runtime: Option<&'static str>,
    /// The process environment names OpenTelemetry SDK settings (OTEL_SERVICE_NAME,
    /// OTEL_EXPORTER_OTLP_*, OTEL_TRACES_EXPORTER…): it most likely instruments itself.
    pub otel_sdk_env: bool,
    /// Values of OTEL_SERVICE_NAME, when set (used as a hint for service.name).
    pub otel_service_name: Option<String>,
    /// Process start time (clock ticks since boot), to tell a reused pid apart.
    pub start_time: u64,
    /// The OpenTelemetry environment carrier (`TRACEPARENT`, `TRACESTATE`, `BAGGAGE`) as
    /// found, unvalidated (the trace pipeline validates it); nothing else of the
    /// environment is kept.
    pub env_context: Option<Box<EnvContext>>,
}

/// Trace context a process was started with, from its environment: the convention for
/// passing context to CLI tools and batch jobs. Raw values, length-capped; in memory only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
}

/// Most bytes of `/proc/PID/environ` read; the rest is not looked at (and counted).
pub const ENVIRON_CAP: u64 = 64 * 1024;
/// Longest carrier values kept (W3C: traceparent is 55 bytes, tracestate ≤ 512 members of
/// ≤ 256 bytes, baggage ≤ 8192 bytes); a longer value is treated as absent.
const TRACEPARENT_MAX: usize = 64;
const TRACESTATE_MAX: usize = 8192;
const BAGGAGE_MAX: usize = 8192;

/// Environments longer than [`ENVIRON_CAP`] (only their first part was read).
pub static ENVIRON_TRUNCATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads at most [`ENVIRON_CAP`] bytes of a process's environment.
fn read_environ(pid: u32) -> Vec<u8> {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/environ")) else { return Vec::new() };
    let mut buf = Vec::new();
    // One byte past the cap tells a cut environment from one of exactly the cap.
    if f.take(ENVIRON_CAP + 1).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    if buf.len() as u64 > ENVIRON_CAP {
        buf.truncate(ENVIRON_CAP as usize);
        ENVIRON_TRUNCATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    buf
}

/// The values of the variables `names` in a process's environment (bounded read, values
/// over 256 bytes cut), `None` for those unset. Only for job rules that name variables:
/// nothing else of the environment is copied.
pub fn env_values(pid: u32, names: &[&str]) -> Vec<Option<String>> {
    let mut out = vec![None; names.len()];
    if names.is_empty() {
        return out;
    }
    for var in read_environ(pid).split(|&b| b == 0) {
        let Some(eq) = var.iter().position(|&b| b == b'=') else { continue };
        if let Some(i) = names.iter().position(|n| n.as_bytes() == &var[..eq]) {
            let v = String::from_utf8_lossy(&var[eq + 1..]);
            let mut cut = v.len().min(256);
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            out[i] = Some(v[..cut].to_string());
        }
    }
    out
}

/// The command line as [`ProcessInfo::cmdline`] has it (arguments joined by spaces).
pub fn read_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<std::borrow::Cow<'_, str>> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect();
    Some(args.join(" "))
}

/// Whether a process's environment (its first [`ENVIRON_CAP`] bytes) sets `name`
/// (`b"TRACEPARENT="`), without copying any of it.
pub fn environ_sets(pid: u32, name: &[u8]) -> bool {
    read_environ(pid).split(|&b| b == 0).any(|var| var.starts_with(name))
}

/// What the agent takes from an environment: whether it configures an OpenTelemetry SDK,
/// `OTEL_SERVICE_NAME`, and the trace context carrier. Every other variable is skipped
/// without being copied.
#[derive(Default)]
struct EnvFacts {
    otel_sdk_env: bool,
    otel_service_name: Option<String>,
    context: Option<Box<EnvContext>>,
}

fn env_facts(environ: &[u8]) -> EnvFacts {
    let mut facts = EnvFacts::default();
    let (mut tp, mut ts, mut bg) = (None, None, None);
    let capped = |v: &[u8], max: usize| (v.len() <= max).then(|| String::from_utf8_lossy(v).into_owned());
    for var in environ.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"OTEL_SERVICE_NAME=") {
            facts.otel_service_name = Some(String::from_utf8_lossy(v).into_owned());
        }
        if var.starts_with(b"OTEL_SERVICE_NAME=")
            || var.starts_with(b"OTEL_EXPORTER_OTLP_")
            || var.starts_with(b"OTEL_TRACES_EXPORTER=")
        {
            facts.otel_sdk_env = true;
        } else if let Some(v) = var.strip_prefix(b"TRACEPARENT=") {
            tp = capped(v, TRACEPARENT_MAX);
        } else if let Some(v) = var.strip_prefix(b"TRACESTATE=") {
            ts = capped(v, TRACESTATE_MAX);
        } else if let Some(v) = var.strip_prefix(b"BAGGAGE=") {
            bg = capped(v, BAGGAGE_MAX);
        }
    }
    facts.context = tp.map(|traceparent| Box::new(EnvContext { traceparent, tracestate: ts, baggage: bg }));
    facts
}

/// Runtime from the executable name.
pub fn runtime_of(exe_name: &str) -> Option<&'static str> {
    let n = exe_name.to_ascii_lowercase();
    let starts = |p: &str| n == p || n.starts_with(p);
    Some(if starts("python") || n == "uvicorn" || n == "gunicorn" {
        "python"
    } else if starts("node") || n == "bun" || n == "deno" {
        "node"
    } else if n == "java" {
        "java"
    } else if starts("ruby") {
        "ruby"
    } else if n == "dotnet" {
        "dotnet"
    } else if starts("php") {
        "php"
    } else {
        return None;
    })
}

fn read(pid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

/// Field 22 (starttime) and field 4 (ppid) of /proc/<pid>/stat.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = read(pid, "stat")?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

pub fn read_process(pid: u32) -> Option<ProcessInfo> {
    let (ppid, start_time) = stat_fields(pid)?;
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").to_string())
        .unwrap_or_default();
    let exe_name = exe_path.rsplit('/').next().unwrap_or("").to_string();
    let cmdline = read(pid, "cmdline")
        .map(|c| c.split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let cgroup = read(pid, "cgroup").unwrap_or_default();
    let env = env_facts(&read_environ(pid));
    let cgroup_path = cgroup
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| cgroup.lines().next())
        .map(|l| l.rsplit(':').next().unwrap_or("").to_string())
        .unwrap_or_default();
    Some(ProcessInfo {
        pid,
        ppid,
        runtime: runtime_of(&exe_name),
        exe_name,
        exe_path,
        cmdline,
        container_id: crate::resource::cgroup::container_id(&cgroup),
        pod_uid: crate::resource::cgroup::pod_uid(&cgroup),
        cgroup: cgroup_path,
        otel_sdk_env: env.otel_sdk_env,
        otel_service_name: env.otel_service_name,
        start_time,
        env_context: env.context,
    })
}

/// pid → ProcessInfo, re-read when the pid was reused (start time changed). Bounded.
///
/// This is on the per-span path: a hit costs a hash lookup, and the pid-reuse check (a
/// /proc read, which dominated the agent's CPU when done per span) runs at most once per
/// `REVALIDATE` per pid.
#[derive(Default)]
pub struct ProcessCache {
    /// With when it was last checked (coarse monotonic ns: a precise clock read per span
    /// cost more than the lookup itself).
    by_pid: HashMap<u32, (Arc<ProcessInfo>, u64)>,
}

const MAX_PROCESSES: usize = 65536;
const REVALIDATE_NS: u64 = 5_000_000_000;

impl ProcessCache {
    pub fn get(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        let now = crate::util::clock::coarse_monotonic_ns();
        if let Some((p, checked)) = self.by_pid.get_mut(&pid) {
            if now.saturating_sub(*checked) < REVALIDATE_NS {
                return Some(p.clone());
            }
            // A reused pid shows a different start time; a gone one keeps its last info.
            if stat_fields(pid).is_none_or(|(_, start)| start == p.start_time) {
                *checked = now;
                return Some(p.clone());
            }
        }
        let info = Arc::new(read_process(pid)?);
        if self.by_pid.len() >= MAX_PROCESSES {
            self.by_pid.retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
        self.by_pid.insert(pid, (info.clone(), now));
        Some(info)
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = read_process(std::process::id()).expect("own /proc entry");
        assert!(!me.exe_name.is_empty());
        assert!(me.start_time > 0);
        assert_eq!(runtime_of("python3.11"), Some("python"));
        assert_eq!(runtime_of("nginx"), None);
    }

    #[test]
    fn only_the_carrier_and_otel_hints_are_taken_from_the_environment() {
        let env =
            b"PATH=/bin\0DB_PASSWORD=hunter2\0TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\0\
TRACESTATE=k=v\0OTEL_SERVICE_NAME=scorer\0";
        let f = env_facts(env);
        let c = f.context.expect("carrier");
        assert_eq!(c.traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(c.tracestate.as_deref(), Some("k=v"));
        assert_eq!(c.baggage, None);
        assert!(f.otel_sdk_env);
        assert!(!format!("{c:?}").contains("hunter2"));
        // An oversized value is not kept at all.
        let long = [b"TRACEPARENT=".as_slice(), &[b'0'; 100]].concat();
        assert!(env_facts(&long).context.is_none());
        assert!(env_facts(b"PATH=/bin").context.is_none());
    }
}
