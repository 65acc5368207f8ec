use super::*;

const CID: &str = "4f1d0c1c2b3a4958a7b6c5d4e3f20112233445566778899aabbccddeeff00112";

/// A pod as the API serves it (trimmed `kubectl get pod -o json` of a Deployment's pod).
fn pod_json(uid: &str, name: &str, cid: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","generateName":"checkout-7d9c5b6f8-",
        "namespace":"shop","uid":"{uid}","resourceVersion":"1234",
        "labels":{{"app.kubernetes.io/name":"checkout","app.kubernetes.io/version":"2.1.0","hoptrace.io/zone":"Z2",
          "pod-template-hash":"7d9c5b6f8"}},
        "annotations":{{"hoptrace.io/zone":"Z3","hoptrace.io/team":"payments",
          "kubectl.kubernetes.io/last-applied-configuration":"{{}}"}},
        "ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"checkout-7d9c5b6f8",
          "uid":"0c6b7d59-1b7a-4c5e-9d57-5e2f1c7f8a90","controller":true,"blockOwnerDeletion":true}}]}},
        "spec":{{"nodeName":"node-a","containers":[{{"name":"app","image":"checkout:2.1.0"}}]}},
        "status":{{"phase":"Running","podIP":"10.1.2.3",
          "containerStatuses":[{{"name":"app","ready":true,"restartCount":0,"image":"checkout:2.1.0",
            "containerID":"containerd://{cid}","started":true}}],
          "initContainerStatuses":[{{"name":"migrate","containerID":"containerd://{}"}}]}}}}"#,
        "ab".repeat(32)
    )
}

fn pod(uid: &str, name: &str, cid: &str) -> Pod {
    serde_json::from_str(&pod_json(uid, name, cid)).unwrap()
}

fn get<'a>(a: &'a [(String, String)], k: &str) -> Option<&'a str> {
    a.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

#[test]
fn pod_metadata_workload_and_mapped_attributes() {
    let meta = PodMeta::from_pod(&pod("u1", "checkout-7d9c5b6f8-x2x9z", CID), &KubernetesConfig::default().attributes);
    let a = &meta.attributes;
    for (k, v) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-7d9c5b6f8-x2x9z"),
        ("k8s.pod.uid", "u1"),
        ("k8s.node.name", "node-a"),
        ("k8s.replicaset.name", "checkout-7d9c5b6f8"),
        ("k8s.deployment.name", "checkout"),
        ("service.name", "checkout"),
        ("service.version", "2.1.0"),
        // The annotation wins over the label of the same key.
        ("zone", "Z3"),
        ("team", "payments"),
    ] {
        assert_eq!(get(a, k), Some(v), "{k} in {a:?}");
    }
    assert_eq!(meta.containers, vec![(CID.to_owned(), "app".to_owned()), ("ab".repeat(32), "migrate".to_owned())]);
    // Nothing else of the pod is kept (no other annotation, no IP).
    assert_eq!(a.len(), 10, "{a:?}");
}

