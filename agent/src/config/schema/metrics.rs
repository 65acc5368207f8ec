//! `metrics`: RED metrics series and their OTLP export.

use std::time::Duration;

use super::values::{boolean, uint};
use super::{Env, Setting, MAX_COUNT, MAX_MS};

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "metrics",
        key: "max_series",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "metrics.max_series", 1, MAX_COUNT) {
                c.cfg.metrics.max_series = v as usize;
            }
        },
    },
    Setting {
        section: "metrics",
        key: "export_interval_ms",
        env: Env::Scalar,
        apply: |c, n| {
            // 0 turns OTLP metrics export off (the `/metrics` endpoint stays).
            if let Some(v) = uint(c, n, "metrics.export_interval_ms", 0, MAX_MS) {
                c.cfg.metrics.export_interval = Duration::from_millis(v);
            }
        },
    },
    Setting {
        section: "metrics",
        key: "exemplars",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "metrics.exemplars") {
                c.cfg.metrics.exemplars = v;
            }
        },
    },
];
