#![no_main]
hoptrace_fuzz::protocol_target!(hoptrace::protocols::http1::detect);
