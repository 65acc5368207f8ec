//! TLS plaintext capture: attaching the OpenSSL uprobes, and saying so when a process's
//! TLS cannot be seen.
//!
//! Kernel side: `ebpf/programs/src/programs/tls.rs`. Uprobes belong to a *file* (inode +
//! offset), not to a process, so each distinct library file (device + inode) is attached
//! exactly once and then covers every process that maps it, including ones started later.
//! Files are found:
//! - at start, in the host's usual library directories (even when no process maps them
//!   yet) and in every process's mappings (`/proc/PID/maps`, opened through
//!   `/proc/PID/root` so libraries inside containers are reached);
//! - after every exec (the kernel sends an exec record): the new image's libraries are
//!   mapped by the dynamic loader shortly *after* exec, so the process's mappings are read
//!   again a few times over the next seconds;
//! - when a TLS handshake shows up on a connection of a process we have no probe for.
//!
//! A connection whose first bytes are a TLS handshake record, in a process that maps no
//! probed library, is reported once per process as "TLS not visible for process PID COMM
//! (reason)" with the reason counted in `hoptrace_tls_not_visible_processes_total`.

mod attach;
mod visibility;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::Ebpf;
use serde_json::json;

use self::{
    attach::{attach_library, file_key, mapped_ssl_libraries, FileKey, HOST_LIB_DIRS},
    visibility::classify,
};
pub use self::{
    attach::{load_programs, SSL_LIBRARIES},
    visibility::{classify_executable, looks_like_tls_handshake, NotVisible},
};
use crate::util::logging::log;

/// After an exec, the process's mappings are read again after these delays.
const EXEC_RESCANS: [Duration; 4] =
    [Duration::from_millis(20), Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(5)];
/// Bounds on the userspace bookkeeping.
const MAX_PENDING_RESCANS: usize = 16384;
const MAX_PROCESSES_REMEMBERED: usize = 65536;
#[derive(Clone, Debug, Default)]
pub struct TlsStats {
    /// Distinct library files with the probes attached.
    pub libraries_attached: u64,
    /// Library files whose probes could not be attached (see the log line).
    pub library_attach_errors: u64,
    /// Processes reported as "TLS not visible", by reason.
    pub not_visible: BTreeMap<NotVisible, u64>,
    /// Exec rescans not scheduled because too many were pending.
    pub rescans_dropped: u64,
    /// Handshakes of processes that were exiting when looked at: neither reported as
    /// invisible nor as visible.
    pub unjudged_exited: u64,
}

pub struct TlsWatcher {
    pub stats: TlsStats,
    /// Library files with probes attached (device, inode) → path used.
    attached: HashMap<FileKey, PathBuf>,
    /// Files that failed; not retried (the log said why).
    failed: HashSet<FileKey>,
    /// Processes already reported (or found visible) since their last exec.
    decided: HashSet<u32>,
    rescans: VecDeque<(Instant, u32)>,
}

impl Default for TlsWatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsWatcher {
    pub fn new() -> Self {
        Self {
            stats: TlsStats::default(),
            attached: HashMap::new(),
            failed: HashSet::new(),
            decided: HashSet::new(),
            rescans: VecDeque::new(),
        }
    }

    /// Start: host library directories, then every running process.
    pub fn scan_initial(&mut self, ebpf: &mut Ebpf) {
        for dir in HOST_LIB_DIRS {
            for name in SSL_LIBRARIES {
                let path = Path::new(dir).join(name);
                if path.is_file() {
                    self.attach_file(ebpf, &path);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                    self.scan_process(ebpf, pid);
                }
            }
        }
    }

    /// A process exec'd: forget what we decided about it and look at its mappings soon.
    pub fn on_exec(&mut self, pid: u32) {
        self.decided.remove(&pid);
        if self.rescans.len() + EXEC_RESCANS.len() > MAX_PENDING_RESCANS {
            self.stats.rescans_dropped += 1;
            return;
        }
        let now = Instant::now();
        for d in EXEC_RESCANS {
            self.rescans.push_back((now + d, pid));
        }
    }

    /// Runs the rescans that are due.
    pub fn tick(&mut self, ebpf: &mut Ebpf) {
        let now = Instant::now();
        // Pushed in time order per batch of equal delays; scan the whole (bounded) queue.
        let mut due = Vec::new();
        self.rescans.retain(|&(at, pid)| {
            if at <= now {
                due.push(pid);
                false
            } else {
                true
            }
        });
        due.sort_unstable();
        due.dedup();
        for pid in due {
            self.scan_process(ebpf, pid);
        }
    }

    /// A connection of `pid` starts with a TLS handshake. Attaches any new library it maps;
    /// if none of its mappings is probed, reports it once.
    pub fn on_handshake(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.decided.contains(&pid) {
            return;
        }
        if self.decided.len() >= MAX_PROCESSES_REMEMBERED {
            self.decided.clear();
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        // A process on its way out has no mappings left (and no /proc/PID/root): nothing
        // can be judged, and a short-lived client (curl) would be misreported as invisible.
        if maps.trim().is_empty() {
            self.stats.unjudged_exited += 1;
            return;
        }
        self.scan_maps(ebpf, pid, &maps);
        match self.maps_probed_library(pid, &maps) {
            Some(true) => {
                self.decided.insert(pid);
                return;
            }
            Some(false) => {}
            None => {
                self.stats.unjudged_exited += 1;
                return;
            }
        }
        self.decided.insert(pid);
        let reason = classify(pid, &maps);
        *self.stats.not_visible.entry(reason).or_default() += 1;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        log(
            "warn",
            &format!("TLS not visible for process {pid} {comm} ({})", reason.label()),
            json!({ "pid": pid, "comm": comm, "reason": reason.label() }),
        );
    }

    fn scan_process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            self.scan_maps(ebpf, pid, &maps);
        }
    }

    fn scan_maps(&mut self, ebpf: &mut Ebpf, pid: u32, maps: &str) {
        let mut seen = HashSet::new();
        for path in mapped_ssl_libraries(maps) {
            if seen.insert(path) {
                let full = Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
                self.attach_file(ebpf, &full);
            }
        }
    }

    /// Whether the process maps a probed library; `None` when a mapped library can no
    /// longer be looked at (the process is exiting).
    fn maps_probed_library(&self, pid: u32, maps: &str) -> Option<bool> {
        let mut unknown = false;
        for path in mapped_ssl_libraries(maps) {
            let full = Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
            match file_key(&full) {
                Some(k) if self.attached.contains_key(&k) => return Some(true),
                Some(_) => {}
                None => unknown = true,
            }
        }
        (!unknown).then_some(false)
    }

    fn attach_file(&mut self, ebpf: &mut Ebpf, path: &Path) {
        let Some(key) = file_key(path) else { return };
        if self.attached.contains_key(&key) || self.failed.contains(&key) {
            return;
        }
        match attach_library(ebpf, path) {
            Ok(optional_missing) => {
                self.stats.libraries_attached += 1;
                log(
                    "info",
                    "TLS library attached",
                    json!({ "path": path.display().to_string(), "device": key.0, "inode": key.1,
                            "symbols_missing": optional_missing }),
                );
                self.attached.insert(key, path.to_path_buf());
            }
            Err(e) => {
                self.stats.library_attach_errors += 1;
                log(
                    "warn",
                    "TLS library not attached",
                    json!({ "path": path.display().to_string(), "error": format!("{e:#}") }),
                );
                self.failed.insert(key);
            }
        }
    }

    pub fn libraries(&self) -> impl Iterator<Item = &Path> {
        self.attached.values().map(|p| p.as_path())
    }
}
