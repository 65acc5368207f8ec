//! Capture: from the kernel's ring buffer to ordered byte streams per connection.
//!
//! [`loader`] checks the kernel, computes struct offsets from BTF, loads and attaches the
//! programs of `ebpf/programs`; [`events`] is the only code that reads kernel record bytes;
//! [`conntrack`] keeps the connection table with one ordered [`stream`] per direction;
//! [`tls`] attaches the OpenSSL uprobes and reports processes whose TLS cannot be seen;
//! [`driver`] runs the loop and hands what happened to a [`driver::Consumer`];
//! [`counters`] and [`ringfill`] account for everything captured and dropped.

pub mod conntrack;
pub mod counters;
pub mod driver;
pub mod events;
pub mod loader;
pub mod ringfill;
pub mod stream;
pub mod tls;
