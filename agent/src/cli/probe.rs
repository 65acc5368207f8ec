//! Probe options shared by every command that loads the kernel programs (`run`,
//! `capture`, `check`): what to capture, how much, and the connection table's limits.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use hoptrace_common::DEFAULT_CAPTURE_CAP;

use crate::{
    capture::{
        conntrack::{ConnTable, Limits},
        loader::{CaptureOptions, Filters},
    },
    config::{CaptureConfig, Config},
};

/// What to load and capture; shared by every command that loads the kernel programs.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
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
    /// Seconds without a capture-loop tick (one a second) after which the /healthz of
    /// `hoptrace run` answers 503 (at least 2).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
    pub stall_timeout: u64,
    /// Do not mount tracefs when it is missing; fail instead.
    #[arg(long)]
    pub no_mount_tracefs: bool,
    /// Do not attach the OpenSSL uprobes (TLS plaintext capture).
    #[arg(long)]
    pub no_tls: bool,
    /// Do not attach the Python Context probe (`PyContext_CopyCurrent`) that links the
    /// calls of async Python services (asyncio, FastAPI) to the request they serve.
    #[arg(long)]
    pub no_python_context: bool,
    /// Turn on the kernel programs' diagnostics (rare paths: tables full, unexpected
    /// sockets, TLS oddities) as JSON log lines; also HOPTRACE_KERNEL_LOG=1. Off by default.
    #[arg(long)]
    pub kernel_log: bool,
    /// Exit after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}

impl ProbeArgs {
    /// Fills what the command line left at its defaults with the configuration's values; a
    /// flag that was given wins. Lists: the command line's when it gave any.
    pub fn apply_config(&mut self, config: &Config) {
        let probe = self;
        let (c, d) = (&config.capture, CaptureConfig::default());
        fn list<T: Clone>(flag: &mut Vec<T>, cfg: &[T]) {
            if flag.is_empty() {
                *flag = cfg.to_vec();
            }
        }
        fn value<T: PartialEq>(flag: &mut T, default: T, cfg: T) {
            if *flag == default {
                *flag = cfg;
            }
        }
        list(&mut probe.ports, &c.ports);
        list(&mut probe.exclude_ports, &c.exclude_ports);
        list(&mut probe.pids, &c.pids);
        list(&mut probe.exclude_pids, &c.exclude_pids);
        list(&mut probe.cgroups, &c.cgroups);
        list(&mut probe.exclude_cgroups, &c.exclude_cgroups);
        value(&mut probe.capture_cap, d.capture_cap, c.capture_cap);
        value(&mut probe.ringbuf_size, d.ringbuf_size, c.ringbuf_size);
        value(&mut probe.max_connections, d.max_connections, c.max_connections);
        value(&mut probe.idle_timeout, d.idle_timeout.as_secs(), c.idle_timeout.as_secs());
        value(&mut probe.stall_timeout, d.stall_timeout.as_secs(), c.stall_timeout.as_secs());
    }
}

/// Options shared by every command that loads the kernel programs.
pub fn capture_options(args: &ProbeArgs) -> CaptureOptions {
    CaptureOptions {
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
        tls: !args.no_tls,
        python_context: !args.no_python_context,
        kernel_log: args.kernel_log,
        app_logs: false,
    }
}

pub fn conn_table(args: &ProbeArgs) -> ConnTable {
    ConnTable::new(Limits {
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::from_str;

    #[derive(Parser)]
    struct ProbeCli {
        #[command(flatten)]
        probe: ProbeArgs,
    }

    fn probe(flags: &[&str]) -> ProbeArgs {
        ProbeCli::try_parse_from(std::iter::once("hoptrace").chain(flags.iter().copied())).unwrap().probe
    }

    #[test]
    fn command_line_flags_win_over_the_file() {
        let cfg = from_str(
            "capture:\n  ports: [80]\n  exclude_ports: [22]\n  pids: [7]\n  cgroups: [/sys/fs/cgroup/a]\n  capture_cap: 4096\n  ringbuf_size: 65536\n  max_connections: 10\n  idle_timeout_s: 60\n  stall_timeout_s: 9\n",
        )
        .unwrap();
        let mut p = probe(&["--port", "8080", "--ringbuf-size", "1048576", "--duration", "5"]);
        p.apply_config(&cfg);
        assert_eq!(p.ports, vec![8080]);
        assert_eq!(p.exclude_ports, vec![22]);
        assert_eq!(p.pids, vec![7]);
        assert_eq!(p.cgroups, vec![std::path::PathBuf::from("/sys/fs/cgroup/a")]);
        assert_eq!(p.capture_cap, 4096);
        assert_eq!(p.ringbuf_size, 1048576);
        assert_eq!(p.max_connections, 10);
        assert_eq!(p.idle_timeout, 60);
        assert_eq!(p.stall_timeout, 9);
        assert_eq!(p.duration, Some(5.0));

        // A default configuration changes nothing.
        let mut p = probe(&[]);
        p.apply_config(&from_str("").unwrap());
        assert_eq!(format!("{p:?}"), format!("{:?}", probe(&[])));
    }

    #[test]
    fn capture_defaults_are_the_command_lines() {
        let (p, d) = (probe(&[]), CaptureConfig::default());
        assert_eq!(
            (p.capture_cap, p.ringbuf_size, p.max_connections, p.idle_timeout, p.stall_timeout),
            (d.capture_cap, d.ringbuf_size, d.max_connections, d.idle_timeout.as_secs(), d.stall_timeout.as_secs())
        );
    }
}
