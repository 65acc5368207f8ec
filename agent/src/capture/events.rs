//! Decoding of ring-buffer records into typed events.
//!
//! This is the only code that reads the kernel's record bytes: records are length-checked
//! before any field is read, raw integers become [`Direction`], [`Role`], [`Syscall`] and
//! socket addresses here, so a short or unknown record is a counted [`DecodeError`], never
//! a panic, and nothing past this module handles `#[repr(C)]` kernel structs.
//!
//! A data event borrows its payload from the record (ring memory): decoding copies the
//! fixed-size header fields and nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hoptrace_common::{
    CloseEvent, ConnectFailedEvent, DataHeader, Direction, EventKind, ExecEvent, ExitEvent, OpenEvent, PyContextEvent,
    Role, Syscall, COMM_LEN, PY_CONTEXT_COPIED, PY_CONTEXT_WRITE,
};
use thiserror::Error;

/// A process gained a descriptor on a TCP connection (accept, connect, or first traffic
/// on a connection that predates the agent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub conn_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub fd: i32,
    /// The role the syscall established (`Unknown` for a connection seen mid-flight).
    pub role: Role,
    /// The syscall through which the descriptor was first seen.
    pub via: Syscall,
    pub ipv6: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    comm: [u8; COMM_LEN],
}

impl Open {
    /// The kernel's name of the process (`comm`), up to its NUL.
    pub fn comm(&self) -> String {
        comm_string(&self.comm)
    }
}

/// Bytes moved by one syscall: one chunk of them (a call may span several records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub conn_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub direction: Direction,
    pub syscall: Syscall,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// Offset of the syscall's first byte in this direction's stream.
    pub call_offset: u64,
    /// Bytes the syscall moved, and how many of them the kernel was allowed to copy.
    pub call_len: u32,
    pub call_captured: u32,
    /// Offset of this chunk inside the syscall's bytes.
    pub chunk_offset: u32,
    pub payload: &'a [u8],
}

impl Data<'_> {
    /// OpenSSL plaintext (SSL_read/SSL_write), not the socket's own bytes.
    pub fn is_tls_plaintext(&self) -> bool {
        self.syscall.is_tls_plaintext()
    }
}

/// A process closed its descriptor on a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub conn_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
    /// Stream totals at close time (bytes sent / received through this socket).
    pub bytes_egress: u64,
    pub bytes_ingress: u64,
}

/// An outgoing TCP connection that never got established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailed {
    /// The connection's id when connect() had already returned, else `None`.
    pub conn_id: Option<u64>,
    /// The thread running when the state changed: the connecting one when the failure
    /// happened inside connect(); otherwise use the connection's owner.
    pub pid: u32,
    pub tid: u32,
    /// The socket error (`ECONNREFUSED`, `ETIMEDOUT`…).
    pub error: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub ts_ns: u64,
}

/// A process called exec().
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    pub ts_ns: u64,
}

/// A process exited (its thread-group leader did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// The status as `wait()` reports it: `code << 8`, or the fatal signal in bits 0..7.
    pub status: i32,
    pub ts_ns: u64,
}

impl Exit {
    /// The fatal signal, when a signal ended the process.
    pub fn signal(&self) -> Option<i32> {
        let sig = self.status & 0x7f;
        (sig != 0).then_some(sig)
    }

    /// The exit code, when the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        self.signal().is_none().then_some((self.status >> 8) & 0xff)
    }
}

/// A chunk of a write to a selected process's stdout (`stream` 1) or stderr (2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppLog<'a> {
    pub pid: u32,
    pub tid: u32,
    pub stream: u8,
    pub ts_enter_ns: u64,
    /// Bytes the write moved, and how many the kernel was allowed to copy.
    pub call_len: u32,
    pub call_captured: u32,
    pub chunk_offset: u32,
    pub payload: &'a [u8],
}

/// What a thread of a selected Python process was running in (see
/// `traces::pycontext`): Context addresses are only compared, never dereferenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PyContext {
    /// `PyContext_CopyCurrent` returned `context` while the thread was in `parent` (0:
    /// none yet).
    Copied { pid: u32, tid: u32, ts_ns: u64, context: u64, parent: u64 },
    /// The thread wrote on connection `conn_id` while in `context`; `ts_enter_ns` is the
    /// write's data record's.
    Write { pid: u32, tid: u32, ts_enter_ns: u64, conn_id: u64, context: u64 },
}

