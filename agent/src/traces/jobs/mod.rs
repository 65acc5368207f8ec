//! Batch jobs and processes started with trace context.
//!
//! Jobs are short processes, often without an SDK, whose whole life the agent sees: exec,
//! calls, exit. At exec a process is looked at once:
//!
//! * a **job rule** ([`rules`]) matches it: it gets an INTERNAL root span from exec to
//!   exit (status from the exit code or fatal signal), and its outbound calls — and those
//!   of its child processes — become children of that span; a child process matching a
//!   rule itself is a child job span (fan-out), or, past `max_parallel_children` running
//!   children of one job, the root of its own trace with a Link to the parent job;
//! * its environment carries **trace context** (`TRACEPARENT`, `TRACESTATE`: the
//!   OpenTelemetry convention for CLI tools and jobs): its job span, or without a rule its
//!   outbound calls, continue that trace;
//! * its parent process is tracked: it inherits the parent's context.
//!
//! Anything else is not remembered, so a call of an untracked process costs one
//! `is_empty` test while no job runs, and a table lookup (a walk up its parents, cached
//! process info) while some do. A tracked process's connections are cut at its exit, so
//! a call left open by a killed job ends there with an error.

mod rules;

pub use rules::{airflow_rule, expand, JobRule, JobsConfig, Matched, AIRFLOW_CMDLINE};

use hashbrown::HashMap;
use serde::Serialize;

use super::{context, Ctx, SpanSink, TracePipeline};
use crate::{
    capture::events::Exit,
    gaps::GapKind,
    model::span::{hex, KeyValue, SpanId, SpanKind, SpanLink, SpanRecord, Status, StatusCode, TraceId},
    policy::redact::{Detector, Field, Redactor},
    resource::process::{self, ProcessInfo},
};

/// Most processes followed at once; beyond, new ones are not (and are counted).
const MAX_TRACKED: usize = 65536;
/// How far up its parents a process is looked for a tracked ancestor.
const MAX_ANCESTORS: usize = 8;

/// What the job tracking counted (`/metrics`: `hoptrace_jobs_*`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobStats {
    pub jobs_started: u64,
    pub jobs_ended: u64,
    /// Job spans that got a Link instead of a parent (fan-out past the limit).
    pub jobs_fanned_out: u64,
    /// Processes whose environment had a valid `TRACEPARENT`.
    pub env_context_valid: u64,
    /// … an invalid one (ignored; by reason in the log, never the value).
    pub env_context_invalid: u64,
    /// Outbound calls parented to their process's job or environment context.
    pub calls_parented: u64,
    /// Processes not followed because the table was full.
    pub not_tracked_table_full: u64,
}

/// Processes whose outbound calls have a parent of their own.
#[derive(Default)]
pub(super) struct Jobs {
    procs: HashMap<u32, Tracked>,
    pub stats: JobStats,
    /// The detectors job attribute values pass (see [`job_redactor`]).
    redactor: Redactor,
}

impl Jobs {
    pub(super) fn new(base: &Redactor) -> Self {
        Self { redactor: job_redactor(base), ..Default::default() }
    }
}

/// The built-in Airflow rule, compiled once (a regex per exec cost more than the rest of
/// the exec's work).
fn builtin_airflow() -> &'static JobRule {
    static RULE: std::sync::OnceLock<JobRule> = std::sync::OnceLock::new();
    RULE.get_or_init(airflow_rule)
}

/// Job attribute values are run ids, DAG and task names, versions: identifiers by design
/// (`manual__2026-12-03T05:00:00+00:00`, a UUID), which the identifier-shaped detectors
/// (UUID, hex and base64 tokens, numbers) would erase. Personal data and credentials are
/// still found and replaced: email, CPF, CNPJ, card and phone numbers, JWTs, bearer tokens.
pub(super) fn job_redactor(base: &Redactor) -> Redactor {
    [Detector::Uuid, Detector::HexToken, Detector::Base64Token, Detector::Number]
        .into_iter()
        .fold(base.clone(), |r, d| r.without(d))
}

struct Tracked {
    start_time: u64,
    /// The parent of the process's outbound calls.
    calls: Ctx,
    /// The environment context (trace id, parent id) the process was started with: a
    /// child started with the same one inherited it, a different one is its own.
    env: Option<(TraceId, SpanId)>,
    job: Option<Job>,
    /// The process whose job this one's job span is a child of (running-children count).
    parent_job: Option<u32>,
}

