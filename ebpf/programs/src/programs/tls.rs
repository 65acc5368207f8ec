//! OpenSSL uprobes: the plaintext of TLS connections, joined to the socket's connection.
//!
//! The agent attaches these programs to `SSL_write`, `SSL_write_ex`, `SSL_read` and
//! `SSL_read_ex` (entry and return) of every distinct `libssl.so.3` / `libssl.so.1.1` file
//! it finds, and to `SSL_set_fd`/`SSL_set_rfd`/`SSL_set_wfd`.
//!
//! Which socket is behind an `SSL*`? No OpenSSL struct offsets are read (they change
//! between versions and builds). Instead:
//! - while a thread is inside an SSL_* call (`SSL_CALLS` holds its arguments), the
//!   read/write/send/recv syscalls it makes on a TCP socket are the TLS records of that
//!   SSL object: the syscall enter program writes the descriptor into the call
//!   (`note_syscall_fd`), and the socket is marked TLS so its ciphertext is no longer
//!   copied;
//! - the descriptor is remembered per (process, SSL*) in the bounded LRU `SSL_FDS`, so an
//!   SSL_read served from OpenSSL's buffer (no syscall at all) still finds its socket;
//! - `SSL_set_fd` and friends fill `SSL_FDS` directly when the application uses them.
//!
//! The plaintext is sent as ordinary data records (syscall `SslRead`/`SslWrite`) with the
//! connection's id and its own per-direction plaintext offsets (`tls_egress`/`tls_ingress`
//! in `CONNS`), through the same chunk emitter loop as syscall payloads.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, ProgramArray},
    programs::{ProbeContext, RetProbeContext},
};
use hoptrace_common::*;

use super::{
    attach_fd, count_drop, current_gen, emit_contiguous_job, prepare_emit, process_filtered, resolve_fd, uread,
    CallInfo, FdEntry, Resolved, CONNS, FDS,
};

/// An SSL_read/SSL_write in progress, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
struct SslCall {
    ssl: u64,
    buf: u64,
    /// `_ex` variants: where the library writes the byte count (`size_t *`).
    len_ptr: u64,
    ts_enter: u64,
    /// Descriptor of the last TCP syscall made inside this call (-1: none yet).
    fd: i32,
    /// `Syscall::SslRead` or `Syscall::SslWrite`.
    syscall: u8,
    ex: u8,
    _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    tgid: u32,
    _pad: u32,
    ssl: u64,
}

/// LRU rather than a plain hash: a thread that dies inside SSL_read (killed, or a
/// longjmp out of a callback) never reaches the return probe, and its entry must not hold
/// a slot forever.
#[map]
static SSL_CALLS: LruHashMap<u32, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// (process, SSL*) → socket descriptor, learned from syscalls inside SSL calls or from
/// SSL_set_fd. LRU: SSL objects are freed without us noticing; old ones age out.
#[map]
static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// The uprobe-typed chunk emitter (tail calls only reach programs of the caller's type).
#[map]
static SSL_EMITTERS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Called by every data syscall enter program on a TCP socket: when the thread is inside
/// an SSL call, that call's socket is `fd`. Returns true when so (the syscall's bytes are
/// ciphertext).
#[inline(always)]
pub(super) fn note_syscall_fd(tid: u32, fd: i32) -> bool {
    match SSL_CALLS.get_ptr_mut(tid) {
        Some(call) => {
            unsafe { (*call).fd = fd };
            true
        }
        None => false,
    }
}

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, syscall: Syscall, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if process_filtered((pid_tgid >> 32) as u32) {
        return 0;
    }
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        len_ptr: if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 },
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        syscall: syscall as u8,
        ex: ex as u8,
        _pad: [0; 2],
    };
    if SSL_CALLS.insert(pid_tgid as u32, call, 0).is_err() {
        count_drop(DropReason::ArgsMapFull, 1);
    }
    0
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, Syscall::SslWrite, false)
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, Syscall::SslWrite, true)
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, Syscall::SslRead, false)
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, Syscall::SslRead, true)
}

