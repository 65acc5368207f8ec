//! What the configuration file may say, and what each value must look like.
//!
//! One table, [`SETTINGS`], lists every key of every section with the function that checks
//! and stores its value. The file walk and the `HOPTRACE_<SECTION>_<KEY>` environment
//! overrides both go through it, so a value is validated the same way wherever it comes
//! from, and the list of keys that unknown-key suggestions draw from can never drift from
//! the keys actually understood.
//!
//! Every check reports and carries on: a problem leaves the setting at its previous value
//! and adds a diagnostic, and the walk continues, so one run reports everything.

use std::path::PathBuf;
use std::time::Duration;

use hoptrace_common::MAX_CAPTURE_CAP;

use super::yaml::{Kind, Node, Origin};
use super::{Config, Diagnostic};
use crate::export::{Compression, JsonOutput, Protocol};
use crate::resource::resolver::{Match, Rule};

/// The top-level keys, in the order the documentation presents them.
pub(crate) const SECTIONS: [&str; 10] =
    ["exporter", "capture", "traces", "privacy", "gaps", "sampling", "metrics", "resource", "kubernetes", "services"];

/// Longest duration any timeout accepts. Durations are added to `Instant`s, which panics on
/// overflow; anything longer than a day is a typo anyway.
const MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// Ring buffer bytes: the kernel wants at least a page, and the loader rounds up to a power
/// of two, which must still fit in 32 bits.
const MIN_RINGBUF: u64 = 4096;
const MAX_RINGBUF: u64 = 1 << 31;
/// Upper bound of counts that size memory (queue, batch, connection table): far above any
/// useful value, far below what would exhaust memory on its own.
const MAX_COUNT: u64 = 1 << 24;
/// Linux's PID_MAX_LIMIT.
const MAX_PID: u64 = 4 * 1024 * 1024;
/// The seed deployment's zones: `zone` attributes outside this set are typos.
const ZONES: [&str; 7] = ["Z1", "Z2", "Z3", "Z4", "Z5", "Z6", "Z7"];

/// The state of one pass: the configuration built so far and the problems found.
pub(crate) struct Ctx {
    pub cfg: Config,
    pub diags: Vec<Diagnostic>,
    /// Where `exporter.endpoint` was last set: it is checked once the protocol is known,
    /// which may be set after it, or from the environment.
    endpoint_at: Option<Origin>,
}

impl Ctx {
    pub(crate) fn new() -> Self {
        Self { cfg: Config::default(), diags: Vec::new(), endpoint_at: None }
    }

    fn error(&mut self, at: &Node, message: impl Into<String>) {
        self.diags.push(at.origin.diagnostic(message));
    }
}

/// Whether (and how) a setting can come from an environment variable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Env {
    /// The variable's value is the value.
    Scalar,
    /// Comma-separated items (`HOPTRACE_CAPTURE_PORTS=80,8080`), replacing the file's list.
    List,
    /// Mappings have no environment form.
    No,
}

struct Setting {
    section: &'static str,
    key: &'static str,
    env: Env,
    apply: fn(&mut Ctx, &Node),
}

impl Setting {
    fn env_var(&self) -> String {
        env_var(self.section, self.key)
    }
}

