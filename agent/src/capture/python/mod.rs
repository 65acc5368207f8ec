//! Python Context probes: which processes run CPython, where their threads keep their
//! current `contextvars.Context`, and the return probe on `PyContext_CopyCurrent`.
//!
//! Kernel side: `ebpf/programs/src/python.rs`. Unlike the OpenSSL probes (one per library
//! file, for every process), the probe is attached **per process** (`OneProcess`): only
//! Python processes that pass the capture filters trap; another process mapping the same
//! interpreter file, and every non-Python process, pays nothing. Only Python *services*
//! need it (a request must claim a Context), so a process is looked at:
//! - at start, when it runs Python and listens on a TCP port;
//! - later, at its first accepted connection (the kernel's open record, role server):
//!   a Python client or script never gets the probe, and attaching (a few milliseconds of
//!   the capture loop) happens once per service, not per exec;
//! - its interpreter file is its mapped `libpython3.X.so` or, for a statically linked
//!   interpreter (Debian's `/usr/bin/python3.11`), its executable; both export
//!   `PyContext_CopyCurrent`, `_PyRuntime` and `Py_Version`, so stripped builds work.
//!
//! The layout ([`layout`]) is checked on the live process before `PY_PROCS` gets it.

pub mod layout;

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::HashMap as BpfHashMap,
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use hoptrace_common::PyProc;
use serde_json::json;

use self::layout::{find_thread, offsets, symbols, version_of, Mem, Symbols};
use crate::{capture::loader::Filters, util::logging::log};

const PROGRAM: &str = "py_copy_ret";
const MAX_FILES_REMEMBERED: usize = 4096;
/// Processes remembered as looked at (cleared when full: looked at again).
const MAX_DECIDED: usize = 65536;
/// `PY_PROCS` capacity (the kernel map's size).
const MAX_PROCESSES: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct PythonStats {
    /// Python processes with the Context probe attached now.
    pub processes_attached: u64,
    /// Python processes left out: unsupported version or layout check failed (logged).
    pub processes_unsupported: u64,
    /// Probe attach failures (logged).
    pub attach_errors: u64,
}

struct Attached {
    link: UProbeLinkId,
}

pub struct PythonWatcher {
    pub stats: PythonStats,
    filters: Filters,
    /// Interpreter files by (device, inode): their symbols, or None (not CPython ≥ 3.11).
    files: HashMap<(u64, u64), Option<Symbols>>,
    attached: HashMap<u32, Attached>,
    /// Processes decided about since their last exec (attached, or left out for good).
    decided: HashSet<u32>,
}

/// Loads the return probe (attached later, per process).
pub fn load_program(ebpf: &mut Ebpf) -> Result<()> {
    let p: &mut UProbe = ebpf.program_mut(PROGRAM).ok_or_else(|| anyhow!("program {PROGRAM} missing"))?.try_into()?;
    p.load().map_err(|e| crate::capture::loader::verifier_error(PROGRAM, e))
}

impl PythonWatcher {
    pub fn new(filters: Filters) -> Self {
        Self {
            stats: PythonStats::default(),
            filters,
            files: HashMap::new(),
            attached: HashMap::new(),
            decided: HashSet::new(),
        }
    }

