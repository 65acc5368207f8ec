//! RED metrics end to end: a real HTTP server with known per-route latencies, the agent,
//! a real Prometheus scraping `/metrics` (OpenMetrics, exemplars stored), PromQL over it;
//! and the same metrics pushed over OTLP to the real receiver (HTTP and gRPC).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

/// Requests per (route, tenant) after the warm-up request each; see `send`.
const FAST: usize = 20;
const SLOW: usize = 8;
const FAIL: usize = 5;

fn get(port: u16, path: &str, tenant: &str) {
    let done = run(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "10", "-H", &format!("x-tenant-id: {tenant}")])
            .arg(format!("http://127.0.0.1:{port}{path}")),
        TIMEOUT,
    );
    assert!(done.status.success(), "curl {path}: {done:?}");
}

/// The traffic: `n` requests per route (tenant acme on /fast and /fail, globex on /slow).
fn send(port: u16, fast: usize, slow: usize, fail: usize) {
    for _ in 0..fast {
        get(port, "/fast", "acme");
    }
    for _ in 0..slow {
        get(port, "/slow", "globex");
    }
    for _ in 0..fail {
        get(port, "/fail", "acme");
    }
}

/// A real Prometheus (Debian's) scraping one target every second, with exemplar storage.
struct Prometheus {
    process: Running,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: hoptrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let process = Running::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--enable-feature=exemplar-storage"),
        );
        let p = Prometheus { process, port, _dir: dir };
        let ready = wait_until(READY_TIMEOUT, || {
            Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{port}/-/ready")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(ready, "prometheus never became ready:\n{}", p.process.stderr());
        p
    }

    fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-G", "-m", "10"]);
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        cmd.arg(format!("http://127.0.0.1:{}{path}", self.port));
        let done = run(&mut cmd, TIMEOUT);
        let v: Value =
            serde_json::from_str(&done.stdout).unwrap_or_else(|e| panic!("prometheus said ({e}): {}", done.stdout));
        assert_eq!(v["status"], "success", "{path} {params:?}: {v}");
        v["data"].clone()
    }

    /// An instant query's vector as (labels, value).
    fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api("/api/v1/query", &[("query", q.to_string())]);
        data["result"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                (labels, r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))
            })
            .collect()
    }
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn prometheus_scrapes_metrics_p95_per_route_counts_and_exemplars() {
    require_root();
    let server = PyServer::start("edge_server.py", &["0"]);
    let port = server.port();
    let dir = TempDir::new("metrics");
    let spans_out = dir.join("otlp.jsonl");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["run", "--listen", &listen, "--port", &port.to_string(), "--output"]).arg(&spans_out);
    without_otel_env(&mut cmd);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    assert_eq!(curl_get(&format!("http://{listen}/healthz")).status, 200);
    assert_eq!(curl_get(&format!("http://{listen}/readyz")).status, 200, "ready once probes are attached");

    let prom = Prometheus::start(&listen);
    // Scraped successfully, in OpenMetrics (Prometheus asks for it first): the format parses.
    let up = wait_until(Duration::from_secs(30), || prom.query("up{job=\"hoptrace\"} == 1").len() == 1);
    assert!(
        up,
        "prometheus cannot scrape the agent: {:?}\n{}",
        prom.api("/api/v1/targets", &[]),
        prom.process.stderr()
    );

    // Request counts per (route, tenant, status class) as Prometheus has them, waited for.
    let counts = "sum by (http_route, tenant, http_response_status_class) (http_server_request_duration_seconds_count{job=\"hoptrace\"})";
    let wait_counts = |fast: usize, slow: usize, fail: usize| {
        let expected: BTreeSet<(String, String, String, u64)> =
            [("/fast", "acme", "2xx", fast), ("/slow", "globex", "2xx", slow), ("/fail", "acme", "5xx", fail)]
                .map(|(r, t, c, n)| (r.to_string(), t.to_string(), c.to_string(), n as u64))
                .into();
        let mut got = BTreeSet::new();
        let ok = wait_until(Duration::from_secs(30), || {
            got = prom
                .query(counts)
                .into_iter()
                .map(|(l, v)| {
                    (
                        l["http_route"].clone(),
                        l.get("tenant").cloned().unwrap_or_default(),
                        l["http_response_status_class"].clone(),
                        v as u64,
                    )
                })
                .collect();
            got == expected
        });
        assert!(ok, "request counts per route/tenant/status class in Prometheus:\n{got:?}\nexpected:\n{expected:?}");
    };

    // One request per route first, and Prometheus has scraped them: each series has a
    // sample before the bulk arrives (rate() needs an earlier sample to see the increase).
    send(port, 1, 1, 1);
    wait_counts(1, 1, 1);
    send(port, FAST, SLOW, FAIL);
    wait_counts(FAST + 1, SLOW + 1, FAIL + 1);
    let errors = prom.query("sum by (http_route) (hoptrace_http_server_request_errors_total{job=\"hoptrace\"})");
    let errors: BTreeMap<String, f64> = errors.into_iter().map(|(l, v)| (l["http_route"].clone(), v)).collect();
    assert_eq!(errors.get("/fail"), Some(&((FAIL + 1) as f64)), "{errors:?}");
    assert_eq!(errors.get("/fast"), Some(&0.0), "{errors:?}");

    // p95 per route from the histogram buckets: bounded by the bucket the latency falls in.
    // Prometheus evaluates it once a rate over the bulk exists for both routes.
    let p95q = "histogram_quantile(0.95, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{job=\"hoptrace\"}[1m])))";
    let mut p95: BTreeMap<String, f64> = BTreeMap::new();
    let evaluated = wait_until(Duration::from_secs(30), || {
        p95 = prom.query(p95q).into_iter().map(|(l, v)| (l["http_route"].clone(), v)).collect();
        ["/slow", "/fast"].iter().all(|r| p95.get(*r).is_some_and(|v| v.is_finite()))
    });
    assert!(evaluated, "no p95 for /slow and /fast: {p95:?}");
    eprintln!("PromQL {p95q}\n  = {p95:?}");
    let slow = p95["/slow"];
    let fast = p95["/fast"];
    assert!((0.25..=0.5).contains(&slow), "p95 of /slow (~300 ms) must be in the (0.25, 0.5] bucket, got {slow}");
    assert!(fast > 0.0 && fast < 0.05, "p95 of /fast (~10 ms) must be under 50 ms, got {fast}");
    let p99 = prom.query("histogram_quantile(0.99, sum by (le, http_route, tenant) (rate(http_server_request_duration_seconds_bucket{job=\"hoptrace\"}[1m])))");
    eprintln!("p99 per route and tenant: {p99:?}");
    assert!(
        p99.iter().any(|(l, v)| l["http_route"] == "/slow" && l["tenant"] == "globex" && (0.25..=0.5).contains(v)),
        "{p99:?}"
    );

    // OpenMetrics scraped by hand: the /slow bucket carries an exemplar with a trace id.
    let om = run(
        Command::new("curl")
            .args(["-s", "-i", "-m", "10", "-H", "Accept: application/openmetrics-text; version=1.0.0"])
            .arg(format!("http://{listen}/metrics")),
        TIMEOUT,
    )
    .stdout;
    assert!(om.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
    let exemplar_line = om
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains("http_route=\"/slow\"")
                && l.contains("le=\"0.5\"")
                && l.contains(" # {trace_id=\"")
        })
        .unwrap_or_else(|| panic!("no exemplar on the /slow 0.5 bucket:\n{om}"));
    let trace_id = exemplar_line.split("trace_id=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string();
    assert_eq!(trace_id.len(), 32, "{exemplar_line}");
    let value: f64 =
        exemplar_line.split("} ").last().and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap();
    assert!((0.25..=0.5).contains(&value), "{exemplar_line}");
    // The plain text format has no exemplars.
    let text = curl_get(&format!("http://{listen}/metrics"));
    assert!(text.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", text.headers);
    assert!(!text.body.contains(" # {"), "exemplars in the text format");
    for name in [
        "hoptrace_process_resident_memory_bytes",
        "hoptrace_export_requests_total",
        "hoptrace_ringbuf_size_bytes",
        "hoptrace_ringbuf_used_bytes_max",
        "hoptrace_export_last_request_duration_seconds",
        "hoptrace_metrics_series{metric=\"http.server.request.duration\"} 3",
        "hoptrace_connections_tracked",
        "hoptrace_kernel_drops_total",
        "hoptrace_spans_sampled_total",
    ] {
        assert!(text.body.contains(name), "{name} missing from /metrics:\n{}", text.body);
    }

    // Prometheus stored exemplars too (it scraped OpenMetrics).
    let ex = prom.api(
        "/api/v1/query_exemplars",
        &[
            ("query", "http_server_request_duration_seconds_bucket{http_route=\"/slow\"}".into()),
            ("start", format!("{}", now_s() - 300.0)),
            ("end", format!("{}", now_s() + 5.0)),
        ],
    );
    let stored: BTreeSet<String> = ex
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(String::from))
        .collect();
    assert!(!stored.is_empty(), "Prometheus stored no exemplar for /slow: {ex}");

    // Every exemplar trace id is a span the agent exported.
    agent.signal(libc::SIGINT);
    let done = agent.finish(TIMEOUT);
    assert!(done.status.success(), "{}", done.stderr);
    let spans = parse_spans(&fs::read_to_string(&spans_out).unwrap_or_default());
    let slow_spans: BTreeSet<&str> =
        spans.iter().filter(|s| s.kind == SERVER && s.name == "GET /slow").map(|s| s.trace_id.as_str()).collect();
    assert!(
        slow_spans.contains(trace_id.as_str()),
        "exemplar trace {trace_id} is not an exported /slow span: {slow_spans:?}"
    );
    for t in &stored {
        assert!(slow_spans.contains(t.as_str()), "Prometheus exemplar {t} is not an exported /slow span");
    }
    drop(server);
}

