//! Logs joined to traces: access records (one per served request, built from its
//! redacted SERVER span, before sampling) and the lines selected processes write to their
//! stdout/stderr ([`app`]), given the `trace_id`/`span_id` of the request the writing
//! thread was serving.
//!
//! * [`access`] — the access record of a SERVER span;
//! * [`line`] — splitting captured writes into lines, and JSON line parsing;
//! * [`app`] — the pipeline side of app lines: linking to requests, redaction, rate limits.

pub mod access;
pub mod app;
pub mod line;
pub mod select;

use serde::Serialize;

use crate::model::log::LogRecord;

/// Where log records go (the log exporter's queue, or a test's Vec).
pub trait LogSink {
    fn submit_log(&mut self, record: LogRecord);
}

impl LogSink for Vec<LogRecord> {
    fn submit_log(&mut self, record: LogRecord) {
        self.push(record);
    }
}

/// The `logs` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsConfig {
    /// One access record per served request (when logs are exported at all).
    pub access_enabled: bool,
    pub app: AppLogsConfig,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self { access_enabled: true, app: AppLogsConfig::default() }
    }
}

/// `logs.app`: which processes' stdout/stderr lines are captured, and the bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppLogsConfig {
    pub enabled: bool,
    /// `service.name`s (as the `services` rules name processes) whose lines are captured;
    /// empty: every process a `services` rule names (never unnamed ones).
    pub services: Vec<String>,
    /// Longer lines are cut here (and counted).
    pub max_line_bytes: usize,
    /// Per process; lines beyond are dropped (and counted).
    pub lines_per_second: u32,
}

impl Default for AppLogsConfig {
    fn default() -> Self {
        Self { enabled: false, services: Vec::new(), max_line_bytes: 8192, lines_per_second: 1000 }
    }
}

/// Counters of both kinds of records, for `/metrics` and the stop summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogStats {
    /// Access records made (one per SERVER span, sampled or not).
    pub access_records: u64,
    /// App lines made into records.
    pub app_lines: u64,
    /// App lines given the ids of the request their thread was serving.
    pub app_lines_linked: u64,
    /// App lines written while several requests were in flight on the thread (no ids).
    pub app_lines_ambiguous: u64,
    /// App lines cut at `max_line_bytes`.
    pub app_lines_truncated: u64,
    /// App lines dropped by the per-process rate limit.
    pub app_lines_rate_limited: u64,
    /// App lines dropped because the pending buffer was full.
    pub app_lines_dropped_pending: u64,
    /// Lines that carried their own trace_id, and how many disagreed with the agent's.
    pub app_lines_own_trace_id: u64,
    pub app_lines_trace_id_disagreed: u64,
    /// Captured writes whose bytes were cut by the kernel's capture cap or lost.
    pub app_writes_incomplete: u64,
}

/// Wall-clock now, for `observed_time_unix_nano`.
pub(crate) fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
