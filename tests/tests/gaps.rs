//! Propagation gaps on the real kernel: every deliberate break found with the right kind,
//! service, peer and route; zero gaps on a clean path; `hoptrace check` exit codes; the
//! `/gaps` and `/metrics` endpoints.

use std::{fs, process::Command, time::Duration};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Config naming the two services by the port they listen on.
fn mesh_config(dir: &TempDir, front: u16, inventory: u16) -> std::path::PathBuf {
    let path = dir.join("hoptrace.yaml");
    fs::write(
        &path,
        format!(
            "services:\n  - match: {{ port: {front} }}\n    attributes: {{ service.name: front, zone: Z1 }}\n  \
             - match: {{ port: {inventory} }}\n    attributes: {{ service.name: inventory, zone: Z6 }}\n"
        ),
    )
    .unwrap();
    path
}

fn curl(args: &[&str]) -> Command {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "5"]).args(args);
    c
}

/// Rows of the check table: (kind, service, zone, peer, route, count).
fn table_rows(stdout: &str) -> Vec<(String, String, String, String, String, u64)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("KIND"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 7)
                .then(|| (f[0].into(), f[1].into(), f[2].into(), f[3].into(), f[4].into(), f[5].parse().unwrap()))
        })
        .collect()
}

#[test]
fn check_finds_every_broken_hop_and_fails_the_gate() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", inventory.port())]);
    let dir = TempDir::new("gaps-check");
    let config = mesh_config(&dir, front.port(), inventory.port());
    let script = format!(
        "curl -s -m 5 -H 'traceparent: 00-{TRACE}-00f067aa0ba902b7-01' http://127.0.0.1:{f}/orders/1 >/dev/null && \
         curl -s -m 5 -H 'traceparent: 00-{upper}-00F067AA0BA902B7-01' http://127.0.0.1:{f}/x >/dev/null",
        f = front.port(),
        upper = TRACE.to_uppercase()
    );
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["check", "--config"]).arg(&config);
    cmd.args(["--port", &front.port().to_string(), "--port", &inventory.port().to_string()]);
    cmd.args(["--", "sh", "-c", &script]);
    let done = run(&mut cmd, Duration::from_secs(60));
    assert_eq!(
        done.status.code(),
        Some(2),
        "gaps must fail the gate\nstdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );

    let mut rows = table_rows(&done.stdout);
    rows.sort();
    let row =
        |k: &str, s: &str, z: &str, p: &str, r: &str, n: u64| (k.into(), s.into(), z.into(), p.into(), r.into(), n);
    let expected = vec![
        // front got context from curl and called inventory without it.
        row("dropped_outbound_context", "front", "Z1", "inventory", "/items/{id}", 1),
        // front got a malformed header (its peer is curl, a process on this node).
        row("invalid_context", "front", "Z1", "curl", "/x", 1),
        // inventory (not an entry point) got both calls from front without context.
        row("missing_inbound_context", "inventory", "Z6", "front", "/items/{id}", 2),
    ];
    assert_eq!(rows, expected, "stdout:\n{}", done.stdout);
    assert!(done.stdout.contains(TRACE), "an example trace id names the broken trace:\n{}", done.stdout);
}

