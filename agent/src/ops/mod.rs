//! Running the agent: the HTTP endpoint ([`server`]: `/metrics`, `/gaps`, `/healthz`,
//! `/readyz`, `/cardinality` from [`cardinality`]), the Prometheus rendering of metrics and self-metrics ([`metrics`]), and
//! the allocator's tuning ([`allocator`]).

pub mod allocator;
pub mod cardinality;
pub mod components;
pub mod metrics;
pub mod server;
