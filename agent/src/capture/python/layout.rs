//! Where a CPython process keeps its threads' current Context: the symbols of its
//! interpreter file, its version, and the field offsets of that minor version.
//!
//! Offsets come from a per-minor-version table (3.11, 3.12: taken with `offsetof` from
//! each version's own headers), or from the interpreter's `_Py_DebugOffsets` (3.13) where
//! it names the field. Every layout is then checked against the live process before it is
//! used ([`find_thread`] must find the main thread): a wrong table is an error in the log,
//! never a silent guess.

use std::{fs::File, os::unix::fs::FileExt, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// The function whose return probe reports every new Context.
pub const COPY_SYMBOL: &str = "PyContext_CopyCurrent";

/// Exported symbols of an interpreter file (executable or libpython), as file addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbols {
    /// File offset of `PyContext_CopyCurrent` (where the probe goes: attaching by offset
    /// spares parsing the file again for every process).
    pub copy_current: u64,
    pub runtime: u64,
    pub version: u64,
    /// Lowest address of a loadable segment (page-aligned): where the first mapping of the
    /// file (file offset 0) starts, before relocation.
    pub base_vaddr: u64,
}

/// The symbols of `path`, or None when the file does not export them all (not CPython,
/// or a CPython older than 3.11 without `Py_Version`).
pub fn symbols(path: &Path) -> Result<Option<Symbols>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let (mut copy_current, mut runtime, mut version) = (None, None, None);
    for sym in file.dynamic_symbols() {
        match sym.name() {
            Ok(COPY_SYMBOL) => {
                copy_current = sym.section_index().and_then(|i| file.section_by_index(i).ok()).and_then(|s| {
                    let (offset, _) = s.file_range()?;
                    sym.address().checked_sub(s.address())?.checked_add(offset)
                })
            }
            Ok("_PyRuntime") => runtime = Some(sym.address()),
            Ok("Py_Version") => version = Some(sym.address()),
            _ => {}
        }
    }
    let base_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    Ok(match (copy_current, runtime, version) {
        (Some(c), Some(r), Some(v)) if c != 0 && r != 0 && v != 0 => {
            Some(Symbols { copy_current: c, runtime: r, version: v, base_vaddr })
        }
        _ => None,
    })
}

/// Field offsets of one CPython layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `_PyRuntimeState.interpreters.head`.
    pub interpreters_head: u64,
    pub threads_head: u32,
    pub next: u32,
    pub native_thread_id: u32,
    pub context: u32,
}

/// The table (3.11, 3.12) and the `PyThreadState.context` offset of 3.13, which its
/// debug offsets do not name. Measured with `offsetof` on 3.11.7, 3.12.1 and 3.13.0
/// headers (built with `Py_BUILD_CORE`); the layout is part of each minor version's ABI.
fn table(minor: u32) -> Option<Offsets> {
    match minor {
        11 => Some(Offsets { interpreters_head: 40, threads_head: 16, next: 8, native_thread_id: 160, context: 224 }),
        12 => Some(Offsets { interpreters_head: 40, threads_head: 72, next: 8, native_thread_id: 144, context: 208 }),
        13 => {
            Some(Offsets { interpreters_head: 632, threads_head: 7344, next: 8, native_thread_id: 160, context: 208 })
        }
        _ => None,
    }
}

/// Reads process memory (`/proc/PID/mem`).
pub struct Mem(File);

impl Mem {
    pub fn open(pid: u32) -> Result<Self> {
        Ok(Self(File::open(format!("/proc/{pid}/mem")).with_context(|| format!("opening /proc/{pid}/mem"))?))
    }

    pub fn u64_at(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.0.read_exact_at(&mut b, addr).with_context(|| format!("reading process memory at {addr:#x}"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn bytes_at(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        self.0.read_exact_at(out, addr).with_context(|| format!("reading process memory at {addr:#x}"))
    }
}

/// `(major, minor)` from a `Py_Version` value (`PY_VERSION_HEX`).
pub fn version_of(hex: u64) -> (u32, u32) {
    (((hex >> 24) & 0xff) as u32, ((hex >> 16) & 0xff) as u32)
}

/// The layout of a CPython 3.`minor` process whose `_PyRuntime` is at `runtime`.
pub fn offsets(mem: &Mem, minor: u32, runtime: u64) -> Result<Offsets> {
    let mut o = table(minor).ok_or_else(|| anyhow!("CPython 3.{minor} is not supported (3.11, 3.12, 3.13 are)"))?;
    if minor >= 13 {
        o = from_debug_offsets(mem, runtime, o)?;
    }
    Ok(o)
}

/// 3.13: the offsets `_Py_DebugOffsets` (at the start of `_PyRuntime`) names win over the
/// table; a free-threaded build is refused (another layout).
fn from_debug_offsets(mem: &Mem, runtime: u64, table: Offsets) -> Result<Offsets> {
    let mut raw = [0u8; 26 * 8];
    mem.bytes_at(runtime, &mut raw)?;
    let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    if &raw[..8] != b"xdebugpy" {
        bail!("_PyRuntime does not start with the debug offsets cookie");
    }
    if word(2) != 0 {
        bail!("free-threaded CPython builds are not supported");
    }
    let small = |v: u64| u32::try_from(v).map_err(|_| anyhow!("debug offset {v} out of range"));
    Ok(Offsets {
        interpreters_head: word(5),
        threads_head: small(word(9))?,
        next: small(word(21))?,
        native_thread_id: small(word(25))?,
        context: table.context,
    })
}

/// Walks the main interpreter's thread list for the thread state of OS thread `tid`.
/// Fails when the interpreter is not initialized yet or the layout is wrong.
pub fn find_thread(mem: &Mem, runtime: u64, o: &Offsets, tid: u32) -> Result<u64> {
    let interp = mem.u64_at(runtime + o.interpreters_head)?;
    if interp == 0 {
        bail!("no interpreter yet");
    }
    let mut t = mem.u64_at(interp + o.threads_head as u64)?;
    for _ in 0..256 {
        if t == 0 {
            break;
        }
        if mem.u64_at(t + o.native_thread_id as u64)? == tid as u64 {
            return Ok(t);
        }
        t = mem.u64_at(t + o.next as u64)?;
    }
    bail!("thread {tid} not in the interpreter's thread list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_py_version_hex() {
        assert_eq!(version_of(0x030b02f0), (3, 11));
        assert_eq!(version_of(0x030c01f0), (3, 12));
        assert_eq!(version_of(0x030d00f0), (3, 13));
    }

    #[test]
    fn unsupported_minor_versions_have_no_table() {
        assert!(table(10).is_none());
        assert!(table(14).is_none());
        assert_eq!(table(11).map(|o| o.context), Some(0xe0));
        assert_eq!(table(12).map(|o| o.context), Some(0xd0));
    }
}
