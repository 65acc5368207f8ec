#![no_main]
hoptrace_fuzz::protocol_target!(hoptrace::protocols::http2::detect);
