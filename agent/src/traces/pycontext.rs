//! Which inbound request a Python `contextvars.Context` belongs to (async services).
//!
//! An event loop serves many requests on one thread, so the thread says nothing about
//! which request a call serves. The Context does: every asyncio Task runs its steps in the
//! Context it copied when it was created, and thread-pool workers (`run_in_threadpool`,
//! `to_thread`) run in a copy made inside the request's task. The kernel reports each
//! copy (`PyContext_CopyCurrent`: the new Context and the thread's current one, its
//! parent) and, at every write on a client socket, the Context the thread was in
//! (`capture::python`). Here:
//!
//! * **claim** — a read that completed a request's headers (`\r\n\r\n` in it) on a server
//!   connection with no request in flight *arms* its thread; the first Context copied on
//!   that thread after the read, within [`CLAIM_WINDOW_NS`], is that request's (uvicorn
//!   creates the request's task in the same callback as the read);
//! * **pipelined requests** — a request that arrived while the previous one on its
//!   connection was in flight gets its task when that response ends, created inside the
//!   previous request's task: the response's end arms the thread for the next request,
//!   and the pending claim wins over inheritance (only a copy whose parent is the previous
//!   request's Context may take it);
//! * **inherit** — any other copy whose parent belongs to a request still in flight
//!   belongs to that request too (tasks created by the request: `gather`, background
//!   `create_task`, thread-pool work). A copy made from a finished request's Context
//!   belongs to nothing: unresolved, never guessed;
//! * **reuse** — Context objects are recycled (a freelist): a copy returning an address
//!   replaces whatever that address meant; a request claimed twice invalidates its older
//!   Contexts (`Owner::claim` no longer current); owners age out after [`OWNER_TTL`] and
//!   the table is bounded ([`MAX_OWNERS`]);
//! * **calls** — the Context of a call's first write is resolved to its owner when the
//!   write is reported (before any later reuse), and remembered per connection by the
//!   write's kernel time, which is the call's start.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use hashbrown::HashMap;
use serde::Serialize;

use crate::capture::stream::Segment;

/// A copy at most this long after the read that armed its thread claims the request.
pub const CLAIM_WINDOW_NS: u64 = 20_000_000;
/// Owners older than this are forgotten (a task that runs longer keeps its calls
/// unresolved, never linked to a recycled Context's new request).
pub const OWNER_TTL: Duration = Duration::from_secs(120);
pub const MAX_OWNERS: usize = 65536;
/// Calls' write Contexts remembered per client connection.
const WRITES_PER_CONN: usize = 8;
const MAX_CONNS: usize = 65536;

/// An inbound request: (server connection id, its order on the connection).
pub type RequestKey = (u64, u32);

/// Which claim of which request a Context belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub request: RequestKey,
    /// The claim that made it; only the request's latest claim counts.
    pub claim: u64,
}

#[derive(Clone, Copy, Debug)]
struct OwnerEntry {
    owner: Owner,
    at: Instant,
}

/// A thread waiting for the Context of a request.
#[derive(Clone, Copy, Debug)]
struct Arm {
    request: RequestKey,
    /// Kernel time of the read that armed it.
    after_ns: u64,
}

/// Copies a pipelined request's task may be: those made from the previous request's
/// Context right after its answer.
const MAX_CANDIDATES: usize = 8;

/// A pipelined request waiting for its Context: its task is created when the previous
/// request's response ends, from inside that request's Context, together with other
/// copies (uvicorn's keep-alive timer, the transport's reader callback, the task's done
/// callback). The task is the candidate whose step runs first: the first candidate that
/// becomes the parent of a copy (or that a write runs in).
#[derive(Clone, Debug)]
struct Pipelined {
    request: RequestKey,
    /// The previous request's claimed Context.
    parent: u64,
    after_ns: u64,
    candidates: Vec<u64>,
}

/// Requests of one server connection of a Python process.
#[derive(Clone, Copy, Debug, Default)]
struct ConnClaims {
    /// Header blocks received (requests, counting pipelined ones).
    heads: u32,
    /// The next request to claim a Context, and requests answered so far.
    next_claim: u32,
    completed: u32,
}

