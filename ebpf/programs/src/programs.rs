//! The tracepoint programs and the maps they share.
//!
//! Flow for a data syscall (read/write/…): the *enter* program decides whether the
//! descriptor is a captured TCP socket (cache in `FDS`, else walk the task's descriptor
//! table) and stashes the arguments in `INFLIGHT` keyed by thread; the single *exit*
//! program copies the bytes the syscall really moved, chunk by chunk, into `EVENTS`.
//!
//! Descriptor → socket resolution reads kernel structs through offsets that the agent
//! computed from the running kernel's BTF and wrote into `CONFIG` before load.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use hoptrace_common::*;

/// OpenSSL uprobes: plaintext of TLS connections (see the module's doc).
mod tls;

/// Load-time configuration (offsets, capture cap, filter switches), set by the agent.
#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per-CPU scratch space where a data record is assembled before it is copied out.
#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Kernel-side loss and truncation counters, indexed by `DropReason`.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS as u32, 0);

/// Per-CPU connection id sequence (ids are `(cpu + 1) << 48 | seq`).
#[map]
static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls in flight on captured sockets: one slot per thread id modulo the size, found
/// without hashing or locking (a hash-map insert and delete per syscall cost more than
/// the rest of the enter program). A thread whose slot another thread holds at that
/// moment (a blocked read, say) goes to `INFLIGHT_SPILL`, and the slot is marked so that
/// exits mapping to it look there too.
#[map]
static INFLIGHT: Array<InflightSlot> = Array::with_max_entries(INFLIGHT_SLOTS, 0);
const INFLIGHT_SLOTS: u32 = 1 << 15;

#[map]
static INFLIGHT_SPILL: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct InflightSlot {
    /// Owning thread id, 0 when free (tid 0 never makes syscalls).
    owner: u32,
    /// Set once a call of a thread mapping here went to `INFLIGHT_SPILL` (never cleared:
    /// exits of this slot's threads then also look there).
    spilled: u32,
    call: Inflight,
}

/// Stores the arguments of the current thread's syscall for its exit program.
///
/// The bpf target has no compare-and-swap, so two threads of one slot entering on two
/// CPUs at the same instant can interleave their writes; `call.tid` travels with the
/// arguments and `inflight_take` only accepts a slot whose owner and arguments are both
/// its own (and counts the torn case), so a race loses a call but never mixes two.
#[inline(always)]
fn inflight_put(tid: u32, mut call: Inflight) {
    call.tid = tid;
    let Some(slot) = INFLIGHT.get_ptr_mut(tid & (INFLIGHT_SLOTS - 1)) else {
        return;
    };
    // SAFETY: `slot` points into the array map's value memory, valid while the map is.
    unsafe {
        let owner = core::ptr::read_volatile(&(*slot).owner);
        if owner == 0 || owner == tid {
            (*slot).call = call;
            core::ptr::write_volatile(&mut (*slot).owner, tid);
            return;
        }
        if INFLIGHT_SPILL.insert(tid, call, 0).is_err() {
            count_drop(DropReason::ArgsMapFull, 1);
            return;
        }
        core::ptr::write_volatile(&mut (*slot).spilled, 1);
    }
}

/// Takes the arguments `inflight_put` stored for the current thread, if any.
#[inline(always)]
fn inflight_take(tid: u32) -> Option<Inflight> {
    let slot = INFLIGHT.get_ptr_mut(tid & (INFLIGHT_SLOTS - 1))?;
    // SAFETY: as in `inflight_put`.
    unsafe {
        let owner = core::ptr::read_volatile(&(*slot).owner);
        if owner == tid {
            let call = (*slot).call;
            core::ptr::write_volatile(&mut (*slot).owner, 0);
            if call.tid == tid {
                return Some(call);
            }
            // Torn by a same-slot thread entering at the same instant: lost, counted.
            count_drop(DropReason::ArgsMapFull, 1);
            return None;
        }
        if core::ptr::read_volatile(&(*slot).spilled) == 0 {
            return None;
        }
        let call = *INFLIGHT_SPILL.get(tid)?;
        let _ = INFLIGHT_SPILL.remove(tid);
        Some(call)
    }
}

/// (tgid << 32 | fd) → what that descriptor is. `sk == 0` means "not captured".
#[map]
pub(crate) static FDS: LruHashMap<u64, FdEntry> = LruHashMap::with_max_entries(131072, 0);

/// struct sock address → connection state shared by every process holding the socket.
#[map]
pub(crate) static CONNS: LruHashMap<u64, ConnEntry> = LruHashMap::with_max_entries(65536, 0);

/// tgid → descriptor-table generation. Bumped on exec, exit and close_range, which close
/// descriptors without a close() we could see; `FDS` entries of an older generation are stale.
#[map]
static GENS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

