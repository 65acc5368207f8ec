//! Loads the kernel programs, fills in their configuration and filters, and attaches them.
//!
//! Everything that can go wrong here is turned into a one-line error that says what to do:
//! see `preflight` for the checks that run before the bpf() syscall is ever made.

pub mod applog;
pub mod btf;
pub mod kernel_log;
pub mod preflight;
pub mod tracefs;

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{ProgramError, TracePoint},
    Ebpf, EbpfLoader,
};
use hoptrace_common::{
    Config, DropReason, DEFAULT_CAPTURE_CAP, DROP_REASONS, FILTER_CGROUP_EXCLUDE, FILTER_CGROUP_INCLUDE,
    FILTER_EXCLUDE, FILTER_INCLUDE, FILTER_PID_EXCLUDE, FILTER_PID_INCLUDE, FILTER_PORT_EXCLUDE, FILTER_PORT_INCLUDE,
    MAX_CAPTURE_CAP,
};

/// The kernel object, built by build.rs from ebpf/programs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hoptrace"));

/// Which program goes on which tracepoint. `optional` tracepoints may be missing on some
/// kernels or architectures (dup2 does not exist on arm64; close_range is 5.9+).
const ATTACHMENTS: &[(&str, &str, &str, bool)] = &[
    ("enter_read", "syscalls", "sys_enter_read", false),
    ("enter_write", "syscalls", "sys_enter_write", false),
    ("enter_readv", "syscalls", "sys_enter_readv", false),
    ("enter_writev", "syscalls", "sys_enter_writev", false),
    ("enter_recvfrom", "syscalls", "sys_enter_recvfrom", false),
    ("enter_sendto", "syscalls", "sys_enter_sendto", false),
    ("enter_recvmsg", "syscalls", "sys_enter_recvmsg", false),
    ("enter_sendmsg", "syscalls", "sys_enter_sendmsg", false),
    ("enter_sendfile", "syscalls", "sys_enter_sendfile64", false),
    ("exit_data", "syscalls", "sys_exit_read", false),
    ("exit_data", "syscalls", "sys_exit_write", false),
    ("exit_data", "syscalls", "sys_exit_readv", false),
    ("exit_data", "syscalls", "sys_exit_writev", false),
    ("exit_data", "syscalls", "sys_exit_recvfrom", false),
    ("exit_data", "syscalls", "sys_exit_sendto", false),
    ("exit_data", "syscalls", "sys_exit_recvmsg", false),
    ("exit_data", "syscalls", "sys_exit_sendmsg", false),
    ("exit_data", "syscalls", "sys_exit_sendfile64", false),
    ("enter_connect", "syscalls", "sys_enter_connect", false),
    ("exit_connect", "syscalls", "sys_exit_connect", false),
    ("exit_accept", "syscalls", "sys_exit_accept", false),
    ("exit_accept4", "syscalls", "sys_exit_accept4", false),
    ("enter_close", "syscalls", "sys_enter_close", false),
    ("enter_dup", "syscalls", "sys_enter_dup2", true),
    ("enter_dup", "syscalls", "sys_enter_dup3", false),
    ("bump_generation", "syscalls", "sys_enter_close_range", true),
    ("on_exec", "sched", "sched_process_exec", false),
    ("exit_process", "sched", "sched_process_exit", false),
    ("sock_state", "sock", "inet_sock_set_state", true),
];

/// Fields of sock/inet_sock_set_state the `sock_state` program reads, in KernelOffsets order.
const SOCK_STATE_FIELDS: [&str; 11] = [
    "skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr", "daddr", "saddr_v6", "daddr_v6",
];

/// Tail-call targets, in EMITTERS index order (see ebpf/programs).
const EMITTERS: [&str; 2] = ["emit_contiguous", "emit_vectored"];

