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
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p)
            .map(|p| Page(p, len))
            .ok_or_else(|| io::Error::other("mmap returned null"))
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
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(io::Error::other)?;
        Ok(Self {
            consumer: Page::map(fd, 0, page)?,
            producer: Page::map(fd, page, page)?,
        })
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
