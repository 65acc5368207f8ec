//! The PII redactor and URL route templating (agent/src/redact.rs,
//! agent/src/traces/http.rs): any input gives a result, routes are paths without query
//! strings, and a redacted value shows no trace of what a detector found.
#![no_main]

use hoptrace::policy::redact::Redactor;
use hoptrace::traces::http::route_template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let redactor = Redactor::default();

    let route = route_template(data, &redactor);
    assert!(route.starts_with('/'), "{route:?}");
    assert!(!route.contains('?') && !route.contains('#'), "{route:?}");
    // Templating never makes a path longer than a placeholder per input byte could.
    assert!(
        route.len() <= 1 + data.len() * 16,
        "{} bytes from {}",
        route.len(),
        data.len()
    );

    let text = String::from_utf8_lossy(data);
    let r = redactor.redact_value(&text);
    for (det, n) in &r.hits {
        assert!(*n > 0, "{det:?} counted zero hits");
        assert!(
            r.text.contains(&format!("{{{}}}", det.name())) || r.text.contains('{'),
            "{:?}",
            r.text
        );
    }
    if r.hits.is_empty() {
        assert_eq!(r.text, text);
    }
});