#[test]
fn other_owners() {
    let mut p = pod("u", "n", CID);
    let owner =
        |kind: &str, name: &str| OwnerReference { kind: kind.into(), name: name.into(), controller: Some(true) };
    for (kind, name, want) in [
        ("StatefulSet", "db", vec![("k8s.statefulset.name", "db")]),
        ("DaemonSet", "agent", vec![("k8s.daemonset.name", "agent")]),
        ("Job", "report-28901234", vec![("k8s.job.name", "report-28901234"), ("k8s.cronjob.name", "report")]),
        ("Job", "migrate-2024", vec![("k8s.job.name", "migrate-2024")]),
    ] {
        p.metadata.owner_references = vec![owner(kind, name)];
        let a = PodMeta::from_pod(&p, &[]).attributes;
        let workload: Vec<(&str, &str)> = a
            .iter()
            .filter(|(k, _)| {
                !["k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.node.name"].contains(&k.as_str())
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(workload, want);
    }
    // A ReplicaSet whose name does not end in the pod-template-hash names no Deployment.
    p.metadata.owner_references = vec![owner("ReplicaSet", "standalone")];
    assert_eq!(get(&PodMeta::from_pod(&p, &[]).attributes, "k8s.deployment.name"), None);
}

#[test]
fn pod_uids_from_kubelet_cgroups() {
    let uid = "0b7e2a3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c";
    for cg in [
        format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            uid.replace('-', "_")
        ),
        format!("0::/kubepods.slice/kubepods-pod{}.slice/crio-{CID}.scope", uid.replace('-', "_")),
        format!("12:pids:/kubepods/burstable/pod{uid}/{CID}\n0::/"),
        format!("0::/../kubepods-besteffort-pod{}.slice/docker-{CID}.scope", uid.replace('-', "_")),
    ] {
        assert_eq!(crate::resource::cgroup::pod_uid(&cg).as_deref(), Some(uid), "{cg}");
        assert_eq!(crate::resource::cgroup::container_id(&cg).as_deref(), Some(CID), "{cg}");
    }
    assert_eq!(crate::resource::cgroup::pod_uid("0::/system.slice/ipod-service.scope"), None);
    assert_eq!(crate::resource::cgroup::pod_uid("0::/user.slice/user-0.slice"), None);
}

#[test]
fn cache_lookup_delete_grace_relist_and_bound() {
    let cfg = KubernetesConfig { delete_grace: Duration::from_secs(10), max_pods: 2, ..Default::default() };
    let k = Kubernetes::new("node-a", &cfg);
    let t0 = Instant::now();
    k.replace_all(&[pod("u1", "p1", CID)], t0);
    let g = k.generation();
    let a = k.lookup(Some(CID), None).expect("by container id");
    assert_eq!(get(&a, "k8s.container.name"), Some("app"));
    // Not started yet (no containerID): found by the pod uid from the cgroup.
    assert_eq!(get(&k.lookup(Some("ff"), Some("u1")).unwrap(), "k8s.pod.name"), Some("p1"));
    assert_eq!(get(&k.lookup(Some("ff"), Some("u1")).unwrap(), "k8s.container.name"), None);
    // The same pod again (a status-only MODIFIED): nothing changes.
    k.upsert(&pod("u1", "p1", CID));
    assert_eq!(k.generation(), g);
    // Deleted: still resolvable within the grace, then gone.
    k.delete("u1", t0);
    assert!(k.lookup(Some(CID), None).is_some());
    k.sweep(t0 + Duration::from_secs(10));
    assert!(k.lookup(Some(CID), None).is_none());
    assert!(k.generation() > g);
    assert_eq!(k.pods_cached(), 0);
    // Bounded: the third pod is refused and counted.
    k.upsert(&pod("a", "a", &"01".repeat(32)));
    k.upsert(&pod("b", "b", &"02".repeat(32)));
    k.upsert(&pod("c", "c", &"03".repeat(32)));
    assert_eq!(k.pods_cached(), 2);
    assert_eq!(k.stats.pods_rejected.load(Ordering::Relaxed), 1);
    // A relist without `a`: `a` was deleted while the watch was down.
    k.replace_all(&[pod("b", "b", &"02".repeat(32))], t0);
    k.sweep(t0 + Duration::from_secs(11));
    assert!(k.lookup(Some(&"01".repeat(32)), None).is_none());
    assert!(k.lookup(Some(&"02".repeat(32)), None).is_some());
}

#[test]
fn unresolved_containers_are_counted() {
    let k = Kubernetes::new("node-a", &KubernetesConfig::default());
    let host = ProcessInfo { pid: 1, ..Default::default() };
    assert!(k.lookup_process(&host).is_none());
    assert_eq!(k.stats.unresolved.load(Ordering::Relaxed), 0, "a host process is not a container");
    let c = ProcessInfo { pid: 2, container_id: Some(CID.into()), ..Default::default() };
    assert!(k.lookup_process(&c).is_none());
    assert_eq!(k.stats.unresolved.load(Ordering::Relaxed), 1);
}

#[test]
fn target_from_config_and_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let auto = KubernetesConfig::default();
    assert_eq!(auto.target(env(&[])).unwrap(), None, "auto outside a cluster: off");
    assert_eq!(auto.target(env(&[("K8S_NODE_NAME", "n")])).unwrap(), None);
    let t = auto
        .target(env(&[
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
            ("K8S_NODE_NAME", "n"),
        ]))
        .unwrap()
        .unwrap();
    assert_eq!(t.url, "https://[fd00::1]:6443");
    assert_eq!(t.ca_file.as_deref(), Some(Path::new("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")));
    assert_eq!(t.node, "n");
    let on = KubernetesConfig { enabled: Enabled::On, ..Default::default() };
    assert!(on.target(env(&[("K8S_NODE_NAME", "n")])).unwrap_err().to_string().contains("api_url"));
    let explicit = KubernetesConfig {
        enabled: Enabled::On,
        api_url: Some("http://127.0.0.1:8001/".into()),
        node_name: Some("node-a".into()),
        ..Default::default()
    };
    let t = explicit.target(env(&[("K8S_NODE_NAME", "other")])).unwrap().unwrap();
    assert_eq!((t.url.as_str(), t.node.as_str(), t.ca_file), ("http://127.0.0.1:8001", "node-a", None));
    let off = KubernetesConfig { enabled: Enabled::Off, ..explicit };
    assert_eq!(off.target(env(&[])).unwrap(), None);
}