#[map]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Inflight {
    /// The thread these arguments belong to (checked by `inflight_take`).
    tid: u32,
    buf: u64,
    /// Buffer length, or iovec count for vectored calls.
    count: u64,
    sk: u64,
    ts_enter: u64,
    fd: i32,
    syscall: u8,
    vectored: u8,
    /// The descriptor was already recorded for this process at enter time.
    known: u8,
    /// The syscall was made inside an SSL_read/SSL_write of the same thread: ciphertext.
    in_ssl: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FdEntry {
    pub sk: u64,
    pub gen: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ConnEntry {
    conn_id: u64,
    bytes_egress: u64,
    bytes_ingress: u64,
    role: u8,
    ignored: u8,
    family: u16,
    local_port: u16,
    remote_port: u16,
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
    /// Plaintext offsets (SSL_write / SSL_read), separate from the socket's byte stream.
    tls_egress: u64,
    tls_ingress: u64,
    /// Set once a syscall on this socket ran inside an SSL_* call or plaintext was seen:
    /// from then on the socket's (ciphertext) payload is counted but no longer copied.
    tls: u8,
    _pad: [u8; 7],
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;
/// Offset of the first syscall argument / the return value in syscall tracepoint records
/// (checked against the tracepoint format files by the agent before load).
const ARG0: usize = 16;

#[inline(always)]
pub(crate) fn config() -> &'static Config {
    // Volatile so the compiler does not fold the all-zero initializer; the verifier sees
    // the values the agent wrote into .rodata as constants anyway.
    unsafe { &*core::ptr::read_volatile(&&CONFIG) }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(ARG0 + 8 * n) as *const u64) }
}

/// Ring-buffer flags for one record. Waking the consumer costs an irq_work per record
/// (microseconds); instead records go in silently and userspace polls on a short timer,
/// except when the ring holds more than `wakeup_bytes`: then wake it now so it drains
/// before the ring fills.
#[inline(always)]
pub(crate) fn ring_flags() -> u64 {
    wakeup_flags(EVENTS.query(BPF_RB_AVAIL_DATA))
}

const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
fn wakeup_flags(waiting: u64) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    if waiting > config().wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Flags for a data record of `len` bytes, or None (counted as `ringbuf_full`) when it
/// would eat into the room kept for control records (`Config::data_limit_bytes`).
#[inline(always)]
pub(crate) fn data_ring_flags(len: usize) -> Option<u64> {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting + len as u64 > config().data_limit_bytes as u64 {
        count_drop(DropReason::RingbufFull, 1);
        return None;
    }
    Some(wakeup_flags(waiting))
}

#[inline(always)]
pub(crate) fn count_drop(reason: DropReason, n: u64) {
    if let Some(p) = DROPS.get_ptr_mut(reason as u32) {
        unsafe { *p += n };
    }
}

