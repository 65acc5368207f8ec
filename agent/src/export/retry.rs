//! What counts as retryable, and how long to wait before trying again.
//!
//! The split follows the OTLP specification: transient conditions (collector overloaded,
//! restarting, unreachable) are retried with exponential backoff; anything that says the
//! data itself is unacceptable is dropped at once, since sending it again cannot help.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use tonic::Code;

use super::config::RetryConfig;

/// A failed export attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExportFailure {
    pub retryable: bool,
    /// Short, bounded-cardinality label ("grpc INVALID_ARGUMENT", "http 400") under which
    /// the dropped spans are counted.
    pub reason: String,
    /// Human-readable detail (server message, I/O error).
    pub detail: String,
    /// The server's own retry delay (gRPC RetryInfo, HTTP Retry-After), which wins over
    /// the computed backoff.
    pub retry_after: Option<Duration>,
}

impl ExportFailure {
    pub fn retryable(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { retryable: true, reason: reason.into(), detail: detail.into(), retry_after: None }
    }

    pub fn permanent(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { retryable: false, reason: reason.into(), detail: detail.into(), retry_after: None }
    }
}

/// gRPC status codes the OTLP specification lists as retryable.
///
/// RESOURCE_EXHAUSTED is retried unconditionally (with RetryInfo honoured when present);
/// the specification is stricter (retry only when RetryInfo is present) but a bounded
/// retry budget makes the looser rule cheap.
pub(crate) fn grpc_code_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Canonical upper-case gRPC code names, for stable drop-reason labels.
pub(crate) fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// HTTP statuses the OTLP specification lists as retryable.
pub(crate) fn http_status_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After` in its delta-seconds form. The HTTP-date form is not honoured (collectors
/// send seconds); it falls back to the computed backoff.
pub(crate) fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    value.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with jitter over one retry budget (`max_elapsed` from the first
/// failure). Jitter spreads the retries of many agents that lost the same collector.
pub(crate) struct Backoff {
    cfg: RetryConfig,
    attempt: u32,
    first_failure: Option<Instant>,
    rng: u64,
}

impl Backoff {
    pub fn new(cfg: RetryConfig) -> Self {
        // Jitter needs no cryptographic quality: a clock-seeded splitmix64 is plenty.
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self { cfg, attempt: 0, first_failure: None, rng: seed ^ 0x9e37_79b9_7f4a_7c15 }
    }

    /// Forgets past failures (after a delivery, or after giving up on a batch).
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.first_failure = None;
    }

    /// The delay before the next attempt after a failure at `now`, or `None` when that
    /// attempt would start past the retry budget.
    pub fn next_delay(&mut self, now: Instant, server_delay: Option<Duration>) -> Option<Duration> {
        let first = *self.first_failure.get_or_insert(now);
        let delay = match server_delay {
            Some(d) => d,
            None => {
                let exp = self.cfg.initial_backoff.saturating_mul(1u32 << self.attempt.min(20));
                let base = exp.min(self.cfg.max_backoff);
                // Uniform in [0.5, 1.5) × base, then capped.
                let factor = 0.5 + (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
                base.mul_f64(factor).min(self.cfg.max_backoff)
            }
        };
        self.attempt = self.attempt.saturating_add(1);
        if now.saturating_duration_since(first) + delay > self.cfg.max_elapsed {
            return None;
        }
        Some(delay)
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(cfg());
        let now = Instant::now();
        for attempt in 0..10u32 {
            let d = b.next_delay(now, None).unwrap();
            let base = Duration::from_millis(100 * 2u64.pow(attempt)).min(Duration::from_millis(1000));
            assert!(d >= base / 2 && d <= Duration::from_millis(1000), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn budget_exhausts_and_reset_restores_it() {
        let mut b = Backoff::new(cfg());
        let start = Instant::now();
        assert!(b.next_delay(start, None).is_some());
        assert!(b.next_delay(start + Duration::from_millis(4900), Some(Duration::from_millis(50))).is_some());
        assert!(b.next_delay(start + Duration::from_millis(4900), Some(Duration::from_millis(200))).is_none());
        b.reset();
        let later = start + Duration::from_secs(100);
        assert_eq!(b.next_delay(later, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
    }

    #[test]
    fn retryable_sets() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(grpc_code_retryable(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unimplemented,
            Code::Unknown,
        ] {
            assert!(!grpc_code_retryable(code), "{code:?}");
        }
        for s in [429, 502, 503, 504] {
            assert!(http_status_retryable(s));
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(!http_status_retryable(s));
        }
        assert_eq!(parse_retry_after(&HeaderValue::from_static(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")), None);
    }
}
