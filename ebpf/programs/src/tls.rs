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
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use hoptrace_common::*;

use crate::{
    conn::attach_fd,
    data::{emit_contiguous_job, prepare_emit, CallInfo},
    fd::socket_of,
    filter::process_filtered,
    config::kernel_log,
    helpers::{ktime_ns, pid_tgid, tail_call, uread},
    log::kwarn,
    maps::{
        conns::conn_mut,
        drops::count_drop,
        tls::{set_ssl_call_fd, ssl_call_pending, ssl_fd, take_ssl_call, SslCall, SslKey, SSL_CALLS, SSL_EMITTERS, SSL_FDS},
    },
};

/// Called by every data syscall enter program on a TCP socket: when the thread is inside
/// an SSL call, that call's socket is `fd`. Returns true when so (the syscall's bytes are
/// ciphertext).
#[inline(always)]
pub(crate) fn note_syscall_fd(tid: u32, fd: i32) -> bool {
    crate::inflight::ssl_maybe_active(tid) && set_ssl_call_fd(tid, fd)
}

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, syscall: Syscall, ex: bool) -> u32 {
    let pid_tgid = pid_tgid();
    if process_filtered((pid_tgid >> 32) as u32) {
        return 0;
    }
    if kernel_log() && ssl_call_pending(pid_tgid as u32) {
        // Nested SSL calls (from a callback), or a return probe that never fired (the
        // thread longjmp'ed out): the pending call is replaced and its bytes are lost.
        kwarn!("tls: thread {} entered an SSL call with another pending: the older is lost", pid_tgid as u32);
    }
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        len_ptr: if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 },
        ts_enter: ktime_ns(),
        fd: -1,
        syscall: syscall as u8,
        ex: ex as u8,
        _pad: [0; 2],
    };
    if SSL_CALLS.insert(pid_tgid as u32, call, 0).is_err() {
        count_drop(DropReason::ArgsMapFull, 1);
        return 0;
    }
    crate::inflight::ssl_begin(pid_tgid as u32);
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
    let tgid = (pid_tgid() >> 32) as u32;
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

/// How many plaintext bytes the SSL call moved (0: none, or failed).
#[inline(always)]
fn plaintext_len(call: &SslCall, ret: i32) -> u64 {
    if call.ex != 0 {
        // SSL_read_ex/SSL_write_ex: 1 on success, the byte count behind `len_ptr`.
        if ret != 1 {
            return 0;
        }
        match uread::<u64>(call.len_ptr) {
            Some(n) => n,
            None => {
                count_drop(DropReason::UserReadFault, 1);
                kwarn!("tls: cannot read the byte count of an SSL_*_ex call of thread {}", pid_tgid() as u32);
                0
            }
        }
    } else if ret <= 0 {
        0
    } else {
        ret as u64
    }
}

/// The descriptor behind the call's SSL object: the one a syscall inside the call used
/// (remembered for later calls), else the one remembered earlier.
#[inline(always)]
fn ssl_socket_fd(call: &SslCall, tgid: u32) -> Option<i32> {
    let key = SslKey { tgid, _pad: 0, ssl: call.ssl };
    if call.fd >= 0 {
        let _ = SSL_FDS.insert(key, call.fd, 0);
        return Some(call.fd);
    }
    let fd = ssl_fd(key);
    if fd.is_none() {
        count_drop(DropReason::TlsSocketUnknown, 1);
        kwarn!("tls: plaintext of process {} on an SSL object whose socket is not known: not sent", tgid);
    }
    fd
}

/// Return of any of the four read/write functions (the call's kind is in `SSL_CALLS`).
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let Some(call) = take_ssl_call(tid) else { return 0 };
    crate::inflight::ssl_end(tid);
    // Both variants return `int`: only the low 32 bits of the register are defined.
    let len = plaintext_len(&call, ctx.ret::<u64>() as i32);
    if len == 0 {
        return 0;
    }
    let Some(fd) = ssl_socket_fd(&call, tgid) else { return 0 };
    let ts = ktime_ns();
    let (sk, known) = socket_of(tgid, fd);
    if sk == 0 {
        // Not a TCP socket (unix socket, pipe), or a filtered-out connection.
        return 0;
    }
    let conn = match conn_mut(sk) {
        Some(c) if known => c,
        _ => match attach_fd(sk, fd, Role::Unknown, Syscall::FirstData, false, ts) {
            Some(c) => c,
            None => return 0,
        },
    };
    let syscall = if call.syscall == Syscall::SslRead as u8 { Syscall::SslRead } else { Syscall::SslWrite };
    let direction = syscall.direction();
    conn.mark_tls();
    if direction == Direction::Egress && conn.get().role != Role::Server as u8 {
        // A Python service's HTTPS call: the Context it was written in, before the record.
        crate::python::note_write(conn.get().conn_id | TLS_VIEW_BIT, call.ts_enter);
    }
    let call_offset = conn.advance_tls(direction, len);
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
    if !prepare_emit(conn, &info, false, true) {
        return 0;
    }
    tail_call(&SSL_EMITTERS, &ctx, 0);
    count_drop(DropReason::TailCallFailed, 1);
    kwarn!("tls: tail call into the emitter failed: {} bytes of fd {} not sent", len, fd);
    0
}

/// Tail-call target of `ssl_ret`: the same chunk loop as the tracepoint `emit_contiguous`.
#[uprobe]
pub fn ssl_emit(_ctx: ProbeContext) -> u32 {
    emit_contiguous_job()
}
