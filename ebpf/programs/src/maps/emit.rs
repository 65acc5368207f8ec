//! `SCRATCH`, `JOB`, `EMITTERS`: how a call's bytes get from the exit program to the
//! chunk emitters it tail-calls.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
};
use hoptrace_common::DataEvent;

/// Per-CPU scratch space where a data record is assembled before it is copied out.
#[map]
pub(crate) static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// What the emitter programs copy: written by `exit_data` (or `ssl_ret`) into per-CPU
/// memory right before the tail call (same CPU, no preemption in between).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EmitJob {
    pub buf: u64,
    /// Buffer length, or iovec count for vectored calls.
    pub count: u64,
    pub captured: u32,
    /// Vectored calls: next iovec to copy, and bytes copied so far.
    pub iov_index: u32,
    pub done: u32,
    pub _pad: u32,
}

#[map]
pub(crate) static JOB: PerCpuArray<EmitJob> = PerCpuArray::with_max_entries(1, 0);

/// Emitter programs, reached by tail call so each is verified on its own, small. The agent
/// fills it in this order: `emit_contiguous`, `emit_vectored`.
#[map]
pub(crate) static EMITTERS: ProgramArray = ProgramArray::with_max_entries(2, 0);
pub(crate) const EMIT_CONTIGUOUS: u32 = 0;
pub(crate) const EMIT_VECTORED: u32 = 1;
