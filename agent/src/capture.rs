//! `hoptrace capture`: the capture path end to end, printed as JSON lines.
//!
//! kernel records → `events::decode` → `conntrack::ConnTable` (streams) → one JSON line per
//! open / syscall / close. Payload bytes never appear unless `--show-payload` (a short
//! printable prefix) or `--dump-dir` (raw streams in local files) is asked for explicitly.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use hoptrace_common::{Direction, Syscall, DEFAULT_CAPTURE_CAP};
use serde_json::{json, Value};

use crate::{
    clock::Clock,
    conntrack::{role_name, ConnTable, Connection, Limits},
    counters::Counters,
    events::{decode, Event},
    loader::{self, CaptureOptions, Filters},
    stream::{GapReason, Segment},
};

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Capture only connections with this local or remote port (repeatable).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Never capture connections with this local or remote port (repeatable).
    #[arg(long = "exclude-port")]
    pub exclude_ports: Vec<u16>,
    /// Capture only these processes (tgid; repeatable).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Never capture these processes (repeatable).
    #[arg(long = "exclude-pid")]
    pub exclude_pids: Vec<u32>,
    /// Capture only processes in these cgroup v2 directories (repeatable).
    #[arg(long = "cgroup")]
    pub cgroups: Vec<PathBuf>,
    /// Never capture processes in these cgroup v2 directories (repeatable).
    #[arg(long = "exclude-cgroup")]
    pub exclude_cgroups: Vec<PathBuf>,
    /// Bytes copied per syscall at most; the rest is accounted for, not copied.
    #[arg(long, default_value_t = DEFAULT_CAPTURE_CAP)]
    pub capture_cap: u32,
    /// Kernel ring buffer size in bytes (rounded up to a power of two).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub ringbuf_size: u32,
    /// Most connections tracked at once; more are refused and counted.
    #[arg(long, default_value_t = 65536)]
    pub max_connections: usize,
    /// Seconds without traffic after which a connection is forgotten.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Exit after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print a stats line every N seconds (one is always printed at exit).
    #[arg(long)]
    pub stats_interval: Option<f64>,
    /// Add a short printable payload prefix to data lines (local debugging only).
    #[arg(long)]
    pub show_payload: bool,
    /// Write each connection's reassembled streams to DIR/<conn_id>-<direction>.bin.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// Do not mount tracefs when it is missing; fail instead.
    #[arg(long)]
    pub no_mount_tracefs: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

const PREFIX_LEN: usize = 80;

fn printable_prefix(b: &[u8]) -> String {
    b.iter()
        .take(PREFIX_LEN)
        .map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { '.' })
        .collect()
}

fn direction_name(d: u8) -> &'static str {
    if d == Direction::Ingress as u8 {
        "ingress"
    } else {
        "egress"
    }
}

struct Printer<W: Write> {
    out: W,
    clock: Clock,
    show_payload: bool,
    dump_dir: Option<PathBuf>,
    dumps: HashMap<(u64, usize), File>,
    counters: Counters,
}

