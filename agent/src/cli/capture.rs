//! `hoptrace capture`: the capture path end to end, printed as JSON lines.
//!
//! kernel records → `events::decode` → `conntrack::ConnTable` (streams) → one JSON line per
//! open / syscall / close. Payload bytes never appear unless `--show-payload` (a short
//! printable prefix) or `--dump-dir` (raw streams in local files) is asked for explicitly.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use hoptrace_common::{Direction, DROP_REASONS};
use serde_json::{json, Value};

use crate::{
    capture::conntrack::{role_name, Connection},
    capture::counters::Counters,
    capture::driver::{install_signal_handlers, Consumer, Driver},
    capture::events::{Close, ConnectFailed, Data, Open, PyContext},
    capture::stream::Segment,
    capture::Capture,
    cli::probe::{capture_options, conn_table, ProbeArgs},
    util::clock::Clock,
};

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Print a stats line every N seconds (one is always printed at exit).
    #[arg(long)]
    pub stats_interval: Option<f64>,
    /// Add a short printable payload prefix to data lines (local debugging only).
    #[arg(long)]
    pub show_payload: bool,
    /// Write each connection's reassembled streams to DIR/<conn_id>-<direction>.bin.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
}

const PREFIX_LEN: usize = 80;

fn printable_prefix(b: &[u8]) -> String {
    b.iter().take(PREFIX_LEN).map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { '.' }).collect()
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

struct Printer<W: Write> {
    out: W,
    clock: Clock,
    show_payload: bool,
    dump_dir: Option<PathBuf>,
    dumps: HashMap<(u64, usize), File>,
    stats_every: Option<Duration>,
    last_stats: Instant,
    loaded_drops: Box<dyn Fn() -> Result<[u64; DROP_REASONS]>>,
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

    /// `--dump-dir`: append captured bytes to the connection's per-direction file.
    fn dump(&mut self, conn_id: u64, dir: usize, segs: &[Segment]) -> Result<()> {
        let Some(dir_path) = &self.dump_dir else {
            return Ok(());
        };
        for s in segs {
            if let Segment::Data { bytes, .. } = s {
                let file = match self.dumps.entry((conn_id, dir)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let path = dir_path.join(format!(
                            "{conn_id}-{}.bin",
                            direction_name(if dir == 1 { Direction::Ingress } else { Direction::Egress })
                        ));
                        e.insert(create_dump_file(&path)?)
                    }
                };
                file.write_all(bytes)?;
            }
        }
        Ok(())
    }
}

impl<W: Write> Consumer for Printer<W> {
    fn open(&mut self, ev: &Open, conn: Option<&Connection>) -> Result<()> {
        let Some(c) = conn else { return Ok(()) };
        let mut v = json!({
            "event": "open",
            "ts": self.clock.to_unix_ns(ev.ts_ns),
            "conn_id": ev.conn_id,
            "pid": ev.pid,
            "tid": ev.tid,
            "ppid": ev.ppid,
            "comm": c.comm.as_str(),
            "fd": ev.fd,
            "via": ev.via.name(),
            "role_source": c.role_source,
            "family": if ev.ipv6 { "ipv6" } else { "ipv4" },
            "cgroup_id": ev.cgroup_id,
        });
        Self::conn_fields(c, &mut v);
        self.line(v)
    }

    fn data(&mut self, h: &Data, c: &Connection, segs: &[Segment]) -> Result<()> {
        if h.chunk_offset == 0 {
            let mut v = json!({
                "event": "data",
                "ts": self.clock.to_unix_ns(h.ts_exit_ns),
                // The TLS view's id for plaintext (see conntrack::TLS_VIEW_BIT).
                "conn_id": c.id,
                "pid": h.pid,
                "tid": h.tid,
                "fd": h.fd,
                "comm": c.comm.as_str(),
                "direction": direction_name(h.direction),
                "syscall": h.syscall.name(),
                "len": h.call_len,
                "captured": h.call_captured,
                "stream_offset": h.call_offset,
                "duration_ns": h.ts_exit_ns.saturating_sub(h.ts_enter_ns),
            });
            Self::conn_fields(c, &mut v);
            if self.show_payload {
                v["payload_prefix"] = json!(printable_prefix(h.payload));
            }
            self.line(v)?;
        }
        self.dump(c.id, h.direction as usize, segs)
    }

    fn closed(&mut self, conn: &Connection, ev: Option<&Close>, flushed: &[Vec<Segment>; 2]) -> Result<()> {
        for (dir, segs) in flushed.iter().enumerate() {
            self.dump(conn.id, dir, segs)?;
            self.dumps.remove(&(conn.id, dir));
        }
        let Some(ev) = ev else { return Ok(()) };
        self.line(json!({
            "event": "close",
            "ts": self.clock.to_unix_ns(ev.ts_ns),
            // A connection's TLS view closes with it, under its own id.
            "conn_id": conn.id,
            "pid": ev.pid,
            "tid": ev.tid,
            "fd": ev.fd,
            "bytes_egress": ev.bytes_egress,
            "bytes_ingress": ev.bytes_ingress,
        }))
    }

    fn connect_failed(&mut self, ev: &ConnectFailed, conn: Option<&Connection>) -> Result<()> {
        let (local, remote) = (ev.local, ev.remote);
        self.line(json!({
            "event": "connect_failed",
            "ts": self.clock.to_unix_ns(ev.ts_ns),
            "conn_id": ev.conn_id.unwrap_or(0),
            "pid": conn.map_or(ev.pid, |c| c.pid),
            "tid": ev.tid,
            "error": crate::capture::conntrack::errno_name(ev.error),
            "local_addr": local.ip().to_string(),
            "local_port": local.port(),
            "remote_addr": remote.ip().to_string(),
            "remote_port": remote.port(),
        }))
    }

