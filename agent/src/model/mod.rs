//! The data the agent produces, independent of how it is exported: spans (with their
//! resources) and metric samples.

pub mod sample;
pub mod span;
