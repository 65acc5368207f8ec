"""The agent's hand-written Kubernetes client against kube, on the e2e tests' fake API server.

usage: python3 k8s_compare.py BIN [--pods N] [--other M] [--events E] [--clients hand,kube]

BIN is the `k8s-watch` program of this crate built with `--features kube`. For each client
it starts tests/fixtures/fake_kube_api.py over TLS (a CA and a server certificate for
127.0.0.1 made with the openssl CLI, as tests/tests/kubernetes.rs does), creates N pods on
the watched node and M on another (pods of the size a Deployment's pod has, managedFields
included), starts `BIN CLIENT …` and measures:

- the first LIST: time until every pod of the node is cached, then VmRSS / VmHWM;
- E MODIFIED events through the watch: time until all are applied, then VmRSS / VmHWM;
- 410 Gone: a pod changed without a watch event (`?silent=1`) then the server compacts
  (open watches get an ERROR event with a 410 Status): the client must LIST again, which
  is the only way it can learn about the silent pod;
- token rotation: the token file gets a new token and the server accepts only the new one
  from then on (stricter than a real cluster, where the old token stays valid until it
  expires); then a silent change and a compaction force new requests: how long until the
  client is back in sync, and how many requests the server refused (401).

Prints one JSON object per client and a table. Stdlib only.
"""
import json
import os
import pathlib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
FAKE = HERE.parent.parent / "tests" / "fixtures" / "fake_kube_api.py"
NODE = "node-1"


def certificates(d):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "1", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=fake-kube-ca")
    openssl("req", *ec, "-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=kube-apiserver")
    (d / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                               "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "api.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-out", "api.crt", "-extfile", "ext.cnf")
    return d / "ca.crt", d / "api.crt", d / "api.key"


def container_id(i, c):
    return f"{i:056x}{c:08x}"


def pod(i, node, generation=0, name_label=None):
    """A pod as the API serves a Deployment's pod (about 7 KB of JSON)."""
    name = f"shop-{i:04d}-7d9f8b6c5-x{i:04d}"
    uid = f"00000000-0000-4000-8000-{i:012d}"
    env = [{"name": f"SETTING_{k}", "value": f"value-{k}-" + "x" * 24} for k in range(12)]
    fields = {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {},
              "f:pod-template-hash": {}}, "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}},
              "f:spec": {"f:containers": {f"k:{{\"name\":\"c{c}\"}}": {".": {}, "f:env": {
                  f"k:{{\"name\":\"SETTING_{k}\"}}": {".": {}, "f:name": {}, "f:value": {}} for k in range(12)},
                  "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}} for c in range(2)}}}
    containers = [{
        "name": f"c{c}", "image": f"registry.example/shop/app:{1 + c}.2.3", "imagePullPolicy": "IfNotPresent",
        "env": env, "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                          "readOnly": True}],
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
    } for c in range(2)]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "generateName": "shop-7d9f8b6c5-", "namespace": "shop", "uid": uid,
            "resourceVersion": "1", "creationTimestamp": "2026-11-24T21:00:00Z",
            "labels": {"app.kubernetes.io/name": name_label or f"shop-{i % 20}", "pod-template-hash": "7d9f8b6c5",
                       "hoptrace.io/zone": "Z1", "generation": str(generation)},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-24T20:59:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"shop-{i % 20}-7d9f8b6c5",
                                 "uid": "6a4d1c2e-0000-4000-8000-000000000001", "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-24T21:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}],
        },
        "spec": {
            "nodeName": node, "containers": containers, "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.4", "podIP": f"10.244.{i // 250}.{i % 250}",
            "startTime": "2026-11-24T21:00:00Z", "qosClass": "Burstable",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-11-24T21:00:01Z"}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": f"c{c}", "ready": True, "restartCount": 0, "started": True,
                                   "image": f"registry.example/shop/app:{1 + c}.2.3", "imageID": "sha256:" + "ab" * 32,
                                   "containerID": f"containerd://{container_id(i, c)}",
                                   "state": {"running": {"startedAt": "2026-11-24T21:00:01Z"}}} for c in range(2)],
        },
    }


