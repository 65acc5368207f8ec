//! `hoptrace run`: the agent's main job. Capture → HTTP exchanges → spans → OTLP.
//!
//! With no collector configured (no `OTEL_EXPORTER_OTLP_*ENDPOINT`), spans are printed as
//! OTLP/JSON lines on stdout (or `--output FILE`), so the agent shows traces with nothing
//! else installed. The agent's own log lines are JSON on stderr.
//!
//! Settings come from the command line, the environment, and `--config FILE` (see
//! [`crate::config`] for which wins).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use hoptrace_common::{CloseEvent, ConnectFailedEvent, DataHeader, Direction, OpenEvent};
use serde_json::json;

use crate::{
    capture::{capture_options, conn_table, ProbeArgs},
    config,
    conntrack::Connection,
    counters::Counters,
    driver::{install_signal_handlers, Consumer, Driver},
    export::{Exporter, ExporterConfig, JsonOutput},
    loader,
    logging::log,
    spans::SpanRecord,
    stream::Segment,
    traces::{resource::ResourceResolver, SpanSink, TracePipeline},
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
}

impl SpanSink for Exporter {
    fn submit(&mut self, span: SpanRecord) {
        Exporter::submit(self, span);
    }
}

fn direction(d: u8) -> Direction {
    if d == Direction::Ingress as u8 {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

struct Traces {
    pipeline: TracePipeline,
    exporter: Exporter,
}

impl Consumer for Traces {
    fn open(&mut self, _ev: &OpenEvent, _conn: Option<&Connection>) -> Result<()> {
        Ok(())
    }

    fn data(&mut self, h: &DataHeader, _payload: &[u8], conn: &Connection, segs: &[Segment]) -> Result<()> {
        self.pipeline.on_segments(conn, direction(h.direction), segs, &mut self.exporter);
        Ok(())
    }

    fn closed(&mut self, conn: &Connection, ev: Option<&CloseEvent>, flushed: &[Vec<Segment>; 2]) -> Result<()> {
        self.pipeline.on_segments(conn, Direction::Egress, &flushed[0], &mut self.exporter);
        self.pipeline.on_segments(conn, Direction::Ingress, &flushed[1], &mut self.exporter);
        self.pipeline.on_close(conn, ev.map(|e| e.ts_ns), &mut self.exporter);
        Ok(())
    }

    fn connect_failed(&mut self, ev: &ConnectFailedEvent, conn: Option<&Connection>) -> Result<()> {
        let (local, remote) = crate::conntrack::failed_tuple(ev);
        let error = crate::conntrack::errno_name(ev.error);
        match conn {
            // connect() had returned: the owner is known, the running thread is not.
            Some(c) => self.pipeline.on_connect_failed(c.pid, None, &c.comm, local, remote, error, ev.ts_ns, &mut self.exporter),
            // Failed inside connect(): the running thread is the connecting one.
            None => self.pipeline.on_connect_failed(ev.pid, Some(ev.tid), "", local, remote, error, ev.ts_ns, &mut self.exporter),
        }
        Ok(())
    }

    fn tick(&mut self, _counters: &Counters) -> Result<()> {
        self.pipeline.tick(&mut self.exporter);
        Ok(())
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    install_signal_handlers();
    // Before anything is loaded: a configuration mistake is reported whole, up front.
    let config = match &args.config {
        Some(path) => config::load(path)?,
        None => config::from_env()?,
    };
    let mut probe = args.probe.clone();
    config.apply_probe(&mut probe);
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
    let exporter_cfg = ExporterConfig::from_env(base).context("exporter configuration")?;
    let endpoint = exporter_cfg.endpoint.clone();
    let exporter = Exporter::start(exporter_cfg).context("starting the exporter")?;
    let mut loaded = loader::load(&capture_options(&probe))?;
    let mut cfg = config.trace_config();
    if args.no_suppress_instrumented {
        cfg.suppress_instrumented = false;
    }
    let resources = ResourceResolver::new(config.rules(), config.node_attributes());
    let mut traces = Traces { pipeline: TracePipeline::new(cfg, resources), exporter };
    log(
        "info",
        "ready",
        json!({ "pid": std::process::id(), "programs": loaded.attachments,
                "exporter": endpoint.as_deref().unwrap_or("otlp-json"),
                "config": args.config.as_ref().map(|p| p.display().to_string()),
                "service_rules": config.services.len() }),
    );
    let mut driver = Driver::new(conn_table(&probe));
    driver.run(&mut loaded, probe.duration.map(Duration::from_secs_f64), &mut traces)?;
    traces.pipeline.flush(&mut traces.exporter);
    let Traces { pipeline, exporter } = traces;
    let export = exporter.shutdown(Duration::from_secs(5));
    let kernel = loaded.kernel_drops()?;
    log(
        "info",
        "stopped",
        json!({
            "capture": driver.counters.to_json(&driver.table.stats, driver.table.len(), &kernel),
            "traces": pipeline.stats,
            "export": export,
        }),
    );
    Ok(())
}
