//! `services`: ordered rules naming the processes they match.

use super::resource::attributes;
use super::values::{entries, list, non_empty, uint};
use super::{did_you_mean, Ctx, Kind, Node};
use crate::resource::resolver::{Match, Rule};

/// `services`: ordered rules naming the processes they match.
pub(super) fn apply(c: &mut Ctx, node: &Node) {
    let Some(items) = list(c, node, "services") else {
        return;
    };
    let mut rules = Vec::new();
    for item in items {
        if !matches!(item.kind, Kind::Map(_)) {
            c.error(
                item,
                format!("a `services` rule must be a mapping with `match` and `attributes`, got {}", item.describe()),
            );
            continue;
        }
        let (mut matches, mut attrs, mut valid) = (None, None, true);
        for (key, key_node, value) in entries(c, item, "a `services` rule") {
            match key.as_str() {
                "match" => matches = Some((rule_match(c, value), value)),
                "attributes" => attrs = Some((attributes(c, value, "attributes"), value)),
                _ => {
                    let hint = did_you_mean(&key, ["match", "attributes"]);
                    c.error(key_node, format!("unknown key `{key}` in a `services` rule{hint}"));
                }
            }
        }
        match &matches {
            None => {
                valid = false;
                c.error(item, "this `services` rule has no `match`: say which processes it applies to");
            }
            // Judged on what was written: a condition that is itself wrong is reported once.
            Some((_, at)) if written_entries(at) == 0 => {
                valid = false;
                c.error(
                    at,
                    "`match` needs at least one condition (`exe`, `cmdline_contains`, `cgroup_contains`, `port`)",
                );
            }
            _ => {}
        }
        match &attrs {
            None => {
                valid = false;
                c.error(item, "this `services` rule sets no `attributes`: give it a `service.name`");
            }
            Some((_, at)) if written_entries(at) == 0 => {
                valid = false;
                c.error(at, "`attributes` is empty: give the rule a `service.name` or other attributes");
            }
            _ => {}
        }
        if let (true, Some((matches, _)), Some((attrs, _))) = (valid, matches, attrs) {
            rules.push(Rule { matches, attributes: attrs.into_iter().collect() });
        }
    }
    c.cfg.services = rules;
}

/// Entries of a mapping as written, valid or not (0 for anything else).
fn written_entries(node: &Node) -> usize {
    match &node.kind {
        Kind::Map(pairs) => pairs.len(),
        _ => 0,
    }
}

fn rule_match(c: &mut Ctx, node: &Node) -> Match {
    let mut m = Match::default();
    for (key, key_node, value) in entries(c, node, "match") {
        let path = format!("match.{key}");
        match key.as_str() {
            "exe" => m.exe = non_empty(c, value, &path),
            "cmdline_contains" => m.cmdline_contains = non_empty(c, value, &path),
            "cgroup_contains" => m.cgroup_contains = non_empty(c, value, &path),
            "port" => m.port = uint(c, value, &path, 1, u16::MAX.into()).map(|p| p as u16),
            _ => {
                let hint = did_you_mean(&key, ["exe", "cmdline_contains", "cgroup_contains", "port"]);
                c.error(key_node, format!("unknown key `{key}` in `match`{hint}"));
            }
        }
    }
    m
}
