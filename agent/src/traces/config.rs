//! The trace pipeline's settings (the `traces`, `gaps`, `sampling` and `privacy` sections
//! of the configuration file become these).

use std::time::Duration;

use crate::policy::sampling::SamplingConfig;

#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// Do not emit SERVER/CLIENT spans for processes that instrument themselves.
    pub suppress_instrumented: bool,
    /// How long a client call may wait for the inbound request it belongs to.
    pub hold_timeout: Duration,
    /// Request header (lowercase) → span attribute (the seed's `tenant`, `correlation_id`…).
    pub request_header_attributes: Vec<(String, String)>,
    /// Response header (lowercase) → span attribute (`model_name`, `model_version`…).
    pub response_header_attributes: Vec<(String, String)>,
    /// Response headers whose presence marks a risk signal; each becomes a span event.
    pub risk_signal_headers: Vec<String>,
    /// Record `user_agent.original` (off by default: it can identify people).
    pub record_user_agent: bool,
    /// W3C baggage keys exported as `baggage.<key>` attributes (none by default).
    pub baggage_allowlist: Vec<String>,
    /// Built-in PII detectors turned off (by name: `phone`, `number`…); all on by default.
    pub disabled_detectors: Vec<String>,
    /// Extra patterns (regular expressions) redacted as `{custom}` everywhere.
    pub redact_patterns: Vec<String>,
    /// Propagation-gap detection.
    pub gaps: GapConfig,
    pub sampling: SamplingConfig,
    /// Distinct routes kept per service before new ones go to one overflow bucket.
    pub max_routes_per_service: usize,
    /// HTTP methods exported as they are besides semantic conventions' list (`GET`…);
    /// any other method is exported as `_OTHER`, its name never leaving.
    pub extra_http_methods: Vec<String>,
    /// Batch jobs and the environment trace context (the `jobs` section).
    pub jobs: super::jobs::JobsConfig,
    /// Same-node stitching: a request between two processes of this node that carried no
    /// trace context joins the caller's trace (see `stitch`). The gap is still reported.
    pub stitch: bool,
}

/// Which hops count as broken (see `gaps`).
#[derive(Clone, Debug)]
pub struct GapConfig {
    /// Zones whose services are entry points: requests without context are normal there.
    pub entry_zones: Vec<String>,
    /// Services (service.name) that are entry points.
    pub entry_services: Vec<String>,
    /// Peers in these networks are internal (besides processes seen on this node).
    pub internal_networks: Vec<ipnet::IpNet>,
    /// Routes (templated, e.g. `/healthz`) never reported.
    pub ignore_routes: Vec<String>,
    /// Services (service.name) whose hops are never reported, as caller or callee.
    pub ignore_services: Vec<String>,
}

impl Default for GapConfig {
    fn default() -> Self {
        Self {
            entry_zones: vec!["Z1".into()],
            entry_services: Vec::new(),
            internal_networks: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            ignore_routes: ["/health", "/healthz", "/ready", "/readyz", "/live", "/livez", "/metrics"]
                .map(String::from)
                .to_vec(),
            ignore_services: Vec::new(),
        }
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            suppress_instrumented: true,
            hold_timeout: Duration::from_secs(10),
            // The seed's attribute schema (no PII): request headers name the caller's
            // tenant, business correlation id and consuming app (Z7)…
            request_header_attributes: [
                ("x-tenant-id", "tenant"),
                ("x-correlation-id", "correlation_id"),
                ("x-component", "component"),
                ("x-consumer-app", "consumer_app"),
                ("x-use-case", "use_case"),
                ("x-purpose", "purpose"),
                ("x-sdk-version", "sdk.version"),
            ]
            .map(|(h, a)| (h.to_string(), a.to_string()))
            .to_vec(),
            // …and model-serving responses (Z6) the model that answered.
            response_header_attributes: [
                ("x-model-name", "model_name"),
                ("x-model-version", "model_version"),
                ("x-model-stage", "model_stage"),
                ("x-policy-digest", "policy_digest"),
            ]
            .map(|(h, a)| (h.to_string(), a.to_string()))
            .to_vec(),
            risk_signal_headers: ["x-risk-abuse", "x-risk-scraping", "x-risk-jailbreak"].map(String::from).to_vec(),
            record_user_agent: false,
            baggage_allowlist: Vec::new(),
            disabled_detectors: Vec::new(),
            redact_patterns: Vec::new(),
            gaps: GapConfig::default(),
            sampling: SamplingConfig::default(),
            max_routes_per_service: 1000,
            extra_http_methods: Vec::new(),
            jobs: Default::default(),
            stitch: true,
        }
    }
}