/// What to capture; everything else about the kernel side is derived.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Per-syscall capture cap in bytes.
    pub capture_cap: u32,
    /// Ring buffer size in bytes (rounded up to a power of two, at least one page).
    pub ringbuf_bytes: u32,
    pub allow_mount_tracefs: bool,
    pub filters: Filters,
    /// Load the OpenSSL uprobe programs (see [`crate::capture::Capture::load`]).
    pub tls: bool,
    /// Attach the Python Context probe to selected CPython processes (see
    /// [`crate::capture::python`]).
    pub python_context: bool,
    /// Turn on the kernel programs' diagnostics (aya-log), drained into the agent's log.
    pub kernel_log: bool,
    /// Capture selected processes' stdout/stderr writes (see [`applog`]).
    pub app_logs: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            capture_cap: DEFAULT_CAPTURE_CAP,
            ringbuf_bytes: 8 * 1024 * 1024,
            allow_mount_tracefs: true,
            filters: Filters::default(),
            tls: true,
            python_context: true,
            kernel_log: false,
            app_logs: false,
        }
    }
}

/// Include/exclude lists pushed into kernel maps. An include list, when non-empty, means
/// "only these"; exclusions always win.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub exclude_pids: Vec<u32>,
    /// cgroup v2 directories (their inode number is the kernel's cgroup id).
    pub cgroups: Vec<PathBuf>,
    pub exclude_cgroups: Vec<PathBuf>,
    /// Captured when either end of the connection uses one of these ports.
    pub ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
}

/// The loaded and attached programs; dropping it detaches everything.
pub struct Loaded {
    /// Visible to `crate::capture::tls`, which attaches the OpenSSL uprobes as libraries show up.
    pub(crate) ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    /// Number of tracepoint attachments made.
    pub attachments: usize,
    /// Tracepoints that do not exist on this kernel (optional ones only).
    pub skipped: Vec<String>,
    /// Kernel diagnostics drain (`--kernel-log` only).
    _kernel_log: Option<kernel_log::KernelLog>,
}

impl Loaded {
    /// Kernel-side drop counters, summed over CPUs, in `DropReason` order.
    pub fn kernel_drops(&self) -> Result<[u64; DROP_REASONS]> {
        let map = self.ebpf.map("DROPS").context("DROPS map missing")?;
        read_drops(&PerCpuArray::try_from(map)?)
    }

    /// A handle on the drop counters that outlives borrows of `self` (own map fd).
    pub fn drops_reader(&self) -> Result<DropsReader> {
        let map = self.ebpf.map("DROPS").context("DROPS map missing")?;
        let data = match map {
            // A duplicate of our own fd: BPF_MAP_GET_FD_BY_ID (MapData::from_id) needs
            // CAP_SYS_ADMIN, which the agent runs without (DaemonSet, systemd unit).
            aya::maps::Map::PerCpuArray(d) => {
                use std::os::fd::AsFd as _;
                MapData::from_fd(d.fd().as_fd().try_clone_to_owned().context("dup of the DROPS map fd")?)?
            }
            _ => return Err(anyhow!("DROPS is not a per-CPU array")),
        };
        Ok(DropsReader { map: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))? })
    }
}

fn read_drops<T: std::borrow::Borrow<MapData>>(drops: &PerCpuArray<T, u64>) -> Result<[u64; DROP_REASONS]> {
    let mut out = [0u64; DROP_REASONS];
    for reason in DropReason::ALL {
        let values = drops.get(&(reason as u32), 0)?;
        out[reason as usize] = values.iter().sum();
    }
    Ok(out)
}

pub struct DropsReader {
    map: PerCpuArray<MapData, u64>,
}

impl DropsReader {
    pub fn read(&self) -> Result<[u64; DROP_REASONS]> {
        read_drops(&self.map)
    }
}

fn cgroup_id(path: &PathBuf) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("cgroup filter {}: cannot stat it", path.display()))?;
    Ok(meta.ino())
}

