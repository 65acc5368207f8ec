//! Sampling through the real agent: at ratio 0 only what the tail rules and sampled
//! parents keep leaves the node, and every decision is counted.

use std::{fs, process::Command};

use crate::support::*;
use hoptrace_e2e::*;

#[test]
fn ratio_zero_keeps_errors_and_sampled_parents_only() {
    require_root();
    let server = PyServer::start("edge_server.py", &["0"]);
    let port = server.port();
    let dir = TempDir::new("sampling");
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    let agent = start_run_listening(&[port], &out, listen, &["--sample-ratio", "0"]);

    let sampled = "11111111111111111111111111111111";
    let unsampled = "22222222222222222222222222222222";
    let get = |path: &str, tp: Option<String>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "5"]);
        if let Some(tp) = tp {
            c.args(["-H", &format!("traceparent: {tp}")]);
        }
        c.arg(format!("http://127.0.0.1:{port}{path}"));
        run(&mut c, TIMEOUT);
    };
    get("/ok", None); // agent-started, fast, 200: dropped by the ratio
    get("/fail", None); // agent-started 500: kept by the error rule
    get("/ok?s=1", Some(format!("00-{sampled}-00f067aa0ba902b7-01"))); // upstream kept it
    get("/ok?s=0", Some(format!("00-{unsampled}-00f067aa0ba902b7-00"))); // upstream did not
                                                                         // Every request decided: the dropped ones are only visible as counts.
    const DECISIONS: [&str; 4] = ["kept_error", "kept_parent_sampled", "dropped_ratio", "dropped_parent_not_sampled"];
    wait_metrics(listen, TIMEOUT, "a decision of each kind", |m| {
        DECISIONS.iter().all(|d| m.get(&format!("hoptrace_spans_sampled_total{{decision=\"{d}\"}}")) >= 1)
    });
    wait_for_spans_in(&out, "the two kept SERVER spans", |s| s.iter().filter(|s| s.kind == SERVER).count() >= 2);
    let done = stop(agent);

    let spans = parse_spans(&fs::read_to_string(&out).unwrap_or_default());
    let mut servers: Vec<(String, String)> =
        spans.iter().filter(|s| s.kind == SERVER).map(|s| (s.name.clone(), s.trace_id.clone())).collect();
    servers.sort();
    assert_eq!(servers.len(), 2, "{}", show(&spans));
    assert_eq!(servers[0].0, "GET /fail");
    assert_eq!(servers[1], ("GET /ok".to_string(), sampled.to_string()));
    assert!(spans.iter().all(|s| s.trace_id != unsampled), "{}", show(&spans));

    let counts = &stopped_log(&done)["traces"]["sampling"];
    for key in DECISIONS {
        assert!(counts[key].as_u64() >= Some(1), "{key} not counted: {counts}");
    }
}

/// Sampling at the edge: a client outside `gaps.internal_networks` sends `sampled=0` on an
/// error, a risk signal and a plain request. The first two are exported anyway (counted as
/// kept_error / kept_risk_signal), the plain one honours the flag; with
/// `trust_external_sampled_flag` the flag wins for all three. The capture is limited to the
/// server process (`--pid`), so the local curl is not "a process seen on this node", and
/// 127.0.0.1 is made external by leaving it out of the internal networks.
#[test]
fn an_external_unsampled_flag_does_not_hide_errors_or_risk_signals() {
    require_root();
    let server = PyServer::start("edge_server.py", &["0"]);
    let port = server.port();
    let dir = TempDir::new("sampling-edge");
    let edge = "gaps:\n  internal_networks: [10.0.0.0/8]\n";
    let configs = [
        (false, dir.join("edge.yaml"), edge.to_string()),
        (true, dir.join("trust.yaml"), format!("{edge}sampling:\n  trust_external_sampled_flag: true\n")),
    ];
    let get = |path: &str, trace: &str| {
        let tp = format!("traceparent: 00-{trace}-00f067aa0ba902b7-00");
        run(
            Command::new("curl").args(["-s", "-m", "5", "-H", &tp, &format!("http://127.0.0.1:{port}{path}")]),
            TIMEOUT,
        );
    };
    let (error, risky, plain) =
        ("e0000000000000000000000000000001", "a0000000000000000000000000000002", "b0000000000000000000000000000003");
    for (trust, config, yaml) in configs {
        fs::write(&config, yaml).unwrap();
        let out = dir.join(&format!("otlp-{trust}.jsonl"));
        let listen = free_port();
        let pid = server.pid().to_string();
        let args = ["--config", config.to_str().unwrap(), "--pid", &pid, "--sample-ratio", "0"];
        let agent = start_run_listening(&[port], &out, listen, &args);
        get("/fail", error);
        get("/predict", risky);
        get("/ok", plain);
        let all_decided = |m: &Metrics| {
            let count = |d: &str| m.get(&format!("hoptrace_spans_sampled_total{{decision=\"{d}\"}}"));
            ["kept_error", "kept_risk_signal", "dropped_parent_not_sampled"].iter().map(|d| count(d)).sum::<u64>() >= 3
        };
        wait_metrics(listen, TIMEOUT, "three decisions", all_decided);
        if !trust {
            wait_for_spans_in(&out, "the error and risk SERVER spans", |s| {
                s.iter().filter(|s| s.kind == SERVER).count() >= 2
            });
        }
        let done = stop(agent);
        let spans = parse_spans(&fs::read_to_string(&out).unwrap_or_default());
        let mut exported: Vec<&str> = spans.iter().filter(|s| s.kind == SERVER).map(|s| s.trace_id.as_str()).collect();
        exported.sort();
        let counts = &stopped_log(&done)["traces"]["sampling"];
        if trust {
            assert!(exported.is_empty(), "a trusted flag drops them all: {}", show(&spans));
            assert_eq!(counts["dropped_parent_not_sampled"], 3, "{counts}");
        } else {
            assert_eq!(exported, [risky, error], "{}", show(&spans));
            assert!(spans.iter().all(|s| s.trace_id != plain), "{}", show(&spans));
            assert_eq!(
                (counts["kept_error"].as_u64(), counts["kept_risk_signal"].as_u64()),
                (Some(1), Some(1)),
                "{counts}"
            );
            assert_eq!(counts["dropped_parent_not_sampled"], 1, "{counts}");
        }
    }
}
