//! `DROPS`: kernel-side loss and truncation counters, read by the agent for its metrics.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use hoptrace_common::{DropReason, DROP_REASONS};

/// Indexed by `DropReason`; per CPU so counting needs no atomics.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS as u32, 0);

#[inline(always)]
pub(crate) fn count_drop(reason: DropReason, n: u64) {
    if let Some(p) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: `p` points at this CPU's counter, valid and aligned while the program
        // runs; at worst another program on this CPU makes the increment lose a count.
        unsafe { *p += n };
    }
}
