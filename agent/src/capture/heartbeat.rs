//! The capture loop's heartbeat: when it last ticked (the once-a-second step that evicts
//! idle connections, expires held calls and publishes the counters), as atomics another
//! thread reads without a lock.
//!
//! `/healthz` answers from it, so a loop wedged on one record (a detector gone
//! super-linear, a parser spinning) or starved by an endless drain makes Kubernetes and
//! systemd restart the agent instead of leaving a node blind while `/healthz` says `ok`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Default for `capture.stall_timeout_s`: five missed ticks.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Heartbeat {
    /// The clock's zero: atomics hold milliseconds since it (monotonic, unlike wall time).
    origin: Instant,
    /// Milliseconds since `origin` at the last tick (at creation until the first tick:
    /// loading the programs is not a stall).
    last_ms: AtomicU64,
    ticks: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { origin: Instant::now(), last_ms: AtomicU64::new(0), ticks: AtomicU64::new(0) }
    }
}

impl Heartbeat {
    /// The loop ticked now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis();
        self.last_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Ticks so far (`hoptrace_capture_loop_ticks_total`).
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Time from the last tick to `now`.
    pub fn age_at(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// The health decision at `now`: healthy while the last tick is at most `max_stall` old.
    pub fn check_at(&self, now: Instant, max_stall: Duration) -> Result<(), Duration> {
        let age = self.age_at(now);
        if age <= max_stall {
            Ok(())
        } else {
            Err(age)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_until_a_tick_is_overdue_and_again_after_one() {
        let hb = Heartbeat::default();
        let t0 = hb.origin;
        let limit = Duration::from_secs(5);
        // Start-up counts as a tick: the loop has not run yet, it is not stalled.
        assert_eq!(hb.check_at(t0 + Duration::from_secs(5), limit), Ok(()));
        assert_eq!(hb.check_at(t0 + Duration::from_secs(6), limit), Err(Duration::from_secs(6)));
        hb.beat_at(t0 + Duration::from_secs(6));
        assert_eq!(hb.ticks(), 1);
        assert_eq!(hb.check_at(t0 + Duration::from_secs(7), limit), Ok(()));
        assert_eq!(hb.check_at(t0 + Duration::from_millis(11_001), limit), Err(Duration::from_millis(5001)));
        // A clock read before the last tick (another thread's `now`) is not a stall.
        assert_eq!(hb.check_at(t0, limit), Ok(()));
    }
}
