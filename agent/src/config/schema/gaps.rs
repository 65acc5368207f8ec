//! `gaps`: where a trace may start, and what is not a lost context.

use super::values::string_list;
use super::{Env, Setting, ZONES};

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "gaps",
        key: "entry_zones",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "gaps.entry_zones", |c, item, v| {
                let ok = ZONES.contains(&v);
                if !ok {
                    c.error(item, format!("`gaps.entry_zones` entries must be one of Z1..Z7, got {v:?}"));
                }
                ok
            }) {
                c.cfg.traces.gaps.entry_zones = v;
            }
        },
    },
    Setting {
        section: "gaps",
        key: "entry_services",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "gaps.entry_services", |_, _, _| true) {
                c.cfg.traces.gaps.entry_services = v;
            }
        },
    },
    Setting {
        section: "gaps",
        key: "internal_networks",
        env: Env::List,
        apply: |c, n| {
            let Some(v) = string_list(c, n, "gaps.internal_networks", |c, item, v| {
                let ok = v.parse::<ipnet::IpNet>().is_ok();
                if !ok {
                    c.error(
                        item,
                        format!("`gaps.internal_networks` entries must be CIDR networks like 10.0.0.0/8, got {v:?}"),
                    );
                }
                ok
            }) else {
                return;
            };
            c.cfg.traces.gaps.internal_networks = v.iter().filter_map(|x| x.parse().ok()).collect();
        },
    },
    Setting {
        section: "gaps",
        key: "ignore_routes",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "gaps.ignore_routes", |c, item, v| {
                let ok = v.starts_with('/');
                if !ok {
                    c.error(item, format!("`gaps.ignore_routes` entries are routes starting with `/`, got {v:?}"));
                }
                ok
            }) {
                c.cfg.traces.gaps.ignore_routes = v;
            }
        },
    },
    Setting {
        section: "gaps",
        key: "ignore_services",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "gaps.ignore_services", |_, _, _| true) {
                c.cfg.traces.gaps.ignore_services = v;
            }
        },
    },
];
