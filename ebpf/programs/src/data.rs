//! Copying a call's bytes into the ring: the caller (the syscall exit program or the TLS
//! return probe) fills the record header and an emit job in per-CPU memory and tail-calls
//! an emitter program, which sends the bytes in `CHUNK_SIZE` chunks. Each emitter is a
//! program of its own so the verifier sees one small chunk loop at a time.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use hoptrace_common::*;

use crate::{
    config::config,
    helpers::{pid_tgid, tail_call, uread, uread_into},
    maps::{
        conns::ConnRef,
        drops::count_drop,
        emit::{EmitJob, EMITTERS, EMIT_VECTORED, JOB, SCRATCH},
        ring::{data_room, send_data, send_first_data, Waiting},
    },
};

/// One call whose bytes go to userspace (a syscall, or an SSL_read/SSL_write).
pub(crate) struct CallInfo {
    pub direction: Direction,
    pub syscall: u8,
    pub fd: i32,
    pub ts_enter: u64,
    pub ts_exit: u64,
    pub call_offset: u64,
    pub call_len: u64,
    pub buf: u64,
    pub count: u64,
}

/// This CPU's record under assembly.
#[inline(always)]
fn scratch() -> Option<&'static mut DataEvent> {
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of the per-CPU array, valid and aligned while the program
    // runs; used only by the caller and the emitter it tail-calls, one reference at a time.
    Some(unsafe { &mut *p })
}

/// This CPU's emit job.
#[inline(always)]
fn job() -> Option<&'static mut EmitJob> {
    let p = JOB.get_ptr_mut(0)?;
    // SAFETY: as in `scratch`.
    Some(unsafe { &mut *p })
}

/// The first `size_of::<DataHeader>() + chunk_len` bytes of `ev`, as sent to userspace.
#[inline(always)]
fn record_bytes(ev: &DataEvent, chunk_len: u32) -> &[u8] {
    let len = size_of::<DataHeader>() + (chunk_len as usize).min(CHUNK_SIZE);
    // SAFETY: `DataEvent` is repr(C) integers and bytes without padding (sizes asserted in
    // hoptrace-common), and `len` is at most its size: every byte is initialised and in bounds.
    unsafe { core::slice::from_raw_parts(ev as *const DataEvent as *const u8, len) }
}

/// Fills the per-CPU record header and emit job for `call`. Returns true when the caller
/// must now tail-call an emitter; false when everything was sent already (nothing to copy,
/// or a `contiguous` call that fits one chunk: sent here) or could not be.
#[inline(always)]
pub(crate) fn prepare_emit(conn: ConnRef, call: &CallInfo, no_copy: bool, contiguous: bool) -> bool {
    prepare_record(conn.get().conn_id, 0, call, no_copy, contiguous)
}

/// [`prepare_emit`] for a record of connection `conn_id`, or, with `app_stream` 1 or 2, an
/// app log write to stdout or stderr (no connection).
#[inline(always)]
pub(crate) fn prepare_record(conn_id: u64, app_stream: u8, call: &CallInfo, no_copy: bool, contiguous: bool) -> bool {
    let pid_tgid = pid_tgid();
    let cap = config().capture_cap as u64;
    let mut captured = if no_copy { 0 } else { call.call_len };
    if captured > cap {
        count_drop(DropReason::CapTruncatedCalls, 1);
        count_drop(DropReason::CapTruncatedBytes, captured - cap);
        captured = cap;
    }
    let waiting = if captured > 0 {
        match data_room(captured) {
            Some(w) => Some(w),
            None => return false,
        }
    } else {
        None
    };
    let Some(scratch) = scratch() else { return false };
    let h = &mut scratch.header;
    h.kind = if app_stream != 0 { EventKind::AppLog as u8 } else { EventKind::Data as u8 };
    h.direction = call.direction as u8;
    h.syscall = call.syscall;
    h._pad0 = app_stream;
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.fd = call.fd;
    h.conn_id = conn_id;
    h.ts_enter_ns = call.ts_enter;
    h.ts_exit_ns = call.ts_exit;
    h.call_offset = call.call_offset;
    h.call_len = call.call_len as u32;
    h.call_captured = captured as u32;
    h.chunk_offset = 0;
    h.chunk_len = 0;
    if captured == 0 {
        // Nothing to copy (sendfile): still tell userspace how many bytes went by.
        send_data(record_bytes(scratch, 0));
        return false;
    }
    if let (true, Some(waiting)) = (contiguous && captured <= CHUNK_SIZE as u64, waiting) {
        // The common case, one buffer and one chunk: copied and sent here, without the
        // tail call, the emit job and a second ring query.
        send_chunk(scratch, call.buf, captured as u32, 0, Some(waiting));
        return false;
    }
    let Some(job) = job() else { return false };
    job.buf = call.buf;
    job.count = call.count;
    job.captured = captured as u32;
    job.iov_index = 0;
    job.done = 0;
    true
}

