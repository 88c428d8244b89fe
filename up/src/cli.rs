//! The `aios` command line: `aios up`.

use std::path::PathBuf;

use aios_daemon::cli::LogFormat;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// aios, all in one process: a control plane and two edges with sample work.
#[derive(Debug, Parser)]
#[command(name = "aios", version, about)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "AIOS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Export spans over OTLP/HTTP to this collector (base URL, `/v1/traces` is appended).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a control plane, the sample shop and two edges with sample work.
    Up(UpArgs),
}

/// Options of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where all state goes [default: ./aios-data].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Listen on free ports the system picks instead of 7443, 7480, 7490, 7581 and 7582.
    #[arg(long)]
    pub ephemeral_ports: bool,
}

/// Entry point shared by `aios` and the test build of it.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = aios_daemon::telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref(), "aios")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(run(cli))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            let root = args.root.unwrap_or_else(|| PathBuf::from("aios-data"));
            crate::up::up(crate::up::UpOptions { root, ephemeral_ports: args.ephemeral_ports }).await
        }
    }
}
