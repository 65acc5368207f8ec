//! Which processes' stdout/stderr the kernel captures: those a `services` rule names
//! (and, when `logs.app.services` lists names, only those services), re-checked when a
//! process execs something else. Their pids go into the kernel's `APP_LOG_TGIDS` map;
//! every other process's writes are not even looked at.

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use serde_json::json;

use crate::capture::loader::applog::AppLogTargets;
use crate::resource::process::read_process;
use crate::traces::TracePipeline;
use crate::util::logging::log;

/// How often /proc is scanned for new processes.
const SCAN_EVERY: Duration = Duration::from_secs(1);

pub struct AppLogSelector {
    targets: AppLogTargets,
    /// pid → (executable path when judged, selected).
    known: HashMap<u32, (String, bool)>,
    last_scan: Option<Instant>,
    /// Processes selected now.
    pub selected: u64,
    /// Selections refused because the kernel map was full.
    pub map_full: u64,
}

impl AppLogSelector {
    pub fn new(targets: AppLogTargets) -> Self {
        Self { targets, known: HashMap::new(), last_scan: None, selected: 0, map_full: 0 }
    }

    /// Periodic (from the capture loop's tick): new processes are judged, gone ones leave
    /// the map.
    pub fn scan(&mut self, pipeline: &mut TracePipeline) {
        if self.last_scan.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
            return;
        }
        self.last_scan = Some(Instant::now());
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        let me = std::process::id();
        let mut seen: Vec<u32> = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            seen.push(pid);
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if self.known.get(&pid).is_some_and(|(e, _)| *e == exe) {
                continue;
            }
            self.judge(pid, exe, pipeline);
        }
        seen.sort_unstable();
        let gone: Vec<u32> = self.known.keys().copied().filter(|p| seen.binary_search(p).is_err()).collect();
        for pid in gone {
            if let Some((_, true)) = self.known.remove(&pid) {
                self.targets.unselect(pid);
                self.selected = self.selected.saturating_sub(1);
            }
        }
    }

    fn judge(&mut self, pid: u32, exe: String, pipeline: &mut TracePipeline) {
        let was = self.known.get(&pid).is_some_and(|(_, s)| *s);
        let wanted = !exe.is_empty() && pipeline.app_log_wanted(pid);
        if wanted && !was {
            if self.targets.select(pid) {
                self.selected += 1;
                log("info", "app logs: process selected", json!({ "pid": pid, "exe": exe }));
            } else {
                self.map_full += 1;
                self.known.insert(pid, (exe, false));
                return;
            }
        } else if !wanted && was {
            self.targets.unselect(pid);
            self.selected = self.selected.saturating_sub(1);
        }
        self.known.insert(pid, (exe, wanted));
    }
}

impl TracePipeline {
    /// Whether process `pid` is one whose lines `logs.app` asks for.
    pub fn app_log_wanted(&mut self, pid: u32) -> bool {
        let Some(info) = read_process(pid) else { return false };
        if !self.resources.named_by_rule(&info) {
            return false;
        }
        // The pipeline's view of the process is refreshed too (it may have exec'd).
        self.processes.forget(pid);
        self.resources.forget(pid);
        let services = &self.app_logs.cfg.app.services;
        if services.is_empty() {
            return true;
        }
        let resource = self.resources.resolve(pid, Some(&info));
        let name = crate::traces::finish::resource_attr(&resource, "service.name");
        services.contains(&name)
    }
}
