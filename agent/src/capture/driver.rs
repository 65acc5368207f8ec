//! The capture loop shared by every command: drain the ring buffer, decode, update the
//! connection table, and hand what happened to a [`Consumer`] (the JSON printer of
//! `hoptrace capture`, or the trace pipeline of `hoptrace run`).
//!
//! The kernel side rarely wakes the loop (see `ring_flags` in ebpf/programs), so it polls
//! on a 10 ms timer, which bounds the added latency.

use std::{
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    capture::conntrack::{ConnTable, Connection, TableStats},
    capture::counters::Counters,
    capture::events::{decode, Close, ConnectFailed, Data, Event, Open},
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

pub struct Driver {
    pub table: ConnTable,
    pub counters: Counters,
    segs: Vec<Segment>,
    /// Work for `tls` found while draining the ring (it needs the loader, which the ring
    /// borrows): exec'd processes, and processes that started a TLS handshake.
    execs: Vec<u32>,
    handshakes: Vec<u32>,
}

impl Driver {
    pub fn new(table: ConnTable) -> Self {
        Self { table, counters: Counters::default(), segs: Vec::new(), execs: Vec::new(), handshakes: Vec::new() }
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
                let conn = self.table.on_open(&ev);
                c.open(&ev, conn)?;
            }
            Event::Exec(ev) => {
                self.counters.exec_records += 1;
                if self.execs.len() < 4096 {
                    self.execs.push(ev.pid);
                }
            }
            Event::Data(d) => self.data(&d, c)?,
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
        for mut conn in conns {
            let mut flushed: [Vec<Segment>; 2] = Default::default();
            conn.streams[0].flush(&mut flushed[0]);
            conn.streams[1].flush(&mut flushed[1]);
            self.count(&flushed[0]);
            self.count(&flushed[1]);
            c.closed(&conn, None, &flushed)?;
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
        c.tick(&self.counters, &self.table.stats, self.table.len())
    }

    /// Runs until SIGINT/SIGTERM or `duration`, then drains everything.
    pub fn run(&mut self, capture: &mut Capture, duration: Option<Duration>, c: &mut dyn Consumer) -> Result<()> {
        let deadline = duration.map(|d| Instant::now() + d);
        let mut last_tick = Instant::now();
        let fd = capture.loaded.ring.as_raw_fd();
        // Ring fill high-water mark for /metrics; without it only overflows are visible.
        let fill = crate::capture::ringfill::RingFill::open(fd).ok();
        loop {
            if STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10) };
            if let Some(f) = &fill {
                f.observe();
            }
            while let Some(item) = capture.loaded.ring.next() {
                self.record(&item, c)?;
            }
            self.tls_work(capture);
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                let idle = self.table.evict_idle();
                self.retire(idle, c)?;
                self.publish(capture, c)?;
            }
        }
        while let Some(item) = capture.loaded.ring.next() {
            self.record(&item, c)?;
        }
        if let Some(tls) = &capture.tls {
            self.counters.tls = tls.stats.clone();
        }
        let rest = self.table.drain();
        self.retire(rest, c)
    }
}
