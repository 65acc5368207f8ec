//! Job rules: which processes are batch-job runs, what their root span is called and
//! which attributes it carries (from command-line captures and named environment
//! variables). The built-in rule recognises Airflow's task runner.

use regex::Regex;

use crate::resource::process::ProcessInfo;

/// The `jobs` section of the configuration.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Rules from the configuration, tried in order before the built-in ones.
    pub rules: Vec<JobRule>,
    /// The built-in Airflow rule (`airflow tasks run|test DAG_ID TASK_ID RUN_ID`).
    pub airflow: bool,
    /// Continue the trace a process was started with (`TRACEPARENT`, `TRACESTATE` in its
    /// environment).
    pub environment_context: bool,
    /// Child jobs of one job running at once beyond this start their own trace, with a
    /// Link to the parent job's span (fan-out too wide to nest).
    pub max_parallel_children: usize,
    /// Environment variable → span attribute, on every job span (the model version a run
    /// is pinned to, `MODEL_VERSION` → `model.version`). Only these variables are read.
    pub env_attributes: Vec<(String, String)>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            airflow: true,
            environment_context: true,
            max_parallel_children: 16,
            env_attributes: Vec::new(),
        }
    }
}

impl JobsConfig {
    /// Whether exec needs looking at at all.
    pub fn enabled(&self) -> bool {
        self.environment_context || self.airflow || !self.rules.is_empty()
    }
}

/// One job rule; every condition given must hold.
#[derive(Clone, Debug)]
pub struct JobRule {
    /// Rule name, for the agent's logs and `hoptrace.job.rule`.
    pub name: String,
    /// Executable file name, exactly.
    pub exe: Option<String>,
    /// Regular expression over the command line (arguments joined by spaces); its named
    /// groups are the `{name}` placeholders of the templates.
    pub cmdline: Option<Regex>,
    /// Environment variables that must be set (their values are not read unless
    /// `env_attributes` names them).
    pub env: Vec<String>,
    /// Span name template (`batch-run {dag_id}.{task_id}`).
    pub span_name: String,
    /// Attribute → value template.
    pub attributes: Vec<(String, String)>,
    /// A run started without trace context is a `missing_inbound_context` gap.
    pub require_context: bool,
}

/// Airflow's task runner, in both forms (`tasks run` from a worker, `tasks test` by hand)
/// and whatever launches it (`airflow …`, `python -m airflow …`, a venv's `bin/airflow`).
pub const AIRFLOW_CMDLINE: &str = r"(?:^|[\s/])airflow tasks (?:run|test) (?P<dag_id>[^\s-][^\s]*) (?P<task_id>[^\s-][^\s]*)(?: (?P<run_id>[^\s-][^\s]*))?";

