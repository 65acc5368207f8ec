//! hoptrace: an eBPF node agent that turns the HTTP and message-queue traffic it sees in
//! the kernel into OpenTelemetry traces, metrics and gaps, and finds where trace context
//! gets lost.
//!
//! Data walks one way, and the modules follow it; each module uses only the ones listed
//! before it (kept by review: no command checks it yet):
//!
//! 1. [`util`], [`model`] — leaf helpers (log lines, clock) and the data produced (spans,
//!    metric samples).
//! 2. [`resource`] — who a process is: executable, container, pod, service rules.
//! 3. [`capture`] — load the kernel programs, decode ring-buffer records, keep the
//!    connection table and its ordered byte streams, TLS plaintext via OpenSSL uprobes.
//! 4. [`protocols`] — detect and parse HTTP/1, HTTP/2 (and gRPC), AMQP, NATS and Kafka
//!    from those streams.
//! 5. [`policy`] — PII redaction and route templating; head and tail sampling.
//! 6. [`gaps`] — where trace context was lost, and the alerts about it.
//! 7. [`traces`] — exchanges and messages become spans (parent linking, gap judgement,
//!    RED metrics), finished through redaction and sampling.
//! 8. [`export`] — spans and metrics leave over OTLP (gRPC or HTTP), or as OTLP/JSON lines.
//! 9. [`ops`] — the HTTP endpoint (`/metrics`, `/gaps`, `/healthz`, `/readyz`), allocator.
//! 10. [`config`] — the YAML configuration and its environment overrides.
//! 11. [`cli`] — the commands: `run`, `capture`, `check`.

pub mod capture;
pub mod cli;
pub mod config;
pub mod export;
pub mod gaps;
pub mod model;
pub mod ops;
pub mod policy;
pub mod protocols;
pub mod resource;
pub mod traces;
pub mod util;
