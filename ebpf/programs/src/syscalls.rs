//! The data syscalls (read/write/…): one enter program per argument layout decides
//! whether the descriptor is a captured TCP socket and stashes the arguments for the
//! thread (`inflight`); the single exit program accounts the bytes the syscall really
//! moved and hands them to a chunk emitter (`data`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use hoptrace_common::*;

use crate::{
    config::app_logs_on,
    conn::attach_fd,
    data::{prepare_emit, prepare_record, CallInfo},
    fd::{socket_of, std_stream},
    filter::process_filtered,
    helpers::{arg, ktime_ns, pid_tgid, tail_call, uread},
    inflight,
    log::kwarn,
    maps::{
        conns::conn_mut,
        drops::count_drop,
        emit::{EMITTERS, EMIT_CONTIGUOUS, EMIT_VECTORED},
        filters::app_log_selected,
        inflight::Inflight,
    },
    tls,
};

const MSG_PEEK: u64 = 2;

/// Common enter path of every data syscall: decide whether `fd` is captured and, if so,
/// remember the arguments for the exit program.
#[inline(always)]
fn data_enter(fd: i32, syscall: Syscall, buf: u64, count: u64, vectored: bool) {
    let pid_tgid = pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if process_filtered(tgid) {
        return;
    }
    let (sk, known) = socket_of(tgid, fd);
    if sk == 0 {
        // Not a captured socket: with app logs on (a load-time constant: pruned when
        // off), a selected process's write to its stdout/stderr.
        if app_logs_on() && matches!(syscall, Syscall::Write | Syscall::Writev) {
            app_log_enter(pid_tgid, fd, syscall, buf, count, vectored);
        }
        return;
    }
    let inflight = Inflight {
        tid: 0,
        buf,
        count,
        sk,
        ts_enter: ktime_ns(),
        fd,
        syscall: syscall as u8,
        vectored: vectored as u8,
        known: known as u8,
        in_ssl: tls::note_syscall_fd(pid_tgid as u32, fd) as u8,
    };
    inflight::put(pid_tgid as u32, inflight);
}

/// A write of a process selected for app logs: remembered (`sk` 0, the stream in
/// `known`) when it goes to its stdout or stderr.
#[inline(always)]
fn app_log_enter(pid_tgid: u64, fd: i32, syscall: Syscall, buf: u64, count: u64, vectored: bool) {
    if !app_log_selected((pid_tgid >> 32) as u32) {
        return;
    }
    let stream = std_stream(fd);
    if stream == 0 {
        return;
    }
    let inflight = Inflight {
        tid: 0,
        buf,
        count,
        sk: 0,
        ts_enter: ktime_ns(),
        fd,
        syscall: syscall as u8,
        vectored: vectored as u8,
        known: stream,
        in_ssl: 0,
    };
    inflight::put(pid_tgid as u32, inflight);
}

/// Exit of an app log write: its bytes go out as `AppLog` records.
#[inline(always)]
fn app_log_exit(ctx: &TracePointContext, inf: &Inflight, ret: i64) {
    let call = CallInfo {
        direction: Direction::Egress,
        syscall: inf.syscall,
        fd: inf.fd,
        ts_enter: inf.ts_enter,
        ts_exit: ktime_ns(),
        call_offset: 0,
        call_len: ret as u64,
        buf: inf.buf,
        count: inf.count,
    };
    if !prepare_record(0, inf.known, &call, false, inf.vectored == 0) {
        return;
    }
    let index = if inf.vectored != 0 { EMIT_VECTORED } else { EMIT_CONTIGUOUS };
    tail_call(&EMITTERS, ctx, index);
    count_drop(DropReason::TailCallFailed, 1);
}

/// Shared exit program of every data syscall.
#[inline(always)]
fn data_exit(ctx: &TracePointContext) {
    let tid = pid_tgid() as u32;
    let Some(inf) = inflight::take(tid) else { return };
    if inf.syscall == Syscall::Connect as u8 {
        return;
    }
    let ret = arg(ctx, 0) as i64;
    if ret <= 0 {
        return;
    }
    // Only app log writes are stored without a socket; with the feature off (a load-time
    // constant) the verifier drops this test altogether.
    if app_logs_on() && inf.sk == 0 {
        app_log_exit(ctx, &inf, ret);
        return;
    }
    let ts = ktime_ns();
    let conn = match conn_mut(inf.sk) {
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
    if inf.in_ssl != 0 {
        conn.mark_tls();
    }
    let tls = conn.get().tls != 0;
    let call_offset = conn.advance(direction, call_len);
    if tls {
        // Ciphertext of a connection whose plaintext the TLS probes deliver: the bytes are
        // counted in the socket's offsets (close totals) but neither copied nor parsed.
        return;
    }
    if direction == Direction::Egress && conn.get().role != Role::Server as u8 {
        // Before the data record: userspace knows the Context when the call completes.
        crate::python::note_write(conn.get().conn_id, inf.ts_enter);
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
    if !prepare_emit(conn, &call, syscall == Syscall::Sendfile, inf.vectored == 0) {
        return;
    }
    let index = if inf.vectored != 0 { EMIT_VECTORED } else { EMIT_CONTIGUOUS };
    tail_call(&EMITTERS, ctx, index);
    count_drop(DropReason::TailCallFailed, 1);
    kwarn!("tail call into emitter {} failed: {} bytes of fd {} not sent", index, call_len, inf.fd);
}

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
    let Some(iov) = uread::<[u64; 2]>(msg + 16) else { return };
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
