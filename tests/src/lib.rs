//! Harness for hoptrace's end-to-end tests: the real `hoptrace capture` binary on the real
//! kernel, watching real servers (nginx, forking Python) and clients (curl, Python scripts).
//!
//! Every helper panics with the context needed to debug a failure (the agent's stderr, the
//! server's logs, the events seen) rather than returning errors: a test that cannot set up
//! its scenario must fail loudly, never skip.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the agent may take to load and attach its programs (BTF parsing and the
/// verifier can be slow on a loaded 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for events, fixtures and short-lived commands.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval for every wait in this harness.
const POLL: Duration = Duration::from_millis(50);

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

/// Sends `signal` to `pid` (a negative pid addresses a process group).
fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; errors (ESRCH) are irrelevant here.
    unsafe { libc::kill(pid, signal) };
}

/// Reads `source` to the end in a thread, appending to the returned buffer, so a child
/// never blocks on a full pipe and its output is available while it still runs.
fn collect(mut source: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
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

fn text(buf: &Mutex<Vec<u8>>) -> String {
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
pub fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(python.exists(), "no Python venv at {}: run `cargo xtask setup`", python.display());
    python
}

/// Like [`python`], with the venv's interpreter ([`venv_python`]).
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

/// A response as printed by `curl -i`, plus the pid curl ran as (to match agent events).
#[derive(Debug)]
pub struct HttpResponse {
    pub pid: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// Case-insensitive header lookup.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One GET with curl on its own connection.
pub fn curl_get(url: &str) -> HttpResponse {
    let done = run(Command::new("curl").args(["-sS", "-i", "--max-time", "10", url]), TIMEOUT).expect_success();
    let (head, body) =
        done.stdout.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header block in curl output: {done:#?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in curl output: {done:#?}"));
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    HttpResponse { pid: done.pid, status, headers, body: body.to_string() }
}

/// Everything the agent printed on stdout so far.
#[derive(Default)]
struct AgentOutput {
    events: Vec<Value>,
    /// Lines that were not JSON objects: the output contract says there are none.
    garbage: Vec<String>,
}

/// A running `hoptrace capture`. Dropping it kills the agent.
pub struct Agent {
    child: Child,
    output: Arc<Mutex<AgentOutput>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts `hoptrace capture <extra_args>` and waits for its ready line, so traffic
    /// generated afterwards is guaranteed to be observed.
    pub fn start(extra_args: &[&str]) -> Agent {
        let bin = hoptrace_bin();
        let mut child = Command::new(&bin)
            .arg("capture")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let output = Arc::new(Mutex::new(AgentOutput::default()));
        let sink = Arc::clone(&output);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdout_reader = thread::spawn(move || {
            for line in stdout.split(b'\n') {
                let Ok(line) = line else { break };
                let mut out = sink.lock().unwrap();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(event @ Value::Object(_)) => out.events.push(event),
                    _ => out.garbage.push(String::from_utf8_lossy(&line).into_owned()),
                }
            }
        });
        let (stderr, stderr_reader) = collect(child.stderr.take().unwrap());
        let mut agent = Agent { child, output, stderr, readers: vec![stdout_reader, stderr_reader] };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = agent.output.lock().unwrap().events.iter().find(|e| e.kind() == "ready").cloned();
            if let Some(ready) = ready {
                assert_eq!(ready.get_u64("pid"), u64::from(agent.child.id()), "ready line: {ready}");
                return agent;
            }
            if let Some(status) = agent.child.try_wait().expect("try_wait") {
                panic!("hoptrace exited ({status}) before it was ready; stderr:\n{}", agent.stderr());
            }
            if Instant::now() >= deadline {
                panic!("hoptrace not ready after {READY_TIMEOUT:?}; stderr:\n{}", agent.stderr());
            }
            thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent printed on stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// A snapshot of the events received so far.
    pub fn events(&self) -> Vec<Value> {
        self.output.lock().unwrap().events.clone()
    }

    /// Polls every 50 ms until `check` holds for the events received so far. Events reach
    /// userspace asynchronously, so tests wait for what they expect before stopping.
    pub fn wait_for(&self, check: impl Fn(&[Value]) -> bool, timeout: Duration) -> bool {
        wait_until(timeout, || check(&self.output.lock().unwrap().events))
    }

    /// SIGINT, then the clean exit the contract promises: status 0, a stats line, and
    /// nothing but JSON objects on stdout. Returns every event.
    pub fn stop(mut self) -> Vec<Value> {
        signal(self.pid() as i32, libc::SIGINT);
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        let Some(status) = status else {
            let _ = self.child.kill();
            panic!("hoptrace did not exit within 10 s of SIGINT; stderr:\n{}", self.stderr());
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let output = std::mem::take(&mut *self.output.lock().unwrap());
        assert!(status.success(), "hoptrace exited with {status} after SIGINT; stderr:\n{}", self.stderr());
        assert!(output.garbage.is_empty(), "hoptrace printed non-JSON lines: {:#?}", output.garbage);
        assert!(
            output.events.iter().any(|e| e.kind() == "stats"),
            "no stats line after SIGINT; stderr:\n{}",
            self.stderr()
        );
        output.events
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Default server config for tests that only need a fixed answer.
pub const NGINX_HELLO: &str = r#"location / { return 200 "hello\n"; }"#;

/// nginx with 2 pre-forked workers on 127.0.0.1:`port`, everything it writes kept in a temp
/// dir. Dropping it stops nginx.
pub struct Nginx {
    // Dropped in order: the processes go before their temp dir.
    master: Running,
    dir: TempDir,
    port: u16,
}

impl Nginx {
    const WORKERS: usize = 2;

    /// Starts nginx with `server_config` inside its `server {}` block and waits until both
    /// workers exist and the port accepts connections. That readiness probe is a real TCP
    /// connection: start nginx before the agent if it must not show up in the capture.
    pub fn start(port: u16, server_config: &str) -> Nginx {
        Self::start_with(port, server_config, false)
    }

    /// Like [`Nginx::start`], terminating TLS on the port with a fresh self-signed
    /// certificate (`cert.pem` in the nginx dir, see [`Nginx::cert`]).
    pub fn start_tls(port: u16, server_config: &str) -> Nginx {
        Self::start_with(port, server_config, true)
    }

    /// The TLS variant's certificate (PEM), for clients that verify it.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn start_with(port: u16, server_config: &str, tls: bool) -> Nginx {
        let dir = TempDir::new("nginx");
        let template = fs::read_to_string(fixture("nginx.conf.template")).expect("read nginx template");
        let mut server_config = server_config.to_string();
        let mut template = template;
        if tls {
            self_signed_cert(&dir.join("cert.pem"), &dir.join("key.pem"));
            let listen = "listen 127.0.0.1:{{PORT}};";
            assert!(template.contains(listen), "nginx template has no `{listen}` line");
            template = template.replace(listen, "listen 127.0.0.1:{{PORT}} ssl;");
            server_config = format!(
                "ssl_certificate {}; ssl_certificate_key {}; {server_config}",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
        }
        let conf = template
            .replace("{{DIR}}", dir.arg())
            .replace("{{PORT}}", &port.to_string())
            .replace("{{SERVER_CONFIG}}", &server_config);
        fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        // `-e` and `-p` keep nginx away from /var/log/nginx and /usr/share/nginx even before it
        // has parsed the config.
        let master = Running::spawn(
            Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-g", "daemon off;"]),
        );
        let mut nginx = Nginx { master, dir, port };
        let ready = wait_until(TIMEOUT, || {
            nginx.worker_pids().len() == Self::WORKERS && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !ready {
            let exited = nginx.master.child.try_wait().expect("try_wait");
            panic!(
                "nginx on port {port} not ready (exit status: {exited:?}, workers: {:?})\nstderr:\n{}\nerror.log:\n{}",
                nginx.worker_pids(),
                text(&nginx.master.stderr),
                fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
            );
        }
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn master_pid(&self) -> u32 {
        self.master.pid()
    }

    /// The master's children, read from /proc now.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Fast shutdown; `Running`'s drop then SIGKILLs whatever is left of the group.
        signal(self.master_pid() as i32, libc::SIGTERM);
        wait_until(Duration::from_secs(5), || matches!(self.master.child.try_wait(), Ok(Some(_))));
    }
}

/// A self-signed certificate for `localhost` / 127.0.0.1 (RSA 2048, 2 days), made with the
/// openssl CLI.
pub fn self_signed_cert(cert: &Path, key: &Path) {
    run(
        Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]).args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            // An end-entity certificate (not a CA), so strict verifiers (rustls) accept it.
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ]),
        TIMEOUT,
    )
    .expect_success();
}

/// Pids whose parent is `ppid`, from /proc/*/stat.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            // The comm field may contain spaces and parentheses: the ppid is the second
            // field after the last ')'.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(ppid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A Python fixture server that prints `READY <port>` once listening. Dropping it kills its
/// whole process group, forked children included.
pub struct PyServer {
    process: Running,
    port: u16,
}

impl PyServer {
    /// Runs `python3 tests/fixtures/<script> <args>` and waits for its READY line.
    pub fn start(script: &str, args: &[&str]) -> PyServer {
        PyServer::start_cmd(python(script).args(args))
    }

    /// Runs `tests/fixtures/<script> <args>` with the venv's interpreter (see [`venv`]).
    pub fn start_venv(script: &str, args: &[&str]) -> PyServer {
        PyServer::start_cmd(venv(script).args(args))
    }

    /// Runs `cmd` (a fixture printing `READY <port>`) and waits for its READY line.
    pub fn start_cmd(cmd: &mut Command) -> PyServer {
        let mut process = Running::spawn(cmd);
        let line = process.wait_for_line("READY ", TIMEOUT);
        let port = line["READY ".len()..].parse().unwrap_or_else(|_| panic!("bad READY line from {cmd:?}: {line:?}"));
        PyServer { process, port }
    }

    /// What the server printed on stderr so far (tracebacks, SDK export errors).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The main (listening) process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// Typed access to event fields. The output contract says which fields are always present,
/// so a missing or mistyped one panics with the event.
pub trait EventExt {
    /// The `event` field ("open", "data", ...), or "" if absent.
    fn kind(&self) -> &str;
    fn get_str(&self, key: &str) -> &str;
    fn get_u64(&self, key: &str) -> u64;
    fn get_port(&self, key: &str) -> u16 {
        let v = self.get_u64(key);
        u16::try_from(v).unwrap_or_else(|_| panic!("{key} = {v} is not a port"))
    }
}

impl EventExt for Value {
    fn kind(&self) -> &str {
        self.get("event").and_then(Value::as_str).unwrap_or("")
    }

    fn get_str(&self, key: &str) -> &str {
        self.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no string {key:?} in {self}"))
    }

    fn get_u64(&self, key: &str) -> u64 {
        self.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("no unsigned {key:?} in {self}"))
    }
}

/// A filtered view of events; filters chain: `select(&ev).kind("data").local_port(80)`.
/// Filtering on a field an event lacks (e.g. ports on close events) drops that event.
#[derive(Clone, Debug)]
pub struct Events<'a>(Vec<&'a Value>);

pub fn select(events: &[Value]) -> Events<'_> {
    Events(events.iter().collect())
}

impl<'a> Events<'a> {
    pub fn filter(self, keep: impl Fn(&Value) -> bool) -> Events<'a> {
        Events(self.0.into_iter().filter(|e| keep(e)).collect())
    }

    /// Events whose `key` equals `value`.
    pub fn eq(self, key: &str, value: impl Into<Value>) -> Events<'a> {
        let value = value.into();
        self.filter(|e| e.get(key) == Some(&value))
    }

    pub fn kind(self, kind: &str) -> Events<'a> {
        self.eq("event", kind)
    }

    pub fn conn(self, conn_id: u64) -> Events<'a> {
        self.eq("conn_id", conn_id)
    }

    pub fn pid(self, pid: u32) -> Events<'a> {
        self.eq("pid", pid)
    }

    pub fn local_port(self, port: u16) -> Events<'a> {
        self.eq("local_port", port)
    }

    pub fn remote_port(self, port: u16) -> Events<'a> {
        self.eq("remote_port", port)
    }

    /// "egress" or "ingress".
    pub fn direction(self, direction: &str) -> Events<'a> {
        self.eq("direction", direction)
    }

    /// Sum of an unsigned field, e.g. `len` or `captured`.
    pub fn sum(&self, key: &str) -> u64 {
        self.0.iter().map(|e| e.get_u64(key)).sum()
    }

    /// The distinct values of an unsigned field, e.g. `conn_id` or `pid`.
    pub fn distinct(&self, key: &str) -> BTreeSet<u64> {
        self.0.iter().map(|e| e.get_u64(key)).collect()
    }

    /// The single event left, panicking with all of them if there is not exactly one.
    pub fn only(&self, what: &str) -> &'a Value {
        match self.0.as_slice() {
            [one] => one,
            many => panic!("expected exactly one {what}, found {}:\n{}", many.len(), self.show()),
        }
    }

    /// One event per line (at most 200), for assertion messages.
    pub fn show(&self) -> String {
        let mut lines: Vec<String> = self.0.iter().take(200).map(|e| e.to_string()).collect();
        if self.0.len() > 200 {
            lines.push(format!("... and {} more", self.0.len() - 200));
        }
        lines.join("\n")
    }
}

