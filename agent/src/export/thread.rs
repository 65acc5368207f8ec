//! The export thread every signal shares: a single-threaded tokio runtime running
//! [`worker::run`] over a bounded queue, started and stopped the same way for spans and
//! log records.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::{ConfigError, ExporterConfig};
use super::queue::BoundedQueue;
use super::stats::Counters;
use super::worker::{self, Deliver};
use super::{ExportStats, Shared, StartError};

/// Handle to one export thread fed with `T`s. Dropping it without [`Self::shutdown`] stops
/// the thread at once; what is still held is counted as dropped at shutdown.
pub(crate) struct ExportThread<T> {
    shared: Arc<Shared<T>>,
    shutdown: watch::Sender<Option<Instant>>,
    /// In a mutex only so that the handle is `Sync` (shareable by several capture threads).
    done: Mutex<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> ExportThread<T> {
    /// Validates `config`, starts the thread named `name` and builds the transport on it
    /// with `build` (inside the runtime: a gRPC channel spawns its connection task).
    pub fn start<D, B>(config: ExporterConfig, name: &str, build: B) -> Result<Self, StartError>
    where
        D: Deliver<T> + 'static,
        B: FnOnce(&ExporterConfig) -> Result<D, ConfigError> + Send + 'static,
    {
        config.validate()?;
        let shared = Arc::new(Shared {
            queue: BoundedQueue::new(config.queue_capacity, config.batch_max_spans),
            counters: Counters::default(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), StartError>>(1);
        let (done_tx, done_rx) = mpsc::sync_channel::<()>(1);
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StartError::Runtime(e)));
                        return;
                    }
                };
                let transport = {
                    let _guard = rt.enter();
                    build(&config)
                };
                let transport = match transport {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let settings = worker::Settings {
                    batch_timeout: config.batch_timeout,
                    request_timeout: config.timeout,
                    retry: config.retry,
                };
                rt.block_on(worker::run(worker_shared, transport, settings, shutdown_rx));
                let _ = done_tx.send(());
            })
            .map_err(StartError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { shared, shutdown: shutdown_tx, done: Mutex::new(done_rx), thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(StartError::ThreadExited)
            }
        }
    }
}

impl<T> ExportThread<T> {
    /// Queues `item`. Never blocks: when the queue is full the oldest is dropped and counted.
    pub fn submit(&self, item: T) {
        let c = &self.shared.counters;
        Counters::add(&c.spans_submitted, 1);
        let dropped = self.shared.queue.push(item);
        if dropped > 0 {
            Counters::add(&c.spans_dropped_queue_full, dropped);
        }
    }

    pub fn stats(&self) -> ExportStats {
        self.shared.counters.snapshot(self.shared.queue.depth())
    }

    pub fn drop_reasons(&self) -> Vec<(String, u64)> {
        self.shared.counters.drop_reasons()
    }

    pub fn last_error(&self) -> Option<String> {
        self.shared.counters.last_error()
    }

    /// Flushes what can be delivered within `deadline` (retries included), counts the rest
    /// as dropped, stops the thread and returns the final counters.
    pub fn shutdown(mut self, deadline: Duration) -> ExportStats {
        self.shutdown.send_replace(Some(Instant::now() + deadline));
        // The worker bounds its own work by the deadline; the grace covers tearing down a
        // request. Should it still not finish, the thread is left to end on its own.
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(deadline + Duration::from_secs(1));
        match done {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.thread.take();
            }
        }
        self.stats()
    }
}

impl<T> Drop for ExportThread<T> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown.send_replace(Some(Instant::now()));
        }
    }
}
