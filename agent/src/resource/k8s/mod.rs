//! Kubernetes metadata: which pod and container a process belongs to.
//!
//! A process's cgroup names its container (`…/cri-containerd-<id>.scope`, `crio-<id>`,
//! `docker-<id>`, cgroupfs `/kubepods/burstable/pod<uid>/<id>`; cgroup v1 and v2, see
//! [`crate::resource::cgroup::container_id`] and [`crate::resource::cgroup::pod_uid`]). The pods of
//! the agent's own node come from the Kubernetes API ([`watch`]: LIST, then WATCH with
//! `fieldSelector=spec.nodeName=<node>`), and each pod's container statuses map container
//! ids to the pod. A resource is then decorated with `k8s.namespace.name`, `k8s.pod.name`,
//! `k8s.pod.uid`, `k8s.node.name`, `k8s.container.name`, the owning workload, and the
//! attributes configured from pod annotations or labels (`service.name`, `zone`…).
//!
//! **Precedence** of a resource's attributes, later wins: node attributes (`host.name`,
//! `resource.attributes`, `OTEL_RESOURCE_ATTRIBUTES`) < the pod's metadata (`k8s.*`, then
//! `kubernetes.attributes`: a pod annotation wins over the label of the same key) < the
//! first matching `services` rule. Without any `service.name`, a process is named after its
//! program.
//!
//! Memory is bounded (`kubernetes.max_pods`; pods beyond it are counted, not cached). A
//! deleted pod stays resolvable for `kubernetes.delete_grace_s`, so spans of its last
//! requests, built after the DELETED event, still carry its metadata.

pub mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{model::sample::Sample, resource::process::ProcessInfo, util::component::Component};

/// The in-cluster service account files (mounted by the kubelet into every pod).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `kubernetes.enabled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enabled {
    /// On when both the API (`api_url` or `KUBERNETES_SERVICE_HOST`) and the node
    /// (`node_name` or `K8S_NODE_NAME`) are known: in a pod, not on a VM.
    #[default]
    Auto,
    On,
    Off,
}

impl Enabled {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "true" => Self::On,
            "false" => Self::Off,
            _ => return None,
        })
    }
}

/// The `kubernetes` section of the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesConfig {
    pub enabled: Enabled,
    /// API server URL; default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_url: Option<String>,
    /// CA bundle of the API server (https only).
    pub ca_file: PathBuf,
    /// Bearer token file, re-read for every request: bound service account tokens rotate.
    pub token_file: PathBuf,
    /// This node's name; default `$K8S_NODE_NAME` (the DaemonSet's downward API).
    pub node_name: Option<String>,
    /// How long a deleted pod still resolves.
    pub delete_grace: Duration,
    /// Pods cached at most.
    pub max_pods: usize,
    /// Resource attribute ← pod annotation of that key, else the pod label of that key.
    pub attributes: Vec<(String, String)>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            api_url: None,
            ca_file: PathBuf::from(format!("{SERVICE_ACCOUNT_DIR}/ca.crt")),
            token_file: PathBuf::from(format!("{SERVICE_ACCOUNT_DIR}/token")),
            node_name: None,
            delete_grace: Duration::from_secs(60),
            max_pods: 4096,
            attributes: DEFAULT_ATTRIBUTES.iter().map(|(a, k)| (a.to_string(), k.to_string())).collect(),
        }
    }
}

/// The recommended Kubernetes labels, and hoptrace's own keys for the seed's zone and team.
pub const DEFAULT_ATTRIBUTES: [(&str, &str); 4] = [
    ("service.name", "app.kubernetes.io/name"),
    ("service.version", "app.kubernetes.io/version"),
    ("zone", "hoptrace.io/zone"),
    ("team", "hoptrace.io/team"),
];

/// Where and as whom to reach the API, once the environment is consulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTarget {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub token_file: PathBuf,
    pub node: String,
}

