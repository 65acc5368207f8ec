use std::collections::HashMap;
use std::time::Duration;

use super::schema::{closest, edit_distance, normalize_endpoint, unknown_env};
use super::*;
use crate::export::{Compression, JsonOutput, Protocol};
use crate::model::span::AnyValue;
use crate::resource::resolver::Match;
use crate::traces::red::MetricsConfig;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

/// `(line, column, message)` of each diagnostic, for exact comparisons.
fn triples(diags: &[Diagnostic]) -> Vec<(usize, usize, &str)> {
    diags.iter().map(|d| (d.line, d.column, d.message.as_str())).collect()
}

const EXAMPLE: &str = include_str!("../../../deploy/hoptrace.yaml");

#[test]
fn every_problem_in_every_section_is_reported_at_its_line() {
    let text = "\
exporter:
  endpont: http://collector:4318
  protocol: grcp
  timeout_ms: 0
  headers: { X-Api-Key: abc }
capture:
  ports: [80, 0, 70000]
  capture_cap: 70000
  ringbuf_size: 1024
  cgroups: [relative/dir]
traces:
  suppress_instrumented: yes
  hold_timeout_ms: -5
  risk_signal_headers: [x-risk-abuse, 'bad header']
resource:
  attributes: { zone: Z9, '': x }
services:
  - match: {}
    attributes: { service.name: gateway }
  - match: { exe: python3, port: 0 }
    attributes: {}
  - attributes: { service.name: orphan }
";
    let diags = check(text);
    assert_eq!(
        triples(&diags),
        vec![
            (2, 3, "unknown key `endpont` in `exporter`, did you mean `endpoint`?"),
            (3, 13, "`exporter.protocol` must be `grpc` or `http/protobuf`, got `grcp`, did you mean `grpc`?"),
            (4, 15, "`exporter.timeout_ms` must be greater than zero, got `0`"),
            (5, 14, "header name `X-Api-Key` must be lowercase (`x-api-key`)"),
            (7, 15, "`capture.ports[1]` must be greater than zero, got `0`"),
            (7, 18, "`capture.ports[2]` must be at most 65535, got `70000`"),
            (8, 16, "`capture.capture_cap` must be at most 65536, got `70000`"),
            (9, 17, "`capture.ringbuf_size` must be at least 4096, got `1024`"),
            (
                10,
                13,
                "`capture.cgroups[0]` must be an absolute cgroup v2 directory (/sys/fs/cgroup/…), got \"relative/dir\""
            ),
            (12, 26, "`traces.suppress_instrumented` must be true or false, got `yes`"),
            (13, 20, "`traces.hold_timeout_ms` must be greater than zero, got `-5`"),
            (14, 39, "\"bad header\" is not a valid HTTP header name"),
            (16, 23, "`zone` must be one of Z1..Z7, got \"Z9\""),
            (16, 27, "an attribute name in `resource.attributes` is empty"),
            (18, 12, "`match` needs at least one condition (`exe`, `cmdline_contains`, `cgroup_contains`, `port`)"),
            (20, 34, "`match.port` must be greater than zero, got `0`"),
            (21, 17, "`attributes` is empty: give the rule a `service.name` or other attributes"),
            (22, 5, "this `services` rule has no `match`: say which processes it applies to"),
        ]
    );
    // The same problems fail loading, every one listed.
    let err = from_str(text).unwrap_err();
    assert_eq!(err.diagnostics(), &diags[..]);
    let shown = err.to_string();
    assert!(shown.starts_with("invalid configuration configuration: 18 problems\n"), "{shown}");
    assert!(shown.contains("configuration:22:5: error: this `services` rule has no `match`"), "{shown}");
}

