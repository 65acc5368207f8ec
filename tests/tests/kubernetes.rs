//! Kubernetes metadata end to end: `hoptrace run` watches a Kubernetes API (the fixture
//! `fake_kube_api.py` serves real PodList / watch-event JSON, checks the bearer token and
//! the node's field selector, pages its lists, sends bookmarks, and expires versions with
//! 410 Gone) over TLS, found as a pod finds it (KUBERNETES_SERVICE_HOST/PORT, the CA and
//! token files, K8S_NODE_NAME), and real Python servers run in real cgroups laid out as the kubelet lays them
//! out (systemd driver + containerd on cgroup v2; cgroupfs driver on a v1 hierarchy when the
//! machine has one). Their SERVER spans must carry the pod's metadata.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::*;
use hoptrace_e2e::*;
use serde_json::{json, Value};

const NODE: &str = "node-a";

/// A cgroup directory made for the test (parents created as needed), removed on drop
/// after moving whatever still runs in it back to the hierarchy's root.
struct Cgroup {
    root: PathBuf,
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl Cgroup {
    fn create(root: &Path, rel: &str) -> Cgroup {
        let mut created = Vec::new();
        let mut dir = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        Cgroup { root: root.to_path_buf(), created, leaf: dir }
    }

    fn add(&self, pid: u32) {
        fs::write(self.leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.leaf.display()));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for pid in fs::read_to_string(self.leaf.join("cgroup.procs")).unwrap_or_default().lines() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid);
        }
        for dir in self.created.iter().rev() {
            // A killed process leaves its cgroup once reaped: retry briefly.
            wait_until(Duration::from_secs(5), || fs::remove_dir(dir).is_ok() || !dir.exists());
        }
    }
}

/// Mount point of the cgroup v2 hierarchy, and of the v1 `pids` one when there is one.
fn cgroup_mounts() -> (PathBuf, Option<PathBuf>) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mut v2 = None;
    let mut v1_pids = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        match f.get(2) {
            Some(&"cgroup2") => v2 = v2.or(Some(PathBuf::from(f[1]))),
            Some(&"cgroup") if f[3].split(',').any(|o| o == "pids") => v1_pids = Some(PathBuf::from(f[1])),
            _ => {}
        }
    }
    (v2.expect("no cgroup2 hierarchy mounted"), v1_pids)
}

/// A pod as the API serves it.
fn pod(uid: &str, name: &str, node: &str, cid: &str, labels: Value, annotations: Value, owner: (&str, &str)) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "resourceVersion": "1",
            "creationTimestamp": "2026-11-24T21:00:00Z",
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                                 "uid": "6a4d1c2e-0000-4000-8000-000000000001", "controller": true,
                                 "blockOwnerDeletion": true}],
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.7",
                   "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "app:1",
                                          "imageID": "sha256:00", "containerID": format!("containerd://{cid}"),
                                          "started": true, "state": {"running": {"startedAt": "2026-11-24T21:00:01Z"}}}]},
    })
}

/// The fixture's control endpoints, over its TLS.
struct Api {
    server: PyServer,
    ca: PathBuf,
}

impl Api {
    fn curl(&self, method: &str, path: &str, body: &str) -> String {
        let url = format!("https://127.0.0.1:{}{path}", self.server.port());
        let ca = self.ca.to_str().unwrap();
        run(Command::new("curl").args(["-sSf", "--cacert", ca, "-X", method, "--data-binary", body, &url]), TIMEOUT)
            .expect_success()
            .stdout
    }

    fn control(&self, method: &str, path: &str, body: &str) {
        self.curl(method, path, body);
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").args(args).current_dir(dir), TIMEOUT).expect_success();
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let days = ["-days", "1"];
    openssl(
        &[&["req", "-x509"][..], &ec, &days, &["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=fake-kube-ca"]]
            .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=kube-apiserver"]].concat());
    fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let sign = ["x509", "-req", "-in", "api.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(&[&sign[..], &days, &["-out", "api.crt", "-extfile", "ext.cnf"]].concat());
    (dir.join("ca.crt"), dir.join("api.crt"), dir.join("api.key"))
}

/// A series' value on the agent's /metrics; panics when it is absent (every series the
/// agent has exists from its first scrape on), so a check for 0 cannot pass vacuously.
fn metric(port: u16, series: &str) -> u64 {
    Metrics::scrape(port).get(series)
}

fn wait_metric(port: u16, series: &str, ok: impl Fn(u64) -> bool, agent: &RunAgent) {
    assert!(
        wait_until(TIMEOUT, || ok(metric(port, series))),
        "{series} stayed at {}; agent log:\n{}",
        metric(port, series),
        agent.stderr()
    );
}

fn get(port: u16, path: &str) {
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}{path}")).status, 200);
}

fn server_span<'a>(spans: &'a [Span], path: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.kind == SERVER && s.attrs.get("url.path") == Some(&Value::from(path)))
        .unwrap_or_else(|| panic!("no SERVER span for {path}:\n{}", show(spans)))
}

