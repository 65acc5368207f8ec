//! The agent's own logs: one JSON object per line on stderr, with `trace_id`/`span_id`
//! when a line concerns a span, so log pipelines can join them to traces.
//!
//! Lines caused by traffic (malformed headers, broken hops) go through a [`RateLimiter`]
//! keyed by what they are about, so hostile traffic cannot turn into a log flood; what
//! was suppressed is counted in the next line that gets through.

use std::{
    hash::{BuildHasher, Hash},
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, HashMap};

use serde_json::{json, Value};

/// Writes one JSON log line to stderr.
pub fn log(level: &str, msg: &str, fields: Value) {
    let mut v = json!({ "level": level, "msg": msg });
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
    }
    eprintln!("{v}");
}

/// At most one line per key per window; suppressed lines are counted.
pub struct RateLimiter {
    window: Duration,
    /// By the key's hash: callers on the per-request path (a broken hop logs at most once
    /// per window, but is checked on every request) hash their key's parts instead of
    /// formatting a string. A collision only merges two keys' rate limits.
    last: HashMap<u64, (Instant, u64)>,
    hasher: DefaultHashBuilder,
}

const MAX_KEYS: usize = 4096;

impl RateLimiter {
    pub fn new(window: Duration) -> Self {
        Self { window, last: HashMap::default(), hasher: DefaultHashBuilder::default() }
    }

    /// `Some(suppressed_since_last)` when a line for `key` may be written now.
    pub fn allow(&mut self, key: &str) -> Option<u64> {
        self.allow_hashed(self.hasher.hash_one(key))
    }

    /// [`Self::allow`] for a key made of parts (hashed, never joined).
    pub fn allow_parts(&mut self, key: impl Hash) -> Option<u64> {
        self.allow_hashed(self.hasher.hash_one(key))
    }

    fn allow_hashed(&mut self, key: u64) -> Option<u64> {
        let now = Instant::now();
        if let Some((at, suppressed)) = self.last.get_mut(&key) {
            if now.duration_since(*at) < self.window {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *at = now;
            *suppressed = 0;
            return Some(n);
        }
        if self.last.len() >= MAX_KEYS {
            let window = self.window;
            self.last.retain(|_, (at, _)| now.duration_since(*at) < window);
            if self.last.len() >= MAX_KEYS {
                return None;
            }
        }
        self.last.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_per_key_per_window() {
        let mut r = super::RateLimiter::new(std::time::Duration::from_secs(60));
        assert_eq!(r.allow("a"), Some(0));
        assert_eq!(r.allow("a"), None);
        assert_eq!(r.allow("a"), None);
        assert_eq!(r.allow("b"), Some(0));
        let mut fast = super::RateLimiter::new(std::time::Duration::ZERO);
        assert_eq!(fast.allow("a"), Some(0));
        assert_eq!(fast.allow("a"), Some(0));
    }
}