/// Sends one chunk: `n` bytes from user address `src`, at `chunk_offset` in the call
/// (`waiting`: the ring's fill level if `data_room` just found room for it). Returns false
/// when the bytes could not be read (the rest of the call is abandoned).
#[inline(always)]
fn send_chunk(scratch: &mut DataEvent, src: u64, n: u32, chunk_offset: u32, waiting: Option<Waiting>) -> bool {
    if n == 0 || n > CHUNK_SIZE as u32 {
        return false;
    }
    if !uread_into(&mut scratch.data[..n as usize], src) {
        count_drop(DropReason::UserReadFault, 1);
        return false;
    }
    scratch.header.chunk_offset = chunk_offset;
    scratch.header.chunk_len = n;
    match waiting {
        Some(w) => send_first_data(record_bytes(scratch, n), w),
        None => send_data(record_bytes(scratch, n)),
    }
    true
}

/// read/write/recvfrom/sendto: one user buffer.
#[tracepoint]
pub fn emit_contiguous(_ctx: TracePointContext) -> u32 {
    emit_contiguous_job()
}

/// The chunk loop of `emit_contiguous`, shared with the uprobe-typed emitter (a tail call
/// only reaches programs of the caller's type).
#[inline(always)]
pub(crate) fn emit_contiguous_job() -> u32 {
    let Some(job) = job() else { return 0 };
    let job = *job;
    let Some(scratch) = scratch() else { return 0 };
    let captured = job.captured;
    for i in 0..MAX_CHUNKS_PER_CALL {
        let off = i * CHUNK_SIZE as u32;
        if off >= captured {
            break;
        }
        let rest = captured - off;
        let n = if rest > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { rest };
        if !send_chunk(scratch, job.buf + off as u64, n, off, None) {
            break;
        }
    }
    0
}

/// readv/writev/recvmsg/sendmsg: one iovec per invocation, then a tail call to itself
/// for the next one, so the verifier only ever sees the simple chunk loop.
#[tracepoint]
pub fn emit_vectored(ctx: TracePointContext) -> u32 {
    let Some(job) = job() else { return 0 };
    let Some(scratch) = scratch() else { return 0 };
    let (buf, count, captured, index, done) = (job.buf, job.count, job.captured, job.iov_index, job.done);
    if done >= captured {
        return 0;
    }
    if index as u64 >= count || index >= MAX_IOVECS {
        count_drop(DropReason::IovLimitBytes, (captured - done) as u64);
        return 0;
    }
    // struct iovec { void *iov_base; size_t iov_len; } — userspace ABI.
    let Some(iov) = uread::<[u64; 2]>(buf + 16 * index as u64) else {
        count_drop(DropReason::UserReadFault, 1);
        return 0;
    };
    let want = (captured - done) as u64;
    let len = if iov[1] < want { iov[1] as u32 } else { want as u32 };
    for i in 0..MAX_CHUNKS_PER_CALL {
        let off = i * CHUNK_SIZE as u32;
        if off >= len {
            break;
        }
        let rest = len - off;
        let n = if rest > CHUNK_SIZE as u32 { CHUNK_SIZE as u32 } else { rest };
        if !send_chunk(scratch, iov[0] + off as u64, n, done + off, None) {
            return 0;
        }
    }
    job.done = done + len;
    job.iov_index = index + 1;
    tail_call(&EMITTERS, &ctx, EMIT_VECTORED);
    count_drop(DropReason::TailCallFailed, 1);
    0
}