pub(crate) fn env_var(section: &str, key: &str) -> String {
    format!("HOPTRACE_{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase())
}

/// Every key of the `exporter`, `capture`, `traces` and `resource` sections.
static SETTINGS: &[Setting] = &[
    Setting {
        section: "exporter",
        key: "endpoint",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "exporter.endpoint", "to use the embedded OTLP/JSON sink") {
                c.endpoint_at = v.as_ref().map(|_| n.origin.clone());
                c.cfg.exporter.endpoint = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "protocol",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(p) = choice(c, n, "exporter.protocol", &["grpc", "http/protobuf"]).and_then(Protocol::parse) {
                c.cfg.exporter.protocol = p;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "headers",
        env: Env::No,
        apply: |c, n| {
            let mut headers = Vec::new();
            for (name, key, value) in entries(c, n, "exporter.headers") {
                let name_ok = header_name(c, key, &name);
                let Some(v) = string(c, value, &format!("header `{name}`")) else {
                    continue;
                };
                // The value is never echoed: headers carry credentials.
                if http::HeaderValue::from_str(&v).is_err() {
                    c.error(value, format!("the value of header `{name}` is not a valid HTTP header value (control characters or non-ASCII)"));
                } else if name_ok {
                    headers.push((name, v));
                }
            }
            c.cfg.exporter.headers = headers;
        },
    },
    Setting {
        section: "exporter",
        key: "compression",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = choice(c, n, "exporter.compression", &["gzip", "none"]).and_then(Compression::parse) {
                c.cfg.exporter.compression = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "timeout_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.timeout_ms") {
                c.cfg.exporter.timeout = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "insecure",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = boolean(c, n, "exporter.insecure") {
                c.cfg.exporter.tls.insecure = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "ca_file",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "exporter.ca_file", "to trust the built-in roots only") {
                c.cfg.exporter.tls.ca_file = v.map(PathBuf::from);
            }
        },
    },
    Setting {
        section: "exporter",
        key: "batch_max_spans",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "exporter.batch_max_spans", 1, MAX_COUNT) {
                c.cfg.exporter.batch_max_spans = v as usize;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "batch_timeout_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.batch_timeout_ms") {
                c.cfg.exporter.batch_timeout = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "queue_capacity",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "exporter.queue_capacity", 1, MAX_COUNT) {
                c.cfg.exporter.queue_capacity = v as usize;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "retry_initial_backoff_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.retry_initial_backoff_ms") {
                c.cfg.exporter.retry.initial_backoff = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "retry_max_backoff_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.retry_max_backoff_ms") {
                c.cfg.exporter.retry.max_backoff = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "retry_max_elapsed_ms",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = millis(c, n, "exporter.retry_max_elapsed_ms") {
                c.cfg.exporter.retry.max_elapsed = v;
            }
        },
    },
    Setting {
        section: "exporter",
        key: "output",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "exporter.output", "to write to stdout") {
                c.cfg.exporter.json_output = v.map_or(JsonOutput::Stdout, |p| JsonOutput::File(p.into()));
            }
        },
    },
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
    Setting { section: "sampling", key: "rules", env: Env::No, apply: sampling_rules },
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
    Setting {
        section: "resource",
        key: "attributes",
        env: Env::No,
        apply: |c, n| c.cfg.resource.attributes = attributes(c, n, "resource.attributes"),
    },
    Setting {
        section: "kubernetes",
        key: "enabled",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = choice(c, n, "kubernetes.enabled", &["auto", "true", "false"])
                .and_then(crate::resource::k8s::Enabled::parse)
            {
                c.cfg.kubernetes.enabled = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "api_url",
        env: Env::Scalar,
        apply: |c, n| {
            let Some(v) = optional_string(c, n, "kubernetes.api_url", "to use KUBERNETES_SERVICE_HOST/PORT") else {
                return;
            };
            if let Some(url) = &v {
                let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
                });
                if !ok {
                    c.error(
                        n,
                        format!(
                            "`kubernetes.api_url` must be an http(s) URL such as https://10.0.0.1:443, got {url:?}"
                        ),
                    );
                    return;
                }
            }
            c.cfg.kubernetes.api_url = v;
        },
    },
    Setting {
        section: "kubernetes",
        key: "ca_file",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = absolute_path(c, n, "kubernetes.ca_file") {
                c.cfg.kubernetes.ca_file = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "token_file",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = absolute_path(c, n, "kubernetes.token_file") {
                c.cfg.kubernetes.token_file = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "node_name",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = optional_string(c, n, "kubernetes.node_name", "to use K8S_NODE_NAME") {
                c.cfg.kubernetes.node_name = v;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "delete_grace_s",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "kubernetes.delete_grace_s", 0, MAX_MS / 1000) {
                c.cfg.kubernetes.delete_grace = Duration::from_secs(v);
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "max_pods",
        env: Env::Scalar,
        apply: |c, n| {
            if let Some(v) = uint(c, n, "kubernetes.max_pods", 1, MAX_COUNT) {
                c.cfg.kubernetes.max_pods = v as usize;
            }
        },
    },
    Setting {
        section: "kubernetes",
        key: "attributes",
        env: Env::No,
        apply: |c, n| {
            let mut out = Vec::new();
            for (attr, key_node, value) in entries(c, n, "kubernetes.attributes") {
                if attr.trim().is_empty() {
                    c.error(key_node, "an attribute name in `kubernetes.attributes` is empty");
                    continue;
                }
                let Some(key) = string(c, value, &format!("the pod label/annotation key for `{attr}`")) else {
                    continue;
                };
                if let Err(why) = label_key(&key) {
                    c.error(
                        value,
                        format!(
                            "`kubernetes.attributes.{attr}`: {key:?} is not a Kubernetes label/annotation key: {why}"
                        ),
                    );
                    continue;
                }
                out.push((attr, key));
            }
            c.cfg.kubernetes.attributes = out;
        },
    },
];

/// A Kubernetes label or annotation key: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters, alphanumeric at both ends, with `-`, `_`, `.` inside.
fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Err("the prefix must be a lowercase DNS subdomain (example.com/)");
        }
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 {
        return Err("the name must be 1 to 63 characters");
    }
    if !edge(name.bytes().next())
        || !edge(name.bytes().last())
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("the name must be alphanumeric at both ends, with only -, _ and . inside");
    }
    Ok(())
}

