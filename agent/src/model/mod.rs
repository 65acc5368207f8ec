//! The data the agent produces, independent of how it is exported: spans (with their
//! resources), log records and metric samples.

pub mod log;
pub mod sample;
pub mod span;
