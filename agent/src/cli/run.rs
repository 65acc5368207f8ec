//! `hoptrace run`: the agent's main job. Capture → HTTP exchanges → spans → OTLP.
//!
//! With no collector configured (no `OTEL_EXPORTER_OTLP_*ENDPOINT`), spans are printed as
//! OTLP/JSON lines on stdout (or `--output FILE`), so the agent shows traces with nothing
//! else installed. The agent's own log lines are JSON on stderr.
//!
//! Settings come from the command line, the environment, and `--config FILE` (see
//! [`crate::config`] for which wins).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use hoptrace_common::DROP_REASONS;
use serde_json::json;

use crate::{
    capture::conntrack::{Connection, TableStats},
    capture::counters::Counters,
    capture::driver::{install_signal_handlers, Consumer, Driver},
    capture::events::{AppLog, Close, ConnectFailed, Data, Open},
    capture::loader::{applog::AppLogTargets, CaptureOptions, DropsReader},
    capture::stream::Segment,
    capture::Capture,
    cli::probe::{capture_options, conn_table, ProbeArgs},
    config::{self, Config},
    export::{
        logs_exporter_config,
        metrics::exporter::{metrics_exporter_config, MetricsExporter},
        ExporterConfig, JsonOutput, LogExporter, SpanExporter,
    },
    gaps::alerting::AlertConfig,
    model::sample::Sample,
    model::span::SpanRecord,
    ops::components::Components,
    ops::server::{self, EndpointState, Health},
    resource::k8s::Kubernetes,
    resource::resolver::ResourceResolver,
    traces::consumer::TraceConsumer,
    traces::red::RedRecorder,
    traces::{
        logs::{select::AppLogSelector, LogSink},
        SpanSink, TracePipeline,
    },
    util::logging::log,
};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// YAML configuration file (see deploy/hoptrace.yaml); flags and the environment win
    /// over it.
    #[arg(long, value_name = "FILE", env = "HOPTRACE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Without a collector endpoint: write OTLP/JSON lines here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also emit SERVER/CLIENT spans for services that instrument themselves.
    #[arg(long)]
    pub no_suppress_instrumented: bool,
    /// Spans held for export while the collector is slow or down (oldest dropped beyond).
    #[arg(long)]
    pub export_queue_capacity: Option<usize>,
    /// Spans per export request at most.
    #[arg(long)]
    pub export_batch_size: Option<usize>,
    /// Fraction of agent-started traces exported (overrides `sampling.ratio`).
    #[arg(long)]
    pub sample_ratio: Option<f64>,
    /// Push propagation-gap alerts to this Alertmanager (e.g. http://alertmanager:9093).
    #[arg(long)]
    pub alertmanager: Option<String>,
    /// PEM CA certificate(s) trusted for an https --alertmanager, besides the built-in roots.
    #[arg(long)]
    pub alertmanager_ca_file: Option<PathBuf>,
    /// Gaps on one hop within --alert-window that fire its alert.
    #[arg(long, default_value_t = 1)]
    pub alert_threshold: u64,
    /// Seconds over which gaps are counted; a hop without new gaps for this long resolves.
    #[arg(long, default_value_t = 600.0)]
    pub alert_window: f64,
    /// Seconds between re-sends of a firing alert.
    #[arg(long, default_value_t = 60.0)]
    pub alert_resend: f64,
    /// HTTP endpoint for /gaps, /metrics, /healthz, /readyz ("off" to disable).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Export what selected processes write to stdout/stderr as OTLP log records joined to
    /// their requests' traces (`logs.app` says which services).
    #[arg(long)]
    pub app_logs: bool,
    /// No access records (one OTLP log record per served request, on by default with an
    /// endpoint).
    #[arg(long)]
    pub no_access_logs: bool,
}

/// Where `run` sends what the pipeline makes: spans, and log records when they are on.
pub(crate) struct Exporters {
    spans: SpanExporter,
    logs: Option<LogExporter>,
}