/// `{route: (count, bucket_counts, exemplar trace ids)}` of `http.server.request.duration`
/// in the latest metrics request, plus the error counter per route and the resource's
/// service.name per route.
struct OtlpView {
    count: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    tenant: BTreeMap<String, String>,
    exemplars: BTreeSet<String>,
    service: BTreeMap<String, String>,
    temporality_cumulative: bool,
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str()?.parse().ok()).unwrap_or(0)
}

fn view(request: &Value) -> OtlpView {
    let mut v = OtlpView {
        count: BTreeMap::new(),
        errors: BTreeMap::new(),
        tenant: BTreeMap::new(),
        exemplars: BTreeSet::new(),
        service: BTreeMap::new(),
        temporality_cumulative: true,
    };
    for rm in request["resourceMetrics"].as_array().unwrap_or(&Vec::new()) {
        let res = attributes(&rm["resource"]["attributes"]);
        let service = res.get("service.name").and_then(Value::as_str).unwrap_or_default().to_string();
        for sm in rm["scopeMetrics"].as_array().unwrap_or(&Vec::new()) {
            for m in sm["metrics"].as_array().unwrap_or(&Vec::new()) {
                let name = m["name"].as_str().unwrap_or_default();
                if name == "http.server.request.duration" {
                    v.temporality_cumulative &= m["histogram"]["aggregationTemporality"] == 2;
                    for p in m["histogram"]["dataPoints"].as_array().unwrap_or(&Vec::new()) {
                        let a = attributes(&p["attributes"]);
                        let route = a.get("http.route").and_then(Value::as_str).unwrap_or_default().to_string();
                        *v.count.entry(route.clone()).or_default() += u64_of(&p["count"]);
                        v.tenant
                            .insert(route.clone(), a.get("tenant").and_then(Value::as_str).unwrap_or_default().into());
                        v.service.insert(route, service.clone());
                        for e in p["exemplars"].as_array().unwrap_or(&Vec::new()) {
                            v.exemplars.insert(e["traceId"].as_str().unwrap_or_default().to_string());
                        }
                    }
                }
                if name == "hoptrace.http.server.request.errors" {
                    for p in m["sum"]["dataPoints"].as_array().unwrap_or(&Vec::new()) {
                        let a = attributes(&p["attributes"]);
                        let route = a.get("http.route").and_then(Value::as_str).unwrap_or_default().to_string();
                        *v.errors.entry(route).or_default() += u64_of(&p["asInt"]);
                    }
                }
            }
        }
    }
    v
}