/// An absolute file path (a relative one would depend on the agent's working directory).
fn absolute_path(c: &mut Ctx, n: &Node, path: &str) -> Option<PathBuf> {
    let v = non_empty(c, n, &format!("`{path}`"))?;
    if !v.starts_with('/') {
        c.error(n, format!("`{path}` must be an absolute path, got {v:?}"));
        return None;
    }
    Some(PathBuf::from(v))
}

/// A list of non-empty strings, each accepted by `valid` (which reports its own problem);
/// None when the list itself is malformed or any item was refused.
fn string_list(c: &mut Ctx, n: &Node, what: &str, valid: fn(&mut Ctx, &Node, &str) -> bool) -> Option<Vec<String>> {
    let items = list(c, n, what)?;
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match string(c, item, what) {
            Some(v) if !v.is_empty() && valid(c, item, &v) => out.push(v),
            Some(v) if v.is_empty() => {
                c.error(item, format!("`{what}` entries must not be empty"));
                ok = false;
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// Walks the whole file.
pub(crate) fn apply_file(c: &mut Ctx, root: Option<&Node>) {
    let Some(root) = root.filter(|r| !r.is_null()) else {
        return;
    };
    if !matches!(root.kind, Kind::Map(_)) {
        c.error(
            root,
            format!(
                "the configuration must be a mapping of sections ({}), got {}",
                SECTIONS.join(", "),
                root.describe()
            ),
        );
        return;
    }
    for (key, key_node, value) in entries(c, root, "the top level") {
        match key.as_str() {
            "services" => services(c, value),
            s if SECTIONS.contains(&s) => section(c, s, value),
            _ => {
                let hint = match SETTINGS.iter().find(|s| s.key == key) {
                    Some(s) => format!(", it belongs under `{}`", s.section),
                    None => did_you_mean(&key, SECTIONS),
                };
                c.error(key_node, format!("unknown key `{key}` at the top level{hint}"));
            }
        }
    }
}

fn section(c: &mut Ctx, name: &str, node: &Node) {
    for (key, key_node, value) in entries(c, node, name) {
        match SETTINGS.iter().find(|s| s.section == name && s.key == key) {
            Some(s) => (s.apply)(c, value),
            None => {
                let keys = SETTINGS.iter().filter(|s| s.section == name).map(|s| s.key);
                let hint = did_you_mean(&key, keys);
                c.error(key_node, format!("unknown key `{key}` in `{name}`{hint}"));
            }
        }
    }
}

/// `services`: ordered rules naming the processes they match.
fn services(c: &mut Ctx, node: &Node) {
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
        let mut rule = crate::policy::sampling::SamplingRule { ratio: f64::NAN, ..Default::default() };
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
            continue;
        }
        if rule.ratio.is_nan() {
            c.error(item, "this `sampling.rules` entry has no `ratio`");
            continue;
        }
        if rule.service.is_none() && rule.route.is_none() {
            c.error(item, "this `sampling.rules` entry matches everything: give it a `service` or a `route`");
            continue;
        }
        rules.push(rule);
    }
    c.cfg.traces.sampling.rules = rules;
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

/// Resource attributes: non-empty keys, string values, `zone` one of the seed's zones.
fn attributes(c: &mut Ctx, node: &Node, path: &str) -> Vec<(String, String)> {
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

/// After the file and the environment: checks that depend on several settings.
pub(crate) fn finish(c: &mut Ctx) {
    let (Some(endpoint), Some(at)) = (c.cfg.exporter.endpoint.clone(), c.endpoint_at.clone()) else {
        return;
    };
    match normalize_endpoint(&endpoint, c.cfg.exporter.protocol) {
        Ok(e) => c.cfg.exporter.endpoint = Some(e),
        Err(msg) => c.diags.push(at.diagnostic(msg)),
    }
}

/// http/protobuf: an http(s) URL; one without a path gets `/v1/traces`, the traces path of
/// OTLP/HTTP (a bare `http://collector:4318` would otherwise post to `/` and be refused).
/// grpc: an http(s) URL or `host:port` (the scheme then follows `insecure`).
pub(crate) fn normalize_endpoint(endpoint: &str, protocol: Protocol) -> Result<String, String> {
    let bad = |why: &str| {
        let expected = match protocol {
            Protocol::HttpProtobuf => "a URL such as http://collector:4318/v1/traces for http/protobuf",
            Protocol::Grpc => "a URL such as http://collector:4317, or host:port, for grpc",
        };
        format!("`exporter.endpoint` must be {expected}: {why}")
    };
    let has_scheme = endpoint.contains("://");
    if !has_scheme && protocol == Protocol::HttpProtobuf {
        return Err(bad("it has no http:// or https:// scheme"));
    }
    let full = if has_scheme { endpoint.to_owned() } else { format!("http://{endpoint}") };
    let uri: http::Uri = full.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the scheme must be http or https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    let no_path = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !has_scheme && (uri.port().is_none() || !no_path) {
        return Err(bad("host:port needs a port and nothing after it"));
    }
    if protocol == Protocol::HttpProtobuf && no_path {
        return Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    Ok(endpoint.to_owned())
}

/// Applies `HOPTRACE_<SECTION>_<KEY>` variables over what the file said. Empty values count
/// as unset, as the OpenTelemetry variables do.
pub(crate) fn apply_env(c: &mut Ctx, lookup: super::Lookup) {
    for s in SETTINGS.iter().filter(|s| s.env != Env::No) {
        let var = s.env_var();
        let Some(value) = lookup(&var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
            continue;
        };
        let origin = Origin::Env { var, value: value.clone() };
        let node = match s.env {
            Env::List => Node {
                kind: Kind::Seq(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| Node::scalar(origin.clone(), v))
                        .collect(),
                ),
                origin,
            },
            _ => Node::scalar(origin, value),
        };
        (s.apply)(c, &node);
    }
}

/// `HOPTRACE_<SECTION>_…` variables that name no setting: the environment's unknown keys.
/// Variables outside the sections' prefixes (`HOPTRACE_CONFIG`, test harness variables)
/// are not ours to judge. Values are never echoed: a misnamed variable may hold a secret.
pub(crate) fn unknown_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Diagnostic> {
    let known: Vec<String> = SETTINGS.iter().filter(|s| s.env != Env::No).map(Setting::env_var).collect();
    let mut out = Vec::new();
    for name in names {
        let Some(rest) = name.strip_prefix("HOPTRACE_") else {
            continue;
        };
        let ours =
            SECTIONS.iter().any(|s| rest.strip_prefix(&*s.to_ascii_uppercase()).is_some_and(|r| r.starts_with('_')));
        if !ours || known.iter().any(|k| k == name) {
            continue;
        }
        let message = match SETTINGS.iter().find(|s| s.env == Env::No && s.env_var() == name) {
            Some(s) => {
                format!("environment variable {name}: `{}.{}` cannot be set from the environment", s.section, s.key)
            }
            None if name.starts_with("HOPTRACE_SERVICES_") => {
                format!("environment variable {name}: `services` cannot be set from the environment")
            }
            None => {
                format!("unknown environment variable {name}{}", did_you_mean(name, known.iter().map(String::as_str)))
            }
        };
        out.push(Diagnostic { line: 0, column: 0, message });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Value checks. Each reports at the value and returns None when it is not acceptable.

/// A mapping's entries as `(key, key node, value)`; keys must be strings and unique. `null`
/// (a key written with nothing after it) is an empty mapping.
fn entries<'n>(c: &mut Ctx, node: &'n Node, path: &str) -> Vec<(String, &'n Node, &'n Node)> {
    let pairs = match &node.kind {
        Kind::Map(pairs) => pairs,
        _ if node.is_null() => return Vec::new(),
        _ => {
            c.error(node, format!("`{path}` must be a mapping (`key: value` lines), got {}", node.describe()));
            return Vec::new();
        }
    };
    let mut out: Vec<(String, &Node, &Node)> = Vec::new();
    for (k, v) in pairs {
        let Kind::Scalar { text, .. } = &k.kind else {
            c.error(k, format!("keys in `{path}` must be plain names, got {}", k.describe()));
            continue;
        };
        if let Some((_, first, _)) = out.iter().find(|(t, _, _)| t == text) {
            let first = match first.origin {
                Origin::File { line, .. } => format!(" (first at line {line})"),
                Origin::Env { .. } => String::new(),
            };
            c.error(k, format!("duplicate key `{text}` in `{path}`{first}"));
            continue;
        }
        out.push((text.clone(), k, v));
    }
    out
}

/// A list; `null` is an empty list.
fn list<'n>(c: &mut Ctx, node: &'n Node, path: &str) -> Option<&'n [Node]> {
    match &node.kind {
        Kind::Seq(items) => Some(items),
        _ if node.is_null() => Some(&[]),
        _ => {
            c.error(node, format!("`{path}` must be a list (`[a, b]` or `- a` lines), got {}", node.describe()));
            None
        }
    }
}

/// Any scalar but null, as written: `service.version: 1.4` is the string "1.4".
fn string(c: &mut Ctx, node: &Node, what: &str) -> Option<String> {
    match &node.kind {
        _ if node.is_null() => {
            c.error(node, format!("{} has no value", capitalize_code(what)));
            None
        }
        Kind::Scalar { text, .. } => Some(text.clone()),
        _ => {
            c.error(node, format!("{} must be a string, got {}", capitalize_code(what), node.describe()));
            None
        }
    }
}

fn non_empty(c: &mut Ctx, node: &Node, what: &str) -> Option<String> {
    let v = string(c, node, what)?;
    if v.trim().is_empty() {
        c.error(node, format!("{} is empty", capitalize_code(what)));
        return None;
    }
    Some(v)
}

/// A string that may be left out: `null` means "not set" and selects `unset_means`.
fn optional_string(c: &mut Ctx, node: &Node, path: &str, unset_means: &str) -> Option<Option<String>> {
    if node.is_null() {
        return Some(None);
    }
    let v = string(c, node, &format!("`{path}`"))?;
    if v.trim().is_empty() {
        c.error(node, format!("`{path}` is empty; leave it out {unset_means}"));
        return None;
    }
    Some(Some(v))
}

fn boolean(c: &mut Ctx, node: &Node, path: &str) -> Option<bool> {
    if let Kind::Scalar { text, quoted: false } = &node.kind {
        match text.as_str() {
            "true" | "True" | "TRUE" => return Some(true),
            "false" | "False" | "FALSE" => return Some(false),
            _ => {}
        }
    }
    c.error(node, format!("`{path}` must be true or false, got {}", node.describe()));
    None
}

/// A whole number in `min..=max`, written plainly (a quoted "8080" is a string).
fn uint(c: &mut Ctx, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    // `None`: not a whole number at all; `Some(None)`: one, but negative.
    let number: Option<Option<u64>> = match &node.kind {
        Kind::Scalar { text, quoted: false } => {
            let (negative, digits) = match text.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, text.strip_prefix('+').unwrap_or(text)),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                // All digits: only overflow can fail, and that is out of range as well.
                let v = digits.parse::<u64>().unwrap_or(u64::MAX);
                Some(if negative && v != 0 { None } else { Some(v) })
            }
        }
        _ => None,
    };
    match number {
        Some(Some(v)) if (min..=max).contains(&v) => Some(v),
        Some(v) => {
            let bound = match v {
                Some(v) if v > max => format!("at most {max}"),
                _ if min == 1 => "greater than zero".to_owned(),
                _ => format!("at least {min}"),
            };
            c.error(node, format!("`{path}` must be {bound}, got {}", node.describe()));
            None
        }
        None => {
            c.error(node, format!("`{path}` must be a whole number, got {}", node.describe()));
            None
        }
    }
}

