//! The benchmark's summary table on stdout (the JSON under target/bench/ has every figure).

use serde_json::{json, Value};

/// Map operations per hit on each program's common path (a captured, already-known TCP
/// socket; one chunk of payload), counted from ebpf/programs/src. Array and per-CPU
/// lookups are inlined by the verifier into a few instructions; hash lookups and updates
/// are helper calls that hash and take buckets; ring operations are `bpf_ringbuf_query`
/// and `bpf_ringbuf_output`. Keep in step with the code (docs/kernel.md explains each).
const MAP_OPS: &[(&str, u32, u32, u32, u32, &str)] = &[
    // (program, array/per-CPU, hash, ring, tail calls, what)
    ("enter_* (data syscalls)", 3, 1, 0, 0, "GENS, INFLIGHT x2 (SSL count, put); FDS"),
    ("exit_data (one chunk, contiguous)", 2, 1, 2, 0, "INFLIGHT, SCRATCH; CONNS; query + output"),
    ("exit_data (more, or vectored)", 3, 1, 1, 1, "INFLIGHT, SCRATCH, JOB; CONNS; query; tail call"),
    ("emit_* (per chunk)", 2, 0, 2, 0, "JOB, SCRATCH; query + output per chunk"),
    ("ssl_*_enter", 1, 1, 0, 0, "SSL_CALLS insert; INFLIGHT SSL count"),
    ("ssl_ret (one chunk)", 3, 5, 2, 0, "SSL_CALLS get+delete, SSL_FDS, FDS, CONNS; GENS, INFLIGHT, SCRATCH"),
];

/// The table above, for the JSON results.
pub fn map_ops_json() -> Value {
    let rows = MAP_OPS.iter().map(|(p, a, h, r, t, what)| {
        json!({ "program": p, "array_lookups": a, "hash_ops": h, "ring_ops": r, "tail_calls": t, "maps": what })
    });
    Value::Array(rows.collect())
}

pub fn print_report(r: &Value) {
    let f = |p: &str| r.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    println!("\n{:<34} {:>12} {:>12} {:>8}", "median over rounds", "baseline", "agent", "ratio");
    for (name, key) in [("throughput (req/s)", "rps"), ("latency p50 (us)", "p50_us"), ("latency p99 (us)", "p99_us")] {
        let (b, a) = (f(&format!("/baseline/{key}")), f(&format!("/agent_run/{key}")));
        println!("{name:<34} {b:>12.0} {a:>12.0} {:>8.3}", a / b);
    }
    println!("{:<34} {:>12} {:>12.2}", "agent CPU (us/request)", "", f("/agent_run/cpu_us_per_request"));
    println!("{:<34} {:>12} {:>12.2}", "spans exported per request", "", f("/agent_run/spans_per_request"));
    println!("{:<34} {:>12} {:>12.0}", "OTLP bytes received per request", "", f("/agent_run/otlp_bytes_per_request"));
    println!("{:<34} {:>12} {:>12.1}", "RSS steady (MiB)", "", f("/agent_run/rss_steady_mib"));
    println!("{:<34} {:>12} {:>12.1}", "RSS peak VmHWM (MiB)", "", f("/agent_run/rss_peak_mib"));
    println!("{:<34} {:>12} {:>12.0}", "BPF total (ns/request)", "", f("/agent_run/bpf_ns_per_request"));
    if let Some(p) = r.get("bpf_programs").and_then(Value::as_object) {
        for (name, v) in p {
            let per_req = v["ns_per_request"].as_f64().unwrap_or(0.0);
            if per_req >= 0.5 {
                println!(
                    "  {name:<32} {:>12} {per_req:>12.0}   ({:.0} ns/run)",
                    "",
                    v["ns_per_run"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    if let Some(d) = r.get("drops").and_then(Value::as_object) {
        let nonzero: Vec<_> = d.iter().filter(|(_, v)| v.as_f64().unwrap_or(0.0) != 0.0).collect();
        if nonzero.is_empty() {
            println!("drops (all rounds)                 none");
        }
        for (k, v) in nonzero {
            println!("drop {k} = {v}");
        }
    }
    println!("load average (median)              {:.2}", f("/load_avg_median"));
    println!("\n{:<34} {:>12} {:>12}", "app-side CPU (us/request)", "baseline", "agent");
    for side in ["nginx", "client"] {
        let (b, a) = (
            f(&format!("/app_cpu_us_per_request/baseline/{side}")),
            f(&format!("/app_cpu_us_per_request/agent/{side}")),
        );
        println!("  {:<32} {b:>12.2} {a:>12.2}", if side == "nginx" { "nginx worker" } else { "wrk" });
    }
    if r.get("fixed_rate").is_some_and(|o| !o.is_null()) {
        println!(
            "\nfixed rate {:.0} req/s (oha, latency-corrected): p50 {:.0} -> {:.0} us ({:.3})  p99 {:.0} -> {:.0} us ({:.3})  nginx CPU {:.2} -> {:.2} us/req",
            f("/fixed_rate/rate"),
            f("/fixed_rate/baseline/p50_us"),
            f("/fixed_rate/agent/p50_us"),
            f("/fixed_rate/p50_ratio"),
            f("/fixed_rate/baseline/p99_us"),
            f("/fixed_rate/agent/p99_us"),
            f("/fixed_rate/p99_ratio"),
            f("/fixed_rate/baseline/nginx_cpu_us_per_request"),
            f("/fixed_rate/agent/nginx_cpu_us_per_request"),
        );
    }
    println!(
        "\n{:<30} {:>6} {:>5} {:>5} {:>5}  maps (from the code)",
        "map operations per hit", "array", "hash", "ring", "tail"
    );
    for (p, a, h, ring, t, what) in MAP_OPS {
        println!("  {p:<28} {a:>6} {h:>5} {ring:>5} {t:>5}  {what}");
    }
    if r.get("overload").is_some_and(|o| !o.is_null()) {
        println!(
            "\noverload: agent at {:.0}% of one CPU  throughput ratio {:.3}  p99 ratio {:.3}  ring drops {:.0} (counted)  bytes lost/request {:.0}  spans/request {:.2}",
            f("/overload/agent_cpu_percent"),
            f("/overload/throughput_ratio"),
            f("/overload/p99_ratio"),
            f("/overload/ring_drops"),
            f("/overload/bytes_lost_per_request"),
            f("/overload/spans_per_request")
        );
    }
    println!("\n{:<36} {:>12} {:>10}  met", "target", "value", "limit");
    for t in r["targets"].as_array().into_iter().flatten() {
        println!(
            "{:<36} {:>12.3} {:>10}  {}",
            t["target"].as_str().unwrap_or(""),
            t["value"].as_f64().unwrap_or(f64::NAN),
            t["limit"].as_str().unwrap_or(""),
            if t["met"].as_bool() == Some(true) { "MET" } else { "not met" }
        );
    }
}
