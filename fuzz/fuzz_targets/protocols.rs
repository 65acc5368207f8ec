//! Every protocol at once, detected from the first bytes as in production
//! (`protocols::detect`, the `DETECTORS` registry): a parser added there is fuzzed here
//! without any change.
#![no_main]
hoptrace_fuzz::protocol_target!(hoptrace::protocols::detect);
