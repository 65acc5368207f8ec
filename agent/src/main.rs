use clap::{Parser, Subcommand};

/// eBPF node agent: captures HTTP and message-queue traffic from the kernel and turns it
/// into OpenTelemetry traces.
#[derive(Parser, Debug)]
#[command(name = "hoptrace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: HTTP traffic on this node becomes OpenTelemetry spans (OTLP).
    Run(hoptrace::run::RunArgs),
    /// Print TCP connection open/data/close events seen by the kernel as JSON lines.
    Capture(hoptrace::capture::CaptureArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => hoptrace::run::run(args),
        Command::Capture(args) => hoptrace::capture::run(args),
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
