//! What xtask tells a newcomer while it works: one line per step saying what it does and how
//! long it usually takes (or what is already there), an elapsed-time line at the end of each
//! step and of the whole command, and a heartbeat during long steps whose own output is quiet,
//! so nobody stares at a silent 15-minute build.

use std::{
    io::IsTerminal,
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Prints one xtask line on stderr. On a terminal, cargo may have a progress bar drawn on the
/// last line without a newline: clear it first so the two do not run together.
pub fn say(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// "42 s", "3 min 05 s".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.0} s", d.as_secs_f64())
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

/// The numbered steps of one command.
pub struct Progress {
    command: &'static str,
    total: usize,
    next: usize,
    started: Instant,
}

impl Progress {
    pub fn new(command: &'static str, total: usize, what: &str) -> Progress {
        say(&format!("xtask {command}: {what} ({total} steps)"));
        Progress { command, total, next: 0, started: Instant::now() }
    }

    /// Reserves the next step number; the caller then says whether it runs or is skipped.
    pub fn step(&mut self, subject: impl Into<String>) -> Step {
        self.next += 1;
        Step {
            tag: format!("[{}/{}]", self.next, self.total),
            subject: subject.into(),
            doing: String::new(),
            started: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The closing line of the command.
    pub fn finish(&self, outcome: &str) {
        say(&format!("xtask {}: {outcome} in {}", self.command, human(self.elapsed())));
    }
}

/// One numbered step: "xtask: [3/5] SUBJECT: installing (usually ~40 s)", then "SUBJECT: done
/// in 38 s", or "SUBJECT: already installed".
pub struct Step {
    tag: String,
    subject: String,
    doing: String,
    started: Instant,
}

impl Step {
    /// The step runs now; `usually` is the time it takes on a 2-core machine.
    pub fn begin(&mut self, doing: &str, usually: &str) {
        self.started = Instant::now();
        self.doing = doing.to_string();
        say(&format!("xtask: {} {}: {doing} (usually {usually})", self.tag, self.subject));
    }

    /// The step has nothing to do.
    pub fn skip(&self, why: &str) {
        say(&format!("xtask: {} {}: {why}", self.tag, self.subject));
    }

    /// A line about this step while it runs (e.g. which log it writes).
    pub fn note(&self, text: &str) {
        say(&format!("xtask: {} {text}", self.tag));
    }

    /// The step failed and the command goes on (a warning, not an error).
    pub fn failed(&self, why: &str) {
        say(&format!("xtask: {} {}: FAILED after {}: {why}", self.tag, self.subject, human(self.started.elapsed())));
    }

    pub fn done(&self) {
        say(&format!("xtask: {} {}: done in {}", self.tag, self.subject, human(self.started.elapsed())));
    }

    /// Prints "still ..." every `every` until the returned guard is dropped.
    pub fn heartbeat(&self, every: Duration, usually: &str) -> Heartbeat {
        let (stop, rx) = mpsc::channel::<()>();
        let label = format!("xtask: {} {}: still {}", self.tag, self.subject, self.doing);
        let usually = usually.to_string();
        let started = self.started;
        let thread = thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                say(&format!("{label}, {} so far (usually {usually})", human(started.elapsed())));
            }
        });
        Heartbeat { stop: Some(stop), thread: Some(thread) }
    }
}

pub struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// A command's stdout when it ran and succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with stdout and stderr appended to `log`; on failure the error carries the
/// log's last lines, so the cause is on screen without opening the file.
pub fn run_logged(cmd: &mut Command, log: &std::path::Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let status =
        cmd.stdout(file.try_clone()?).stderr(file).status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        bail!("{cmd:?} failed with {status}; last lines of {}:\n{tail}", log.display());
    }
    Ok(())
}
