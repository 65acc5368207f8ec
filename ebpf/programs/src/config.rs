//! Load-time settings the agent writes into the programs' read-only data before load.
//! The kernel freezes that data, so the verifier reads these values as constants and
//! prunes the branches they disable: a switched-off feature costs nothing at run time.

use hoptrace_common::Config;

/// Offsets, capture cap, filter switches (see `hoptrace_common::Config`).
// SAFETY: `Config` is made of integers only; all-zero bytes are a valid value (the agent
// overwrites them before load).
#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Kernel diagnostics (aya-log records, see `log`): on when non-zero. Off unless the agent
/// sets it at load time; a global of its own rather than a `Config` field, so the layout
/// shared with the agent is unchanged.
#[no_mangle]
static KERNEL_LOG: u8 = 0;

#[inline(always)]
pub(crate) fn config() -> &'static Config {
    // Volatile so the compiler does not fold the all-zero initializer; the verifier sees
    // the values the agent wrote into .rodata as constants anyway.
    // SAFETY: reads a reference to a static, which is valid and aligned for the whole run.
    unsafe { core::ptr::read_volatile(&&CONFIG) }
}

/// True when the agent asked for kernel diagnostics; checked before every log call.
#[inline(always)]
pub(crate) fn kernel_log() -> bool {
    // SAFETY: reads a static u8, valid and aligned; volatile for the same reason as `config`.
    unsafe { core::ptr::read_volatile(&KERNEL_LOG) != 0 }
}

/// App log capture (`hoptrace run --app-logs`): on when non-zero. Frozen at load like
/// `CONFIG`, so with the feature off the verifier prunes the whole path and no syscall
/// pays for it; a global of its own so the shared `Config` layout is unchanged.
#[no_mangle]
static APP_LOGS: u8 = 0;

#[inline(always)]
pub(crate) fn app_logs_on() -> bool {
    // SAFETY: as in `kernel_log`.
    unsafe { core::ptr::read_volatile(&APP_LOGS) != 0 }
}
