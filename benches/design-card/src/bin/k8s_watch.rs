//! LIST + WATCH the pods of one node with the agent's hand-written client or with kube,
//! into the agent's pod cache, and print the cache's state as a JSON line whenever it
//! changes (`k8s_compare.py` drives it against `tests/fixtures/fake_kube_api.py`).
//!
//! usage: k8s-watch hand|kube URL NODE TOKEN_FILE [CA_FILE]
//! (`kube` needs the `kube` feature.) With `K8S_WATCH_PROBE=<container id>`, each line also
//! carries the `service.name` the cache gives that container (`probe`), so a driver can
//! tell when one particular event has been applied.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use hoptrace::resource::k8s::{watch, ApiTarget, Kubernetes, KubernetesConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 5, "usage: k8s-watch hand|kube URL NODE TOKEN_FILE [CA_FILE]");
    let (which, url, node, token_file) = (&args[1], &args[2], &args[3], PathBuf::from(&args[4]));
    let ca_file = args.get(5).map(PathBuf::from);
    let k = Arc::new(Kubernetes::new(node, &KubernetesConfig::default()));
    // Kept alive for as long as the program runs.
    let _running: Box<dyn std::any::Any> = match which.as_str() {
        "hand" => {
            let target = ApiTarget { url: url.clone(), ca_file, token_file, node: node.clone() };
            Box::new(watch::spawn(target, k.clone())?)
        }
        #[cfg(feature = "kube")]
        "kube" => {
            let t = design_card::kube_client::Target { url: url.clone(), ca_file, token_file, node: node.clone() };
            let k = k.clone();
            // Like the agent's watcher: its own thread and current-thread runtime.
            Box::new(std::thread::Builder::new().name("k8s".into()).spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                if let Err(e) = rt.block_on(design_card::kube_client::run(t, k)) {
                    eprintln!("kube watch ended: {e:#}");
                }
            })?)
        }
        other => anyhow::bail!("unknown client {other:?} (hand, or kube with the kube feature)"),
    };
    let probe = std::env::var("K8S_WATCH_PROBE").ok();
    let mut last = String::new();
    loop {
        let s = &k.stats;
        let service = probe
            .as_deref()
            .and_then(|c| k.lookup(Some(c), None))
            .and_then(|a| a.into_iter().find(|(key, _)| key == "service.name").map(|(_, v)| v));
        let line = serde_json::json!({
            "pods": k.pods_cached(),
            "lists": s.lists.load(Relaxed),
            "events": s.watch_events.load(Relaxed),
            "expired": s.restarts_expired.load(Relaxed),
            "probe": service,
            "errors": s.errors_request.load(Relaxed) + s.errors_status.load(Relaxed) + s.errors_decode.load(Relaxed),
        })
        .to_string();
        if line != last {
            println!("{line}");
            last = line;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
