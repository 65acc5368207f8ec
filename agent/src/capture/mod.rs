//! Capture: from the kernel's ring buffer to ordered byte streams per connection.
//!
//! [`loader`] checks the kernel, computes struct offsets from BTF, loads and attaches the
//! programs of `ebpf/programs`; [`events`] is the only code that reads kernel record bytes;
//! [`conntrack`] keeps the connection table with one ordered [`stream`] per direction;
//! [`tls`] attaches the OpenSSL uprobes and reports processes whose TLS cannot be seen;
//! [`python`] attaches the Context probe to selected CPython processes;
//! [`driver`] runs the loop and hands what happened to a [`driver::Consumer`], beating a
//! [`heartbeat`] at every tick;
//! [`counters`] and [`ringfill`] account for everything captured and dropped.

pub mod conntrack;
pub mod counters;
pub mod driver;
pub mod events;
pub mod heartbeat;
pub mod loader;
pub mod python;
pub mod ringfill;
pub mod stream;
pub mod tls;

use anyhow::Result;

use self::{
    loader::{CaptureOptions, Loaded},
    python::PythonWatcher,
    tls::TlsWatcher,
};

/// Everything attached to the kernel: the syscall programs and their ring buffer, and the
/// OpenSSL uprobes when asked for. Dropping it detaches everything.
pub struct Capture {
    pub loaded: Loaded,
    /// OpenSSL uprobes: libraries attached so far; the driver keeps it up to date.
    pub tls: Option<TlsWatcher>,
    /// The Python Context probe: processes attached so far.
    pub python: Option<PythonWatcher>,
}

impl Capture {
    /// Loads and attaches the syscall programs, then the OpenSSL probes — before the agent
    /// reports ready, so TLS traffic that starts afterwards is seen from its first byte
    /// (for libraries on the host or mapped by running processes).
    pub fn load(opts: &CaptureOptions) -> Result<Self> {
        let mut loaded = loader::load(opts)?;
        let tls = if opts.tls {
            tls::load_programs(&mut loaded.ebpf)?;
            let mut watcher = TlsWatcher::new();
            watcher.scan_initial(&mut loaded.ebpf);
            Some(watcher)
        } else {
            None
        };
        let python = if opts.python_context {
            python::load_program(&mut loaded.ebpf)?;
            let mut watcher = PythonWatcher::new(opts.filters.clone());
            watcher.scan_initial(&mut loaded.ebpf);
            Some(watcher)
        } else {
            None
        };
        Ok(Self { loaded, tls, python })
    }
}