/// A request's current claim and the Context it claimed.
#[derive(Clone, Copy, Debug)]
struct Claim {
    claim: u64,
    context: u64,
}

/// What the Context mapping did (`/metrics`: `hoptrace_python_contexts_total{event}`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PyContextStats {
    pub copies: u64,
    pub claimed: u64,
    pub claimed_pipelined: u64,
    pub inherited: u64,
    /// Copies whose parent belongs to no live request (loop internals, finished requests).
    pub unowned: u64,
    /// Arms that no copy took in time (a read that started no task).
    pub arms_expired: u64,
    /// Contexts re-created at an address that had an owner (freelist reuse).
    pub reused: u64,
    pub writes: u64,
    /// Writes in a Context owned by a request.
    pub writes_owned: u64,
    pub owners_expired: u64,
}

/// The Context → request mapping of every selected Python process.
#[derive(Default)]
pub struct PyContexts {
    owners: HashMap<(u32, u64), OwnerEntry>,
    armed: HashMap<(u32, u32), Arm>,
    pipelined: HashMap<(u32, u32), Pipelined>,
    conns: HashMap<u64, ConnClaims>,
    claims: HashMap<RequestKey, Claim>,
    /// Per client connection: (write kernel time, owner) of its latest writes.
    writes: HashMap<u64, VecDeque<(u64, Owner)>>,
    /// Processes that reported Contexts (only their server reads are looked at), and
    /// whether a request of theirs claimed a Context (an async service: its threads say
    /// nothing about which request a call serves).
    pids: HashMap<u32, bool>,
    next_claim: u64,
    pub stats: PyContextStats,
}

impl PyContexts {
    /// Whether `pid` reported Contexts (a selected Python process).
    pub fn tracks(&self, pid: u32) -> bool {
        !self.pids.is_empty() && self.pids.contains_key(&pid)
    }

    /// Whether requests of `pid` claimed Contexts: its calls are linked by Context only.
    pub fn links_by_context(&self, pid: u32) -> bool {
        self.pids.get(&pid).copied().unwrap_or(false)
    }

    /// Inbound bytes on server connection `conn_id` of `pid`: a read that completes a
    /// header block while no request is in flight arms its thread.
    pub fn on_inbound(&mut self, pid: u32, conn_id: u64, segs: &[Segment]) {
        for s in segs {
            let Segment::Data { tid, ts_ns, bytes, .. } = s else { continue };
            let heads = header_ends(bytes);
            if heads == 0 {
                continue;
            }
            let c = self.conns.entry(conn_id).or_default();
            let idle = c.next_claim == c.completed;
            c.heads = c.heads.max(c.completed).saturating_add(heads);
            if idle {
                let request = (conn_id, c.next_claim);
                self.armed.insert((pid, *tid), Arm { request, after_ns: *ts_ns });
            }
        }
    }

    /// `PyContext_CopyCurrent` returned `context` on thread `(pid, tid)` in `parent`.
    pub fn on_copied(&mut self, pid: u32, tid: u32, ts_ns: u64, context: u64, parent: u64) {
        self.stats.copies += 1;
        if self.pids.len() < 4096 && !self.pids.contains_key(&pid) {
            self.pids.insert(pid, false);
        }
        if self.owners.remove(&(pid, context)).is_some() {
            self.stats.reused += 1;
        }
        if let Some(owner) = self.try_claim(pid, tid, ts_ns, context) {
            self.pids.insert(pid, true);
            self.insert_owner(pid, context, owner);
            return;
        }
        self.resolve_pipelined(pid, tid, parent);
        if self.pipelined_candidate(pid, tid, ts_ns, context, parent) {
            return;
        }
        match self.owners.get(&(pid, parent)).map(|e| e.owner) {
            Some(o) if self.live(o) => {
                self.stats.inherited += 1;
                self.insert_owner(pid, context, o);
            }
            _ => self.stats.unowned += 1,
        }
    }

