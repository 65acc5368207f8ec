//! Trace and span ids: random (W3C Level 2 expects random trace ids), never all zero.
//!
//! A SplitMix64 stream seeded from the kernel's getrandom: ids must be unpredictable
//! enough not to collide across agents, not cryptographic secrets, and this is called per
//! span on the hot path.

pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: writes at most 8 bytes into `seed`.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut state = u64::from_ne_bytes(seed);
        if n != 8 {
            // No getrandom: fall back to time and pid, still distinct per agent start.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            state = t ^ ((std::process::id() as u64) << 32);
        }
        Self { state }
    }

    /// A reproducible stream, for tests.
    #[cfg(test)]
    pub fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn span_id(&mut self) -> [u8; 8] {
        loop {
            let v = self.next();
            if v != 0 {
                return v.to_be_bytes();
            }
        }
    }

    pub fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let (a, b) = (self.next(), self.next());
            if a != 0 || b != 0 {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&a.to_be_bytes());
                id[8..].copy_from_slice(&b.to_be_bytes());
                return id;
            }
        }
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn ids_are_distinct_and_non_zero() {
        let mut g = super::IdGenerator::new();
        let spans: HashSet<[u8; 8]> = (0..10_000).map(|_| g.span_id()).collect();
        assert_eq!(spans.len(), 10_000);
        assert!(!spans.contains(&[0; 8]));
        let (a, b) = (g.trace_id(), g.trace_id());
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }
}
