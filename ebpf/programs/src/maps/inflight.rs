//! `INFLIGHT` and `INFLIGHT_SPILL`: the arguments of syscalls in flight on captured
//! sockets, from the enter program to the exit program of the same thread.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};

/// One slot per thread id modulo the size, found without hashing or locking (a hash-map
/// insert and delete per syscall cost more than the rest of the enter program). A thread
/// whose slot another thread holds at that moment (a blocked read, say) goes to
/// `INFLIGHT_SPILL`, and the slot is marked so that exits mapping to it look there too.
#[map]
pub(crate) static INFLIGHT: Array<InflightSlot> = Array::with_max_entries(INFLIGHT_SLOTS, 0);
pub(crate) const INFLIGHT_SLOTS: u32 = 1 << 15;

#[map]
pub(crate) static INFLIGHT_SPILL: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct InflightSlot {
    /// Owning thread id, 0 when free (tid 0 never makes syscalls).
    pub owner: u32,
    /// Set once a call of a thread mapping here went to `INFLIGHT_SPILL` (never cleared:
    /// exits of this slot's threads then also look there).
    pub spilled: u32,
    /// SSL_read/SSL_write calls in progress among this slot's threads (the OpenSSL entry
    /// probe adds one, the return probe takes it back). While it is 0, which is always
    /// without TLS, the data syscalls skip the `SSL_CALLS` lookup altogether.
    pub ssl_active: u64,
    pub call: Inflight,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Inflight {
    /// The thread these arguments belong to (checked by `inflight::take`).
    pub tid: u32,
    pub buf: u64,
    /// Buffer length, or iovec count for vectored calls.
    pub count: u64,
    pub sk: u64,
    pub ts_enter: u64,
    pub fd: i32,
    pub syscall: u8,
    pub vectored: u8,
    /// The descriptor was already recorded for this process at enter time.
    pub known: u8,
    /// The syscall was made inside an SSL_read/SSL_write of the same thread: ciphertext.
    pub in_ssl: u8,
}
