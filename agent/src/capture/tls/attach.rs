//! Attaching the OpenSSL uprobes: which programs, which functions, which library files.
//!
//! Uprobes belong to a *file* (inode + offset), not to a process, so each distinct
//! library file (device + inode) is attached once by [`super::TlsWatcher`] and then covers
//! every process that maps it, including ones started later.

use std::{os::unix::fs::MetadataExt, path::Path};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::ProgramArray,
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};

/// Library file names probed. Both export the same four functions with the same ABI.
pub const SSL_LIBRARIES: [&str; 2] = ["libssl.so.3", "libssl.so.1.1"];

/// Where distributions put libssl on the host; attached at start even if unused yet, so a
/// short-lived client started later (curl) is covered from its first byte.
pub(super) const HOST_LIB_DIRS: [&str; 7] = [
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

pub(super) type FileKey = (u64, u64);

pub(super) fn file_key(path: &Path) -> Option<FileKey> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Paths (as the process sees them) of probed libraries in a `/proc/PID/maps` text.
pub(super) fn mapped_ssl_libraries(maps: &str) -> impl Iterator<Item = &str> {
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
pub(super) fn attach_library(ebpf: &mut Ebpf, path: &Path) -> Result<Vec<&'static str>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
