//! W3C traceparent, tracestate and baggage (agent/src/context.rs): total parsers (a value
//! or a ContextError, never a panic) whose accepted output is well-formed and stable.
#![no_main]

use hoptrace::traces::context::{
    parse_baggage, parse_traceparent, parse_tracestate, MAX_BAGGAGE_MEMBERS, MAX_TRACESTATE_LEN,
};
use libfuzzer_sys::fuzz_target;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    // Several header lines of one message, separated by 0xff (never valid in a header).
    let values: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();

    if let Ok(tp) = parse_traceparent(data) {
        assert_ne!(tp.version, 0xff);
        assert!(tp.trace_id.iter().any(|&b| b != 0) && tp.parent_id.iter().any(|&b| b != 0));
        // What was accepted, written back in version 00, is accepted as the same context.
        let again = format!(
            "00-{}-{}-{:02x}",
            hex(&tp.trace_id),
            hex(&tp.parent_id),
            tp.flags
        );
        let reparsed = parse_traceparent(again.as_bytes()).expect("re-encoded traceparent");
        assert_eq!(
            (reparsed.trace_id, reparsed.parent_id, reparsed.flags),
            (tp.trace_id, tp.parent_id, tp.flags)
        );
    }

    if let Ok(state) = parse_tracestate(&values) {
        assert!(
            state.len() <= MAX_TRACESTATE_LEN,
            "{} bytes kept",
            state.len()
        );
        // The agent passes on what it kept: it must be a valid tracestate, and kept whole.
        if !state.is_empty() {
            assert_eq!(
                parse_tracestate(&[state.as_bytes()]).as_deref(),
                Ok(state.as_str())
            );
        }
    }

    let allowed = |k: &str| k.len() % 2 == 0;
    if let Ok(members) = parse_baggage(&values, allowed) {
        assert!(members.len() <= MAX_BAGGAGE_MEMBERS);
        assert!(members.iter().all(|(k, _)| allowed(k) && !k.is_empty()));
    }
});
