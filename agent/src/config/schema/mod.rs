//! What the configuration file may say, and what each value must look like.
//!
//! One table per section (`exporter.rs`, `capture.rs`, …), joined in [`TABLES`], lists
//! every key of every section with the function that checks and stores its value. The
//! file walk and the `HOPTRACE_<SECTION>_<KEY>` environment overrides both go through it,
//! so a value is validated the same way wherever it comes from, and the list of keys that
//! unknown-key suggestions draw from can never drift from the keys actually understood.
//! `services` is a list of rules rather than keys (`services.rs`); the checks every
//! section shares are in `values.rs`, the "did you mean" suggestions in `suggest.rs`.
//!
//! Every check reports and carries on: a problem leaves the setting at its previous value
//! and adds a diagnostic, and the walk continues, so one run reports everything.

use super::yaml::{Kind, Node, Origin};
use super::{Config, Diagnostic};

mod capture;
mod exporter;
mod gaps;
mod jobs;
mod kubernetes;
mod logs;
mod metrics;
mod privacy;
mod resource;
mod sampling;
mod services;
mod suggest;
mod traces;
mod values;

pub(crate) use exporter::normalize_endpoint;
use suggest::did_you_mean;
#[cfg(test)]
pub(crate) use suggest::{closest, edit_distance};
use values::entries;

/// The top-level keys, in the order the documentation presents them.
pub(crate) const SECTIONS: [&str; 12] = [
    "exporter",
    "capture",
    "traces",
    "privacy",
    "gaps",
    "sampling",
    "metrics",
    "logs",
    "resource",
    "kubernetes",
    "jobs",
    "services",
];

/// Longest duration any timeout accepts. Durations are added to `Instant`s, which panics on
/// overflow; anything longer than a day is a typo anyway.
const MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// Upper bound of counts that size memory (queue, batch, connection table): far above any
/// useful value, far below what would exhaust memory on its own.
const MAX_COUNT: u64 = 1 << 24;
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

/// Every setting, section by section in [`SECTIONS`] order (`services` is a list of rules,
/// not settings).
static TABLES: [&[Setting]; 11] = [
    exporter::SETTINGS,
    capture::SETTINGS,
    traces::SETTINGS,
    privacy::SETTINGS,
    gaps::SETTINGS,
    sampling::SETTINGS,
    metrics::SETTINGS,
    logs::SETTINGS,
    resource::SETTINGS,
    kubernetes::SETTINGS,
    jobs::SETTINGS,
];

fn settings() -> impl Iterator<Item = &'static Setting> {
    TABLES.iter().flat_map(|t| t.iter())
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
            "services" => services::apply(c, value),
            s if SECTIONS.contains(&s) => section(c, s, value),
            _ => {
                let hint = match settings().find(|s| s.key == key) {
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
        match settings().find(|s| s.section == name && s.key == key) {
            Some(s) => (s.apply)(c, value),
            None => {
                let keys = settings().filter(|s| s.section == name).map(|s| s.key);
                let hint = did_you_mean(&key, keys);
                c.error(key_node, format!("unknown key `{key}` in `{name}`{hint}"));
            }
        }
    }
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

/// Applies `HOPTRACE_<SECTION>_<KEY>` variables over what the file said. Empty values count
/// as unset, as the OpenTelemetry variables do.
pub(crate) fn apply_env(c: &mut Ctx, lookup: super::Lookup) {
    for s in settings().filter(|s| s.env != Env::No) {
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
    let known: Vec<String> = settings().filter(|s| s.env != Env::No).map(Setting::env_var).collect();
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
        let message = match settings().find(|s| s.env == Env::No && s.env_var() == name) {
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