fn res<'a>(s: &'a Span, k: &str) -> Option<&'a str> {
    s.resource.get(k).and_then(Value::as_str)
}

#[test]
fn pods_of_this_node_decorate_spans_through_list_watch_delete_and_relist() {
    require_root();
    let (v2, v1_pids) = cgroup_mounts();
    let dir = TempDir::new("k8s");
    let token_file = dir.join("token");
    fs::write(&token_file, "token-1\n").unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let args = ["token-1", NODE, cert.to_str().unwrap(), key.to_str().unwrap()];
    let api = Api { server: PyServer::start("fake_kube_api.py", &args), ca: ca.clone() };

    // Pod A: a Deployment's pod, listed before the agent starts. systemd cgroup driver,
    // containerd, cgroup v2.
    let uid_a = "3f0c1e2d-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
    let cid_a = "a1".repeat(32);
    let cg_a = Cgroup::create(
        &v2,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid_a}.scope",
            uid_a.replace('-', "_")
        ),
    );
    // Pod B: a StatefulSet's pod added through the watch once the agent runs. cgroupfs
    // driver, on the v1 `pids` hierarchy when the machine has v1 (else on v2).
    let uid_b = "7e6d5c4b-3a29-4817-a6b5-c4d3e2f1a0b9";
    let cid_b = "b2".repeat(32);
    let cg_b = Cgroup::create(v1_pids.as_deref().unwrap_or(&v2), &format!("kubepods/burstable/pod{uid_b}/{cid_b}"));

    let srv_a = PyServer::start("chain_service.py", &["0"]);
    cg_a.add(srv_a.pid());
    let srv_b = PyServer::start("chain_service.py", &["0"]);
    cg_b.add(srv_b.pid());
    let cgroup_of = |pid: u32| fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup_of(srv_a.pid()).contains(&format!("cri-containerd-{cid_a}.scope")), "{}", cgroup_of(srv_a.pid()));
    assert!(cgroup_of(srv_b.pid()).contains(&format!("pod{uid_b}/{cid_b}")), "{}", cgroup_of(srv_b.pid()));

    let pod_a = pod(
        uid_a,
        "checkout-5d8f7c9b6-q7x2k",
        NODE,
        &cid_a,
        json!({"app.kubernetes.io/name": "checkout", "app.kubernetes.io/version": "2.1.0",
               "hoptrace.io/zone": "Z2", "pod-template-hash": "5d8f7c9b6"}),
        // The annotation wins over the label of the same key.
        json!({"hoptrace.io/zone": "Z3", "hoptrace.io/team": "payments"}),
        ("ReplicaSet", "checkout-5d8f7c9b6"),
    );
    api.control("POST", "/control/pods", &pod_a.to_string());
    // Two more pods of the node (the list comes in pages of two), and one of another node.
    for (uid, name, node) in [
        ("00000000-0000-4000-8000-00000000000a", "idle-1", NODE),
        ("00000000-0000-4000-8000-00000000000b", "idle-2", NODE),
        ("00000000-0000-4000-8000-00000000000c", "elsewhere", "node-b"),
    ] {
        let p = pod(uid, name, node, &"cc".repeat(32), json!({}), json!({}), ("ReplicaSet", "idle-x"));
        api.control("POST", "/control/pods", &p.to_string());
    }

    // As in a pod: the API from KUBERNETES_SERVICE_HOST/PORT (https, the cluster's CA),
    // the node from K8S_NODE_NAME, `enabled: auto`; only the files' locations are set.
    let config = dir.join("hoptrace.yaml");
    let yaml = format!(
        "kubernetes:\n  ca_file: {}\n  token_file: {}\n  delete_grace_s: 1\n",
        ca.display(),
        token_file.display()
    );
    fs::write(&config, yaml).unwrap();
    let out = dir.join("otlp.jsonl");
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let api_port = api.server.port().to_string();
    let agent = RunAgent::start(
        &[srv_a.port(), srv_b.port()],
        &["--config", config.to_str().unwrap(), "--output", out.to_str().unwrap(), "--listen", &listen],
        [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", api_port.as_str()),
            ("K8S_NODE_NAME", NODE),
        ],
    );
    wait_metric(mport, "hoptrace_k8s_pods_cached", |n| n == 3, &agent);

    // 1. Listed pod.
    get(srv_a.port(), "/listed");
    // 2. A pod ADDED through the watch.
    let pod_b = pod(
        uid_b,
        "ledger-0",
        NODE,
        &cid_b,
        json!({"app.kubernetes.io/name": "ledger", "hoptrace.io/team": "core"}),
        json!({"hoptrace.io/zone": "Z5"}),
        ("StatefulSet", "ledger"),
    );
    api.control("POST", "/control/pods", &pod_b.to_string());
    wait_metric(mport, "hoptrace_k8s_pods_cached", |n| n == 4, &agent);
    get(srv_b.port(), "/watched");
    // 3. DELETED: after the grace (1 s) its metadata goes away.
    api.control("DELETE", &format!("/control/pods/{uid_b}"), "");
    wait_metric(mport, "hoptrace_k8s_pods_cached", |n| n == 3, &agent);
    get(srv_b.port(), "/deleted");
    // 4. The token rotates; the pod comes back with a change the watch never sees, and the
    //    versions are compacted: the open watch gets 410 Gone, and only a new LIST (with
    //    the new token) can find the change.
    fs::write(&token_file, "token-2\n").unwrap();
    api.control("POST", "/control/token", "token-2");
    let mut pod_b2 = pod_b.clone();
    pod_b2["metadata"]["labels"]["app.kubernetes.io/name"] = json!("ledger-relisted");
    api.control("POST", "/control/pods?silent=1", &pod_b2.to_string());
    api.control("POST", "/control/compact", "");
    wait_metric(mport, "hoptrace_k8s_watch_restarts_total{reason=\"expired\"}", |n| n >= 1, &agent);
    wait_metric(mport, "hoptrace_k8s_pods_cached", |n| n == 4, &agent);
    get(srv_b.port(), "/relisted");

    assert!(metric(mport, "hoptrace_k8s_lists_total") >= 2);
    assert!(metric(mport, "hoptrace_k8s_unresolved_containers_total") >= 1, "the deleted pod's process was unresolved");
    assert_eq!(metric(mport, "hoptrace_k8s_api_errors_total{reason=\"decode\"}"), 0);
    wait_for_spans_in(&out, "the four SERVER spans", |s| {
        ["/listed", "/watched", "/deleted", "/relisted"]
            .iter()
            .all(|p| s.iter().any(|s| s.kind == SERVER && s.attrs.get("url.path") == Some(&Value::from(*p))))
    });
    let stopped = agent.stop();

    let spans = parse_spans(&fs::read_to_string(&out).expect("OTLP/JSON output"));
    let a = server_span(&spans, "/listed");
    for (k, v) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-5d8f7c9b6-q7x2k"),
        ("k8s.pod.uid", uid_a),
        ("k8s.node.name", NODE),
        ("k8s.container.name", "app"),
        ("k8s.replicaset.name", "checkout-5d8f7c9b6"),
        ("k8s.deployment.name", "checkout"),
        ("container.id", cid_a.as_str()),
        ("service.name", "checkout"),
        ("service.version", "2.1.0"),
        ("zone", "Z3"),
        ("team", "payments"),
    ] {
        assert_eq!(res(a, k), Some(v), "{k} of {a:?}");
    }
    let b = server_span(&spans, "/watched");
    for (k, v) in [
        ("k8s.pod.name", "ledger-0"),
        ("k8s.pod.uid", uid_b),
        ("k8s.statefulset.name", "ledger"),
        ("k8s.container.name", "app"),
        ("service.name", "ledger"),
        ("zone", "Z5"),
        ("team", "core"),
    ] {
        assert_eq!(res(b, k), Some(v), "{k} of {b:?}");
    }
    assert_eq!(res(b, "k8s.deployment.name"), None);
    let gone = server_span(&spans, "/deleted");
    assert_eq!(res(gone, "container.id"), Some(cid_b.as_str()), "{gone:?}");
    for k in ["k8s.pod.name", "k8s.pod.uid", "k8s.statefulset.name", "zone", "team"] {
        assert_eq!(res(gone, k), None, "{k} of the deleted pod still on {gone:?}");
    }
    assert_eq!(res(gone, "service.name"), Some("chain_service"), "named after its program again");
    let r = server_span(&spans, "/relisted");
    assert_eq!((res(r, "service.name"), res(r, "k8s.pod.name")), (Some("ledger-relisted"), Some("ledger-0")), "{r:?}");

    // What the agent asked: its node only (the fixture answers 400 otherwise), pages,
    // watches with bookmarks from a version, and the rotated token once it changed.
    let asked: Value = serde_json::from_str(&api.curl("GET", "/control/requests", "")).unwrap();
    let asked = asked.as_array().unwrap();
    assert!(asked.iter().all(|r| r["query"]["fieldSelector"] == format!("spec.nodeName={NODE}")), "{asked:?}");
    assert!(asked.iter().any(|r| r["query"].get("continue").is_some()), "no paged LIST: {asked:?}");
    let watches: Vec<&Value> = asked.iter().filter(|r| r["query"]["watch"] == "1").collect();
    assert!(
        !watches.is_empty()
            && watches.iter().all(|w| w["query"]["allowWatchBookmarks"] == "true"
                && w["query"]["resourceVersion"].as_str().is_some_and(|v| !v.is_empty())),
        "{watches:?}"
    );
    let first_new = asked.iter().position(|r| r["token"] == "token-2").expect("the rotated token was never used");
    assert!(asked[..first_new].iter().all(|r| r["token_ok"] == true), "{asked:?}");
    assert!(asked[first_new..].iter().all(|r| r["token"] == "token-2"), "old token after rotation: {asked:?}");
    assert!(stopped.stderr.contains("kubernetes watch expired (410 Gone)"), "{}", stopped.stderr);
    drop((srv_a, srv_b));
    drop((cg_a, cg_b));
}

