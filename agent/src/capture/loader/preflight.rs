//! Checks that run before anything is loaded, so a missing prerequisite gives one clear
//! line instead of an errno from deep inside the bpf() syscall.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Oldest kernel the programs are written for: BPF ring buffer (5.8) and BTF in sysfs.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "hoptrace needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE and CAP_DAC_READ_SEARCH) \
         to load eBPF programs; run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "kernel {release} is too old: hoptrace needs Linux {}.{} or newer (BPF ring buffer, BTF)",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld { release: String },
    #[error(
        "this kernel has no BTF ({BTF_PATH} is missing): hoptrace needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("tracefs is not mounted{reason}; mount it with: mount -t tracefs tracefs /sys/kernel/tracing")]
    TracefsMissing { reason: String },
}

/// Capability numbers from linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Root, or the capabilities that replace it for BPF since 5.8.
pub fn check_privileges() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

/// Parses "6.1.0-13-amd64" into (6, 1).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn check_kernel_release(release: &str) -> Result<(), PreflightError> {
    match parse_release(release) {
        Some(v) if v >= MIN_KERNEL => Ok(()),
        _ => Err(PreflightError::KernelTooOld { release: release.to_string() }),
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn check_btf() -> Result<(), PreflightError> {
    if Path::new(BTF_PATH).exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}

/// Where tracefs is mounted, from /proc/self/mounts (a bare directory is not enough: the
/// mount point exists even when nothing is mounted on it).
pub fn find_tracefs() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut debugfs = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
        match fstype {
            "tracefs" => return Some(PathBuf::from(target)),
            "debugfs" => debugfs = Some(PathBuf::from(target).join("tracing")),
            _ => {}
        }
    }
    debugfs.filter(|p| p.join("events").is_dir())
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when allowed and absent.
pub fn ensure_tracefs(allow_mount: bool) -> Result<PathBuf, PreflightError> {
    if let Some(p) = find_tracefs() {
        return Ok(p);
    }
    if !allow_mount {
        return Err(PreflightError::TracefsMissing { reason: " (and --no-mount-tracefs forbids mounting it)".into() });
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all three strings are NUL-terminated C literals; a null data pointer is allowed.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(PreflightError::TracefsMissing { reason: format!(" and mounting it failed ({err})") });
    }
    find_tracefs().ok_or_else(|| PreflightError::TracefsMissing {
        reason: " (mounted, but it does not show up in /proc/self/mounts)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_parsing_and_minimum() {
        assert_eq!(parse_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(check_kernel_release("5.8.0").is_ok());
        assert!(check_kernel_release("6.1.0-13-amd64").is_ok());
        let err = check_kernel_release("5.4.0-150-generic").unwrap_err().to_string();
        assert!(err.contains("too old") && err.contains("5.8"), "{err}");
        assert!(check_kernel_release("garbage").is_err());
    }
}