    /// The armed request of the thread, when this copy takes it.
    fn try_claim(&mut self, pid: u32, tid: u32, ts_ns: u64, context: u64) -> Option<Owner> {
        let arm = *self.armed.get(&(pid, tid))?;
        if ts_ns < arm.after_ns {
            return None;
        }
        if ts_ns - arm.after_ns > CLAIM_WINDOW_NS {
            self.armed.remove(&(pid, tid));
            self.stats.arms_expired += 1;
            return None;
        }
        self.armed.remove(&(pid, tid));
        let owner = self.claim(arm.request, context)?;
        self.stats.claimed += 1;
        Some(owner)
    }

    /// Gives `request` the Context `context`, if it is its connection's next to claim.
    fn claim(&mut self, request: RequestKey, context: u64) -> Option<Owner> {
        let c = self.conns.entry(request.0).or_default();
        if c.next_claim != request.1 {
            return None;
        }
        c.next_claim += 1;
        self.next_claim += 1;
        let owner = Owner { request, claim: self.next_claim };
        self.claims.insert(request, Claim { claim: owner.claim, context });
        Some(owner)
    }

    /// A copy made from `parent` on thread `(pid, tid)`: when `parent` is a candidate of
    /// the thread's pipelined request, it is that request's task Context.
    fn resolve_pipelined(&mut self, pid: u32, tid: u32, parent: u64) {
        let Some(p) = self.pipelined.get(&(pid, tid)) else { return };
        if !p.candidates.contains(&parent) {
            return;
        }
        let request = p.request;
        self.pipelined.remove(&(pid, tid));
        if let Some(owner) = self.claim(request, parent) {
            self.stats.claimed += 1;
            self.stats.claimed_pipelined += 1;
            self.insert_owner(pid, parent, owner);
        }
    }

    /// A copy made from the previous request's Context right after its answer, while a
    /// pipelined request waits: a candidate, owned by nobody yet.
    fn pipelined_candidate(&mut self, pid: u32, tid: u32, ts_ns: u64, context: u64, parent: u64) -> bool {
        let Some(p) = self.pipelined.get_mut(&(pid, tid)) else { return false };
        if ts_ns.saturating_sub(p.after_ns) > CLAIM_WINDOW_NS {
            self.pipelined.remove(&(pid, tid));
            self.stats.arms_expired += 1;
            return false;
        }
        if parent != p.parent || ts_ns < p.after_ns || p.candidates.len() >= MAX_CANDIDATES {
            return false;
        }
        p.candidates.push(context);
        true
    }

    fn insert_owner(&mut self, pid: u32, context: u64, owner: Owner) {
        if self.owners.len() >= MAX_OWNERS {
            self.expire_owners(Duration::from_secs(10));
            if self.owners.len() >= MAX_OWNERS {
                self.stats.owners_expired += self.owners.len() as u64;
                self.owners.clear();
            }
        }
        self.owners.insert((pid, context), OwnerEntry { owner, at: Instant::now() });
    }

    /// The owner is its request's current claim, and the request is not answered yet.
    fn live(&self, o: Owner) -> bool {
        self.current(o) && self.conns.get(&o.request.0).is_none_or(|c| c.completed <= o.request.1)
    }

    /// The owner is its request's current claim.
    pub fn current(&self, o: Owner) -> bool {
        self.claims.get(&o.request).is_some_and(|c| c.claim == o.claim)
    }

    /// A write of thread `(pid, _)` on client connection `conn_id`, entered at
    /// `ts_enter_ns`, ran in `context`: its owner is fixed now.
    pub fn on_write(&mut self, pid: u32, tid: u32, conn_id: u64, ts_enter_ns: u64, context: u64) {
        self.stats.writes += 1;
        self.resolve_pipelined(pid, tid, context);
        let Some(owner) = self.owners.get(&(pid, context)).map(|e| e.owner) else { return };
        if !self.current(owner) {
            return;
        }
        self.stats.writes_owned += 1;
        if self.writes.len() >= MAX_CONNS && !self.writes.contains_key(&conn_id) {
            self.writes.clear();
        }
        let w = self.writes.entry(conn_id).or_default();
        if w.len() >= WRITES_PER_CONN {
            w.pop_front();
        }
        w.push_back((ts_enter_ns, owner));
    }

