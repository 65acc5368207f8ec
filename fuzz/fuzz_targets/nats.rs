//! NATS through its own detector (seeds: the recorded fixtures, see make_seeds.py).
#![no_main]
hoptrace_fuzz::protocol_target!(hoptrace::protocols::nats::detect);
