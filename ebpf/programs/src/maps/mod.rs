//! Every map of the kernel programs, one file per family, with the value types only the
//! kernel side uses and the few accessors that need `unsafe`. The agent looks maps up by
//! these names (EVENTS, DROPS, EMITTERS, SSL_EMITTERS, PID_FILTER, CGROUP_FILTER,
//! PORT_FILTER): renaming one breaks the loader.

pub(crate) mod conns;
pub(crate) mod drops;
pub(crate) mod emit;
pub(crate) mod fds;
pub(crate) mod filters;
pub(crate) mod inflight;
pub(crate) mod python;
pub(crate) mod ring;
pub(crate) mod tls;
