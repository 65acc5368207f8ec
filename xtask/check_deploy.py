"""Offline checks of the deployment files (run by `cargo xtask test`, in target/pyenv).

  python xtask/check_deploy.py ROOT OUT

* every manifest under deploy/kubernetes and deploy/collector (and the generated
  deploy/alerts/prometheusrule.yaml) against the Kubernetes JSON schemas bundled with
  kubernetes-validate, strictly (unknown fields are errors), for the oldest and newest
  Kubernetes versions we support;
* the Prometheus Operator kinds (ServiceMonitor, PrometheusRule) are custom resources with
  no bundled schema: their required structure is checked here instead;
* kustomizations only name files that exist; selectors and port names line up;
* the ConfigMap embeds deploy/hoptrace.yaml verbatim except `exporter.endpoint`, which is
  the gateway the DaemonSet's OTEL_EXPORTER_OTLP_ENDPOINT names; the embedded config is
  written to OUT so that xtask can run `hoptrace --check-config` on it;
* the DaemonSet gets K8S_NODE_NAME from the downward API and a service account token;
  the ClusterRole grants get/list/watch on pods and nothing else;
* deploy/collector/config.yaml parses, and its pipelines only use defined components;
* the NetworkPolicy selects the agent's pods and names a port they have;
* deploy/security: the seccomp profile against the OCI/Kubernetes seccomp schema (plus:
  every name a syscall, ptrace and friends never allowed), the AppArmor profile with
  `apparmor_parser -Q -K` (a full parse and compile, nothing loaded; a structural check
  when the parser is missing), and the DaemonSet uses both as Localhost profiles.
"""

import json
import re
import shutil
import subprocess

import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

# appArmorProfile (DaemonSet) exists since 1.30.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
MANIFEST_DIRS = ["deploy/kubernetes", "deploy/collector"]
NOT_MANIFESTS = {"kustomization.yaml", "config.yaml"}
OPERATOR_GROUP = "monitoring.coreos.com/"

errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def check_operator_kind(where, doc):
    spec = doc.get("spec") or {}
    meta = doc.get("metadata") or {}
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(where, f"unexpected apiVersion {doc.get('apiVersion')}")
    if not meta.get("name") or not meta.get("namespace"):
        fail(where, "metadata.name and metadata.namespace are required")
    if doc["kind"] == "ServiceMonitor":
        if not (spec.get("selector") or {}).get("matchLabels"):
            fail(where, "spec.selector.matchLabels is required")
        eps = spec.get("endpoints") or []
        if not eps or not all(isinstance(e, dict) and e.get("port") for e in eps):
            fail(where, "spec.endpoints must list endpoints with a named port")
    elif doc["kind"] == "PrometheusRule":
        groups = spec.get("groups") or []
        if not groups:
            fail(where, "spec.groups is empty")
        for g in groups:
            if not g.get("name") or not g.get("rules"):
                fail(where, f"group {g.get('name')!r} needs a name and rules")
            for r in g.get("rules") or []:
                if not r.get("expr") or not (r.get("alert") or r.get("record")):
                    fail(where, f"rule {r} needs expr and alert or record")
    else:
        fail(where, f"unknown custom resource kind {doc['kind']}")


def check_kustomization(root, path):
    k = yaml.safe_load(path.read_text())
    for res in k.get("resources") or []:
        p = path.parent / res
        if not (p.is_file() or (p / "kustomization.yaml").is_file()):
            fail(path.relative_to(root), f"resource {res} does not exist")
    for gen in k.get("configMapGenerator") or []:
        for f in gen.get("files") or []:
            if not (path.parent / f.split("=")[-1]).is_file():
                fail(path.relative_to(root), f"configMapGenerator file {f} does not exist")


SECCOMP_PROFILE = "deploy/security/hoptrace-seccomp.json"
APPARMOR_PROFILE = "deploy/security/hoptrace.apparmor"
ACTIONS = ["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
           "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"]