/// Runs the preflight checks, loads, configures and attaches everything.
pub fn load(opts: &CaptureOptions) -> Result<Loaded> {
    let tracefs = preflight(opts)?;
    let (config, sock_state) = kernel_config(opts, &tracefs)?;
    let ring_bytes = ring_bytes(opts);
    let mut loader = EbpfLoader::new();
    loader.override_global("CONFIG", &config, true).map_max_entries("EVENTS", ring_bytes);
    let log_on = opts.kernel_log || kernel_log::requested()?;
    if log_on {
        loader.override_global(kernel_log::GLOBAL, &1u8, true);
    }
    if opts.app_logs {
        loader.override_global(applog::GLOBAL, &1u8, true);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object into the kernel failed")?;
    let kernel_log = if log_on { Some(kernel_log::KernelLog::start(&mut ebpf)?) } else { None };
    fill_filters(&mut ebpf, &opts.filters)?;
    let (attachments, skipped) = attach_tracepoints(&mut ebpf, &tracefs, sock_state)?;
    load_emitters(&mut ebpf)?;
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    Ok(Loaded { ebpf, ring, attachments, skipped, _kernel_log: kernel_log })
}

/// What must hold before anything is loaded; returns where tracefs is.
fn preflight(opts: &CaptureOptions) -> Result<PathBuf> {
    preflight::check_privileges()?;
    preflight::check_kernel_release(&preflight::kernel_release())?;
    preflight::check_btf()?;
    let tracefs = preflight::ensure_tracefs(opts.allow_mount_tracefs)?;
    if opts.capture_cap == 0 || opts.capture_cap > MAX_CAPTURE_CAP {
        return Err(anyhow!(
            "capture cap {} is out of range: it must be between 1 and {MAX_CAPTURE_CAP} bytes",
            opts.capture_cap
        ));
    }
    // memlock limits still apply to map memory on kernels before 5.11.
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit struct by reference; failure is harmless (checked by the load).
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if EBPF_OBJECT.is_empty() {
        return Err(anyhow!(
            "this hoptrace binary was built with AYA_BUILD_SKIP=1 and has no eBPF programs; rebuild without it"
        ));
    }
    Ok(tracefs)
}

/// The ring buffer's size: a power of two, at least a page.
fn ring_bytes(opts: &CaptureOptions) -> u32 {
    opts.ringbuf_bytes.max(4096).next_power_of_two()
}

/// The programs' load-time configuration: struct offsets from this kernel's BTF and
/// tracepoint formats, the capture cap, filter switches, ring thresholds. Also whether
/// the optional `sock/inet_sock_set_state` tracepoint exists.
fn kernel_config(opts: &CaptureOptions, tracefs: &Path) -> Result<(Config, bool)> {
    let mut offsets = btf::KernelBtf::from_file(preflight::BTF_PATH)?.kernel_offsets()?;
    // Optional: without this tracepoint, failed connects are simply not reported.
    let sock_state = tracefs.join("events/sock/inet_sock_set_state").is_dir();
    if sock_state {
        let f = tracefs::field_offsets(tracefs, "sock/inet_sock_set_state", &SOCK_STATE_FIELDS)?;
        (
            offsets.tp_skaddr,
            offsets.tp_oldstate,
            offsets.tp_newstate,
            offsets.tp_sport,
            offsets.tp_dport,
            offsets.tp_family,
            offsets.tp_protocol,
            offsets.tp_saddr,
            offsets.tp_daddr,
            offsets.tp_saddr_v6,
            offsets.tp_daddr_v6,
        ) = (f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10]);
    }
    let f = &opts.filters;
    let flags = [
        (!f.pids.is_empty(), FILTER_PID_INCLUDE),
        (!f.exclude_pids.is_empty(), FILTER_PID_EXCLUDE),
        (!f.cgroups.is_empty(), FILTER_CGROUP_INCLUDE),
        (!f.exclude_cgroups.is_empty(), FILTER_CGROUP_EXCLUDE),
        (!f.ports.is_empty(), FILTER_PORT_INCLUDE),
        (!f.exclude_ports.is_empty(), FILTER_PORT_EXCLUDE),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |flags, (_, bit)| flags | bit);
    let ring_bytes = ring_bytes(opts);
    let config = Config {
        self_tgid: std::process::id(),
        capture_cap: opts.capture_cap,
        filter_flags: flags,
        wakeup_bytes: ring_bytes / 8,
        data_limit_bytes: ring_bytes - ring_bytes / 8,
        offsets,
    };
    Ok((config, sock_state))
}

