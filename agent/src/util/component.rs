//! Background threads that can be stopped and joined: every thread the agent starts is a
//! [`Component`], so shutdown can stop them in order (producers before consumers) and
//! nothing is left detached. `ops::components` keeps the running set.

use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The stopping side's view: asked from a blocking loop ([`StopSignal::wait`]) or awaited
/// from async code ([`StopSignal::stopped`]).
#[derive(Clone)]
pub struct StopSignal {
    flag: Arc<(Mutex<bool>, Condvar)>,
    watch: tokio::sync::watch::Receiver<bool>,
}

impl StopSignal {
    pub fn is_stopped(&self) -> bool {
        *self.flag.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks up to `timeout`; true when stop was asked (at once if it already was).
    pub fn wait(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.flag;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |stopped| !*stopped).unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Resolves once stop is asked.
    pub async fn stopped(&mut self) {
        // An error means the sender is gone: stopped too.
        let _ = self.watch.wait_for(|stopped| *stopped).await;
    }
}

/// A named thread with its stop signal.
pub struct Component {
    name: &'static str,
    flag: Arc<(Mutex<bool>, Condvar)>,
    watch: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Component {
    /// Starts `body` on a thread named `hoptrace-<name>`; `body` returns when its signal
    /// says stop.
    pub fn spawn(name: &'static str, body: impl FnOnce(StopSignal) + Send + 'static) -> std::io::Result<Self> {
        let flag = Arc::new((Mutex::new(false), Condvar::new()));
        let (watch, rx) = tokio::sync::watch::channel(false);
        let signal = StopSignal { flag: flag.clone(), watch: rx };
        let thread = std::thread::Builder::new().name(format!("hoptrace-{name}")).spawn(move || body(signal))?;
        Ok(Self { name, flag, watch, thread: Some(thread) })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Asks the thread to stop (it returns at its next check).
    pub fn ask_stop(&self) {
        let (lock, cv) = &*self.flag;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        let _ = self.watch.send(true);
    }

    /// Asks it to stop and joins it within `deadline`; false when it did not finish in
    /// time (the thread is then left to end with the process, and the caller says so).
    pub fn stop(mut self, deadline: Duration) -> bool {
        self.ask_stop();
        let Some(thread) = self.thread.take() else { return true };
        let until = Instant::now() + deadline;
        while !thread.is_finished() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().is_ok()
    }
}

impl Drop for Component {
    /// A component dropped without `stop` is still asked to stop: never left running.
    fn drop(&mut self) {
        self.ask_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_and_async_bodies_stop_when_asked() {
        let blocking = Component::spawn("test-blocking", |s| while !s.wait(Duration::from_secs(60)) {}).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let async_body = Component::spawn("test-async", move |mut s| {
            runtime.block_on(async move {
                tokio::select! {
                    _ = s.stopped() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            })
        })
        .unwrap();
        let t = Instant::now();
        assert!(blocking.stop(Duration::from_secs(5)));
        assert!(async_body.stop(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(5), "both stopped at once, not after their 60 s waits");
    }

    #[test]
    fn a_body_that_ignores_the_signal_is_reported() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = Component::spawn("test-stuck", move |_| {
            let _ = rx.recv();
        })
        .unwrap();
        assert!(!stuck.stop(Duration::from_millis(50)));
        drop(tx);
    }
}