impl SpanSink for Exporters {
    fn submit(&mut self, span: SpanRecord) {
        self.spans.submit(span);
    }

    fn logs(&mut self) -> Option<&mut dyn LogSink> {
        self.logs.as_mut().map(|l| l as &mut dyn LogSink)
    }
}

impl LogSink for LogExporter {
    fn submit_log(&mut self, record: crate::model::log::LogRecord) {
        LogExporter::submit(self, record);
    }
}

/// The `run` consumer: capture → pipeline → exporter, plus the HTTP endpoint's metrics.
struct Traces {
    inner: TraceConsumer<Exporters>,
    endpoint: Arc<EndpointState>,
    drops: DropsReader,
    /// Pod metadata (its counters go on /metrics).
    k8s: Option<Arc<crate::resource::k8s::Kubernetes>>,
    /// The OTLP metrics exporter's counters, when one runs.
    metrics_export: Option<Arc<crate::export::metrics::exporter::MetricsExportStats>>,
    ringbuf_bytes: u64,
    /// Which processes' stdout/stderr the kernel captures (`--app-logs`).
    app_logs: Option<crate::traces::logs::select::AppLogSelector>,
}

impl Traces {
    /// Metric samples: capture, connection table, kernel drops, spans, export.
    fn samples(&self, counters: &Counters, table: &TableStats, tracked: usize) -> Vec<Sample> {
        let kernel = self.drops.read().unwrap_or([0; DROP_REASONS]);
        let mut out = counters.samples(table, tracked, &kernel);
        let t = &self.inner.pipeline.stats;
        let e = self.inner.sink.spans.stats();
        let s = |name, labels: Vec<(&'static str, &'static str)>, value| Sample { name, labels, value };
        out.extend([
            s("hoptrace_http_exchanges_total", vec![], t.exchanges),
            s("hoptrace_spans_total", vec![("kind", "server")], t.spans_server),
            s("hoptrace_spans_total", vec![("kind", "client")], t.spans_client),
            s("hoptrace_spans_suppressed_instrumented_total", vec![], t.spans_suppressed_instrumented),
            s("hoptrace_spans_not_sampled_total", vec![], t.spans_not_sampled),
            s("hoptrace_export_spans_exported_total", vec![], e.spans_exported),
            s("hoptrace_export_spans_dropped_total", vec![("reason", "queue_full")], e.spans_dropped_queue_full),
            s("hoptrace_export_spans_dropped_total", vec![("reason", "non_retryable")], e.spans_dropped_non_retryable),
            s(
                "hoptrace_export_spans_dropped_total",
                vec![("reason", "retries_exhausted")],
                e.spans_dropped_retries_exhausted,
            ),
            s("hoptrace_export_spans_rejected_total", vec![], e.spans_rejected_by_collector),
            s("hoptrace_export_queue_depth", vec![], e.queue_depth),
            s("hoptrace_routes_overflowed_total", vec![], t.routes_overflowed),
        ]);
        if let Some(k) = &self.k8s {
            out.extend(k.samples());
        }
        if let Some(logs) = &self.inner.sink.logs {
            out.extend(log_samples(&self.inner.pipeline.app_logs.stats, &logs.stats()));
        }
        if let Some(sel) = &self.app_logs {
            out.push(s("hoptrace_app_log_processes", vec![], sel.selected));
            out.push(s("hoptrace_app_log_processes_refused_total", vec![("reason", "map_full")], sel.map_full));
        }
        // Parse errors and invalid context are on /metrics through metrics::selfstats.
        out.push(s("hoptrace_connections_unknown_protocol_total", vec![], t.connections_unknown_protocol));
        let j = self.inner.pipeline.job_stats();
        out.extend([
            s("hoptrace_jobs_started_total", vec![], j.jobs_started),
            s("hoptrace_jobs_ended_total", vec![], j.jobs_ended),
            s("hoptrace_jobs_fanned_out_total", vec![], j.jobs_fanned_out),
            s("hoptrace_jobs_calls_parented_total", vec![], j.calls_parented),
            s("hoptrace_jobs_not_tracked_total", vec![("reason", "table_full")], j.not_tracked_table_full),
            s("hoptrace_env_context_total", vec![("result", "valid")], j.env_context_valid),
            s("hoptrace_env_context_total", vec![("result", "invalid")], j.env_context_invalid),
            s(
                "hoptrace_environ_truncated_total",
                vec![],
                crate::resource::process::ENVIRON_TRUNCATED.load(std::sync::atomic::Ordering::Relaxed),
            ),
        ]);
        for (det, n) in &t.redactions {
            out.push(s("hoptrace_redactions_total", vec![("detector", det)], *n));
        }
        for (field, n) in self.inner.pipeline.capped_values() {
            out.push(s("hoptrace_values_capped_total", vec![("field", field)], n));
        }
        for d in crate::policy::sampling::Decision::ALL {
            let n = t.sampling.get(&d).copied().unwrap_or(0);
            out.push(s("hoptrace_spans_sampled_total", vec![("decision", d.label())], n));
        }
        let st = self.inner.pipeline.stitch_stats();
        for (outcome, n) in [
            ("stitched", st.stitched),
            ("ambiguous", st.ambiguous),
            ("mismatched", st.mismatched),
            ("expired", st.expired),
            ("offer_expired", st.offers_expired),
            ("overflow", st.overflow),
        ] {
            out.push(s("hoptrace_stitch_total", vec![("outcome", outcome)], n));
        }
        out
    }
}

