//! The agent's binary, verbatim (`agent/src/main.rs` is included as it is), so that the
//! binary-size and build-time cost of a dependency is measured on the real agent:
//!
//! - without features: the agent as it is today;
//! - `--features otel`: plus the SDK pipelines of `otel_pipeline` (run with
//!   `DESIGN_CARD_OTEL=grpc|http ENDPOINT`);
//! - `--features kube`: plus the kube pod watch of `kube_client` (run with
//!   `DESIGN_CARD_KUBE=1 … URL NODE TOKEN_FILE [CA_FILE]`).
//!
//! The extra paths are reached only through those variables, so the agent behaves as the
//! agent; they exist so that the linker keeps the code whose size is measured.

mod agent_main {
    include!("../../../../agent/src/main.rs");

    pub fn entry() {
        main()
    }
}

fn main() {
    #[cfg(feature = "otel")]
    if let Ok(protocol) = std::env::var("DESIGN_CARD_OTEL") {
        let endpoint = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:4317".into());
        if let Err(e) = design_card::otel_pipeline::run_once(&endpoint, protocol == "grpc") {
            eprintln!("otel: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    #[cfg(feature = "kube")]
    if std::env::var_os("DESIGN_CARD_KUBE").is_some() {
        let a: Vec<String> = std::env::args().skip(1).collect();
        let t = design_card::kube_client::Target {
            url: a.first().cloned().unwrap_or_default(),
            node: a.get(1).cloned().unwrap_or_default(),
            token_file: a.get(2).cloned().unwrap_or_default().into(),
            ca_file: a.get(3).map(Into::into),
        };
        let k = std::sync::Arc::new(hoptrace::resource::k8s::Kubernetes::new(
            &t.node,
            &hoptrace::resource::k8s::KubernetesConfig::default(),
        ));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        if let Err(e) = rt.block_on(design_card::kube_client::run(t, k)) {
            eprintln!("kube: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    agent_main::entry();
}
