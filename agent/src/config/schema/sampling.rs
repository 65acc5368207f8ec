//! `sampling`: which traces are kept.

use super::values::{boolean, entries, list, non_empty, string, uint};
use super::{did_you_mean, Ctx, Env, Kind, Node, Setting, MAX_MS};
use crate::policy::sampling::SamplingRule;

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "sampling",
        key: "ratio",
        env: Env::Scalar,
        apply: |c, n| {
            let Some(text) = string(c, n, "`sampling.ratio`") else {
                return;
            };
            match text.parse::<f64>() {
                Ok(v) if (0.0..=1.0).contains(&v) => c.cfg.traces.sampling.ratio = v,
                _ => c.error(n, format!("`sampling.ratio` must be a number from 0 to 1, got `{text}`")),
            }
        },
    },
    Setting {
        section: "sampling",
        key: "slow_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "sampling.slow_ms", 0, MAX_MS) {
                c.cfg.traces.sampling.slow_ms = (v > 0).then_some(v);
            }
        },
    },
    Setting {
        section: "sampling",
        key: "keep_errors",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "sampling.keep_errors") {
                c.cfg.traces.sampling.keep_errors = v;
            }
        },
    },
    Setting {
        section: "sampling",
        key: "keep_risk_signals",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "sampling.keep_risk_signals") {
                c.cfg.traces.sampling.keep_risk_signals = v;
            }
        },
    },
    Setting {
        section: "sampling",
        key: "trust_external_sampled_flag",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "sampling.trust_external_sampled_flag") {
                c.cfg.traces.sampling.trust_external_sampled_flag = v;
            }
        },
    },
    Setting { section: "sampling", key: "rules", env: Env::No, apply: sampling_rules },
];

/// `sampling.rules`: per service / route ratios and slow thresholds, first match wins.
fn sampling_rules(c: &mut Ctx, node: &Node) {
    let Some(items) = list(c, node, "sampling.rules") else {
        return;
    };
    let mut rules = Vec::new();
    for item in items {
        if !matches!(item.kind, Kind::Map(_)) {
            c.error(
                item,
                format!(
                    "a `sampling.rules` entry must be a mapping (service, route, ratio, slow_ms), got {}",
                    item.describe()
                ),
            );
            continue;
        }
        rules.extend(sampling_rule(c, item));
    }
    c.cfg.traces.sampling.rules = rules;
}

/// One `sampling.rules` entry (a mapping); `None` when anything in it is wrong.
fn sampling_rule(c: &mut Ctx, item: &Node) -> Option<SamplingRule> {
    let mut rule = SamplingRule { ratio: f64::NAN, ..Default::default() };
    let mut valid = true;
    for (key, key_node, value) in entries(c, item, "a `sampling.rules` entry") {
        match key.as_str() {
            "service" => rule.service = non_empty(c, value, "`service`"),
            "route" => match non_empty(c, value, "`route`") {
                Some(r) if r.starts_with('/') => rule.route = Some(r),
                Some(r) => {
                    valid = false;
                    c.error(value, format!("`route` is a templated route starting with `/`, got `{r}`"));
                }
                None => valid = false,
            },
            "ratio" => match string(c, value, "`ratio`").map(|t| (t.parse::<f64>(), t)) {
                Some((Ok(v), _)) if (0.0..=1.0).contains(&v) => rule.ratio = v,
                Some((_, t)) => {
                    valid = false;
                    c.error(value, format!("`ratio` must be a number from 0 to 1, got `{t}`"));
                }
                None => valid = false,
            },
            "slow_ms" => match uint(c, value, "sampling.rules[].slow_ms", 1, MAX_MS) {
                Some(v) => rule.slow_ms = Some(v),
                None => valid = false,
            },
            _ => {
                valid = false;
                let hint = did_you_mean(&key, ["service", "route", "ratio", "slow_ms"]);
                c.error(key_node, format!("unknown key `{key}` in a `sampling.rules` entry{hint}"));
            }
        }
    }
    if !valid {
        return None;
    }
    if rule.ratio.is_nan() {
        c.error(item, "this `sampling.rules` entry has no `ratio`");
        return None;
    }
    if rule.service.is_none() && rule.route.is_none() {
        c.error(item, "this `sampling.rules` entry matches everything: give it a `service` or a `route`");
        return None;
    }
    Some(rule)
}
