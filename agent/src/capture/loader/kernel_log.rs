//! Kernel-side diagnostics: aya-log records from the kernel programs (rare paths that
//! lose data, with the thread, descriptor or process involved), off unless
//! `HOPTRACE_KERNEL_LOG=1`.
//!
//! When on, the loader sets the programs' `KERNEL_LOG` global before load and a thread
//! drains aya-log's ring buffer into the agent's JSON log lines (`"source":"kernel"`, one
//! line per call site per second at most). When off, nothing runs here and the kernel's
//! verifier drops every logging branch (the global is read-only data it sees as 0).

use std::{
    ffi::OsString,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use serde_json::json;

use crate::util::logging::{self, RateLimiter};

/// The switch, read once at load.
pub const ENV: &str = "HOPTRACE_KERNEL_LOG";

/// The kernel programs' switch (ebpf/programs/src/config.rs): a read-only global.
pub const GLOBAL: &str = "KERNEL_LOG";

/// How long the drain thread sleeps in poll() before it looks at the stop flag.
const POLL_MS: i32 = 200;

/// Whether `HOPTRACE_KERNEL_LOG` asks for kernel diagnostics.
pub fn requested() -> Result<bool> {
    parse(std::env::var_os(ENV))
}

fn parse(value: Option<OsString>) -> Result<bool> {
    let Some(value) = value else { return Ok(false) };
    match value.to_str().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("" | "0" | "false" | "off" | "no") => Ok(false),
        Some("1" | "true" | "on" | "yes") => Ok(true),
        _ => Err(anyhow!("{ENV}={value:?} is not understood: use 1 (kernel diagnostics on) or 0 (off)")),
    }
}

/// The drain thread; dropping it stops and joins the thread.
pub struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelLog {
    /// Takes aya-log's ring buffer out of `ebpf` (before the programs load, so nothing
    /// they log is missed) and starts draining it.
    pub fn start(ebpf: &mut Ebpf) -> Result<KernelLog> {
        let sink = JsonLines { limiter: Mutex::new(RateLimiter::new(Duration::from_secs(1))) };
        let logger = EbpfLogger::init_with_logger(ebpf, sink)
            .context("kernel diagnostics: aya-log's ring buffer is missing from the eBPF object")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn(move || drain(logger, &flag))
            .context("starting the kernel diagnostics thread")?;
        Ok(KernelLog { stop, thread: Some(thread) })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn drain(mut logger: EbpfLogger<JsonLines>, stop: &AtomicBool) {
    let fd = logger.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; `fd` stays open while `logger` lives (all of this loop).
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        logger.flush();
    }
    logger.flush();
}

/// Writes kernel records as the agent's JSON log lines, at most one per call site per
/// window (a path that loses data on every syscall must not flood the log).
struct JsonLines {
    limiter: Mutex<RateLimiter>,
}

impl log::Log for JsonLines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let site = format!("{}:{}", record.file().unwrap_or(""), record.line().unwrap_or(0));
        let Some(suppressed) = self.limiter.lock().unwrap_or_else(|e| e.into_inner()).allow(&site) else {
            return;
        };
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let mut fields = json!({ "source": "kernel", "target": record.target(), "site": site });
        if suppressed > 0 {
            fields["suppressed"] = json!(suppressed);
        }
        logging::log(level, &record.args().to_string(), fields);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values() {
        for off in [None, Some(""), Some("0"), Some("false"), Some("OFF"), Some(" no ")] {
            assert!(!parse(off.map(OsString::from)).unwrap(), "{off:?}");
        }
        for on in ["1", "true", "On", "yes"] {
            assert!(parse(Some(on.into())).unwrap(), "{on}");
        }
        let err = parse(Some("verbose".into())).unwrap_err().to_string();
        assert!(err.contains("HOPTRACE_KERNEL_LOG") && err.contains("use 1"), "{err}");
    }
}