#[test]
fn a_service_starting_a_new_trace_is_a_restarted_context() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    let front =
        PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", inventory.port()), "restart"]);
    let dir = TempDir::new("gaps-restart");
    let config = mesh_config(&dir, front.port(), inventory.port());
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["check", "--max-gaps", "5", "--config"]).arg(&config);
    cmd.args(["--port", &front.port().to_string(), "--port", &inventory.port().to_string()]);
    cmd.args(["--", "curl", "-sf", "-m", "5", "-H", &format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01")]);
    cmd.arg(format!("http://127.0.0.1:{}/orders/9", front.port()));
    let done = run(&mut cmd, Duration::from_secs(60));
    // One gap, within --max-gaps 5: reported, but the gate passes.
    assert_eq!(done.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", done.stdout, done.stderr);
    let rows = table_rows(&done.stdout);
    assert_eq!(
        rows,
        vec![("restarted_context".into(), "front".into(), "Z1".into(), "inventory".into(), "/items/{id}".into(), 1)],
        "inventory got context (a new trace), so only the restart is a gap:\n{}",
        done.stdout
    );
}

#[test]
fn clean_path_through_a_forwarding_proxy_passes_the_gate() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    // nginx as a transparent proxy: it forwards traceparent as it received it.
    let nginx =
        Nginx::start(free_port(), &format!("location / {{ proxy_pass http://127.0.0.1:{}; }}", inventory.port()));
    let dir = TempDir::new("gaps-clean");
    let config = mesh_config(&dir, nginx.port(), inventory.port());
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["check", "--config"]).arg(&config);
    cmd.args(["--port", &nginx.port().to_string(), "--port", &inventory.port().to_string()]);
    cmd.args(["--", "curl", "-sf", "-m", "5", "-H", &format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01")]);
    cmd.arg(format!("http://127.0.0.1:{}/items/3", nginx.port()));
    let done = run(&mut cmd, Duration::from_secs(60));
    assert_eq!(done.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("no broken hops"), "{}", done.stdout);
    // It did see the traffic: a check that saw nothing would pass vacuously.
    let seen: u64 = done
        .stdout
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(seen >= 2, "expected the proxy and inventory exchanges: {}", done.stdout);
}

#[test]
fn sdk_to_nginx_to_sdk_has_no_gaps() {
    require_root();
    let receiver = OtlpReceiver::start();
    let leaf = PyServer::start_venv("sdk_app.py", &["0", "http://127.0.0.1:9", &receiver.http_traces_url()]);
    let nginx = Nginx::start(free_port(), &format!("location / {{ proxy_pass http://127.0.0.1:{}; }}", leaf.port()));
    let front = PyServer::start_venv(
        "sdk_app.py",
        &["0", &format!("http://127.0.0.1:{}", nginx.port()), &receiver.http_traces_url()],
    );
    let dir = TempDir::new("gaps-sdk");
    let config = dir.join("hoptrace.yaml");
    fs::write(
        &config,
        format!(
            "services:\n  - match: {{ port: {} }}\n    attributes: {{ service.name: checkout-sdk, zone: Z1 }}\n  \
             - match: {{ port: {} }}\n    attributes: {{ service.name: gateway, zone: Z2 }}\n  \
             - match: {{ port: {} }}\n    attributes: {{ service.name: items-sdk, zone: Z6 }}\n",
            front.port(),
            nginx.port(),
            leaf.port()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["check", "--config"]).arg(&config);
    for p in [front.port(), nginx.port(), leaf.port()] {
        cmd.args(["--port", &p.to_string()]);
    }
    cmd.args(["--", "curl", "-sf", "-m", "10", &format!("http://127.0.0.1:{}/checkout", front.port())]);
    let done = run(&mut cmd, Duration::from_secs(90));
    assert_eq!(done.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("no broken hops"), "{}", done.stdout);
    let seen: u64 = done
        .stdout
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(seen >= 4, "curl→checkout, checkout→nginx, nginx→items (both sides): {}", done.stdout);
}

fn http_get(port: u16, path: &str) -> String {
    let out =
        Command::new("curl").args(["-sf", "-m", "5", &format!("http://127.0.0.1:{port}{path}")]).output().unwrap();
    assert!(out.status.success(), "GET {path} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn running_agent_serves_gaps_and_metrics_and_marks_spans() {
    require_root();
    let inventory = PyServer::start("chain_service.py", &["0"]);
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", inventory.port())]);
    let dir = TempDir::new("gaps-run");
    let config = mesh_config(&dir, front.port(), inventory.port());
    let out = dir.join("otlp.jsonl");
    let listen = free_port();
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["run", "--config"]).arg(&config).arg("--output").arg(&out);
    cmd.args(["--listen", &format!("127.0.0.1:{listen}")]);
    cmd.args(["--port", &front.port().to_string(), "--port", &inventory.port().to_string()]);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);

    run(
        &mut curl(&[
            "-H",
            &format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01"),
            &format!("http://127.0.0.1:{}/orders/1", front.port()),
        ]),
        TIMEOUT,
    );
    let mut gaps = Value::Null;
    assert!(
        wait_until(TIMEOUT, || {
            gaps = serde_json::from_str(&http_get(listen, "/gaps")).unwrap();
            gaps["total"].as_u64() >= Some(2)
        }),
        "gaps never showed up: {gaps}"
    );
    let rows = gaps["gaps"].as_array().unwrap();
    let dropped = rows.iter().find(|r| r["kind"] == "dropped_outbound_context").unwrap_or_else(|| panic!("{gaps}"));
    assert_eq!((dropped["service"].as_str(), dropped["peer_service"].as_str()), (Some("front"), Some("inventory")));
    assert_eq!(dropped["example_trace_id"], TRACE);
    assert!(rows.iter().any(|r| r["kind"] == "missing_inbound_context" && r["service"] == "inventory"), "{gaps}");

    let metrics = http_get(listen, "/metrics");
    assert!(
        metrics.contains(r#"hoptrace_propagation_gaps_total{kind="dropped_outbound_context",service="front",zone="Z1",peer_service="inventory",route="/items/{id}"} 1"#),
        "{metrics}"
    );
    assert_eq!(http_get(listen, "/readyz"), "ready\n");

    wait_for_spans_in(&out, "front's CLIENT span and inventory's SERVER span", |s| {
        s.iter().any(|s| s.kind == CLIENT && s.service == "front")
            && s.iter().any(|s| s.kind == SERVER && s.service == "inventory")
    });
    let done = stop(agent);
    // The gap is named on the spans themselves: front's CLIENT call and inventory's SERVER span.
    let spans = parse_spans(&fs::read_to_string(&out).unwrap());
    let kind_of = |s: &Span| s.attrs.get("hoptrace.gap.kind").and_then(Value::as_str).map(String::from);
    let client =
        spans.iter().find(|s| s.kind == CLIENT && s.service == "front").unwrap_or_else(|| panic!("{}", show(&spans)));
    assert_eq!(kind_of(client).as_deref(), Some("dropped_outbound_context"));
    assert!(client.events.iter().any(|(n, _)| n == "propagation_gap"));
    let inv = spans
        .iter()
        .find(|s| s.kind == SERVER && s.service == "inventory")
        .unwrap_or_else(|| panic!("{}", show(&spans)));
    assert_eq!(kind_of(inv).as_deref(), Some("missing_inbound_context"));
    // One JSON log line per broken hop, joined to its trace.
    let logged: Vec<Value> = done
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == "trace context lost on a hop")
        .collect();
    assert!(
        logged.iter().any(|v| v["kind"] == "dropped_outbound_context" && v["trace_id"] == TRACE),
        "{}",
        done.stderr
    );
}

/// A real Alertmanager on a free port, plain HTTP or HTTPS (its `--web.config.file` TLS
/// with a self-signed certificate, trusted by the agent through `--alertmanager-ca-file`).
struct Alertmanager {
    _process: Running,
    url: String,
    /// curl's trust for HTTPS.
    curl_tls: Vec<String>,
}

impl Alertmanager {
    fn start(dir: &TempDir, tls: bool) -> Alertmanager {
        let am_config = dir.join("alertmanager.yml");
        fs::write(&am_config, "route:\n  receiver: blackhole\n  group_wait: 0s\nreceivers:\n  - name: blackhole\n")
            .unwrap();
        let port = free_port();
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", am_config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=");
        let mut curl_tls = Vec::new();
        if tls {
            let (cert, key) = (dir.join("am-cert.pem"), dir.join("am-key.pem"));
            self_signed_cert(&cert, &key);
            let web = dir.join("web.yml");
            let yaml = format!("tls_server_config:\n  cert_file: {}\n  key_file: {}\n", cert.display(), key.display());
            fs::write(&web, yaml).unwrap();
            cmd.arg(format!("--web.config.file={}", web.display()));
            curl_tls = vec!["--cacert".into(), cert.display().to_string()];
        }
        let url = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        let am = Alertmanager { _process: Running::spawn(&mut cmd), url, curl_tls };
        assert!(
            wait_until(TIMEOUT, || am
                .curl(&["-sf", "-m", "1", &format!("{}/-/ready", am.url)])
                .is_ok_and(|o| o.status.success())),
            "alertmanager never became ready on {}",
            am.url
        );
        am
    }

    fn curl(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("curl").args(&self.curl_tls).args(args).output()
    }

    /// Alertmanager's current alerts (`GET /api/v2/alerts`, active ones by default).
    /// Panics unless Alertmanager answers with a list: an unreachable or failing
    /// Alertmanager must not read as "no alerts", which is what the resolve check waits for.
    fn alerts(&self) -> Vec<Value> {
        let url = format!("{}/api/v2/alerts?active=true", self.url);
        let mut cmd = Command::new("curl");
        cmd.args(&self.curl_tls).args(["-sS", "--fail", "-m", "3", &url]);
        let done = run(&mut cmd, TIMEOUT);
        assert!(done.status.success(), "Alertmanager did not answer GET {url}: {}", done.stderr);
        let alerts: Value = serde_json::from_str(&done.stdout)
            .unwrap_or_else(|e| panic!("Alertmanager answered GET {url} with non-JSON ({e}): {}", done.stdout));
        alerts
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("Alertmanager answered GET {url} with {alerts}, not a list"))
    }
}

