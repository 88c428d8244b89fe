//! What both daemons' command lines share: the log format flag, the TOML
//! configuration file, the shutdown signal and JSON task input.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The logging flags every aios binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text or json.
    #[arg(long, global = true, env = "AIOS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Export spans over OTLP/HTTP to this collector (base URL, `/v1/traces` is appended).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl LogArgs {
    /// Installs the `tracing` subscriber these flags ask for, as `service`.
    pub fn init(&self, service: &'static str) -> Result<crate::telemetry::Telemetry, crate::telemetry::TelemetryError> {
        crate::telemetry::init(self.log_format, self.otlp_endpoint.as_deref(), service)
    }
}

/// Reads a daemon's TOML configuration file, or the defaults without one.
pub fn load_config<T: serde::de::DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// A task's input from a file or `-` (standard input): JSON as it is, any
/// other text as `{"text": ...}`.
pub fn read_input(path: &Path) -> anyhow::Result<Value> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text.trim_end() })))
}
