//! `capture`: what the kernel side watches and how much it buffers.

use std::path::PathBuf;
use std::time::Duration;

use hoptrace_common::MAX_CAPTURE_CAP;

use super::values::{list, non_empty, uint, uint_list};
use super::{Ctx, Env, Node, Setting, MAX_COUNT, MAX_MS};

/// Ring buffer bytes: the kernel wants at least a page, and the loader rounds up to a power
/// of two, which must still fit in 32 bits.
const MIN_RINGBUF: u64 = 4096;
const MAX_RINGBUF: u64 = 1 << 31;
/// Linux's PID_MAX_LIMIT.
const MAX_PID: u64 = 4 * 1024 * 1024;

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "capture",
        key: "ports",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = uint_list(c, n, "capture.ports", 1, u16::MAX.into()) {
                c.cfg.capture.ports = v.into_iter().map(|p| p as u16).collect();
            }
        },
    },
    Setting {
        section: "capture",
        key: "exclude_ports",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = uint_list(c, n, "capture.exclude_ports", 1, u16::MAX.into()) {
                c.cfg.capture.exclude_ports = v.into_iter().map(|p| p as u16).collect();
            }
        },
    },
    Setting {
        section: "capture",
        key: "pids",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = uint_list(c, n, "capture.pids", 1, MAX_PID) {
                c.cfg.capture.pids = v.into_iter().map(|p| p as u32).collect();
            }
        },
    },
    Setting {
        section: "capture",
        key: "exclude_pids",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = uint_list(c, n, "capture.exclude_pids", 1, MAX_PID) {
                c.cfg.capture.exclude_pids = v.into_iter().map(|p| p as u32).collect();
            }
        },
    },
    Setting {
        section: "capture",
        key: "cgroups",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = cgroup_list(c, n, "capture.cgroups") {
                c.cfg.capture.cgroups = v;
            }
        },
    },
    Setting {
        section: "capture",
        key: "exclude_cgroups",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = cgroup_list(c, n, "capture.exclude_cgroups") {
                c.cfg.capture.exclude_cgroups = v;
            }
        },
    },
    Setting {
        section: "capture",
        key: "capture_cap",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "capture.capture_cap", 1, MAX_CAPTURE_CAP.into()) {
                c.cfg.capture.capture_cap = v as u32;
            }
        },
    },
    Setting {
        section: "capture",
        key: "ringbuf_size",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "capture.ringbuf_size", MIN_RINGBUF, MAX_RINGBUF) {
                c.cfg.capture.ringbuf_size = v as u32;
            }
        },
    },
    Setting {
        section: "capture",
        key: "max_connections",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "capture.max_connections", 1, MAX_COUNT) {
                c.cfg.capture.max_connections = v as usize;
            }
        },
    },
    Setting {
        section: "capture",
        key: "idle_timeout_s",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "capture.idle_timeout_s", 1, MAX_MS / 1000) {
                c.cfg.capture.idle_timeout = Duration::from_secs(v);
            }
        },
    },
    Setting {
        section: "capture",
        key: "stall_timeout_s",
        env: Env::Scalar,
        apply: |c, n| {
            // Below two ticks (one a second) a healthy loop would flap.
            if let Some(v) = uint(c, n, "capture.stall_timeout_s", 2, MAX_MS / 1000) {
                c.cfg.capture.stall_timeout = Duration::from_secs(v);
            }
        },
    },
];

/// cgroup v2 directories. Absolute, since a relative path would depend on the directory
/// the agent happens to be started from.
fn cgroup_list(c: &mut Ctx, node: &Node, path: &str) -> Option<Vec<PathBuf>> {
    let items = list(c, node, path)?;
    let before = c.diags.len();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(p) = non_empty(c, item, &format!("`{path}[{i}]`")) else {
            continue;
        };
        if !p.starts_with('/') {
            c.error(
                item,
                format!("`{path}[{i}]` must be an absolute cgroup v2 directory (/sys/fs/cgroup/…), got {p:?}"),
            );
            continue;
        }
        out.push(PathBuf::from(p));
    }
    (c.diags.len() == before).then_some(out)
}
