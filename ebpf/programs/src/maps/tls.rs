//! `SSL_CALLS`, `SSL_FDS`, `SSL_EMITTERS`: state of the OpenSSL uprobes (see `crate::tls`).

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, ProgramArray},
};

/// An SSL_read/SSL_write in progress, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SslCall {
    pub ssl: u64,
    pub buf: u64,
    /// `_ex` variants: where the library writes the byte count (`size_t *`).
    pub len_ptr: u64,
    pub ts_enter: u64,
    /// Descriptor of the last TCP syscall made inside this call (-1: none yet).
    pub fd: i32,
    /// `Syscall::SslRead` or `Syscall::SslWrite`.
    pub syscall: u8,
    pub ex: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// LRU rather than a plain hash: a thread that dies inside SSL_read (killed, or a
/// longjmp out of a callback) never reaches the return probe, and its entry must not hold
/// a slot forever.
#[map]
pub(crate) static SSL_CALLS: LruHashMap<u32, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// (process, SSL*) → socket descriptor, learned from syscalls inside SSL calls or from
/// SSL_set_fd. LRU: SSL objects are freed without us noticing; old ones age out.
#[map]
pub(crate) static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// The uprobe-typed chunk emitter (tail calls only reach programs of the caller's type).
#[map]
pub(crate) static SSL_EMITTERS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Takes the SSL call the current thread `tid` is in, if any.
#[inline(always)]
pub(crate) fn take_ssl_call(tid: u32) -> Option<SslCall> {
    // SAFETY: the value is copied at once; LRU hash map values stay readable for the whole
    // program run (RCU) even if another CPU evicts the entry meanwhile.
    let call = unsafe { SSL_CALLS.get(tid) }.copied()?;
    let _ = SSL_CALLS.remove(tid);
    Some(call)
}

/// True when thread `tid` has an SSL call in `SSL_CALLS` (diagnostics only: a lookup).
#[inline(always)]
pub(crate) fn ssl_call_pending(tid: u32) -> bool {
    // SAFETY: only the presence of the entry is used, never the reference.
    unsafe { SSL_CALLS.get(tid) }.is_some()
}

/// The descriptor remembered for `key`, if any.
#[inline(always)]
pub(crate) fn ssl_fd(key: SslKey) -> Option<i32> {
    // SAFETY: as in `take_ssl_call`.
    unsafe { SSL_FDS.get(key) }.copied()
}

/// Notes that the current thread's SSL call (if any) runs on descriptor `fd`; true when
/// the thread is inside one.
#[inline(always)]
pub(crate) fn set_ssl_call_fd(tid: u32, fd: i32) -> bool {
    match SSL_CALLS.get_ptr_mut(tid) {
        Some(call) => {
            // SAFETY: `call` is a live, aligned map value (RCU-protected for this run); the
            // entry is keyed by this thread, so no other CPU writes it meanwhile.
            unsafe { (*call).fd = fd };
            true
        }
        None => false,
    }
}
