//! The OTLP metrics exporter: RED metrics snapshots encoded as OTLP ([`otlp`]) and sent
//! periodically ([`exporter`]) through the same transports and retry rules as spans
//! ([`client`]).

pub mod client;
pub mod exporter;
pub mod graph;
pub mod otlp;

#[cfg(test)]
mod tests;