/// The built-in Airflow rule. There is no Airflow namespace in the OpenTelemetry semantic
/// conventions: `airflow.*` names the DAG, task and run; `job.run_id` is the run id every
/// job rule should set.
pub fn airflow_rule() -> JobRule {
    JobRule {
        name: "airflow".into(),
        exe: None,
        cmdline: Some(Regex::new(AIRFLOW_CMDLINE).expect("valid built-in pattern")),
        env: Vec::new(),
        span_name: "batch-run {dag_id}.{task_id}".into(),
        attributes: [
            ("airflow.dag.id", "{dag_id}"),
            ("airflow.task.id", "{task_id}"),
            ("airflow.run.id", "{run_id}"),
            ("job.run_id", "{run_id}"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        require_context: false,
    }
}

/// A rule that matched a process: the span name and attributes filled in.
#[derive(Debug, PartialEq)]
pub struct Matched {
    pub rule: String,
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub require_context: bool,
}

/// Longest value a placeholder expands to; longer captures are cut (on a char boundary).
const VALUE_MAX: usize = 256;

impl JobRule {
    /// The rule's verdict on a process; `env_set` says whether a variable is set.
    pub fn matches(&self, p: &ProcessInfo, env_set: &dyn Fn(&str) -> bool) -> Option<Matched> {
        if self.exe.as_ref().is_some_and(|e| *e != p.exe_name) || !self.env.iter().all(|v| env_set(v)) {
            return None;
        }
        let caps = match &self.cmdline {
            Some(re) => Some(re.captures(&p.cmdline)?),
            None => None,
        };
        let fill = |template: &str| expand(template, &|name| caps.as_ref()?.name(name).map(|m| m.as_str()));
        let attributes =
            self.attributes.iter().map(|(k, t)| (k.clone(), fill(t))).filter(|(_, v)| !v.is_empty()).collect();
        Some(Matched {
            rule: self.name.clone(),
            name: fill(&self.span_name),
            attributes,
            require_context: self.require_context,
        })
    }
}

/// Replaces `{name}` by `lookup(name)` (empty when absent), values capped at
/// [`VALUE_MAX`] bytes. Linear in the template and values.
pub fn expand<'v>(template: &str, lookup: &dyn Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let value = lookup(&after[..close]).unwrap_or("");
        let mut cut = value.len().min(VALUE_MAX);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&value[..cut]);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(exe: &str, cmdline: &str) -> ProcessInfo {
        ProcessInfo { pid: 7, exe_name: exe.into(), cmdline: cmdline.into(), ..Default::default() }
    }

    #[test]
    fn airflow_task_runner_in_both_forms() {
        let r = airflow_rule();
        let none = |_: &str| false;
        let run = proc(
            "python3.11",
            "/opt/venv/bin/python /opt/venv/bin/airflow tasks run scoring score_partitions \
             manual__2026-01-02T00:00:00+00:00 --local --subdir DAGS_FOLDER/scoring.py",
        );
        let m = r.matches(&run, &none).expect("tasks run");
        assert_eq!(m.name, "batch-run scoring.score_partitions");
        assert!(m.attributes.contains(&("job.run_id".into(), "manual__2026-01-02T00:00:00+00:00".into())));
        assert!(m.attributes.contains(&("airflow.dag.id".into(), "scoring".into())));
        let test = r.matches(&proc("airflow", "airflow tasks test scoring score 2026-01-02"), &none).unwrap();
        assert!(test.attributes.contains(&("airflow.run.id".into(), "2026-01-02".into())));
        // `tasks test` without a run id: no empty attribute.
        let bare = r.matches(&proc("airflow", "airflow tasks test scoring score"), &none).unwrap();
        assert!(!bare.attributes.iter().any(|(k, _)| k == "job.run_id"));
        assert!(r.matches(&proc("airflow", "airflow tasks list scoring"), &none).is_none());
        assert!(r.matches(&proc("airflow", "airflow scheduler"), &none).is_none());
    }

    #[test]
    fn conditions_all_hold_and_templates_are_bounded() {
        let rule = JobRule {
            name: "nightly".into(),
            exe: Some("python3".into()),
            cmdline: Some(Regex::new(r"score\.py --run (?P<run>\S+)").unwrap()),
            env: vec!["MODEL_VERSION".into()],
            span_name: "batch-run {run}".into(),
            attributes: vec![("job.run_id".into(), "{run}".into()), ("x".into(), "{nope}".into())],
            require_context: true,
        };
        let p = proc("python3", "python3 score.py --run r-17");
        assert!(rule.matches(&p, &|_| false).is_none(), "MODEL_VERSION unset");
        let m = rule.matches(&p, &|v| v == "MODEL_VERSION").unwrap();
        assert_eq!((m.name.as_str(), m.require_context), ("batch-run r-17", true));
        assert_eq!(m.attributes, vec![("job.run_id".to_string(), "r-17".to_string())]);
        assert!(rule.matches(&proc("python3.11", "python3 score.py --run r"), &|_| true).is_none());
        let long = "é".repeat(300);
        assert_eq!(expand("{v}", &|_| Some(&long)).len(), 256);
        assert_eq!(expand("a{b", &|_| Some("x")), "a{b");
    }
}
