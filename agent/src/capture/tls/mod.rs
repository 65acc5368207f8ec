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

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::ProgramArray,
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};
use object::{Object, ObjectSymbol};
use serde_json::json;

use crate::util::logging::log;

/// Library file names probed. Both export the same four functions with the same ABI.
pub const SSL_LIBRARIES: [&str; 2] = ["libssl.so.3", "libssl.so.1.1"];

/// Where distributions put libssl on the host; attached at start even if unused yet, so a
/// short-lived client started later (curl) is covered from its first byte.
const HOST_LIB_DIRS: [&str; 7] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
];

/// Uprobe programs that are attached to functions, with whether the library is useless
/// without them. `ssl_ret` is the shared return probe.
const PROBES: [(&str, &str, bool); 11] = [
    ("ssl_write_enter", "SSL_write", true),
    ("ssl_ret", "SSL_write", true),
    ("ssl_read_enter", "SSL_read", true),
    ("ssl_ret", "SSL_read", true),
    ("ssl_write_ex_enter", "SSL_write_ex", false),
    ("ssl_ret", "SSL_write_ex", false),
    ("ssl_read_ex_enter", "SSL_read_ex", false),
    ("ssl_ret", "SSL_read_ex", false),
    ("ssl_set_fd", "SSL_set_fd", false),
    ("ssl_set_fd", "SSL_set_rfd", false),
    ("ssl_set_fd", "SSL_set_wfd", false),
];

const PROGRAMS: [&str; 6] =
    ["ssl_write_enter", "ssl_write_ex_enter", "ssl_read_enter", "ssl_read_ex_enter", "ssl_set_fd", "ssl_ret"];

/// After an exec, the process's mappings are read again after these delays.
const EXEC_RESCANS: [Duration; 4] =
    [Duration::from_millis(20), Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(5)];
/// Bounds on the userspace bookkeeping.
const MAX_PENDING_RESCANS: usize = 16384;
const MAX_PROCESSES_REMEMBERED: usize = 65536;
/// Executables larger than this are not read to classify their TLS.
const MAX_EXE_BYTES: u64 = 512 * 1024 * 1024;

/// Loads the uprobe programs (attached later, per library) and fills the tail-call table.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for name in PROGRAMS.iter().chain(["ssl_emit"].iter()) {
        let program: &mut UProbe =
            ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?.try_into()?;
        program.load().map_err(|e| crate::capture::loader::verifier_error(name, e))?;
    }
    let emitter: &UProbe = ebpf.program("ssl_emit").context("ssl_emit missing")?.try_into()?;
    let fd = emitter.fd()?.try_clone()?;
    let mut table: ProgramArray<_> =
        ProgramArray::try_from(ebpf.map_mut("SSL_EMITTERS").context("SSL_EMITTERS map missing")?)?;
    table.set(0, &fd, 0)?;
    Ok(())
}

/// Why a process's TLS traffic cannot be seen; metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotVisible {
    /// Go's crypto/tls (the executable has Go build info or crypto/tls symbols).
    GoCryptoTls,
    /// OpenSSL/BoringSSL compiled into the executable (Envoy…): `SSL_write` is its own.
    StaticallyLinkedTls,
    /// Java's JSSE (libjvm is mapped).
    JavaJsse,
    /// rustls compiled into the executable.
    Rustls,
    /// GnuTLS or NSS is mapped (not probed).
    Gnutls,
    Nss,
    /// Anything else (no libssl mapped, unknown library, libssl whose probes failed).
    NoSupportedTlsLibrary,
}

impl NotVisible {
    pub const ALL: [NotVisible; 7] = [
        Self::GoCryptoTls,
        Self::StaticallyLinkedTls,
        Self::JavaJsse,
        Self::Rustls,
        Self::Gnutls,
        Self::Nss,
        Self::NoSupportedTlsLibrary,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::GoCryptoTls => "go_crypto_tls",
            Self::StaticallyLinkedTls => "statically_linked_tls",
            Self::JavaJsse => "java_jsse",
            Self::Rustls => "rustls",
            Self::Gnutls => "gnutls",
            Self::Nss => "nss",
            Self::NoSupportedTlsLibrary => "no_supported_tls_library",
        }
    }
}

/// Counters exported on /metrics and in the capture stats.
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

/// True when `b` starts with a TLS handshake record header: content type 22, record
/// version 3.0–3.4 (SSL 3.0 … TLS 1.3 use 0x0301 in records), plausible length.
pub fn looks_like_tls_handshake(b: &[u8]) -> bool {
    b.len() >= 5 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04 && u16::from_be_bytes([b[3], b[4]]) <= 16384 + 2048
}

type FileKey = (u64, u64);

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