impl<'a> std::ops::Deref for Events<'a> {
    type Target = [&'a Value];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The agent's reassembled stream of one connection direction (`--dump-dir`).
pub fn stream_bytes(dump_dir: &Path, conn_id: u64, direction: &str) -> Vec<u8> {
    let path = dump_dir.join(format!("{conn_id}-{direction}.bin"));
    fs::read(&path).unwrap_or_else(|e| {
        let present: Vec<_> = fs::read_dir(dump_dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
            .unwrap_or_default();
        panic!("read {}: {e}; the dump dir holds {present:?}", path.display())
    })
}

// ---------------------------------------------------------------------------------------
// `hoptrace run` and OTLP
// ---------------------------------------------------------------------------------------

/// OTLP span kinds (`Span.SpanKind`).
pub const SPAN_KIND_SERVER: u64 = 2;
pub const SPAN_KIND_CLIENT: u64 = 3;

/// One span from an `ExportTraceServiceRequest` in OTLP/JSON form (as the receiver records
/// it: ids in lowercase hex, enums as integers), flattened with its resource. Attribute
/// values are unwrapped from `AnyValue`: strings and booleans as JSON strings/booleans,
/// `intValue` (a string in OTLP/JSON) as a JSON integer, `doubleValue` as a number; any
/// other value stays as its `AnyValue` object.
#[derive(Debug, Clone)]
pub struct OtlpSpan {
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
    pub kind: u64,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// "" for a root span.
    pub parent_span_id: String,
    pub start: u64,
    pub end: u64,
    pub attrs: BTreeMap<String, Value>,
}

/// An `AnyValue` in OTLP/JSON as a plain JSON value (see [`OtlpSpan`]).
pub fn any_value(v: &Value) -> Value {
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    if let Some(i) = obj.get("intValue") {
        let n = i.as_i64().or_else(|| i.as_str()?.parse().ok());
        return n.map_or_else(|| i.clone(), Value::from);
    }
    for key in ["stringValue", "boolValue", "doubleValue"] {
        if let Some(x) = obj.get(key) {
            return x.clone();
        }
    }
    v.clone()
}

/// OTLP/JSON `attributes` (a list of `{key, value}`) as a map.
pub fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let key = kv["key"].as_str().unwrap_or_default().to_string();
                    (key, any_value(&kv["value"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// OTLP/JSON writes fixed64 timestamps as strings.
fn json_u64(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str()?.parse().ok()).unwrap_or(0)
}

/// The spans of one `ExportTraceServiceRequest` in OTLP/JSON form.
pub fn otlp_spans(request: &Value) -> Vec<OtlpSpan> {
    let mut out = Vec::new();
    let empty = Vec::new();
    for rs in request["resourceSpans"].as_array().unwrap_or(&empty) {
        let resource = attributes(&rs["resource"]["attributes"]);
        for ss in rs["scopeSpans"].as_array().unwrap_or(&empty) {
            let scope = ss["scope"]["name"].as_str().unwrap_or_default().to_string();
            for s in ss["spans"].as_array().unwrap_or(&empty) {
                let string = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                out.push(OtlpSpan {
                    resource: resource.clone(),
                    scope: scope.clone(),
                    kind: s["kind"].as_u64().unwrap_or(0),
                    name: string("name"),
                    trace_id: string("traceId"),
                    span_id: string("spanId"),
                    parent_span_id: string("parentSpanId"),
                    start: json_u64(&s["startTimeUnixNano"]),
                    end: json_u64(&s["endTimeUnixNano"]),
                    attrs: attributes(&s["attributes"]),
                });
            }
        }
    }
    out
}

impl OtlpSpan {
    /// A string resource attribute, or "".
    pub fn resource_str(&self, key: &str) -> &str {
        self.resource.get(key).and_then(Value::as_str).unwrap_or("")
    }

    pub fn service(&self) -> &str {
        self.resource_str("service.name")
    }

    /// Exported by hoptrace (`telemetry.distro.name=hoptrace`), not by an SDK.
    pub fn from_agent(&self) -> bool {
        self.resource_str("telemetry.distro.name") == "hoptrace"
    }

    /// The resource's `process.pid`, if any.
    pub fn pid(&self) -> Option<i64> {
        self.resource.get("process.pid").and_then(Value::as_i64)
    }
}

/// Spans one per line, for assertion messages.
pub fn show_spans(spans: &[OtlpSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} kind={} {:?} trace={} span={} parent={} [{}..{}] resource={:?} attrs={:?}",
                s.service(),
                s.kind,
                s.name,
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.start,
                s.end,
                s.resource,
                s.attrs
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `tests/fixtures/otlp_receiver.py`: a real OTLP receiver (gRPC TraceService and HTTP
/// `POST /v1/traces`, decoded with the official protobuf definitions) that records every
/// request as a JSON line. Dropping it stops the receiver.
pub struct OtlpReceiver {
    // Dropped in order: the process goes before its temp dir.
    process: Running,
    dir: TempDir,
    grpc_port: u16,
    http_port: u16,
}

impl OtlpReceiver {
    /// A receiver on ephemeral ports.
    pub fn start() -> OtlpReceiver {
        OtlpReceiver::start_on(0, 0)
    }

    /// A receiver on the given ports (0 = ephemeral): e.g. a collector that comes up on a
    /// port the agent has been trying all along.
    pub fn start_on(grpc_port: u16, http_port: u16) -> OtlpReceiver {
        OtlpReceiver::start_with(grpc_port, http_port, &[])
    }

    /// A receiver with extra fixture arguments: the misbehaving-collector modes
    /// (`--fail-count`, `--fail-http`, `--retry-after`, `--fail-grpc`, `--delay`,
    /// `--delay-count`; see tests/fixtures/otlp_receiver.py).
    pub fn start_with(grpc_port: u16, http_port: u16, extra: &[&str]) -> OtlpReceiver {
        let dir = TempDir::new("otlp-receiver");
        let out = dir.join("requests.jsonl");
        let mut process = Running::spawn(
            venv("otlp_receiver.py")
                .arg("--out")
                .arg(&out)
                .arg("--metrics-out")
                .arg(dir.join("metrics.jsonl"))
                .args(["--grpc-port", &grpc_port.to_string()])
                .args(["--http-port", &http_port.to_string()])
                .args(extra),
        );
        let line = process.wait_for_line("READY ", TIMEOUT);
        let port = |name: &str| -> u16 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} port in the receiver's {line:?}"))
        };
        let (grpc, http) = (port("grpc"), port("http"));
        for (asked, got) in [(grpc_port, grpc), (http_port, http)] {
            assert!(asked == 0 || asked == got, "receiver asked for port {asked}, got {got}");
        }
        OtlpReceiver { process, dir, grpc_port: grpc, http_port: http }
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `http://127.0.0.1:<grpc port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<http port>`, the generic OTLP/HTTP endpoint (`/v1/traces` is
    /// appended by exporters).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `http://127.0.0.1:<http port>/v1/traces`, for exporters given the full URL.
    pub fn http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    /// The recorded file as written so far (complete lines only).
    pub fn raw(&self) -> String {
        let text = fs::read_to_string(self.dir.join("requests.jsonl")).unwrap_or_default();
        match text.rfind('\n') {
            Some(i) => text[..=i].to_string(),
            None => String::new(),
        }
    }

    /// Every request received so far: `{"transport", "path", "content_type",
    /// "content_encoding", "headers", "spans", "request"}` (see the fixture).
    pub fn requests(&self) -> Vec<Value> {
        self.raw()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<OtlpSpan> {
        self.requests().iter().flat_map(|r| otlp_spans(&r["request"])).collect()
    }

    /// Waits until `check` holds for the spans received so far and returns them; panics
    /// with what was received (and the receiver's stderr) after `timeout`.
    pub fn wait_for_spans(&self, timeout: Duration, what: &str, check: impl Fn(&[OtlpSpan]) -> bool) -> Vec<OtlpSpan> {
        let mut spans = Vec::new();
        if wait_until(timeout, || {
            spans = self.spans();
            check(&spans)
        }) {
            return spans;
        }
        panic!(
            "the receiver never got {what} within {timeout:?}; it got:\n{}\nreceiver stderr:\n{}",
            show_spans(&spans),
            self.process.stderr()
        );
    }

    /// Waits until nothing new has arrived for `quiet` (at most `timeout`), returning the
    /// number of spans received.
    pub fn wait_until_quiet(&self, quiet: Duration, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = (self.requests().len(), Instant::now());
        loop {
            thread::sleep(POLL);
            let n = self.requests().len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return self.spans().len();
            }
            assert!(Instant::now() < deadline, "the receiver kept receiving for {timeout:?} ({n} requests)");
        }
    }

    /// The receiver's stderr (decode errors).
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Every metrics export received so far (gRPC `MetricsService` or `POST /v1/metrics`):
    /// `{"transport", "path", "content_type", "headers", "data_points", "request"}` with
    /// the request as proto JSON (exemplar ids in hex).
    pub fn metrics_requests(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("metrics.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }

    /// Waits until `check` holds for the metrics requests received so far and returns
    /// them; panics with the last request after `timeout`.
    pub fn wait_for_metrics(&self, timeout: Duration, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        if wait_until(timeout, || {
            got = self.metrics_requests();
            check(&got)
        }) {
            return got;
        }
        panic!(
            "the receiver never got {what} within {timeout:?}; {} metrics requests, the last:\n{}\nreceiver stderr:\n{}",
            got.len(),
            got.last().map(|v| v.to_string()).unwrap_or_default(),
            self.process.stderr()
        );
    }

    /// Export requests the receiver refused (`--fail-count`), in arrival order:
    /// `{"transport", "status", "spans", "span_ids", "time"}`.
    pub fn refused(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("requests.jsonl.refused")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote a non-JSON line ({e}): {l}")))
            .collect()
    }
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

/// A running `hoptrace run`. Dropping it kills the agent.
pub struct RunAgent {
    process: Running,
}

/// What `hoptrace run` logged when it stopped.
#[derive(Debug)]
pub struct Stopped {
    /// The `{"level":"info","msg":"stopped",...}` line, parsed.
    pub log: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Stopped {
    /// `log.<section>.<key>` as an unsigned integer; panics if absent.
    pub fn counter(&self, section: &str, key: &str) -> u64 {
        self.log[section][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no unsigned {section}.{key} in the stopped log: {}", self.log))
    }

    /// `export.<key>`.
    pub fn export(&self, key: &str) -> u64 {
        self.counter("export", key)
    }

    /// `traces.<key>`.
    pub fn traces(&self, key: &str) -> u64 {
        self.counter("traces", key)
    }
}

impl RunAgent {
    /// Starts `hoptrace run --port <p>... <args>` with the inherited `OTEL_*` variables
    /// removed and `env` set (the exporter's configuration), and waits for its ready log,
    /// so traffic generated afterwards is observed.
    pub fn start<K, V>(ports: &[u16], args: &[&str], env: impl IntoIterator<Item = (K, V)>) -> RunAgent
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(hoptrace_bin());
        cmd.arg("run");
        for p in ports {
            cmd.args(["--port", &p.to_string()]);
        }
        cmd.args(args);
        without_otel_env(&mut cmd);
        cmd.envs(env);
        let mut process = Running::spawn(&mut cmd);
        process.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
        RunAgent { process }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `sig` to the agent (SIGSTOP/SIGCONT to freeze it, say).
    pub fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    /// The agent's log lines so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// SIGINT, then a clean exit (status 0) with a `stopped` log line, returned parsed.
    pub fn stop(self) -> Stopped {
        self.process.signal(libc::SIGINT);
        // The exporter's shutdown deadline is 5 s; leave room for the flush.
        let done = self.process.finish(TIMEOUT);
        assert!(
            done.status.success(),
            "hoptrace run exited with {} after SIGINT; stderr:\n{}",
            done.status,
            done.stderr
        );
        let log = done
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["msg"] == "stopped")
            .unwrap_or_else(|| panic!("no stopped log line; stderr:\n{}", done.stderr));
        Stopped { log, stdout: done.stdout, stderr: done.stderr }
    }
}