/// SSL_set_fd(ssl, fd) / SSL_set_rfd / SSL_set_wfd: the socket is known before any I/O.
#[uprobe]
pub fn ssl_set_fd(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if process_filtered(tgid) {
        return 0;
    }
    let ssl = ctx.arg::<u64>(0).unwrap_or(0);
    let fd = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32;
    if ssl != 0 && fd >= 0 {
        let _ = SSL_FDS.insert(SslKey { tgid, _pad: 0, ssl }, fd, 0);
    }
    0
}

/// Return of any of the four read/write functions (the call's kind is in `SSL_CALLS`).
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let Some(call) = (unsafe { SSL_CALLS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SSL_CALLS.remove(tid);
    // Both variants return `int`: only the low 32 bits of the register are defined.
    let ret = ctx.ret::<u64>() as i32;
    let len: u64 = if call.ex != 0 {
        if ret != 1 {
            return 0;
        }
        match uread::<u64>(call.len_ptr) {
            Some(n) => n,
            None => {
                count_drop(DropReason::UserReadFault, 1);
                return 0;
            }
        }
    } else {
        if ret <= 0 {
            return 0;
        }
        ret as u64
    };
    if len == 0 {
        return 0;
    }
    let key = SslKey { tgid, _pad: 0, ssl: call.ssl };
    let fd = if call.fd >= 0 {
        let _ = SSL_FDS.insert(key, call.fd, 0);
        call.fd
    } else {
        match unsafe { SSL_FDS.get(key) } {
            Some(fd) => *fd,
            None => {
                count_drop(DropReason::TlsSocketUnknown, 1);
                return 0;
            }
        }
    };
    let fd_key = ((tgid as u64) << 32) | fd as u32 as u64;
    let gen = current_gen(tgid);
    let ts = unsafe { bpf_ktime_get_ns() };
    let (sk, known) = match unsafe { FDS.get(fd_key) } {
        Some(e) if e.gen == gen => (e.sk, true),
        _ => match resolve_fd(fd) {
            Resolved::Tcp(sk) => (sk, false),
            Resolved::Other => {
                let _ = FDS.insert(fd_key, FdEntry { sk: 0, gen }, 0);
                (0, true)
            }
            Resolved::Fault => {
                count_drop(DropReason::KernelReadFault, 1);
                (0, true)
            }
        },
    };
    if sk == 0 {
        // Not a TCP socket (unix socket, pipe), or a filtered-out connection.
        return 0;
    }
    let conn = match CONNS.get_ptr_mut(sk) {
        Some(c) if known => c,
        _ => match attach_fd(sk, fd, Role::Unknown, Syscall::FirstData, false, ts) {
            Some(c) => c,
            None => return 0,
        },
    };
    let syscall = if call.syscall == Syscall::SslRead as u8 { Syscall::SslRead } else { Syscall::SslWrite };
    let direction = syscall.direction();
    let call_offset = unsafe {
        (*conn).tls = 1;
        if direction == Direction::Egress {
            let off = (*conn).tls_egress;
            (*conn).tls_egress = off + len;
            off
        } else {
            let off = (*conn).tls_ingress;
            (*conn).tls_ingress = off + len;
            off
        }
    };
    let info = CallInfo {
        direction,
        syscall: syscall as u8,
        fd,
        ts_enter: call.ts_enter,
        ts_exit: ts,
        call_offset,
        call_len: len,
        buf: call.buf,
        count: len,
    };
    if !prepare_emit(conn, &info, false) {
        return 0;
    }
    unsafe { SSL_EMITTERS.tail_call(&ctx, 0) };
    count_drop(DropReason::TailCallFailed, 1);
    0
}

/// Tail-call target of `ssl_ret`: the same chunk loop as the tracepoint `emit_contiguous`.
#[uprobe]
pub fn ssl_emit(_ctx: ProbeContext) -> u32 {
    emit_contiguous_job()
}
