//! `traces`: what spans record.

use super::values::{boolean, entries, header_name, list, millis, non_empty, string, string_list};
use super::{Ctx, Env, Node, Setting};

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        section: "traces",
        key: "suppress_instrumented",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "traces.suppress_instrumented") {
                c.cfg.traces.suppress_instrumented = v;
            }
        },
    },
    Setting {
        section: "traces",
        key: "hold_timeout_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "traces.hold_timeout_ms") {
                c.cfg.traces.hold_timeout = v;
            }
        },
    },
    Setting {
        section: "traces",
        key: "stitch_same_node",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "traces.stitch_same_node") {
                c.cfg.traces.stitch = v;
            }
        },
    },
    Setting {
        section: "traces",
        key: "record_user_agent",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "traces.record_user_agent") {
                c.cfg.traces.record_user_agent = v;
            }
        },
    },
    Setting {
        section: "traces",
        key: "request_header_attributes",
        env: Env::No,
        apply: |c, n| {
            c.cfg.traces.request_header_attributes = header_attributes(c, n, "traces.request_header_attributes")
        },
    },
    Setting {
        section: "traces",
        key: "response_header_attributes",
        env: Env::No,
        apply: |c, n| {
            c.cfg.traces.response_header_attributes = header_attributes(c, n, "traces.response_header_attributes")
        },
    },
    Setting {
        section: "traces",
        key: "risk_signal_headers",
        env: Env::List,
        apply: |c, n| {
            let Some(items) = list(c, n, "traces.risk_signal_headers") else {
                return;
            };
            let mut out = Vec::new();
            for item in items {
                if let Some(name) = string(c, item, "a risk signal header") {
                    if header_name(c, item, &name) {
                        out.push(name);
                    }
                }
            }
            c.cfg.traces.risk_signal_headers = out;
        },
    },
    Setting {
        section: "traces",
        key: "baggage_allowlist",
        env: Env::List,
        apply: |c, n| {
            if let Some(v) = string_list(c, n, "traces.baggage_allowlist", |_, _, _| true) {
                c.cfg.traces.baggage_allowlist = v;
            }
        },
    },
    Setting {
        section: "traces",
        key: "http_methods",
        env: Env::List,
        apply: |c, n| {
            // HTTP methods are tokens; anything else could never match one on the wire.
            if let Some(v) = string_list(c, n, "traces.http_methods", |c, item, v| {
                let token =
                    v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    c.error(
                        item,
                        format!(
                            "`traces.http_methods`: {v:?} is not an HTTP method (a token of at most 32 characters)"
                        ),
                    );
                }
                token
            }) {
                c.cfg.traces.extra_http_methods = v;
            }
        },
    },
];

/// Header name → span attribute name.
fn header_attributes(c: &mut Ctx, node: &Node, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, key_node, value) in entries(c, node, path) {
        let name_ok = header_name(c, key_node, &name);
        let Some(attr) = non_empty(c, value, &format!("the attribute for header `{name}`")) else {
            continue;
        };
        if name_ok {
            out.push((name, attr));
        }
    }
    out
}