fn file_key(path: &Path) -> Option<FileKey> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Paths (as the process sees them) of probed libraries in a `/proc/PID/maps` text.
fn mapped_ssl_libraries(maps: &str) -> impl Iterator<Item = &str> {
    maps.lines().filter_map(|line| {
        // address perms offset dev inode path — the path may contain spaces.
        let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            return None;
        }
        let name = path.rsplit('/').next()?;
        SSL_LIBRARIES.contains(&name).then_some(path)
    })
}

/// Attaches every probe to one library file. Returns the optional symbols that are
/// missing; fails when a required one cannot be attached.
fn attach_library(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for (prog, symbol, required) in PROBES {
        let program: &mut UProbe =
            ebpf.program_mut(prog).ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?.try_into()?;
        match program.attach(symbol, path, UProbeScope::AllProcesses) {
            Ok(_) => {}
            Err(e) if required => {
                return Err(anyhow!(e)).with_context(|| format!("attaching {prog} to {symbol}"));
            }
            Err(_) => {
                if !missing.contains(&symbol) {
                    missing.push(symbol);
                }
            }
        }
    }
    Ok(missing)
}

/// Decides why a process that speaks TLS has no probed library.
fn classify(pid: u32, maps: &str) -> NotVisible {
    let mapped = |needle: &str| maps.lines().any(|l| l.rsplit('/').next().is_some_and(|name| name.starts_with(needle)));
    if mapped("libjvm.so") {
        return NotVisible::JavaJsse;
    }
    if let Some(reason) = classify_executable(Path::new(&format!("/proc/{pid}/exe"))) {
        return reason;
    }
    if mapped("libgnutls.so") {
        return NotVisible::Gnutls;
    }
    if mapped("libnss3.so") || mapped("libssl3.so") {
        return NotVisible::Nss;
    }
    NotVisible::NoSupportedTlsLibrary
}

/// Looks inside the executable: Go build info, its own SSL_write, rustls symbols.
pub fn classify_executable(exe: &Path) -> Option<NotVisible> {
    let len = std::fs::metadata(exe).ok()?.len();
    if len > MAX_EXE_BYTES {
        return None;
    }
    let data = std::fs::read(exe).ok()?;
    classify_elf(&data)
}

fn classify_elf(data: &[u8]) -> Option<NotVisible> {
    let file = object::File::parse(data).ok()?;
    if file.section_by_name(".go.buildinfo").is_some() {
        return Some(NotVisible::GoCryptoTls);
    }
    let mut rustls = false;
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        let Ok(name) = sym.name() else { continue };
        if name.starts_with("crypto/tls.") {
            return Some(NotVisible::GoCryptoTls);
        }
        if (name == "SSL_write" || name == "SSL_write_ex") && !sym.is_undefined() {
            return Some(NotVisible::StaticallyLinkedTls);
        }
        rustls |= name.contains("6rustls");
    }
    rustls.then_some(NotVisible::Rustls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_records_are_recognised() {
        // A real TLS 1.3 ClientHello starts 16 03 01 <len>.
        assert!(looks_like_tls_handshake(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
        assert!(!looks_like_tls_handshake(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_tls_handshake(&[0x16, 0x03]));
        assert!(!looks_like_tls_handshake(&[0x17, 0x03, 0x03, 0x00, 0x10]));
        assert!(!looks_like_tls_handshake(&[0x16, 0x03, 0x09, 0x00, 0x10]));
    }

    #[test]
    fn maps_lines_yield_ssl_libraries_only() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 1234                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 08:01 1234                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r--p 00000000 08:01 99                         /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000005000-7f0000006000 r--p 00000000 00:2a 77                         /opt/my app/libssl.so.1.1
7f0000007000-7f0000008000 r--p 00000000 08:01 55                         /usr/lib/libssl3.so
7f0000009000-7f000000a000 rw-p 00000000 00:00 0                          [heap]
7f000000b000-7f000000c000 r--p 00000000 08:01 56                         /tmp/libssl.so.3 (deleted)
";
        let found: Vec<&str> = mapped_ssl_libraries(maps).collect();
        assert_eq!(
            found,
            vec![
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/my app/libssl.so.1.1"
            ]
        );
    }

    #[test]
    fn this_test_binary_is_classified_as_rustls() {
        // The agent links rustls (OTLP export over TLS), and so does its test binary.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(classify_executable(&exe), Some(NotVisible::Rustls));
    }

    #[test]
    fn a_dynamically_linked_c_program_is_not_classified() {
        // /bin/sh links libc only: nothing in its own symbols says TLS.
        assert_eq!(classify_executable(Path::new("/bin/sh")), None);
    }
}
