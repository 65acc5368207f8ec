//! Decoding of ring-buffer records into typed events.
//!
//! Records are bytes written by the kernel programs; they are length-checked before any
//! field is read, so a short or unknown record becomes a counted decode error, never a panic.

use hoptrace_common::{CloseEvent, ConnectFailedEvent, DataHeader, EventKind, ExecEvent, OpenEvent};
use thiserror::Error;

#[derive(Debug)]
pub enum Event<'a> {
    Open(OpenEvent),
    Data { header: DataHeader, payload: &'a [u8] },
    Close(CloseEvent),
    ConnectFailed(ConnectFailedEvent),
    Exec(ExecEvent),
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
}

fn read<T: Copy>(bytes: &[u8], kind: u8) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { kind, len: bytes.len(), need });
    }
    // SAFETY: length checked above; T is a repr(C) struct of integers (any bit pattern is
    // valid) and read_unaligned does not require alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind = *bytes.first().ok_or(DecodeError::Empty)?;
    match kind {
        k if k == EventKind::Open as u8 => Ok(Event::Open(read(bytes, kind)?)),
        k if k == EventKind::Close as u8 => Ok(Event::Close(read(bytes, kind)?)),
        k if k == EventKind::ConnectFailed as u8 => Ok(Event::ConnectFailed(read(bytes, kind)?)),
        k if k == EventKind::Exec as u8 => Ok(Event::Exec(read(bytes, kind)?)),
        k if k == EventKind::Data as u8 => {
            let header: DataHeader = read(bytes, kind)?;
            let start = std::mem::size_of::<DataHeader>();
            let announced = header.chunk_len as usize;
            let present = bytes.len() - start;
            // The ring buffer rounds records up to 8 bytes, so trailing bytes are allowed.
            if present < announced {
                return Err(DecodeError::PayloadMismatch { announced, present });
            }
            Ok(Event::Data { header, payload: &bytes[start..start + announced] })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut v = unsafe {
            std::slice::from_raw_parts(&header as *const DataHeader as *const u8, std::mem::size_of::<DataHeader>())
        }
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_data_and_rejects_truncated_records() {
        let rec = data_record(5, b"hello");
        match decode(&rec).unwrap() {
            Event::Data { header, payload } => {
                assert_eq!(payload, b"hello");
                assert_eq!(header.conn_id, 7);
            }
            other => panic!("unexpected {other:?}"),
        }
        let short = data_record(10, b"hello");
        assert_eq!(decode(&short).unwrap_err(), DecodeError::PayloadMismatch { announced: 10, present: 5 });
        assert!(matches!(decode(&rec[..20]), Err(DecodeError::Short { .. })));
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(&[99, 0, 0]).unwrap_err(), DecodeError::UnknownKind(99));
    }
}