fn millis(c: &mut Ctx, node: &Node, path: &str) -> Option<Duration> {
    uint(c, node, path, 1, MAX_MS).map(Duration::from_millis)
}

fn uint_list(c: &mut Ctx, node: &Node, path: &str, min: u64, max: u64) -> Option<Vec<u64>> {
    let items = list(c, node, path)?;
    let before = c.diags.len();
    let values: Vec<u64> =
        items.iter().enumerate().filter_map(|(i, item)| uint(c, item, &format!("{path}[{i}]"), min, max)).collect();
    (c.diags.len() == before).then_some(values)
}

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

fn choice(c: &mut Ctx, node: &Node, path: &str, allowed: &[&'static str]) -> Option<&'static str> {
    if let Kind::Scalar { text, .. } = &node.kind {
        if let Some(v) = allowed.iter().find(|a| **a == text.as_str()) {
            return Some(v);
        }
    }
    let options = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" or ");
    let hint = match &node.kind {
        Kind::Scalar { text, .. } => did_you_mean(text, allowed.iter().copied()),
        _ => String::new(),
    };
    c.error(node, format!("`{path}` must be {options}, got {}{hint}", node.describe()));
    None
}

/// Header names as the agent compares them: lowercase RFC 9110 tokens.
fn header_name(c: &mut Ctx, at: &Node, name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        let why = if !name.is_empty() && name.to_ascii_lowercase().bytes().all(tchar) {
            format!("header name `{name}` must be lowercase (`{}`)", name.to_ascii_lowercase())
        } else {
            format!("{:?} is not a valid HTTP header name", name)
        };
        c.error(at, why);
        return false;
    }
    true
}

