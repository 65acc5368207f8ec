//! `PY_PROCS`, `PY_TSTATES`: where selected Python processes keep their threads' current
//! `contextvars.Context` (see `crate::python`).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use hoptrace_common::PyProc;

/// tgid → the process's interpreter address and CPython field offsets, written by the
/// agent for each Python process it selected (and removed when it exits).
#[map]
static PY_PROCS: HashMap<u32, PyProc> = HashMap::with_max_entries(4096, 0);

/// `tgid << 32 | tid` → that thread's `PyThreadState *`, found once by walking the
/// interpreter's thread list. LRU: threads end without telling; an entry is checked
/// (its `native_thread_id`) before every use.
#[map]
static PY_TSTATES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// The Python layout of process `tgid`, when the agent selected it.
#[inline(always)]
pub(crate) fn py_proc(tgid: u32) -> Option<PyProc> {
    // SAFETY: the value is copied at once; hash map values stay readable for the whole
    // program run (RCU) even if the agent deletes the entry meanwhile.
    unsafe { PY_PROCS.get(tgid) }.copied()
}

/// The remembered thread state of thread `pid_tgid`, if any (not yet checked).
#[inline(always)]
pub(crate) fn tstate_of(pid_tgid: u64) -> Option<u64> {
    // SAFETY: as in `py_proc`.
    unsafe { PY_TSTATES.get(pid_tgid) }.copied()
}

#[inline(always)]
pub(crate) fn remember_tstate(pid_tgid: u64, tstate: u64) {
    // Full or racing: found again by the next walk.
    let _ = PY_TSTATES.insert(pid_tgid, tstate, 0);
}