# The seccomp profile format of the OCI runtime spec (config-linux.md#seccomp), which is
# what Kubernetes' Localhost profiles are read as by containerd and CRI-O.
SECCOMP_SCHEMA = {
    "type": "object",
    "required": ["defaultAction", "syscalls"],
    "additionalProperties": False,
    "properties": {
        "comment": {"type": "string"},
        "defaultAction": {"enum": ACTIONS},
        "defaultErrnoRet": {"type": "integer", "minimum": 1},
        "architectures": {"type": "array", "items": {"type": "string", "pattern": "^SCMP_ARCH_[A-Z0-9_]+$"}},
        "flags": {"type": "array", "items": {"enum": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                                       "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                                                       "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}},
        "syscalls": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["names", "action"],
            "additionalProperties": False,
            "properties": {
                "comment": {"type": "string"},
                "names": {"type": "array", "minItems": 1, "uniqueItems": True,
                          "items": {"type": "string", "pattern": "^[a-z0-9_]+$"}},
                "action": {"enum": ACTIONS},
                "errnoRet": {"type": "integer", "minimum": 1},
                "args": {"type": "array", "items": {
                    "type": "object", "required": ["index", "value", "op"], "additionalProperties": False,
                    "properties": {"index": {"type": "integer", "minimum": 0, "maximum": 5},
                                   "value": {"type": "integer", "minimum": 0},
                                   "valueTwo": {"type": "integer", "minimum": 0},
                                   "op": {"enum": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                                                   "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"]}}}},
            },
        }},
    },
}
# Never allowed: they would let the agent write another process's memory or the kernel.
NEVER_ALLOWED = {"ptrace", "process_vm_writev", "process_vm_readv", "kexec_load", "kexec_file_load", "init_module",
                 "finit_module", "delete_module", "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot",
                 "open_by_handle_at", "userfaultfd", "keyctl", "add_key", "request_key"}


def syscall_number(resolver, arch, name):
    out = subprocess.run([resolver, "-a", arch, name], capture_output=True, text=True).stdout.strip()
    try:
        return int(out)
    except ValueError:
        return -1


def check_seccomp(root):
    rel = SECCOMP_PROFILE
    try:
        profile = json.loads((root / rel).read_text())
    except (OSError, ValueError) as e:
        fail(rel, f"not JSON: {e}")
        return
    try:
        jsonschema.validate(profile, SECCOMP_SCHEMA)
    except jsonschema.ValidationError as e:
        fail(rel, f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}")
        return
    if profile["defaultAction"] == "SCMP_ACT_ALLOW":
        fail(rel, "defaultAction must deny (an allow-list profile)")
    allowed = {n for r in profile["syscalls"] if r["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") for n in r["names"]}
    for name in sorted(allowed & NEVER_ALLOWED):
        fail(rel, f"{name} must not be allowed")
    # Every name a syscall of x86_64 or aarch64 (a typo would silently allow nothing).
    resolver = shutil.which("scmp_sys_resolver")
    if resolver:
        names = {n for r in profile["syscalls"] for n in r["names"]}
        for name in sorted(names):
            known = any(syscall_number(resolver, arch, name) >= 0 for arch in ("x86_64", "aarch64"))
            if not known:
                fail(rel, f"{name} is not a system call on x86_64 or aarch64")