/// A job run in progress: its span, finished at exit.
struct Job {
    span_id: SpanId,
    /// The job span's own context (its parent).
    ctx: Ctx,
    name: String,
    attributes: Vec<KeyValue>,
    links: Vec<SpanLink>,
    start_ns: u64,
    running_children: usize,
    missing_context: bool,
}

/// What a new process inherits from its nearest tracked ancestor.
struct Ancestor {
    calls: Ctx,
    env: Option<(TraceId, SpanId)>,
    /// The ancestor's job, when it is one: (pid, running children).
    job: Option<(u32, usize, SpanId, TraceId)>,
}

impl TracePipeline {
    /// A process called exec(): is it a job, does it carry trace context, is its parent
    /// followed? Reads its /proc entry once (the environment bounded, see `process`).
    pub fn on_exec(&mut self, pid: u32, ts_ns: u64) {
        if !self.cfg.jobs.enabled() {
            return;
        }
        // exec keeps the pid and start time: the cached info is the previous image's.
        self.processes.forget(pid);
        // Most execs concern no job: a look at the command line and the environment
        // settles them without caching anything about the process.
        if self.jobs.procs.is_empty() && !self.exec_may_matter(pid) {
            return;
        }
        let Some(info) = self.processes.get(pid) else { return };
        let matched = self.match_job(&info);
        if let Some(t) = self.jobs.procs.get(&pid) {
            // A job re-exec'ing (a wrapper script becoming the interpreter) keeps its span.
            if t.start_time == info.start_time && (t.job.is_some() || matched.is_none()) {
                return;
            }
        }
        let ancestor = self.tracked_ancestor(info.ppid);
        let env = self.env_context(&info);
        // A child started with its parent's context inherited it; a different one was set
        // for it on purpose.
        let env = env.filter(|(_, ids)| ancestor.as_ref().is_none_or(|a| a.env != Some(*ids)));
        let base = env.as_ref().map(|(c, _)| c.clone()).or_else(|| ancestor.as_ref().map(|a| a.calls.clone()));
        if matched.is_none() && base.is_none() {
            return;
        }
        if self.jobs.procs.len() >= MAX_TRACKED && !self.jobs.procs.contains_key(&pid) {
            self.jobs.stats.not_tracked_table_full += 1;
            return;
        }
        let env_ids = env.map(|(_, ids)| ids).or_else(|| ancestor.as_ref().and_then(|a| a.env));
        let (calls, job, parent_job) = match matched {
            Some(m) => {
                let (calls, mut job, parent_job) = self.start_job(pid, m, base, ancestor.as_ref(), ts_ns);
                if let Some(j) = job.as_mut() {
                    j.attributes.extend(self.env_baggage(&info));
                }
                (calls, job, parent_job)
            }
            None => (base.expect("checked above"), None, None),
        };
        let t = Tracked { start_time: info.start_time, calls, env: env_ids, job, parent_job };
        self.jobs.procs.insert(pid, t);
    }

    /// Whether a process just exec'd could be a job or carries a trace context (no process
    /// is followed, so it has no followed ancestor).
    fn exec_may_matter(&self, pid: u32) -> bool {
        let jobs = &self.cfg.jobs;
        // Rules without a command-line pattern need the full look.
        if jobs.rules.iter().any(|r| r.cmdline.is_none()) {
            return true;
        }
        if jobs.airflow || !jobs.rules.is_empty() {
            let Some(cmdline) = process::read_cmdline(pid) else { return false };
            let builtin = jobs.airflow.then(builtin_airflow);
            let patterns = jobs.rules.iter().chain(builtin).filter_map(|r| r.cmdline.as_ref());
            if patterns.into_iter().any(|re| re.is_match(&cmdline)) {
                return true;
            }
        }
        jobs.environment_context && process::environ_sets(pid, b"TRACEPARENT=")
    }

    /// The first job rule (configured ones, then the built-in) matching the process.
    fn match_job(&self, info: &ProcessInfo) -> Option<Matched> {
        let jobs = &self.cfg.jobs;
        if jobs.rules.is_empty() && !jobs.airflow {
            return None;
        }
        let names: Vec<&str> = jobs.rules.iter().flat_map(|r| r.env.iter().map(String::as_str)).collect();
        let values = process::env_values(info.pid, &names);
        let set = |v: &str| names.iter().zip(&values).any(|(n, val)| *n == v && val.is_some());
        let builtin = jobs.airflow.then(builtin_airflow);
        jobs.rules.iter().chain(builtin).find_map(|r| r.matches(info, &set))
    }