    /// Context addresses are process-internal numbers, printed so a reader can follow
    /// which Context a write ran in and where it was copied from.
    fn py_context(&mut self, ev: &PyContext) -> Result<()> {
        let v = match *ev {
            PyContext::Copied { pid, tid, ts_ns, context, parent } => json!({
                "event": "py_context_copied", "ts": self.clock.to_unix_ns(ts_ns), "pid": pid, "tid": tid,
                "context": format!("{context:#x}"), "parent": format!("{parent:#x}"),
            }),
            PyContext::Write { pid, tid, ts_enter_ns, conn_id, context } => json!({
                "event": "py_context_write", "ts": self.clock.to_unix_ns(ts_enter_ns), "pid": pid, "tid": tid,
                "conn_id": conn_id, "context": format!("{context:#x}"),
            }),
        };
        self.line(v)
    }

    fn tick(
        &mut self,
        counters: &Counters,
        table: &crate::capture::conntrack::TableStats,
        tracked: usize,
    ) -> Result<()> {
        self.out.flush()?;
        if self.stats_every.is_some_and(|every| self.last_stats.elapsed() >= every) {
            self.last_stats = Instant::now();
            let drops = (self.loaded_drops)()?;
            let v = counters.to_json(table, tracked, &drops);
            self.line(v)?;
        }
        Ok(())
    }
}

/// The dump directory holds raw payloads (personal data, credentials): created 0700 when
/// missing; an existing one must be a real directory (not a symlink) owned by us and
/// writable by nobody else, or another local user could plant symlinks at the predictable
/// file names or swap the files.
fn prepare_dump_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating dump dir {}", dir.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("dump dir {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "--dump-dir {} is not a directory (a symlink is refused too)", dir.display());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.uid() == euid,
        "--dump-dir {} belongs to uid {}, not to this process (uid {euid}): refused, it will hold raw payloads",
        dir.display(),
        meta.uid()
    );
    anyhow::ensure!(
        meta.mode() & 0o022 == 0,
        "--dump-dir {} is writable by group or others (mode {:o}): use a private directory, it will hold raw payloads",
        dir.display(),
        meta.mode() & 0o7777
    );
    Ok(())
}

/// One dump file, readable by its owner only (0600 whatever the umask, also when a
/// previous run left the file with wider permissions); a symlink in its place is refused.
fn create_dump_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to 0600", path.display()))?;
    Ok(file)
}

pub fn run(args: CaptureArgs) -> Result<()> {
    install_signal_handlers();
    if let Some(dir) = &args.dump_dir {
        prepare_dump_dir(dir)?;
    }
    let mut capture = Capture::load(&capture_options(&args.probe))?;
    let drops = capture.loaded.drops_reader()?;
    let stdout = std::io::stdout();
    let mut p = Printer {
        out: BufWriter::new(stdout.lock()),
        clock: Clock::now(),
        show_payload: args.show_payload,
        dump_dir: args.dump_dir.clone(),
        dumps: HashMap::new(),
        stats_every: args.stats_interval.map(Duration::from_secs_f64),
        last_stats: Instant::now(),
        loaded_drops: Box::new(move || drops.read()),
    };
    p.line(json!({
        "event": "ready",
        "pid": std::process::id(),
        "programs": capture.loaded.attachments,
        "skipped_tracepoints": capture.loaded.skipped,
        "capture_cap": args.probe.capture_cap,
    }))?;
    p.out.flush()?;
    let mut driver = Driver::new(conn_table(&args.probe));
    driver.run(&mut capture, args.probe.duration.map(Duration::from_secs_f64), &mut p)?;
    let kernel = capture.loaded.kernel_drops()?;
    let v = driver.counters.to_json(&driver.table.stats, driver.table.len(), &kernel);
    p.line(v)?;
    p.out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hoptrace-dump-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn dump_files_are_0600_even_over_a_wider_leftover() {
        let dir = scratch("files");
        prepare_dump_dir(&dir.join("nested")).unwrap();
        assert_eq!(std::fs::metadata(dir.join("nested")).unwrap().mode() & 0o777, 0o700);
        let fresh = dir.join("nested/1-ingress.bin");
        create_dump_file(&fresh).unwrap().write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
        let leftover = dir.join("nested/2-egress.bin");
        std::fs::write(&leftover, b"old").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o666)).unwrap();
        create_dump_file(&leftover).unwrap();
        let meta = std::fs::metadata(&leftover).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.len()), (0o600, 0), "restricted and truncated");
        let link = dir.join("nested/3-egress.bin");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        let err = format!("{:#}", create_dump_file(&link).unwrap_err());
        assert!(err.contains("3-egress.bin"), "{err}");
        assert!(!dir.join("elsewhere").exists(), "nothing written through the symlink");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shared_or_foreign_dump_dirs_are_refused() {
        let dir = scratch("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = prepare_dump_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("writable by group or others (mode 1777)"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dump_dir(&dir).unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = prepare_dump_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_file(&link).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_dump_dir(&file).unwrap_err().to_string().contains("not a directory"));
        // Another owner (root can hand it over; as a user, a directory we do not own).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let err = prepare_dump_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        } else {
            let err = prepare_dump_dir(Path::new("/")).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 0"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
