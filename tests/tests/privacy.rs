//! Privacy on real traffic: a corpus of personal data and secrets goes through the real
//! kernel into the agent, and not one planted value appears in anything the agent
//! exports (OTLP/JSON spans, its logs, /metrics, /gaps) — while routes stay useful.

use std::{fs, process::Command};

use crate::support::*;
use hoptrace_e2e::*;

/// CPF with valid check digits from its first 9 digits.
fn cpf(base: &str) -> String {
    let mut d: Vec<u32> = base.chars().map(|c| c.to_digit(10).unwrap()).collect();
    for len in [9, 10] {
        let sum: u32 = d.iter().take(len).enumerate().map(|(i, x)| x * (len as u32 + 1 - i as u32)).sum();
        let r = (sum * 10) % 11;
        d.push(if r == 10 { 0 } else { r });
    }
    let s: String = d.iter().map(|x| char::from_digit(*x, 10).unwrap()).collect();
    format!("{}.{}.{}-{}", &s[0..3], &s[3..6], &s[6..9], &s[9..11])
}

/// CNPJ with valid check digits from its first 12 digits.
fn cnpj(base: &str) -> String {
    let mut d: Vec<u32> = base.chars().map(|c| c.to_digit(10).unwrap()).collect();
    for weights in [&[5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2][..], &[6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2][..]] {
        let sum: u32 = d.iter().zip(weights).map(|(x, w)| x * w).sum();
        let r = sum % 11;
        d.push(if r < 2 { 0 } else { 11 - r });
    }
    let s: String = d.iter().map(|x| char::from_digit(*x, 10).unwrap()).collect();
    format!("{}.{}.{}/{}-{}", &s[0..2], &s[2..5], &s[5..8], &s[8..12], &s[12..14])
}

