//! The agent's pod watch done with `kube` instead of `resource::k8s::watch`: the same
//! LIST + WATCH of this node's pods (`kube::runtime::watcher` with the node's field
//! selector and its default backoff), feeding the same cache (`resource::k8s::Kubernetes`),
//! so that only the client differs.
//!
//! Pods arrive as k8s-openapi `Pod`s (every field decoded) and are mapped to the agent's
//! `Pod` (the fields it uses), as the agent would have to.

use std::{path::PathBuf, sync::atomic::Ordering::Relaxed, sync::Arc, time::Instant};

use futures_util::StreamExt;
use hoptrace::resource::k8s::{ContainerStatus, Kubernetes, ObjectMeta, OwnerReference, Pod, PodSpec, PodStatus};
use k8s_openapi::api::core::v1 as core;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Config,
};

/// Where and as whom, as `resource::k8s::ApiTarget`.
pub struct Target {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub token_file: PathBuf,
    pub node: String,
}

fn statuses(v: Option<Vec<core::ContainerStatus>>) -> Vec<ContainerStatus> {
    v.unwrap_or_default()
        .into_iter()
        .map(|c| ContainerStatus { name: c.name, container_id: c.container_id.unwrap_or_default() })
        .collect()
}

/// k8s-openapi's Pod → the agent's Pod.
pub fn convert(p: core::Pod) -> Pod {
    let m = p.metadata;
    let status = p.status.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            uid: m.uid.unwrap_or_default(),
            resource_version: m.resource_version.unwrap_or_default(),
            labels: m.labels.unwrap_or_default(),
            annotations: m.annotations.unwrap_or_default(),
            owner_references: m
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .map(|o| OwnerReference { kind: o.kind, name: o.name, controller: o.controller })
                .collect(),
        },
        spec: PodSpec { node_name: p.spec.and_then(|s| s.node_name).unwrap_or_default() },
        status: PodStatus {
            container_statuses: statuses(status.container_statuses),
            init_container_statuses: statuses(status.init_container_statuses),
            ephemeral_container_statuses: statuses(status.ephemeral_container_statuses),
        },
    }
}

/// A kube client for `t`: the cluster's CA only, the bearer token from its file (which
/// kube re-reads at most once a minute).
pub fn client(t: &Target) -> anyhow::Result<Client> {
    let mut cfg = Config::new(t.url.parse()?);
    if let Some(ca) = &t.ca_file {
        let pem = std::fs::read(ca)?;
        let ders: Vec<Vec<u8>> = pem_certs(&pem);
        anyhow::ensure!(!ders.is_empty(), "{}: no certificate", ca.display());
        cfg.root_cert = Some(ders);
    }
    cfg.auth_info.token_file = Some(t.token_file.display().to_string());
    Ok(Client::try_from(cfg)?)
}

/// DER certificates of a PEM file (base64 between the BEGIN/END CERTIFICATE lines).
fn pem_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).map(|c| c.to_vec()).collect()
}

/// Runs the watch until the stream ends (never, with backoff): every LIST replaces the
/// cache (`Init` … `InitDone`), every event updates it, as `resource::k8s::watch` does.
pub async fn run(t: Target, k: Arc<Kubernetes>) -> anyhow::Result<()> {
    let api: Api<core::Pod> = Api::all(client(&t)?);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", t.node));
    let mut stream = watcher(api, wc).default_backoff().boxed();
    let mut listed: Vec<Pod> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(p)) => listed.push(convert(p)),
            Ok(watcher::Event::InitDone) => {
                k.replace_all(&listed, Instant::now());
                k.stats.lists.fetch_add(1, Relaxed);
                listed = Vec::new();
            }
            Ok(watcher::Event::Apply(p)) => {
                k.stats.watch_events.fetch_add(1, Relaxed);
                let p = convert(p);
                if p.spec.node_name == t.node {
                    k.upsert(&p);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                k.stats.watch_events.fetch_add(1, Relaxed);
                k.delete(p.metadata.uid.as_deref().unwrap_or_default(), Instant::now());
            }
            Err(e) => {
                let c = match &e {
                    watcher::Error::WatchError(s) if s.code == 410 => &k.stats.restarts_expired,
                    _ => &k.stats.errors_request,
                };
                c.fetch_add(1, Relaxed);
                eprintln!("{{\"kube_watcher_error\":{:?}}}", e.to_string());
            }
        }
    }
    Ok(())
}
