//! Batch jobs and the environment trace carrier on the real kernel (issue 19), exported to
//! the real OTLP receiver: a process started with `TRACEPARENT` continues that trace; a
//! job runner started with Airflow's exact task-runner command line gets a root span with
//! its run id from exec to exit, its partitions (child processes matching a configured
//! rule) as child job spans and their HTTP calls under those; exit code 1 is an error; a
//! job killed mid-request has its open CLIENT span closed with an error. The job runner
//! is a stdlib script named `airflow` (tests/fixtures/jobs/airflow), not Airflow itself.

use std::{process::Command, time::Duration};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const DELIVERY: Duration = Duration::from_secs(30);
const INTERNAL: u64 = 1;
const STATUS_ERROR: u64 = 2;

/// The agent exporting to `receiver` over gRPC, with `config` as its configuration file.
fn agent(receiver: &OtlpReceiver, ports: &[u16], config: &str, dir: &TempDir, listen: u16) -> RunAgent {
    let path = dir.join("hoptrace.yaml");
    std::fs::write(&path, config).unwrap();
    let [l, a] = listen_args(listen);
    let args = ["--config", path.to_str().unwrap(), &l, &a];
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())];
    RunAgent::start(ports, &args, env)
}

/// A span as the receiver recorded it (for `status`, which `OtlpSpan` omits).
fn raw_span(receiver: &OtlpReceiver, span_id: &str) -> Value {
    for req in receiver.requests() {
        for rs in req["request"]["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    if s["spanId"] == span_id {
                        return s.clone();
                    }
                }
            }
        }
    }
    panic!("span {span_id} not received");
}

fn status_code(span: &Value) -> u64 {
    span["status"]["code"].as_u64().unwrap_or(0)
}

fn calls_to(spans: &[OtlpSpan], port: u16) -> Vec<&OtlpSpan> {
    spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT && int(s.attrs.get("server.port")) == Some(port.into()))
        .collect()
}

fn jobs<'a>(spans: &'a [OtlpSpan], name: &str) -> Vec<&'a OtlpSpan> {
    spans.iter().filter(|s| s.kind == INTERNAL && s.name == name).collect()
}

fn airflow(run_id: &str, url: &str, mode: &str) -> Command {
    let mut cmd = Command::new(fixture("jobs/airflow"));
    cmd.args(["tasks", "run", "scoring", "score_partitions", run_id, "--local", "--subdir", "DAGS_FOLDER/scoring.py"]);
    cmd.env("JOB_URL", url).env("JOB_MODE", mode).env("MODEL_VERSION", "fraud-7.3.1");
    without_otel_env(&mut cmd);
    cmd
}

#[test]
fn environment_traceparent_parents_a_plain_process_calls_and_nothing_else_leaves() {
    require_root();
    let server = PyServer::start("chain_service.py", &["0"]);
    let receiver = OtlpReceiver::start();
    let dir = TempDir::new("jobs-env");
    let listen = free_port();
    let agent = agent(&receiver, &[server.port()], "jobs:\n  environment_context: true\n", &dir, listen);
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let secret = "hunter2-s3cr3t-env-value";
    let mut curl = Command::new("curl");
    curl.args(["-sf", &format!("http://127.0.0.1:{}/env-carrier", server.port())]);
    curl.env("TRACEPARENT", format!("00-{trace}-{parent}-01")).env("TRACESTATE", "vendor=opaque");
    curl.env("DB_PASSWORD", secret);
    run(&mut curl, TIMEOUT).expect_success();
    let spans = receiver.wait_for_spans(DELIVERY, "curl's CLIENT span", |s| !calls_to(s, server.port()).is_empty());
    let call = calls_to(&spans, server.port())[0];
    assert_eq!((call.trace_id.as_str(), call.parent_span_id.as_str()), (trace, parent), "{}", show_spans(&spans));
    let m = wait_metrics(listen, TIMEOUT, "the valid environment context", |m| {
        m.get("hoptrace_env_context_total{result=\"valid\"}") >= 1
    });
    let stopped = agent.stop();
    // The environment's other variables never leave: not in spans, logs or metrics.
    for (what, text) in [("spans", receiver.raw()), ("agent log", stopped.stderr.clone()), ("metrics", m.0)] {
        assert!(!text.contains(secret), "the secret environment value is in the {what}");
        assert!(!text.contains("DB_PASSWORD"), "the secret variable's name is in the {what}");
    }
}

