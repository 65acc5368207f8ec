//! Requests a thread finished serving, remembered for a while.
//!
//! A call is complete when the agent sees the end of its response — or, when the body was
//! never read to its end or is delimited by the close, when its connection closes. That
//! can come after the request it was made for has been answered: a Python handler that
//! keeps `r = urlopen(...)` without reading the body closes the socket when `r` is freed,
//! after its own response went out. Deciding such a call by what its thread is doing when
//! it completes links it to nothing (the thread is idle: a root span) or holds it for the
//! wrong request (the thread serves the next one). The call's *start* is what says which
//! request it was made for: the history answers "which finished request of this thread
//! was in flight when the call started".
//!
//! Bounded: a few requests per thread, and two generations of at most
//! [`MAX_PER_GENERATION`] requests; the older generation is dropped when the newer fills
//! up or has aged past the hold timeout. Threads are keyed by (pid, tid), so a call is
//! never linked across processes; a reused tid cannot match, because windows are compared
//! on the kernel clock.

use std::{
    mem,
    time::{Duration, Instant},
};

use hashbrown::HashMap;

use super::{judge::Hop, Ctx};
use crate::traces::context::TraceParent;

/// Finished requests remembered per thread (a thread-per-connection server's call can
/// complete a few requests later at most when responses are freed late).
const PER_THREAD: usize = 8;
/// Finished requests per generation; two generations are kept.
const MAX_PER_GENERATION: usize = 4096;

/// A request that a thread finished serving.
pub(super) struct Served {
    /// When its first bytes were read, and when its response ended (kernel clock).
    pub start: u64,
    pub end: u64,
    /// Another inbound request was in flight on the thread meanwhile.
    pub overlapped: bool,
    /// The context its calls continue (a child of its SERVER span).
    pub child: Ctx,
    /// The context it was received with, to judge the calls' hops.
    pub inbound: Option<TraceParent>,
    pub hop: Hop,
}

/// What the history says about a call that started at some time on a thread.
pub(super) enum Match<'a> {
    /// Exactly one request was being served, and nothing overlapped it.
    One(&'a Served),
    /// Several requests were in flight on the thread: the agent does not guess.
    Overlapped,
}

pub(super) struct ServedHistory {
    current: HashMap<(u32, u32), Vec<Served>>,
    previous: HashMap<(u32, u32), Vec<Served>>,
    /// Requests in `current`.
    len: usize,
    since: Instant,
}

impl Default for ServedHistory {
    fn default() -> Self {
        Self { current: HashMap::new(), previous: HashMap::new(), len: 0, since: Instant::now() }
    }
}

impl ServedHistory {
    /// Thread `key` finished serving a request.
    pub fn push(&mut self, key: (u32, u32), served: Served) {
        if self.len >= MAX_PER_GENERATION {
            self.roll();
        }
        let list = self.current.entry(key).or_default();
        if list.len() >= PER_THREAD {
            list.remove(0);
        } else {
            self.len += 1;
        }
        list.push(served);
    }

    /// The finished request(s) of thread `key` whose window holds `start`.
    pub fn find(&self, key: (u32, u32), start: u64) -> Option<Match<'_>> {
        let lists = [self.previous.get(&key), self.current.get(&key)];
        let mut found: Option<&Served> = None;
        for s in lists.into_iter().flatten().flatten() {
            if !(s.start..=s.end).contains(&start) {
                continue;
            }
            if found.is_some() || s.overlapped {
                return Some(Match::Overlapped);
            }
            found = Some(s);
        }
        found.map(Match::One)
    }

    /// Periodic: a generation older than `ttl` goes, so an idle agent holds nothing.
    pub fn expire(&mut self, ttl: Duration) {
        if self.since.elapsed() > ttl {
            self.roll();
        }
    }

    /// Requests remembered (both generations).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len + self.previous.values().map(Vec::len).sum::<usize>()
    }

    fn roll(&mut self) {
        self.previous = mem::take(&mut self.current);
        self.len = 0;
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::TraceOrigin;

    fn served(start: u64, end: u64, overlapped: bool) -> Served {
        let child =
            Ctx { trace_id: [1; 16], parent: [2; 8], flags: 1, trace_state: String::new(), origin: TraceOrigin::Agent };
        let addr = "127.0.0.1:8080".parse().unwrap();
        let hop = Hop {
            resource: std::sync::Arc::new(crate::model::span::Resource::default()),
            route: "/".into(),
            local: addr,
            remote: addr,
            trace_id: [1; 16],
            span_id: [2; 8],
        };
        Served { start, end, overlapped, child, inbound: None, hop }
    }

    #[test]
    fn finds_the_request_whose_window_holds_the_start() {
        let mut h = ServedHistory::default();
        h.push((1, 1), served(10, 20, false));
        h.push((1, 1), served(30, 40, false));
        h.push((1, 2), served(50, 60, true));
        assert!(matches!(h.find((1, 1), 35), Some(Match::One(s)) if s.start == 30));
        assert!(h.find((1, 1), 25).is_none(), "between requests: none");
        assert!(h.find((2, 1), 35).is_none(), "another process");
        assert!(matches!(h.find((1, 2), 55), Some(Match::Overlapped)));
    }

    #[test]
    fn bounded_per_thread_and_in_total() {
        let mut h = ServedHistory::default();
        for i in 0..20 {
            h.push((1, 1), served(i * 10, i * 10 + 5, false));
        }
        assert_eq!(h.len(), PER_THREAD);
        assert!(h.find((1, 1), 5).is_none(), "the oldest went");
        for t in 0..(2 * MAX_PER_GENERATION as u32 + 10) {
            h.push((2, t), served(1, 2, false));
        }
        assert!(h.len() <= 2 * MAX_PER_GENERATION, "{}", h.len());
        h.expire(Duration::ZERO);
        h.expire(Duration::ZERO);
        assert_eq!(h.len(), 0, "two expiries empty it");
    }
}