fn otlp_metrics_roundtrip(grpc: bool) {
    require_root();
    let receiver = OtlpReceiver::start();
    let server = PyServer::start("edge_server.py", &["0"]);
    let port = server.port();
    let mut env = vec![("HOPTRACE_METRICS_EXPORT_INTERVAL_MS", "1000".to_string())];
    if grpc {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()));
    } else {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint()));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
    }
    let agent = RunAgent::start(&[port], &["--listen", "off"], env);
    send(port, 3, 0, 2);

    let reqs = receiver.wait_for_metrics(Duration::from_secs(30), "3 /fast and 2 /fail requests", |reqs| {
        reqs.last().is_some_and(|r| {
            let v = view(&r["request"]);
            v.count.get("/fast") == Some(&3) && v.count.get("/fail") == Some(&2)
        })
    });
    let last = reqs.last().unwrap();
    let expected_path =
        if grpc { "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" } else { "/v1/metrics" };
    assert_eq!(last["path"].as_str(), Some(expected_path), "{last}");
    let v = view(&last["request"]);
    assert!(v.temporality_cumulative);
    assert_eq!(v.errors.get("/fail"), Some(&2), "{:?}", v.errors);
    assert_eq!(v.errors.get("/fast"), Some(&0), "{:?}", v.errors);
    assert_eq!(v.tenant.get("/fast").map(String::as_str), Some("acme"));
    assert_eq!(v.service["/fast"], v.service["/fail"]);
    assert!(!v.service["/fast"].is_empty(), "service.name is a resource attribute");
    assert!(!v.exemplars.is_empty(), "no exemplars in {last}");

    let stopped = agent.stop();
    assert!(stopped.log["metrics_export"]["requests_ok"].as_u64() >= Some(1), "{}", stopped.log);
    // Exemplars point at spans the collector received.
    let spans = receiver.wait_for_spans(Duration::from_secs(10), "the server spans", |s| {
        s.iter().filter(|s| s.kind == SPAN_KIND_SERVER).count() >= 5
    });
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    for t in &v.exemplars {
        assert!(traces.contains(t.as_str()), "exemplar {t} is not a received trace");
    }
    // Cumulative: later requests never count less.
    let counts: Vec<u64> = receiver
        .metrics_requests()
        .iter()
        .map(|r| view(&r["request"]).count.get("/fast").copied().unwrap_or(0))
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    drop(server);
}

