//! Kernel-side diagnostics through aya-log, for rare paths that lose data and that no
//! counter explains on its own (which thread, which descriptor, which SSL object).
//!
//! Off by default and free when off: every macro here first checks
//! `config::kernel_log()`, a read-only global the agent sets at load time
//! (`HOPTRACE_KERNEL_LOG`). While it is 0 the verifier knows the branch is never taken and
//! drops the logging code, so a program runs exactly the instructions it would without
//! it. When on, records go to aya-log's own ring buffer (`AYA_LOGS`), which the agent
//! drains on a separate thread into its JSON log lines; `EVENTS` is never touched.
//!
//! Never log payload bytes or addresses: ids, descriptors and sizes only.

/// A warning: something was lost or is not as the programs expect.
///
/// The arguments are evaluated and copied into locals inside the switched-on branch only:
/// aya-log's expansion captures them by reference in a closure that LLVM may keep out of
/// line, and capturing the caller's variables directly would pin them to the stack on the
/// hot path too (a store per call even with logging off).
macro_rules! kwarn {
    ($fmt:literal) => {
        if $crate::config::kernel_log() {
            $crate::log::aya_warn!($fmt);
        }
    };
    ($fmt:literal, $a:expr) => {
        if $crate::config::kernel_log() {
            let a = $a;
            $crate::log::aya_warn!($fmt, a);
        }
    };
    ($fmt:literal, $a:expr, $b:expr) => {
        if $crate::config::kernel_log() {
            let (a, b) = ($a, $b);
            $crate::log::aya_warn!($fmt, a, b);
        }
    };
    ($fmt:literal, $a:expr, $b:expr, $c:expr) => {
        if $crate::config::kernel_log() {
            let (a, b, c) = ($a, $b, $c);
            $crate::log::aya_warn!($fmt, a, b, c);
        }
    };
}
pub(crate) use kwarn;

/// aya-log's warn: aya-log-ebpf 0.2 ignores the context argument, so a unit value keeps
/// the macro usable from helpers that have no program context at hand.
macro_rules! aya_warn {
    ($($arg:tt)+) => {
        ::aya_log_ebpf::warn!(&(), $($arg)+)
    };
}
pub(crate) use aya_warn;