use std::path::Path;

#[test]
fn resource_precedence_node_then_pod_then_rule_and_rebuild_on_change() {
    use crate::resource::resolver::{Match, ResourceResolver, Rule};
    let k = Arc::new(Kubernetes::new("node-a", &KubernetesConfig::default()));
    let rules = vec![Rule {
        matches: Match { cgroup_contains: Some("kubepods".into()), ..Default::default() },
        attributes: [("team".to_owned(), "from-rule".to_owned())].into(),
    }];
    let node =
        vec![crate::model::span::KeyValue::str("zone", "Z1"), crate::model::span::KeyValue::str("host.name", "vm")];
    let mut r = ResourceResolver::new(rules, node).with_kubernetes(Some(k.clone()));
    let p = ProcessInfo {
        pid: 7,
        exe_name: "python3".into(),
        cmdline: "python3 app.py".into(),
        runtime: Some("python"),
        container_id: Some(CID.into()),
        cgroup: format!("/kubepods.slice/cri-containerd-{CID}.scope"),
        start_time: 1,
        ..Default::default()
    };
    let attr = |res: &crate::model::span::Resource, key: &str| {
        res.attributes.iter().find(|a| a.key == key).map(|a| format!("{:?}", a.value))
    };
    // No pod yet: the program's name, the node's zone.
    let before = r.resolve(7, Some(&p));
    assert_eq!(attr(&before, "service.name").as_deref(), Some("Str(\"app\")"));
    assert_eq!(attr(&before, "zone").as_deref(), Some("Str(\"Z1\")"));
    // The pod arrives: the cached resource is rebuilt; the pod wins over the node, the
    // rule over the pod.
    k.upsert(&pod("u1", "p1", CID));
    let after = r.resolve(7, Some(&p));
    assert_eq!(attr(&after, "service.name").as_deref(), Some("Str(\"checkout\")"));
    assert_eq!(attr(&after, "zone").as_deref(), Some("Str(\"Z3\")"));
    assert_eq!(attr(&after, "team").as_deref(), Some("Str(\"from-rule\")"));
    assert_eq!(attr(&after, "k8s.pod.name").as_deref(), Some("Str(\"p1\")"));
    assert_eq!(attr(&after, "host.name").as_deref(), Some("Str(\"vm\")"));
}
