//! The commands: [`run`] (the agent), [`capture`] (events as JSON lines) and [`check`]
//! (a CI gate on propagation gaps), [`report`] (the cardinality review of a running
//! agent), with the probe options they share ([`probe`]).
//! Commands never import each other.

pub mod capture;
pub mod check;
pub mod probe;
pub mod report;
pub mod run;