#[test]
fn airflow_command_line_job_is_a_root_span_with_partition_children_and_exit_status() {
    require_root();
    let server = PyServer::start("chain_service.py", &["0"]);
    let receiver = OtlpReceiver::start();
    let dir = TempDir::new("jobs-airflow");
    let listen = free_port();
    let config = "jobs:\n  env_attributes:\n    MODEL_VERSION: model.version\n  rules:\n    - name: partition\n      \
                  match:\n        cmdline: 'partition\\.py \\S+ (?P<partition>\\d+)'\n      span_name: 'score partition \
                  {partition}'\n      attributes:\n        scoring.partition: '{partition}'\n";
    let agent = agent(&receiver, &[server.port()], config, &dir, listen);
    let url = format!("http://127.0.0.1:{}", server.port());
    let (trace, parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let run_ok = "manual__2026-12-03T05:00:00+00:00";
    let mut ok = airflow(run_ok, &url, "ok");
    ok.env("TRACEPARENT", format!("00-{trace}-{parent}-01"));
    run(&mut ok, TIMEOUT).expect_success();
    let run_fail = "scheduled__2026-12-03T06:00:00+00:00";
    let failed = run(&mut airflow(run_fail, &url, "fail"), TIMEOUT);
    assert_eq!(failed.status.code(), Some(1));

    let name = "batch-run scoring.score_partitions";
    let spans = receiver.wait_for_spans(DELIVERY, "two job runs, four partitions, four calls", |s| {
        jobs(s, name).len() == 2
            && calls_to(s, server.port()).len() == 4
            && s.iter().filter(|x| x.kind == INTERNAL).count() == 6
    });
    let all = show_spans(&spans);
    for (run_id, ok_run) in [(run_ok, true), (run_fail, false)] {
        let job = *jobs(&spans, name)
            .iter()
            .find(|j| j.attrs.get("job.run_id") == Some(&Value::from(run_id)))
            .expect(all.as_str());
        assert_eq!(job.attrs.get("airflow.dag.id"), Some(&Value::from("scoring")));
        assert_eq!(job.attrs.get("airflow.task.id"), Some(&Value::from("score_partitions")));
        assert_eq!(job.attrs.get("airflow.run.id"), Some(&Value::from(run_id)));
        assert_eq!(job.attrs.get("model.version"), Some(&Value::from("fraud-7.3.1")));
        let raw = raw_span(&receiver, &job.span_id);
        if ok_run {
            // Started with TRACEPARENT: the job continues that trace.
            assert_eq!((job.trace_id.as_str(), job.parent_span_id.as_str()), (trace, parent), "{all}");
            assert_eq!(status_code(&raw), 0, "{raw}");
            assert_eq!(int(job.attrs.get("process.exit.code")), Some(0));
        } else {
            assert_eq!(job.parent_span_id, "", "no context: the job is the root\n{all}");
            assert_eq!(status_code(&raw), STATUS_ERROR, "{raw}");
            assert_eq!(raw["status"]["message"], "exit code 1");
            assert_eq!(int(job.attrs.get("process.exit.code")), Some(1));
        }
        // Each partition is a child job span, and its call is the partition's child.
        let parts: Vec<&OtlpSpan> = spans
            .iter()
            .filter(|s| s.name.starts_with("score partition ") && s.parent_span_id == job.span_id)
            .collect();
        assert_eq!(parts.len(), 2, "{all}");
        for p in &parts {
            assert_eq!(p.trace_id, job.trace_id);
            assert!(job.start <= p.start && p.end <= job.end, "partition inside the run\n{all}");
            let calls: Vec<_> =
                calls_to(&spans, server.port()).into_iter().filter(|c| c.parent_span_id == p.span_id).collect();
            assert_eq!(calls.len(), 1, "{all}");
            assert_eq!(calls[0].trace_id, job.trace_id);
        }
    }
    wait_metrics(listen, TIMEOUT, "job counters", |m| {
        m.get("hoptrace_jobs_started_total") == 6 && m.get("hoptrace_jobs_ended_total") == 6
    });
    drop(agent);
}

#[test]
fn job_killed_mid_request_ends_its_open_call_with_an_error() {
    require_root();
    let mut hang = Running::spawn(python("jobs/hang_server.py").arg("0"));
    let port: u16 = hang.wait_for_line("READY ", TIMEOUT)["READY ".len()..].parse().unwrap();
    let receiver = OtlpReceiver::start();
    let dir = TempDir::new("jobs-killed");
    // A configured rule for the same command line, tried before the built-in one, says the
    // run must have trace context: started without, it is a gap of the job.
    let config = "jobs:\n  rules:\n    - name: strict\n      match:\n        cmdline: 'airflow tasks run \
                  (?P<dag>\\S+) (?P<task>\\S+) (?P<run>\\S+)'\n      span_name: 'batch-run {dag}.{task}'\n      \
                  attributes:\n        job.run_id: '{run}'\n      require_context: true\n";
    let listen = free_port();
    let agent = agent(&receiver, &[port], config, &dir, listen);
    let mut job = Running::spawn(&mut airflow("manual__killed", &format!("http://127.0.0.1:{port}"), "hang"));
    job.wait_for_line("CALLING", TIMEOUT);
    hang.wait_for_line("GOT", TIMEOUT);
    job.signal(libc::SIGKILL);
    let spans = receiver.wait_for_spans(DELIVERY, "the job span and its cut call", |s| {
        !calls_to(s, port).is_empty() && !jobs(s, "batch-run scoring.score_partitions").is_empty()
    });
    let all = show_spans(&spans);
    let run = jobs(&spans, "batch-run scoring.score_partitions")[0];
    let call = calls_to(&spans, port)[0];
    assert_eq!(
        (call.trace_id.as_str(), call.parent_span_id.as_str()),
        (run.trace_id.as_str(), run.span_id.as_str()),
        "{all}"
    );
    let raw_call = raw_span(&receiver, &call.span_id);
    assert_eq!(status_code(&raw_call), STATUS_ERROR, "{raw_call}");
    assert!(call.end <= run.end, "the call ends by the exit\n{all}");
    let raw_run = raw_span(&receiver, &run.span_id);
    assert_eq!(status_code(&raw_run), STATUS_ERROR, "{raw_run}");
    assert_eq!(raw_run["status"]["message"], "killed by signal 9");
    assert_eq!(int(run.attrs.get("hoptrace.process.exit.signal")), Some(9));
    assert_eq!(run.attrs.get("hoptrace.job.rule"), Some(&Value::from("strict")));
    assert_eq!(run.attrs.get("hoptrace.gap.kind"), Some(&Value::from("missing_inbound_context")), "{all}");
    let gaps: Value = serde_json::from_str(&http_get_body(listen, "/gaps")).unwrap();
    let rows = gaps["gaps"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "missing_inbound_context" && r["route"] == "batch-run scoring.score_partitions"),
        "{gaps}"
    );
    drop(agent);
}

