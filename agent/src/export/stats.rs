//! SpanExporter counters: every span submitted ends up exported or counted under one drop
//! reason, so losses are always visible.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// A snapshot of the exporter's counters.
///
/// Accounting: `spans_submitted = spans_exported + spans_rejected_by_collector +
/// spans_dropped_* + queue_depth` once nothing is in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportStats {
    pub spans_submitted: u64,
    /// Accepted by the collector (sent minus those it reported rejected).
    pub spans_exported: u64,
    /// Oldest spans dropped to make room in the full queue.
    pub spans_dropped_queue_full: u64,
    /// Batches the collector refused with a non-retryable error (see
    /// [`super::SpanExporter::drop_reasons`]).
    pub spans_dropped_non_retryable: u64,
    /// Batches still undelivered when their retry budget ran out.
    pub spans_dropped_retries_exhausted: u64,
    /// Spans still held when the shutdown deadline passed.
    pub spans_dropped_shutdown: u64,
    /// `rejected_spans` of partial-success responses.
    pub spans_rejected_by_collector: u64,
    pub export_requests_ok: u64,
    /// Every failed attempt, including ones retried later.
    pub export_requests_failed: u64,
    /// Round trip of the last export request, whatever its outcome.
    pub last_export_latency_us: u64,
    /// Spans waiting for delivery (queued or in flight).
    pub queue_depth: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub spans_submitted: AtomicU64,
    pub spans_exported: AtomicU64,
    pub spans_dropped_queue_full: AtomicU64,
    pub spans_dropped_non_retryable: AtomicU64,
    pub spans_dropped_retries_exhausted: AtomicU64,
    pub spans_dropped_shutdown: AtomicU64,
    pub spans_rejected_by_collector: AtomicU64,
    pub export_requests_ok: AtomicU64,
    pub export_requests_failed: AtomicU64,
    pub last_export_latency_us: AtomicU64,
    /// Non-retryable drops by reason; few distinct keys (status codes), touched only on
    /// failures, so a mutex is fine.
    drop_reasons: Mutex<BTreeMap<String, u64>>,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn dropped_non_retryable(&self, reason: &str, spans: u64) {
        Self::add(&self.spans_dropped_non_retryable, spans);
        let mut map = self.drop_reasons.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(reason.to_owned()).or_default() += spans;
    }

    pub fn set_last_error(&self, text: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn drop_reasons(&self) -> Vec<(String, u64)> {
        let map = self.drop_reasons.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn snapshot(&self, queue_depth: usize) -> ExportStats {
        ExportStats {
            spans_submitted: self.spans_submitted.load(Relaxed),
            spans_exported: self.spans_exported.load(Relaxed),
            spans_dropped_queue_full: self.spans_dropped_queue_full.load(Relaxed),
            spans_dropped_non_retryable: self.spans_dropped_non_retryable.load(Relaxed),
            spans_dropped_retries_exhausted: self.spans_dropped_retries_exhausted.load(Relaxed),
            spans_dropped_shutdown: self.spans_dropped_shutdown.load(Relaxed),
            spans_rejected_by_collector: self.spans_rejected_by_collector.load(Relaxed),
            export_requests_ok: self.export_requests_ok.load(Relaxed),
            export_requests_failed: self.export_requests_failed.load(Relaxed),
            last_export_latency_us: self.last_export_latency_us.load(Relaxed),
            queue_depth: queue_depth as u64,
        }
    }
}
