//! hoptrace kernel programs: syscall tracepoints that see every TCP send/recv.
//!
//! Kept deliberately thin: the programs find out whether a descriptor is a TCP socket,
//! copy the bytes a syscall really moved into the ring buffer in fixed-size chunks, and
//! count everything they could not deliver. Parsing, reassembly and everything clever
//! happen in userspace.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

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
