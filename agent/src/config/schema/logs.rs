//! `logs`: access records and application log lines (see docs/configuration.md#logs).

use super::values::{boolean, entries, string_list, uint};
use super::{did_you_mean, Ctx, Env, Node, Setting};

pub(super) const SETTINGS: &[Setting] = &[
    Setting { section: "logs", key: "access", env: Env::No, apply: access },
    Setting { section: "logs", key: "app", env: Env::No, apply: app },
];

fn access(c: &mut Ctx, n: &Node) {
    for (key, key_node, value) in entries(c, n, "logs.access") {
        match key.as_str() {
            "enabled" => {
                if let Some(v) = boolean(c, value, "logs.access.enabled") {
                    c.cfg.logs.access_enabled = v;
                }
            }
            _ => {
                let hint = did_you_mean(&key, ["enabled"]);
                c.error(key_node, format!("unknown key `{key}` in `logs.access`{hint}"));
            }
        }
    }
}

fn app(c: &mut Ctx, n: &Node) {
    const KEYS: [&str; 4] = ["enabled", "services", "max_line_bytes", "lines_per_second"];
    for (key, key_node, value) in entries(c, n, "logs.app") {
        match key.as_str() {
            "enabled" => {
                if let Some(v) = boolean(c, value, "logs.app.enabled") {
                    c.cfg.logs.app.enabled = v;
                }
            }
            "services" => {
                if let Some(v) = string_list(c, value, "logs.app.services", |_, _, _| true) {
                    c.cfg.logs.app.services = v;
                }
            }
            "max_line_bytes" => {
                if let Some(v) = uint(c, value, "logs.app.max_line_bytes", 64, 64 * 1024) {
                    c.cfg.logs.app.max_line_bytes = v as usize;
                }
            }
            "lines_per_second" => {
                if let Some(v) = uint(c, value, "logs.app.lines_per_second", 1, 1_000_000) {
                    c.cfg.logs.app.lines_per_second = v as u32;
                }
            }
            _ => {
                let hint = did_you_mean(&key, KEYS);
                c.error(key_node, format!("unknown key `{key}` in `logs.app`{hint}"));
            }
        }
    }
}
