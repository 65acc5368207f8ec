//! `/metrics`: RED metrics and the agent's own counters rendered as Prometheus text or
//! OpenMetrics ([`render`]), and the self-metrics with dynamic labels ([`selfstats`]).

pub mod graph;
pub mod render;
pub mod selfstats;

#[cfg(test)]
mod tests;