#[inline(always)]
fn kread<T: Copy>(addr: u64) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let r =
        unsafe { bpf_probe_read_kernel(v.as_mut_ptr() as *mut c_void, size_of::<T>() as u32, addr as *const c_void) };
    if r == 0 {
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

#[inline(always)]
pub(crate) fn uread<T: Copy>(addr: u64) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let r = unsafe { bpf_probe_read_user(v.as_mut_ptr() as *mut c_void, size_of::<T>() as u32, addr as *const c_void) };
    if r == 0 {
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

/// True when this process must not be captured (the agent itself, or filtered out).
#[inline(always)]
pub(crate) fn process_filtered(tgid: u32) -> bool {
    let cfg = config();
    if tgid == cfg.self_tgid {
        return true;
    }
    let flags = cfg.filter_flags;
    if flags & (FILTER_PID_INCLUDE | FILTER_PID_EXCLUDE) != 0 {
        let v = unsafe { PID_FILTER.get(tgid) }.copied().unwrap_or(0);
        if flags & FILTER_PID_INCLUDE != 0 && v != FILTER_INCLUDE {
            return true;
        }
        if v == FILTER_EXCLUDE {
            return true;
        }
    }
    if flags & (FILTER_CGROUP_INCLUDE | FILTER_CGROUP_EXCLUDE) != 0 {
        let cg = unsafe { bpf_get_current_cgroup_id() };
        let v = unsafe { CGROUP_FILTER.get(cg) }.copied().unwrap_or(0);
        if flags & FILTER_CGROUP_INCLUDE != 0 && v != FILTER_INCLUDE {
            return true;
        }
        if v == FILTER_EXCLUDE {
            return true;
        }
    }
    false
}

#[inline(always)]
fn port_filtered(local: u16, remote: u16) -> bool {
    let flags = config().filter_flags;
    if flags & (FILTER_PORT_INCLUDE | FILTER_PORT_EXCLUDE) == 0 {
        return false;
    }
    let l = unsafe { PORT_FILTER.get(local) }.copied().unwrap_or(0);
    let r = unsafe { PORT_FILTER.get(remote) }.copied().unwrap_or(0);
    if l == FILTER_EXCLUDE || r == FILTER_EXCLUDE {
        return true;
    }
    flags & FILTER_PORT_INCLUDE != 0 && l != FILTER_INCLUDE && r != FILTER_INCLUDE
}

#[inline(always)]
pub(crate) fn current_gen(tgid: u32) -> u64 {
    unsafe { GENS.get(tgid) }.copied().unwrap_or(0)
}

pub(crate) enum Resolved {
    /// A TCP socket (IPv4 or IPv6); the `struct sock` address.
    Tcp(u64),
    /// Anything else: file, pipe, unix or UDP socket, or an fd that is not open.
    Other,
    /// A kernel read failed; do not cache anything.
    Fault,
}

/// Walks current->files->fdt->fd[fd] to the struct sock, if the descriptor is a TCP socket.
#[inline(always)]
pub(crate) fn resolve_fd(fd: i32) -> Resolved {
    if fd < 0 {
        return Resolved::Other;
    }
    let o = &config().offsets;
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = kread::<u64>(task + o.task_files as u64) else {
        return Resolved::Fault;
    };
    let Some(fdt) = kread::<u64>(files + o.files_fdt as u64) else {
        return Resolved::Fault;
    };
    let Some(max_fds) = kread::<u32>(fdt + o.fdt_max_fds as u64) else {
        return Resolved::Fault;
    };
    if fd as u32 >= max_fds {
        return Resolved::Other;
    }
    let Some(fd_array) = kread::<u64>(fdt + o.fdt_fd as u64) else {
        return Resolved::Fault;
    };
    let Some(file) = kread::<u64>(fd_array + 8 * fd as u64) else {
        return Resolved::Fault;
    };
    if file == 0 {
        return Resolved::Other;
    }
    let Some(inode) = kread::<u64>(file + o.file_inode as u64) else {
        return Resolved::Fault;
    };
    let Some(mode) = kread::<u16>(inode + o.inode_mode as u64) else {
        return Resolved::Fault;
    };
    if mode & S_IFMT != S_IFSOCK {
        return Resolved::Other;
    }
    let Some(socket) = kread::<u64>(file + o.file_private_data as u64) else {
        return Resolved::Fault;
    };
    let Some(sk) = kread::<u64>(socket + o.socket_sk as u64) else {
        return Resolved::Fault;
    };
    if sk == 0 {
        return Resolved::Other;
    }
    let Some(family) = kread::<u16>(sk + o.sk_family as u64) else {
        return Resolved::Fault;
    };
    if family != AF_INET && family != AF_INET6 {
        return Resolved::Other;
    }
    let Some(proto) = kread::<u16>(sk + o.sk_protocol as u64) else {
        return Resolved::Fault;
    };
    if proto != IPPROTO_TCP {
        return Resolved::Other;
    }
    Resolved::Tcp(sk)
}

#[inline(always)]
fn next_conn_id() -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    ((cpu + 1) << 48) | (seq & 0xffff_ffff_ffff)
}

/// Reads the 4-tuple of a socket into a fresh connection entry.
#[inline(always)]
fn read_tuple(sk: u64, entry: &mut ConnEntry) -> bool {
    let o = &config().offsets;
    let Some(family) = kread::<u16>(sk + o.sk_family as u64) else {
        return false;
    };
    let Some(lport) = kread::<u16>(sk + o.sk_num as u64) else {
        return false;
    };
    let Some(rport) = kread::<u16>(sk + o.sk_dport as u64) else {
        return false;
    };
    entry.family = family;
    entry.local_port = lport; // host byte order in the kernel (skc_num)
    entry.remote_port = u16::from_be(rport); // network byte order (skc_dport)
    if family == AF_INET {
        let Some(l) = kread::<[u8; 4]>(sk + o.sk_rcv_saddr as u64) else {
            return false;
        };
        let Some(r) = kread::<[u8; 4]>(sk + o.sk_daddr as u64) else {
            return false;
        };
        entry.local_addr[..4].copy_from_slice(&l);
        entry.remote_addr[..4].copy_from_slice(&r);
    } else {
        let Some(l) = kread::<[u8; 16]>(sk + o.sk_v6_rcv_saddr as u64) else {
            return false;
        };
        let Some(r) = kread::<[u8; 16]>(sk + o.sk_v6_daddr as u64) else {
            return false;
        };
        entry.local_addr = l;
        entry.remote_addr = r;
    }
    true
}

#[inline(always)]
fn same_tuple(a: &ConnEntry, b: &ConnEntry) -> bool {
    a.local_port == b.local_port
        && a.remote_port == b.remote_port
        && a.family == b.family
        && a.local_addr == b.local_addr
        && a.remote_addr == b.remote_addr
}

#[inline(always)]
fn emit_open(c: &ConnEntry, via: Syscall, fd: i32, ts: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = unsafe { bpf_get_current_task() };
    let o = &config().offsets;
    let ppid = kread::<u64>(task + o.task_real_parent as u64)
        .and_then(|parent| kread::<u32>(parent + o.task_tgid as u64))
        .unwrap_or(0);
    let ev = OpenEvent {
        kind: EventKind::Open as u8,
        role: c.role,
        via: via as u8,
        _pad0: 0,
        family: c.family,
        local_port: c.local_port,
        remote_port: c.remote_port,
        _pad1: 0,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid,
        fd,
        _pad2: 0,
        conn_id: c.conn_id,
        ts_ns: ts,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        local_addr: c.local_addr,
        remote_addr: c.remote_addr,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    };
    if EVENTS.output::<OpenEvent>(&ev, ring_flags()).is_err() {
        count_drop(DropReason::ControlRingbufFull, 1);
    }
}

/// Records that the current process holds `fd` on socket `sk`, creating the connection
/// entry when `fresh` (accept/connect: a new connection even if `sk` memory was reused) or
/// when none exists yet. Returns the entry, or None when the connection is not captured.
#[inline(always)]
pub(crate) fn attach_fd(sk: u64, fd: i32, role: Role, via: Syscall, fresh: bool, ts: u64) -> Option<*mut ConnEntry> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = ((tgid as u64) << 32) | fd as u32 as u64;
    let gen = current_gen(tgid);
    let mut entry: ConnEntry = unsafe { core::mem::zeroed() };
    if !read_tuple(sk, &mut entry) {
        count_drop(DropReason::KernelReadFault, 1);
        return None;
    }
    // CONNS entries outlive their socket (nothing reliably marks a socket's end), so an
    // entry found under `sk` may belong to an earlier socket at the same address: only one
    // with the same tuple is this connection (another descriptor or process sharing it).
    let existing = if fresh { None } else { CONNS.get_ptr_mut(sk).filter(|c| same_tuple(unsafe { &**c }, &entry)) };
    let conn = match existing {
        Some(c) => c,
        None => {
            if role == Role::Client && entry.local_port == 0 {
                // connect() returned but the socket is already closed again (refused on
                // loopback): sock_state reports the failure; there is no connection.
                return None;
            }
            entry.conn_id = next_conn_id();
            entry.role = role as u8;
            entry.ignored = port_filtered(entry.local_port, entry.remote_port) as u8;
            if CONNS.insert(sk, entry, 0).is_err() {
                count_drop(DropReason::ConnMapFull, 1);
                return None;
            }
            CONNS.get_ptr_mut(sk)?
        }
    };
    let ignored = unsafe { (*conn).ignored } != 0;
    let fd_entry = FdEntry { sk: if ignored { 0 } else { sk }, gen };
    let _ = FDS.insert(key, fd_entry, 0);
    if ignored {
        return None;
    }
    emit_open(unsafe { &*conn }, via, fd, ts);
    Some(conn)
}

