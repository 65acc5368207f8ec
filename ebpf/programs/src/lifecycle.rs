//! Connection and process lifecycle: connect, accept, close, dup, exec, exit,
//! close_range, and failed outgoing connections (socket state changes).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use hoptrace_common::*;

use crate::{
    config::config,
    conn::attach_fd,
    fd::{resolve_fd, Resolved, AF_INET, IPPROTO_TCP},
    filter::{port_filtered, process_filtered},
    helpers::{arg, current_task, kread, ktime_ns, pid_tgid, tp_field},
    inflight,
    maps::{
        conns::conn,
        drops::count_drop,
        fds::{bump_gen, current_gen, fd_entry, fd_key, forget_fd, set_fd_entry, FdEntry},
        inflight::Inflight,
        ring::send_control,
    },
};

const EINPROGRESS: i64 = 115;

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = pid_tgid();
    if process_filtered((pid_tgid >> 32) as u32) {
        return 0;
    }
    let inflight = Inflight {
        tid: 0,
        buf: 0,
        count: 0,
        sk: 0,
        ts_enter: ktime_ns(),
        fd: arg(&ctx, 0) as i32,
        syscall: Syscall::Connect as u8,
        vectored: 0,
        known: 0,
        in_ssl: 0,
    };
    inflight::put(pid_tgid as u32, inflight);
    0
}

#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    let tid = pid_tgid() as u32;
    let Some(inf) = inflight::take(tid) else { return 0 };
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
    let tgid = (pid_tgid() >> 32) as u32;
    let ts = ktime_ns();
    match resolve_fd(fd) {
        Resolved::Tcp(sk) => {
            let _ = attach_fd(sk, fd, role, via, true, ts);
        }
        Resolved::Other => set_fd_entry(fd_key(tgid, fd), FdEntry { sk: 0, gen: current_gen(tgid) }),
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
    let tgid = (pid_tgid() >> 32) as u32;
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
    let pid_tgid = pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let fd = arg(&ctx, 0) as i32;
    let key = fd_key(tgid, fd);
    let Some(entry) = fd_entry(key) else { return 0 };
    forget_fd(key);
    if entry.sk == 0 || entry.gen != current_gen(tgid) {
        return 0;
    }
    let Some(conn) = conn(entry.sk) else { return 0 };
    let ev = CloseEvent {
        kind: EventKind::Close as u8,
        _pad0: [0; 3],
        pid: tgid,
        tid: pid_tgid as u32,
        fd,
        conn_id: conn.conn_id,
        ts_ns: ktime_ns(),
        bytes_egress: conn.bytes_egress,
        bytes_ingress: conn.bytes_ingress,
    };
    send_control(&ev);
    0
}

/// dup2/dup3 silently close their target descriptor: forget what we knew about it.
#[tracepoint]
pub fn enter_dup(ctx: TracePointContext) -> u32 {
    let tgid = (pid_tgid() >> 32) as u32;
    let newfd = arg(&ctx, 1) as i32;
    forget_fd(fd_key(tgid, newfd));
    0
}

/// exec (CLOEXEC descriptors) and close_range close descriptors wholesale: start a
/// new generation so every cached descriptor of this process is re-resolved.
#[tracepoint]
pub fn bump_generation(_ctx: TracePointContext) -> u32 {
    let tgid = (pid_tgid() >> 32) as u32;
    bump_gen(tgid, ktime_ns());
    0
}

/// exec: new descriptor-table generation (as `bump_generation`), and tell userspace so it
/// can look for TLS libraries in the new image's mappings.
#[tracepoint]
pub fn on_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (pid_tgid() >> 32) as u32;
    let ts = ktime_ns();
    bump_gen(tgid, ts);
    if process_filtered(tgid) {
        return 0;
    }
    send_control(&ExecEvent { kind: EventKind::Exec as u8, _pad0: [0; 3], pid: tgid, ts_ns: ts });
    0
}

/// Process exit: only when the whole thread group goes (the leader exits), not per thread,
/// so thread-per-request servers keep their descriptor cache. Userspace learns the exit
/// status (job spans end with it; calls the process left open are cut).
#[tracepoint]
pub fn exit_process(_ctx: TracePointContext) -> u32 {
    let pid_tgid = pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 {
        return 0;
    }
    let ts = ktime_ns();
    bump_gen(tgid, ts);
    if process_filtered(tgid) {
        return 0;
    }
    // do_exit() stored the status in the task before this tracepoint fires.
    let exit_code = kread::<i32>(current_task() + config().offsets.task_exit_code as u64).unwrap_or(0);
    send_control(&ExitEvent { kind: EventKind::Exit as u8, _pad0: [0; 3], pid: tgid, exit_code, _pad1: 0, ts_ns: ts });
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
    // Offsets come from the format file at run time (see `tp_field`).
    let field = |off: u32| tp_field::<[u8; 16]>(&ctx, off);
    let read_i32 = |off: u32| tp_field::<i32>(&ctx, off).unwrap_or(0);
    let read_u16 = |off: u32| tp_field::<u16>(&ctx, off).unwrap_or(0);
    if read_i32(o.tp_oldstate) != TCP_SYN_SENT
        || read_i32(o.tp_newstate) != TCP_CLOSE
        || read_u16(o.tp_protocol) != IPPROTO_TCP
    {
        return 0;
    }
    let sk = tp_field::<u64>(&ctx, o.tp_skaddr).unwrap_or(0);
    let (sport, dport, family) = (read_u16(o.tp_sport), read_u16(o.tp_dport), read_u16(o.tp_family));
    if port_filtered(sport, dport) {
        return 0;
    }
    // An entry under `sk` is this attempt only if connect() returned first and created it;
    // otherwise it is left over from an earlier socket at the same address (ports differ).
    let conn_id = match conn(sk) {
        Some(c) if c.local_port != sport || c.remote_port != dport => 0,
        Some(c) if c.ignored != 0 => return 0,
        Some(c) => c.conn_id,
        None => 0,
    };
    let pid_tgid = pid_tgid();
    // SAFETY: `ConnectFailedEvent` is made of integers only; all-zero bytes are a valid value.
    let mut ev: ConnectFailedEvent = unsafe { core::mem::zeroed() };
    ev.kind = EventKind::ConnectFailed as u8;
    ev.family = family;
    ev.local_port = sport;
    ev.remote_port = dport;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.error = kread::<i32>(sk + o.sk_err as u64).unwrap_or(0);
    ev.conn_id = conn_id;
    ev.ts_ns = ktime_ns();
    if family == AF_INET {
        let (Some(l), Some(r)) = (field(o.tp_saddr), field(o.tp_daddr)) else { return 0 };
        ev.local_addr[..4].copy_from_slice(&l[..4]);
        ev.remote_addr[..4].copy_from_slice(&r[..4]);
    } else {
        let (Some(l), Some(r)) = (field(o.tp_saddr_v6), field(o.tp_daddr_v6)) else { return 0 };
        ev.local_addr = l;
        ev.remote_addr = r;
    }
    send_control(&ev);
    0
}
