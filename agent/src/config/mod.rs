//! The agent's configuration file (YAML), its environment overrides, and its checker.
//!
//! One file configures the agent: `exporter` (where spans go), `capture` (what the kernel
//! programs capture), `traces` (how exchanges become spans), `resource` (node-wide resource
//! attributes), `kubernetes` (pod metadata) and `services` (ordered rules naming
//! processes). Every key is optional and defaults to what the agent does without a file;
//! `deploy/hoptrace.yaml` documents them all.
//!
//! **Precedence**, highest first:
//!
//! 1. command-line flags (`hoptrace run --port 80 --output FILE …`);
//! 2. the environment: the standard `OTEL_EXPORTER_OTLP_*` and `OTEL_RESOURCE_ATTRIBUTES`
//!    variables, then `HOPTRACE_<SECTION>_<KEY>` (`HOPTRACE_EXPORTER_ENDPOINT`,
//!    `HOPTRACE_CAPTURE_CAPTURE_CAP`, `HOPTRACE_CAPTURE_PORTS=80,8080`…) for every key that
//!    holds a value or a list;
//! 3. the file;
//! 4. the built-in defaults.
//!
//! A flag wins when it differs from its default: `ProbeArgs::apply_config` (in `cli::probe`) cannot tell
//! `--capture-cap 65536` from no flag at all, so the file's value is used in that case.
//!
//! **Diagnostics.** A configuration mistake must not be found one restart at a time, nor
//! silently ignored: [`check`] reports every problem of a file in one pass, each with its
//! line and column — unknown keys (with the closest known key as a suggestion), wrong
//! types, out-of-range values. `hoptrace --check-config FILE` prints them; loading a file
//! with any problem fails with all of them ([`ConfigError::Invalid`]).

mod schema;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hoptrace_common::DEFAULT_CAPTURE_CAP;
use thiserror::Error;

use crate::export::ExporterConfig;
use crate::model::span::KeyValue;
use crate::resource::resolver::{parse_resource_attributes, Rule};
use crate::traces::TraceConfig;

/// Largest configuration file read: a configuration is a few kilobytes, and reading a
/// device or a runaway file whole would exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One problem, where it is. `line` and `column` start at 1; both are 0 for a problem that
/// is not in the file (an environment variable, named in the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        }
    }
}

/// `FILE:LINE:COLUMN: error: message` (`FILE: error: message` for the environment), the
/// shape compilers use, so editors and CI annotate the line.
pub fn format_diagnostic(file: &str, d: &Diagnostic) -> String {
    if d.line == 0 {
        format!("{file}: error: {}", d.message)
    } else {
        format!("{file}:{}:{}: error: {}", d.line, d.column, d.message)
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {} is larger than {} bytes", .path.display(), MAX_FILE_BYTES)]
    TooLarge { path: PathBuf },
    /// Every problem found, file path included when there is a file.
    #[error("{}", invalid_text(.path.as_deref(), .diagnostics))]
    Invalid { path: Option<PathBuf>, diagnostics: Vec<Diagnostic> },
}

impl ConfigError {
    /// The problems, when the configuration was read but is not valid.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

/// First line: what and how many; then one line per problem.
fn invalid_text(path: Option<&Path>, diagnostics: &[Diagnostic]) -> String {
    let file = path.map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
    let n = diagnostics.len();
    let mut s = format!("invalid configuration {file}: {n} problem{}", if n == 1 { "" } else { "s" });
    for d in diagnostics {
        s.push('\n');
        s.push_str(&format_diagnostic(&file, d));
    }
    s
}

/// The whole configuration, every value checked.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Where spans go; the file's `exporter.output` is [`ExporterConfig::json_output`].
    pub exporter: ExporterConfig,
    pub capture: CaptureConfig,
    pub traces: TraceConfig,
    /// RED metrics: series bound, OTLP export interval, exemplars.
    pub metrics: crate::traces::red::MetricsConfig,
    /// Access records and application log lines over OTLP logs.
    pub logs: crate::traces::logs::LogsConfig,
    pub resource: ResourceConfig,
    /// Pod metadata from the Kubernetes API.
    pub kubernetes: crate::resource::k8s::KubernetesConfig,
    /// Ordered: the first rule whose conditions all hold names the process.
    pub services: Vec<Rule>,
}

/// What the kernel programs capture: the file's side of [`ProbeArgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    pub pids: Vec<u32>,
    pub exclude_pids: Vec<u32>,
    pub cgroups: Vec<PathBuf>,
    pub exclude_cgroups: Vec<PathBuf>,
    pub capture_cap: u32,
    pub ringbuf_size: u32,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// `/healthz` answers 503 when the capture loop has not ticked for longer.
    pub stall_timeout: Duration,
}

impl Default for CaptureConfig {
    /// The command line's defaults (a test keeps the two equal).
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            exclude_ports: Vec::new(),
            pids: Vec::new(),
            exclude_pids: Vec::new(),
            cgroups: Vec::new(),
            exclude_cgroups: Vec::new(),
            capture_cap: DEFAULT_CAPTURE_CAP,
            ringbuf_size: 8 * 1024 * 1024,
            max_connections: 65536,
            idle_timeout: Duration::from_secs(300),
            stall_timeout: crate::capture::heartbeat::DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Node-wide resource attributes, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceConfig {
    pub attributes: Vec<(String, String)>,
}

/// Every problem in `text`, in file order; empty when it is a valid configuration. The
/// environment is not consulted.
pub fn check(text: &str) -> Vec<Diagnostic> {
    evaluate(text, None).1
}

/// [`check`], then the `HOPTRACE_*` overrides read through `lookup`.
pub fn check_with_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Vec<Diagnostic> {
    evaluate(text, Some(&lookup)).1
}

/// The configuration `text` describes, without environment overrides.
pub fn from_str(text: &str) -> Result<Config, ConfigError> {
    finish(None, evaluate(text, None))
}

/// The configuration `text` describes, with the `HOPTRACE_*` overrides read through `lookup`.
pub fn from_str_with_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    finish(None, evaluate(text, Some(&lookup)))
}

