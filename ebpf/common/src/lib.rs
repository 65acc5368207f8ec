//! Types shared by the hoptrace kernel programs and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, made of plain integers, and has no padding the
//! compiler could fill with garbage: the kernel writes these bytes into the ring buffer
//! and the agent reads them back with `read_unaligned`, so both sides must agree on the
//! layout to the byte. The size assertions at the bottom keep that honest.
#![no_std]

/// Payload bytes carried by one data event. A syscall that moves more bytes than this is
/// split into several chunk events (same `call_offset`, growing `chunk_offset`).
pub const CHUNK_SIZE: usize = 4096;
/// How many chunks one syscall may produce; bounds the kernel loop and the capture cap.
pub const MAX_CHUNKS_PER_CALL: u32 = 16;
/// Largest per-syscall capture cap the kernel programs can honour (64 KiB).
pub const MAX_CAPTURE_CAP: u32 = CHUNK_SIZE as u32 * MAX_CHUNKS_PER_CALL;
/// Default per-syscall capture cap: large enough for real HTTP header blocks (tens of KiB).
pub const DEFAULT_CAPTURE_CAP: u32 = 64 * 1024;
/// Most iovec entries walked per readv/writev/recvmsg/sendmsg call: one tail call each,
/// and the kernel allows 33 per chain (the syscall exit's own call to the emitter is the
/// first). 32, not 16: gRPC's C core (grpcio) writes a request's frames as one sendmsg of
/// 17-30 slices (frame heads and payloads apart), whose tail 16 lost, with its headers.
pub const MAX_IOVECS: u32 = 32;
pub const COMM_LEN: usize = 16;

/// First byte of every ring-buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A process gained a file descriptor on a TCP connection (accept, connect, or first
    /// traffic seen on a connection that predates the agent).
    Open = 1,
    /// Bytes moved by one syscall (one or more chunk records).
    Data = 2,
    /// A process closed its descriptor on a TCP connection.
    Close = 3,
    /// An outgoing connection attempt failed (SYN_SENT → CLOSE: refused, timed out…).
    ConnectFailed = 4,
    /// A process called exec(): userspace looks at its mappings for TLS libraries.
    Exec = 5,
    /// A process (its whole thread group) exited: job spans end, open calls are cut.
    Exit = 6,
    /// Bytes a process selected for app logs wrote to its stdout or stderr (or a file
    /// opened on the same pipe, file or terminal): a `DataHeader` with `conn_id` 0 and
    /// the stream (1 or 2) in `_pad0`, then the bytes.
    AppLog = 7,
    /// A selected Python process's current `contextvars.Context` (a [`PyContextEvent`]):
    /// one was copied (`PyContext_CopyCurrent` returned), or a thread wrote on a socket
    /// while in it.
    PyContext = 8,
}

/// Direction of a data event, from the point of view of the socket owner.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// write/send: bytes leaving this process.
    Egress = 0,
    /// read/recv: bytes arriving at this process.
    Ingress = 1,
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Seen first through traffic (connection predates the agent); userspace decides.
    Unknown = 0,
    /// This side called connect().
    Client = 1,
    /// This side came out of accept().
    Server = 2,
}

/// Which syscall produced an event; kept in events for debugging and accounting.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 1,
    Readv = 2,
    Recvfrom = 3,
    Recvmsg = 4,
    Write = 5,
    Writev = 6,
    Sendto = 7,
    Sendmsg = 8,
    Sendfile = 9,
    Connect = 10,
    Accept = 11,
    Accept4 = 12,
    /// Connection first seen through a data syscall (it predates the agent).
    FirstData = 13,
    /// Plaintext returned by OpenSSL's SSL_read/SSL_read_ex (uretprobe).
    SslRead = 14,
    /// Plaintext handed to OpenSSL's SSL_write/SSL_write_ex (uretprobe).
    SslWrite = 15,
}

impl Syscall {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Read,
            2 => Self::Readv,
            3 => Self::Recvfrom,
            4 => Self::Recvmsg,
            5 => Self::Write,
            6 => Self::Writev,
            7 => Self::Sendto,
            8 => Self::Sendmsg,
            9 => Self::Sendfile,
            10 => Self::Connect,
            11 => Self::Accept,
            12 => Self::Accept4,
            13 => Self::FirstData,
            14 => Self::SslRead,
            15 => Self::SslWrite,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Readv => "readv",
            Self::Recvfrom => "recvfrom",
            Self::Recvmsg => "recvmsg",
            Self::Write => "write",
            Self::Writev => "writev",
            Self::Sendto => "sendto",
            Self::Sendmsg => "sendmsg",
            Self::Sendfile => "sendfile",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Accept4 => "accept4",
            Self::FirstData => "first_data",
            Self::SslRead => "ssl_read",
            Self::SslWrite => "ssl_write",
        }
    }

    /// Plaintext from a TLS library probe: these records use the connection's separate
    /// plaintext offset space, not the socket's (ciphertext) byte stream.
    pub fn is_tls_plaintext(self) -> bool {
        matches!(self, Self::SslRead | Self::SslWrite)
    }

    pub fn direction(self) -> Direction {
        match self {
            Self::Read | Self::Readv | Self::Recvfrom | Self::Recvmsg | Self::SslRead => Direction::Ingress,
            _ => Direction::Egress,
        }
    }
}

