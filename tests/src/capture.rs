//! `hoptrace capture`: the agent's JSON event stream and typed access to it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{collect, hoptrace_bin, signal, text, wait_until, POLL, READY_TIMEOUT};

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
    fn eq(self, key: &str, value: impl Into<Value>) -> Events<'a> {
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
