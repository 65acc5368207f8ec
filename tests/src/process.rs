//! Child processes and their output, temp dirs, the fixtures' interpreters.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{fixture, wait_until, POLL};

/// Sends `signal` to `pid` (a negative pid addresses a process group).
pub(crate) fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; errors (ESRCH) are irrelevant here.
    unsafe { libc::kill(pid, signal) };
}

/// Reads `source` to the end in a thread, appending to the returned buffer, so a child
/// never blocks on a full pipe and its output is available while it still runs.
pub(crate) fn collect(mut source: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = source.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

pub(crate) fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// A directory under the system temp dir, removed on drop unless the test is failing (then
/// it is kept and its path printed, since it holds logs and dumps worth reading).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let name =
            format!("hoptrace-e2e-{label}-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The path as a `&str`, for command-line arguments.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp dir path is UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `python3 tests/fixtures/<script>`, unbuffered so readiness lines arrive immediately.
pub fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture(script)).env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// The interpreter of the tests' Python venv (`target/pyenv`, made by `cargo xtask setup`
/// from `tests/requirements.txt`), for fixtures that need packages beyond the stdlib.
fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(python.exists(), "no Python venv at {}: run `cargo xtask setup`", python.display());
    python
}

/// Like [`python`], with the interpreter of the tests' Python venv.
pub fn venv(script: &str) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg(fixture(script)).env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Removes every `OTEL_*` variable the test process inherited from `cmd`'s environment, so
/// neither the agent's exporter nor a fixture's SDK is configured behind the test's back
/// (and the agent does not take a fixture for an SDK-instrumented process).
pub fn without_otel_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A process that has exited, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Panics with the process's output unless it exited 0.
    pub fn expect_success(self) -> Finished {
        assert!(self.status.success(), "process {} failed: {self:#?}", self.pid);
        self
    }
}

/// A child process in its own process group (so fixtures that fork are cleaned up with all
/// their children), with stdout and stderr collected. Dropping it kills the group.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        Self::spawn_stdin(cmd, Stdio::null())
    }

    /// Like [`Running::spawn`] with stdin a pipe the test holds: the fixture waits on it,
    /// see [`Running::send_line`] and [`Running::close_stdin`].
    pub fn spawn_piped(cmd: &mut Command) -> Running {
        Self::spawn_stdin(cmd, Stdio::piped())
    }

    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin is not a pipe (use spawn_piped)");
        writeln!(stdin, "{line}").expect("write to the fixture's stdin");
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    fn spawn_stdin(cmd: &mut Command, stdin: Stdio) -> Running {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        Running { child, stdout, stderr, readers: vec![out_reader, err_reader] }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a complete stdout line starting with `prefix` and returns it; panics if the
    /// process exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = text(&self.stdout);
            if let Some(line) = out.split_inclusive('\n').find(|l| l.starts_with(prefix) && l.ends_with('\n')) {
                return line.trim_end().to_string();
            }
            let exited = self.child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "pid {} never printed a line starting with {prefix:?} (exit status: {exited:?})\nstdout:\n{out}\nstderr:\n{}",
                    self.pid(),
                    text(&self.stderr)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for a stderr line containing `needle` (the agent's JSON logs go to stderr).
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let err = text(&self.stderr);
            if let Some(line) = err.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            let exited = self.child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() >= deadline {
                panic!("pid {} never logged {needle:?} (exit status: {exited:?})\nstderr:\n{err}", self.pid());
            }
            thread::sleep(POLL);
        }
    }

    /// Everything the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    /// Everything the process printed on stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// Whether the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Like [`Running::exited`], without panicking (for `Drop`).
    pub(crate) fn try_exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        signal(self.pid() as i32, sig);
    }

    /// Waits for the process to exit (killing it and panicking after `timeout`).
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        let Some(status) = status else {
            signal(-(self.pid() as i32), libc::SIGKILL);
            panic!(
                "pid {} still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.pid(),
                text(&self.stdout),
                text(&self.stderr)
            );
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        Finished { pid: self.pid(), status, stdout: text(&self.stdout), stderr: text(&self.stderr) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only while the leader is unreaped is its pid certainly still our group's id.
        if let Ok(None) = self.child.try_wait() {
            signal(-(self.pid() as i32), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion (see [`Running::finish`]).
pub fn run(cmd: &mut Command, timeout: Duration) -> Finished {
    Running::spawn(cmd).finish(timeout)
}

/// Resident set size of a process in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}
