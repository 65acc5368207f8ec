//! The current `contextvars.Context` of the threads of selected Python processes.
//!
//! Every asyncio Task runs its steps inside the Context it copied when it was created, and
//! thread-pool workers run inside a copy made by the request's task: the Context a thread
//! is in when it writes on a client socket says which inbound request the call serves.
//! The agent maps Contexts to requests in userspace; the kernel only reports:
//! - each Context `PyContext_CopyCurrent` returns, with the thread's current Context then
//!   (the parent) — a return probe (`py_copy_ret`), attached only to selected processes;
//! - the thread's current Context at each write on a connection (`note_write`), for
//!   processes in `PY_PROCS` only.
//!
//! The current Context is `tstate->context`. Sockets release the GIL, so the thread's
//! `PyThreadState` is not the interpreter's "current" one during a write: it is found by
//! walking the interpreter's thread list for the entry whose `native_thread_id` is this
//! thread (bounded, once per thread, then remembered and re-checked on every use).

use aya_ebpf::{macros::uretprobe, programs::RetProbeContext};
use hoptrace_common::*;

use crate::{
    helpers::{ktime_ns, pid_tgid, uread},
    maps::{
        python::{py_proc, remember_tstate, tstate_of},
        ring::send_control,
    },
};

/// Threads walked at most per lookup: a service with more Python threads than this gets
/// no Context for the ones beyond (their calls stay unresolved).
const MAX_THREADS_WALKED: u32 = 64;

/// The `PyThreadState *` of the current thread, or 0.
#[inline(always)]
fn thread_state(p: &PyProc, id: u64) -> u64 {
    let tid = id as u32 as u64;
    if let Some(t) = tstate_of(id) {
        if uread::<u64>(t + p.off_native_thread_id as u64) == Some(tid) {
            return t;
        }
    }
    let Some(interp) = uread::<u64>(p.interp_head_addr) else { return 0 };
    if interp == 0 {
        return 0;
    }
    let Some(mut t) = uread::<u64>(interp + p.off_threads_head as u64) else { return 0 };
    for _ in 0..MAX_THREADS_WALKED {
        if t == 0 {
            return 0;
        }
        if uread::<u64>(t + p.off_native_thread_id as u64) == Some(tid) {
            remember_tstate(id, t);
            return t;
        }
        t = match uread::<u64>(t + p.off_next as u64) {
            Some(n) => n,
            None => return 0,
        };
    }
    0
}

/// The current thread's current Context (0: none or unreadable).
#[inline(always)]
fn current_context(p: &PyProc, id: u64) -> u64 {
    let t = thread_state(p, id);
    if t == 0 {
        return 0;
    }
    uread::<u64>(t + p.off_context as u64).unwrap_or(0)
}

#[inline(always)]
fn send(what: u8, id: u64, ts_ns: u64, conn_id: u64, context: u64, parent: u64) {
    let ev = PyContextEvent {
        kind: EventKind::PyContext as u8,
        what,
        _pad0: [0; 2],
        pid: (id >> 32) as u32,
        tid: id as u32,
        _pad1: 0,
        ts_ns,
        conn_id,
        context,
        parent,
    };
    send_control(&ev);
}

/// A write on connection `conn_id` that entered at `ts_enter`: for a selected Python
/// process, report the Context the thread is in (before the data record goes out).
#[inline(always)]
pub(crate) fn note_write(conn_id: u64, ts_enter: u64) {
    let id = pid_tgid();
    let Some(p) = py_proc((id >> 32) as u32) else { return };
    let context = current_context(&p, id);
    if context != 0 {
        send(PY_CONTEXT_WRITE, id, ts_enter, conn_id, context, 0);
    }
}

/// Return of `PyContext_CopyCurrent()`: the new Context, and the one the thread is in
/// (its parent; the function does not change it).
#[uretprobe]
pub fn py_copy_ret(ctx: RetProbeContext) -> u32 {
    let id = pid_tgid();
    let Some(p) = py_proc((id >> 32) as u32) else { return 0 };
    let new = ctx.ret::<u64>();
    if new == 0 {
        return 0;
    }
    let parent = current_context(&p, id);
    send(PY_CONTEXT_COPIED, id, ktime_ns(), 0, new, parent);
    0
}
