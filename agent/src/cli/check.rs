//! `hoptrace check`: the CI gate for trace propagation (the seed's "policy de headers"
//! test, made automatic).
//!
//! Runs a command (an integration-test suite driving a set of services) under capture,
//! then prints every broken hop — kind, service, peer, route, count, an example trace id —
//! and exits non-zero when there are more gaps than allowed. Spans are not exported in
//! this mode: it judges hops, it does not ship traces.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    capture::driver::{install_signal_handlers, request_stop, Driver},
    capture::Capture,
    cli::probe::{capture_options, conn_table, ProbeArgs},
    config,
    gaps::GapTable,
    model::span::SpanRecord,
    resource::resolver::ResourceResolver,
    traces::consumer::TraceConsumer,
    traces::{SpanSink, TracePipeline},
};

/// Exit codes (besides 1, any agent error).
pub const EXIT_GAPS: i32 = 2;
pub const EXIT_COMMAND_FAILED: i32 = 3;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Agent configuration (services, entry points, ignore rules).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Gaps allowed before the check fails.
    #[arg(long, default_value_t = 0)]
    pub max_gaps: u64,
    /// A service (service.name) that is an entry point: requests without context are
    /// normal there (repeatable; adds to the configuration's).
    #[arg(long = "entry-service")]
    pub entry_services: Vec<String>,
    /// Seconds to keep watching after the command exits (late closes and responses).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// The command to run under capture (after `--`). Without one, watch for --duration.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Spans are counted, not shipped.
struct Discard(u64);

impl SpanSink for Discard {
    fn submit(&mut self, _span: SpanRecord) {
        self.0 += 1;
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The table `hoptrace check` prints.
pub fn render_table(gaps: &GapTable) -> String {
    let rows = gaps.rows();
    let mut out = format!(
        "{:<26} {:<18} {:<5} {:<18} {:<22} {:>6}  {}\n",
        "KIND", "SERVICE", "ZONE", "PEER", "ROUTE", "COUNT", "EXAMPLE TRACE"
    );
    for (k, e) in &rows {
        out.push_str(&format!(
            "{:<26} {:<18} {:<5} {:<18} {:<22} {:>6}  {}\n",
            k.kind.as_str(),
            short(&k.service, 18),
            short(&k.zone, 5),
            short(&k.peer_service, 18),
            short(&k.route, 22),
            e.count,
            e.example_trace_id
        ));
    }
    out
}

pub fn run(args: CheckArgs) -> Result<i32> {
    install_signal_handlers();
    if args.command.is_empty() && args.probe.duration.is_none() {
        bail!("give a command to run under capture (hoptrace check -- make test) or --duration SECONDS");
    }
    let cfg_file = match &args.config {
        Some(path) => config::load(path)?,
        None => config::from_env()?,
    };
    let mut probe = args.probe.clone();
    probe.apply_config(&cfg_file);
    let mut cfg = cfg_file.trace_config();
    cfg.gaps.entry_services.extend(args.entry_services.iter().cloned());
    let mut capture = Capture::load(&capture_options(&probe))?;
    let pipeline = TracePipeline::new(cfg, ResourceResolver::new(cfg_file.rules(), cfg_file.node_attributes()));
    let gaps = pipeline.gaps.clone();
    let mut consumer = TraceConsumer::new(pipeline, Discard(0));

    // The command starts once every probe is attached, so none of its traffic is missed.
    let mut status = None;
    let waiter = if let Some((program, rest)) = args.command.split_first() {
        let mut child = Command::new(program).args(rest).spawn().with_context(|| format!("cannot start {program}"))?;
        let settle = Duration::from_secs_f64(args.settle);
        Some(std::thread::spawn(move || {
            let status = child.wait();
            std::thread::sleep(settle);
            request_stop();
            status
        }))
    } else {
        None
    };
    let mut driver = Driver::new(conn_table(&probe));
    driver.run(&mut capture, probe.duration.map(Duration::from_secs_f64), &mut consumer)?;
    consumer.flush();
    if let Some(w) = waiter {
        status = w.join().ok().and_then(|r| r.ok());
    }

    let table = gaps.lock().map_err(|_| anyhow::anyhow!("gap table poisoned"))?;
    let hops = table.len();
    let total = table.total;
    if total == 0 {
        println!("hoptrace check: no broken hops ({} HTTP exchanges seen)", consumer.exchanges());
    } else {
        println!(
            "hoptrace check: {hops} broken hop(s), {total} gap(s) (allowed: {}), {} HTTP exchanges seen\n",
            args.max_gaps,
            consumer.exchanges()
        );
        print!("{}", render_table(&table));
    }
    if let Some(s) = status.filter(|s| !s.success()) {
        eprintln!("hoptrace check: the command failed ({s})");
        return Ok(EXIT_COMMAND_FAILED);
    }
    Ok(if total > args.max_gaps { EXIT_GAPS } else { 0 })
}