class Fake:
    def __init__(self, d, token):
        ca, cert, key = certificates(d)
        self.ca = ca
        self.proc = subprocess.Popen([sys.executable, str(FAKE), token, NODE, str(cert), str(key)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line
        self.port = int(line.split()[1])
        self.ctx = ssl.create_default_context(cafile=str(ca))

    def call(self, method, path, body=b""):
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=body or None, method=method)
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def put_pod(self, p, silent=False):
        self.call("POST", "/control/pods" + ("?silent=1" if silent else ""), json.dumps(p).encode())

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Client:
    def __init__(self, binary, which, fake, token_file):
        env = dict(os.environ, K8S_WATCH_PROBE=container_id(0, 0))
        self.proc = subprocess.Popen([binary, which, f"https://127.0.0.1:{fake.port}", NODE, str(token_file),
                                      str(fake.ca)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.state = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.state = json.loads(line)
                self.cond.notify_all()

    def wait(self, ok, timeout):
        """Seconds until `ok(state)`, or None after `timeout`."""
        start = time.monotonic()
        with self.cond:
            if self.cond.wait_for(lambda: self.state and ok(self.state), timeout):
                return round(time.monotonic() - start, 3)
        return None

    def memory(self):
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if l.startswith(("VmRSS", "VmHWM"))}
        return kb["VmRSS"], kb["VmHWM"]

    def cpu_ms(self):
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def measure(binary, which, pods, other, events):
    out = {"client": which}
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        token_file = d / "token"
        token_file.write_text("token-1")  # no newline: as the kubelet writes it
        fake = Fake(d, "token-1")
        try:
            for i in range(pods):
                fake.put_pod(pod(i, NODE))
            for i in range(pods, pods + other):
                fake.put_pod(pod(i, "node-2"))
            c = Client(binary, which, fake, token_file)
            try:
                out["first_list_s"] = c.wait(lambda s: s["pods"] == pods and s["lists"] >= 1, 60)
                out["after_list_rss_kb"], out["after_list_hwm_kb"] = c.memory()
                t0 = time.monotonic()
                # Changes the cache ignores (a label it does not map), then one it keeps:
                # the last event renames pod 0's service, which the probe shows.
                for n in range(events - 1):
                    fake.put_pod(pod(n % pods, NODE, generation=1 + n))
                fake.put_pod(pod(0, NODE, generation=events, name_label="last-event"))
                ok = c.wait(lambda s: s["probe"] == "last-event", 120)
                out["events_s"] = ok and round(time.monotonic() - t0, 3)
                out["after_events_rss_kb"], out["after_events_hwm_kb"] = c.memory()
                out["cpu_ms"] = c.cpu_ms()
                # 410 Gone: a change the watch never sees, then compaction.
                lists = c.state["lists"]
                fake.put_pod(pod(pods, NODE), silent=True)
                fake.call("POST", "/control/compact")
                out["gone_relisted_s"] = c.wait(lambda s: s["pods"] == pods + 1 and s["lists"] > lists, 120)
                # Token rotation: the file changes (atomically, as the kubelet does), the
                # server takes only the new token, and a compaction forces new requests.
                before = len(fake.call("GET", "/control/requests"))
                tmp_token = d / "token.new"
                tmp_token.write_text("token-2")
                os.replace(tmp_token, token_file)
                fake.call("POST", "/control/token", b"token-2")
                fake.put_pod(pod(pods + 1, NODE), silent=True)
                fake.call("POST", "/control/compact")
                out["rotation_resynced_s"] = c.wait(lambda s: s["pods"] == pods + 2, 180)
                reqs = fake.call("GET", "/control/requests")[before:]
                out["rotation_refused_401"] = sum(1 for r in reqs if not r["token_ok"])
                out["rotation_requests"] = len(reqs)
            finally:
                c.stop()
                out["stderr_tail"] = [l.strip()[:200] for l in c.stderr[-3:]]
        finally:
            fake.stop()
    return out


def main():
    args = sys.argv[1:]
    binary = args[0]
    opt = dict(zip(args[1::2], args[2::2]))
    pods, other, events = int(opt.get("--pods", 110)), int(opt.get("--other", 40)), int(opt.get("--events", 500))
    results = [measure(binary, w, pods, other, events) for w in opt.get("--clients", "hand,kube").split(",")]
    for r in results:
        print(json.dumps(r))
    keys = ["first_list_s", "after_list_rss_kb", "after_list_hwm_kb", "events_s", "after_events_rss_kb",
            "after_events_hwm_kb", "cpu_ms", "gone_relisted_s", "rotation_resynced_s", "rotation_refused_401",
            "rotation_requests"]
    print(f"\n{pods} pods on the node, {other} elsewhere, {events} watch events")
    print(f"{'':24}" + "".join(f"{r['client']:>12}" for r in results))
    for k in keys:
        print(f"{k:24}" + "".join(f"{str(r.get(k)):>12}" for r in results))


if __name__ == "__main__":
    main()