#[derive(Debug)]
pub enum Event<'a> {
    PyContext(PyContext),
    Open(Open),
    Data(Data<'a>),
    Close(Close),
    ConnectFailed(ConnectFailed),
    Exec(Exec),
    Exit(Exit),
    AppLog(AppLog<'a>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record of kind {kind} is {len} bytes, shorter than its {need}-byte header")]
    Short { kind: u8, len: usize, need: usize },
    #[error("data record announces {announced} payload bytes but carries {present}")]
    PayloadMismatch { announced: usize, present: usize },
    #[error("record of kind {kind} has an invalid {field} value {value}")]
    BadField { kind: u8, field: &'static str, value: u8 },
}

/// Marker for the `#[repr(C)]` record structs of `hoptrace_common` that may be read from
/// any bytes of the right length.
///
/// # Safety
/// Implementors are `repr(C)` structs made only of integers and integer arrays, so every
/// bit pattern is a valid value.
unsafe trait Record: Copy {}
// SAFETY: all five are repr(C) structs of integers and byte arrays (ebpf/common).
unsafe impl Record for OpenEvent {}
// SAFETY: as above.
unsafe impl Record for DataHeader {}
// SAFETY: as above.
unsafe impl Record for CloseEvent {}
// SAFETY: as above.
unsafe impl Record for ConnectFailedEvent {}
// SAFETY: as above.
unsafe impl Record for ExecEvent {}
// SAFETY: as above.
unsafe impl Record for ExitEvent {}
// SAFETY: as above.
unsafe impl Record for PyContextEvent {}

fn read<T: Record>(bytes: &[u8], kind: u8) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { kind, len: bytes.len(), need });
    }
    // SAFETY: length checked above; `T: Record` makes any bit pattern valid, and
    // read_unaligned does not require alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// A socket address as the kernel writes it: IPv4 in the first 4 bytes, or IPv6.
/// Dual-stack sockets carry IPv4 peers as `::ffff:a.b.c.d`; they come out as IPv4.
fn addr(ipv6: bool, bytes: [u8; 16], port: u16) -> SocketAddr {
    let ip = if ipv6 {
        let v6 = Ipv6Addr::from(bytes);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    };
    SocketAddr::new(ip, port)
}

const AF_INET6: u16 = 10;

fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn role(v: u8) -> Role {
    match v {
        1 => Role::Client,
        2 => Role::Server,
        _ => Role::Unknown,
    }
}

fn direction(v: u8, kind: u8) -> Result<Direction, DecodeError> {
    match v {
        0 => Ok(Direction::Egress),
        1 => Ok(Direction::Ingress),
        value => Err(DecodeError::BadField { kind, field: "direction", value }),
    }
}

fn open(ev: OpenEvent) -> Open {
    let ipv6 = ev.family == AF_INET6;
    Open {
        conn_id: ev.conn_id,
        pid: ev.pid,
        tid: ev.tid,
        ppid: ev.ppid,
        fd: ev.fd,
        role: role(ev.role),
        via: Syscall::from_u8(ev.via).unwrap_or(Syscall::FirstData),
        ipv6,
        local: addr(ipv6, ev.local_addr, ev.local_port),
        remote: addr(ipv6, ev.remote_addr, ev.remote_port),
        cgroup_id: ev.cgroup_id,
        ts_ns: ev.ts_ns,
        comm: ev.comm,
    }
}

fn data(bytes: &[u8], kind: u8) -> Result<Data<'_>, DecodeError> {
    let h: DataHeader = read(bytes, kind)?;
    let start = std::mem::size_of::<DataHeader>();
    let announced = h.chunk_len as usize;
    let present = bytes.len() - start;
    // The ring buffer rounds records up to 8 bytes, so trailing bytes are allowed.
    if present < announced {
        return Err(DecodeError::PayloadMismatch { announced, present });
    }
    let syscall =
        Syscall::from_u8(h.syscall).ok_or(DecodeError::BadField { kind, field: "syscall", value: h.syscall })?;
    Ok(Data {
        conn_id: h.conn_id,
        pid: h.pid,
        tid: h.tid,
        fd: h.fd,
        direction: direction(h.direction, kind)?,
        syscall,
        ts_enter_ns: h.ts_enter_ns,
        ts_exit_ns: h.ts_exit_ns,
        call_offset: h.call_offset,
        call_len: h.call_len,
        call_captured: h.call_captured,
        chunk_offset: h.chunk_offset,
        payload: &bytes[start..start + announced],
    })
}

