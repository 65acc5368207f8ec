//! Connections: the first time a process is seen holding a TCP socket (accept, connect or
//! first traffic), record its descriptor, create or join the socket's connection entry
//! and announce it to the agent with an open record.

use hoptrace_common::*;

use crate::{
    config::config,
    fd::{AF_INET, AF_INET6},
    filter::port_filtered,
    helpers::{current_cgroup_id, current_comm, current_task, kread, pid_tgid},
    log::kwarn,
    maps::{
        conns::{conn_mut, insert_conn, next_conn_id, ConnEntry, ConnRef},
        drops::count_drop,
        fds::{current_gen, fd_key, set_fd_entry, FdEntry},
        ring::send_control,
    },
};

/// Reads the 4-tuple of a socket into a fresh connection entry.
#[inline(always)]
fn read_tuple(sk: u64, entry: &mut ConnEntry) -> bool {
    let o = &config().offsets;
    let Some(family) = kread::<u16>(sk + o.sk_family as u64) else { return false };
    let Some(lport) = kread::<u16>(sk + o.sk_num as u64) else { return false };
    let Some(rport) = kread::<u16>(sk + o.sk_dport as u64) else { return false };
    entry.family = family;
    entry.local_port = lport; // host byte order in the kernel (skc_num)
    entry.remote_port = u16::from_be(rport); // network byte order (skc_dport)
    if family == AF_INET {
        let Some(l) = kread::<[u8; 4]>(sk + o.sk_rcv_saddr as u64) else { return false };
        let Some(r) = kread::<[u8; 4]>(sk + o.sk_daddr as u64) else { return false };
        entry.local_addr[..4].copy_from_slice(&l);
        entry.remote_addr[..4].copy_from_slice(&r);
    } else {
        if family != AF_INET6 {
            // `resolve_fd` accepted the socket as IPv4/IPv6 moments ago: its memory changed.
            kwarn!("socket with unexpected family {}: its tuple is read as IPv6", family);
        }
        let Some(l) = kread::<[u8; 16]>(sk + o.sk_v6_rcv_saddr as u64) else { return false };
        let Some(r) = kread::<[u8; 16]>(sk + o.sk_v6_daddr as u64) else { return false };
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
    let pid_tgid = pid_tgid();
    let task = current_task();
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
        cgroup_id: current_cgroup_id(),
        local_addr: c.local_addr,
        remote_addr: c.remote_addr,
        comm: current_comm(),
    };
    send_control(&ev);
}

/// Records that the current process holds `fd` on socket `sk`, creating the connection
/// entry when `fresh` (accept/connect: a new connection even if `sk` memory was reused) or
/// when none exists yet. Returns the entry, or None when the connection is not captured.
#[inline(always)]
pub(crate) fn attach_fd(sk: u64, fd: i32, role: Role, via: Syscall, fresh: bool, ts: u64) -> Option<ConnRef> {
    let tgid = (pid_tgid() >> 32) as u32;
    let key = fd_key(tgid, fd);
    let gen = current_gen(tgid);
    // SAFETY: `ConnEntry` is made of integers only; all-zero bytes are a valid value.
    let mut entry: ConnEntry = unsafe { core::mem::zeroed() };
    if !read_tuple(sk, &mut entry) {
        count_drop(DropReason::KernelReadFault, 1);
        return None;
    }
    // CONNS entries outlive their socket (nothing reliably marks a socket's end), so an
    // entry found under `sk` may belong to an earlier socket at the same address: only one
    // with the same tuple is this connection (another descriptor or process sharing it).
    let existing = if fresh { None } else { conn_mut(sk).filter(|c| same_tuple(c.get(), &entry)) };
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
            if !insert_conn(sk, entry) {
                count_drop(DropReason::ConnMapFull, 1);
                kwarn!("connection table full: fd {} of process {} is not captured", fd, tgid);
                return None;
            }
            conn_mut(sk)?
        }
    };
    let ignored = conn.get().ignored != 0;
    set_fd_entry(key, FdEntry { sk: if ignored { 0 } else { sk }, gen });
    if ignored {
        return None;
    }
    emit_open(conn.get(), via, fd, ts);
    Some(conn)
}