    /// The environment's trace context, validated strictly; invalid is counted and
    /// ignored, its value never logged.
    fn env_context(&mut self, info: &ProcessInfo) -> Option<(Ctx, (TraceId, SpanId))> {
        let carrier = info.env_context.as_deref().filter(|_| self.cfg.jobs.environment_context)?;
        let tp = match context::parse_traceparent(carrier.traceparent.as_bytes()) {
            Ok(tp) => tp,
            Err(e) => {
                self.jobs.stats.env_context_invalid += 1;
                *self.stats.invalid_context.entry(e.reason()).or_default() += 1;
                return None;
            }
        };
        let state = carrier.tracestate.as_deref().map(|s| context::parse_tracestate(&[s.as_bytes()]));
        let trace_state = match state {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                *self.stats.invalid_context.entry(e.reason()).or_default() += 1;
                String::new()
            }
            None => String::new(),
        };
        self.jobs.stats.env_context_valid += 1;
        Some((Ctx::remote(&tp, trace_state), (tp.trace_id, tp.parent_id)))
    }

    /// Allow-listed `BAGGAGE` members of the environment, as `baggage.<key>` attributes of
    /// the job span (redacted like the baggage of a request, see `finish`).
    fn env_baggage(&self, info: &ProcessInfo) -> Vec<KeyValue> {
        let allow = &self.cfg.baggage_allowlist;
        let Some(b) = info.env_context.as_deref().and_then(|c| c.baggage.as_deref()) else { return Vec::new() };
        if allow.is_empty() || !self.cfg.jobs.environment_context {
            return Vec::new();
        }
        let members = context::parse_baggage(&[b.as_bytes()], |k| allow.iter().any(|a| a == k)).unwrap_or_default();
        members.into_iter().map(|(k, v)| KeyValue::str(format!("baggage.{k}"), v)).collect()
    }

    /// The nearest followed process among `ppid` and its parents.
    fn tracked_ancestor(&mut self, mut ppid: u32) -> Option<Ancestor> {
        for _ in 0..MAX_ANCESTORS {
            if ppid <= 1 {
                return None;
            }
            if let Some(t) = self.jobs.procs.get(&ppid) {
                let job = t.job.as_ref().map(|j| (ppid, j.running_children, j.span_id, j.ctx.trace_id));
                return Some(Ancestor { calls: t.calls.clone(), env: t.env, job });
            }
            ppid = self.processes.get(ppid)?.ppid;
        }
        None
    }

    /// A job run starts: its span's context (under `base`, or a Link past the fan-out
    /// limit), its attributes; returns the context its calls take.
    fn start_job(
        &mut self,
        pid: u32,
        m: Matched,
        base: Option<Ctx>,
        ancestor: Option<&Ancestor>,
        ts_ns: u64,
    ) -> (Ctx, Option<Job>, Option<u32>) {
        let parent_job = ancestor.and_then(|a| a.job).map(|j| j.0);
        let mut links = Vec::new();
        let wide = ancestor.and_then(|a| a.job).filter(|j| j.1 >= self.cfg.jobs.max_parallel_children);
        let ctx = match (wide, base.clone()) {
            (Some((_, _, span_id, trace_id)), _) => {
                self.jobs.stats.jobs_fanned_out += 1;
                links.push(SpanLink { trace_id, span_id, trace_state: String::new(), attributes: Vec::new() });
                self.new_trace()
            }
            (None, Some(b)) => b,
            (None, None) => self.new_trace(),
        };
        if let Some(p) = parent_job.and_then(|p| self.jobs.procs.get_mut(&p)).and_then(|t| t.job.as_mut()) {
            p.running_children += 1;
        }
        let attributes = self.job_attributes(pid, &m);
        let span_id = self.ids.span_id();
        self.jobs.stats.jobs_started += 1;
        let job = Job {
            span_id,
            ctx: ctx.clone(),
            name: m.name,
            attributes,
            links,
            start_ns: ts_ns,
            running_children: 0,
            missing_context: m.require_context && base.is_none(),
        };
        (ctx.child_of(span_id), Some(job), parent_job)
    }

    /// The rule's attributes and the configured environment variables, every value
    /// through the PII detectors (command lines and environments are anyone's to set).
    fn job_attributes(&mut self, pid: u32, m: &Matched) -> Vec<KeyValue> {
        let names: Vec<&str> = self.cfg.jobs.env_attributes.iter().map(|(v, _)| v.as_str()).collect();
        let values = process::env_values(pid, &names);
        let from_env = self.cfg.jobs.env_attributes.iter().zip(values).filter_map(|((_, a), v)| Some((a.clone(), v?)));
        let mut out = vec![KeyValue::str("hoptrace.job.rule", m.rule.clone())];
        for (k, v) in m.attributes.iter().cloned().chain(from_env.collect::<Vec<_>>()) {
            let r = self.jobs.redactor.redact_field(Field::HeaderValue, &v);
            out.push(KeyValue::str(k, r.text));
        }
        out
    }

    /// The parent of an outbound call of `pid` that nothing else linked: its job's span,
    /// or the context it was started with, or its nearest followed ancestor's (a forked
    /// child, which never exec'd, is learnt here).
    pub(super) fn process_parent(&mut self, pid: u32) -> Option<Ctx> {
        if self.jobs.procs.is_empty() {
            return None;
        }
        let calls = match self.jobs.procs.get(&pid) {
            Some(t) => t.calls.clone(),
            None => {
                let info = self.processes.get(pid)?;
                let a = self.tracked_ancestor(info.ppid)?;
                if self.jobs.procs.len() < MAX_TRACKED {
                    let t = Tracked {
                        start_time: info.start_time,
                        calls: a.calls.clone(),
                        env: a.env,
                        job: None,
                        parent_job: None,
                    };
                    self.jobs.procs.insert(pid, t);
                }
                a.calls
            }
        };
        self.jobs.stats.calls_parented += 1;
        Some(calls)
    }

    /// Whether `pid` is followed: its connections are then cut at its exit.
    pub fn follows(&self, pid: u32) -> bool {
        !self.jobs.procs.is_empty() && self.jobs.procs.contains_key(&pid)
    }

    /// A process exited (after its connections were cut): its job span ends.
    pub fn on_exit(&mut self, ev: &Exit, sink: &mut dyn SpanSink) {
        if self.jobs.procs.is_empty() {
            return;
        }
        let Some(t) = self.jobs.procs.remove(&ev.pid) else { return };
        if let Some(p) = t.parent_job.and_then(|p| self.jobs.procs.get_mut(&p)).and_then(|t| t.job.as_mut()) {
            p.running_children = p.running_children.saturating_sub(1);
        }
        if let Some(job) = t.job {
            self.end_job(ev, job, sink);
        }
    }

    fn end_job(&mut self, ev: &Exit, job: Job, sink: &mut dyn SpanSink) {
        let resource = self.resource_for(ev.pid, "");
        let mut attributes = job.attributes;
        let status = match (ev.code(), ev.signal()) {
            (Some(0), _) => Status::default(),
            (Some(code), _) => Status { code: StatusCode::Error, message: format!("exit code {code}") },
            (None, Some(sig)) => Status { code: StatusCode::Error, message: format!("killed by signal {sig}") },
            (None, None) => Status::default(),
        };
        match (ev.code(), ev.signal()) {
            (Some(code), _) => attributes.push(KeyValue::int("process.exit.code", code as i64)),
            (_, Some(sig)) => attributes.push(KeyValue::int("hoptrace.process.exit.signal", sig as i64)),
            _ => {}
        }
        let ids = job.ctx.clone().ids(job.span_id);
        let (start, end) = (self.clock.to_unix_ns(job.start_ns), self.clock.to_unix_ns(ev.ts_ns));
        let mut span = super::http::span(SpanKind::Internal, job.name, resource, ids, start, end, attributes, status);
        span.links = job.links;
        if job.missing_context {
            self.job_gap(&mut span);
        }
        self.jobs.stats.jobs_ended += 1;
        self.submit(span, sink);
    }

    /// A job that must run inside a trace started without one.
    fn job_gap(&mut self, span: &mut SpanRecord) {
        let service = super::finish::resource_attr(&span.resource, "service.name");
        let zone = super::finish::resource_attr(&span.resource, "zone");
        let (trace, id, route) = (hex(&span.trace_id), hex(&span.span_id), span.name.to_string());
        self.record_gap(GapKind::MissingInboundContext, &service, &zone, "", &route, &trace, &id, "job");
        super::judge::mark_gap(span, GapKind::MissingInboundContext);
    }

    pub fn job_stats(&self) -> &JobStats {
        &self.jobs.stats
    }
}

#[cfg(test)]
mod tests;
