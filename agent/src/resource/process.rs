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
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let mut otel_sdk_env = false;
    let mut otel_service_name = None;
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
            otel_service_name = Some(v.to_string());
        }
        if var.starts_with("OTEL_SERVICE_NAME=")
            || var.starts_with("OTEL_EXPORTER_OTLP_")
            || var.starts_with("OTEL_TRACES_EXPORTER=")
        {
            otel_sdk_env = true;
        }
    }
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
        otel_sdk_env,
        otel_service_name,
        start_time,
    })
}

/// pid → ProcessInfo, re-read when the pid was reused (start time changed). Bounded.
///
/// This is on the per-span path: a hit costs a hash lookup, and the pid-reuse check (a
/// /proc read, which dominated the agent's CPU when done per span) runs at most once per
/// `REVALIDATE` per pid.
#[derive(Default)]
pub struct ProcessCache {
    by_pid: HashMap<u32, (Arc<ProcessInfo>, std::time::Instant)>,
}

const MAX_PROCESSES: usize = 65536;
const REVALIDATE: std::time::Duration = std::time::Duration::from_secs(5);

impl ProcessCache {
    pub fn get(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        if let Some((p, checked)) = self.by_pid.get_mut(&pid) {
            if checked.elapsed() < REVALIDATE {
                return Some(p.clone());
            }
            // A reused pid shows a different start time; a gone one keeps its last info.
            if stat_fields(pid).is_none_or(|(_, start)| start == p.start_time) {
                *checked = std::time::Instant::now();
                return Some(p.clone());
            }
        }
        let info = Arc::new(read_process(pid)?);
        if self.by_pid.len() >= MAX_PROCESSES {
            self.by_pid.retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
        self.by_pid.insert(pid, (info.clone(), std::time::Instant::now()));
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
}