/// Common enter path of every data syscall: decide whether `fd` is captured and, if so,
/// remember the arguments for the exit program.
#[inline(always)]
fn data_enter(fd: i32, syscall: Syscall, buf: u64, count: u64, vectored: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if process_filtered(tgid) {
        return;
    }
    let key = ((tgid as u64) << 32) | fd as u32 as u64;
    let gen = current_gen(tgid);
    let mut known = 1;
    let sk = match unsafe { FDS.get(key) } {
        Some(e) if e.gen == gen => e.sk,
        _ => match resolve_fd(fd) {
            Resolved::Tcp(sk) => {
                known = 0;
                sk
            }
            Resolved::Other => {
                let _ = FDS.insert(key, FdEntry { sk: 0, gen }, 0);
                0
            }
            Resolved::Fault => {
                count_drop(DropReason::KernelReadFault, 1);
                0
            }
        },
    };
    if sk == 0 {
        return;
    }
    let inflight = Inflight {
        tid: 0,
        buf,
        count,
        sk,
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd,
        syscall: syscall as u8,
        vectored: vectored as u8,
        known,
        in_ssl: tls::note_syscall_fd(pid_tgid as u32, fd) as u8,
    };
    inflight_put(pid_tgid as u32, inflight);
}

/// What the emitter programs copy: written by `exit_data` into per-CPU memory right
/// before the tail call (same CPU, no preemption in between).
#[repr(C)]
#[derive(Clone, Copy)]
struct EmitJob {
    buf: u64,
    /// Buffer length, or iovec count for vectored calls.
    count: u64,
    captured: u32,
    /// Vectored calls: next iovec to copy, and bytes copied so far.
    iov_index: u32,
    done: u32,
    _pad: u32,
}

