//! The bounded queue between the capture thread and an export worker (spans, and log
//! records through the same code: `BoundedQueue<T>`).
//!
//! The capture loop must never wait on the network, so pushing never blocks: when the
//! queue is full the *oldest queued* span is dropped (fresh spans are worth more than stale
//! ones while a collector is down). The capacity covers spans in flight too, and a batch
//! that failed with a retryable error is put back at the front, so everything waiting for
//! delivery is bounded by one number and old spans are the first to go. The one exception
//! is a batch on the wire while the queue overflows: it is committed to its request, so
//! the drops fall on the queued spans behind it.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

pub(crate) struct BoundedQueue<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
    /// Queue length at which the worker is woken to send a full batch.
    batch_size: usize,
    notify: Notify,
}

struct Inner<T> {
    queued: VecDeque<T>,
    in_flight: usize,
}

impl<T> BoundedQueue<T> {
    /// `batch_size` is clamped to `capacity` (a batch can never be larger than the queue).
    pub fn new(capacity: usize, batch_size: usize) -> Self {
        Self {
            inner: Mutex::new(Inner { queued: VecDeque::new(), in_flight: 0 }),
            capacity,
            batch_size: batch_size.min(capacity).max(1),
            notify: Notify::new(),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // A panic elsewhere while holding the lock leaves the queue structurally valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `span`; returns how many spans were dropped to make room (0 or 1).
    pub fn push(&self, span: T) -> u64 {
        let mut q = self.lock();
        let mut dropped = 0;
        if q.queued.len() + q.in_flight >= self.capacity {
            dropped = 1;
            if q.queued.pop_front().is_none() {
                // Everything held is in flight (batch size == capacity): the new span is
                // the one that has to go.
                return dropped;
            }
        }
        q.queued.push_back(span);
        let len = q.queued.len();
        drop(q);
        // Wake the worker when a batch starts (to arm its timer) and when one is full;
        // `notify_one` keeps a permit, so a wake-up is never lost.
        if len == 1 || len == self.batch_size {
            self.notify.notify_one();
        }
        dropped
    }

    /// Takes up to a batch from the front; the spans stay counted as in flight until
    /// [`Self::finish`] or [`Self::requeue`].
    pub fn take_batch(&self) -> Vec<T> {
        let mut q = self.lock();
        let n = q.queued.len().min(self.batch_size);
        let batch: Vec<T> = q.queued.drain(..n).collect();
        q.in_flight += batch.len();
        batch
    }

    /// The in-flight batch of `n` spans is done with (delivered or dropped).
    pub fn finish(&self, n: usize) {
        let mut q = self.lock();
        q.in_flight = q.in_flight.saturating_sub(n);
    }

    /// Puts an in-flight batch back at the front, in its order, to be retried.
    pub fn requeue(&self, batch: Vec<T>) {
        let mut q = self.lock();
        q.in_flight = q.in_flight.saturating_sub(batch.len());
        for span in batch.into_iter().rev() {
            q.queued.push_front(span);
        }
    }

    /// Removes everything queued (not in flight); returns how many spans that was.
    pub fn clear(&self) -> u64 {
        let mut q = self.lock();
        let n = q.queued.len();
        q.queued.clear();
        n as u64
    }

    pub fn queued(&self) -> usize {
        self.lock().queued.len()
    }

    /// Spans waiting for delivery: queued plus in flight.
    pub fn depth(&self) -> usize {
        let q = self.lock();
        q.queued.len() + q.in_flight
    }

    /// Completes after a [`Self::push`] wake-up (possibly one that happened earlier).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::tests::{resource, span};
    use crate::model::span::SpanRecord;

    type SpanQueue = BoundedQueue<SpanRecord>;

    fn seqs(batch: &[SpanRecord]) -> Vec<u8> {
        batch.iter().map(|s| s.trace_id[0]).collect()
    }

    #[test]
    fn drops_oldest_when_full() {
        let r = resource("svc");
        let q = SpanQueue::new(3, 2);
        let dropped: u64 = (1..=5).map(|n| q.push(span(&r, n))).sum();
        assert_eq!(dropped, 2);
        assert_eq!(q.depth(), 3);
        assert_eq!(seqs(&q.take_batch()), vec![3, 4]);
        assert_eq!(seqs(&q.take_batch()), vec![5]);
    }

    #[test]
    fn in_flight_counts_against_capacity_and_requeue_keeps_order() {
        let r = resource("svc");
        let q = SpanQueue::new(4, 2);
        for n in 1..=4 {
            q.push(span(&r, n));
        }
        let batch = q.take_batch();
        assert_eq!(seqs(&batch), vec![1, 2]);
        // Full: 2 queued + 2 in flight. The oldest *queued* span makes room.
        assert_eq!(q.push(span(&r, 5)), 1);
        assert_eq!(q.depth(), 4);
        q.requeue(batch);
        assert_eq!(q.depth(), 4);
        assert_eq!(seqs(&q.take_batch()), vec![1, 2]);
        q.finish(2);
        assert_eq!(seqs(&q.take_batch()), vec![4, 5]);
    }

    #[test]
    fn batch_equal_to_capacity_drops_newcomer_while_in_flight() {
        let r = resource("svc");
        let q = SpanQueue::new(2, 8);
        assert_eq!(q.batch_size(), 2);
        q.push(span(&r, 1));
        q.push(span(&r, 2));
        let batch = q.take_batch();
        assert_eq!(q.push(span(&r, 3)), 1);
        assert_eq!(q.queued(), 0);
        q.finish(batch.len());
        assert_eq!(q.depth(), 0);
    }
}
