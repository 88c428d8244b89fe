//! The `aios-control-plane` command line.
//!
//! `serve` runs the daemon; every other subcommand is a client of the
//! admin API of a running control plane, found through `--admin-url` or the
//! `admin.url` and `admin-token` files in its data directory. Nothing but
//! the daemon ever opens the database, so there is one writer.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde::Deserialize;

use crate::admin_tls::AdminTls;
use crate::app::{ControlPlane, Options};
use crate::client::{AdminClient, Body};

mod pki;

/// The aios control plane.
#[derive(Debug, Parser)]
#[command(name = "aios-control-plane", version, about)]
pub struct Cli {
    /// Flags every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The global flags (also those of `aios`, which adds `up`).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Data directory: keys, database, admin token [default: ./aios-data/control-plane].
    #[arg(long, global = true, env = "AIOS_CP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin API base URL for client subcommands [default: read from DATA_DIR/admin.url].
    #[arg(long, global = true, env = "AIOS_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// CA certificate (PEM) an `https://` admin API must chain to
    /// [default: DATA_DIR/pki/ca.crt, the fleet CA].
    #[arg(long, global = true, env = "AIOS_ADMIN_CA")]
    pub admin_ca: Option<PathBuf>,
    /// Admin API token for client subcommands [default: read from DATA_DIR/admin-token].
    #[arg(long, global = true, env = "AIOS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Logging.
    #[command(flatten)]
    pub log: aios_daemon::cli::LogArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Enrolment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled edges.
    #[command(subcommand)]
    Edge(EdgeCommand),
    /// Policy bundles.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The fleet's audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Tasks dispatched to edges over the sync link.
    #[command(subcommand)]
    Task(TaskCommand),
    /// The approval queue: side effects waiting for a human.
    #[command(subcommand)]
    Approvals(ApprovalCommand),
    /// Dead-lettered side effects of every edge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Operator accounts of the console and the admin API.
    #[command(subcommand)]
    User(UserCommand),
    /// The control plane's keys: the fleet CA and the bundle-signing key.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List accounts.
    List,
    /// Create an account; prints a generated password unless one is given.
    Add {
        /// Login name (a-z, 0-9, '.', '_', '-').
        name: String,
        /// admin, operator, auditor or viewer.
        #[arg(long)]
        role: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an account, its API tokens and its sessions.
    Remove {
        /// Login name.
        name: String,
    },
    /// Set a new password (generated unless given) and end the account's sessions.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Print a new API token for an account (for the CLI: --admin-token).
    Token {
        /// Login name.
        name: String,
        /// How long the token is valid, such as 1h or 90d.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// A note on what the token is for.
        #[arg(long, default_value = "")]
        label: String,
    },
}

fn password_from_stdin(wanted: bool) -> anyhow::Result<Option<String>> {
    if !wanted {
        return Ok(None);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Who decides, and why.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The operator's name, recorded with the decision.
    #[arg(long, env = "USER", default_value = "admin")]
    pub by: String,
    /// A comment recorded with the decision.
    #[arg(long, default_value = "")]
    pub comment: String,
    /// The edge whose item the id names, when items of several edges carry it.
    #[arg(long)]
    pub edge: Option<String>,
}

impl OperatorArgs {
    fn body(&self) -> Body {
        Body::Json(serde_json::json!({ "by": self.by, "comment": self.comment }))
    }

    /// `?edge=ID` when an edge was named.
    fn scope(&self) -> String {
        let query = self.edge.as_ref().and_then(|edge| serde_urlencoded::to_string([("edge", edge)]).ok());
        query.map(|query| format!("?{query}")).unwrap_or_default()
    }
}

/// `approvals` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// List approval requests (default: pending ones).
    List {
        /// `pending`, `approved`, `rejected`, `used`, `expired`, or `all`.
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Print one request: the exact arguments, the reasoning and sources.
    Show {
        /// The approval id.
        id: String,
    },
    /// Approve: the edge executes exactly these arguments, once.
    Approve {
        /// The approval id.
        id: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Reject: the task fails without the side effect.
    Reject {
        /// The approval id.
        id: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead-lettered intents no operator has resolved.
    List,
    /// Send an intent again, with the same idempotency key.
    Retry {
        /// The intent's key.
        key: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Give up on an intent.
    Discard {
        /// The intent's key.
        key: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
}

/// `task` subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Dispatch a task to one edge, or to every edge with a label.
    Submit {
        /// The agent to run.
        agent: String,
        /// JSON input file, or `-` for standard input (text that is not JSON becomes `{"text": ...}`).
        #[arg(long)]
        input: PathBuf,
        /// The task kind.
        #[arg(long)]
        kind: Option<String>,
        /// The edge's id.
        #[arg(long, conflicts_with = "label", required_unless_present = "label")]
        edge: Option<String>,
        /// Every edge with this label, KEY=VALUE.
        #[arg(long)]
        label: Option<String>,
        /// Wait until every dispatched task has ended, printing the results.
        #[arg(long)]
        wait: bool,
    },
    /// List dispatched tasks with their state at the edge, newest first.
    List {
        /// Most tasks listed.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print one dispatched task, with its latest event, as JSON.
    Show {
        /// The dispatch id.
        id: String,
    },
    /// Undo a completed act step with its connector's compensation.
    Compensate {
        /// The task id at the edge, or the dispatch id.
        id: String,
        /// The act step's id.
        step: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Answer the question a task's agent asked (the edge resumes the task).
    Answer {
        /// The task id at the edge.
        id: String,
        /// The answer.
        answer: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
}

/// `serve` flags; each overrides the configuration file.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration (see control-plane/examples/control-plane.toml).
    #[arg(long, env = "AIOS_CP_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address for edge sync (QUIC) [default: 0.0.0.0:7443].
    #[arg(long, env = "AIOS_SYNC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TCP address of the admin API [default: 127.0.0.1:7480].
    #[arg(long, env = "AIOS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Extra DNS name for the server certificate; repeatable.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// HTTPS for the admin API and console: auto (beyond loopback, with a
    /// fleet-CA certificate), on, or off (loopback only) [default: auto].
    #[arg(long, env = "AIOS_ADMIN_TLS")]
    pub admin_tls: Option<AdminTls>,
    /// The admin API's own certificate chain (PEM), instead of a fleet-CA one.
    #[arg(long, env = "AIOS_ADMIN_CERT", requires = "admin_key")]
    pub admin_cert: Option<PathBuf>,
    /// The key of `--admin-cert` (PEM).
    #[arg(long, env = "AIOS_ADMIN_KEY", requires = "admin_cert")]
    pub admin_key: Option<PathBuf>,
}

/// The configuration file of `serve`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// UDP address for edge sync.
    pub listen: Option<SocketAddr>,
    /// TCP address of the admin API.
    pub admin_listen: Option<SocketAddr>,
    /// Extra DNS names for the server certificate.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// `auto`, `on` or `off`.
    pub admin_tls: Option<String>,
    /// The admin API's own certificate chain (PEM).
    pub admin_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub admin_key: Option<PathBuf>,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a one-time enrolment token that pins this control plane's CA.
    Create {
        /// How long the token is valid, such as 15m or 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// A `key=value` label the enrolling edge gets (repeatable); an edge
        /// cannot choose labels of its own.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
}

/// `edge` subcommands.
#[derive(Debug, Subcommand)]
pub enum EdgeCommand {
    /// List enrolled edges as JSON lines.
    List,
    /// Revoke an edge: cut it off now and refuse it from then on.
    Revoke {
        /// The edge id.
        id: String,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate, sign, store and push a bundle written in TOML.
    Publish {
        /// The bundle file.
        file: PathBuf,
    },
    /// Print the current bundle (or one version) as JSON.
    Show {
        /// A version to show instead of the current one.
        #[arg(long)]
        version: Option<u64>,
    },
    /// List every published version.
    History,
    /// Engage the kill switch fleet-wide, keeping the rest of the current
    /// bundle: `effects` (autonomy `off`) or `all` (`halted`: no model call,
    /// no escalation, no gateway either).
    KillSwitch {
        /// `effects` or `all`.
        #[arg(long, default_value = "effects", value_parser = ["effects", "all"])]
        level: String,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest events as JSON lines.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
    },
    /// Print events matching filters as JSON lines, oldest first.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Re-verify every stored chain; exits non-zero on any break or alarm.
    Verify {
        /// Only this edge.
        #[arg(long)]
        edge: Option<String>,
    },
}

/// Audit filters.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this edge.
    #[arg(long)]
    pub edge: Option<String>,
    /// Only this kind (such as bundle.applied).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events at or after this time (ms since the epoch).
    #[arg(long)]
    pub since_ms: Option<i64>,
    /// Only events before this time (ms since the epoch).
    #[arg(long)]
    pub until_ms: Option<i64>,
}

impl FilterArgs {
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(edge) = &self.edge {
            parts.push(format!("edge={edge}"));
        }
        if let Some(kind) = &self.kind {
            parts.push(format!("kind={kind}"));
        }
        if let Some(since) = self.since_ms {
            parts.push(format!("since_ms={since}"));
        }
        if let Some(until) = self.until_ms {
            parts.push(format!("until_ms={until}"));
        }
        parts.join("&")
    }
}

/// Entry point shared by `aios-control-plane` and the test build of it.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = cli.global.log.init("aios-control-plane")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(run(cli))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    let data_dir = global.data_dir.clone().unwrap_or_else(|| PathBuf::from("aios-data/control-plane"));
    let client = || {
        AdminClient::discover(
            &data_dir,
            global.admin_url.clone(),
            global.admin_token.clone(),
            global.admin_ca.as_deref(),
        )
    };
    match cli.command {
        Command::Serve(args) => serve(global.data_dir.clone(), args).await,
        Command::Token(TokenCommand::Create { ttl, labels }) => {
            let body = serde_json::json!({ "ttl": ttl, "labels": labels });
            let answer = client()?.send(Method::POST, "/v1/tokens", Some(Body::Json(body))).await?;
            println!("{}", answer["token"].as_str().context("no token in the answer")?);
            Ok(())
        }
        Command::User(UserCommand::List) => print_lines(client()?.send(Method::GET, "/v1/users", None).await?),
        Command::User(UserCommand::Add { name, role, password_stdin }) => {
            let password = password_from_stdin(password_stdin)?;
            let body = serde_json::json!({ "name": name, "role": role, "password": password });
            let answer = client()?.send(Method::POST, "/v1/users", Some(Body::Json(body))).await?;
            println!("created {name} ({})", answer["role"].as_str().unwrap_or(&role));
            if let Some(password) = answer["password"].as_str() {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        Command::User(UserCommand::Remove { name }) => {
            client()?.send(Method::DELETE, &format!("/v1/users/{name}"), None).await?;
            println!("removed {name}");
            Ok(())
        }
        Command::User(UserCommand::Passwd { name, password_stdin }) => {
            let body = serde_json::json!({ "password": password_from_stdin(password_stdin)? });
            let answer =
                client()?.send(Method::POST, &format!("/v1/users/{name}/password"), Some(Body::Json(body))).await?;
            println!("password of {name} changed; its console sessions are ended");
            if let Some(password) = answer["password"].as_str() {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        Command::User(UserCommand::Token { name, ttl, label }) => {
            let body = serde_json::json!({ "ttl": ttl, "label": label });
            let answer =
                client()?.send(Method::POST, &format!("/v1/users/{name}/tokens"), Some(Body::Json(body))).await?;
            println!("{}", answer["token"].as_str().context("no token in the answer")?);
            Ok(())
        }
        Command::Edge(EdgeCommand::List) => print_lines(client()?.send(Method::GET, "/v1/edges", None).await?),
        Command::Edge(EdgeCommand::Revoke { id }) => {
            let answer = client()?.send(Method::POST, &format!("/v1/edges/{id}/revoke"), None).await?;
            println!("{answer}");
            Ok(())
        }
        Command::Policy(PolicyCommand::Publish { file }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer = client()?.send(Method::POST, "/v1/policy", Some(Body::Text(text))).await?;
            println!("published bundle version {}", answer["version"]);
            Ok(())
        }
        Command::Policy(PolicyCommand::Show { version }) => {
            let path = version.map_or("/v1/policy".to_owned(), |v| format!("/v1/policy/{v}"));
            let answer = client()?.send(Method::GET, &path, None).await?;
            if answer.is_null() {
                bail!("no bundle has been published yet");
            }
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Policy(PolicyCommand::History) => {
            print_lines(client()?.send(Method::GET, "/v1/policy/history", None).await?)
        }
        Command::Policy(PolicyCommand::KillSwitch { level }) => {
            let body = Body::Json(serde_json::json!({ "level": level }));
            let answer = client()?.send(Method::POST, "/v1/policy/kill-switch", Some(body)).await?;
            println!(
                "kill switch published as bundle version {}: autonomy {} fleet-wide",
                answer["version"],
                answer["autonomy"].as_str().unwrap_or("off")
            );
            Ok(())
        }
        Command::Pki(command) => pki::run(client()?, command).await,
        Command::Audit(AuditCommand::Tail { filter, lines }) => {
            let path = format!("/v1/audit?{}&newest_first=true&limit={lines}", filter.query());
            let mut events = client()?.send(Method::GET, &path, None).await?;
            if let Some(list) = events.as_array_mut() {
                list.reverse();
            }
            print_lines(events)
        }
        Command::Audit(AuditCommand::Query { filter, limit }) => {
            let path = format!("/v1/audit?{}&limit={limit}", filter.query());
            print_lines(client()?.send(Method::GET, &path, None).await?)
        }
        Command::Task(TaskCommand::Submit { agent, input, kind, edge, label, wait }) => {
            let input = aios_daemon::cli::read_input(&input)?;
            let body =
                serde_json::json!({ "agent": agent, "input": input, "kind": kind, "edge": edge, "label": label });
            let client = client()?;
            let answer = client.send(Method::POST, "/v1/tasks", Some(Body::Json(body))).await?;
            let ids: Vec<String> = answer["dispatched"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_str().map(str::to_owned))
                .collect();
            for dispatched in answer["dispatched"].as_array().into_iter().flatten() {
                eprintln!("dispatched {} to edge {}", dispatched["id"], dispatched["edge_id"]);
            }
            if !wait {
                for id in ids {
                    println!("{id}");
                }
                return Ok(());
            }
            let mut failed = false;
            for id in ids {
                loop {
                    let record = client.send(Method::GET, &format!("/v1/tasks/{id}"), None).await?;
                    let state = record["state"].as_str().unwrap_or_default().to_owned();
                    if matches!(state.as_str(), "succeeded" | "failed" | "dead_lettered" | "cancelled" | "refused") {
                        failed |= state != "succeeded";
                        println!("{}", serde_json::to_string(&record)?);
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
            if failed {
                bail!("some dispatched tasks did not succeed");
            }
            Ok(())
        }
        command @ (Command::Approvals(_)
        | Command::Dlq(_)
        | Command::Task(TaskCommand::Compensate { .. } | TaskCommand::Answer { .. })) => {
            approvals_and_dlq(client()?, command).await
        }
        Command::Task(TaskCommand::List { limit }) => {
            let listed = client()?.send(Method::GET, &format!("/v1/tasks?limit={limit}"), None).await?;
            println!("{:<22} {:<26} {:<14} {:<14} TASK", "ID", "EDGE", "AGENT", "STATE");
            for task in listed["tasks"].as_array().into_iter().flatten() {
                println!(
                    "{:<22} {:<26} {:<14} {:<14} {}",
                    task["id"].as_str().unwrap_or_default(),
                    task["edge_id"].as_str().unwrap_or_default(),
                    task["agent"].as_str().unwrap_or_default(),
                    task["state"].as_str().unwrap_or_default(),
                    task["task_id"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::Task(TaskCommand::Show { id }) => {
            let record = client()?.send(Method::GET, &format!("/v1/tasks/{id}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { edge }) => {
            let path = edge.map_or("/v1/audit/verify".to_owned(), |e| format!("/v1/audit/verify?edge={e}"));
            let reports = client()?.send(Method::GET, &path, None).await?;
            let mut broken = 0;
            for report in reports.as_array().into_iter().flatten() {
                let ok = report["ok"].as_bool().unwrap_or(false);
                broken += usize::from(!ok);
                println!(
                    "{} {}: {} events, acknowledged up to {}",
                    if ok { "ok    " } else { "BROKEN" },
                    report["edge_id"].as_str().unwrap_or("?"),
                    report["events"],
                    report["acked_seq"]
                );
                for line in report["breaks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(report["alarms"].as_array().into_iter().flatten())
                {
                    println!("    {}", line.as_str().unwrap_or_default());
                }
            }
            if broken > 0 {
                bail!("{broken} edge chain(s) failed verification");
            }
            Ok(())
        }
    }
}

async fn approvals_and_dlq(client: AdminClient, command: Command) -> anyhow::Result<()> {
    let sent = |answer: serde_json::Value| {
        println!(
            "command {} sent to edge {}",
            answer["id"].as_str().unwrap_or("?"),
            answer["edge_id"].as_str().unwrap_or("?")
        );
        Ok(())
    };
    match command {
        Command::Approvals(ApprovalCommand::List { state }) => {
            let path = if state == "all" { "/v1/approvals".to_owned() } else { format!("/v1/approvals?state={state}") };
            let listed = client.send(Method::GET, &path, None).await?;
            println!("{:<24} {:<20} {:<14} {:<22} ARGS", "ID", "EDGE", "STATE", "ACTION");
            for approval in listed.as_array().into_iter().flatten() {
                let request = &approval["request"];
                println!(
                    "{:<24} {:<20} {:<14} {:<22} {}",
                    approval["id"].as_str().unwrap_or_default(),
                    approval["edge_id"].as_str().unwrap_or_default(),
                    approval["state"].as_str().unwrap_or_default(),
                    format!(
                        "{}.{}",
                        request["connector"].as_str().unwrap_or("?"),
                        request["action"].as_str().unwrap_or("?")
                    ),
                    request["args"]
                );
            }
            Ok(())
        }
        Command::Approvals(ApprovalCommand::Show { id }) => {
            let approval = client.send(Method::GET, &format!("/v1/approvals/{id}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&approval)?);
            Ok(())
        }
        Command::Approvals(ApprovalCommand::Approve { id, operator }) => sent(
            client
                .send(Method::POST, &format!("/v1/approvals/{id}/approve{}", operator.scope()), Some(operator.body()))
                .await?,
        ),
        Command::Approvals(ApprovalCommand::Reject { id, operator }) => sent(
            client
                .send(Method::POST, &format!("/v1/approvals/{id}/reject{}", operator.scope()), Some(operator.body()))
                .await?,
        ),
        Command::Dlq(DlqCommand::List) => print_lines(client.send(Method::GET, "/v1/dlq", None).await?),
        Command::Dlq(DlqCommand::Retry { key, operator }) => sent(
            client
                .send(Method::POST, &format!("/v1/dlq/{key}/retry{}", operator.scope()), Some(operator.body()))
                .await?,
        ),
        Command::Dlq(DlqCommand::Discard { key, operator }) => sent(
            client
                .send(Method::POST, &format!("/v1/dlq/{key}/discard{}", operator.scope()), Some(operator.body()))
                .await?,
        ),
        Command::Task(TaskCommand::Compensate { id, step, operator }) => {
            let body = Body::Json(serde_json::json!({ "step": step, "by": operator.by, "comment": operator.comment }));
            sent(client.send(Method::POST, &format!("/v1/tasks/{id}/compensate"), Some(body)).await?)
        }
        Command::Task(TaskCommand::Answer { id, answer, operator }) => {
            let body =
                Body::Json(serde_json::json!({ "answer": answer, "by": operator.by, "comment": operator.comment }));
            sent(client.send(Method::POST, &format!("/v1/tasks/{id}/answer"), Some(body)).await?)
        }
        _ => unreachable!("only approval, dead-letter, compensation and answer commands come here"),
    }
}

fn print_lines(value: serde_json::Value) -> anyhow::Result<()> {
    for item in value.as_array().into_iter().flatten() {
        println!("{item}");
    }
    Ok(())
}

async fn serve(data_dir_flag: Option<PathBuf>, args: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = aios_daemon::cli::load_config(args.config.as_deref())?;
    let mut server_names = file.server_names;
    server_names.extend(args.server_names);
    let admin_tls = match (args.admin_cert.or(file.admin_cert), args.admin_key.or(file.admin_key)) {
        (Some(cert), Some(key)) => AdminTls::Files { cert, key },
        (None, None) => match args.admin_tls {
            Some(mode) => mode,
            None => file.admin_tls.as_deref().unwrap_or("auto").parse().map_err(anyhow::Error::msg)?,
        },
        _ => anyhow::bail!("admin_cert and admin_key go together"),
    };
    let options = Options {
        data_dir: data_dir_flag.or(file.data_dir).unwrap_or_else(|| PathBuf::from("aios-data/control-plane")),
        sync_listen: args.listen.or(file.listen).unwrap_or_else(|| "0.0.0.0:7443".parse().expect("valid literal")),
        admin_listen: args
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:7480".parse().expect("valid literal")),
        server_names,
        admin_tls,
        clock: Default::default(),
    };
    let control_plane = ControlPlane::start(options).await?;
    println!("sync (QUIC) listening on {}", control_plane.sync_addr);
    println!("admin API on {} (token in {})", control_plane.admin_url, control_plane.admin_token_file.display());
    aios_daemon::cli::shutdown_signal().await;
    tracing::info!("shutting down");
    control_plane.stop().await;
    Ok(())
}
