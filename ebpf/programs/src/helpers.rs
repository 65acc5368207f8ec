//! Safe wrappers around the raw BPF helpers, so the program code itself needs almost no
//! `unsafe`: each wrapper states once why its helper call is sound.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
    maps::ProgramArray,
    programs::TracePointContext,
    EbpfContext,
};

/// Types that may be filled from arbitrary bytes (kernel or user memory, tracepoint
/// records): plain integers and arrays of them, for which every bit pattern is a value.
///
/// # Safety
/// Implement only for types without padding, pointers, references or invalid bit patterns.
pub(crate) unsafe trait Plain: Copy {}
// SAFETY: every bit pattern is a valid u16.
unsafe impl Plain for u16 {}
// SAFETY: every bit pattern is a valid u32.
unsafe impl Plain for u32 {}
// SAFETY: every bit pattern is a valid i32.
unsafe impl Plain for i32 {}
// SAFETY: every bit pattern is a valid u64.
unsafe impl Plain for u64 {}
// SAFETY: an array of bytes has no padding and every bit pattern is valid.
unsafe impl<const N: usize> Plain for [u8; N] {}
// SAFETY: an array of u64 has no padding and every bit pattern is valid.
unsafe impl<const N: usize> Plain for [u64; N] {}

/// `tgid << 32 | tid` of the current thread.
#[inline(always)]
pub(crate) fn pid_tgid() -> u64 {
    bpf_get_current_pid_tgid()
}

/// Monotonic clock, nanoseconds since boot.
#[inline(always)]
pub(crate) fn ktime_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_ns() }
}

/// cgroup v2 id of the current task (the inode number of its cgroup directory).
#[inline(always)]
pub(crate) fn current_cgroup_id() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the current task.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Address of the current `struct task_struct`, only ever dereferenced through [`kread`].
#[inline(always)]
pub(crate) fn current_task() -> u64 {
    // SAFETY: the helper takes no arguments; the address it returns is not dereferenced here.
    unsafe { bpf_get_current_task() }
}

/// The CPU this program runs on.
#[inline(always)]
pub(crate) fn cpu_id() -> u32 {
    // SAFETY: the helper takes no arguments.
    unsafe { bpf_get_smp_processor_id() }
}

/// The current task's command name (zeroes when the helper fails).
#[inline(always)]
pub(crate) fn current_comm() -> [u8; 16] {
    bpf_get_current_comm().unwrap_or([0u8; 16])
}

/// Reads a `T` at kernel address `addr`; None when the memory cannot be read.
#[inline(always)]
pub(crate) fn kread<T: Plain>(addr: u64) -> Option<T> {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: the destination is a local of exactly `size_of::<T>()` bytes; the helper
    // checks the source address itself and fails instead of faulting.
    let r = unsafe {
        bpf_probe_read_kernel(v.as_mut_ptr() as *mut c_void, size_of::<T>() as u32, addr as *const c_void)
    };
    if r == 0 {
        // SAFETY: the helper filled all of `v`, and every bit pattern is a `T` (`Plain`).
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

/// Reads a `T` at user address `addr` of the current process; None when it cannot be read.
#[inline(always)]
pub(crate) fn uread<T: Plain>(addr: u64) -> Option<T> {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: as in `kread`, for user memory.
    let r = unsafe {
        bpf_probe_read_user(v.as_mut_ptr() as *mut c_void, size_of::<T>() as u32, addr as *const c_void)
    };
    if r == 0 {
        // SAFETY: the helper filled all of `v`, and every bit pattern is a `T` (`Plain`).
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

/// Copies `dst.len()` bytes from user address `src` into `dst`; false when they cannot be
/// read (then `dst` holds zeroes or partial data).
#[inline(always)]
pub(crate) fn uread_into(dst: &mut [u8], src: u64) -> bool {
    // SAFETY: `dst` is writable for `dst.len()` bytes; the helper checks the source itself.
    unsafe { bpf_probe_read_user(dst.as_mut_ptr() as *mut c_void, dst.len() as u32, src as *const c_void) == 0 }
}

/// Offset of the first syscall argument / the return value in syscall tracepoint records
/// (checked against the tracepoint format files by the agent before load).
const ARG0: usize = 16;

/// Argument `n` of a `sys_enter_*` record, or the return value (`n == 0`) of a
/// `sys_exit_*` record.
#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold six 8-byte arguments from offset 16 (the
    // agent checks every attached tracepoint's format before load); `n` is at most 3 here.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(ARG0 + 8 * n) as *const u64) }
}

/// A field at a run-time `offset` in a tracepoint record (the verifier only allows
/// constant offsets for direct loads, so this goes through the probe-read helper).
#[inline(always)]
pub(crate) fn tp_field<T: Plain>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: `read_at` copies through bpf_probe_read_kernel, which checks the address; any
    // bytes are a valid `T` (`Plain`).
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

/// Tail-calls program `index` of `table`; returns only when that failed (empty slot,
/// index out of range, tail-call limit).
#[inline(always)]
pub(crate) fn tail_call<C: EbpfContext>(table: &ProgramArray, ctx: &C, index: u32) {
    // SAFETY: on success the kernel runs the target on the same ctx and never returns here;
    // every caller holds only plain values, so nothing is left half-done or undropped.
    unsafe { table.tail_call(ctx, index) }
}
