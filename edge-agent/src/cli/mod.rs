//! The `aios-edge` command line.
//!
//! Parsing is separate from running (ripgrep's two stages): [`Cli`] holds only
//! validated flags; [`run`] opens files and sockets.
//!
//! # Layout
//! - `mod.rs`: `enroll`, `run`, `status`, `models` and the test hooks.
//! - [`task`]: `aios-edge task ...`, a client of the local API.
//! - [`exec`]: `aios-edge approvals|dlq ...`, a client of the local API.
//! - [`memory`]: `aios-edge memory ...` (opens the database directly).

pub mod exec;
pub mod memory;
pub mod task;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use aios_daemon::cli::{load_config, shutdown_signal};

use crate::daemon::{self, DaemonOptions};
use crate::exec::mcp::Endpoint;
use crate::store::EdgeStore;
use crate::sync::enroll::{self, EnrollOptions};
use crate::sync::uplink::UplinkOptions;
use aios_daemon::clock::unix_ms;

/// The aios edge agent.
#[derive(Debug, Parser)]
#[command(name = "aios-edge", version, about)]
pub struct Cli {
    /// Directory of the edge's database and identity [default: ./aios-data/edge].
    #[arg(long, global = true, env = "AIOS_EDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Logging.
    #[command(flatten)]
    pub log: aios_daemon::cli::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol this edge with a control plane using a one-time token.
    Enroll(EnrollArgs),
    /// Run the edge daemon until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Print this edge's identity, bundle and audit position as JSON.
    Status,
    /// Tasks on the running daemon: submit, show, list, cancel.
    #[command(subcommand)]
    Task(crate::cli::task::TaskCommand),
    /// Side effects waiting for approval (decided here only when air-gapped).
    #[command(subcommand)]
    Approvals(crate::cli::exec::ApprovalCommand),
    /// Dead-lettered side effects: list, show, retry (same key), discard.
    #[command(subcommand)]
    Dlq(crate::cli::exec::DlqCommand),
    /// Semantic memory on this edge: add, search, show, stats, forget, export, import, reindex.
    #[command(subcommand)]
    Memory(crate::cli::memory::MemoryCommand),
    /// Local models: list, pull, verify, path, bench.
    #[command(subcommand)]
    Models(aios_models::ModelsCommand),
    /// MCP servers as connectors: `mcp tools -- COMMAND...` starts a server
    /// and prints its tools as the TOML actions that pin them.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Test entry points (built only with the `debug-hooks` feature).
    #[cfg(feature = "debug-hooks")]
    #[command(subcommand)]
    Debug(DebugCommand),
}

/// `aios-edge enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The control plane's sync address, HOST:PORT.
    #[arg(long, env = "AIOS_CONTROL_PLANE")]
    pub control_plane: String,
    /// The token printed by `aios-control-plane token create`.
    #[arg(long, env = "AIOS_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Display name of this edge [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// A label KEY=VALUE the operator can target; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

/// `aios-edge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file (see edge-agent/examples/edge.toml); flags override it.
    #[arg(long, env = "AIOS_EDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Dial this control plane address instead of the one stored at enrolment.
    #[arg(long, env = "AIOS_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// Longest reconnect delay, such as 30s [default: 30s].
    #[arg(long, env = "AIOS_RECONNECT_MAX")]
    pub reconnect_max: Option<String>,
    /// Address of the local HTTP API [default: 127.0.0.1:7580]; `off` disables it.
    #[arg(long, env = "AIOS_EDGE_API")]
    pub api_listen: Option<String>,
    /// Serve the OpenAI-compatible gateway (`/v1/chat/completions`,
    /// `/v1/embeddings`, `/v1/models`) on the local API's listener.
    #[arg(long, env = "AIOS_EDGE_GATEWAY")]
    pub gateway: bool,
    /// Where local models run: cpu, cuda[:N] or metal[:N] [default: cpu]
    /// (a GPU needs a build with `--features cuda` or `metal`).
    #[arg(long, env = "AIOS_MODEL_DEVICE")]
    pub model_device: Option<aios_models::DeviceConfig>,
    /// Directory bundles' `file:` secrets and trust files must be in
    /// [default: DATA_DIR/secrets].
    #[arg(long, env = "AIOS_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// An environment variable bundles may name as a secret (`env:NAME`);
    /// repeatable [default: none].
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_env: Vec<String>,
    /// A directory the file connector may write into; repeatable
    /// [default: DATA_DIR/files].
    #[arg(long = "output-dir", value_name = "DIR")]
    pub output_dirs: Vec<PathBuf>,
    /// A program bundles may start as an MCP server, as they name it;
    /// repeatable [default: none].
    #[arg(long = "allow-program", value_name = "PROGRAM")]
    pub programs: Vec<String>,
    /// A host (name or address) bundles' connectors may reach; repeatable
    /// [default: none].
    #[arg(long = "allow-host", value_name = "HOST")]
    pub hosts: Vec<String>,
}