    /// Start: every running Python process that listens on a TCP port.
    pub fn scan_initial(&mut self, ebpf: &mut Ebpf) {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                    if self.interpreter_of(pid).is_some() && !crate::resource::procnet::listening_ports(pid).is_empty()
                    {
                        self.consider(ebpf, pid);
                    }
                }
            }
        }
    }

    /// A process accepted a connection: a service; attach if it runs Python.
    pub fn on_server(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.consider(ebpf, pid);
    }

    /// A process exec'd: its old image, and the probe on it, are gone.
    pub fn on_exec(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.forget(ebpf, pid);
    }

    /// A process exited: its probe and its `PY_PROCS` entry go.
    pub fn on_exit(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.forget(ebpf, pid);
    }

    fn forget(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.decided.remove(&pid);
        let Some(a) = self.attached.remove(&pid) else { return };
        self.stats.processes_attached = self.attached.len() as u64;
        if let Ok(mut procs) = procs_map(ebpf) {
            let _ = procs.remove(&pid);
        }
        if let Some(Ok(p)) = ebpf.program_mut(PROGRAM).map(<&mut UProbe>::try_from) {
            // The process is gone: the kernel may have dropped the probe already.
            let _ = p.detach(a.link);
        }
    }

    /// Attaches to `pid` when it runs a supported CPython and passes the filters. Each
    /// process is looked at once per exec (its later connections cost a set lookup).
    fn consider(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.decided.contains(&pid) {
            return;
        }
        if self.decided.len() >= MAX_DECIDED {
            self.decided.clear();
        }
        self.decided.insert(pid);
        if !self.passes_filters(pid) {
            return;
        }
        let began = Instant::now();
        let Some((path, syms, start)) = self.interpreter_of(pid) else { return };
        match self.select(ebpf, pid, &path, &syms, start, began) {
            Ok(()) => {}
            Err(e) => {
                self.stats.processes_unsupported += 1;
                log(
                    "warn",
                    "Python context linking off for a process",
                    json!({ "pid": pid, "path": path.display().to_string(), "error": format!("{e:#}") }),
                );
            }
        }
    }

    /// The process's interpreter file (as reached through `/proc/PID/root`), its symbols,
    /// and where its first mapping starts.
    fn interpreter_of(&mut self, pid: u32) -> Option<(PathBuf, Symbols, u64)> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        for (path, start) in interpreter_candidates(&maps) {
            let full = Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
            let Ok(meta) = std::fs::metadata(&full) else { continue };
            let key = (meta.dev(), meta.ino());
            if !self.files.contains_key(&key) {
                if self.files.len() >= MAX_FILES_REMEMBERED {
                    self.files.clear();
                }
                self.files.insert(key, symbols(&full).ok().flatten());
            }
            if let Some(Some(s)) = self.files.get(&key) {
                return Some((full, *s, start));
            }
        }
        None
    }

    /// Checks the layout on the live process, then fills `PY_PROCS` and attaches the
    /// probe.
    fn select(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        path: &Path,
        s: &Symbols,
        start: u64,
        began: Instant,
    ) -> Result<()> {
        let bias = start.wrapping_sub(s.base_vaddr);
        let mem = Mem::open(pid)?;
        let (major, minor) = version_of(mem.u64_at(bias.wrapping_add(s.version))? & 0xffff_ffff);
        if major != 3 {
            return Err(anyhow!("Python {major}.{minor} is not supported"));
        }
        let runtime = bias.wrapping_add(s.runtime);
        let o = offsets(&mem, minor, runtime)?;
        // A process that accepts connections initialized its interpreter long ago: when
        // its main thread is not found, the layout does not match.
        find_thread(&mem, runtime, &o, pid)
            .map_err(|e| anyhow!("{e:#}: the layout of 3.{minor} does not match this interpreter"))?;
        if self.attached.len() >= MAX_PROCESSES {
            return Err(anyhow!("too many Python processes selected ({MAX_PROCESSES})"));
        }
        let proc = PyProc {
            interp_head_addr: runtime + o.interpreters_head,
            off_threads_head: o.threads_head,
            off_next: o.next,
            off_native_thread_id: o.native_thread_id,
            off_context: o.context,
        };
        procs_map(ebpf)?.insert(pid, proc, 0).context("PY_PROCS insert")?;
        let p: &mut UProbe = ebpf.program_mut(PROGRAM).ok_or_else(|| anyhow!("{PROGRAM} missing"))?.try_into()?;
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?);
        let link = match p.attach(s.copy_current, path, scope) {
            Ok(l) => l,
            Err(e) => {
                self.stats.attach_errors += 1;
                let _ = procs_map(ebpf).map(|mut m| m.remove(&pid));
                return Err(anyhow!(e)).context("attaching the PyContext_CopyCurrent return probe");
            }
        };
        self.attached.insert(pid, Attached { link });
        self.stats.processes_attached = self.attached.len() as u64;
        log(
            "info",
            "Python context probe attached",
            json!({ "pid": pid, "path": path.display().to_string(), "version": format!("3.{minor}"),
                    "took_us": began.elapsed().as_micros() as u64 }),
        );
        Ok(())
    }

    /// The capture filters' pid and cgroup lists (the kernel applies them to the syscall
    /// programs; a filtered-out process gets no probe either). The agent itself never.
    fn passes_filters(&self, pid: u32) -> bool {
        let f = &self.filters;
        if pid == std::process::id() || f.exclude_pids.contains(&pid) {
            return false;
        }
        if !f.pids.is_empty() && !f.pids.contains(&pid) {
            return false;
        }
        if f.cgroups.is_empty() && f.exclude_cgroups.is_empty() {
            return true;
        }
        let Some(ino) = cgroup_inode(pid) else { return false };
        let has = |list: &[PathBuf]| list.iter().any(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino));
        !has(&f.exclude_cgroups) && (f.cgroups.is_empty() || has(&f.cgroups))
    }

    pub fn attached(&self) -> usize {
        self.attached.len()
    }
}

fn procs_map(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, PyProc>> {
    Ok(BpfHashMap::try_from(ebpf.map_mut("PY_PROCS").context("PY_PROCS map missing")?)?)
}

/// The inode of the process's cgroup v2 directory (the kernel's cgroup id).
fn cgroup_inode(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    std::fs::metadata(format!("/sys/fs/cgroup{rel}")).ok().map(|m| m.ino())
}

/// Files of a `/proc/PID/maps` text that may hold the interpreter, with the start of
/// their mapping at file offset 0: `libpython3.*` first, then every other executable
/// mapping's file (a statically linked interpreter is the executable itself).
fn interpreter_candidates(maps: &str) -> Vec<(&str, u64)> {
    let mut out: Vec<(&str, u64)> = Vec::new();
    for line in maps.lines() {
        let mut f = line.splitn(6, char::is_whitespace);
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(_ino), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = path.trim_start();
        if !path.starts_with('/') || path.ends_with(" (deleted)") || u64::from_str_radix(offset, 16) != Ok(0) {
            continue;
        }
        let Some(start) = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok()) else { continue };
        let name = path.rsplit('/').next().unwrap_or("");
        let python = name.starts_with("libpython3.") || name.starts_with("python3");
        if python && !out.iter().any(|(p, _)| *p == path) {
            out.push((path, start));
        }
    }
    out.sort_by_key(|(p, _)| !p.rsplit('/').next().unwrap_or("").starts_with("libpython"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_libpython_then_the_python_executable_at_offset_zero() {
        let maps = "\
55d000000000-55d000001000 r--p 00000000 08:01 11   /usr/bin/python3.11
55d000001000-55d000002000 r-xp 00001000 08:01 11   /usr/bin/python3.11
7f0000000000-7f0000001000 r--p 00000000 08:01 12   /opt/py/lib/libpython3.12.so.1.0
7f0000002000-7f0000003000 r--p 00000000 08:01 13   /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000004000-7f0000005000 r--p 00000000 08:01 14   /tmp/libpython3.11.so (deleted)
";
        let c = interpreter_candidates(maps);
        assert_eq!(
            c,
            vec![("/opt/py/lib/libpython3.12.so.1.0", 0x7f0000000000), ("/usr/bin/python3.11", 0x55d000000000)]
        );
    }
}
