//! `PID_FILTER`, `CGROUP_FILTER`, `PORT_FILTER`: the include/exclude lists the agent fills
//! before attaching (values `FILTER_INCLUDE` / `FILTER_EXCLUDE`; 0 = not listed).

use aya_ebpf::{macros::map, maps::HashMap};

#[map]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[inline(always)]
pub(crate) fn pid_filter(tgid: u32) -> u8 {
    // SAFETY: the value is copied at once; hash map values stay readable for the whole
    // program run (RCU) even if the agent deletes the entry meanwhile.
    unsafe { PID_FILTER.get(tgid) }.copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn cgroup_filter(cgroup_id: u64) -> u8 {
    // SAFETY: as in `pid_filter`.
    unsafe { CGROUP_FILTER.get(cgroup_id) }.copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn port_filter(port: u16) -> u8 {
    // SAFETY: as in `pid_filter`.
    unsafe { PORT_FILTER.get(port) }.copied().unwrap_or(0)
}

/// Processes whose stdout/stderr writes are captured (`--app-logs`), filled by the agent
/// from its `logs.app` selection; only looked at when that feature is on, and only for
/// writes to descriptors that are not captured sockets.
#[map]
static APP_LOG_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub(crate) fn app_log_selected(tgid: u32) -> bool {
    // SAFETY: as in `pid_filter`.
    unsafe { APP_LOG_TGIDS.get(tgid) }.is_some()
}
