//! The connection table: every captured TCP connection with its full 4-tuple, role,
//! owning process and one ordered byte stream per direction.
//!
//! Connections come from the kernel's open records (accept, connect, or first traffic on a
//! connection that predates the agent). When an open record was lost, or a forked child
//! keeps using a socket its parent already closed, the tuple is rebuilt from /proc so data
//! is still attributed. Memory is bounded: a maximum number of connections (new ones are
//! refused and counted past it) and idle eviction.

use hashbrown::HashMap;
use std::{net::SocketAddr, time::Duration};

use hoptrace_common::{Direction, Role, Syscall};

use crate::model::span::Str;
use serde::Serialize;

use crate::{
    capture::events::{Close, Data, Open},
    capture::stream::{Chunk, GapReason, Segment, Stream},
    resource::procnet::{self, Listeners},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// How the role was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSource {
    /// From the syscall itself (accept → server, connect → client).
    Syscall,
    /// Predates the agent: local port is (server) or is not (client) a listening port.
    Listener,
    /// Could not be decided (process gone).
    Unknown,
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Server => "server",
        Role::Unknown => "unknown",
    }
}

/// Set in the id of a connection's TLS plaintext view (kernel ids never use bit 63: they
/// are `(cpu + 1) << 48 | sequence`).
pub const TLS_VIEW_BIT: u64 = hoptrace_common::TLS_VIEW_BIT;

#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub tuple: Tuple,
    pub role: Role,
    pub role_source: RoleSource,
    pub via: Syscall,
    /// Process that most recently attached to the connection, and its parent.
    pub pid: u32,
    pub ppid: u32,
    pub fd: i32,
    /// Shared: every span and held call of the connection points at it.
    pub comm: Str,
    pub cgroup_id: u64,
    pub opened_ns: u64,
    /// Last activity, on the kernel timestamps' clock (CLOCK_MONOTONIC ns): the events'
    /// own times, so the per-syscall path reads no clock.
    pub last_seen: u64,
    /// Indexed by `Direction as usize` (egress, ingress).
    pub streams: [Stream; 2],
}

impl Connection {
    /// This entry carries TLS plaintext (from the OpenSSL probes), not the socket's bytes.
    pub fn is_tls_view(&self) -> bool {
        self.id & TLS_VIEW_BIT != 0
    }

    pub fn stream(&self, d: Direction) -> &Stream {
        &self.streams[d as usize]
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 65536, idle_timeout: Duration::from_secs(300) }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TableStats {
    pub conns_opened: u64,
    pub conns_closed: u64,
    pub conns_evicted_idle: u64,
    pub conns_rejected_table_full: u64,
    /// Data for a connection whose open record never arrived; rebuilt from /proc.
    pub conns_rebuilt_from_proc: u64,
    /// Data that could not be attributed at all (process gone before /proc was read).
    pub data_unattributed_records: u64,
    /// Connections whose TLS plaintext was seen (a TLS view was opened).
    pub tls_views_opened: u64,
}

pub struct ConnTable {
    conns: HashMap<u64, Connection>,
    listeners: Listeners,
    limits: Limits,
    pub stats: TableStats,
}

/// `error.type` values for the socket errors a connection attempt ends with.
pub fn errno_name(err: i32) -> &'static str {
    match err {
        libc::ECONNREFUSED => "connection_refused",
        libc::ETIMEDOUT => "timed_out",
        libc::EHOSTUNREACH => "host_unreachable",
        libc::ENETUNREACH => "network_unreachable",
        libc::ECONNRESET => "connection_reset",
        0 => "connection_closed",
        _ => "connect_error",
    }
}