#[map]
static JOB: PerCpuArray<EmitJob> = PerCpuArray::with_max_entries(1, 0);

/// Emitter programs, reached by tail call so each is verified on its own, small.
#[map]
static EMITTERS: ProgramArray = ProgramArray::with_max_entries(2, 0);
const EMIT_CONTIGUOUS: u32 = 0;
const EMIT_VECTORED: u32 = 1;

/// Sends one chunk: `n` bytes from user address `src`, at `chunk_offset` in the call.
/// Returns false when the bytes could not be read (the rest of the call is abandoned).
#[inline(always)]
fn send_chunk(scratch: *mut DataEvent, src: u64, n: u32, chunk_offset: u32) -> bool {
    if n == 0 || n > CHUNK_SIZE as u32 {
        return false;
    }
    unsafe {
        if bpf_probe_read_user((*scratch).data.as_mut_ptr() as *mut c_void, n, src as *const c_void) != 0 {
            count_drop(DropReason::UserReadFault, 1);
            return false;
        }
        (*scratch).header.chunk_offset = chunk_offset;
        (*scratch).header.chunk_len = n;
        let len = size_of::<DataHeader>() + n as usize;
        let bytes = core::slice::from_raw_parts(scratch as *const u8, len);
        if let Some(flags) = data_ring_flags(len) {
            if EVENTS.output::<[u8]>(bytes, flags).is_err() {
                count_drop(DropReason::RingbufFull, 1);
            }
        }
    }
    true
}

/// read/write/recvfrom/sendto: one user buffer.
#[tracepoint]
pub fn emit_contiguous(_ctx: TracePointContext) -> u32 {
    emit_contiguous_job()
}

/// The chunk loop of `emit_contiguous`, shared with the uprobe-typed emitter (a tail call
/// only reaches programs of the caller's type).
#[inline(always)]
pub(crate) fn emit_contiguous_job() -> u32 {
    let Some(job) = JOB.get_ptr(0) else { return 0 };
    let job = unsafe { *job };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let captured = job.captured;
    for i in 0..MAX_CHUNKS_PER_CALL {
        let off = i * CHUNK_SIZE as u32;
        if off >= captured {
            break;
        }
        let rest = captured - off;
        let n = if rest > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { rest };
        if !send_chunk(scratch, job.buf + off as u64, n, off) {
            break;
        }
    }
    0
}

