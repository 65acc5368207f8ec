//! Job tracking on real processes (their /proc entries are what exec reads): fan-out past
//! the limit gets Links, and a rule that requires context reports the gap.

use std::{process::Command, time::Duration};

use super::*;
use crate::{model::span::SpanRecord, resource::resolver::ResourceResolver, traces::TraceConfig};

fn rule(name: &str, cmdline: &str, require_context: bool) -> JobRule {
    JobRule {
        name: name.into(),
        exe: None,
        cmdline: Some(regex::Regex::new(cmdline).unwrap()),
        env: Vec::new(),
        span_name: format!("batch-run {name}"),
        attributes: Vec::new(),
        require_context,
    }
}

/// The children of `pid`, once there are `n` of them.
fn children(pid: u32, n: usize) -> Vec<u32> {
    for _ in 0..500 {
        let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let kids: Vec<u32> = list.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        // Forked but not yet exec'd children still show the shell's command line.
        let execd =
            kids.iter().all(|k| std::fs::read_to_string(format!("/proc/{k}/comm")).is_ok_and(|c| c.trim() == "sleep"));
        if kids.len() == n && execd {
            return kids;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{pid} never had {n} children");
}

#[test]
fn fan_out_past_the_limit_links_and_missing_context_is_a_gap() {
    let mut cfg = TraceConfig::default();
    cfg.jobs.max_parallel_children = 2;
    cfg.jobs.rules = vec![rule("fanout", r"sleep 3\d\d & ", true), rule("part", r"^sleep 3\d\d$", false)];
    let mut p = TracePipeline::new(cfg, ResourceResolver::new(Vec::new(), Vec::new()));
    let mut sh = Command::new("sh").args(["-c", "sleep 301 & sleep 302 & sleep 303 & wait"]).spawn().unwrap();
    let parent = sh.id();
    let kids = children(parent, 3);
    p.on_exec(parent, 1_000);
    for (i, k) in kids.iter().enumerate() {
        p.on_exec(*k, 2_000 + i as u64);
    }
    let mut spans: Vec<SpanRecord> = Vec::new();
    for k in &kids {
        p.on_exit(&Exit { pid: *k, status: 9, ts_ns: 5_000 }, &mut spans);
    }
    p.on_exit(&Exit { pid: parent, status: 0, ts_ns: 6_000 }, &mut spans);
    let _ = sh.kill();
    let _ = sh.wait();
    let root = spans.iter().find(|s| s.name == "batch-run fanout").expect("parent job span");
    assert!(root.is_root());
    assert!(root.attributes.iter().any(|a| a.key == "hoptrace.gap.kind"), "started without context: a gap");
    let parts: Vec<&SpanRecord> = spans.iter().filter(|s| s.name == "batch-run part").collect();
    assert_eq!(parts.len(), 3);
    let nested = parts.iter().filter(|s| s.parent_span_id == root.span_id && s.trace_id == root.trace_id).count();
    let linked: Vec<_> = parts.iter().filter(|s| s.links.iter().any(|l| l.span_id == root.span_id)).collect();
    assert_eq!((nested, linked.len()), (2, 1), "two children nest, the third links");
    assert!(linked[0].is_root() && linked[0].trace_id != root.trace_id);
    // Killed by SIGKILL (status 9): error.
    assert!(parts.iter().all(|s| s.status.code == StatusCode::Error && s.status.message == "killed by signal 9"));
    assert_eq!(p.job_stats().jobs_fanned_out, 1);
    assert!(!p.gaps.lock().unwrap().is_empty());
    assert!(!p.follows(parent), "forgotten at exit");
}

#[test]
fn job_values_keep_run_ids_and_lose_personal_data() {
    let r = job_redactor(&crate::policy::redact::Redactor::default());
    for id in [
        "manual__2026-12-03T05:00:00+00:00",
        "scheduled__2026-12-03T06:00:00+00:00",
        "fraud-7.3.1",
        "0af76519-16cd-43dd-8448-eb211c80319c",
    ] {
        assert_eq!(r.redact_field(Field::HeaderValue, id).text, id);
    }
    let leaked = r.redact_field(Field::HeaderValue, "run-for-ana@example.com").text;
    assert!(!leaked.contains("ana@example.com"), "{leaked}");
}