/// A process holds a descriptor on a TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    pub kind: u8,
    pub role: u8,
    /// `Syscall` through which the descriptor was first seen.
    pub via: u8,
    pub _pad0: u8,
    /// Address family: 2 = AF_INET, 10 = AF_INET6.
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad1: u16,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub fd: i32,
    pub _pad2: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// IPv4 addresses use the first 4 bytes; network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

/// Header of a data chunk record; `chunk_len` payload bytes follow it in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    pub kind: u8,
    pub direction: u8,
    pub syscall: u8,
    pub _pad0: u8,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// Offset, in this direction's byte stream of the connection, of the syscall's first byte.
    pub call_offset: u64,
    /// Bytes the syscall really moved (its return value).
    pub call_len: u32,
    /// Bytes of the call the kernel was allowed to copy (min(call_len, capture cap)).
    pub call_captured: u32,
    /// Offset of this chunk inside the syscall's bytes.
    pub chunk_offset: u32,
    /// Payload bytes in this record.
    pub chunk_len: u32,
}

/// A full data record as the kernel assembles it in per-CPU scratch space; only
/// `size_of::<DataHeader>() + chunk_len` bytes of it are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: DataHeader,
    pub data: [u8; CHUNK_SIZE],
}

/// A process closed its descriptor on a TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub ts_ns: u64,
    /// Stream totals at close time (bytes sent / received through this socket).
    pub bytes_egress: u64,
    pub bytes_ingress: u64,
}

/// An outgoing TCP connection that never got established.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectFailedEvent {
    pub kind: u8,
    pub _pad0: u8,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    /// Thread running when the state changed: the connecting one when the failure happens
    /// inside connect() (loopback, immediate refusal); otherwise use `conn_id`'s owner.
    pub pid: u32,
    pub tid: u32,
    /// sk_err: ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH…
    pub error: i32,
    pub _pad1: u32,
    /// The connection's id when connect() had already returned (0 when not yet known).
    pub conn_id: u64,
    pub ts_ns: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A process called exec(); its libraries are mapped shortly after (by ld.so), so
/// userspace re-reads its mappings a few times.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub pid: u32,
    pub ts_ns: u64,
}

/// A process's last thread-group leader exited, with its exit status as `wait()` reports
/// it (`code << 8`, or the fatal signal in the low 7 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub pid: u32,
    pub exit_code: i32,
    pub _pad1: u32,
    pub ts_ns: u64,
}

/// Set in a connection id to name its TLS plaintext view (userspace keeps the plaintext
/// of a TLS socket as a second connection with this id).
pub const TLS_VIEW_BIT: u64 = 1 << 63;

/// `PyContextEvent::what`: `PyContext_CopyCurrent` returned `context` on the thread,
/// whose current Context was `parent`.
pub const PY_CONTEXT_COPIED: u8 = 1;
/// `PyContextEvent::what`: the thread wrote on connection `conn_id` (the write entered at
/// `ts_ns`, the same value as the data record's `ts_enter_ns`) while its current Context
/// was `context`.
pub const PY_CONTEXT_WRITE: u8 = 2;

/// What a selected Python process's thread was running in: the address of its
/// `contextvars.Context` (0: none, or it could not be read).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyContextEvent {
    pub kind: u8,
    /// `PY_CONTEXT_COPIED` or `PY_CONTEXT_WRITE`.
    pub what: u8,
    pub _pad0: [u8; 2],
    pub pid: u32,
    pub tid: u32,
    pub _pad1: u32,
    pub ts_ns: u64,
    pub conn_id: u64,
    pub context: u64,
    pub parent: u64,
}

/// Where a selected Python process keeps its threads' current Context, written by the
/// agent into `PY_PROCS` per process (tgid): the address of `_PyRuntime.interpreters.head`
/// and the field offsets of the process's CPython minor version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// Address of the `PyInterpreterState *` of the main (first) interpreter.
    pub interp_head_addr: u64,
    /// `PyInterpreterState.threads.head`.
    pub off_threads_head: u32,
    /// `PyThreadState.next`.
    pub off_next: u32,
    /// `PyThreadState.native_thread_id`.
    pub off_native_thread_id: u32,
    /// `PyThreadState.context`.
    pub off_context: u32,
}