/// Loads and attaches every tracepoint program; returns the attachment count and the
/// optional tracepoints this kernel lacks.
fn attach_tracepoints(ebpf: &mut Ebpf, tracefs: &Path, sock_state: bool) -> Result<(usize, Vec<String>)> {
    let mut attachments = 0;
    let mut skipped = Vec::new();
    let mut loaded_programs: Vec<&str> = Vec::new();
    for &(prog_name, category, tp, optional) in ATTACHMENTS {
        if category == "sock" && !sock_state {
            skipped.push(format!("{category}/{tp}"));
            continue;
        }
        if category == "syscalls" {
            if !tracefs.join("events/syscalls").join(tp).is_dir() {
                if optional {
                    skipped.push(format!("{category}/{tp}"));
                    continue;
                }
                return Err(anyhow!(
                    "tracepoint {category}/{tp} does not exist on this kernel (needs CONFIG_FTRACE_SYSCALLS)"
                ));
            }
            tracefs::check_syscall_layout(tracefs, tp)?;
        }
        let program: &mut TracePoint = ebpf
            .program_mut(prog_name)
            .ok_or_else(|| anyhow!("program {prog_name} missing from the eBPF object"))?
            .try_into()?;
        if !loaded_programs.contains(&prog_name) {
            program.load().map_err(|e| verifier_error(prog_name, e))?;
            loaded_programs.push(prog_name);
        }
        program.attach(category, tp).with_context(|| format!("attaching {prog_name} to tracepoint {category}/{tp}"))?;
        attachments += 1;
    }
    Ok((attachments, skipped))
}

/// The chunk emitters are reached by tail call from exit_data, not attached.
fn load_emitters(ebpf: &mut Ebpf) -> Result<()> {
    let mut emitter_fds = Vec::new();
    for name in EMITTERS {
        let program: &mut TracePoint =
            ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?.try_into()?;
        program.load().map_err(|e| verifier_error(name, e))?;
        emitter_fds.push(program.fd()?.try_clone()?);
    }
    let mut table: ProgramArray<_> = ProgramArray::try_from(ebpf.map_mut("EMITTERS").context("EMITTERS map missing")?)?;
    for (index, fd) in emitter_fds.iter().enumerate() {
        table.set(index as u32, fd, 0)?;
    }
    Ok(())
}

pub(crate) fn verifier_error(name: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!("the kernel verifier rejected program {name}: {io_error}\n--- verifier log ---\n{verifier_log}")
        }
        other => anyhow!("loading program {name} failed: {other}"),
    }
}

fn fill_filters(ebpf: &mut Ebpf, f: &Filters) -> Result<()> {
    {
        let mut pids: HashMap<_, u32, u8> =
            HashMap::try_from(ebpf.map_mut("PID_FILTER").context("PID_FILTER missing")?)?;
        for p in &f.pids {
            pids.insert(p, FILTER_INCLUDE, 0)?;
        }
        for p in &f.exclude_pids {
            pids.insert(p, FILTER_EXCLUDE, 0)?;
        }
    }
    {
        let mut cgroups: HashMap<_, u64, u8> =
            HashMap::try_from(ebpf.map_mut("CGROUP_FILTER").context("CGROUP_FILTER missing")?)?;
        for c in &f.cgroups {
            cgroups.insert(cgroup_id(c)?, FILTER_INCLUDE, 0)?;
        }
        for c in &f.exclude_cgroups {
            cgroups.insert(cgroup_id(c)?, FILTER_EXCLUDE, 0)?;
        }
    }
    let mut ports: HashMap<_, u16, u8> =
        HashMap::try_from(ebpf.map_mut("PORT_FILTER").context("PORT_FILTER missing")?)?;
    for p in &f.ports {
        ports.insert(p, FILTER_INCLUDE, 0)?;
    }
    for p in &f.exclude_ports {
        ports.insert(p, FILTER_EXCLUDE, 0)?;
    }
    Ok(())
}