#[test]
fn otlp_metrics_over_http_protobuf() {
    otlp_metrics_roundtrip(false);
}

#[test]
fn otlp_metrics_over_grpc() {
    otlp_metrics_roundtrip(true);
}

/// Every PromQL expression of the Grafana dashboards (deploy/grafana/dashboards, panel
/// targets and variable queries) and of the alert rules (deploy/alerts) as Prometheus
/// runs it, against the traffic this test makes: each must evaluate, and return data.
/// Dashboard variables become `.*` and `$__rate_interval` 1m; Grafana's
/// `label_values(m, l)` becomes `count by (l) (m)`. An alert's expression must evaluate
/// whole; what must return data is the part before its threshold (`… > 0`), since a
/// healthy agent's drop alerts do not fire, and the sampling alert's comparison with an
/// hour ago has no past in a fresh Prometheus.
#[test]
fn every_dashboard_and_alert_query_returns_data() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", inventory.port())]);
    let dir = TempDir::new("dashboards");
    let cfg = dir.join("hoptrace.yaml");
    fs::write(
        &cfg,
        format!(
            "services:\n  - match: {{ port: {} }}\n    attributes: {{ service.name: front, zone: Z1 }}\n  \
             - match: {{ port: {} }}\n    attributes: {{ service.name: inventory, zone: Z6 }}\n",
            front.port(),
            inventory.port()
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["run", "--listen", &listen, "--config"]).arg(&cfg);
    cmd.args(["--port", &front.port().to_string(), "--port", &inventory.port().to_string(), "--output"]);
    cmd.arg(dir.join("otlp.jsonl"));
    without_otel_env(&mut cmd);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    let prom = Prometheus::start(&listen);
    let traffic = || {
        let url = format!("http://127.0.0.1:{}/orders/1", front.port());
        for tp in ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "not-a-traceparent"] {
            let done = run(
                Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-m", "10", "-H", "x-tenant-id: acme", "-H"])
                    .arg(format!("traceparent: {tp}"))
                    .arg(&url),
                TIMEOUT,
            );
            assert!(done.status.success(), "curl: {done:?}");
        }
    };
    let queries = dashboard_queries().into_iter().chain(alert_queries()).collect::<Vec<_>>();
    assert!(queries.len() >= 30, "{queries:?}");
    let mut empty: Vec<String> = queries.clone();
    let ok = wait_until(Duration::from_secs(60), || {
        traffic();
        empty.retain(|q| prom.query(q).is_empty());
        empty.is_empty()
    });
    assert!(ok, "queries without data after 60 s of traffic:\n{}", empty.join("\n"));
    for q in &queries {
        eprintln!("ok: {q}");
    }
    // The full alert expressions (thresholds included) evaluate.
    for q in alert_exprs() {
        prom.api("/api/v1/query", &[("query", q)]);
    }
    drop(prom);
    agent.signal(libc::SIGINT);
    agent.finish(TIMEOUT);
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Panel targets and variable queries of every dashboard, variables filled in.
fn dashboard_queries() -> Vec<String> {
    let mut out = Vec::new();
    let dir = repo_file("deploy/grafana/dashboards");
    let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let d: Value = serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(fill(t["expr"].as_str().unwrap()));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
            let q = v["query"]["query"].as_str().unwrap();
            let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).expect(q);
            let (metric, label) = inner.rsplit_once(',').unwrap();
            out.push(fill(&format!("count by ({}) ({metric})", label.trim())));
        }
    }
    out
}

