//! hoptrace's end-to-end tests: the real agent binary on the real kernel against real
//! servers, brokers, collectors and clients. One test binary with a module per feature (it
//! links once); the harness is the `hoptrace_e2e` library (tests/src), the helpers shared
//! by several modules are in `support`. Run them as root: `cargo xtask test`, or
//! `cargo xtask test -- <module>::` for one feature.

mod support;

mod capture;
mod deploy_vm;
mod endpoint_guard;
mod fixtures;
mod gaps;
mod graph;
mod health;
mod hostile_corpus;
mod http2;
mod http_edges;
mod jobs;
mod kafka;
mod kernel_log;
mod kubernetes;
mod linking;
mod logs;
mod metrics;
mod mq;
mod otlp;
mod privacy;
mod python_context;
mod resilience;
mod resilience_hostile;
mod resilience_overload;
mod resilience_restart;
mod sampling;
mod security_profiles;
mod spans;
mod tls;
