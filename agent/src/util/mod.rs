//! Leaf helpers every layer may use: the agent's own JSON log lines and the clock that
//! maps kernel timestamps to Unix time, and the rustls client configuration.

pub mod clock;
pub mod component;
pub mod logging;
pub mod tls;
