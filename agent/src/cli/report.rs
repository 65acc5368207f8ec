//! `hoptrace report cardinality`: asks a running agent's endpoint for `GET /cardinality`
//! and prints the distinct values per attribute, per metric and service, highest first,
//! with the caps that bound them (the logic is in [`crate::ops::cardinality`]).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub what: Report,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Report {
    /// Distinct values per attribute key, per metric and per service, highest first.
    Cardinality {
        /// The agent's endpoint (`hoptrace run --listen`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        endpoint: String,
        /// Print the JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ReportArgs) -> Result<()> {
    let Report::Cardinality { endpoint, json } = args.what;
    let body = get(&endpoint, "/cardinality")?;
    let doc: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("{endpoint}/cardinality did not answer JSON"))?;
    if json {
        println!("{doc}");
    } else {
        print!("{}", crate::ops::cardinality::table(&doc));
    }
    Ok(())
}

/// A plain HTTP/1.0 GET (the endpoint is local, plain HTTP); at most 16 MiB.
fn get(endpoint: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(endpoint).with_context(|| {
        format!("cannot reach the agent at {endpoint}: is `hoptrace run --listen {endpoint}` running?")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("{endpoint}: no HTTP response") };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{endpoint}{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}
