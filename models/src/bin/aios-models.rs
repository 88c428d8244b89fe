//! `aios-models`: the model store and benchmark commands on their own, for
//! developing this crate (`aios-edge models ...` runs the same code).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "aios-models", about = "Manage and benchmark local models")]
struct Args {
    #[command(subcommand)]
    command: aios_models::ModelsCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    aios_models::run_models_command(Args::parse().command).await
}