impl KubernetesConfig {
    /// The API to watch, or None when disabled (`auto` outside a cluster). `env` reads
    /// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and `K8S_NODE_NAME`.
    pub fn target(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<ApiTarget>> {
        if self.enabled == Enabled::Off {
            return Ok(None);
        }
        let env = |k: &str| env(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let url = self.api_url.clone().or_else(|| {
            let host = env("KUBERNETES_SERVICE_HOST")?;
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            // An IPv6 service address needs brackets in a URL.
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            Some(format!("https://{host}:{port}"))
        });
        let node = self.node_name.clone().or_else(|| env("K8S_NODE_NAME"));
        match (url, node) {
            (Some(url), Some(node)) => {
                let https = url.starts_with("https://");
                Ok(Some(ApiTarget {
                    url: url.trim_end_matches('/').to_owned(),
                    ca_file: https.then(|| self.ca_file.clone()),
                    token_file: self.token_file.clone(),
                    node,
                }))
            }
            _ if self.enabled == Enabled::Auto => Ok(None),
            (None, _) => anyhow::bail!(
                "kubernetes.enabled is true but the API is unknown: set kubernetes.api_url or run in a pod \
                 (KUBERNETES_SERVICE_HOST)"
            ),
            (_, None) => anyhow::bail!(
                "kubernetes.enabled is true but this node's name is unknown: set kubernetes.node_name or \
                 K8S_NODE_NAME (downward API, spec.nodeName)"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The API objects, only the fields used (serde ignores the rest).

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    pub container_statuses: Vec<ContainerStatus>,
    pub init_container_statuses: Vec<ContainerStatus>,
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    pub name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; empty until it started.
    #[serde(rename = "containerID")]
    pub container_id: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

// ---------------------------------------------------------------------------------------
// What is kept of a pod.

/// The resource attributes a pod contributes, computed once per pod version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    /// `k8s.*` attributes, then the configured ones.
    pub attributes: Vec<(String, String)>,
    /// (container id, container name).
    pub containers: Vec<(String, String)>,
}

/// Container id from a status's `containerID` (`<runtime>://<id>`), lowercase.
pub fn status_container_id(s: &str) -> Option<String> {
    let id = s.rsplit("://").next()?;
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// `<base>-<digits>` → base, when the suffix looks like a CronJob's scheduled time
/// (minutes since the epoch, 8 digits or more). The same heuristic as the Collector's
/// k8sattributes processor: a Job does not say which CronJob made it except by name.
fn cronjob_of(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty()).then_some(base)
}

impl PodMeta {
    pub fn from_pod(pod: &Pod, mapped: &[(String, String)]) -> Self {
        let m = &pod.metadata;
        let mut a: Vec<(String, String)> = vec![
            ("k8s.namespace.name".into(), m.namespace.clone()),
            ("k8s.pod.name".into(), m.name.clone()),
            ("k8s.pod.uid".into(), m.uid.clone()),
        ];
        if !pod.spec.node_name.is_empty() {
            a.push(("k8s.node.name".into(), pod.spec.node_name.clone()));
        }
        let owner = m.owner_references.iter().find(|o| o.controller == Some(true)).or(m.owner_references.first());
        if let Some(o) = owner {
            match o.kind.as_str() {
                "ReplicaSet" => {
                    a.push(("k8s.replicaset.name".into(), o.name.clone()));
                    // Deployment `web` → ReplicaSet `web-<pod-template-hash>`.
                    if let Some(hash) = m.labels.get("pod-template-hash") {
                        if let Some(d) = o.name.strip_suffix(hash.as_str()).and_then(|d| d.strip_suffix('-')) {
                            if !d.is_empty() {
                                a.push(("k8s.deployment.name".into(), d.to_owned()));
                            }
                        }
                    }
                }
                "StatefulSet" => a.push(("k8s.statefulset.name".into(), o.name.clone())),
                "DaemonSet" => a.push(("k8s.daemonset.name".into(), o.name.clone())),
                "Job" => {
                    a.push(("k8s.job.name".into(), o.name.clone()));
                    if let Some(c) = cronjob_of(&o.name) {
                        a.push(("k8s.cronjob.name".into(), c.to_owned()));
                    }
                }
                _ => {}
            }
        }
        for (attr, key) in mapped {
            if let Some(v) = m.annotations.get(key).or_else(|| m.labels.get(key)) {
                if !v.is_empty() {
                    a.retain(|(k, _)| k != attr);
                    a.push((attr.clone(), v.clone()));
                }
            }
        }
        let s = &pod.status;
        let containers = s
            .container_statuses
            .iter()
            .chain(&s.init_container_statuses)
            .chain(&s.ephemeral_container_statuses)
            .filter_map(|c| Some((status_container_id(&c.container_id)?, c.name.clone())))
            .collect();
        PodMeta { uid: m.uid.clone(), attributes: a, containers }
    }
}

// ---------------------------------------------------------------------------------------
// The shared cache.

struct Entry {
    meta: Arc<PodMeta>,
    /// Set by DELETED (or absence from a relist); removed once the grace has passed.
    deleted_at: Option<Instant>,
}

#[derive(Default)]
struct Index {
    pods: HashMap<String, Entry>,
    /// container id → pod uid.
    containers: HashMap<String, String>,
}

impl Index {
    fn unlink(&mut self, uid: &str) {
        if let Some(e) = self.pods.get(uid) {
            for (id, _) in &e.meta.containers {
                if self.containers.get(id).is_some_and(|u| u == uid) {
                    self.containers.remove(id);
                }
            }
        }
    }
}

/// Counters on /metrics (`hoptrace_k8s_*`).
#[derive(Debug, Default)]
pub struct Stats {
    pub lists: AtomicU64,
    pub watch_events: AtomicU64,
    pub restarts_closed: AtomicU64,
    pub restarts_expired: AtomicU64,
    pub restarts_error: AtomicU64,
    pub errors_request: AtomicU64,
    pub errors_status: AtomicU64,
    pub errors_decode: AtomicU64,
    pub pods_rejected: AtomicU64,
    pub unresolved: AtomicU64,
}

/// Pods of this node by uid and container id, shared by the watcher (writer) and the
/// trace pipeline (reader).
pub struct Kubernetes {
    pub node: String,
    mapped: Vec<(String, String)>,
    max_pods: usize,
    delete_grace: Duration,
    index: RwLock<Index>,
    /// Bumped whenever what a lookup returns may have changed, so resolved resources
    /// cached elsewhere know to be rebuilt.
    generation: AtomicU64,
    pub stats: Stats,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Kubernetes {
    pub fn new(node: &str, cfg: &KubernetesConfig) -> Self {
        Self {
            node: node.to_owned(),
            mapped: cfg.attributes.clone(),
            max_pods: cfg.max_pods,
            delete_grace: cfg.delete_grace,
            index: RwLock::new(Index::default()),
            generation: AtomicU64::new(0),
            stats: Stats::default(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// ADDED / MODIFIED (or a listed pod): cached unless the cache is full.
    pub fn upsert(&self, pod: &Pod) {
        if pod.metadata.uid.is_empty() {
            bump(&self.stats.errors_decode);
            return;
        }
        let meta = PodMeta::from_pod(pod, &self.mapped);
        let Ok(mut ix) = self.index.write() else {
            return;
        };
        if let Some(e) = ix.pods.get(&meta.uid) {
            if *e.meta == meta && e.deleted_at.is_none() {
                return; // a status change that does not change what is exported
            }
        } else if ix.pods.len() >= self.max_pods {
            bump(&self.stats.pods_rejected);
            return;
        }
        ix.unlink(&meta.uid);
        for (id, _) in &meta.containers {
            ix.containers.insert(id.clone(), meta.uid.clone());
        }
        ix.pods.insert(meta.uid.clone(), Entry { meta: Arc::new(meta), deleted_at: None });
        drop(ix);
        self.changed();
    }

    /// DELETED: resolvable for the grace period still.
    pub fn delete(&self, uid: &str, now: Instant) {
        let Ok(mut ix) = self.index.write() else {
            return;
        };
        if let Some(e) = ix.pods.get_mut(uid) {
            e.deleted_at.get_or_insert(now);
        }
        drop(ix);
        self.sweep(now);
    }

    /// A full LIST: pods absent from it were deleted while the watch was down.
    pub fn replace_all(&self, pods: &[Pod], now: Instant) {
        let listed: std::collections::HashSet<&str> = pods.iter().map(|p| p.metadata.uid.as_str()).collect();
        if let Ok(mut ix) = self.index.write() {
            for (uid, e) in ix.pods.iter_mut() {
                if !listed.contains(uid.as_str()) {
                    e.deleted_at.get_or_insert(now);
                }
            }
        }
        for p in pods {
            self.upsert(p);
        }
        self.sweep(now);
    }

    /// Forgets pods deleted more than the grace period ago.
    pub fn sweep(&self, now: Instant) {
        let Ok(mut ix) = self.index.write() else {
            return;
        };
        let expired: Vec<String> = ix
            .pods
            .iter()
            .filter(|(_, e)| e.deleted_at.is_some_and(|t| now.saturating_duration_since(t) >= self.delete_grace))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &expired {
            ix.unlink(uid);
            ix.pods.remove(uid);
        }
        drop(ix);
        if !expired.is_empty() {
            self.changed();
        }
    }

    pub fn pods_cached(&self) -> usize {
        self.index.read().map(|ix| ix.pods.len()).unwrap_or(0)
    }

    /// The pod attributes of a container (with `k8s.container.name`) or, when its id is
    /// not in any pod's status yet, of the pod its cgroup names.
    pub fn lookup(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Option<Vec<(String, String)>> {
        let ix = self.index.read().ok()?;
        if let Some(id) = container_id {
            if let Some(e) = ix.containers.get(id).and_then(|uid| ix.pods.get(uid)) {
                let mut a = e.meta.attributes.clone();
                if let Some((_, name)) = e.meta.containers.iter().find(|(c, _)| c == id) {
                    a.push(("k8s.container.name".into(), name.clone()));
                }
                return Some(a);
            }
        }
        pod_uid.and_then(|uid| ix.pods.get(uid)).map(|e| e.meta.attributes.clone())
    }

    /// [`Self::lookup`] for a process; a containerised process without a pod is counted.
    pub fn lookup_process(&self, p: &ProcessInfo) -> Option<Vec<(String, String)>> {
        if p.container_id.is_none() && p.pod_uid.is_none() {
            return None;
        }
        let found = self.lookup(p.container_id.as_deref(), p.pod_uid.as_deref());
        if found.is_none() {
            bump(&self.stats.unresolved);
        }
        found
    }

    /// Samples for /metrics.
    pub fn samples(&self) -> Vec<Sample> {
        let s = |name, labels: Vec<(&'static str, &'static str)>, c: &AtomicU64| Sample {
            name,
            labels,
            value: c.load(Ordering::Relaxed),
        };
        let st = &self.stats;
        vec![
            Sample { name: "hoptrace_k8s_pods_cached", labels: vec![], value: self.pods_cached() as u64 },
            s("hoptrace_k8s_lists_total", vec![], &st.lists),
            s("hoptrace_k8s_watch_events_total", vec![], &st.watch_events),
            s("hoptrace_k8s_watch_restarts_total", vec![("reason", "closed")], &st.restarts_closed),
            s("hoptrace_k8s_watch_restarts_total", vec![("reason", "expired")], &st.restarts_expired),
            s("hoptrace_k8s_watch_restarts_total", vec![("reason", "error")], &st.restarts_error),
            s("hoptrace_k8s_api_errors_total", vec![("reason", "request")], &st.errors_request),
            s("hoptrace_k8s_api_errors_total", vec![("reason", "http_status")], &st.errors_status),
            s("hoptrace_k8s_api_errors_total", vec![("reason", "decode")], &st.errors_decode),
            s("hoptrace_k8s_pods_rejected_total", vec![], &st.pods_rejected),
            s("hoptrace_k8s_unresolved_containers_total", vec![], &st.unresolved),
        ]
    }
}

/// Starts watching when the configuration (and environment) enable it: the pod table
/// and the watch thread that fills it.
pub fn start(cfg: &KubernetesConfig) -> anyhow::Result<Option<(Arc<Kubernetes>, Component)>> {
    let Some(target) = cfg.target(|k| std::env::var(k).ok())? else {
        return Ok(None);
    };
    let k = Arc::new(Kubernetes::new(&target.node, cfg));
    let thread = watch::spawn(target, k.clone())?;
    Ok(Some((k, thread)))
}

#[cfg(test)]
mod tests;
