//! `resource`: attributes of every span the agent sends.

use super::values::{entries, string};
use super::{Ctx, Env, Node, Setting, ZONES};

pub(super) const SETTINGS: &[Setting] = &[Setting {
    section: "resource",
    key: "attributes",
    env: Env::No,
    apply: |c, n| c.cfg.resource.attributes = attributes(c, n, "resource.attributes"),
}];

/// Resource attributes: non-empty keys, string values, `zone` one of the seed's zones.
pub(super) fn attributes(c: &mut Ctx, node: &Node, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, key_node, value) in entries(c, node, path) {
        if key.trim().is_empty() {
            c.error(key_node, format!("an attribute name in `{path}` is empty"));
            continue;
        }
        let Some(v) = string(c, value, &format!("attribute `{key}`")) else {
            continue;
        };
        if key == "zone" && !ZONES.contains(&v.as_str()) {
            c.error(value, format!("`zone` must be one of Z1..Z7, got {:?}", v));
            continue;
        }
        if key == "service.name" && v.trim().is_empty() {
            c.error(value, "`service.name` is empty");
            continue;
        }
        out.push((key, v));
    }
    out
}