def check_apparmor(root):
    rel = APPARMOR_PROFILE
    text = (root / rel).read_text()
    parser = shutil.which("apparmor_parser")
    if parser:
        # -Q: parse and compile only (nothing is loaded, no AppArmor kernel needed); -K: no cache.
        r = subprocess.run([parser, "-Q", "-K", str(root / rel)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(rel, f"apparmor_parser -Q -K: {r.stderr.strip()}")
    else:
        print(f"check_deploy: apparmor_parser not found; {rel} checked structurally only", file=sys.stderr)
        if text.count("{") != text.count("}") or not re.search(r"^profile hoptrace\b", text, re.M):
            fail(rel, "no balanced `profile hoptrace { ... }` block")
    for rule in ("deny ptrace (trace", "deny @{PROC}/*/mem w"):
        if rule not in text:
            fail(rel, f"missing the rule `{rule}...`")


def check_pod_security(ds, netpol):
    where = "deploy/kubernetes/daemonset.yaml"
    sc = ds["spec"]["template"]["spec"]["containers"][0].get("securityContext") or {}
    if sc.get("seccompProfile") != {"type": "Localhost", "localhostProfile": "hoptrace-seccomp.json"}:
        fail(where, "seccompProfile must be Localhost hoptrace-seccomp.json (deploy/security)")
    if sc.get("appArmorProfile") != {"type": "Localhost", "localhostProfile": "hoptrace"}:
        fail(where, "appArmorProfile must be Localhost hoptrace (deploy/security)")
    where = "deploy/kubernetes/networkpolicy.yaml"
    if not netpol:
        fail(where, "NetworkPolicy/hoptrace-endpoint missing")
        return
    pod = ds["spec"]["template"]
    labels = pod["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in netpol["spec"]["podSelector"].get("matchLabels", {}).items()):
        fail(where, "podSelector does not match the DaemonSet's pods")
    ports = {p["name"] for p in pod["spec"]["containers"][0].get("ports", [])}
    for rule in netpol["spec"].get("ingress") or []:
        if not rule.get("from"):
            fail(where, "an ingress rule without `from` admits everyone")
        for p in rule.get("ports") or []:
            if p.get("port") not in ports:
                fail(where, f"port {p.get('port')} is not a container port of the agent")


COLLECTOR = "deploy/collector/config.yaml"


def check_collector_auth(cfg):
    """Every OTLP protocol of every receiver authenticates with a defined, enabled extension."""
    enabled = set((cfg.get("service") or {}).get("extensions") or [])
    for rname, receiver in (cfg.get("receivers") or {}).items():
        for proto, settings in ((receiver or {}).get("protocols") or {}).items():
            auth = ((settings or {}).get("auth") or {}).get("authenticator")
            if not auth:
                fail(COLLECTOR, f"receivers.{rname}.protocols.{proto}: no auth.authenticator (anyone could send)")
            elif auth not in (cfg.get("extensions") or {}) or auth not in enabled:
                fail(COLLECTOR, f"receivers.{rname}.protocols.{proto}: authenticator {auth} is not a defined, enabled extension")
            elif auth.split("/")[0] == "bearertokenauth":
                ext = cfg["extensions"][auth] or {}
                if not (ext.get("filename") or ext.get("token")):
                    fail(COLLECTOR, f"extensions.{auth}: needs filename (or token)")


def check_collector_pipeline(cfg, name, pipeline):
    """The traces pipeline strips command lines and masks personal values, SDK spans included,
    before tail sampling; the redaction patterns are valid regular expressions (the Python
    engine accepts the RE2 subset they use)."""
    procs = pipeline.get("processors") or []
    kinds = [p.split("/")[0] for p in procs]
    for kind in ("resource", "redaction"):
        if kind not in kinds:
            fail(COLLECTOR, f"pipeline {name}: no {kind} processor")
    if "tail_sampling" in kinds and any(k in kinds and kinds.index(k) > kinds.index("tail_sampling")
                                         for k in ("resource", "redaction")):
        fail(COLLECTOR, f"pipeline {name}: redaction must come before tail_sampling")
    for p in procs:
        conf = (cfg.get("processors") or {}).get(p) or {}
        if p.split("/")[0] == "resource":
            deleted = {a.get("key") for a in conf.get("attributes") or [] if a.get("action") == "delete"}
            for key in ("process.command_line", "process.command_args"):
                if key not in deleted:
                    fail(COLLECTOR, f"processors.{p}: does not delete {key}")
        if p.split("/")[0] == "redaction":
            patterns = conf.get("blocked_values") or []
            if not patterns:
                fail(COLLECTOR, f"processors.{p}: no blocked_values")
            for pat in patterns:
                try:
                    re.compile(pat)
                except re.error as e:
                    fail(COLLECTOR, f"processors.{p}: pattern {pat!r}: {e}")
            samples = {"CPF": "123.456.789-09", "CNPJ": "12.345.678/0001-95", "card": "4111 1111 1111 1111",
                       "email": "maria@example.com", "token": "Bearer abc.def-123"}
            for what, value in samples.items():
                if not any(re.search(pat, value) for pat in patterns):
                    fail(COLLECTOR, f"processors.{p}: no pattern masks a {what} ({value})")


def main():
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    docs = {}  # (kind, name) -> document
    files = [p for d in MANIFEST_DIRS for p in sorted((root / d).glob("*.yaml")) if p.name not in NOT_MANIFESTS]
    files.append(root / "deploy/alerts/prometheusrule.yaml")
    for path in files:
        rel = path.relative_to(root)
        try:
            manifests = load_all(path)
        except yaml.YAMLError as e:
            fail(rel, f"not YAML: {e}")
            continue
        for doc in manifests:
            where = f"{rel} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            docs[(doc.get("kind"), (doc.get("metadata") or {}).get("name"))] = doc
            if str(doc.get("apiVersion", "")).startswith(OPERATOR_GROUP):
                check_operator_kind(where, doc)
                continue
            for v in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path_ = ".".join(str(p) for p in e.path)
                    fail(where, f"Kubernetes {v}: {path_}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    fail(where, f"Kubernetes {v}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")

    for d in MANIFEST_DIRS + ["deploy/alerts"]:
        check_kustomization(root, root / d / "kustomization.yaml")

    # The agent: ConfigMap, DaemonSet, Service, ServiceMonitor agree with each other.
    ds = docs.get(("DaemonSet", "hoptrace"))
    cm = docs.get(("ConfigMap", "hoptrace-config"))
    if ds and cm:
        pod = ds["spec"]["template"]
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        gateway = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        expected = (root / "deploy/hoptrace.yaml").read_text().replace("  endpoint:\n", f"  endpoint: {gateway}\n", 1)
        embedded = cm["data"]["hoptrace.yaml"]
        if embedded != expected:
            fail("deploy/kubernetes/configmap.yaml", "hoptrace.yaml differs from deploy/hoptrace.yaml "
                 f"(only exporter.endpoint may differ, set to {gateway})")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(embedded)
        labels = pod["metadata"]["labels"]
        ports = {p["name"] for p in container.get("ports", [])}
        svc = docs.get(("Service", "hoptrace"))
        sm = docs.get(("ServiceMonitor", "hoptrace"))
        if svc:
            if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
                fail("deploy/kubernetes/service.yaml", "selector does not match the DaemonSet's pods")
            for p in svc["spec"]["ports"]:
                if p.get("targetPort") not in ports:
                    fail("deploy/kubernetes/service.yaml", f"targetPort {p.get('targetPort')} is not a container port")
        if svc and sm:
            svc_labels = svc["metadata"].get("labels", {})
            if any(svc_labels.get(k) != v for k, v in sm["spec"]["selector"]["matchLabels"].items()):
                fail("deploy/kubernetes/servicemonitor.yaml", "selector does not match the Service")
            svc_ports = {p["name"] for p in svc["spec"]["ports"]}
            for e in sm["spec"]["endpoints"]:
                if e["port"] not in svc_ports:
                    fail("deploy/kubernetes/servicemonitor.yaml", f"port {e['port']} is not a Service port")
        # Pod metadata: the node's name from the downward API, a token to watch pods with.
        node_env = next((e for e in container.get("env", []) if e["name"] == "K8S_NODE_NAME"), {})
        if ((node_env.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != "spec.nodeName":
            fail("deploy/kubernetes/daemonset.yaml", "K8S_NODE_NAME must come from fieldRef spec.nodeName")
        if pod["spec"].get("automountServiceAccountToken") is False:
            fail("deploy/kubernetes/daemonset.yaml", "the service account token is needed to watch pods")
    else:
        fail("deploy/kubernetes", "DaemonSet/hoptrace or ConfigMap/hoptrace-config missing")

    if ds:
        check_pod_security(ds, docs.get(("NetworkPolicy", "hoptrace-endpoint")))
    check_seccomp(root)
    check_apparmor(root)

    # RBAC stays least-privilege: read pods, nothing else.
    role = docs.get(("ClusterRole", "hoptrace"))
    allowed = {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch")}
    granted = {(g, r, v) for rule in (role or {}).get("rules") or []
               for g in rule.get("apiGroups") or [] for r in rule.get("resources") or [] for v in rule.get("verbs") or []}
    if not role or granted - allowed or any(rule.get("nonResourceURLs") for rule in role.get("rules") or []):
        fail("deploy/kubernetes/rbac.yaml", f"ClusterRole/hoptrace may only get/list/watch pods, grants {sorted(granted - allowed)}")

    # The gateway collector's configuration.
    cfg_path = root / "deploy/collector/config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        fail("deploy/collector/config.yaml", f"not YAML: {e}")
        cfg = None
    if cfg is not None:
        service = cfg.get("service") or {}
        for ext in service.get("extensions") or []:
            if ext not in (cfg.get("extensions") or {}):
                fail("deploy/collector/config.yaml", f"service.extensions: {ext} is not defined")
        pipelines = service.get("pipelines") or {}
        if not pipelines:
            fail("deploy/collector/config.yaml", "no pipelines")
        for name, p in pipelines.items():
            for section in ("receivers", "processors", "exporters"):
                for c in p.get(section) or []:
                    if c not in (cfg.get(section) or {}):
                        fail("deploy/collector/config.yaml", f"pipeline {name}: {section[:-1]} {c} is not defined")
            check_collector_pipeline(cfg, name, p)
        check_collector_auth(cfg)

    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(f"deploy: {len(docs)} manifests valid (Kubernetes {', '.join(K8S_VERSIONS)}), collector config consistent")


if __name__ == "__main__":
    main()