    /// The owner of the call on `conn_id` whose first write entered at `start_ns`.
    pub fn call_owner(&self, conn_id: u64, start_ns: u64) -> Option<Owner> {
        let w = self.writes.get(&conn_id)?;
        w.iter().rev().find(|(ts, _)| *ts == start_ns).map(|(_, o)| *o).filter(|o| self.current(*o))
    }

    /// The current claim of request `request`, if its Context was claimed.
    pub fn claim_of(&self, request: RequestKey) -> Option<Owner> {
        self.claims.get(&request).map(|c| Owner { request, claim: c.claim })
    }

    /// Request `seq` of `conn_id` was answered, its response's last write by thread
    /// `(pid, tid)` returning at `end_ns`. A request already received behind it (pipelined)
    /// gets its task now, from inside this one's: the thread is armed for it.
    pub fn on_answered(&mut self, pid: u32, tid: u32, conn_id: u64, seq: u32, end_ns: u64) {
        let Some(c) = self.conns.get_mut(&conn_id) else { return };
        c.completed = c.completed.max(seq + 1);
        // Requests never claimed (their copy was missed) are skipped.
        c.next_claim = c.next_claim.max(c.completed);
        if c.heads > c.completed && c.next_claim == c.completed {
            let parent = self.claims.get(&(conn_id, seq)).map(|cl| cl.context);
            if let Some(parent) = parent {
                let request = (conn_id, c.completed);
                let p = Pipelined { request, parent, after_ns: end_ns, candidates: Vec::new() };
                self.pipelined.insert((pid, tid), p);
            }
        }
    }

    /// A connection left the table.
    pub fn forget_conn(&mut self, conn_id: u64) {
        self.conns.remove(&conn_id);
        self.writes.remove(&conn_id);
    }

    /// A process exited.
    pub fn forget_pid(&mut self, pid: u32) {
        if self.pids.remove(&pid).is_some() {
            self.owners.retain(|(p, _), _| *p != pid);
            self.armed.retain(|(p, _), _| *p != pid);
            self.pipelined.retain(|(p, _), _| *p != pid);
        }
    }

    /// Once a second: old owners and claims go.
    pub fn tick(&mut self) {
        self.expire_owners(OWNER_TTL);
        if self.claims.len() > MAX_OWNERS {
            self.claims.clear();
        }
    }

    fn expire_owners(&mut self, ttl: Duration) {
        let before = self.owners.len();
        self.owners.retain(|_, e| e.at.elapsed() <= ttl);
        self.stats.owners_expired += (before - self.owners.len()) as u64;
        let claims: std::collections::HashSet<RequestKey> = self.owners.values().map(|e| e.owner.request).collect();
        self.claims.retain(|k, _| claims.contains(k) || self.conns.contains_key(&k.0));
    }
}

