//! Propagation gaps: the table of hops where trace context was lost ([`table`], served on
//! `/gaps` and read by `hoptrace check`) and their alerts ([`alerting`], Alertmanager).

pub mod alerting;
pub mod table;

pub use table::{Gap, GapEntry, GapKey, GapKeyRef, GapKind, GapTable};
