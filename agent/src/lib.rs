//! hoptrace: an eBPF node agent that turns the HTTP and message-queue traffic it sees in
//! the kernel into OpenTelemetry traces, and finds where trace context gets lost.
//!
//! Data flows one way, and the modules follow it:
//!
//! 1. [`loader`] — preflight checks, kernel struct offsets from BTF, load and attach the
//!    syscall tracepoint programs (`ebpf/programs`).
//! 2. [`events`] — decode ring-buffer records into typed events.
//! 3. [`conntrack`] — the connection table: tuples, roles, processes, and per-direction
//!    ordered byte [`stream`]s (with [`procnet`] for what /proc knows).
//! 4. [`capture`] — the `hoptrace capture` command: all of the above as JSON lines.
//!
//! [`counters`] keeps every count of what was captured and what was dropped, and why.
//!
//! [`export`] sends the pipeline's [`spans`] to an OpenTelemetry collector (OTLP over gRPC
//! or HTTP/protobuf), or prints them as OTLP/JSON lines when none is configured.

pub mod capture;
pub mod clock;
pub mod conntrack;
pub mod counters;
pub mod events;
pub mod export;
pub mod loader;
pub mod procnet;
pub mod spans;
pub mod stream;