/// `target/airflow-venv/bin/airflow` (made by `cargo xtask setup` from
/// tests/requirements-airflow.txt), with AIRFLOW_HOME in `home` (SQLite metadata DB).
fn real_airflow(home: &TempDir, url: &str) -> Command {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/airflow-venv/bin/airflow");
    assert!(bin.exists(), "no Airflow at {}: run `cargo xtask setup`", bin.display());
    let mut cmd = Command::new(bin);
    cmd.env("AIRFLOW_HOME", home.path()).env("AIRFLOW__CORE__LOAD_EXAMPLES", "False");
    cmd.env("AIRFLOW__CORE__DAGS_FOLDER", home.join("dags")).env("JOB_URL", url);
    without_otel_env(&mut cmd);
    cmd
}

/// Real Apache Airflow: `airflow tasks test` of a DAG whose task scores two partitions
/// through an HTTP service. The run is one job root span named after the DAG and task,
/// with the run's id from the command line; both partition calls are its children.
#[test]
fn real_airflow_tasks_test_is_one_job_span_with_its_calls_as_children() {
    require_root();
    let server = PyServer::start("chain_service.py", &["0"]);
    let url = format!("http://127.0.0.1:{}", server.port());
    let home = TempDir::new("jobs-real-airflow");
    std::fs::create_dir_all(home.join("dags")).unwrap();
    std::fs::copy(fixture("jobs/scoring_dag.py"), home.join("dags/scoring.py")).unwrap();
    // The metadata DB first (not a task run: no job).
    run(real_airflow(&home, &url).args(["db", "migrate"]), Duration::from_secs(180)).expect_success();
    let receiver = OtlpReceiver::start();
    let agent = agent(&receiver, &[server.port()], "jobs:\n  airflow: true\n", &home, free_port());
    let run_id = "2026-12-03";
    let done = run(
        real_airflow(&home, &url).args(["tasks", "test", "scoring", "score_partitions", run_id]),
        Duration::from_secs(180),
    );
    assert!(done.stdout.contains("score_partitions") || done.stderr.contains("score_partitions"), "{done:#?}");
    let name = "batch-run scoring.score_partitions";
    let spans = receiver.wait_for_spans(DELIVERY, "the task run and its two calls", |s| {
        jobs(s, name).len() == 1 && calls_to(s, server.port()).len() == 2
    });
    let all = show_spans(&spans);
    let job = jobs(&spans, name)[0];
    assert_eq!(job.parent_span_id, "", "{all}");
    assert_eq!(job.attrs.get("job.run_id"), Some(&Value::from(run_id)), "{all}");
    assert_eq!(job.attrs.get("airflow.dag.id"), Some(&Value::from("scoring")));
    let code = done.status.code().expect("exited");
    assert_eq!(int(job.attrs.get("process.exit.code")), Some(code.into()), "the exit status is the process's");
    let expected_status = if code == 0 { 0 } else { STATUS_ERROR };
    assert_eq!(status_code(&raw_span(&receiver, &job.span_id)), expected_status);
    for call in calls_to(&spans, server.port()) {
        assert_eq!(
            (call.trace_id.as_str(), call.parent_span_id.as_str()),
            (job.trace_id.as_str(), job.span_id.as_str()),
            "{all}"
        );
        assert!(job.start <= call.start && call.end <= job.end, "{all}");
    }
    drop(agent);
}
