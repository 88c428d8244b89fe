//! The `aios` command line: `aios up`, and every subcommand of
//! `aios-control-plane` (the admin CLI), so that `cargo run --release --`
//! from the workspace root reaches both.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// aios: `up` runs a control plane and two edges with sample work in one
/// process; the other subcommands are the control plane's.
#[derive(Debug, Parser)]
#[command(name = "aios", version, about)]
pub struct Cli {
    /// The control plane's global flags (data directory, admin API, logging).
    #[command(flatten)]
    pub global: aios_control_plane::cli::GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a control plane, the sample shop and two edges with sample work.
    Up(UpArgs),
    /// The control plane's subcommands.
    #[command(flatten)]
    ControlPlane(aios_control_plane::cli::Command),
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
    let _telemetry = cli.global.log.init("aios")?;
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
        Command::ControlPlane(command) => {
            aios_control_plane::cli::run(aios_control_plane::cli::Cli { global: cli.global, command }).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn up_and_the_control_plane_subcommands_parse() {
        Cli::command().debug_assert();
        let up = Cli::try_parse_from(["aios", "up", "--ephemeral-ports"]).expect("up parses");
        assert!(matches!(up.command, Command::Up(UpArgs { ephemeral_ports: true, .. })));
        let list = Cli::try_parse_from(["aios", "--data-dir", "x", "edge", "list"]).expect("edge list parses");
        assert!(matches!(list.command, Command::ControlPlane(_)));
        assert_eq!(list.global.data_dir, Some(PathBuf::from("x")));
        assert!(Cli::try_parse_from(["aios", "no-such-command"]).is_err());
    }
}
