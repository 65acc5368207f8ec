//! `FDS` and `GENS`: which descriptors of which process are captured sockets.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};

/// (tgid << 32 | fd) → what that descriptor is. `sk == 0` means "not captured".
#[map]
static FDS: LruHashMap<u64, FdEntry> = LruHashMap::with_max_entries(131072, 0);

/// Descriptor-table generations, one slot per `tgid % GEN_SLOTS`. Bumped (to the current
/// time) on exec, exit and close_range, which close descriptors without a close() we could
/// see; `FDS` entries of an older generation are stale.
///
/// An array rather than a hash keyed by tgid: the verifier inlines an array lookup into a
/// few instructions, and every data syscall reads this. Processes sharing a slot share
/// its generation, so a bump by one makes the others re-resolve their descriptors once:
/// more work, never a wrong answer (generations only grow).
#[map]
static GENS: Array<u64> = Array::with_max_entries(GEN_SLOTS, 0);
const GEN_SLOTS: u32 = 1 << 15;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FdEntry {
    pub sk: u64,
    pub gen: u64,
}

/// The `FDS` key of descriptor `fd` of process `tgid`.
#[inline(always)]
pub(crate) fn fd_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | fd as u32 as u64
}

/// What is known about the descriptor under `key`.
#[inline(always)]
pub(crate) fn fd_entry(key: u64) -> Option<FdEntry> {
    // SAFETY: the value is copied at once; hash map values stay readable for the whole
    // program run (RCU) even if another CPU deletes the entry meanwhile.
    unsafe { FDS.get(key) }.copied()
}

/// Records what the descriptor under `key` is (best effort: a full LRU evicts the oldest).
#[inline(always)]
pub(crate) fn set_fd_entry(key: u64, entry: FdEntry) {
    let _ = FDS.insert(key, entry, 0);
}

#[inline(always)]
pub(crate) fn forget_fd(key: u64) {
    let _ = FDS.remove(key);
}

/// The descriptor-table generation of process `tgid` (0 until its slot's first bump).
#[inline(always)]
pub(crate) fn current_gen(tgid: u32) -> u64 {
    match GENS.get_ptr(tgid & (GEN_SLOTS - 1)) {
        // SAFETY: array map values live as long as the map; a racing bump is either seen
        // or not, both answers are valid generations.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Starts a new descriptor-table generation for `tgid` (`gen` must grow: a timestamp).
#[inline(always)]
pub(crate) fn bump_gen(tgid: u32, gen: u64) {
    if let Some(p) = GENS.get_ptr_mut(tgid & (GEN_SLOTS - 1)) {
        // SAFETY: as in `current_gen`; a concurrent bump of the same slot writes a
        // timestamp just as new, either is a valid newer generation.
        unsafe { core::ptr::write_volatile(p, gen) };
    }
}