/// Wrong settings are loud: `enabled: true` without an API fails at start, naming what is
/// missing; a rejected token is logged with the server's reason and counted, and the agent
/// keeps tracing (without pod metadata) while it retries.
#[test]
fn kubernetes_misconfiguration_fails_fast_or_is_counted() {
    require_root();
    let dir = TempDir::new("k8s-bad");
    let config = dir.join("hoptrace.yaml");
    fs::write(&config, format!("kubernetes:\n  enabled: true\n  node_name: {NODE}\n")).unwrap();
    let mut cmd = Command::new(hoptrace_bin());
    cmd.args(["run", "--listen", "off", "--config", config.to_str().unwrap()]);
    without_otel_env(&mut cmd).env_remove("KUBERNETES_SERVICE_HOST");
    let done = run(&mut cmd, TIMEOUT);
    assert!(!done.status.success(), "{done:?}");
    assert!(done.stderr.contains("kubernetes.enabled is true but the API is unknown"), "{}", done.stderr);

    let (ca, cert, key) = certificates(dir.path());
    let args = ["the-right-token", NODE, cert.to_str().unwrap(), key.to_str().unwrap()];
    let api = Api { server: PyServer::start("fake_kube_api.py", &args), ca: ca.clone() };
    let token_file = dir.join("token");
    fs::write(&token_file, "a-wrong-token").unwrap();
    let yaml = format!(
        "kubernetes:\n  enabled: true\n  api_url: https://127.0.0.1:{}\n  node_name: {NODE}\n  ca_file: {}\n  token_file: {}\n",
        api.server.port(),
        ca.display(),
        token_file.display()
    );
    fs::write(&config, yaml).unwrap();
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let agent = RunAgent::start(
        &[],
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        std::iter::empty::<(&str, &str)>(),
    );
    wait_metric(mport, "hoptrace_k8s_api_errors_total{reason=\"http_status\"}", |n| n >= 2, &agent);
    assert_eq!(metric(mport, "hoptrace_k8s_pods_cached"), 0);
    assert!(curl_get(&format!("http://127.0.0.1:{mport}/readyz")).status == 200, "tracing goes on");
    let stopped = agent.stop();
    assert!(
        stopped.stderr.contains("kubernetes pod list failed") && stopped.stderr.contains("HTTP 401: Unauthorized"),
        "{}",
        stopped.stderr
    );
    assert!(!stopped.stderr.contains("a-wrong-token"), "the token was logged");
    let asked: Value = serde_json::from_str(&api.curl("GET", "/control/requests", "")).unwrap();
    assert!(asked.as_array().unwrap().iter().all(|r| r["token_ok"] == false && r["query"].get("watch").is_none()));
}
