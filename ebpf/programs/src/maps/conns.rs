//! `CONNS` and `CONN_SEQ`: connection state shared by every process holding a socket.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use hoptrace_common::Direction;

use crate::helpers::cpu_id;

/// struct sock address → connection state shared by every process holding the socket.
#[map]
static CONNS: LruHashMap<u64, ConnEntry> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU connection id sequence (ids are `(cpu + 1) << 48 | seq`).
#[map]
static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ConnEntry {
    pub conn_id: u64,
    pub bytes_egress: u64,
    pub bytes_ingress: u64,
    pub role: u8,
    pub ignored: u8,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Plaintext offsets (SSL_write / SSL_read), separate from the socket's byte stream.
    pub tls_egress: u64,
    pub tls_ingress: u64,
    /// Set once a syscall on this socket ran inside an SSL_* call or plaintext was seen:
    /// from then on the socket's (ciphertext) payload is counted but no longer copied.
    pub tls: u8,
    pub _pad: [u8; 7],
}

/// A connection entry in `CONNS`, found by a lookup during this program run.
///
/// Only `conn_mut` makes one, so the pointer is always a live map value: LRU hash map
/// values stay valid until the program returns (RCU), even when another CPU evicts or
/// deletes the entry. Other CPUs may update the same counters at the same time; an update
/// can then be lost (accepted: offsets are advisory), memory is never unsafe.
#[derive(Clone, Copy)]
pub(crate) struct ConnRef(*mut ConnEntry);

impl ConnRef {
    #[inline(always)]
    pub(crate) fn get(&self) -> &ConnEntry {
        // SAFETY: a live, aligned map value (see the type's doc).
        unsafe { &*self.0 }
    }

    #[inline(always)]
    pub(crate) fn mark_tls(self) {
        // SAFETY: a live, aligned map value (see the type's doc).
        unsafe { (*self.0).tls = 1 };
    }

    /// Advances the socket byte stream of `direction` by `len`; returns where the call's
    /// bytes start in it.
    #[inline(always)]
    pub(crate) fn advance(self, direction: Direction, len: u64) -> u64 {
        // SAFETY: a live, aligned map value (see the type's doc).
        unsafe {
            if direction == Direction::Egress {
                let off = (*self.0).bytes_egress;
                (*self.0).bytes_egress = off + len;
                off
            } else {
                let off = (*self.0).bytes_ingress;
                (*self.0).bytes_ingress = off + len;
                off
            }
        }
    }

    /// Like `advance`, for the plaintext offsets of a TLS connection.
    #[inline(always)]
    pub(crate) fn advance_tls(self, direction: Direction, len: u64) -> u64 {
        // SAFETY: a live, aligned map value (see the type's doc).
        unsafe {
            if direction == Direction::Egress {
                let off = (*self.0).tls_egress;
                (*self.0).tls_egress = off + len;
                off
            } else {
                let off = (*self.0).tls_ingress;
                (*self.0).tls_ingress = off + len;
                off
            }
        }
    }
}

/// The connection of socket `sk`, read-only.
#[inline(always)]
pub(crate) fn conn(sk: u64) -> Option<&'static ConnEntry> {
    // SAFETY: LRU hash map values stay valid until the program returns (RCU); only plain
    // integers are read from the reference, within this run.
    unsafe { CONNS.get(sk) }
}

/// The connection of socket `sk`, for updates.
#[inline(always)]
pub(crate) fn conn_mut(sk: u64) -> Option<ConnRef> {
    CONNS.get_ptr_mut(sk).map(ConnRef)
}

/// Stores a new connection under `sk`; false when the map refused it.
#[inline(always)]
pub(crate) fn insert_conn(sk: u64, entry: ConnEntry) -> bool {
    CONNS.insert(sk, entry, 0).is_ok()
}

/// A connection id unique on this machine: `(cpu + 1) << 48 | per-CPU sequence`.
#[inline(always)]
pub(crate) fn next_conn_id() -> u64 {
    let cpu = cpu_id() as u64;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of the per-CPU array, valid and aligned while the program
        // runs (a program racing on this CPU could at worst repeat a sequence number).
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    ((cpu + 1) << 48) | (seq & 0xffff_ffff_ffff)
}
