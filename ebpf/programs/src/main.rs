//! hoptrace kernel programs: syscall tracepoints that see every TCP send/recv, and
//! OpenSSL uprobes for the plaintext of TLS connections.
//!
//! Kept deliberately thin: the programs find out whether a descriptor is a TCP socket,
//! copy the bytes a syscall really moved into the ring buffer in fixed-size chunks, and
//! count everything they could not deliver. Parsing, reassembly and everything clever
//! happen in userspace.
//!
//! Flow for a data syscall (read/write/…): the *enter* program (`syscalls`) decides
//! whether the descriptor is a captured TCP socket (`fd`: cache in `FDS`, else walk the
//! task's descriptor table) and stashes the arguments for the thread (`inflight`); the
//! single *exit* program accounts the bytes on the connection (`conn`) and tail-calls a
//! chunk emitter (`data`) that copies them into `EVENTS`. `lifecycle` follows connects,
//! accepts, closes and processes; `tls` feeds plaintext through the same emitter.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// Declares the modules for the bpf target only (the host build is a stub `main`).
macro_rules! bpf_modules {
    ($($(#[$attr:meta])* mod $name:ident;)*) => {
        $( $(#[$attr])* #[cfg(target_arch = "bpf")] mod $name; )*
    };
}

bpf_modules! {
    /// Load-time settings from the agent (`CONFIG`).
    mod config;
    /// Safe wrappers around the raw BPF helpers.
    mod helpers;
    /// Kernel-side diagnostics (aya-log), off unless the agent enables them.
    mod log;
    /// Every map, one file per family.
    mod maps;
    /// Process and port filters.
    mod filter;
    /// Per-thread in-flight syscall slots.
    mod inflight;
    /// Descriptor → socket resolution.
    mod fd;
    /// Connection entries and open records.
    mod conn;
    /// Copying a call's bytes into the ring (the chunk emitters).
    mod data;
    /// The data syscall programs (enter/exit).
    mod syscalls;
    /// connect/accept/close/dup/exec/exit and failed connects.
    mod lifecycle;
    /// OpenSSL uprobes.
    mod tls;
    /// The current `contextvars.Context` of selected Python processes.
    mod python;
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing to do at run time.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("hoptrace-ebpf only builds for the bpf target (cargo xtask build-ebpf)");
}
