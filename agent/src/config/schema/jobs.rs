//! `jobs`: batch-job runs as root spans, and the environment trace context.

use super::resource::attributes;
use super::values::{boolean, entries, list, non_empty, string_list, uint};
use super::{did_you_mean, Ctx, Env, Kind, Node, Setting};
use crate::traces::jobs::JobRule;

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "jobs",
        key: "environment_context",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "jobs.environment_context") {
                c.cfg.traces.jobs.environment_context = v;
            }
        },
    },
    Setting {
        section: "jobs",
        key: "airflow",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "jobs.airflow") {
                c.cfg.traces.jobs.airflow = v;
            }
        },
    },
    Setting {
        section: "jobs",
        key: "max_parallel_children",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "jobs.max_parallel_children", 0, 1 << 16) {
                c.cfg.traces.jobs.max_parallel_children = v as usize;
            }
        },
    },
    Setting {
        section: "jobs",
        key: "env_attributes",
        env: Env::No,
        apply: |c, n| c.cfg.traces.jobs.env_attributes = attributes(c, n, "jobs.env_attributes"),
    },
    Setting { section: "jobs", key: "rules", env: Env::No, apply: rules },
];

const RULE_KEYS: [&str; 5] = ["name", "match", "span_name", "attributes", "require_context"];
const MATCH_KEYS: [&str; 3] = ["exe", "cmdline", "env"];

/// `jobs.rules`: ordered; the first rule matching a process at exec makes it a job.
fn rules(c: &mut Ctx, node: &Node) {
    let Some(items) = list(c, node, "jobs.rules") else { return };
    let mut out = Vec::new();
    for item in items {
        if !matches!(item.kind, Kind::Map(_)) {
            c.error(item, format!("a `jobs.rules` entry must be a mapping, got {}", item.describe()));
            continue;
        }
        if let Some(rule) = rule(c, item) {
            out.push(rule);
        }
    }
    c.cfg.traces.jobs.rules = out;
}

fn rule(c: &mut Ctx, item: &Node) -> Option<JobRule> {
    let mut r = JobRule {
        name: String::new(),
        exe: None,
        cmdline: None,
        env: Vec::new(),
        span_name: String::new(),
        attributes: Vec::new(),
        require_context: false,
    };
    let mut conditions = 0;
    for (key, key_node, value) in entries(c, item, "a `jobs.rules` entry") {
        match key.as_str() {
            "name" => r.name = non_empty(c, value, "jobs.rules[].name").unwrap_or_default(),
            "span_name" => r.span_name = non_empty(c, value, "jobs.rules[].span_name").unwrap_or_default(),
            "attributes" => r.attributes = attributes(c, value, "jobs.rules[].attributes"),
            "require_context" => r.require_context = boolean(c, value, "jobs.rules[].require_context").unwrap_or(false),
            "match" => conditions = rule_match(c, value, &mut r),
            _ => {
                let hint = did_you_mean(&key, RULE_KEYS);
                c.error(key_node, format!("unknown key `{key}` in a `jobs.rules` entry{hint}"));
            }
        }
    }
    if r.name.is_empty() {
        c.error(item, "this `jobs.rules` entry has no `name`");
        return None;
    }
    if conditions == 0 {
        c.error(item, format!("job rule `{}` needs a `match` with `exe`, `cmdline` or `env`", r.name));
        return None;
    }
    if r.span_name.is_empty() {
        r.span_name = format!("batch-run {}", r.name);
    }
    Some(r)
}

/// Fills the rule's conditions; returns how many were given.
fn rule_match(c: &mut Ctx, node: &Node, r: &mut JobRule) -> usize {
    let mut n = 0;
    for (key, key_node, value) in entries(c, node, "jobs.rules[].match") {
        match key.as_str() {
            "exe" => r.exe = non_empty(c, value, "match.exe"),
            "cmdline" => {
                let Some(p) = non_empty(c, value, "match.cmdline") else { continue };
                // The regex crate runs in linear time: no pattern can make matching blow up.
                match regex::RegexBuilder::new(&p).size_limit(1 << 20).build() {
                    Ok(re) => r.cmdline = Some(re),
                    Err(e) => {
                        c.error(value, format!("`match.cmdline` is not a valid regular expression: {e}"));
                        continue;
                    }
                }
            }
            "env" => r.env = string_list(c, value, "match.env", |_, _, _| true).unwrap_or_default(),
            _ => {
                let hint = did_you_mean(&key, MATCH_KEYS);
                c.error(key_node, format!("unknown key `{key}` in `match`{hint}"));
                continue;
            }
        }
        n += 1;
    }
    n
}
