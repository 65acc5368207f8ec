//! `EVENTS`: the ring buffer every record for the agent goes through.

use aya_ebpf::{macros::map, maps::RingBuf};
use hoptrace_common::{DataHeader, DropReason, CHUNK_SIZE};

use crate::{config::config, maps::drops::count_drop};

/// Open, data-chunk, close, connect-failed and exec records. The agent sets the real size
/// at load time (`--ringbuf-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

const BPF_RB_AVAIL_DATA: u64 = 0;

/// Ring-buffer flags for one record. Waking the consumer costs an irq_work per record
/// (microseconds); instead records go in silently and userspace polls on a short timer,
/// except when the ring holds more than `wakeup_bytes`: then wake it now so it drains
/// before the ring fills.
#[inline(always)]
fn ring_flags() -> u64 {
    wakeup_flags(EVENTS.query(BPF_RB_AVAIL_DATA))
}

#[inline(always)]
fn wakeup_flags(waiting: u64) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    if waiting > config().wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Flags for a data record of `len` bytes, or None (counted as `ringbuf_full`) when it
/// would eat into the room kept for control records (`Config::data_limit_bytes`).
#[inline(always)]
fn data_ring_flags(len: usize) -> Option<u64> {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting + len as u64 > config().data_limit_bytes as u64 {
        count_drop(DropReason::RingbufFull, 1);
        return None;
    }
    Some(wakeup_flags(waiting))
}

/// Some when the first chunk of a call capturing `captured` bytes fits in the ring's room
/// for data. When it does not (userspace is behind), the whole call is dropped here, its
/// records counted as `ringbuf_full` as if each chunk had been refused, before anything is
/// copied: an overloaded agent then costs each call one ring query instead of the user
/// memory reads, the record assembly and the tail call of a send that would fail.
#[inline(always)]
pub(crate) fn data_room(captured: u64) -> Option<Waiting> {
    let first = size_of::<DataHeader>() as u64 + captured.min(CHUNK_SIZE as u64);
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting + first <= config().data_limit_bytes as u64 {
        return Some(Waiting(waiting));
    }
    count_drop(DropReason::RingbufFull, captured.div_ceil(CHUNK_SIZE as u64));
    None
}

/// What `data_room` saw waiting in the ring when it found room for a first chunk.
#[derive(Clone, Copy)]
pub(crate) struct Waiting(u64);

/// Sends the first data record of a call whose room `data_room` confirmed just before,
/// without asking the ring again.
#[inline(always)]
pub(crate) fn send_first_data(bytes: &[u8], waiting: Waiting) {
    if EVENTS.output::<[u8]>(bytes, wakeup_flags(waiting.0)).is_err() {
        count_drop(DropReason::RingbufFull, 1);
    }
}

/// Sends a control record (open, close, connect-failed, exec); a full ring is counted.
#[inline(always)]
pub(crate) fn send_control<T>(record: &T) {
    if EVENTS.output::<T>(record, ring_flags()).is_err() {
        count_drop(DropReason::ControlRingbufFull, 1);
    }
}

/// Sends a data record (header and payload bytes) unless the ring is too full for data.
#[inline(always)]
pub(crate) fn send_data(bytes: &[u8]) {
    if let Some(flags) = data_ring_flags(bytes.len()) {
        if EVENTS.output::<[u8]>(bytes, flags).is_err() {
            count_drop(DropReason::RingbufFull, 1);
        }
    }
}