/// readv/writev/recvmsg/sendmsg: one iovec per invocation, then a tail call to itself
/// for the next one, so the verifier only ever sees the simple chunk loop.
#[tracepoint]
pub fn emit_vectored(ctx: TracePointContext) -> u32 {
    let Some(job) = JOB.get_ptr_mut(0) else {
        return 0;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let (buf, count, captured, index, done) =
        unsafe { ((*job).buf, (*job).count, (*job).captured, (*job).iov_index, (*job).done) };
    if done >= captured {
        return 0;
    }
    if index as u64 >= count || index >= MAX_IOVECS {
        count_drop(DropReason::IovLimitBytes, (captured - done) as u64);
        return 0;
    }
    // struct iovec { void *iov_base; size_t iov_len; } — userspace ABI.
    let Some(iov) = uread::<[u64; 2]>(buf + 16 * index as u64) else {
        count_drop(DropReason::UserReadFault, 1);
        return 0;
    };
    let want = (captured - done) as u64;
    let len = if iov[1] < want { iov[1] as u32 } else { want as u32 };
    for i in 0..MAX_CHUNKS_PER_CALL {
        let off = i * CHUNK_SIZE as u32;
        if off >= len {
            break;
        }
        let rest = len - off;
        let n = if rest > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { rest };
        if !send_chunk(scratch, iov[0] + off as u64, n, done + off) {
            return 0;
        }
    }
    unsafe {
        (*job).done = done + len;
        (*job).iov_index = index + 1;
        EMITTERS.tail_call(&ctx, EMIT_VECTORED);
    }
    count_drop(DropReason::TailCallFailed, 1);
    0
}

/// Shared exit program of every data syscall.
#[inline(always)]
fn data_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(inf) = inflight_take(tid) else {
        return;
    };
    if inf.syscall == Syscall::Connect as u8 {
        return;
    }
    let ret = arg(ctx, 0) as i64;
    if ret <= 0 {
        return;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    let conn = match CONNS.get_ptr_mut(inf.sk) {
        // Known at enter: the common, cheap path.
        Some(c) if inf.known != 0 => c,
        // First traffic of this process on the socket (it predates the agent, or a forked
        // child inherited it): record the descriptor and announce it.
        _ => match attach_fd(inf.sk, inf.fd, Role::Unknown, Syscall::FirstData, false, ts) {
            Some(c) => c,
            None => return,
        },
    };
    let syscall = match Syscall::from_u8(inf.syscall) {
        Some(s) => s,
        None => return,
    };
    let direction = syscall.direction();
    let call_len = ret as u64;
    let tls = unsafe {
        if inf.in_ssl != 0 {
            (*conn).tls = 1;
        }
        (*conn).tls != 0
    };
    let call_offset = unsafe {
        if direction == Direction::Egress {
            let off = (*conn).bytes_egress;
            (*conn).bytes_egress = off + call_len;
            off
        } else {
            let off = (*conn).bytes_ingress;
            (*conn).bytes_ingress = off + call_len;
            off
        }
    };
    if tls {
        // Ciphertext of a connection whose plaintext the TLS probes deliver: the bytes are
        // counted in the socket's offsets (close totals) but neither copied nor parsed.
        return;
    }
    let call = CallInfo {
        direction,
        syscall: inf.syscall,
        fd: inf.fd,
        ts_enter: inf.ts_enter,
        ts_exit: ts,
        call_offset,
        call_len,
        buf: inf.buf,
        count: inf.count,
    };
    if !prepare_emit(conn, &call, syscall == Syscall::Sendfile) {
        return;
    }
    let index = if inf.vectored != 0 { EMIT_VECTORED } else { EMIT_CONTIGUOUS };
    // A tail call only returns when it failed.
    unsafe { EMITTERS.tail_call(ctx, index) };
    count_drop(DropReason::TailCallFailed, 1);
}

/// One call whose bytes go to userspace (a syscall, or an SSL_read/SSL_write).
pub(crate) struct CallInfo {
    pub direction: Direction,
    pub syscall: u8,
    pub fd: i32,
    pub ts_enter: u64,
    pub ts_exit: u64,
    pub call_offset: u64,
    pub call_len: u64,
    pub buf: u64,
    pub count: u64,
}

/// Fills the per-CPU record header and emit job for `call`. Returns true when the caller
/// must now tail-call an emitter; false when everything was sent already (nothing to copy)
/// or could not be.
#[inline(always)]
pub(crate) fn prepare_emit(conn: *mut ConnEntry, call: &CallInfo, no_copy: bool) -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cap = config().capture_cap as u64;
    let mut captured = if no_copy { 0 } else { call.call_len };
    if captured > cap {
        count_drop(DropReason::CapTruncatedCalls, 1);
        count_drop(DropReason::CapTruncatedBytes, captured - cap);
        captured = cap;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    unsafe {
        let h = &mut (*scratch).header;
        h.kind = EventKind::Data as u8;
        h.direction = call.direction as u8;
        h.syscall = call.syscall;
        h._pad0 = 0;
        h.pid = (pid_tgid >> 32) as u32;
        h.tid = pid_tgid as u32;
        h.fd = call.fd;
        h.conn_id = (*conn).conn_id;
        h.ts_enter_ns = call.ts_enter;
        h.ts_exit_ns = call.ts_exit;
        h.call_offset = call.call_offset;
        h.call_len = call.call_len as u32;
        h.call_captured = captured as u32;
        h.chunk_offset = 0;
        h.chunk_len = 0;
    }
    if captured == 0 {
        // Nothing to copy (sendfile): still tell userspace how many bytes went by.
        let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, size_of::<DataHeader>()) };
        if let Some(flags) = data_ring_flags(bytes.len()) {
            if EVENTS.output::<[u8]>(bytes, flags).is_err() {
                count_drop(DropReason::RingbufFull, 1);
            }
        }
        return false;
    }
    let Some(job) = JOB.get_ptr_mut(0) else {
        return false;
    };
    unsafe {
        (*job).buf = call.buf;
        (*job).count = call.count;
        (*job).captured = captured as u32;
        (*job).iov_index = 0;
        (*job).done = 0;
    }
    true
}

// ---- data syscalls: enter programs (argument layouts differ), one shared exit ----

#[tracepoint]
pub fn enter_read(ctx: TracePointContext) -> u32 {
    data_enter(arg(&ctx, 0) as i32, Syscall::Read, arg(&ctx, 1), arg(&ctx, 2), false);
    0
}

#[tracepoint]
pub fn enter_write(ctx: TracePointContext) -> u32 {
    data_enter(arg(&ctx, 0) as i32, Syscall::Write, arg(&ctx, 1), arg(&ctx, 2), false);
    0
}