impl Consumer for Traces {
    fn open(&mut self, ev: &Open, conn: Option<&Connection>) -> Result<()> {
        self.inner.open(ev, conn)
    }

    fn data(&mut self, d: &Data, conn: &Connection, segs: &[Segment]) -> Result<()> {
        self.inner.data(d, conn, segs)
    }

    fn closed(&mut self, conn: &Connection, ev: Option<&Close>, flushed: &[Vec<Segment>; 2]) -> Result<()> {
        self.inner.closed(conn, ev, flushed)
    }

    fn connect_failed(&mut self, ev: &ConnectFailed, conn: Option<&Connection>) -> Result<()> {
        self.inner.connect_failed(ev, conn)
    }

    fn exec(&mut self, ev: &crate::capture::events::Exec) -> Result<()> {
        self.inner.exec(ev)
    }

    fn exiting(&mut self, ev: &crate::capture::events::Exit) -> bool {
        self.inner.exiting(ev)
    }

    fn exited(&mut self, ev: &crate::capture::events::Exit) -> Result<()> {
        self.inner.exited(ev)
    }

    fn app_log(&mut self, ev: &AppLog) -> Result<()> {
        self.inner.app_log(ev)
    }

    fn py_context(&mut self, ev: &crate::capture::events::PyContext) -> Result<()> {
        self.inner.py_context(ev)
    }

    fn tick(&mut self, counters: &Counters, table: &TableStats, tracked: usize) -> Result<()> {
        if let Some(selector) = &mut self.app_logs {
            selector.scan(&mut self.inner.pipeline);
        }
        self.inner.tick(counters, table, tracked)?;
        let samples = self.samples(counters, table, tracked);
        if let Ok(mut s) = self.endpoint.samples.lock() {
            *s = samples;
        }
        let extra = crate::ops::metrics::selfstats::extra_samples(
            &self.inner.pipeline.stats,
            &self.inner.sink.spans.stats(),
            self.metrics_export.as_deref(),
            self.ringbuf_bytes,
        );
        if let Ok(mut s) = self.endpoint.metrics.extra.lock() {
            *s = extra;
        }
        Ok(())
    }
}