#[test]
fn a_syntax_error_is_one_diagnostic_at_its_line() {
    let text = "exporter:\n  endpoint: http://c:4318\n capture: [1\ntraces:\n  bogus: 1\n";
    let diags = check(text);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].line, 3);
    assert!(diags[0].message.starts_with("YAML syntax error: "), "{}", diags[0].message);

    let unterminated = check("traces:\n  hold_timeout_ms: 10\n  record_user_agent: 'yes\n");
    assert_eq!(unterminated.len(), 1);
    assert!(unterminated[0].message.contains("quoted scalar"), "{unterminated:?}");
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let msgs = |t: &str| check(t).into_iter().map(|d| d.message).collect::<Vec<_>>();
    assert_eq!(msgs("exporter:\n  endpont: x\n"), ["unknown key `endpont` in `exporter`, did you mean `endpoint`?"]);
    assert_eq!(
        msgs("capture:\n  idle_timeout: 5\n"),
        ["unknown key `idle_timeout` in `capture`, did you mean `idle_timeout_s`?"]
    );
    assert_eq!(msgs("exporterr: {}\n"), ["unknown key `exporterr` at the top level, did you mean `exporter`?"]);
    assert_eq!(
        msgs("endpoint: http://c:4318\n"),
        ["unknown key `endpoint` at the top level, it belongs under `exporter`"]
    );
    assert_eq!(msgs("capture:\n  colour: blue\n"), ["unknown key `colour` in `capture`"]);
    assert_eq!(
        msgs("services:\n  - matches: { exe: a }\n    attributes: { team: x }\n"),
        [
            "unknown key `matches` in a `services` rule, did you mean `match`?",
            "this `services` rule has no `match`: say which processes it applies to"
        ]
    );
    assert_eq!(
        msgs("services:\n  - match: { exec: a }\n    attributes: { team: x }\n"),
        ["unknown key `exec` in `match`, did you mean `exe`?"]
    );
    // A rule whose only condition or attribute is wrong: that problem, once.
    assert_eq!(
        msgs("services:\n  - match: { port: 0 }\n    attributes: { zone: z1 }\n"),
        ["`match.port` must be greater than zero, got `0`", "`zone` must be one of Z1..Z7, got \"z1\""]
    );
    assert_eq!(edit_distance("endpont", "endpoint"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("grcp", "grpc"), 1);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(closest("x", ["exe", "port"]), None);
    assert_eq!(closest(&"a".repeat(1000), ["a"]), None);
}

#[test]
fn types_nulls_and_duplicates() {
    let text = "\
exporter:
  endpoint:
  insecure:
  batch_max_spans: \"512\"
  queue_capacity: 1.5
  headers: [a]
capture:
  ports:
  pids: 7
traces:
  record_user_agent: true
  record_user_agent: false
";
    assert_eq!(
        triples(&check(text)),
        vec![
            (3, 11, "`exporter.insecure` must be true or false, got nothing"),
            (4, 20, "`exporter.batch_max_spans` must be a whole number, got the string \"512\""),
            (5, 19, "`exporter.queue_capacity` must be a whole number, got `1.5`"),
            (6, 12, "`exporter.headers` must be a mapping (`key: value` lines), got a list"),
            (9, 9, "`capture.pids` must be a list (`[a, b]` or `- a` lines), got `7`"),
            (12, 3, "duplicate key `record_user_agent` in `traces` (first at line 11)"),
        ]
    );
    // Nothing at all, only comments, or empty sections: the defaults.
    for text in ["", "# nothing\n", "---\n", "exporter:\ncapture: {}\nservices: []\n", "\u{feff}traces: {}\n"] {
        let cfg = from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(cfg.exporter, ExporterConfig::default());
        assert_eq!(cfg.capture, CaptureConfig::default());
        assert!(cfg.services.is_empty());
    }
    assert_eq!(triples(&check("- a\n")), vec![(1, 1, "the configuration must be a mapping of sections (exporter, capture, traces, privacy, gaps, sampling, metrics, logs, resource, kubernetes, jobs, services), got a list")]);
}

#[test]
fn endpoints_follow_the_protocol() {
    let http = Protocol::HttpProtobuf;
    assert_eq!(normalize_endpoint("http://c:4318", http).unwrap(), "http://c:4318/v1/traces");
    assert_eq!(normalize_endpoint("https://c:4318/", http).unwrap(), "https://c:4318/v1/traces");
    assert_eq!(normalize_endpoint("http://c:4318/custom/path", http).unwrap(), "http://c:4318/custom/path");
    assert!(normalize_endpoint("c:4318", http).unwrap_err().contains("no http:// or https:// scheme"));
    assert!(normalize_endpoint("ftp://c", http).is_err());
    assert!(normalize_endpoint("http://", http).is_err());
    assert!(normalize_endpoint("http://c c", http).is_err());
    let grpc = Protocol::Grpc;
    assert_eq!(normalize_endpoint("http://c:4317", grpc).unwrap(), "http://c:4317");
    assert_eq!(normalize_endpoint("collector:4317", grpc).unwrap(), "collector:4317");
    assert!(normalize_endpoint("collector", grpc).unwrap_err().contains("needs a port"));
    assert!(normalize_endpoint("collector:4317/x", grpc).is_err());

    // The protocol may come after the endpoint; the check waits for it.
    let diags = check("exporter:\n  endpoint: collector:4317\n  protocol: http/protobuf\n");
    assert_eq!(diags.len(), 1);
    assert_eq!((diags[0].line, diags[0].column), (2, 13));
    let cfg = from_str("exporter:\n  endpoint: collector:4317\n  protocol: grpc\n").unwrap();
    assert_eq!(cfg.exporter.endpoint.as_deref(), Some("collector:4317"));
}