#[test]
fn planted_personal_data_never_leaves_the_agent() {
    require_root();
    let server = PyServer::start("edge_server.py", &["0"]);
    let port = server.port();
    let dir = TempDir::new("privacy");
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    // An operator-configured pattern (an internal order id) on top of the built-in detectors.
    let config = dir.join("hoptrace.yaml");
    fs::write(&config, "privacy:\n  patterns: ['ACME-[0-9]{6}']\n").unwrap();
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["run", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&out)
        .args(["--listen", &format!("127.0.0.1:{listen}")]);
    cmd.args(["--port", &port.to_string()]);
    // Allowlisted baggage is exported — redacted like any value from traffic.
    without_otel_env(&mut cmd).env("HOPTRACE_TRACES_BAGGAGE_ALLOWLIST", "user.email,user.cpf");
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);

    let email = "maria.souza@example.com.br";
    let cpf = cpf("529982247");
    let cnpj = cnpj("112223330001");
    let card = "4111111111111111";
    let phone = "+5511912345678";
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYXJpYSJ9.c2lnbmF0dXJlLXNlY3JldA";
    let session = "s3ss10n-c00k1e-v4lu3";
    let query_secret = "qs-sup3r-s3cr3t";
    let header_secret = "hdr-t0p-s3cr3t";
    let order = "ACME-123456";
    // A method nobody defined: exported as _OTHER, never as itself.
    let method = "MARIASOUZAEXAMPLE";
    let planted = [email, &cpf, &cnpj, card, phone, jwt, session, query_secret, header_secret, order, method];
    let vendor_state = "rojo=00f067aa0ba902b7";

    let requests: Vec<Vec<String>> = vec![
        // Personal data in the path, secrets in the query string.
        vec![format!("http://127.0.0.1:{port}/customers/{email}/orders?token={query_secret}&cpf={cpf}")],
        vec![format!("http://127.0.0.1:{port}/customers/{}/orders", cpf.replace(['.', '-'], ""))],
        vec![format!("http://127.0.0.1:{port}/cards/{card}/charge")],
        vec![format!("http://127.0.0.1:{port}/orders/{order}")],
        vec![format!("http://127.0.0.1:{port}/phones/{}", phone.trim_start_matches('+'))],
        // Credentials and personal data in headers, one of them mapped to an attribute.
        vec![
            "-H".into(),
            format!("Authorization: Bearer {jwt}"),
            "-H".into(),
            format!("Cookie: session={session}"),
            "-H".into(),
            format!("X-Tenant-Id: {email}"),
            "-H".into(),
            format!("X-Correlation-Id: {cnpj}"),
            "-H".into(),
            format!("X-Api-Secret: {header_secret}"),
            "-H".into(),
            format!("baggage: user.email={email},user.cpf={}", cpf.replace(['.', '-'], "")),
            format!("http://127.0.0.1:{port}/customers/42/orders"),
        ],
        // Side doors: tracestate members; the Host header (→ the client span's
        // server.address; a client that sends traceparent counts as instrumented, so not
        // here); a method nobody defined, on a connection already known as HTTP (the
        // detector only claims connections opening with a known method).
        vec![
            "-H".into(),
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            "-H".into(),
            format!("tracestate: acme={email},{vendor_state},bank=cpf:{cpf}"),
            format!("http://127.0.0.1:{port}/ok"),
        ],
        vec!["-H".into(), format!("Host: {email}"), format!("http://127.0.0.1:{port}/ok")],
        vec![
            format!("http://127.0.0.1:{port}/ok"),
            "--next".into(),
            "-X".into(),
            method.into(),
            format!("http://127.0.0.1:{port}/ok"),
        ],
        // A body full of it.
        vec![
            "-d".into(),
            format!("{{\"email\":\"{email}\",\"card\":\"{card}\",\"phone\":\"{phone}\"}}"),
            format!("http://127.0.0.1:{port}/ok"),
        ],
    ];
    for args in &requests {
        run(Command::new("curl").args(["-s", "-m", "5"]).args(args), TIMEOUT);
    }
    // Scan only once everything is out: every request's span written, and a /metrics
    // refresh that counted them all (a scan of an earlier one would prove nothing).
    let n = requests.len() + 1;
    wait_for_spans_in(&out, &format!("{n} SERVER spans"), |s| s.iter().filter(|s| s.kind == SERVER).count() >= n);
    let metrics = wait_metrics(listen, TIMEOUT, &format!("{n} SERVER spans"), |m| {
        m.get("hoptrace_spans_total{kind=\"server\"}") >= n as u64
    });
    let gaps = http_get_body(listen, "/gaps");
    let done = stop(agent);

    let otlp = fs::read_to_string(&out).unwrap_or_default();
    let everything = [
        ("OTLP", otlp.clone()),
        ("logs", done.stderr.clone()),
        ("stdout", done.stdout.clone()),
        ("/metrics", metrics.0),
        ("/gaps", gaps),
    ];
    for (what, text) in &everything {
        for value in planted {
            // Also in the forms a value may take on the way out (digits only, lowercase).
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            assert!(!text.contains(value), "{value:?} leaked into {what}");
            if digits.len() >= 8 {
                assert!(!text.contains(&digits), "{value:?} (as digits) leaked into {what}");
            }
        }
    }

    // Routes stay useful for queries and dashboards.
    let spans = parse_spans(&otlp);
    let routes: Vec<&str> =
        spans.iter().filter(|s| s.kind == SERVER).filter_map(|s| s.attrs.get("http.route")?.as_str()).collect();
    assert!(
        routes.contains(&"/customers/{id}/orders")
            || routes.iter().any(|r| r.starts_with("/customers/{") && r.ends_with("}/orders")),
        "{routes:?}"
    );
    assert!(routes.iter().any(|r| r.starts_with("/cards/{") && r.ends_with("}/charge")), "{routes:?}");
    assert!(routes.contains(&"/orders/{custom}"), "{routes:?}");
    // One server span per request, two for the `--next` pair.
    assert_eq!(spans.iter().filter(|s| s.kind == SERVER).count(), requests.len() + 1, "{}", show(&spans));

    // Mapped and allowlisted values survive as placeholders, and the span says what was
    // redacted (detector and count, never the value).
    let headers = spans
        .iter()
        .find(|s| s.kind == SERVER && s.attrs.contains_key("tenant"))
        .unwrap_or_else(|| panic!("no span with the tenant attribute:\n{}", show(&spans)));
    assert_eq!(headers.attrs["tenant"], "{email}");
    assert_eq!(headers.attrs["baggage.user.email"], "{email}");
    assert_eq!(headers.attrs["baggage.user.cpf"], "{cpf}");
    let detectors: Vec<&str> = headers
        .events
        .iter()
        .filter(|(n, _)| n == "dlp_redacted")
        .filter_map(|(_, a)| a.get("hoptrace.dlp.detector")?.as_str())
        .collect();
    for d in ["email", "cpf", "cnpj"] {
        assert!(detectors.contains(&d), "no dlp_redacted event for {d}: {:?}", headers.events);
    }
    assert!(!headers.attrs.contains_key("http.request.header.authorization"));

    // Side doors: the tracestate keeps its vendor member and loses the personal ones;
    // the Host header's email is redacted on the client's span; the unknown method is
    // _OTHER, and the span is named `HTTP <route>`.
    assert!(otlp.contains(&format!("\"traceState\":\"{vendor_state}\"")), "no span with traceState {vendor_state}");
    assert!(
        spans
            .iter()
            .any(|s| s.kind == CLIENT && s.attrs.get("server.address").and_then(|v| v.as_str()) == Some("{email}")),
        "no client span with server.address {{email}}:\n{}",
        show(&spans)
    );
    let other: Vec<&Span> = spans
        .iter()
        .filter(|s| s.attrs.get("http.request.method").and_then(|v| v.as_str()) == Some("_OTHER"))
        .collect();
    assert!(other.iter().any(|s| s.kind == SERVER && s.name == "HTTP /ok"), "{}", show(&spans));
}