/// The log records' counters: made (by kind), app line outcomes, export outcomes.
fn log_samples(t: &crate::traces::logs::LogStats, e: &crate::export::ExportStats) -> Vec<Sample> {
    let s = |name, labels: Vec<(&'static str, &'static str)>, value| Sample { name, labels, value };
    vec![
        s("hoptrace_log_records_total", vec![("kind", "access")], t.access_records),
        s("hoptrace_log_records_total", vec![("kind", "app")], t.app_lines),
        s("hoptrace_app_log_lines_linked_total", vec![], t.app_lines_linked),
        s("hoptrace_app_log_lines_unlinked_total", vec![("reason", "ambiguous_thread")], t.app_lines_ambiguous),
        s("hoptrace_app_log_lines_truncated_total", vec![], t.app_lines_truncated),
        s("hoptrace_app_log_lines_dropped_total", vec![("reason", "rate_limited")], t.app_lines_rate_limited),
        s("hoptrace_app_log_lines_dropped_total", vec![("reason", "pending_full")], t.app_lines_dropped_pending),
        s("hoptrace_app_log_lines_own_trace_id_total", vec![], t.app_lines_own_trace_id),
        s("hoptrace_app_log_lines_trace_id_disagreed_total", vec![], t.app_lines_trace_id_disagreed),
        s("hoptrace_app_log_writes_incomplete_total", vec![], t.app_writes_incomplete),
        s("hoptrace_export_log_records_exported_total", vec![], e.spans_exported),
        s("hoptrace_export_log_records_dropped_total", vec![("reason", "queue_full")], e.spans_dropped_queue_full),
        s(
            "hoptrace_export_log_records_dropped_total",
            vec![("reason", "non_retryable")],
            e.spans_dropped_non_retryable,
        ),
        s(
            "hoptrace_export_log_records_dropped_total",
            vec![("reason", "retries_exhausted")],
            e.spans_dropped_retries_exhausted,
        ),
        s("hoptrace_export_log_records_dropped_total", vec![("reason", "shutdown")], e.spans_dropped_shutdown),
        s("hoptrace_export_log_records_rejected_total", vec![], e.spans_rejected_by_collector),
        s("hoptrace_export_log_queue_depth", vec![], e.queue_depth),
        s("hoptrace_export_log_requests_total", vec![("outcome", "ok")], e.export_requests_ok),
        s("hoptrace_export_log_requests_total", vec![("outcome", "failed")], e.export_requests_failed),
    ]
}