impl<W: Write> Printer<W> {
    fn line(&mut self, v: Value) -> Result<()> {
        serde_json::to_writer(&mut self.out, &v)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn conn_fields(c: &Connection, v: &mut Value) {
        v["role"] = json!(role_name(c.role));
        v["local_addr"] = json!(c.tuple.local.ip().to_string());
        v["local_port"] = json!(c.tuple.local.port());
        v["remote_addr"] = json!(c.tuple.remote.ip().to_string());
        v["remote_port"] = json!(c.tuple.remote.port());
    }

    fn segments(&mut self, conn_id: u64, dir: usize, segs: &[Segment]) -> Result<()> {
        for s in segs {
            match s {
                Segment::Data { bytes, .. } => {
                    self.counters.bytes_captured += bytes.len() as u64;
                    if let Some(dir_path) = &self.dump_dir {
                        let file = match self.dumps.entry((conn_id, dir)) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                let name = format!("{conn_id}-{}.bin", direction_name(dir as u8));
                                let path = dir_path.join(name);
                                e.insert(File::create(&path).with_context(|| format!("creating {}", path.display()))?)
                            }
                        };
                        file.write_all(bytes)?;
                    }
                }
                Segment::Gap { len, reason: GapReason::NotCaptured, .. } => self.counters.bytes_not_captured += len,
                Segment::Gap { len, reason: GapReason::Lost, .. } => self.counters.bytes_lost += len,
            }
        }
        Ok(())
    }

    fn handle(&mut self, table: &mut ConnTable, record: &[u8], segs: &mut Vec<Segment>) -> Result<()> {
        self.counters.records_total += 1;
        let event = match decode(record) {
            Ok(e) => e,
            Err(_) => {
                self.counters.decode_errors += 1;
                return Ok(());
            }
        };
        match event {
            Event::Open(ev) => {
                self.counters.open_records += 1;
                let Some(c) = table.on_open(&ev) else { return Ok(()) };
                let mut v = json!({
                    "event": "open",
                    "ts": self.clock.to_unix_ns(ev.ts_ns),
                    "conn_id": ev.conn_id,
                    "pid": ev.pid,
                    "tid": ev.tid,
                    "ppid": ev.ppid,
                    "comm": c.comm,
                    "fd": ev.fd,
                    "via": Syscall::from_u8(ev.via).map(Syscall::name).unwrap_or("unknown"),
                    "role_source": c.role_source,
                    "family": if ev.family == 10 { "ipv6" } else { "ipv4" },
                    "cgroup_id": ev.cgroup_id,
                });
                Self::conn_fields(c, &mut v);
                self.line(v)?;
            }
            Event::Data { header: h, payload } => {
                self.counters.data_records += 1;
                segs.clear();
                let Some(c) = table.on_data(&h, payload, segs) else { return Ok(()) };
                if h.chunk_offset == 0 {
                    let mut v = json!({
                        "event": "data",
                        "ts": self.clock.to_unix_ns(h.ts_exit_ns),
                        "conn_id": h.conn_id,
                        "pid": h.pid,
                        "tid": h.tid,
                        "fd": h.fd,
                        "comm": c.comm,
                        "direction": direction_name(h.direction),
                        "syscall": Syscall::from_u8(h.syscall).map(Syscall::name).unwrap_or("unknown"),
                        "len": h.call_len,
                        "captured": h.call_captured,
                        "stream_offset": h.call_offset,
                        "duration_ns": h.ts_exit_ns.saturating_sub(h.ts_enter_ns),
                    });
                    Self::conn_fields(c, &mut v);
                    if self.show_payload {
                        v["payload_prefix"] = json!(printable_prefix(payload));
                    }
                    self.line(v)?;
                }
                let segs_now = std::mem::take(segs);
                self.segments(h.conn_id, (h.direction & 1) as usize, &segs_now)?;
                *segs = segs_now;
            }
            Event::Close(ev) => {
                self.counters.close_records += 1;
                let mut flushed: [Vec<Segment>; 2] = Default::default();
                let closed = table.on_close(&ev, &mut flushed);
                for (dir, s) in flushed.iter().enumerate() {
                    self.segments(ev.conn_id, dir, s)?;
                    self.dumps.remove(&(ev.conn_id, dir));
                }
                if closed.is_some() {
                    self.line(json!({
                        "event": "close",
                        "ts": self.clock.to_unix_ns(ev.ts_ns),
                        "conn_id": ev.conn_id,
                        "pid": ev.pid,
                        "tid": ev.tid,
                        "fd": ev.fd,
                        "bytes_egress": ev.bytes_egress,
                        "bytes_ingress": ev.bytes_ingress,
                    }))?;
                }
            }
        }
        Ok(())
    }

    /// Connections leaving the table without a close record (idle, shutdown).
    fn retire(&mut self, conns: Vec<Connection>) -> Result<()> {
        for mut c in conns {
            for dir in 0..2 {
                let mut segs = Vec::new();
                c.streams[dir].flush(&mut segs);
                self.segments(c.id, dir, &segs)?;
                self.dumps.remove(&(c.id, dir));
            }
        }
        Ok(())
    }
}

pub fn run(args: CaptureArgs) -> Result<()> {
    install_signal_handlers();
    let opts = CaptureOptions {
        capture_cap: args.capture_cap,
        ringbuf_bytes: args.ringbuf_size,
        allow_mount_tracefs: !args.no_mount_tracefs,
        filters: Filters {
            pids: args.pids.clone(),
            exclude_pids: args.exclude_pids.clone(),
            cgroups: args.cgroups.clone(),
            exclude_cgroups: args.exclude_cgroups.clone(),
            ports: args.ports.clone(),
            exclude_ports: args.exclude_ports.clone(),
        },
    };
    if let Some(dir) = &args.dump_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating dump dir {}", dir.display()))?;
    }
    let mut loaded = loader::load(&opts)?;
    let stdout = std::io::stdout();
    let mut p = Printer {
        out: BufWriter::new(stdout.lock()),
        clock: Clock::now(),
        show_payload: args.show_payload,
        dump_dir: args.dump_dir.clone(),
        dumps: HashMap::new(),
        counters: Counters::default(),
    };
    let mut table = ConnTable::new(Limits {
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout),
    });
    p.line(json!({
        "event": "ready",
        "pid": std::process::id(),
        "programs": loaded.attachments,
        "skipped_tracepoints": loaded.skipped,
        "capture_cap": args.capture_cap,
    }))?;
    p.out.flush()?;

    let start = Instant::now();
    let deadline = args.duration.map(|d| start + Duration::from_secs_f64(d));
    let stats_every = args.stats_interval.map(Duration::from_secs_f64);
    let mut last_stats = Instant::now();
    let mut last_housekeeping = Instant::now();
    let mut segs = Vec::new();
    let fd = loaded.ring.as_raw_fd();
    loop {
        if STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // The kernel side rarely wakes us (see ring_flags in ebpf/programs): poll on a
        // 10 ms timer, which bounds the added latency.
        unsafe { libc::poll(&mut pfd, 1, 10) };
        while let Some(item) = loaded.ring.next() {
            p.handle(&mut table, &item, &mut segs)?;
        }
        p.out.flush()?;
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            last_housekeeping = Instant::now();
            let idle = table.evict_idle();
            p.retire(idle)?;
        }
        if stats_every.is_some_and(|every| last_stats.elapsed() >= every) {
            last_stats = Instant::now();
            let drops = loaded.kernel_drops()?;
            let v = p.counters.to_json(&table.stats, table.len(), &drops);
            p.line(v)?;
        }
    }
    while let Some(item) = loaded.ring.next() {
        p.handle(&mut table, &item, &mut segs)?;
    }
    let rest = table.drain();
    p.retire(rest)?;
    let drops = loaded.kernel_drops()?;
    let v = p.counters.to_json(&table.stats, 0, &drops);
    p.line(v)?;
    p.out.flush()?;
    Ok(())
}