impl ConnTable {
    pub fn new(limits: Limits) -> Self {
        Self { conns: HashMap::new(), listeners: Listeners::default(), limits, stats: TableStats::default() }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&Connection> {
        self.conns.get(&id)
    }

    fn resolve_role(&mut self, role: Role, pid: u32, local: SocketAddr) -> (Role, RoleSource) {
        if role != Role::Unknown {
            return (role, RoleSource::Syscall);
        }
        match self.listeners.is_listening(pid, local) {
            Some(true) => (Role::Server, RoleSource::Listener),
            Some(false) => (Role::Client, RoleSource::Listener),
            None => (Role::Unknown, RoleSource::Unknown),
        }
    }

    fn has_room(&mut self) -> bool {
        if self.conns.len() < self.limits.max_connections {
            return true;
        }
        self.stats.conns_rejected_table_full += 1;
        false
    }

    /// A process attached to a connection. Returns the connection, or None when the table
    /// is full.
    pub fn on_open(&mut self, ev: &Open) -> Option<&Connection> {
        let tuple = Tuple { local: ev.local, remote: ev.remote };
        let (kernel_role, via) = (ev.role, ev.via);
        let fresh = matches!(via, Syscall::Accept | Syscall::Accept4 | Syscall::Connect);
        if !fresh {
            if let Some(c) = self.conns.get_mut(&ev.conn_id) {
                // Another process (fork, descriptor passing) now holds the connection.
                c.pid = ev.pid;
                c.ppid = ev.ppid;
                c.fd = ev.fd;
                c.comm = ev.comm().into();
                c.last_seen = c.last_seen.max(ev.ts_ns);
                return self.conns.get(&ev.conn_id);
            }
        }
        if !self.conns.contains_key(&ev.conn_id) && !self.has_room() {
            return None;
        }
        let (role, role_source) = self.resolve_role(kernel_role, ev.pid, tuple.local);
        self.stats.conns_opened += 1;
        let conn = Connection {
            id: ev.conn_id,
            tuple,
            role,
            role_source,
            via,
            pid: ev.pid,
            ppid: ev.ppid,
            fd: ev.fd,
            comm: ev.comm().into(),
            cgroup_id: ev.cgroup_id,
            opened_ns: ev.ts_ns,
            last_seen: ev.ts_ns,
            streams: Default::default(),
        };
        self.conns.insert(ev.conn_id, conn);
        self.conns.get(&ev.conn_id)
    }

    /// Rebuilds a connection from /proc when data arrives for an id we never saw opened.
    fn rebuild(&mut self, h: &Data) -> bool {
        let Some(inode) = procnet::socket_inode(h.pid, h.fd) else {
            return false;
        };
        let Some(entry) = procnet::tcp_table(h.pid).into_iter().find(|e| e.inode == inode) else {
            return false;
        };
        if !self.has_room() {
            return false;
        }
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", h.pid)).map(|s| s.trim().to_string()).unwrap_or_default();
        let ppid = std::fs::read_to_string(format!("/proc/{}/stat", h.pid))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()))
            .unwrap_or(0);
        let (role, role_source) = self.resolve_role(Role::Unknown, h.pid, entry.local);
        self.stats.conns_rebuilt_from_proc += 1;
        self.stats.conns_opened += 1;
        let mut streams: [Stream; 2] = Default::default();
        streams[h.direction as usize].start_at(h.call_offset);
        self.conns.insert(
            h.conn_id,
            Connection {
                id: h.conn_id,
                tuple: Tuple { local: entry.local, remote: entry.remote },
                role,
                role_source,
                via: Syscall::FirstData,
                pid: h.pid,
                ppid,
                fd: h.fd,
                comm: comm.into(),
                cgroup_id: 0,
                opened_ns: h.ts_enter_ns,
                last_seen: h.ts_exit_ns,
                streams,
            },
        );
        true
    }

    /// Adds a data chunk to its connection's stream; returns the connection and the
    /// segments that became available in order.
    ///
    /// TLS plaintext records (SSL_read/SSL_write) go to the connection's *TLS view*: a
    /// second entry with the same tuple, role and process, id `conn_id | TLS_VIEW_BIT`, and
    /// its own streams (the kernel numbers plaintext bytes separately). Parsers thus see
    /// the plaintext from its first byte, never mixed with the handshake ciphertext that
    /// the socket's own stream may have carried before the first SSL call.
    pub fn on_data(&mut self, h: &Data, out: &mut Vec<Segment>) -> Option<&Connection> {
        if !self.conns.contains_key(&h.conn_id) && !self.rebuild(h) {
            self.stats.data_unattributed_records += 1;
            return None;
        }
        let tls = h.is_tls_plaintext();
        let id = if tls { self.tls_view(h.conn_id, h.ts_exit_ns)? } else { h.conn_id };
        let c = self.conns.get_mut(&id)?;
        c.last_seen = c.last_seen.max(h.ts_exit_ns);
        let dir = h.direction as usize;
        c.streams[dir].push(
            Chunk {
                call_offset: h.call_offset,
                call_len: h.call_len,
                call_captured: h.call_captured,
                chunk_offset: h.chunk_offset,
                ts_enter_ns: h.ts_enter_ns,
                ts_ns: h.ts_exit_ns,
                tid: h.tid,
                bytes: h.payload,
            },
            out,
        );
        Some(c)
    }

    /// Id of the TLS view of `conn_id`, created from the connection when it is new.
    fn tls_view(&mut self, conn_id: u64, ts_ns: u64) -> Option<u64> {
        let id = conn_id | TLS_VIEW_BIT;
        let exists = self.conns.contains_key(&id);
        let parent = self.conns.get_mut(&conn_id)?;
        // Plaintext traffic keeps the socket's entry alive too (its close ends both).
        parent.last_seen = parent.last_seen.max(ts_ns);
        if exists {
            return Some(id);
        }
        let view = Connection {
            id,
            tuple: parent.tuple,
            role: parent.role,
            role_source: parent.role_source,
            via: parent.via,
            pid: parent.pid,
            ppid: parent.ppid,
            fd: parent.fd,
            comm: parent.comm.clone(),
            cgroup_id: parent.cgroup_id,
            opened_ns: parent.opened_ns,
            last_seen: ts_ns,
            streams: Default::default(),
        };
        if !self.has_room() {
            return None;
        }
        self.stats.tls_views_opened += 1;
        self.conns.insert(id, view);
        Some(id)
    }

    /// The socket behind `conn_id` was closed: its TLS view, if any, leaves the table too.
    pub fn close_tls_view(&mut self, conn_id: u64, out: &mut [Vec<Segment>; 2]) -> Option<Connection> {
        let mut c = self.conns.remove(&(conn_id | TLS_VIEW_BIT))?;
        c.streams[0].flush(&mut out[0]);
        c.streams[1].flush(&mut out[1]);
        Some(c)
    }

    /// A process closed its descriptor: the connection leaves the table with its streams
    /// flushed. (If another process still holds the socket, its next traffic re-attaches.)
    ///
    /// The close record carries the kernel's byte totals: what never arrived before it is
    /// lost (records refused by a full ring), except on a TLS socket, whose ciphertext is
    /// not copied by design once its plaintext view exists.
    pub fn on_close(&mut self, ev: &Close, out: &mut [Vec<Segment>; 2]) -> Option<Connection> {
        let tls = self.conns.contains_key(&(ev.conn_id | TLS_VIEW_BIT));
        let mut c = self.conns.remove(&ev.conn_id)?;
        self.stats.conns_closed += 1;
        let tail = if tls { GapReason::NotCaptured } else { GapReason::Lost };
        c.streams[Direction::Egress as usize].finish(ev.bytes_egress, tail, &mut out[0]);
        c.streams[Direction::Ingress as usize].finish(ev.bytes_ingress, tail, &mut out[1]);
        Some(c)
    }

    /// Removes connections idle for longer than the limit.
    pub fn evict_idle(&mut self) -> Vec<Connection> {
        let timeout = self.limits.idle_timeout.as_nanos() as u64;
        let now = crate::util::clock::monotonic_ns();
        let idle: Vec<u64> =
            self.conns.iter().filter(|(_, c)| now.saturating_sub(c.last_seen) > timeout).map(|(id, _)| *id).collect();
        self.stats.conns_evicted_idle += idle.len() as u64;
        idle.into_iter().filter_map(|id| self.conns.remove(&id)).collect()
    }

    /// Removes the connections (and TLS views) owned by process `pid`: it exited, so the
    /// kernel closed its sockets without a close() the programs could see.
    pub fn take_process(&mut self, pid: u32) -> Vec<Connection> {
        let ids: Vec<u64> = self.conns.iter().filter(|(_, c)| c.pid == pid).map(|(id, _)| *id).collect();
        self.stats.conns_closed += ids.len() as u64;
        ids.into_iter().filter_map(|id| self.conns.remove(&id)).collect()
    }

    /// Empties the table (agent shutdown).
    pub fn drain(&mut self) -> Vec<Connection> {
        self.conns.drain().map(|(_, c)| c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::events::testing::{data, open};

    #[test]
    fn table_is_bounded_and_counts_refusals() {
        let mut t = ConnTable::new(Limits { max_connections: 2, idle_timeout: Duration::from_secs(60) });
        assert!(t.on_open(&open(1, Role::Server, Syscall::Accept, 10)).is_some());
        assert!(t.on_open(&open(2, Role::Server, Syscall::Accept, 10)).is_some());
        assert!(t.on_open(&open(3, Role::Server, Syscall::Accept, 10)).is_none());
        assert_eq!(t.stats.conns_rejected_table_full, 1);
        let c = t.get(1).unwrap();
        assert_eq!(c.tuple.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((c.role, c.role_source, c.comm.as_str()), (Role::Server, RoleSource::Syscall, "nginx"));
    }

    #[test]
    fn tls_plaintext_gets_its_own_view_and_closes_with_the_socket() {
        let mut t = ConnTable::new(Limits::default());
        t.on_open(&open(1, Role::Server, Syscall::Accept, 10));
        let mut out = Vec::new();
        // Handshake ciphertext on the socket's own stream…
        let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        let c = t.on_data(&data(1, Syscall::Read, 0, &hello), &mut out).unwrap();
        assert_eq!((c.id, c.is_tls_view()), (1, false));
        // …then plaintext, numbered from 0 in its own offset space.
        out.clear();
        let req = b"GET / HTTP/1.1\r\n\r\n";
        let c = t.on_data(&data(1, Syscall::SslRead, 0, req), &mut out).unwrap();
        assert_eq!((c.id, c.is_tls_view(), c.role, c.tuple.local.port()), (1 | TLS_VIEW_BIT, true, Role::Server, 8080));
        assert!(matches!(&out[..], [Segment::Data { offset: 0, bytes, .. }] if bytes == req));
        assert_eq!(t.stats.tls_views_opened, 1);
        let close = Close { pid: 10, tid: 10, fd: 5, conn_id: 1, ts_ns: 3, bytes_egress: 0, bytes_ingress: 10 };
        let mut flushed: [Vec<Segment>; 2] = Default::default();
        assert!(t.on_close(&close, &mut flushed).is_some());
        assert!(t.close_tls_view(1, &mut flushed).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn reattach_by_another_process_keeps_the_stream() {
        let mut t = ConnTable::new(Limits::default());
        t.on_open(&open(1, Role::Server, Syscall::Accept, 10));
        t.on_open(&open(1, Role::Server, Syscall::FirstData, 11));
        let c = t.get(1).unwrap();
        assert_eq!((c.pid, c.role), (11, Role::Server));
        assert_eq!(t.stats.conns_opened, 1);
    }
}
