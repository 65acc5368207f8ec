//! Periodic OTLP export of the RED metrics (cumulative temporality), on its own thread and
//! current-thread runtime so the capture loop never waits on the network.
//!
//! The endpoint follows the trace exporter's: the same collector, TLS, headers and
//! protocol, with `/v1/traces` replaced by `/v1/metrics` for http/protobuf;
//! `OTEL_EXPORTER_OTLP_METRICS_*` variables override any of it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    client::{MetricsClient, MetricsExportError},
    otlp,
};
use crate::traces::red::RedRecorder;
use crate::{
    export::{ExporterConfig, Protocol, Signal},
    util::logging::log,
};

/// The metrics exporter's settings derived from the trace exporter's (after its
/// environment), then `OTEL_EXPORTER_OTLP_METRICS_*` from `lookup`. `None` without an
/// endpoint: metrics then stay on `/metrics` only.
pub fn metrics_exporter_config(
    traces: &ExporterConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExporterConfig>, crate::export::ConfigError> {
    let mut base = traces.clone();
    if let (Some(e), Protocol::HttpProtobuf) = (&base.endpoint, base.protocol) {
        let root = e.strip_suffix("/v1/traces").unwrap_or(e.trim_end_matches('/'));
        base.endpoint = Some(format!("{root}/v1/metrics"));
    }
    // Only the metrics-specific variables: the generic ones are already in `traces`.
    let specific = |k: &str| {
        if k.starts_with("OTEL_EXPORTER_OTLP_METRICS_") {
            lookup(k)
        } else {
            None
        }
    };
    let cfg = ExporterConfig::from_env_for_signal(base, Signal::Metrics, specific)?;
    Ok(cfg.endpoint.is_some().then_some(cfg))
}

/// Counters of the metrics exporter, for `/metrics`.
#[derive(Default, Debug)]
pub struct MetricsExportStats {
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub data_points_rejected: AtomicU64,
    pub last_latency_us: AtomicU64,
}

pub struct MetricsExporter {
    pub stats: Arc<MetricsExportStats>,
    stop: Mutex<mpsc::Sender<Instant>>,
    thread: Option<JoinHandle<()>>,
}

/// The export thread's state: one request per interval, and a last one at shutdown.
struct ExportLoop {
    rt: tokio::runtime::Runtime,
    client: MetricsClient,
    red: RedRecorder,
    stats: Arc<MetricsExportStats>,
    endpoint: String,
    /// The reason of the last failure, logged once until it changes or recovers.
    last_failure: Option<String>,
}

impl ExportLoop {
    fn new(cfg: &ExporterConfig, red: RedRecorder, stats: Arc<MetricsExportStats>) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let client = {
            let _guard = rt.enter();
            MetricsClient::new(cfg).map_err(|e| e.to_string())?
        };
        let endpoint = cfg.endpoint.clone().unwrap_or_default();
        Ok(Self { rt, client, red, stats, endpoint, last_failure: None })
    }

    /// Every `interval` until a stop arrives (with the deadline of the last export).
    fn run(mut self, interval: Duration, stop: mpsc::Receiver<Instant>) {
        let mut next = Instant::now() + interval;
        loop {
            // Shutdown: one last export so the final counts are not lost.
            let final_deadline = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(deadline) => Some(deadline),
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Instant::now() + Duration::from_secs(2)),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            };
            next += interval;
            let budget = final_deadline.map_or(interval, |d| d.saturating_duration_since(Instant::now()));
            self.export_once(budget);
            if final_deadline.is_some() {
                return;
            }
        }
    }

    fn export_once(&mut self, budget: Duration) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let snap = self.red.snapshot();
        // The node's attributes, from any series' resource (edges belong to no service).
        let node: Vec<_> = snap.series.first().map_or_else(Vec::new, |s| {
            s.resource
                .attributes
                .iter()
                .filter(|a| a.key == "host.name" || a.key == "k8s.node.name")
                .filter_map(|a| match &a.value {
                    crate::model::span::AnyValue::Str(v) => Some((a.key.to_string(), v.to_string())),
                    _ => None,
                })
                .map(|(k, v)| opentelemetry_proto::tonic::common::v1::KeyValue {
                    key: k,
                    value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)),
                    }),
                    ..Default::default()
                })
                .collect()
        });
        let req = super::graph::append(otlp::to_request(&snap, now), &self.red.graph_snapshot(), node, now);
        let Some(req) = req else { return };
        let started = Instant::now();
        let client = &mut self.client;
        let result = self.rt.block_on(async {
            tokio::time::timeout(budget.max(Duration::from_millis(100)), client.export(&req, budget))
                .await
                .unwrap_or_else(|_| {
                    Err(MetricsExportError {
                        reason: "deadline".into(),
                        detail: format!("not delivered within {budget:?}"),
                    })
                })
        });
        self.stats.last_latency_us.store(started.elapsed().as_micros() as u64, Relaxed);
        match result {
            Ok(rejected) => {
                self.stats.requests_ok.fetch_add(1, Relaxed);
                self.stats.data_points_rejected.fetch_add(rejected, Relaxed);
                if self.last_failure.take().is_some() {
                    log("info", "metrics export recovered", json!({ "endpoint": self.endpoint }));
                }
            }
            Err(e) => {
                self.stats.requests_failed.fetch_add(1, Relaxed);
                // Logged when the failure changes, not every interval.
                if self.last_failure.as_deref() != Some(&e.reason) {
                    log(
                        "warn",
                        "metrics export failed",
                        json!({ "endpoint": self.endpoint, "reason": e.reason, "detail": e.detail }),
                    );
                    self.last_failure = Some(e.reason);
                }
            }
        }
    }
}

impl MetricsExporter {
    /// Starts the export thread; a configuration the client refuses (CA file, headers)
    /// fails here.
    pub fn start(cfg: ExporterConfig, interval: Duration, red: RedRecorder) -> Result<Self> {
        let stats = Arc::new(MetricsExportStats::default());
        let (stop_tx, stop_rx) = mpsc::channel::<Instant>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("hoptrace-metrics".into())
            .spawn(move || match ExportLoop::new(&cfg, red, st) {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l.run(interval, stop_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .context("starting the metrics export thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { stats, stop: Mutex::new(stop_tx), thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                anyhow::bail!("metrics exporter: {e}")
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the metrics export thread exited during startup")
            }
        }
    }

    /// A final export within `deadline`, then the thread ends.
    pub fn shutdown(mut self, deadline: Duration) {
        if let Ok(tx) = self.stop.lock() {
            let _ = tx.send(Instant::now() + deadline);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsExporter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Ok(tx) = self.stop.lock() {
                let _ = tx.send(Instant::now());
            }
        }
    }
}
