//! `privacy`: the PII detectors and extra redaction patterns.

use super::values::string_list;
use super::{did_you_mean, Env, Setting};

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "privacy",
        key: "disabled_detectors",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "privacy.disabled_detectors", |c, item, v| {
                let names: Vec<&str> = crate::policy::redact::Detector::ALL.iter().map(|d| d.name()).collect();
                let ok = names.contains(&v);
                if !ok {
                    c.error(
                        item,
                        format!(
                            "unknown detector `{v}`{}; detectors: {}",
                            did_you_mean(v, names.iter().copied()),
                            names.join(", ")
                        ),
                    );
                }
                ok
            }) {
                c.cfg.traces.disabled_detectors = v;
            }
        },
    },
    Setting {
        section: "privacy",
        key: "patterns",
        env: Env::No,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "privacy.patterns", |c, item, v| match regex::Regex::new(v) {
                Ok(re) if re.is_match("") => {
                    c.error(item, "a `privacy.patterns` entry must not match the empty string");
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    let why = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
                    c.error(item, format!("`privacy.patterns` entry is not a valid regular expression: {why}"));
                    false
                }
            }) {
                c.cfg.traces.redact_patterns = v;
            }
        },
    },
];