/// Why the kernel side lost or cut something; index into the `DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer had no room: the whole record was lost.
    RingbufFull = 0,
    /// Bytes beyond the per-syscall capture cap (counted in bytes, not records).
    CapTruncatedBytes = 1,
    /// Syscalls that hit the capture cap.
    CapTruncatedCalls = 2,
    /// Copying user memory failed (page not resident, bad pointer).
    UserReadFault = 3,
    /// readv/writev/msg calls with more iovecs than the kernel walks; counted in bytes.
    IovLimitBytes = 4,
    /// In-flight syscall table full: a syscall on a captured socket went unrecorded.
    ArgsMapFull = 5,
    /// Connection table full (insert failed).
    ConnMapFull = 6,
    /// Kernel memory read failed while resolving a descriptor.
    KernelReadFault = 7,
    /// Open/close records lost because the ring buffer was full.
    ControlRingbufFull = 8,
    /// The tail call into the chunk emitter failed: the call's bytes were not sent.
    TailCallFailed = 9,
    /// SSL_read/SSL_write returned plaintext but the socket behind the SSL object was not
    /// known yet (no syscall inside an SSL call and no SSL_set_fd seen): not sent.
    TlsSocketUnknown = 10,
}

pub const DROP_REASONS: usize = 11;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        Self::RingbufFull,
        Self::CapTruncatedBytes,
        Self::CapTruncatedCalls,
        Self::UserReadFault,
        Self::IovLimitBytes,
        Self::ArgsMapFull,
        Self::ConnMapFull,
        Self::KernelReadFault,
        Self::ControlRingbufFull,
        Self::TailCallFailed,
        Self::TlsSocketUnknown,
    ];

    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::CapTruncatedBytes => "capture_cap_bytes",
            Self::CapTruncatedCalls => "capture_cap_calls",
            Self::UserReadFault => "user_read_fault",
            Self::IovLimitBytes => "iov_limit_bytes",
            Self::ArgsMapFull => "inflight_table_full",
            Self::ConnMapFull => "conn_table_full",
            Self::KernelReadFault => "kernel_read_fault",
            Self::ControlRingbufFull => "control_ringbuf_full",
            Self::TailCallFailed => "tail_call_failed",
            Self::TlsSocketUnknown => "tls_socket_unknown",
        }
    }
}

/// Byte offsets of the kernel struct fields the programs read, computed by the agent
/// from the running kernel's BTF (never hard-coded: they differ between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_err: u32,
    /// `task_struct.exit_code`: set by do_exit() before the sched_process_exit tracepoint.
    pub task_exit_code: u32,
    /// Fields of the `sock/inet_sock_set_state` tracepoint record (from its format file).
    pub tp_skaddr: u32,
    pub tp_oldstate: u32,
    pub tp_newstate: u32,
    pub tp_sport: u32,
    pub tp_dport: u32,
    pub tp_family: u32,
    pub tp_protocol: u32,
    pub tp_saddr: u32,
    pub tp_daddr: u32,
    pub tp_saddr_v6: u32,
    pub tp_daddr_v6: u32,
}

/// Filter switches: a bit is set when the matching include/exclude map has entries.
pub const FILTER_PID_INCLUDE: u32 = 1 << 0;
pub const FILTER_PID_EXCLUDE: u32 = 1 << 1;
pub const FILTER_CGROUP_INCLUDE: u32 = 1 << 2;
pub const FILTER_CGROUP_EXCLUDE: u32 = 1 << 3;
pub const FILTER_PORT_INCLUDE: u32 = 1 << 4;
pub const FILTER_PORT_EXCLUDE: u32 = 1 << 5;

/// Values of the filter maps.
pub const FILTER_INCLUDE: u8 = 1;
pub const FILTER_EXCLUDE: u8 = 2;

/// Load-time configuration, written into the programs' read-only data before load so the
/// verifier can treat it as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent's own tgid: never captured.
    pub self_tgid: u32,
    /// Per-syscall capture cap in bytes (<= MAX_CAPTURE_CAP).
    pub capture_cap: u32,
    pub filter_flags: u32,
    /// Wake the consumer only once this many bytes wait in the ring (it polls otherwise).
    pub wakeup_bytes: u32,
    /// Data records are refused once this many bytes wait in the ring: the rest is kept for
    /// open/close/connect records, so that an overloaded agent still learns where every
    /// connection ends and can count what it missed on it.
    pub data_limit_bytes: u32,
    pub offsets: KernelOffsets,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no implicit padding.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as for `Config`: repr(C) u32 fields only.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: repr(C), a u64 and four u32: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::PyProc {}
}

const _: () = {
    assert!(core::mem::size_of::<OpenEvent>() == 104);
    assert!(core::mem::size_of::<DataHeader>() == 64);
    assert!(core::mem::size_of::<CloseEvent>() == 48);
    assert!(core::mem::size_of::<KernelOffsets>() == 31 * 4);
    assert!(core::mem::size_of::<ExitEvent>() == 24);
    assert!(core::mem::size_of::<Config>() == 20 + 31 * 4);
    assert!(core::mem::size_of::<ConnectFailedEvent>() == 72);
    assert!(core::mem::size_of::<ExecEvent>() == 16);
    assert!(core::mem::size_of::<PyContextEvent>() == 48);
    assert!(core::mem::size_of::<PyProc>() == 24);
};