#[tracepoint]
pub fn enter_readv(ctx: TracePointContext) -> u32 {
    data_enter(arg(&ctx, 0) as i32, Syscall::Readv, arg(&ctx, 1), arg(&ctx, 2), true);
    0
}

#[tracepoint]
pub fn enter_writev(ctx: TracePointContext) -> u32 {
    data_enter(arg(&ctx, 0) as i32, Syscall::Writev, arg(&ctx, 1), arg(&ctx, 2), true);
    0
}

#[tracepoint]
pub fn enter_recvfrom(ctx: TracePointContext) -> u32 {
    // MSG_PEEK leaves the bytes in the socket: they will be read again, count them once.
    if arg(&ctx, 3) & MSG_PEEK == 0 {
        data_enter(arg(&ctx, 0) as i32, Syscall::Recvfrom, arg(&ctx, 1), arg(&ctx, 2), false);
    }
    0
}

#[tracepoint]
pub fn enter_sendto(ctx: TracePointContext) -> u32 {
    data_enter(arg(&ctx, 0) as i32, Syscall::Sendto, arg(&ctx, 1), arg(&ctx, 2), false);
    0
}

/// struct msghdr (userspace ABI): msg_iov at byte 16, msg_iovlen at byte 24.
#[inline(always)]
fn msg_enter(ctx: &TracePointContext, syscall: Syscall) {
    let msg = arg(ctx, 1);
    let Some(iov) = uread::<[u64; 2]>(msg + 16) else {
        return;
    };
    data_enter(arg(ctx, 0) as i32, syscall, iov[0], iov[1], true);
}

#[tracepoint]
pub fn enter_recvmsg(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) & MSG_PEEK == 0 {
        msg_enter(&ctx, Syscall::Recvmsg);
    }
    0
}

#[tracepoint]
pub fn enter_sendmsg(ctx: TracePointContext) -> u32 {
    msg_enter(&ctx, Syscall::Sendmsg);
    0
}

#[tracepoint]
pub fn enter_sendfile(ctx: TracePointContext) -> u32 {
    // sendfile64(out_fd, in_fd, offset, count): the socket is out_fd; no user buffer.
    data_enter(arg(&ctx, 0) as i32, Syscall::Sendfile, 0, arg(&ctx, 3), false);
    0
}

#[tracepoint]
pub fn exit_data(ctx: TracePointContext) -> u32 {
    data_exit(&ctx);
    0
}

// ---- connection lifecycle ----

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if process_filtered((pid_tgid >> 32) as u32) {
        return 0;
    }
    let inflight = Inflight {
        tid: 0,
        buf: 0,
        count: 0,
        sk: 0,
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd: arg(&ctx, 0) as i32,
        syscall: Syscall::Connect as u8,
        vectored: 0,
        known: 0,
        in_ssl: 0,
    };
    inflight_put(pid_tgid as u32, inflight);
    0
}

#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(inf) = inflight_take(tid) else {
        return 0;
    };
    if inf.syscall != Syscall::Connect as u8 {
        return 0;
    }
    let ret = arg(&ctx, 0) as i64;
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    new_connection(inf.fd, Role::Client, Syscall::Connect);
    0
}

#[inline(always)]
fn new_connection(fd: i32, role: Role, via: Syscall) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ts = unsafe { bpf_ktime_get_ns() };
    match resolve_fd(fd) {
        Resolved::Tcp(sk) => {
            let _ = attach_fd(sk, fd, role, via, true, ts);
        }
        Resolved::Other => {
            let key = ((tgid as u64) << 32) | fd as u32 as u64;
            let _ = FDS.insert(key, FdEntry { sk: 0, gen: current_gen(tgid) }, 0);
        }
        Resolved::Fault => count_drop(DropReason::KernelReadFault, 1),
    }
}

#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx, Syscall::Accept)
}

#[tracepoint]
pub fn exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx, Syscall::Accept4)
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext, via: Syscall) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if process_filtered(tgid) {
        return 0;
    }
    let ret = arg(ctx, 0) as i64;
    if ret >= 0 {
        new_connection(ret as i32, Role::Server, via);
    }
    0
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let fd = arg(&ctx, 0) as i32;
    let key = ((tgid as u64) << 32) | fd as u32 as u64;
    let Some(entry) = (unsafe { FDS.get(key) }).copied() else {
        return 0;
    };
    let _ = FDS.remove(key);
    if entry.sk == 0 || entry.gen != current_gen(tgid) {
        return 0;
    }
    let Some(conn) = (unsafe { CONNS.get(entry.sk) }) else {
        return 0;
    };
    let ev = CloseEvent {
        kind: EventKind::Close as u8,
        _pad0: [0; 3],
        pid: tgid,
        tid: pid_tgid as u32,
        fd,
        conn_id: conn.conn_id,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        bytes_egress: conn.bytes_egress,
        bytes_ingress: conn.bytes_ingress,
    };
    if EVENTS.output::<CloseEvent>(&ev, ring_flags()).is_err() {
        count_drop(DropReason::ControlRingbufFull, 1);
    }
    0
}

