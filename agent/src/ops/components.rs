//! The agent's background threads, stopped in order.
//!
//! Components are pushed in start order and stopped in reverse: what started last (and
//! may depend on what started before it) stops first. The capture loop and the span and
//! metrics exporters have their own drain-and-flush shutdown, which `cli::run` performs
//! before this (producers before consumers); what is left here are the services around
//! them: alerts, the HTTP endpoint, the Kubernetes watch.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{component::Component, logging::log};

#[derive(Default)]
pub struct Components {
    running: Vec<Component>,
}

impl Components {
    pub fn push(&mut self, c: Component) {
        self.running.push(c);
    }

    /// Stops every component, last started first, each within `deadline`; one that does
    /// not stop in time is named in a warning (it ends with the process).
    pub fn stop_all(&mut self, deadline: Duration) {
        if self.running.is_empty() {
            return;
        }
        let mut stopped = serde_json::Map::new();
        while let Some(c) = self.running.pop() {
            let name = c.name();
            let t = Instant::now();
            if c.stop(deadline) {
                stopped.insert(name.into(), json!(t.elapsed().as_millis() as u64));
            } else {
                let ms = deadline.as_millis() as u64;
                log("warn", "component did not stop in time", json!({ "component": name, "deadline_ms": ms }));
            }
        }
        log("info", "components stopped", json!({ "ms": stopped }));
    }
}

impl Drop for Components {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(2));
    }
}