#[test]
fn gap_alert_reaches_a_real_alertmanager_and_resolves() {
    alert_fires_and_resolves(false);
}

/// The same over HTTPS: rustls, trusting the Alertmanager's certificate via
/// `--alertmanager-ca-file` (without it the handshake fails and nothing arrives).
#[test]
fn gap_alert_reaches_alertmanager_over_https() {
    alert_fires_and_resolves(true);
}

fn alert_fires_and_resolves(tls: bool) {
    require_root();
    let dir = TempDir::new("alertmanager");
    let am = Alertmanager::start(&dir, tls);

    let inventory = PyServer::start("chain_service.py", &["0"]);
    let front = PyServer::start("chain_service.py", &["0", &format!("http://127.0.0.1:{}", inventory.port())]);
    let config = mesh_config(&dir, front.port(), inventory.port());
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["run", "--listen", "off", "--output", "/dev/null", "--config"]).arg(&config);
    cmd.args(["--alertmanager", &am.url, "--alert-window", "4", "--alert-resend", "1"]);
    if tls {
        cmd.args(["--alertmanager-ca-file", &dir.join("am-cert.pem").display().to_string()]);
    }
    cmd.args(["--port", &front.port().to_string(), "--port", &inventory.port().to_string()]);
    let mut agent = Running::spawn(&mut cmd);
    agent.wait_for_stderr("\"msg\":\"ready\"", READY_TIMEOUT);
    run(
        &mut curl(&[
            "-H",
            &format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01"),
            &format!("http://127.0.0.1:{}/orders/1", front.port()),
        ]),
        TIMEOUT,
    );

    let is_ours = |a: &Value| {
        a["labels"]["alertname"] == "HoptracePropagationGap"
            && a["labels"]["kind"] == "dropped_outbound_context"
            && a["labels"]["service"] == "front"
            && a["labels"]["peer_service"] == "inventory"
    };
    let mut seen = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen = am.alerts();
            seen.iter().any(|a| is_ours(a) && a["status"]["state"] == "active")
        }),
        "the gap alert never became active in Alertmanager: {seen:?}\nagent stderr:\n{}",
        agent.stderr()
    );
    let ours = seen.iter().find(|a| is_ours(a)).unwrap();
    assert_eq!(ours["annotations"]["example_trace_id"], TRACE);
    assert_eq!(ours["labels"]["route"], "/items/{id}");

    // No new gaps for a whole window: the agent resolves it and Alertmanager drops it.
    assert!(
        wait_until(Duration::from_secs(30), || !am.alerts().iter().any(&is_ours)),
        "the alert never resolved: {:?}",
        am.alerts()
    );
    let done = stop(agent);
    assert!(!done.stderr.contains("alert push to alertmanager failed"), "{}", done.stderr);
}

/// A CA file that holds no certificate, or one given for a plain-HTTP URL, stops the agent
/// at startup with a message naming the option (not as failed pushes later).
#[test]
fn a_bad_alertmanager_ca_file_is_refused_at_startup() {
    let dir = TempDir::new("alertmanager-ca");
    let junk = dir.join("junk.pem");
    fs::write(&junk, "not a certificate\n").unwrap();
    for (url, expect) in [("https://127.0.0.1:1", "no PEM certificate"), ("http://127.0.0.1:1", "is not https")] {
        let done = run(
            Command::new(hoptrace_bin())
                .args(["run", "--listen", "off", "--output", "/dev/null", "--alertmanager", url])
                .args(["--alertmanager-ca-file", junk.to_str().unwrap()]),
            TIMEOUT,
        );
        assert!(!done.status.success(), "{url}: {}", done.stderr);
        assert!(done.stderr.contains(expect) && done.stderr.contains("alertmanager"), "{url}: {}", done.stderr);
    }
}
