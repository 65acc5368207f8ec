//! The capture loop shared by every command: drain the ring buffer, decode, update the
//! connection table, and hand what happened to a [`Consumer`] (the JSON printer of
//! `hoptrace capture`, or the trace pipeline of `hoptrace run`).
//!
//! The kernel side rarely wakes the loop (see `ring_flags` in ebpf/programs), so it polls
//! on a 10 ms timer, which bounds the added latency.
//!
//! Each drain of the ring is bounded in time ([`DRAIN_BUDGET`]): under sustained load the
//! ring never empties, and an unbounded drain would never reach the once-a-second tick
//! (idle eviction, held-call expiry, counters, the [`Heartbeat`] behind `/healthz`) nor
//! notice a stop request.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    capture::conntrack::{ConnTable, Connection, TableStats},
    capture::counters::Counters,
    capture::events::{decode, AppLog, Close, ConnectFailed, Data, Event, Exec, Exit, Open, PyContext},
    capture::heartbeat::Heartbeat,
    capture::stream::{GapReason, Segment},
    capture::Capture,
};

pub trait Consumer {
    /// A process attached to a connection (`conn` is None when the table refused it).
    fn open(&mut self, ev: &Open, conn: Option<&Connection>) -> Result<()>;
    /// A data record; `segs` are the stream segments it made available, in order.
    fn data(&mut self, d: &Data, conn: &Connection, segs: &[Segment]) -> Result<()>;
    /// A connection left the table (closed, idle, shutdown) with its last segments.
    fn closed(&mut self, conn: &Connection, ev: Option<&Close>, flushed: &[Vec<Segment>; 2]) -> Result<()>;
    /// An outgoing connection attempt failed (`conn` when connect() had returned already).
    fn connect_failed(&mut self, _ev: &ConnectFailed, _conn: Option<&Connection>) -> Result<()> {
        Ok(())
    }
    /// A process called exec() (jobs and environment trace context are read then).
    fn exec(&mut self, _ev: &Exec) -> Result<()> {
        Ok(())
    }
    /// A process is exiting. True asks for its connections to leave the table now (their
    /// open calls end at the exit), for processes whose calls the consumer follows.
    fn exiting(&mut self, _ev: &Exit) -> bool {
        false
    }
    /// A process exited (after its connections were retired, when asked).
    fn exited(&mut self, _ev: &Exit) -> Result<()> {
        Ok(())
    }
    /// A chunk of a selected process's stdout/stderr write (`--app-logs`).
    /// What a thread of a selected Python process was running in.
    fn py_context(&mut self, _ev: &PyContext) -> Result<()> {
        Ok(())
    }
    fn app_log(&mut self, _ev: &AppLog) -> Result<()> {
        Ok(())
    }
    /// Once a second, with the capture counters and the connection table's.
    fn tick(&mut self, _counters: &Counters, _table: &TableStats, _tracked: usize) -> Result<()> {
        Ok(())
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ends the loop from another thread (as SIGINT would).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM end the loop cleanly (final flush and stats).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Longest one drain of the ring runs before the loop ticks (if due) and polls again.
pub const DRAIN_BUDGET: Duration = Duration::from_millis(100);
/// At shutdown the ring is drained once more, but not forever while producers go on.
const FINAL_DRAIN_BUDGET: Duration = Duration::from_secs(2);
/// Records handled between two looks at the clock while draining (a clock read is ~25 ns,
/// a record at least a few hundred).
const CLOCK_EVERY: u32 = 16;
const TICK: Duration = Duration::from_secs(1);

/// When a drain stops: after `budget` from `start`, looked at every [`CLOCK_EVERY`] records.
struct DrainBudget {
    start: Instant,
    budget: Duration,
    records: u32,
}

impl DrainBudget {
    fn new(budget: Duration) -> Self {
        Self { start: Instant::now(), budget, records: 0 }
    }

    /// One more record handled; true when the drain must stop.
    fn spent(&mut self, now: impl FnOnce() -> Instant) -> bool {
        self.records = self.records.wrapping_add(1);
        self.records.is_multiple_of(CLOCK_EVERY) && now().saturating_duration_since(self.start) >= self.budget
    }
}

pub struct Driver {
    pub table: ConnTable,
    pub counters: Counters,
    /// Beats at every tick; `/healthz` reads it from the endpoint's thread.
    pub heartbeat: Arc<Heartbeat>,
    segs: Vec<Segment>,
    /// Work for `tls` found while draining the ring (it needs the loader, which the ring
    /// borrows): exec'd processes, and processes that started a TLS handshake.
    execs: Vec<u32>,
    handshakes: Vec<u32>,
    /// Exits, and processes that accepted a connection, seen while draining: for the
    /// Python probes.
    exits: Vec<u32>,
    servers: Vec<u32>,
}

impl Driver {
    pub fn new(table: ConnTable) -> Self {
        Self {
            table,
            counters: Counters::default(),
            heartbeat: Arc::default(),
            segs: Vec::new(),
            execs: Vec::new(),
            handshakes: Vec::new(),
            exits: Vec::new(),
            servers: Vec::new(),
        }
    }

    /// Runs the Python probe work collected while draining the ring (before the TLS work,
    /// which empties the exec list).
    fn python_work(&mut self, capture: &mut Capture) {
        let Some(py) = capture.python.as_mut() else {
            self.exits.clear();
            self.servers.clear();
            return;
        };
        for &pid in &self.execs {
            py.on_exec(&mut capture.loaded.ebpf, pid);
        }
        for pid in self.exits.drain(..) {
            py.on_exit(&mut capture.loaded.ebpf, pid);
        }
        for pid in self.servers.drain(..) {
            py.on_server(&mut capture.loaded.ebpf, pid);
        }
    }

    /// Runs the TLS work collected while draining the ring.
    fn tls_work(&mut self, capture: &mut Capture) {
        let Some(tls) = capture.tls.as_mut() else {
            self.execs.clear();
            self.handshakes.clear();
            return;
        };
        for pid in self.execs.drain(..) {
            tls.on_exec(pid);
        }
        for pid in self.handshakes.drain(..) {
            tls.on_handshake(&mut capture.loaded.ebpf, pid);
        }
        tls.tick(&mut capture.loaded.ebpf);
    }

    fn count(&mut self, segs: &[Segment]) {
        for s in segs {
            match s {
                Segment::Data { bytes, .. } => self.counters.bytes_captured += bytes.len() as u64,
                Segment::Gap { len, reason: GapReason::NotCaptured, .. } => self.counters.bytes_not_captured += len,
                Segment::Gap { len, reason: GapReason::Lost, .. } => self.counters.bytes_lost += len,
            }
        }
    }

    fn record(&mut self, record: &[u8], c: &mut dyn Consumer) -> Result<()> {
        self.counters.records_total += 1;
        let Ok(event) = decode(record) else {
            self.counters.decode_errors += 1;
            return Ok(());
        };
        match event {
            Event::Open(ev) => {
                self.counters.open_records += 1;
                if ev.role == hoptrace_common::Role::Server
                    && self.servers.len() < 4096
                    && self.servers.last() != Some(&ev.pid)
                {
                    self.servers.push(ev.pid);
                }
                let conn = self.table.on_open(&ev);
                c.open(&ev, conn)?;
            }
            Event::Exec(ev) => {
                self.counters.exec_records += 1;
                if self.execs.len() < 4096 {
                    self.execs.push(ev.pid);
                }
                c.exec(&ev)?;
            }
            Event::Exit(ev) => {
                self.counters.exit_records += 1;
                if self.exits.len() < 4096 {
                    self.exits.push(ev.pid);
                }
                if c.exiting(&ev) {
                    let conns = self.table.take_process(ev.pid);
                    self.retire_at(conns, Some(ev.ts_ns), c)?;
                }
                c.exited(&ev)?;
            }
            Event::Data(d) => self.data(&d, c)?,
            Event::PyContext(ev) => {
                self.counters.py_context_records += 1;
                c.py_context(&ev)?;
            }
            Event::AppLog(ev) => {
                self.counters.app_log_records += 1;
                c.app_log(&ev)?;
            }
            Event::ConnectFailed(ev) => {
                self.counters.connect_failed_records += 1;
                let conn = ev.conn_id.and_then(|id| self.table.get(id));
                c.connect_failed(&ev, conn)?;
            }
            Event::Close(ev) => self.close(&ev, c)?,
        }
        Ok(())
    }

    fn data(&mut self, d: &Data, c: &mut dyn Consumer) -> Result<()> {
        self.counters.data_records += 1;
        // The first bytes of a socket's stream are a TLS handshake: ciphertext. If no
        // OpenSSL probe covers the process, that must be said, not missed.
        if d.call_offset == 0
            && d.chunk_offset == 0
            && !d.is_tls_plaintext()
            && crate::capture::tls::looks_like_tls_handshake(d.payload)
            && self.handshakes.len() < 4096
        {
            self.handshakes.push(d.pid);
        }
        let mut segs = std::mem::take(&mut self.segs);
        segs.clear();
        if let Some(conn) = self.table.on_data(d, &mut segs) {
            c.data(d, conn, &segs)?;
        }
        self.count(&segs);
        self.segs = segs;
        Ok(())
    }

    fn close(&mut self, ev: &Close, c: &mut dyn Consumer) -> Result<()> {
        self.counters.close_records += 1;
        let mut flushed: [Vec<Segment>; 2] = Default::default();
        if let Some(conn) = self.table.on_close(ev, &mut flushed) {
            self.count(&flushed[0]);
            self.count(&flushed[1]);
            c.closed(&conn, Some(ev), &flushed)?;
        }
        // The connection's TLS plaintext view closes with it.
        let mut flushed: [Vec<Segment>; 2] = Default::default();
        if let Some(conn) = self.table.close_tls_view(ev.conn_id, &mut flushed) {
            self.count(&flushed[0]);
            self.count(&flushed[1]);
            c.closed(&conn, Some(ev), &flushed)?;
        }
        Ok(())
    }

    fn retire(&mut self, conns: Vec<Connection>, c: &mut dyn Consumer) -> Result<()> {
        self.retire_at(conns, None, c)
    }

    /// Retires `conns`; `at` (kernel time) is when they ended, when known: a process exit
    /// closes its sockets without a close() record, so the agent makes one, with no byte
    /// totals (the kernel sent none).
    fn retire_at(&mut self, conns: Vec<Connection>, at: Option<u64>, c: &mut dyn Consumer) -> Result<()> {
        for mut conn in conns {
            let mut flushed: [Vec<Segment>; 2] = Default::default();
            conn.streams[0].flush(&mut flushed[0]);
            conn.streams[1].flush(&mut flushed[1]);
            self.count(&flushed[0]);
            self.count(&flushed[1]);
            let made = at.map(|ts_ns| Close {
                conn_id: conn.id,
                pid: conn.pid,
                tid: conn.pid,
                fd: -1,
                ts_ns,
                bytes_egress: 0,
                bytes_ingress: 0,
            });
            c.closed(&conn, made.as_ref(), &flushed)?;
        }
        Ok(())
    }

    /// Hands the counters to the consumer (the `/metrics` samples): once a second while
    /// running, and once before the agent says it is ready, so every series exists from
    /// the first scrape on.
    pub fn publish(&mut self, capture: &Capture, c: &mut dyn Consumer) -> Result<()> {
        if let Some(tls) = &capture.tls {
            self.counters.tls = tls.stats.clone();
        }
        if let Some(py) = &capture.python {
            self.counters.python = py.stats.clone();
        }
        c.tick(&self.counters, &self.table.stats, self.table.len())
    }

    /// Handles ring records until the ring is empty (false) or `budget` is spent (true:
    /// records are left).
    fn drain(&mut self, capture: &mut Capture, c: &mut dyn Consumer, budget: Duration) -> Result<bool> {
        let mut spent = DrainBudget::new(budget);
        while let Some(item) = capture.loaded.ring.next() {
            self.record(&item, c)?;
            if spent.spent(Instant::now) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The once-a-second step: idle connections leave, the consumer ticks (held calls
    /// expire, counters are published), and the heartbeat beats.
    fn tick(&mut self, capture: &Capture, c: &mut dyn Consumer) -> Result<()> {
        let idle = self.table.evict_idle();
        self.retire(idle, c)?;
        self.counters.loop_ticks += 1;
        self.publish(capture, c)?;
        self.heartbeat.beat();
        Ok(())
    }

    /// Runs until SIGINT/SIGTERM or `duration`, then drains what is left (for at most
    /// [`FINAL_DRAIN_BUDGET`]) and retires every connection.
    pub fn run(&mut self, capture: &mut Capture, duration: Option<Duration>, c: &mut dyn Consumer) -> Result<()> {
        let deadline = duration.map(|d| Instant::now() + d);
        let mut last_tick = Instant::now();
        let fd = capture.loaded.ring.as_raw_fd();
        // Ring fill high-water mark for /metrics; without it only overflows are visible.
        let fill = crate::capture::ringfill::RingFill::open(fd).ok();
        let mut backlog = false;
        loop {
            if STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if !backlog {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 10) };
            }
            if let Some(f) = &fill {
                f.observe();
            }
            backlog = self.drain(capture, c, DRAIN_BUDGET)?;
            self.counters.drains_bounded += u64::from(backlog);
            self.python_work(capture);
            self.tls_work(capture);
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick(capture, c)?;
            }
        }
        self.drain(capture, c, FINAL_DRAIN_BUDGET)?;
        if let Some(tls) = &capture.tls {
            self.counters.tls = tls.stats.clone();
        }
        let rest = self.table.drain();
        self.retire(rest, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_stops_at_its_budget_looking_at_the_clock_every_few_records() {
        let mut b = DrainBudget::new(Duration::from_millis(100));
        let start = b.start;
        let looked = std::cell::Cell::new(0);
        let clock = |t: u64| {
            looked.set(looked.get() + 1);
            start + Duration::from_millis(t)
        };
        // Within budget: never spent, and the clock read once per CLOCK_EVERY records.
        for _ in 0..CLOCK_EVERY * 4 {
            assert!(!b.spent(|| clock(99)));
        }
        assert_eq!(looked.get(), 4);
        // Past it: spent at the next look, not before.
        for _ in 1..CLOCK_EVERY {
            assert!(!b.spent(|| clock(100)));
        }
        assert!(b.spent(|| clock(100)));
    }
}
