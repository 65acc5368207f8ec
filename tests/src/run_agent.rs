//! `hoptrace run`: start it, and read its counters when it stops.

use std::process::Command;

use serde_json::Value;

use crate::{hoptrace_bin, without_otel_env, Running, READY_TIMEOUT, TIMEOUT};

/// A running `hoptrace run`. Dropping it kills the agent.
pub struct RunAgent {
    process: Running,
}

/// What `hoptrace run` logged when it stopped.
#[derive(Debug)]
pub struct Stopped {
    /// The `{"level":"info","msg":"stopped",...}` line, parsed.
    pub log: Value,
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
        Stopped { log, stderr: done.stderr }
    }
}
