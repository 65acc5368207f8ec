//! The export loop, on the exporter's own thread and runtime: batches by size and time,
//! sends, retries, counts, and honours the shutdown deadline. Generic over what is sent
//! (spans, log records) and how ([`Deliver`]), so every signal gets the same queueing,
//! retry classification and drop accounting.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::RetryConfig;
use super::retry::{Backoff, ExportFailure};
use super::stats::Counters;
use super::{Accepted, Shared};

/// A transport that sends one batch of `T` and says what the collector accepted.
pub(crate) trait Deliver<T> {
    fn export_batch(&mut self, batch: &[T], timeout: Duration)
        -> impl Future<Output = Result<Accepted, ExportFailure>>;
}

pub(crate) struct Settings {
    pub batch_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryConfig,
}

pub(crate) async fn run<T, D: Deliver<T>>(
    shared: Arc<Shared<T>>,
    transport: D,
    settings: Settings,
    shutdown: watch::Receiver<Option<Instant>>,
) {
    let worker = Worker {
        backoff: Backoff::new(settings.retry),
        shared,
        settings,
        shutdown,
        deadline: None,
        batch_open_since: None,
        retry_due: false,
    };
    worker.run(transport).await
}

struct Worker<T> {
    shared: Arc<Shared<T>>,
    settings: Settings,
    shutdown: watch::Receiver<Option<Instant>>,
    /// Set once shutdown is requested: flush until then, drop (and count) what is left.
    deadline: Option<Instant>,
    /// When the worker first saw the current partial batch waiting.
    batch_open_since: Option<Instant>,
    /// A failed batch was put back and its backoff has elapsed: send without waiting for
    /// the batch timer.
    retry_due: bool,
    backoff: Backoff,
}

impl<T> Worker<T> {
    async fn run<D: Deliver<T>>(mut self, mut transport: D) {
        loop {
            self.refresh_deadline();
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                self.drop_remaining();
                return;
            }
            let queued = self.shared.queue.queued();
            if queued == 0 {
                if self.deadline.is_some() {
                    return;
                }
                self.batch_open_since = None;
                self.wait(None, true).await;
                continue;
            }
            if queued < self.shared.queue.batch_size() && self.deadline.is_none() && !self.retry_due {
                let due = *self.batch_open_since.get_or_insert(now) + self.settings.batch_timeout;
                if now < due {
                    self.wait(Some(due), true).await;
                    continue;
                }
            }
            self.batch_open_since = None;
            self.retry_due = false;
            if !self.export_one(&mut transport).await {
                self.drop_remaining();
                return;
            }
        }
    }

    /// Sends one batch and settles its accounting. Returns false when the shutdown deadline
    /// passed while the request was in flight.
    async fn export_one<D: Deliver<T>>(&mut self, transport: &mut D) -> bool {
        let batch = self.shared.queue.take_batch();
        let n = batch.len() as u64;
        let started = Instant::now();
        let timeout = match self.deadline {
            Some(d) => self.settings.request_timeout.min(d.saturating_duration_since(started)),
            None => self.settings.request_timeout,
        };

        let result = {
            let exchange = transport.export_batch(&batch, timeout);
            tokio::pin!(exchange);
            loop {
                let deadline = self.deadline;
                let changed = tokio::select! {
                    r = &mut exchange => break Some(r),
                    _ = sleep_until_opt(deadline) => break None,
                    r = self.shutdown.changed(), if deadline.is_none() => r,
                };
                self.deadline = match changed {
                    Ok(()) => *self.shutdown.borrow(),
                    Err(_) => Some(Instant::now()),
                };
            }
        };
        self.shared.counters.last_export_latency_us.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );

        let queue = &self.shared.queue;
        let c = &self.shared.counters;
        match result {
            None => {
                queue.finish(batch.len());
                Counters::add(&c.spans_dropped_shutdown, n);
                return false;
            }
            Some(Ok(accepted)) => {
                queue.finish(batch.len());
                Counters::add(&c.export_requests_ok, 1);
                let rejected = accepted.rejected_spans.min(n);
                Counters::add(&c.spans_exported, n - rejected);
                Counters::add(&c.spans_rejected_by_collector, rejected);
                if rejected > 0 || !accepted.message.is_empty() {
                    c.set_last_error(format!("collector rejected {rejected} spans: {}", accepted.message));
                }
                self.backoff.reset();
            }
            Some(Err(failure)) => {
                Counters::add(&c.export_requests_failed, 1);
                c.set_last_error(format!("{}: {}", failure.reason, failure.detail));
                if !failure.retryable {
                    queue.finish(batch.len());
                    c.dropped_non_retryable(&failure.reason, n);
                    self.backoff.reset();
                    return true;
                }
                match self.backoff.next_delay(Instant::now(), failure.retry_after) {
                    None => {
                        queue.finish(batch.len());
                        Counters::add(&c.spans_dropped_retries_exhausted, n);
                        self.backoff.reset();
                    }
                    Some(delay) => {
                        // Back into the bounded queue: while the collector is away, waiting
                        // spans stay within capacity and the oldest are the first dropped.
                        queue.requeue(batch);
                        self.retry_due = true;
                        self.wait(Some(Instant::now() + delay), false).await;
                    }
                }
            }
        }
        true
    }

    fn refresh_deadline(&mut self) {
        if self.deadline.is_none() {
            self.deadline = *self.shutdown.borrow();
            if self.deadline.is_none() && self.shutdown.has_changed().is_err() {
                // The SpanExporter is gone without a shutdown request: stop now.
                self.deadline = Some(Instant::now());
            }
        }
    }

    /// Sleeps until `until` (capped by the shutdown deadline), a queue wake-up if
    /// `wake_on_push`, or a shutdown request.
    async fn wait(&mut self, until: Option<Instant>, wake_on_push: bool) {
        let until = match (until, self.deadline) {
            (Some(u), Some(d)) => Some(u.min(d)),
            (u, d) => u.or(d),
        };
        let watching = self.deadline.is_none();
        let queue = &self.shared.queue;
        let shutdown = &mut self.shutdown;
        let changed = tokio::select! {
            _ = sleep_until_opt(until) => None,
            _ = queue.notified(), if wake_on_push => None,
            r = shutdown.changed(), if watching => Some(r),
        };
        match changed {
            Some(Ok(())) | None => self.refresh_deadline(),
            Some(Err(_)) => self.deadline = Some(Instant::now()),
        }
    }

    fn drop_remaining(&mut self) {
        let n = self.shared.queue.clear();
        Counters::add(&self.shared.counters.spans_dropped_shutdown, n);
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
