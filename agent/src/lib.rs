//! hoptrace: an eBPF node agent that turns the HTTP and message-queue traffic it sees in
//! the kernel into OpenTelemetry traces, and finds where trace context gets lost.
//!
//! Data flows one way, and the modules follow it:
//!
//! 1. [`loader`] — preflight checks, kernel struct offsets from BTF, load and attach the
//!    syscall tracepoint programs (`ebpf/programs`).
//! 2. [`events`] — decode ring-buffer records into typed events; [`driver`] runs the loop.
//! 3. [`conntrack`] — the connection table: tuples, roles, processes, and per-direction
//!    ordered byte [`stream`]s (with [`procnet`] for what /proc knows about sockets).
//! 4. [`protocols`] — protocol detection and parsers (HTTP/1) turning streams into
//!    exchanges; [`context`] reads W3C traceparent, tracestate and baggage from them.
//! 5. [`traces`] — exchanges become [`spans`] with resources from [`process`] information.
//! 6. [`export`] — spans go to an OpenTelemetry collector (OTLP over gRPC or HTTP/protobuf),
//!    or are printed as OTLP/JSON lines when none is configured.
//!
//! [`k8s`] maps processes to their pods (Kubernetes API watch) for resource attributes.
//! [`tls`] attaches the OpenSSL uprobes (TLS plaintext joins the same streams) and reports
//! processes whose TLS cannot be seen.
//! [`metrics`] turns every finished span (sampled or not) into RED metrics for `/metrics`
//! and OTLP.
//!
//! [`config`] reads the YAML configuration file and its environment overrides.
//! [`allocator`] tunes the binary's allocator (mimalloc) for start-up and steady state.
//!
//! Commands: [`capture`] (`hoptrace capture`, events as JSON lines) and [`run`] (the
//! agent's main job). [`counters`] keeps every count of what was captured and dropped.

pub mod alerting;
pub mod allocator;
pub mod capture;
pub mod check;
pub mod clock;
pub mod config;
pub mod conntrack;
pub mod context;
pub mod counters;
pub mod driver;
pub mod events;
pub mod export;
pub mod gaps;
pub mod k8s;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod procnet;
pub mod run;
pub mod sampling;
pub mod server;
pub mod protocols;
pub mod redact;
pub mod spans;
pub mod stream;
pub mod tls;
pub mod traces;