/// Test entry points.
#[cfg(feature = "debug-hooks")]
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Append COUNT debug events to the audit log (the daemon may be running).
    EmitAudit {
        /// How many events.
        #[arg(long)]
        count: u64,
        /// Events per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
    /// Offer a signed bundle (JSON as served by the admin API) as if it came
    /// from the control plane; exits non-zero if it is refused.
    OfferBundle {
        /// The bundle file.
        file: PathBuf,
    },
}

/// The configuration file of `aios-edge run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory of the edge's database.
    pub data_dir: Option<PathBuf>,
    /// Control plane address override.
    pub control_plane: Option<String>,
    /// Longest reconnect delay.
    pub reconnect_max: Option<String>,
    /// Address of the local HTTP API, or `off`.
    pub api_listen: Option<String>,
    /// Bearer token the local API requires (needed when it listens beyond loopback).
    pub api_token: Option<String>,
    /// The OpenAI-compatible gateway, when served.
    pub gateway: Option<GatewayFileConfig>,
    /// Where local models run: `cpu`, `cuda[:N]` or `metal[:N]`.
    pub model_device: Option<aios_models::DeviceConfig>,
    /// What bundles may reach on this machine.
    pub bundle_access: Option<AccessFileConfig>,
}

/// `[bundle_access]` in the edge's configuration file: the secrets, files
/// and programs bundles from the control plane may reference. Flags add to
/// the lists and override the directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFileConfig {
    /// Where `file:` secrets and trust files must be [default: DATA_DIR/secrets].
    pub secrets_dir: Option<PathBuf>,
    /// Environment variables bundles may name as `env:NAME`.
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// Directories the file connector may write into [default: DATA_DIR/files].
    #[serde(default)]
    pub output_dirs: Vec<PathBuf>,
    /// Programs bundles may start as MCP servers.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Hosts bundles' connectors may reach (HTTP APIs, MCP over HTTP, SMTP).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `[gateway]` in the edge's configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFileConfig {
    /// Catalogue id of the chat model [default: smollm2-135m-instruct].
    pub chat_model: Option<String>,
    /// Catalogue id of the embedding model [default: all-minilm-l6-v2]; "" for none.
    pub embedding_model: Option<String>,
    /// A key callers may present instead of the API token: `env:NAME` or
    /// `file:/path`. With any key or API token set, every gateway route
    /// requires one of them.
    pub token: Option<String>,
}

/// Default address of the local API.
pub const DEFAULT_API: &str = "127.0.0.1:7580";

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

/// Entry point shared by `aios-edge` and the test build of it.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = cli.log.init("aios-edge")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(run(cli))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| PathBuf::from("aios-data/edge"));
    match cli.command {
        Command::Enroll(args) => {
            let store = EdgeStore::open(&data_dir).context("cannot open the edge database")?;
            let name = args.name.unwrap_or_else(host_name);
            let options = EnrollOptions { name, labels: args.labels };
            let identity = enroll::enroll(&store, &args.control_plane, &args.token, options, unix_ms()).await?;
            println!("enrolled as {} with {}", identity.edge_id, identity.control_plane);
            Ok(())
        }
        Command::Run(args) => run_daemon(cli.data_dir, args).await,
        Command::Status => status(&data_dir).await,
        Command::Task(command) => crate::cli::task::run(command, &data_dir).await,
        Command::Approvals(command) => crate::cli::exec::approvals(command, &data_dir).await,
        Command::Dlq(command) => crate::cli::exec::dlq(command, &data_dir).await,
        Command::Memory(command) => crate::cli::memory::run(&data_dir, command).await,
        Command::Models(command) => aios_models::run_models_command(command).await,
        Command::Mcp(McpCommand::Tools { name, url, credential, command }) => {
            let endpoint = match url {
                Some(url) => Endpoint::Http { url, credential },
                None => Endpoint::Stdio(command),
            };
            let tools = crate::exec::mcp::list_tools(&endpoint).await.map_err(anyhow::Error::msg)?;
            println!("{}", pinned_connector(&name, &endpoint, &tools)?.trim_end());
            Ok(())
        }
        #[cfg(feature = "debug-hooks")]
        Command::Debug(command) => debug(&data_dir, command).await,
    }
}

