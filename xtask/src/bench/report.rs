//! The benchmark's summary table on stdout (the JSON under target/bench/ has every figure).

use serde_json::Value;

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
