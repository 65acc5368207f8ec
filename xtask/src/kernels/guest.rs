//! The guest: an initramfs holding busybox, the release agent and the shared libraries it
//! needs, and an init script that runs the capture-to-span check; QEMU boots it (TCG: nested
//! KVM is not available on the machines this runs on) with everything on the serial console,
//! and the host reads the guest's lines back from it.
//!
//! The guest prints lines starting with [`MARK`]: `result key=value...` once at the end,
//! `agent: <line>` for each line the agent wrote on stderr when the check failed (the
//! verifier's log in full, when it is the cause), and progress lines. The host decides
//! pass or fail from the `result` line only.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::progress::output;

/// The prefix of every line the host reads.
pub const MARK: &str = "HOPTRACE-KERNELS";

/// The whole boot, check and power-off of one guest: measured at 11–20 s on a busy 2-core
/// machine. The guest's own deadlines add up to 240 s, so a slow guest still reports.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The init script. `@TRACE@`/`@PARENT@` are the ids of the plain HTTP request's
/// traceparent, `@TRACE2@`/`@PARENT2@` those of the HTTPS one; every wait polls an
/// observable file with its own deadline (tenths of a second), never a fixed sleep.
///
/// Plain HTTP: busybox `httpd` must give a SERVER span joined to the caller's trace.
/// HTTPS: `openssl s_client` talks to `openssl s_server`; the wire is encrypted, so a
/// CLIENT span named after the request (`GET /tls`) proves the OpenSSL uprobes attached and
/// delivered the plaintext (the agent runs with `--no-suppress-instrumented`, since the
/// client sends its own traceparent). The `s_server -www` side gives no span on any kernel
/// (it reads through a buffered BIO), so the client side is the one checked.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
M=HOPTRACE-KERNELS
# Uptime in centiseconds; `within S CMD...` runs CMD until it succeeds or S seconds pass.
up() { cut -d' ' -f1 /proc/uptime | tr -d .; }
within() { d=$(( $(up) + $1 * 100 )); shift; until "$@"; do [ "$(up)" -ge $d ] && return 1; sleep 0.1; done; }
ready_or_gone() { grep -q '"msg":"ready"' /tmp/agent.log || ! kill -0 $pid 2>/dev/null; }
gone() { ! kill -0 $pid 2>/dev/null; }
echo "$M booted $(uname -r)"
t0=$(up)
hoptrace run --no-suppress-instrumented @AGENT_ARGS@ > /tmp/spans 2> /tmp/agent.log &
pid=$!
within 120 ready_or_gone
ready=no; load_ms=-; programs=-; joined=no; tls=no; code=-
if grep -q '"msg":"ready"' /tmp/agent.log; then
  ready=yes
  load_ms=$(( ($(up) - t0) * 10 ))
  programs=$(grep -o '"programs":[0-9]*' /tmp/agent.log | head -n1 | cut -d: -f2)
  echo "$M ready after ${load_ms} ms"
  mkdir -p /www && echo hello > /www/index.html
  httpd -p 127.0.0.1:8080 -h /www
  wget -q -O /dev/null --header 'traceparent: 00-@TRACE@-@PARENT@-01' http://127.0.0.1:8080/index.html \
    || echo "$M wget failed"
  span='"traceId":"@TRACE@"[^{}]*"parentSpanId":"@PARENT@"[^{}]*"kind":2'
  within 30 grep -q -E "$span" /tmp/spans && joined=yes
  openssl s_server -accept 127.0.0.1:8443 -cert /tls/cert.pem -key /tls/key.pem -www -quiet >/dev/null 2>&1 &
  within 30 grep -q '0100007F:20FB 00000000:0000 0A' /proc/net/tcp || echo "$M s_server not listening"
  printf 'GET /tls HTTP/1.0\r\ntraceparent: 00-@TRACE2@-@PARENT2@-01\r\n\r\n' \
    | openssl s_client -connect 127.0.0.1:8443 -quiet >/dev/null 2>&1 || echo "$M s_client failed"
  tspan='"traceId":"@TRACE2@"[^{}]*"parentSpanId":"@PARENT2@"[^{}]*"name":"GET /tls","kind":3'
  within 30 grep -q -E "$tspan" /tmp/spans && tls=yes
  kill -INT $pid
fi
if within 30 gone; then wait $pid; code=$?; else kill -KILL $pid; code=killed; fi
if [ $ready != yes ] || [ $joined != yes ] || [ $tls != yes ] || [ $code != 0 ]; then
  sed "s/^/$M agent: /" /tmp/agent.log
fi
echo "$M result kernel=$(uname -r) ready=$ready load_ms=$load_ms programs=$programs joined=$joined tls=$tls agent_exit=$code"
poweroff -f
"#;

