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
* deploy/collector/config.yaml parses, and its pipelines only use defined components.
"""

import sys
from pathlib import Path

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

    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(f"deploy: {len(docs)} manifests valid (Kubernetes {', '.join(K8S_VERSIONS)}), collector config consistent")


if __name__ == "__main__":
    main()