/// How many header blocks end in `bytes` (`\r\n\r\n`); bodies containing that sequence
/// over-count, which only arms a thread that no copy then takes in time.
fn header_ends(bytes: &[u8]) -> u32 {
    bytes.windows(4).filter(|w| w == b"\r\n\r\n").count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(tid: u32, ts: u64, bytes: &[u8]) -> Vec<Segment> {
        vec![Segment::Data { offset: 0, ts_enter_ns: ts, ts_ns: ts, tid, bytes: bytes.to_vec() }]
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn the_first_copy_after_a_request_read_claims_it_and_children_inherit() {
        let mut p = PyContexts::default();
        p.on_copied(1, 1, 5, 0xa0, 0); // before any request: nobody's
        p.on_inbound(1, 7, &read(1, 10, GET));
        p.on_copied(1, 1, 20, 0x100, 0xa0);
        p.on_copied(1, 1, 30, 0x200, 0x100); // a task the request created
        p.on_copied(1, 2, 40, 0x300, 0x200); // thread-pool work
        p.on_write(1, 1, 99, 50, 0x300);
        let o = p.call_owner(99, 50).expect("owned");
        assert_eq!(o.request, (7, 0));
        assert_eq!(p.call_owner(99, 51), None);
        assert_eq!((p.stats.claimed, p.stats.inherited, p.stats.unowned), (1, 2, 1));
    }

    #[test]
    fn copies_from_an_answered_request_belong_to_nothing() {
        let mut p = PyContexts::default();
        p.on_inbound(1, 7, &read(1, 10, GET));
        p.on_copied(1, 1, 20, 0x100, 0);
        p.on_answered(1, 1, 7, 0, 25);
        p.on_copied(1, 1, 30, 0x200, 0x100);
        p.on_write(1, 1, 99, 50, 0x200);
        assert_eq!(p.call_owner(99, 50), None);
        // The request's own Context still says it (a call completing after the answer).
        p.on_write(1, 1, 98, 60, 0x100);
        assert_eq!(p.call_owner(98, 60).map(|o| o.request), Some((7, 0)));
    }

    #[test]
    fn a_reused_context_address_forgets_its_old_request() {
        let mut p = PyContexts::default();
        p.on_inbound(1, 7, &read(1, 10, GET));
        p.on_copied(1, 1, 20, 0x100, 0);
        p.on_answered(1, 1, 7, 0, 25);
        // Freed and re-created by a copy nobody claims.
        p.on_copied(1, 1, 40, 0x100, 0x50);
        p.on_write(1, 1, 99, 50, 0x100);
        assert_eq!(p.call_owner(99, 50), None);
        assert_eq!(p.stats.reused, 1);
    }

    #[test]
    fn an_arm_no_copy_takes_in_time_expires() {
        let mut p = PyContexts::default();
        p.on_inbound(1, 7, &read(1, 10, GET));
        p.on_copied(1, 1, 10 + CLAIM_WINDOW_NS + 1, 0x100, 0);
        assert_eq!((p.stats.claimed, p.stats.arms_expired), (0, 1));
    }

    #[test]
    fn a_body_read_while_a_request_is_in_flight_claims_nothing() {
        let mut p = PyContexts::default();
        p.on_inbound(1, 7, &read(1, 10, b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"));
        p.on_copied(1, 1, 20, 0x100, 0);
        p.on_inbound(1, 7, &read(1, 30, b"x\r\n\r\nyyyy"));
        p.on_copied(1, 1, 40, 0x200, 0x999);
        assert_eq!(p.stats.claimed, 1);
    }

    #[test]
    fn pipelined_requests_claim_the_copy_made_at_the_previous_answer() {
        let mut p = PyContexts::default();
        let two = [GET, GET].concat();
        p.on_inbound(1, 7, &read(1, 10, &two));
        p.on_copied(1, 1, 20, 0x100, 0);
        // Inside request 0: a task of its own (inherits, before the answer).
        p.on_copied(1, 1, 30, 0x200, 0x100);
        p.on_answered(1, 1, 7, 0, 40);
        // The copies made at the answer from request 0's Context: a timer, the reader
        // callback, request 1's task, its done callback. None owned yet.
        for (ts, ctx) in [(41, 0x300), (42, 0x310), (43, 0x400), (44, 0x320)] {
            p.on_copied(1, 1, ts, ctx, 0x100);
        }
        // A copy made elsewhere resolves nothing.
        p.on_copied(1, 1, 45, 0x500, 0x777);
        // The task's first step runs first and copies: the task's Context is request 1's.
        p.on_copied(1, 1, 50, 0x600, 0x400);
        p.on_write(1, 1, 99, 60, 0x600);
        assert_eq!(p.call_owner(99, 60).map(|o| o.request), Some((7, 1)));
        p.on_write(1, 1, 98, 61, 0x310);
        assert_eq!(p.call_owner(98, 61), None, "the reader callback's Context is nobody's");
        assert_eq!(p.stats.claimed_pipelined, 1);
    }

    #[test]
    fn a_second_claim_of_a_request_invalidates_the_first() {
        let mut p = PyContexts::default();
        p.on_inbound(1, 7, &read(1, 10, GET));
        p.on_copied(1, 1, 20, 0x100, 0);
        let first = p.claim_of((7, 0)).unwrap();
        p.claims.insert((7, 0), Claim { claim: 99, context: 0x500 });
        assert!(!p.current(first));
        p.on_write(1, 1, 99, 50, 0x100);
        assert_eq!(p.call_owner(99, 50), None);
    }
}