#[test]
fn environment_overrides_the_file_and_is_validated_the_same_way() {
    let text = "exporter:\n  endpoint: http://file:4318\ncapture:\n  capture_cap: 4096\n  ports: [80]\ntraces:\n  suppress_instrumented: true\n";
    let cfg = from_str_with_env(
        text,
        env(&[
            ("HOPTRACE_EXPORTER_ENDPOINT", "env:4317"),
            ("HOPTRACE_EXPORTER_PROTOCOL", "grpc"),
            ("HOPTRACE_CAPTURE_CAPTURE_CAP", " 8192 "),
            ("HOPTRACE_CAPTURE_PORTS", "8080, 9090,"),
            ("HOPTRACE_TRACES_SUPPRESS_INSTRUMENTED", "false"),
            ("HOPTRACE_TRACES_RISK_SIGNAL_HEADERS", "x-risk-a,x-risk-b"),
            // Empty means unset.
            ("HOPTRACE_EXPORTER_OUTPUT", ""),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.exporter.endpoint.as_deref(), Some("env:4317"));
    assert_eq!(cfg.exporter.protocol, Protocol::Grpc);
    assert_eq!(cfg.exporter.json_output, JsonOutput::Stdout);
    assert_eq!(cfg.capture.capture_cap, 8192);
    assert_eq!(cfg.capture.ports, vec![8080, 9090]);
    assert!(!cfg.traces.suppress_instrumented);
    assert_eq!(cfg.traces.risk_signal_headers, vec!["x-risk-a", "x-risk-b"]);

    // A bad value names its variable, after the file's own problems.
    let diags = check_with_env(
        "capture:\n  ports: [0]\n",
        env(&[
            ("HOPTRACE_CAPTURE_CAPTURE_CAP", "0"),
            ("HOPTRACE_EXPORTER_COMPRESSION", "zstd"),
            ("HOPTRACE_CAPTURE_PORTS", "80,x"),
        ]),
    );
    assert_eq!(
        triples(&diags),
        vec![
            (2, 11, "`capture.ports[0]` must be greater than zero, got `0`"),
            (
                0,
                0,
                "HOPTRACE_EXPORTER_COMPRESSION=\"zstd\": `exporter.compression` must be `gzip` or `none`, got `zstd`"
            ),
            (0, 0, "HOPTRACE_CAPTURE_PORTS=\"80,x\": `capture.ports[1]` must be a whole number, got `x`"),
            (0, 0, "HOPTRACE_CAPTURE_CAPTURE_CAP=\"0\": `capture.capture_cap` must be greater than zero, got `0`"),
        ]
    );
    // An endpoint from the environment is checked against the protocol too.
    let diags = check_with_env("", env(&[("HOPTRACE_EXPORTER_ENDPOINT", "collector:4318")]));
    assert_eq!(diags.len(), 1);
    assert!(
        diags[0].message.starts_with("HOPTRACE_EXPORTER_ENDPOINT=\"collector:4318\": `exporter.endpoint` must be"),
        "{diags:?}"
    );
}

#[test]
fn unknown_environment_variables_are_reported_without_their_values() {
    let diags = unknown_env([
        "HOPTRACE_EXPORTER_ENDPONT",
        "HOPTRACE_EXPORTER_HEADERS",
        "HOPTRACE_SERVICES_0",
        "HOPTRACE_EXPORTER_ENDPOINT",
        "HOPTRACE_CONFIG",
        "HOPTRACE_BIN",
        "PATH",
    ]);
    assert_eq!(
        diags.iter().map(|d| d.message.as_str()).collect::<Vec<_>>(),
        [
            "unknown environment variable HOPTRACE_EXPORTER_ENDPONT, did you mean `HOPTRACE_EXPORTER_ENDPOINT`?",
            "environment variable HOPTRACE_EXPORTER_HEADERS: `exporter.headers` cannot be set from the environment",
            "environment variable HOPTRACE_SERVICES_0: `services` cannot be set from the environment",
        ]
    );
    assert!(diags.iter().all(|d| d.line == 0));
}

#[test]
fn conversions_for_hoptrace_run() {
    let text = "\
exporter:
  endpoint: http://collector:4318
  headers: { authorization: Bearer x }
  compression: gzip
  timeout_ms: 2500
  insecure: true
  ca_file: /etc/ssl/ca.pem
  batch_max_spans: 100
  batch_timeout_ms: 200
  queue_capacity: 1000
  output: /var/log/spans.jsonl
traces:
  suppress_instrumented: false
  hold_timeout_ms: 500
  record_user_agent: true
  request_header_attributes: { x-tenant-id: tenant }
  response_header_attributes: { x-model-name: model_name }
  risk_signal_headers: [x-risk-abuse]
services:
  - match: { exe: nginx, cmdline_contains: master, cgroup_contains: edge.slice, port: 8080 }
    attributes: { service.name: gateway, service.version: 1.4, zone: Z1 }
";
    let cfg = from_str(text).unwrap();
    let e = cfg.exporter_base();
    assert_eq!(
        e,
        ExporterConfig {
            endpoint: Some("http://collector:4318/v1/traces".into()),
            protocol: Protocol::HttpProtobuf,
            headers: vec![("authorization".into(), "Bearer x".into())],
            compression: Compression::Gzip,
            timeout: Duration::from_millis(2500),
            tls: crate::export::TlsConfig { insecure: true, ca_file: Some("/etc/ssl/ca.pem".into()) },
            batch_max_spans: 100,
            batch_timeout: Duration::from_millis(200),
            queue_capacity: 1000,
            json_output: JsonOutput::File("/var/log/spans.jsonl".into()),
            ..ExporterConfig::default()
        }
    );
    // OTEL_EXPORTER_OTLP_* are applied over the file, and win.
    let e = ExporterConfig::from_env_with(e, env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")])).unwrap();
    assert_eq!(e.compression, Compression::None);

    let t = cfg.trace_config();
    assert!(!t.suppress_instrumented && t.record_user_agent);
    assert_eq!(t.hold_timeout, Duration::from_millis(500));
    assert_eq!(t.request_header_attributes, vec![("x-tenant-id".to_string(), "tenant".to_string())]);
    assert_eq!(t.response_header_attributes, vec![("x-model-name".to_string(), "model_name".to_string())]);
    assert_eq!(t.risk_signal_headers, vec!["x-risk-abuse"]);

    assert_eq!(
        cfg.rules(),
        vec![Rule {
            matches: Match {
                exe: Some("nginx".into()),
                cmdline_contains: Some("master".into()),
                cgroup_contains: Some("edge.slice".into()),
                port: Some(8080),
            },
            attributes: [("service.name", "gateway"), ("service.version", "1.4"), ("zone", "Z1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }]
    );

    // Without a file: today's defaults.
    let d = from_str("").unwrap();
    assert_eq!(d.exporter_base(), ExporterConfig::default());
    let (t, dt) = (d.trace_config(), TraceConfig::default());
    assert_eq!(t.request_header_attributes, dt.request_header_attributes);
    assert_eq!(
        (t.suppress_instrumented, t.hold_timeout, t.record_user_agent),
        (dt.suppress_instrumented, dt.hold_timeout, dt.record_user_agent)
    );
}

#[test]
fn node_attributes_file_then_otel_resource_attributes() {
    let cfg = from_str("resource:\n  attributes: { deployment.environment.name: prod, team: edge, host.name: n1 }\n")
        .unwrap();
    let attrs = cfg.node_attributes_from("node-a", Some("team=core%20platform,region=eu"));
    let got: Vec<(&str, &AnyValue)> = attrs.iter().map(|a| (a.key.as_str(), &a.value)).collect();
    let s = |v: &str| AnyValue::Str(v.to_string().into());
    assert_eq!(
        got,
        vec![
            ("deployment.environment.name", &s("prod")),
            ("host.name", &s("n1")),
            ("team", &s("core platform")),
            ("region", &s("eu")),
        ]
    );
    let attrs = from_str("").unwrap().node_attributes_from("node-a", None);
    assert_eq!(attrs, vec![KeyValue::str("host.name", "node-a")]);
}

#[test]
fn the_example_file_is_valid_and_describes_the_seed() {
    assert_eq!(check(EXAMPLE), vec![]);
    let cfg = from_str(EXAMPLE).unwrap();
    assert_eq!(cfg.exporter_base(), ExporterConfig::default());
    let zones: Vec<&str> = cfg.services.iter().filter_map(|r| r.attributes.get("zone").map(String::as_str)).collect();
    assert_eq!(zones, ["Z1", "Z6", "Z7"]);
    assert_eq!(cfg.traces.response_header_attributes.len(), 4);
    assert_eq!(cfg.traces.risk_signal_headers.len(), 3);
}

#[test]
fn cli_lines_name_the_file_line_and_column() {
    let d = Diagnostic { line: 3, column: 7, message: "bad".into() };
    assert_eq!(format_diagnostic("hoptrace.yaml", &d), "hoptrace.yaml:3:7: error: bad");
    let e = Diagnostic { line: 0, column: 0, message: "HOPTRACE_X=\"1\": bad".into() };
    assert_eq!(format_diagnostic("hoptrace.yaml", &e), "hoptrace.yaml: error: HOPTRACE_X=\"1\": bad");

    let dir = std::env::temp_dir().join(format!("hoptrace-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "capture:\n  capture_cap: 0\n").unwrap();
    let lines = check_path(&bad);
    assert_eq!(
        lines,
        vec![format!("{}:2:16: error: `capture.capture_cap` must be greater than zero, got `0`", bad.display())]
    );
    let good = dir.join("good.yaml");
    std::fs::write(&good, EXAMPLE).unwrap();
    assert_eq!(load_with_env(&good, env(&[])).unwrap().services.len(), 3);
    let missing = dir.join("missing.yaml");
    assert!(check_path(&missing)[0].starts_with(&format!("{}: error: cannot read it: ", missing.display())));
    assert!(matches!(load_with_env(&missing, env(&[])), Err(ConfigError::Read { .. })));

    // Not UTF-8: one diagnostic where the bad byte is.
    let latin1 = dir.join("latin1.yaml");
    std::fs::write(&latin1, b"resource:\n  attributes: { team: caf\xe9 }\n").unwrap();
    assert_eq!(check_path(&latin1), vec![format!("{}:2:26: error: the file is not UTF-8 text", latin1.display())]);
    let err = load_with_env(&latin1, env(&[])).unwrap_err();
    assert!(err.to_string().starts_with(&format!("invalid configuration {}: 1 problem\n", latin1.display())), "{err}");

    let huge = dir.join("huge.yaml");
    std::fs::write(&huge, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
    assert!(matches!(load_with_env(&huge, env(&[])), Err(ConfigError::TooLarge { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn header_names_must_be_lowercase_tokens_and_values_are_not_echoed() {
    let diags = check(
        "exporter:\n  headers: { authorization: \"Bearer s3cret\\n\" }\ntraces:\n  request_header_attributes: { X-Tenant: tenant, x-ok: '' }\n",
    );
    assert_eq!(
        triples(&diags),
        vec![
            (2, 29, "the value of header `authorization` is not a valid HTTP header value (control characters or non-ASCII)"),
            (4, 32, "header name `X-Tenant` must be lowercase (`x-tenant`)"),
            (4, 56, "The attribute for header `x-ok` is empty"),
        ]
    );
    assert!(diags.iter().all(|d| !d.message.contains("s3cret")));
}

#[test]
fn hostile_input_is_diagnosed_never_a_panic() {
    let deep = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let d = check(&deep);
    assert_eq!(d.len(), 1);
    // The parser's own limit or ours, whichever comes first.
    assert!(d[0].message.contains("nested deeper") || d[0].message.contains("recursion limit"), "{d:?}");
    let d = check(&format!("a:\n{}", (0..40).map(|i| format!("{}k:\n", " ".repeat(2 * i + 2))).collect::<String>()));
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("nested deeper than 32 levels"), "{d:?}");
    let d = check("exporter: &e { timeout_ms: 1 }\ncapture: *e\n");
    assert!(d[0].message.contains("aliases"), "{d:?}");
    let d = check("capture:\n  ports: !!set { 80 }\n");
    assert!(d.iter().any(|d| d.message.contains("tag")), "{d:?}");
    assert!(from_str("capture:\n  capture_cap: 99999999999999999999999999\n").is_err());
    assert!(from_str("exporter:\n  timeout_ms: 18446744073709551615\n").is_err());

    // Random printable and YAML-significant bytes: any result, as long as it returns.
    let alphabet: &[u8] = b"ab: -[]{},'\"\n\t#&*!|>%@`?~0123456789\\\xc3\xa9";
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        let mut bytes = Vec::new();
        state ^= state << 13;
        let len = (state % 64) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = check(&text);
        let _ = check(&format!("services:\n  - match: {{ exe: {text} }}\n    attributes: {{ zone: {text} }}\n"));
    }
}

#[test]
fn gaps_section_is_validated_and_applied() {
    let ok = from_str("gaps:\n  entry_zones: [Z1, Z7]\n  entry_services: [public-api]\n  internal_networks: [10.1.0.0/16]\n  ignore_routes: [/ping]\n").unwrap();
    let g = ok.trace_config().gaps;
    assert_eq!(g.entry_zones, vec!["Z1", "Z7"]);
    assert_eq!(g.entry_services, vec!["public-api"]);
    assert_eq!(g.internal_networks, vec!["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    assert_eq!(g.ignore_routes, vec!["/ping"]);
    let bad = check("gaps:\n  entry_zones: [Z9]\n  internal_networks: [10.0.0.0/33]\n  ignore_routes: [ping]\n");
    let lines: Vec<usize> = bad.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 3, 4], "{bad:?}");
}

#[test]
fn sampling_section_is_validated_and_applied() {
    let ok = from_str("sampling:\n  ratio: 0.25\n  slow_ms: 250\n  keep_errors: false\n").unwrap();
    let s = ok.trace_config().sampling;
    assert_eq!((s.ratio, s.slow_ms, s.keep_errors, s.keep_risk_signals), (0.25, Some(250), false, true));
    assert!(!s.trust_external_sampled_flag, "an outside sampled=0 is not trusted by default");
    let trusting = from_str("sampling:\n  trust_external_sampled_flag: true\n").unwrap();
    assert!(trusting.trace_config().sampling.trust_external_sampled_flag);
    let bad = check("sampling:\n  ratio: 1.5\n  keep_errors: maybe\n  trust_external_sampled_flag: 1\n");
    assert_eq!(bad.iter().map(|d| d.line).collect::<Vec<_>>(), vec![2, 3, 4], "{bad:?}");
}

#[test]
fn sampling_rules_per_service_and_route() {
    let ok = from_str("sampling:\n  ratio: 0.1\n  rules:\n    - { route: /healthz, ratio: 0 }\n    - { service: checkout, route: /pay, ratio: 1, slow_ms: 200 }\n").unwrap();
    let r = ok.trace_config().sampling.rules;
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].route.as_deref(), r[0].ratio), (Some("/healthz"), 0.0));
    assert_eq!((r[1].service.as_deref(), r[1].slow_ms), (Some("checkout"), Some(200)));
    let bad = check(
        "sampling:\n  rules:\n    - { route: healthz, ratio: 0 }\n    - { ratio: 2 }\n    - { route: /a, ratoi: 1 }\n",
    );
    assert_eq!(bad.iter().map(|d| d.line).collect::<Vec<_>>(), vec![3, 4, 5], "{bad:?}");
}

#[test]
fn privacy_section_detectors_and_patterns() {
    let ok = from_str("privacy:\n  disabled_detectors: [phone]\n  patterns: ['ACME-[0-9]{6}']\n").unwrap();
    let t = ok.trace_config();
    assert_eq!(
        (t.disabled_detectors, t.redact_patterns),
        (vec!["phone".to_string()], vec!["ACME-[0-9]{6}".to_string()])
    );
    let bad = check("privacy:\n  disabled_detectors: [phnoe]\n  patterns: ['ACME-[0-9', 'x*']\n");
    assert_eq!(bad.iter().map(|d| d.line).collect::<Vec<_>>(), vec![2, 3, 3], "{bad:?}");
    assert!(bad[0].message.contains("did you mean `phone`"), "{bad:?}");
}

#[test]
fn kubernetes_section_is_validated_and_applied() {
    let text = "\
kubernetes:
  enabled: true
  api_url: http://127.0.0.1:8001
  node_name: node-a
  token_file: /run/token
  delete_grace_s: 0
  max_pods: 10
  attributes: { service.name: example.com/svc, zone: hoptrace.io/zone }
";
    let cfg = from_str(text).unwrap();
    let k = &cfg.kubernetes;
    assert_eq!(k.enabled, crate::resource::k8s::Enabled::On);
    assert_eq!(k.api_url.as_deref(), Some("http://127.0.0.1:8001"));
    assert_eq!(k.node_name.as_deref(), Some("node-a"));
    assert_eq!(k.token_file, std::path::PathBuf::from("/run/token"));
    assert_eq!((k.delete_grace, k.max_pods), (Duration::ZERO, 10));
    assert_eq!(
        k.attributes,
        vec![("service.name".into(), "example.com/svc".into()), ("zone".into(), "hoptrace.io/zone".into())]
    );
    // Defaults: auto, the in-cluster files, the recommended labels.
    let d = from_str("").unwrap().kubernetes;
    assert_eq!(d, crate::resource::k8s::KubernetesConfig::default());
    assert_eq!(d.attributes[0], ("service.name".into(), "app.kubernetes.io/name".into()));

    let bad = "\
kubernetes:
  enabled: yes
  api_url: ftp://x
  ca_file: ca.crt
  max_pods: 0
  attributes: { team: 'Bad Key', zone: -x, a: hoptrace.io/ }
  nodename: n
";
    assert_eq!(
        triples(&check(bad)),
        vec![
            (2, 12, "`kubernetes.enabled` must be `auto` or `true` or `false`, got `yes`"),
            (3, 12, "`kubernetes.api_url` must be an http(s) URL such as https://10.0.0.1:443, got \"ftp://x\""),
            (4, 12, "`kubernetes.ca_file` must be an absolute path, got \"ca.crt\""),
            (5, 13, "`kubernetes.max_pods` must be greater than zero, got `0`"),
            (6, 23, "`kubernetes.attributes.team`: \"Bad Key\" is not a Kubernetes label/annotation key: the name must be alphanumeric at both ends, with only -, _ and . inside"),
            (6, 40, "`kubernetes.attributes.zone`: \"-x\" is not a Kubernetes label/annotation key: the name must be alphanumeric at both ends, with only -, _ and . inside"),
            (6, 47, "`kubernetes.attributes.a`: \"hoptrace.io/\" is not a Kubernetes label/annotation key: the name must be 1 to 63 characters"),
            (7, 3, "unknown key `nodename` in `kubernetes`, did you mean `node_name`?"),
        ]
    );
    let from_env = from_str_with_env(
        "",
        env(&[("HOPTRACE_KUBERNETES_ENABLED", "false"), ("HOPTRACE_KUBERNETES_NODE_NAME", "n2")]),
    )
    .unwrap()
    .kubernetes;
    assert_eq!((from_env.enabled, from_env.node_name.as_deref()), (crate::resource::k8s::Enabled::Off, Some("n2")));
}

#[test]
fn metrics_section_is_read_validated_and_overridable_from_the_environment() {
    let cfg = crate::config::from_str("metrics:\n  max_series: 50\n  export_interval_ms: 1500\n  exemplars: false\n")
        .unwrap();
    assert_eq!(
        cfg.metrics,
        MetricsConfig { max_series: 50, export_interval: Duration::from_millis(1500), exemplars: false }
    );
    let cfg = crate::config::from_str_with_env("metrics:\n  max_series: 50\n", |k| {
        (k == "HOPTRACE_METRICS_EXPORT_INTERVAL_MS").then(|| "0".to_string())
    })
    .unwrap();
    assert_eq!((cfg.metrics.max_series, cfg.metrics.export_interval), (50, Duration::ZERO), "0 turns export off");
    assert_eq!(crate::config::from_str("").unwrap().metrics, MetricsConfig::default());
    let diags = crate::config::check("metrics:\n  max_series: 0\n  exemplar: true\n");
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(diags.len(), 2, "{messages:?}");
    assert!(messages[0].contains("`metrics.max_series`"), "{messages:?}");
    assert!(messages[1].contains("exemplar") && messages[1].contains("exemplars"), "did you mean: {messages:?}");
}
