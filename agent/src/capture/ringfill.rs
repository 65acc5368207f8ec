//! How full the kernel→agent ring buffer gets: the bytes the kernel has produced and the
//! agent not yet consumed, read from the ring's own position pages.
//!
//! A BPF ring buffer map exposes its consumer position (page 0) and producer position
//! (page 1) to user space through `mmap` of the map fd; aya maps them privately, so this
//! maps the same two pages once more, read-only. The driver samples the fill before each
//! drain (two loads) and keeps the high-water mark, which `/metrics` reports and resets
//! once a second: a ring that gets close to full before it overflows shows here before
//! it shows as `hoptrace_kernel_drops_total{reason="ringbuf_full"}`.

use std::{
    io,
    os::fd::RawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// Highest fill (bytes) seen since the last [`take_high_water`].
static HIGH_WATER: AtomicU64 = AtomicU64::new(0);

/// The fill high-water mark since the last call, and resets it.
pub fn take_high_water() -> u64 {
    HIGH_WATER.swap(0, Ordering::Relaxed)
}

struct Page(NonNull<libc::c_void>, usize);

impl Page {
    fn map(fd: RawFd, offset: usize, len: usize) -> io::Result<Page> {
        // SAFETY: a fresh shared read-only mapping of the map fd; checked for failure.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, offset as libc::off_t)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p).map(|p| Page(p, len)).ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn position(&self) -> u64 {
        // SAFETY: the page is mapped for our lifetime; the kernel writes the position as an
        // aligned unsigned long at its start, which an atomic load reads consistently.
        unsafe { (*(self.0.as_ptr() as *const AtomicU64)).load(Ordering::Acquire) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.0.as_ptr(), self.1) };
    }
}

/// Read-only view of a ring buffer's positions.
pub struct RingFill {
    consumer: Page,
    producer: Page,
}

impl RingFill {
    /// `fd`: the ring buffer map's fd.
    pub fn open(fd: RawFd) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).map_err(io::Error::other)?;
        Ok(Self { consumer: Page::map(fd, 0, page)?, producer: Page::map(fd, page, page)? })
    }

    /// Bytes produced and not yet consumed.
    pub fn used(&self) -> u64 {
        let consumed = self.consumer.position();
        self.producer.position().wrapping_sub(consumed)
    }

    /// Samples the fill into the high-water mark.
    pub fn observe(&self) {
        HIGH_WATER.fetch_max(self.used(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The position pages of a real ring buffer map: empty, then filled by hand is not
    /// possible from user space, so this checks the mapping works and reads zero.
    #[test]
    fn ring_fill_reads_a_real_ring_buffer() {
        // BPF_MAP_TYPE_RINGBUF = 27; needs privileges: skipped (with a message) without them.
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
            pad: [u32; 27],
        }
        let attr = CreateAttr { map_type: 27, max_entries: 4096 * 4, ..Default::default() };
        // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attribute struct of the kernel's size.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, 0, &attr as *const CreateAttr, std::mem::size_of::<CreateAttr>()) };
        if fd < 0 {
            eprintln!("cannot create a ring buffer map here ({}); not checked", std::io::Error::last_os_error());
            return;
        }
        let fill = RingFill::open(fd as i32).expect("map the position pages");
        assert_eq!(fill.used(), 0);
        fill.observe();
        // SAFETY: closing the fd this test created.
        unsafe { libc::close(fd as i32) };
    }
}
