//! Kafka's primitive types over one buffered frame: big-endian integers, (zigzag)
//! varints, classic and compact (flexible version) strings, arrays and tagged fields.
//! Every read is bounded by the frame, and says whether it failed because the bytes
//! ended (a cut frame) or because they could not be Kafka.

use super::MAX_FRAME_SIZE;

/// Why a read failed: the bytes ended (a cut frame) or could not be Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    Truncated,
    Malformed(&'static str),
}

pub(super) type W<T> = Result<T, Wire>;

/// Big-endian reader over one buffered frame, with Kafka's primitive types.
pub(super) struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cur<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Cur { b, p: 0 }
    }
    pub(super) fn take(&mut self, n: usize) -> W<&'a [u8]> {
        if self.b.len() - self.p < n {
            self.p = self.b.len();
            return Err(Wire::Truncated);
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    pub(super) fn arr<const N: usize>(&mut self) -> W<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    pub(super) fn i8(&mut self) -> W<i8> {
        Ok(i8::from_be_bytes(self.arr()?))
    }
    pub(super) fn i16(&mut self) -> W<i16> {
        Ok(i16::from_be_bytes(self.arr()?))
    }
    pub(super) fn i32(&mut self) -> W<i32> {
        Ok(i32::from_be_bytes(self.arr()?))
    }
    pub(super) fn i64(&mut self) -> W<i64> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    pub(super) fn uvarint(&mut self) -> W<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.take(1)?[0];
            v |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Wire::Malformed("invalid_varint"))
    }
    /// Zigzag varint (record fields).
    pub(super) fn varint(&mut self) -> W<i64> {
        let u = self.uvarint()?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }
    /// A varint-length byte field (record key/value), skipped; its length (0 for null).
    pub(super) fn skip_varbytes(&mut self) -> W<u64> {
        let len = self.varint()?;
        if len > 0 {
            self.take(len as usize)?;
        }
        Ok(len.max(0) as u64)
    }
    pub(super) fn length(&mut self, compact: bool) -> W<Option<usize>> {
        if compact {
            let n = self.uvarint()?;
            if n == 0 {
                return Ok(None);
            }
            usize::try_from(n - 1).map(Some).map_err(|_| Wire::Malformed("invalid_length"))
        } else {
            let n = self.i32()?;
            if n < -1 {
                return Err(Wire::Malformed("invalid_length"));
            }
            Ok(usize::try_from(n).ok())
        }
    }
    pub(super) fn string(&mut self, compact: bool) -> W<Option<&'a [u8]>> {
        let len = if compact {
            self.length(true)?
        } else {
            let n = self.i16()?;
            if n < -1 {
                return Err(Wire::Malformed("invalid_length"));
            }
            usize::try_from(n).ok()
        };
        len.map(|n| self.take(n)).transpose()
    }
    pub(super) fn array_len(&mut self, compact: bool) -> W<usize> {
        let n = self.length(compact)?.unwrap_or(0);
        // Every element takes at least one byte: a bigger count is not Kafka (and must
        // not drive a long loop), unless the frame was cut, which ends the loop anyway.
        if n > MAX_FRAME_SIZE as usize {
            return Err(Wire::Malformed("invalid_length"));
        }
        Ok(n)
    }
    /// A RECORDS field: its bytes as far as they are here, and whether that is all.
    pub(super) fn records(&mut self, compact: bool) -> W<(&'a [u8], bool)> {
        let len = self.length(compact)?.unwrap_or(0);
        let have = len.min(self.b.len() - self.p);
        let s = &self.b[self.p..self.p + have];
        self.p += have;
        Ok((s, have == len))
    }
    pub(super) fn tagged_fields(&mut self) -> W<()> {
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(usize::try_from(size).map_err(|_| Wire::Malformed("invalid_length"))?)?;
        }
        Ok(())
    }
}