/// `aios-edge mcp`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Start an MCP server (stdio) or reach one (`--url`, streamable HTTP)
    /// and print a connector pinning its tools, with their Cedar actions.
    Tools {
        /// The connector's name in the bundle.
        #[arg(long, default_value = "mcp")]
        name: String,
        /// The server's streamable HTTP endpoint, instead of a command.
        #[arg(long, conflicts_with = "command", required_unless_present = "command")]
        url: Option<String>,
        /// With `--url`: the bearer token's secret reference (`env:NAME`,
        /// `file:/path`), also written into the connector.
        #[arg(long, requires = "url")]
        credential: Option<String>,
        /// The server's program and arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

/// A `[connectors.NAME]` table for the server, with an action pinning each
/// listed tool (description, schema, schema_sha256), to add to a bundle,
/// after a comment naming the Cedar actions the policy schema must declare.
fn pinned_connector(name: &str, endpoint: &Endpoint, tools: &[crate::exec::mcp::ListedTool]) -> anyhow::Result<String> {
    let mut actions = toml::map::Map::new();
    for tool in tools {
        let mut action = toml::map::Map::new();
        action.insert("description".into(), toml::Value::String(tool.description.clone()));
        action.insert("schema".into(), toml::Value::try_from(&tool.schema)?);
        action.insert("schema_sha256".into(), toml::Value::String(tool.schema_sha256.clone()));
        actions.insert(tool.name.clone(), toml::Value::Table(action));
    }
    let mut connector = toml::map::Map::new();
    connector.insert("kind".into(), toml::Value::String("mcp".into()));
    connector.insert("version".into(), toml::Value::Integer(1));
    match endpoint {
        Endpoint::Stdio(command) => {
            connector.insert("command".into(), toml::Value::try_from(command)?);
        }
        Endpoint::Http { url, credential } => {
            connector.insert("base_url".into(), toml::Value::String(url.clone()));
            if let Some(credential) = credential {
                connector.insert("credential".into(), toml::Value::String(credential.clone()));
            }
        }
    }
    connector.insert("actions".into(), toml::Value::Table(actions));
    let mut connectors = toml::map::Map::new();
    connectors.insert(name.to_owned(), toml::Value::Table(connector));
    let mut root = toml::map::Map::new();
    root.insert("connectors".into(), toml::Value::Table(connectors));
    let cedar: Vec<String> = tools
        .iter()
        .map(|tool| aios_shared::exec::cedar_action(name, aios_shared::exec::ConnectorKind::Mcp, &tool.name))
        .collect();
    Ok(format!("# Cedar actions: {}\n{}", cedar.join(", "), toml::to_string(&toml::Value::Table(root))?))
}

async fn run_daemon(data_dir_flag: Option<PathBuf>, args: RunArgs) -> anyhow::Result<()> {
    let file: FileConfig = load_config(args.config.as_deref())?;
    let data_dir = data_dir_flag.or(file.data_dir).unwrap_or_else(|| PathBuf::from("aios-data/edge"));
    let mut uplink = UplinkOptions { control_plane: args.control_plane.or(file.control_plane), ..Default::default() };
    if let Some(max) = args.reconnect_max.or(file.reconnect_max) {
        uplink.backoff_max = aios_shared::duration::parse_duration(&max).map_err(anyhow::Error::msg)?;
    }
    let mut options = DaemonOptions::new(data_dir);
    options.uplink = uplink;
    let access = file.bundle_access.unwrap_or_default();
    let defaults = options.runtime.access.clone();
    let output_dirs: Vec<PathBuf> = access.output_dirs.into_iter().chain(args.output_dirs).collect();
    options.runtime.access = aios_shared::access::BundleAccess {
        secrets_dir: args.secrets_dir.or(access.secrets_dir).or(defaults.secrets_dir),
        secret_env: access.secret_env.into_iter().chain(args.secret_env).collect(),
        output_dirs: if output_dirs.is_empty() { defaults.output_dirs } else { output_dirs },
        programs: access.programs.into_iter().chain(args.programs).collect(),
        hosts: access.hosts.into_iter().chain(args.hosts).map(|host| host.to_ascii_lowercase()).collect(),
    };
    if let Some(device) = args.model_device.or(file.model_device) {
        // Opened once now, so a build without the backend or a missing GPU
        // stops the start instead of the first task.
        device.open().with_context(|| format!("model_device `{device}`"))?;
        options.load.device = device;
    }
    let api = args.api_listen.or(file.api_listen).unwrap_or_else(|| DEFAULT_API.to_owned());
    if api != "off" {
        let addr: std::net::SocketAddr =
            api.parse().with_context(|| format!("api_listen `{api}` is not an IP:PORT address"))?;
        if !addr.ip().is_loopback() && file.api_token.as_deref().is_none_or(|token| token.trim().is_empty()) {
            bail!(
                "the local API may listen on {addr}, beyond loopback, only with api_token set in the configuration \
                 (it guards the API and the gateway)"
            );
        }
        options.api_listen = Some(addr);
    }
    options.api_token = file.api_token;
    if args.gateway || file.gateway.is_some() {
        if options.api_listen.is_none() {
            bail!("the gateway is served on the local API's listener; do not set api_listen = \"off\"");
        }
        let config = file.gateway.unwrap_or_default();
        let defaults = crate::daemon::GatewayOptions::default();
        options.gateway = Some(crate::daemon::GatewayOptions {
            chat_model: config.chat_model.unwrap_or(defaults.chat_model),
            embedding_model: match config.embedding_model {
                Some(id) if id.is_empty() => None,
                Some(id) => Some(id),
                None => defaults.embedding_model,
            },
            token: config.token,
        });
    }
    #[cfg(feature = "debug-hooks")]
    {
        options.runtime.call_log = std::env::var_os("AIOS_DEBUG_CALL_LOG").map(PathBuf::from);
    }
    let handle = daemon::start(options).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.stop().await;
    Ok(())
}

async fn status(data_dir: &Path) -> anyhow::Result<()> {
    let store = EdgeStore::open(data_dir).context("cannot open the edge database")?;
    let Some(identity) = store.identity().await? else {
        bail!("this edge has not enrolled (data directory {})", data_dir.display());
    };
    let head = store.audit_head().await?;
    let bundle = store.bundle().await?.and_then(|b| b.peek_version());
    let status = serde_json::json!({
        "edge_id": identity.edge_id,
        "control_plane": identity.control_plane,
        "bundle_version": bundle,
        "autonomy": store.autonomy().await?,
        "labels": store.labels().await?,
        "audit_head_seq": head.seq,
    });
    println!("{status}");
    Ok(())
}

#[cfg(feature = "debug-hooks")]
async fn debug(data_dir: &Path, command: DebugCommand) -> anyhow::Result<()> {
    match command {
        DebugCommand::EmitAudit { count, batch } => {
            let dir = data_dir.to_owned();
            let head = tokio::task::spawn_blocking(move || {
                crate::store::emit_debug_events(&dir, count, batch.max(1), unix_ms)
            })
            .await??;
            println!("{}", head.seq);
            Ok(())
        }
        DebugCommand::OfferBundle { file } => {
            let store = EdgeStore::open(data_dir)?;
            let identity = store.identity().await?.context("this edge has not enrolled")?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let signed: aios_shared::bundle::SignedBundle =
                serde_json::from_str(&text).context("not a signed bundle as served by the admin API")?;
            let access = crate::daemon::default_access(data_dir);
            match store.offer_bundle(&identity, signed, &access, unix_ms()).await? {
                crate::store::BundleOutcome::Refused(err) => bail!("bundle refused: {err}"),
                outcome => {
                    println!("{outcome:?}");
                    Ok(())
                }
            }
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge".to_owned())
}

#[cfg(test)]
mod tests {
    use aios_models::DeviceConfig;

    use super::*;

    #[test]
    fn model_device_is_read_from_the_configuration_file() {
        let file: FileConfig = toml::from_str("model_device = \"cuda:1\"").expect("parses");
        assert_eq!(file.model_device, Some(DeviceConfig::Cuda(1)));
        let err = toml::from_str::<FileConfig>("model_device = \"tpu\"").expect_err("refused");
        assert!(err.to_string().contains("unknown device `tpu`"), "{err}");
    }

    #[test]
    fn the_example_configuration_and_bundle_access_parse() {
        toml::from_str::<FileConfig>(include_str!("../../examples/edge.toml")).expect("the example parses");
        let text = "[bundle_access]\nsecrets_dir = \"/etc/aios\"\nsecret_env = [\"A\"]\nprograms = [\"/opt/x\"]\n";
        let access = toml::from_str::<FileConfig>(text).expect("parses").bundle_access.expect("present");
        assert_eq!(access.secrets_dir.as_deref(), Some(std::path::Path::new("/etc/aios")));
        assert_eq!((access.secret_env, access.programs), (vec!["A".to_owned()], vec!["/opt/x".to_owned()]));
        assert!(toml::from_str::<FileConfig>("[bundle_access]\nsecret = 1\n").is_err(), "unknown keys are refused");
    }

    /// A GPU this build cannot drive stops `run` before anything starts.
    #[cfg(not(feature = "cuda"))]
    #[tokio::test]
    async fn a_gpu_without_its_backend_stops_the_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = RunArgs {
            config: None,
            control_plane: None,
            reconnect_max: None,
            api_listen: Some("off".into()),
            gateway: false,
            model_device: Some(DeviceConfig::Cuda(0)),
            secrets_dir: None,
            secret_env: Vec::new(),
            output_dirs: Vec::new(),
            programs: Vec::new(),
            hosts: Vec::new(),
        };
        let err = run_daemon(Some(dir.path().to_owned()), args).await.expect_err("refused");
        let message = format!("{err:#}");
        assert!(message.contains("model_device `cuda:0`") && message.contains("--features cuda"), "{message}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "nothing was created");
    }
}