/// What the guest reported.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub kernel: String,
    pub ready: bool,
    pub load_ms: Option<u64>,
    pub programs: Option<u32>,
    pub joined: bool,
    /// The HTTPS request's CLIENT span, seen through the OpenSSL uprobes.
    pub tls: bool,
    pub agent_exit: String,
    /// The agent's stderr, when the check failed.
    pub agent_log: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.ready && self.joined && self.tls && self.agent_exit == "0"
    }

    /// The agent's one-line error (`hoptrace: error: ...`), if it printed one.
    pub fn error_line(&self) -> Option<&str> {
        self.agent_log.iter().find(|l| l.starts_with("hoptrace: error:")).map(String::as_str)
    }
}

/// Reads the guest's lines; `None` when no `result` line came (the guest did not get
/// that far: a kernel panic, a timeout).
pub fn parse(serial: &[String]) -> Option<Outcome> {
    let mut agent_log = Vec::new();
    let mut result = None;
    for line in serial {
        let Some(rest) = line.find(MARK).map(|at| line[at + MARK.len()..].trim_start()) else { continue };
        if let Some(l) = rest.strip_prefix("agent: ") {
            agent_log.push(l.to_string());
        } else if let Some(fields) = rest.strip_prefix("result ") {
            result = Some(fields.to_string());
        }
    }
    let mut o = Outcome { agent_log, ..Outcome::default() };
    for field in result?.split_whitespace() {
        let Some((k, v)) = field.split_once('=') else { continue };
        match k {
            "kernel" => o.kernel = v.to_string(),
            "ready" => o.ready = v == "yes",
            "load_ms" => o.load_ms = v.parse().ok(),
            "programs" => o.programs = v.parse().ok(),
            "joined" => o.joined = v == "yes",
            "tls" => o.tls = v == "yes",
            "agent_exit" => o.agent_exit = v.to_string(),
            _ => {}
        }
    }
    Some(o)
}

/// The traceparent ids of the guest's two requests.
pub struct Ids {
    pub trace: String,
    pub parent: String,
    pub tls_trace: String,
    pub tls_parent: String,
}

/// What the guest runs: the ids of its requests and extra `hoptrace run` arguments.
pub struct Plan<'a> {
    pub ids: Ids,
    pub agent_args: &'a [String],
}

/// `arg` as one single-quoted shell word.
pub fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// Builds the initramfs for `agent` (the release binary); `tls_dir` holds the HTTPS
/// server's `cert.pem` and `key.pem`.
pub fn initramfs(agent: &Path, tls_dir: &Path, out: &Path, plan: &Plan) -> Result<()> {
    let ids = &plan.ids;
    let args: Vec<String> = plan.agent_args.iter().map(|a| shell_quote(a)).collect();
    let init = INIT
        .replace("@AGENT_ARGS@", &args.join(" "))
        .replace("@TRACE2@", &ids.tls_trace)
        .replace("@PARENT2@", &ids.tls_parent)
        .replace("@TRACE@", &ids.trace)
        .replace("@PARENT@", &ids.parent);
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "www", "tls"] {
        cpio.dir(dir);
    }
    cpio.console();
    cpio.file("init", init.as_bytes(), 0o755);
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    cpio.file("bin/busybox", &read(Path::new(BUSYBOX))?, 0o755);
    cpio.file("bin/hoptrace", &read(agent)?, 0o755);
    for name in ["cert.pem", "key.pem"] {
        cpio.file(&format!("tls/{name}"), &read(&tls_dir.join(name))?, 0o644);
    }
    let openssl = Path::new(OPENSSL);
    let mut copied: Vec<PathBuf> = Vec::new();
    let wanted = [openssl.to_path_buf(), PathBuf::from(OPENSSL_CNF)]
        .into_iter()
        .chain(shared_libraries(agent)?)
        .chain(shared_libraries(openssl)?);
    for path in wanted {
        if copied.contains(&path) {
            continue;
        }
        let name = path.to_string_lossy().trim_start_matches('/').to_string();
        cpio.parents(&name);
        cpio.file(&name, &read(&path)?, 0o755);
        copied.push(path);
    }
    std::fs::write(out, cpio.finish()).with_context(|| format!("cannot write {}", out.display()))
}

/// busybox-static from Debian: no shared libraries of its own.
pub const BUSYBOX: &str = "/bin/busybox";
/// The HTTPS client and server of the TLS check, and their configuration (read through
/// its symlink, stored as a file).
const OPENSSL: &str = "/usr/bin/openssl";
const OPENSSL_CNF: &str = "/usr/lib/ssl/openssl.cnf";

