//! What may leave the process, and how much of it: PII detection and route templating
//! ([`redact`]), head and tail sampling ([`sampling`]).

pub mod redact;
pub mod sampling;