const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Starts the HTTP endpoint. The default address may be taken (another agent, a test):
/// then the agent runs without it and says so; an address asked for explicitly must work.
fn start_endpoint(
    listen: &str,
    state: Arc<EndpointState>,
    services: &mut Components,
) -> Result<Option<std::net::SocketAddr>> {
    if listen == "off" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = listen.parse().with_context(|| format!("--listen {listen}: not an address"))?;
    match server::spawn(addr, state) {
        Ok((bound, thread)) => {
            services.push(thread);
            Ok(Some(bound))
        }
        Err(e) if listen == DEFAULT_LISTEN => {
            log("warn", "HTTP endpoint not started", json!({ "listen": listen, "error": format!("{e:#}") }));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The span exporter's settings: the file, the environment, then the flags.
fn exporter_config(args: &RunArgs, config: &Config) -> Result<ExporterConfig> {
    let mut base = config.exporter_base();
    if let Some(path) = &args.output {
        base.json_output = JsonOutput::File(path.clone());
    }
    if let Some(n) = args.export_queue_capacity {
        base.queue_capacity = n;
    }
    if let Some(n) = args.export_batch_size {
        base.batch_max_spans = n;
    }
    ExporterConfig::from_env(base).context("exporter configuration")
}

/// The log exporter's settings, when log records are exported: access records with an
/// endpoint (unless turned off), app lines whenever they are asked for (printed as
/// OTLP/JSON where spans go, without an endpoint).
fn logs_config(args: &RunArgs, config: &Config, spans: &ExporterConfig) -> Result<Option<ExporterConfig>> {
    let access = config.logs.access_enabled && !args.no_access_logs && spans.endpoint.is_some();
    let app = config.logs.app.enabled || args.app_logs;
    if !access && !app {
        return Ok(None);
    }
    Ok(Some(logs_exporter_config(spans, |k| std::env::var(k).ok()).context("log exporter configuration")?))
}

/// The trace pipeline as configured, with its resources (and pods, when watched).
fn pipeline(args: &RunArgs, config: &Config, k8s: Option<Arc<Kubernetes>>) -> Result<TracePipeline> {
    let mut cfg = config.trace_config();
    if args.no_suppress_instrumented {
        cfg.suppress_instrumented = false;
    }
    if let Some(r) = args.sample_ratio {
        anyhow::ensure!((0.0..=1.0).contains(&r), "--sample-ratio must be between 0 and 1, got {r}");
        cfg.sampling.ratio = r;
    }
    let resources = ResourceResolver::new(config.rules(), config.node_attributes()).with_kubernetes(k8s);
    let mut pipeline = TracePipeline::new(cfg, resources);
    pipeline.red = RedRecorder::new(&config.metrics);
    Ok(pipeline)
}

/// The Alertmanager push, checked (URL, CA file) with the rest of the configuration.
fn alerts_config(args: &RunArgs) -> Result<Option<(AlertConfig, crate::gaps::alerting::Push)>> {
    let Some(url) = &args.alertmanager else {
        anyhow::ensure!(args.alertmanager_ca_file.is_none(), "--alertmanager-ca-file needs --alertmanager");
        return Ok(None);
    };
    let cfg = AlertConfig {
        url: url.clone(),
        ca_file: args.alertmanager_ca_file.clone(),
        threshold: args.alert_threshold,
        window: Duration::from_secs_f64(args.alert_window),
        resend_every: Duration::from_secs_f64(args.alert_resend),
    };
    let push = crate::gaps::alerting::Push::new(&cfg)?;
    Ok(Some((cfg, push)))
}

/// `hoptrace run`. Start order: configuration (all of it checked before anything
/// starts), exporters, Kubernetes watch, kernel programs, pipeline, endpoint, alerts;
/// then the capture loop. Stop order: the capture loop (the producer) ends and drains,
/// held calls flush, the span exporter delivers what is queued, the metrics exporter
/// sends a last snapshot, then the services stop, last started first.
pub fn run(args: RunArgs) -> Result<()> {
    install_signal_handlers();
    // Before anything is loaded: a configuration mistake is reported whole, up front.
    let config = match &args.config {
        Some(path) => config::load(path)?,
        None => config::from_env()?,
    };
    let mut probe = args.probe.clone();
    probe.apply_config(&config);
    let exporter_cfg = exporter_config(&args, &config)?;
    let alerts = alerts_config(&args)?;
    let collector = exporter_cfg.endpoint.clone();
    let metrics_cfg = metrics_exporter_config(&exporter_cfg, |k| std::env::var(k).ok())
        .context("metrics exporter configuration")?
        .filter(|_| !config.metrics.export_interval.is_zero());
    let logs_cfg = logs_config(&args, &config, &exporter_cfg)?;
    let mut services = Components::default();
    let log_exporter = match &logs_cfg {
        Some(c) => Some(LogExporter::start(c.clone()).context("starting the log exporter")?),
        None => None,
    };
    let exporter = SpanExporter::start(exporter_cfg).context("starting the exporter")?;
    // Before the programs load (seconds): the first LIST runs meanwhile, so the first spans
    // already have their pods, and a Kubernetes misconfiguration fails fast.
    let k8s = crate::resource::k8s::start(&config.kubernetes).context("kubernetes metadata")?.map(|(k, thread)| {
        services.push(thread);
        k
    });
    let app_logs = config.logs.app.enabled || args.app_logs;
    let mut capture = Capture::load(&CaptureOptions { app_logs, ..capture_options(&probe) })?;
    let mut pipeline = pipeline(&args, &config, k8s.clone())?;
    pipeline.app_logs.cfg = config.logs.clone();
    pipeline.app_logs.cfg.access_enabled &= !args.no_access_logs;
    pipeline.app_logs.cfg.app.enabled |= args.app_logs;
    let driver = Driver::new(conn_table(&probe));
    let health =
        Health { heartbeat: driver.heartbeat.clone(), stall_timeout: Duration::from_secs(probe.stall_timeout) };
    let endpoint = Arc::new(EndpointState { gaps: pipeline.gaps.clone(), health, ..Default::default() });
    let _ = endpoint.metrics.red.set(pipeline.red.clone());
    let metrics_exporter = match &metrics_cfg {
        Some(c) => Some(
            MetricsExporter::start(c.clone(), config.metrics.export_interval, pipeline.red.clone())
                .context("starting the metrics exporter")?,
        ),
        None => None,
    };
    let listening = start_endpoint(&args.listen, endpoint.clone(), &mut services)?;
    if let Some((cfg, push)) = alerts {
        services.push(crate::gaps::alerting::spawn(cfg, push, pipeline.gaps.clone())?);
    }
    let mut traces = Traces {
        inner: TraceConsumer::new(pipeline, Exporters { spans: exporter, logs: log_exporter }),
        endpoint: endpoint.clone(),
        drops: capture.loaded.drops_reader()?,
        k8s,
        metrics_export: metrics_exporter.as_ref().map(|m| m.stats.clone()),
        ringbuf_bytes: u64::from(probe.ringbuf_size).max(4096).next_power_of_two(),
        app_logs: match app_logs {
            true => Some(AppLogSelector::new(AppLogTargets::open(&capture.loaded.ebpf)?)),
            false => None,
        },
    };
    let mut driver = driver;
    driver.publish(&capture, &mut traces)?;
    endpoint.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    log(
        "info",
        "ready",
        json!({ "pid": std::process::id(), "programs": capture.loaded.attachments,
                "exporter": collector.as_deref().unwrap_or("otlp-json"),
                "metrics_exporter": metrics_cfg.as_ref().and_then(|c| c.endpoint.as_deref()),
                "logs_exporter": logs_cfg.as_ref().map(|c| c.endpoint.as_deref().unwrap_or("otlp-json")),
                "config": args.config.as_ref().map(|p| p.display().to_string()),
                "service_rules": config.services.len(),
                "listen": listening.map(|a| a.to_string()) }),
    );
    // Loading parsed the kernel's BTF (tens of MiB, freed by now): hand it back so the
    // steady-state RSS is the agent's, not start-up's.
    crate::ops::allocator::after_startup();
    driver.run(&mut capture, probe.duration.map(Duration::from_secs_f64), &mut traces)?;
    shutdown(driver, capture, traces, metrics_exporter, services)
}

/// Producers before consumers: the capture loop has drained; held calls go out, the
/// exporters deliver, the services stop; then the stop statistics.
fn shutdown(
    driver: Driver,
    capture: Capture,
    mut traces: Traces,
    metrics_exporter: Option<MetricsExporter>,
    mut services: Components,
) -> Result<()> {
    traces.inner.flush();
    let TraceConsumer { pipeline, sink: Exporters { spans: exporter, logs: log_exporter } } = traces.inner;
    let export = exporter.shutdown(Duration::from_secs(5));
    let logs_export = log_exporter.map(|l| l.shutdown(Duration::from_secs(3)));
    let metrics_export = metrics_exporter.map(|m| {
        let stats = m.stats.clone();
        m.shutdown(Duration::from_secs(2));
        stats
    });
    services.stop_all(Duration::from_secs(2));
    let kernel = capture.loaded.kernel_drops()?;
    drop(capture);
    log(
        "info",
        "stopped",
        json!({
            "capture": driver.counters.to_json(&driver.table.stats, driver.table.len(), &kernel),
            "traces": pipeline.stats,
            "gaps": pipeline.gaps.lock().map(|g| server::gaps_json(&g)).unwrap_or_default(),
            "export": export,
            "logs": pipeline.app_logs.stats,
            "logs_export": logs_export,
            "metrics_export": metrics_export.map(|s| json!({
                "requests_ok": s.requests_ok.load(std::sync::atomic::Ordering::Relaxed),
                "requests_failed": s.requests_failed.load(std::sync::atomic::Ordering::Relaxed),
            })),
        }),
    );
    Ok(())
}
