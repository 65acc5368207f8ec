//! Which processes and connections are captured: the agent itself never, then the
//! include/exclude lists (exclusions win; an include list means "only these").

use hoptrace_common::*;

use crate::{
    config::config,
    helpers::current_cgroup_id,
    maps::filters::{cgroup_filter, pid_filter, port_filter},
};

/// True when this process must not be captured (the agent itself, or filtered out).
#[inline(always)]
pub(crate) fn process_filtered(tgid: u32) -> bool {
    let cfg = config();
    if tgid == cfg.self_tgid {
        return true;
    }
    let flags = cfg.filter_flags;
    if flags & (FILTER_PID_INCLUDE | FILTER_PID_EXCLUDE) != 0 {
        let v = pid_filter(tgid);
        if flags & FILTER_PID_INCLUDE != 0 && v != FILTER_INCLUDE {
            return true;
        }
        if v == FILTER_EXCLUDE {
            return true;
        }
    }
    if flags & (FILTER_CGROUP_INCLUDE | FILTER_CGROUP_EXCLUDE) != 0 {
        let v = cgroup_filter(current_cgroup_id());
        if flags & FILTER_CGROUP_INCLUDE != 0 && v != FILTER_INCLUDE {
            return true;
        }
        if v == FILTER_EXCLUDE {
            return true;
        }
    }
    false
}

/// True when a connection between these ports must not be captured.
#[inline(always)]
pub(crate) fn port_filtered(local: u16, remote: u16) -> bool {
    let flags = config().filter_flags;
    if flags & (FILTER_PORT_INCLUDE | FILTER_PORT_EXCLUDE) == 0 {
        return false;
    }
    let l = port_filter(local);
    let r = port_filter(remote);
    if l == FILTER_EXCLUDE || r == FILTER_EXCLUDE {
        return true;
    }
    flags & FILTER_PORT_INCLUDE != 0 && l != FILTER_INCLUDE && r != FILTER_INCLUDE
}