/// dup2/dup3 silently close their target descriptor: forget what we knew about it.
#[tracepoint]
pub fn enter_dup(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let newfd = arg(&ctx, 1) as i32;
    let _ = FDS.remove(((tgid as u64) << 32) | newfd as u32 as u64);
    0
}

/// exec (CLOEXEC descriptors) and close_range close descriptors wholesale: start a
/// new generation so every cached descriptor of this process is re-resolved.
#[tracepoint]
pub fn bump_generation(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let gen = unsafe { bpf_ktime_get_ns() };
    let _ = GENS.insert(tgid, gen, 0);
    0
}

/// exec: new descriptor-table generation (as `bump_generation`), and tell userspace so it
/// can look for TLS libraries in the new image's mappings.
#[tracepoint]
pub fn on_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let ts = unsafe { bpf_ktime_get_ns() };
    let _ = GENS.insert(tgid, ts, 0);
    if process_filtered(tgid) {
        return 0;
    }
    let ev = ExecEvent { kind: EventKind::Exec as u8, _pad0: [0; 3], pid: tgid, ts_ns: ts };
    if EVENTS.output::<ExecEvent>(&ev, ring_flags()).is_err() {
        count_drop(DropReason::ControlRingbufFull, 1);
    }
    0
}

/// Process exit: only when the whole thread group goes (the leader exits), not per thread,
/// so thread-per-request servers keep their descriptor cache.
#[tracepoint]
pub fn exit_process(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == pid_tgid as u32 {
        let gen = unsafe { bpf_ktime_get_ns() };
        let _ = GENS.insert(tgid, gen, 0);
    }
    0
}

/// Outgoing connections that fail before being established (SYN_SENT → CLOSE). Most
/// clients connect without blocking, so the failure never comes back as a syscall return;
/// the socket state change is the one place every failure shows.
#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    const TCP_SYN_SENT: i32 = 2;
    const TCP_CLOSE: i32 = 7;
    let o = &config().offsets;
    // Offsets come from the format file at run time; the verifier only allows constant
    // offsets for direct ctx loads, so read through the helper.
    let field = |off: u32| -> Option<[u8; 16]> { unsafe { ctx.read_at::<[u8; 16]>(off as usize).ok() } };
    let read_i32 = |off: u32| unsafe { ctx.read_at::<i32>(off as usize).unwrap_or(0) };
    let read_u16 = |off: u32| unsafe { ctx.read_at::<u16>(off as usize).unwrap_or(0) };
    if read_i32(o.tp_oldstate) != TCP_SYN_SENT
        || read_i32(o.tp_newstate) != TCP_CLOSE
        || read_u16(o.tp_protocol) != IPPROTO_TCP
    {
        return 0;
    }
    let sk = unsafe { ctx.read_at::<u64>(o.tp_skaddr as usize).unwrap_or(0) };
    let (sport, dport, family) = (read_u16(o.tp_sport), read_u16(o.tp_dport), read_u16(o.tp_family));
    if port_filtered(sport, dport) {
        return 0;
    }
    // An entry under `sk` is this attempt only if connect() returned first and created it;
    // otherwise it is left over from an earlier socket at the same address (ports differ).
    let conn_id = match unsafe { CONNS.get(sk) } {
        Some(c) if c.local_port != sport || c.remote_port != dport => 0,
        Some(c) if c.ignored != 0 => return 0,
        Some(c) => c.conn_id,
        None => 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev: ConnectFailedEvent = unsafe { core::mem::zeroed() };
    ev.kind = EventKind::ConnectFailed as u8;
    ev.family = family;
    ev.local_port = sport;
    ev.remote_port = dport;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.error = kread::<i32>(sk + o.sk_err as u64).unwrap_or(0);
    ev.conn_id = conn_id;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if family == AF_INET {
        let (Some(l), Some(r)) = (field(o.tp_saddr), field(o.tp_daddr)) else {
            return 0;
        };
        ev.local_addr[..4].copy_from_slice(&l[..4]);
        ev.remote_addr[..4].copy_from_slice(&r[..4]);
    } else {
        let (Some(l), Some(r)) = (field(o.tp_saddr_v6), field(o.tp_daddr_v6)) else {
            return 0;
        };
        ev.local_addr = l;
        ev.remote_addr = r;
    }
    if EVENTS.output::<ConnectFailedEvent>(&ev, ring_flags()).is_err() {
        count_drop(DropReason::ControlRingbufFull, 1);
    }
    0
}
