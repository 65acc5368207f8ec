//! The per-thread in-flight syscall slots: the enter program stores a call's arguments,
//! the exit program of the same thread takes them back (maps in `maps::inflight`).

use hoptrace_common::DropReason;

use crate::{
    log::kwarn,
    maps::{
        drops::count_drop,
        inflight::{Inflight, INFLIGHT, INFLIGHT_SLOTS, INFLIGHT_SPILL},
    },
};

/// Stores the arguments of the current thread's syscall for its exit program.
///
/// The bpf target has no compare-and-swap, so two threads of one slot entering on two
/// CPUs at the same instant can interleave their writes; `call.tid` travels with the
/// arguments and `take` only accepts a slot whose owner and arguments are both its own
/// (and counts the torn case), so a race loses a call but never mixes two.
#[inline(always)]
pub(crate) fn put(tid: u32, mut call: Inflight) {
    call.tid = tid;
    let Some(slot) = INFLIGHT.get_ptr_mut(tid & (INFLIGHT_SLOTS - 1)) else { return };
    // SAFETY: `slot` points into the array map's value memory, valid and aligned while the
    // map is; other CPUs may write it too, which the tid checks above and in `take` handle.
    unsafe {
        let owner = core::ptr::read_volatile(&(*slot).owner);
        if owner == 0 || owner == tid {
            (*slot).call = call;
            core::ptr::write_volatile(&mut (*slot).owner, tid);
            return;
        }
        if INFLIGHT_SPILL.insert(tid, call, 0).is_err() {
            count_drop(DropReason::ArgsMapFull, 1);
            kwarn!("in-flight spill table full: syscall {} of tid {} on fd {} lost", call.syscall, tid, call.fd);
            return;
        }
        core::ptr::write_volatile(&mut (*slot).spilled, 1);
    }
}

/// Takes the arguments `put` stored for the current thread, if any.
#[inline(always)]
pub(crate) fn take(tid: u32) -> Option<Inflight> {
    let slot = INFLIGHT.get_ptr_mut(tid & (INFLIGHT_SLOTS - 1))?;
    // SAFETY: as in `put`; the spill map value is copied at once, and hash map values stay
    // readable for the whole program run (RCU).
    unsafe {
        let owner = core::ptr::read_volatile(&(*slot).owner);
        if owner == tid {
            let call = (*slot).call;
            core::ptr::write_volatile(&mut (*slot).owner, 0);
            if call.tid == tid {
                return Some(call);
            }
            // Torn by a same-slot thread entering at the same instant: lost, counted.
            count_drop(DropReason::ArgsMapFull, 1);
            kwarn!("in-flight slot torn by thread {} of the same slot: call of tid {} lost", call.tid, tid);
            return None;
        }
        if core::ptr::read_volatile(&(*slot).spilled) == 0 {
            return None;
        }
        let call = *INFLIGHT_SPILL.get(tid)?;
        let _ = INFLIGHT_SPILL.remove(tid);
        Some(call)
    }
}

/// True when a thread of `tid`'s slot may be inside an SSL call (then `SSL_CALLS` says
/// whether it is this one); false means certainly not, without a hash lookup.
#[inline(always)]
pub(crate) fn ssl_maybe_active(tid: u32) -> bool {
    let Some(slot) = INFLIGHT.get_ptr(tid & (INFLIGHT_SLOTS - 1)) else { return true };
    // SAFETY: as in `put`.
    unsafe { core::ptr::read_volatile(&(*slot).ssl_active) != 0 }
}

/// Adds `delta` (wrapping) to the count of SSL calls in progress in `tid`'s slot.
///
/// Not atomic: the bpf target offers no atomic read-modify-write to Rust here. Two
/// threads of one slot (thread ids equal modulo `INFLIGHT_SLOTS`) updating at the same
/// instant on two CPUs can lose one update; too high only costs a lookup per syscall, too
/// low can let one SSL call's syscalls go unmarked (their socket is then found through
/// `SSL_FDS` or counted as `tls_socket_unknown`).
#[inline(always)]
fn ssl_count(tid: u32, delta: u64) {
    let Some(slot) = INFLIGHT.get_ptr_mut(tid & (INFLIGHT_SLOTS - 1)) else { return };
    // SAFETY: as in `put`.
    unsafe {
        let n = core::ptr::read_volatile(&(*slot).ssl_active);
        core::ptr::write_volatile(&mut (*slot).ssl_active, n.wrapping_add(delta));
    }
}

/// An SSL call of thread `tid` was stored in `SSL_CALLS` (entry probe).
#[inline(always)]
pub(crate) fn ssl_begin(tid: u32) {
    ssl_count(tid, 1);
}

/// An SSL call of thread `tid` was taken back from `SSL_CALLS` (return probe).
///
/// Only a taken call counts down, so (races aside) the count is never lower than the calls in
/// `SSL_CALLS` of the slot's threads; it can stay higher (a nested call replaced an
/// entry, a thread died inside SSL_read, the LRU evicted one), which only costs those
/// threads' syscalls the `SSL_CALLS` lookup they always paid before.
#[inline(always)]
pub(crate) fn ssl_end(tid: u32) {
    ssl_count(tid, u64::MAX);
}