/// A self-signed certificate for the guest's HTTPS server, made once.
pub fn tls_files(dir: &Path) -> Result<()> {
    if dir.join("cert.pem").is_file() && dir.join("key.pem").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let status = Command::new(OPENSSL)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "3650", "-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run openssl (apt-get install openssl)")?;
    if !status.success() {
        bail!("openssl req could not make the guest's test certificate in {}", dir.display());
    }
    Ok(())
}

/// The libraries `ldd` lists for `binary`, the dynamic loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary)).with_context(|| format!("ldd {} failed", binary.display()))?;
    Ok(ldd_paths(&text))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`.
pub fn ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            path.split_whitespace().next().filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect()
}

/// A `newc` cpio archive in memory (the format the kernel unpacks as an initramfs).
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_string());
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    /// Every directory above `path`, outermost first.
    pub fn parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"));
        }
    }

    pub fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    /// /dev/console (5, 1): init's stdin/stdout before devtmpfs is mounted.
    pub fn console(&mut self) {
        self.entry("dev/console", 0o020600, (5, 1), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Boots `vmlinuz` with `initrd` under QEMU and returns the serial console's lines (also
/// written to `log`), ending when the guest powers off or at `GUEST_TIMEOUT`.
pub fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<(Vec<String>, Duration)> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1024", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: a panic reboots at once, and -no-reboot turns that into QEMU exiting.
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    std::thread::spawn(move || forward(stdout, &tx));
    std::thread::spawn(move || forward(stderr, &tx2));
    let mut lines = Vec::new();
    let mut file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let timed_out = loop {
        let left = GUEST_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => break true,
        }
    };
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let elapsed = started.elapsed();
    if timed_out {
        bail!("the guest did not power off within {} s (serial log: {})", GUEST_TIMEOUT.as_secs(), log.display());
    }
    if !status.success() {
        bail!("qemu-system-x86_64 exited with {status} (serial log: {})", log.display());
    }
    Ok((lines, elapsed))
}

/// The serial console's bytes as lines, without the carriage returns and terminal escapes.
fn forward(from: impl std::io::Read, to: &mpsc::Sender<String>) {
    for line in BufReader::new(from).split(b'\n') {
        let Ok(bytes) = line else { return };
        let text: String = String::from_utf8_lossy(&bytes).chars().filter(|c| *c != '\r').collect();
        if to.send(text).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_and_agent_log() {
        let serial: Vec<String> = [
            "[    1.0] random kernel line",
            "HOPTRACE-KERNELS booted 5.10.0-32-cloud-amd64",
            "HOPTRACE-KERNELS agent: hoptrace: error: the kernel verifier rejected program exit_data: Permission denied",
            "HOPTRACE-KERNELS agent: --- verifier log ---",
            "\u{1b}[2JHOPTRACE-KERNELS result kernel=5.10.0-32-cloud-amd64 ready=no load_ms=- programs=- joined=no agent_exit=1",
        ]
        .map(String::from)
        .to_vec();
        let o = parse(&serial).unwrap();
        assert_eq!(o.kernel, "5.10.0-32-cloud-amd64");
        assert!(!o.ready && !o.joined && !o.passed());
        assert_eq!((o.load_ms, o.programs, o.agent_exit.as_str()), (None, None, "1"));
        assert_eq!(o.agent_log.len(), 2);
        assert!(o.error_line().unwrap().contains("verifier rejected program exit_data"));

        let ok =
            ["HOPTRACE-KERNELS result kernel=6.1.0 ready=yes load_ms=4460 programs=29 joined=yes tls=yes agent_exit=0"]
                .map(String::from);
        let o = parse(&ok).unwrap();
        assert!(o.passed());
        assert_eq!((o.load_ms, o.programs), (Some(4460), Some(29)));
        // Everything but TLS is not a pass.
        let no_tls = [ok[0].replace("tls=yes", "tls=no")];
        assert!(!parse(&no_tls).unwrap().passed());
        // No result line: the guest never got to the end.
        assert_eq!(parse(&serial[..2]), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--capture-cap"), "'--capture-cap'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x7f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        let paths = ldd_paths(text);
        assert_eq!(
            paths,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.parents("lib/x86_64-linux-gnu/libc.so.6");
        c.file("lib/x86_64-linux-gnu/libc.so.6", b"abcde", 0o755);
        c.dir("lib");
        let bytes = c.finish();
        // Two directories (once each), the file, the trailer; every header 4-byte aligned.
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("070701").count(), 4);
        assert!(bytes.len().is_multiple_of(4));
        let header = &bytes[..110];
        assert_eq!(&header[14..22], b"000041ed", "directory mode 040755");
        assert!(text.contains("lib/x86_64-linux-gnu\0"));
        assert!(text.contains("TRAILER!!!\0"));
    }
}
