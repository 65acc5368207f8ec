use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Why, and how it is tuned: `hoptrace::ops::allocator`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// eBPF node agent: captures HTTP and message-queue traffic from the kernel and turns it
/// into OpenTelemetry traces.
#[derive(Parser, Debug)]
#[command(name = "hoptrace", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Check a configuration file (and the HOPTRACE_* environment over it): print every
    /// problem as FILE:LINE:COLUMN and exit 1, or print "FILE: ok" and exit 0.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: HTTP traffic on this node becomes OpenTelemetry spans (OTLP).
    Run(hoptrace::cli::run::RunArgs),
    /// Run a command under capture and fail when trace context is lost on any hop (CI gate).
    Check(hoptrace::cli::check::CheckArgs),
    /// Print TCP connection open/data/close events seen by the kernel as JSON lines.
    Capture(hoptrace::cli::capture::CaptureArgs),
    /// Reports from a running agent: `report cardinality`.
    Report(hoptrace::cli::report::ReportArgs),
}

fn main() {
    hoptrace::ops::allocator::before_startup();
    let cli = Cli::parse();
    let result = match (cli.command, cli.check_config) {
        (_, Some(path)) => check_config(&path),
        (Some(Command::Run(args)), None) => hoptrace::cli::run::run(args),
        (Some(Command::Capture(args)), None) => hoptrace::cli::capture::run(args),
        (Some(Command::Report(args)), None) => hoptrace::cli::report::run(args),
        (Some(Command::Check(args)), None) => match hoptrace::cli::check::run(args) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        (None, None) => Cli::command()
            .error(clap::error::ErrorKind::MissingSubcommand, "a subcommand or --check-config FILE is required")
            .exit(),
    };
    if let Err(err) = result {
        // One line first (what happened and what to do), details after.
        let text = format!("{err:#}");
        let mut lines = text.lines();
        eprintln!("hoptrace: error: {}", lines.next().unwrap_or("unknown error"));
        for l in lines {
            eprintln!("{l}");
        }
        std::process::exit(1);
    }
}

/// `hoptrace --check-config FILE`: the diagnostics on stderr and exit 1, or "FILE: ok".
fn check_config(path: &std::path::Path) -> ! {
    let lines = hoptrace::config::check_path(path);
    if lines.is_empty() {
        println!("{}: ok", path.display());
        std::process::exit(0);
    }
    for line in lines {
        eprintln!("{line}");
    }
    std::process::exit(1);
}