/// "`x` …" stays as is; "a thing …" becomes "A thing …" at the start of a message.
fn capitalize_code(what: &str) -> String {
    let mut chars = what.chars();
    match chars.next() {
        Some(f) if f.is_ascii_lowercase() => f.to_ascii_uppercase().to_string() + chars.as_str(),
        _ => what.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Suggestions.

/// ", did you mean `x`?" for the closest candidate when it is close enough, else "".
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates).map(|c| format!(", did you mean `{c}`?")).unwrap_or_default()
}

/// Close enough: a few edits for the word's length, or a prefix of it (`idle_timeout` for
/// `idle_timeout_s`).
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Long garbage is not a typo, and edit distance is quadratic.
    if word.is_empty() || word.chars().count() > 64 {
        return None;
    }
    let lower = word.to_lowercase();
    let budget = (lower.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|cand| (edit_distance(&lower, &cand.to_lowercase()), cand))
        .filter(|(d, cand)| *d <= budget || (lower.len() >= 4 && cand.to_lowercase().starts_with(&lower)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over characters, a swap of two neighbours counting as one edit (optimal
/// string alignment): `grcp` is one typo away from `grpc`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i-2, i-1 and i (transpositions look two rows back); the last is the result.
    let mut rows = [vec![0; b.len() + 1], vec![0; b.len() + 1], (0..=b.len()).collect::<Vec<_>>()];
    for i in 1..=a.len() {
        rows.rotate_left(1);
        let [prev2, prev, cur] = &mut rows;
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
    }
    rows[2][b.len()]
}