fn connect_failed(ev: ConnectFailedEvent) -> ConnectFailed {
    let ipv6 = ev.family == AF_INET6;
    ConnectFailed {
        conn_id: (ev.conn_id != 0).then_some(ev.conn_id),
        pid: ev.pid,
        tid: ev.tid,
        error: ev.error,
        local: addr(ipv6, ev.local_addr, ev.local_port),
        remote: addr(ipv6, ev.remote_addr, ev.remote_port),
        ts_ns: ev.ts_ns,
    }
}

fn py_context(ev: PyContextEvent) -> Result<PyContext, DecodeError> {
    let (pid, tid, context) = (ev.pid, ev.tid, ev.context);
    match ev.what {
        PY_CONTEXT_COPIED => Ok(PyContext::Copied { pid, tid, ts_ns: ev.ts_ns, context, parent: ev.parent }),
        PY_CONTEXT_WRITE => Ok(PyContext::Write { pid, tid, ts_enter_ns: ev.ts_ns, conn_id: ev.conn_id, context }),
        value => Err(DecodeError::BadField { kind: EventKind::PyContext as u8, field: "what", value }),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind = *bytes.first().ok_or(DecodeError::Empty)?;
    match kind {
        k if k == EventKind::Data as u8 => Ok(Event::Data(data(bytes, kind)?)),
        k if k == EventKind::Open as u8 => Ok(Event::Open(open(read(bytes, kind)?))),
        k if k == EventKind::Close as u8 => {
            let ev: CloseEvent = read(bytes, kind)?;
            Ok(Event::Close(Close {
                conn_id: ev.conn_id,
                pid: ev.pid,
                tid: ev.tid,
                fd: ev.fd,
                ts_ns: ev.ts_ns,
                bytes_egress: ev.bytes_egress,
                bytes_ingress: ev.bytes_ingress,
            }))
        }
        k if k == EventKind::ConnectFailed as u8 => Ok(Event::ConnectFailed(connect_failed(read(bytes, kind)?))),
        k if k == EventKind::Exec as u8 => {
            let ev: ExecEvent = read(bytes, kind)?;
            Ok(Event::Exec(Exec { pid: ev.pid, ts_ns: ev.ts_ns }))
        }
        k if k == EventKind::Exit as u8 => {
            let ev: ExitEvent = read(bytes, kind)?;
            Ok(Event::Exit(Exit { pid: ev.pid, status: ev.exit_code, ts_ns: ev.ts_ns }))
        }
        k if k == EventKind::PyContext as u8 => Ok(Event::PyContext(py_context(read(bytes, kind)?)?)),
        k if k == EventKind::AppLog as u8 => {
            let h: DataHeader = read(bytes, kind)?;
            let d = data(bytes, kind)?;
            if h._pad0 != 1 && h._pad0 != 2 {
                return Err(DecodeError::BadField { kind, field: "stream", value: h._pad0 });
            }
            Ok(Event::AppLog(AppLog {
                pid: d.pid,
                tid: d.tid,
                stream: h._pad0,
                ts_enter_ns: d.ts_enter_ns,
                call_len: d.call_len,
                call_captured: d.call_captured,
                chunk_offset: d.chunk_offset,
                payload: d.payload,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Builders of typed events for tests of the layers above (what the kernel would send).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// An accepted (`Role::Server`) or connected (`Role::Client`) IPv4 connection on
    /// 127.0.0.1, local port 8080, remote port 40000, of process `nginx`.
    pub fn open(conn_id: u64, role: Role, via: Syscall, pid: u32) -> Open {
        let lo = "127.0.0.1".parse().unwrap();
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"nginx");
        Open {
            conn_id,
            pid,
            tid: pid,
            ppid: 1,
            fd: 5,
            role,
            via,
            ipv6: false,
            local: SocketAddr::new(lo, 8080),
            remote: SocketAddr::new(lo, 40000),
            cgroup_id: 0,
            ts_ns: 1,
            comm,
        }
    }

    /// One whole syscall's bytes on `conn_id` at stream offset `offset`.
    pub fn data(conn_id: u64, syscall: Syscall, offset: u64, bytes: &[u8]) -> Data<'_> {
        Data {
            conn_id,
            pid: 10,
            tid: 10,
            fd: 5,
            direction: syscall.direction(),
            syscall,
            ts_enter_ns: 1,
            ts_exit_ns: 2,
            call_offset: offset,
            call_len: bytes.len() as u32,
            call_captured: bytes.len() as u32,
            chunk_offset: 0,
            payload: bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T: Record>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) struct of integers (Record); reading its bytes is sound.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }.to_vec()
    }

    fn data_record(chunk_len: u32, payload: &[u8]) -> Vec<u8> {
        let header = DataHeader {
            kind: EventKind::Data as u8,
            direction: 0,
            syscall: 5,
            _pad0: 0,
            pid: 1,
            tid: 1,
            fd: 3,
            conn_id: 7,
            ts_enter_ns: 1,
            ts_exit_ns: 2,
            call_offset: 0,
            call_len: chunk_len,
            call_captured: chunk_len,
            chunk_offset: 0,
            chunk_len,
        };
        let mut v = as_bytes(&header);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_data_and_rejects_truncated_records() {
        let rec = data_record(5, b"hello");
        match decode(&rec).unwrap() {
            Event::Data(d) => {
                assert_eq!(d.payload, b"hello");
                assert_eq!((d.conn_id, d.direction, d.syscall), (7, Direction::Egress, Syscall::Write));
            }
            other => panic!("unexpected {other:?}"),
        }
        let short = data_record(10, b"hello");
        assert_eq!(decode(&short).unwrap_err(), DecodeError::PayloadMismatch { announced: 10, present: 5 });
        assert!(matches!(decode(&rec[..20]), Err(DecodeError::Short { .. })));
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(&[99, 0, 0]).unwrap_err(), DecodeError::UnknownKind(99));
        let mut bad = data_record(5, b"hello");
        bad[1] = 7;
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadField { kind: 2, field: "direction", value: 7 });
    }

    #[test]
    fn open_records_become_socket_addresses_and_roles() {
        let mut local = [0u8; 16];
        local[10..12].copy_from_slice(&[0xff, 0xff]);
        local[12..].copy_from_slice(&[10, 0, 0, 1]);
        let ev = OpenEvent {
            kind: EventKind::Open as u8,
            role: 2,
            via: Syscall::Accept4 as u8,
            _pad0: 0,
            family: AF_INET6,
            local_port: 80,
            remote_port: 5000,
            _pad1: 0,
            pid: 9,
            tid: 9,
            ppid: 1,
            fd: 4,
            _pad2: 0,
            conn_id: 3,
            ts_ns: 5,
            cgroup_id: 0,
            local_addr: local,
            remote_addr: Ipv6Addr::LOCALHOST.octets(),
            comm: *b"srv\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let Event::Open(o) = decode(&as_bytes(&ev)).unwrap() else { panic!("not an open") };
        assert_eq!(o.local, "10.0.0.1:80".parse().unwrap(), "v4-mapped shows as IPv4");
        assert_eq!(o.remote, "[::1]:5000".parse().unwrap());
        assert_eq!((o.role, o.via, o.comm().as_str(), o.ipv6), (Role::Server, Syscall::Accept4, "srv", true));
    }

    #[test]
    fn python_context_records_decode_by_what_and_reject_unknown_ones() {
        let mut ev = PyContextEvent {
            kind: EventKind::PyContext as u8,
            what: PY_CONTEXT_COPIED,
            _pad0: [0; 2],
            pid: 7,
            tid: 8,
            _pad1: 0,
            ts_ns: 100,
            conn_id: 0,
            context: 0x1000,
            parent: 0x2000,
        };
        let copied = PyContext::Copied { pid: 7, tid: 8, ts_ns: 100, context: 0x1000, parent: 0x2000 };
        assert!(matches!(decode(&as_bytes(&ev)), Ok(Event::PyContext(c)) if c == copied));
        ev.what = PY_CONTEXT_WRITE;
        ev.conn_id = 5;
        let write = PyContext::Write { pid: 7, tid: 8, ts_enter_ns: 100, conn_id: 5, context: 0x1000 };
        assert!(matches!(decode(&as_bytes(&ev)), Ok(Event::PyContext(c)) if c == write));
        ev.what = 9;
        assert_eq!(decode(&as_bytes(&ev)).unwrap_err(), DecodeError::BadField { kind: 8, field: "what", value: 9 });
        assert!(matches!(decode(&as_bytes(&ev)[..40]), Err(DecodeError::Short { .. })));
    }
}
