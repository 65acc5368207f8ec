//! Helpers shared by the design card's benches and programs (see `docs/design-card.md`).
//!
//! - [`alloc`]: a counting global allocator over mimalloc (the agent's allocator), so
//!   allocations per span and bytes per series are counted, not guessed.
//! - `cpu`: a criterion measurement of process CPU time (the machine is shared).
//! - [`spans`]: spans made by the agent's own pipeline from the ring-buffer records of an
//!   nginx-like server and a wrk-like client, as `agent/benches/hot_path.rs` makes them.
//! - `otel` (feature `otel`): the same spans as the OpenTelemetry SDK sees them, and an HTTP
//!   client that accepts every request, so the SDK's real OTLP exporter runs without a network.
//! - `otel_pipeline` (feature `otel`): the SDK pipelines the agent would link, for `bin/agent.rs`.
//! - `kube_client` (feature `kube`): the agent's pod watch done with kube's watcher.

pub mod alloc;
#[cfg(feature = "bench")]
pub mod cpu;
#[cfg(feature = "kube")]
pub mod kube_client;
#[cfg(feature = "bench")]
pub mod otel;
#[cfg(feature = "otel")]
pub mod otel_pipeline;
#[cfg(feature = "bench")]
pub mod spans;