fn fill(expr: &str) -> String {
    let mut e = expr.replace("$__rate_interval", "1m");
    for v in ["$service", "$route", "$tenant", "$client"] {
        e = e.replace(v, ".*");
    }
    assert!(!e.contains('$'), "unknown variable in {expr}");
    e
}

/// Every alert rule's expression (deploy/alerts/hoptrace-rules.yaml, read with PyYAML).
fn alert_exprs() -> Vec<String> {
    let python = repo_file("target/pyenv/bin/python");
    let rules = repo_file("deploy/alerts/hoptrace-rules.yaml");
    let done = run(
        Command::new(python)
            .args(["-c", "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
            .arg(rules),
        TIMEOUT,
    );
    let v: Value = serde_json::from_str(&done.stdout).unwrap_or_else(|e| panic!("{e}: {done:?}"));
    let exprs: Vec<String> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 7, "{exprs:?}");
    exprs
}

/// The alert expressions up to their last top-level comparison.
fn alert_queries() -> Vec<String> {
    alert_exprs().iter().map(|e| before_threshold(e).to_string()).collect()
}

/// `expr` up to its last comparison operator outside (), {}, [] and quotes.
fn before_threshold(expr: &str) -> &str {
    let b = expr.as_bytes();
    let (mut depth, mut quoted, mut cut) = (0i32, false, None);
    for i in 0..b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            _ if quoted => {}
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b'>' | b'<' if depth == 0 => cut = Some(i),
            b'=' | b'!' if depth == 0 && b.get(i + 1) == Some(&b'=') => cut = Some(i),
            _ => {}
        }
    }
    cut.map_or(expr, |i| expr[..i].trim_end())
}
