//! Tuning of the binary's allocator (mimalloc, set as `#[global_allocator]` in main.rs).
//!
//! Why mimalloc: every span is built on the event thread and freed on the exporter's,
//! and glibc malloc served that with arena locks and slow cross-thread frees — a third of
//! the agent's CPU under load (perf, `cargo xtask bench`: 23.6 → 12.5 µs per request).
//!
//! Why tuning: left at its defaults it kept start-up's memory (the kernel BTF is parsed
//! into tens of MiB, then freed) and committed arenas eagerly, so RSS was ~1.6× glibc's.
//! Start-up therefore purges freed memory at once; once the agent is ready, `after_startup`
//! hands everything back and lets purging lag a little, which is what keeps the hot path
//! cheap. In unit tests and the fuzz targets mimalloc is linked but not the allocator:
//! these calls then only touch its own (empty) heap.

use libmimalloc_sys::{mi_collect, mi_option_set};

// Option ids of the mimalloc v3 vendored by libmimalloc-sys 0.1.49 (pinned by
// Cargo.lock): `c_src/mimalloc/v3/include/mimalloc.h`, `enum mi_option_e`. The crate
// only names the options its v2 and v3 share.
const ARENA_EAGER_COMMIT: i32 = 4;
const PURGE_DELAY: i32 = 15;

/// Before anything big is allocated: commit memory on demand, purge freed memory at once.
pub fn before_startup() {
    // SAFETY: mi_option_set only stores the value; any value is valid for these options.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

/// The agent is loaded and ready: return what start-up freed, then purge with a delay
/// (milliseconds) so the steady state does not pay for a purge on every free.
pub fn after_startup() {
    // SAFETY: no preconditions.
    unsafe {
        mi_collect(true);
        mi_option_set(PURGE_DELAY, 100);
        libc::malloc_trim(0);
    }
}