/// Reads `path` and applies the process's `HOPTRACE_*` variables over it.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let (cfg, mut diags) = evaluate(&text, Some(&process_env));
    diags.extend(unknown_process_env());
    finish(Some(path), (cfg, diags))
}

/// [`load`] reading variables through `lookup` instead of the process environment.
pub fn load_with_env(path: &Path, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = read(path)?;
    finish(Some(path), evaluate(&text, Some(&lookup)))
}

/// No file: the defaults with the process's `HOPTRACE_*` variables over them.
pub fn from_env() -> Result<Config, ConfigError> {
    let (cfg, mut diags) = evaluate("", Some(&process_env));
    diags.extend(unknown_process_env());
    finish(None, (cfg, diags))
}

/// `hoptrace --check-config FILE`: the lines to print, one per problem of the file or of
/// the `HOPTRACE_*` environment the agent would apply over it; empty when both are valid.
pub fn check_path(path: &Path) -> Vec<String> {
    let file = path.display().to_string();
    let diags = match read(path) {
        Ok(text) => {
            let mut d = check_with_env(&text, process_env);
            d.extend(unknown_process_env());
            d
        }
        Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics,
        Err(ConfigError::Read { source, .. }) => return vec![format!("{file}: error: cannot read it: {source}")],
        Err(ConfigError::TooLarge { .. }) => {
            return vec![format!("{file}: error: larger than {MAX_FILE_BYTES} bytes, not a configuration file")]
        }
    };
    diags.iter().map(|d| format_diagnostic(&file, d)).collect()
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn unknown_process_env() -> Vec<Diagnostic> {
    let names: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    schema::unknown_env(names.iter().map(String::as_str))
}

/// Reads an environment variable; injected so tests never touch the process environment.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The file, parsed and checked; the environment over it; then the checks across settings.
fn evaluate(text: &str, lookup: Option<Lookup>) -> (Config, Vec<Diagnostic>) {
    let mut ctx = schema::Ctx::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match yaml::parse(text) {
        Ok((root, diags)) => {
            ctx.diags.extend(diags);
            schema::apply_file(&mut ctx, root.as_ref());
        }
        Err(syntax) => ctx.diags.push(syntax),
    }
    if let Some(lookup) = lookup {
        schema::apply_env(&mut ctx, lookup);
    }
    schema::finish(&mut ctx);
    // File order, then the environment's.
    ctx.diags.sort_by_key(|d| (d.line == 0, d.line, d.column));
    (ctx.cfg, ctx.diags)
}

fn finish(path: Option<&Path>, (cfg, diagnostics): (Config, Vec<Diagnostic>)) -> Result<Config, ConfigError> {
    if diagnostics.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid { path: path.map(Path::to_path_buf), diagnostics })
    }
}

/// The file as text: bounded in size, and UTF-8 (a bad byte is a diagnostic at its line).
fn read(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge { path: path.to_path_buf() });
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = String::from_utf8_lossy(&valid[line_start..]).chars().count() + 1;
        let message = "the file is not UTF-8 text".to_owned();
        ConfigError::Invalid { path: Some(path.to_path_buf()), diagnostics: vec![Diagnostic { line, column, message }] }
    })
}

impl Config {
    /// The exporter settings before `OTEL_EXPORTER_OTLP_*`, which
    /// [`ExporterConfig::from_env`] applies over them (the environment wins).
    pub fn exporter_base(&self) -> ExporterConfig {
        self.exporter.clone()
    }

    pub fn trace_config(&self) -> TraceConfig {
        self.traces.clone()
    }

    /// The `services` rules, in order.
    pub fn rules(&self) -> Vec<Rule> {
        self.services.clone()
    }

    /// Node-wide resource attributes: `host.name`, the file's `resource.attributes`, then
    /// `OTEL_RESOURCE_ATTRIBUTES` (each later one replacing an earlier one of the same key).
    pub fn node_attributes(&self) -> Vec<KeyValue> {
        // In a pod (no host network) the kernel hostname is the pod's: the node's name comes
        // from the downward API (K8S_NODE_NAME) when it is set.
        let host = std::env::var("K8S_NODE_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default());
        let otel = std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok();
        self.node_attributes_from(host.trim(), otel.as_deref())
    }

    /// [`Self::node_attributes`] from a given host name and `OTEL_RESOURCE_ATTRIBUTES` value.
    pub fn node_attributes_from(&self, host_name: &str, otel_resource_attributes: Option<&str>) -> Vec<KeyValue> {
        let mut out: Vec<KeyValue> = Vec::new();
        let mut set = |kv: KeyValue| {
            out.retain(|a| a.key != kv.key);
            out.push(kv);
        };
        if !host_name.is_empty() {
            set(KeyValue::str("host.name", host_name.to_string()));
        }
        for (k, v) in &self.resource.attributes {
            set(KeyValue::str(k.clone(), v.clone()));
        }
        for kv in otel_resource_attributes.map(parse_resource_attributes).unwrap_or_default() {
            set(kv);
        }
        out
    }
}
