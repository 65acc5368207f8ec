//! Harness for hoptrace's end-to-end tests: the real `hoptrace capture` binary on the real
//! kernel, watching real servers (nginx, forking Python) and clients (curl, Python scripts).
//!
//! Every helper panics with the context needed to debug a failure (the agent's stderr, the
//! server's logs, the events seen) rather than returning errors: a test that cannot set up
//! its scenario must fail loudly, never skip.

mod capture;
mod otlp;
mod process;
mod run_agent;
mod servers;

pub use capture::*;
pub use otlp::*;
pub use process::*;
pub use run_agent::*;
pub use servers::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the agent may take to load and attach its programs (BTF parsing and the
/// verifier can be slow on a loaded 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for events, fixtures and short-lived commands.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval for every wait in this harness.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// The agent and the servers need root; a skipped e2e test would hide a broken agent.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the hoptrace e2e tests must run as root (euid is {euid})");
}

/// A port that was free a moment ago. Racy by nature, but each test uses its own, and the
/// agent must be told the port (`--port`) before some servers start.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// `$HOPTRACE_BIN`, else `<workspace>/target/debug/hoptrace`.
pub fn hoptrace_bin() -> PathBuf {
    let bin = std::env::var_os("HOPTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hoptrace"));
    assert!(
        bin.is_file(),
        "hoptrace binary not found at {} (set HOPTRACE_BIN or build it first: cargo build -p hoptrace)",
        bin.display()
    );
    bin
}

/// Absolute path of a file in `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A string no other test (or earlier run) puts on the wire; short so that it fits in the
/// agent's `payload_prefix` right after `GET /`.
pub fn unique_marker(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("mk{label}{:08x}", nanos ^ std::process::id().rotate_left(16) ^ n)
}

/// Number of (possibly overlapping) occurrences of `needle` in `haystack`.
pub fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Polls `check` until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}
