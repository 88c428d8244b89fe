//! `aios-edge task ...`: a client of the running daemon's local API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use aios_daemon::cli::read_input;

use crate::tasks::{TaskRecord, TaskState};

/// The task subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a task and follow its steps until it ends.
    Submit {
        /// The agent to run.
        agent: String,
        /// JSON input file, or `-` for standard input. Text that is not JSON
        /// becomes `{"text": ...}`.
        #[arg(long)]
        input: PathBuf,
        /// The task kind.
        #[arg(long)]
        kind: Option<String>,
        /// Submitting again with the same key returns the same task.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print the task id and return without following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a task with its step trace as JSON.
    Show {
        /// The task id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<TaskState>,
        /// Only this agent's tasks.
        #[arg(long)]
        agent: Option<String>,
        /// Most tasks listed.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Answer the question a task's agent asked (`ask_human`); the task resumes.
    Answer {
        /// The task id.
        id: String,
        /// The answer the agent will see.
        answer: String,
        /// Who answers (recorded in the audit log).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the questions agents are waiting on.
    Questions {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a task in any state.
    Cancel {
        /// The task id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the daemon's API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The daemon's local API address.
    #[arg(long = "api", env = "AIOS_EDGE_API", default_value = crate::cli::DEFAULT_API)]
    pub address: String,
    /// Bearer token (default: the one the daemon made in the data
    /// directory's `api-token`).
    #[arg(long = "api-token", env = "AIOS_EDGE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(api: &ApiArgs, data_dir: &std::path::Path) -> Client {
        let token = api.token.clone().or_else(|| crate::http::guard::token_for_cli(data_dir));
        Client { http: reqwest::Client::new(), base: format!("http://{}", api.address), token }
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the edge daemon at {} (is `aios-edge run` running?)", self.base))?;
        let status = response.status();
        let value: Value = response.json().await.context("the daemon's reply is not JSON")?;
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}

/// Runs a task subcommand.
pub async fn run(command: TaskCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    match command {
        TaskCommand::Submit { agent, input, kind, idempotency_key, no_wait, api } => {
            let input = read_input(&input)?;
            let client = Client::new(&api, data_dir);
            let body = json!({ "agent": agent, "input": input, "kind": kind, "idempotency_key": idempotency_key });
            let task: TaskRecord =
                serde_json::from_value(client.call(reqwest::Method::POST, "/v1/tasks", Some(body)).await?)?;
            if no_wait {
                println!("{}", task.id);
                return Ok(());
            }
            eprintln!("task {} ({}) {}", task.id, task.agent, task.state);
            follow(&client, &task.id).await
        }
        TaskCommand::Answer { id, answer, by, api } => {
            let by =
                by.unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())));
            let body = json!({ "answer": answer, "by": by });
            let question = Client::new(&api, data_dir)
                .call(reqwest::Method::POST, &format!("/v1/tasks/{id}/answer"), Some(body))
                .await?;
            println!("answered {:?} for task {id}", question["question"].as_str().unwrap_or_default());
            Ok(())
        }
        TaskCommand::Questions { api } => {
            let open = Client::new(&api, data_dir).call(reqwest::Method::GET, "/v1/questions", None).await?;
            for question in open.as_array().into_iter().flatten() {
                println!(
                    "{}  {}  {}",
                    question["task_id"].as_str().unwrap_or_default(),
                    question["agent"].as_str().unwrap_or_default(),
                    question["question"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        TaskCommand::Show { id, api } => {
            let task = Client::new(&api, data_dir).call(reqwest::Method::GET, &format!("/v1/tasks/{id}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&task)?);
            Ok(())
        }
        TaskCommand::List { state, agent, limit, api } => {
            let mut query = format!("/v1/tasks?limit={limit}");
            if let Some(state) = state {
                query.push_str(&format!("&state={state}"));
            }
            if let Some(agent) = agent {
                query.push_str(&format!("&agent={agent}"));
            }
            let listed = Client::new(&api, data_dir).call(reqwest::Method::GET, &query, None).await?;
            let tasks: Vec<TaskRecord> = serde_json::from_value(listed["tasks"].clone())?;
            println!("{:<22} {:<16} {:<14} {:>5} {:>10}", "ID", "AGENT", "STATE", "STEP", "COST USD");
            for task in tasks {
                println!(
                    "{:<22} {:<16} {:<14} {:>5} {:>10.5}",
                    task.id, task.agent, task.state, task.next_step, task.cost_usd
                );
            }
            Ok(())
        }
        TaskCommand::Cancel { id, api } => {
            let task = Client::new(&api, data_dir)
                .call(reqwest::Method::POST, &format!("/v1/tasks/{id}/cancel"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&task)?);
            Ok(())
        }
    }
}

/// Prints each step as it is recorded, then the result.
async fn follow(client: &Client, id: &str) -> anyhow::Result<()> {
    let mut shown = 0;
    let mut last_state = None;
    loop {
        let task: TaskRecord =
            serde_json::from_value(client.call(reqwest::Method::GET, &format!("/v1/tasks/{id}"), None).await?)?;
        for step in task.steps.iter().skip(shown) {
            let detail = match step.status.as_str() {
                "skipped" => "skipped".to_owned(),
                _ => format!(
                    "{} {}{}{} {} ms",
                    step.tier.as_deref().unwrap_or("-"),
                    step.value
                        .as_deref()
                        .map(|v| format!("→ {}", v.chars().take(60).collect::<String>()))
                        .unwrap_or_default(),
                    step.confidence.map(|c| format!(" ({c:.2})")).unwrap_or_default(),
                    if step.needs_review { " [review]" } else { "" },
                    step.latency_ms
                ),
            };
            eprintln!("  [{}] {} ({}): {detail}", step.seq + 1, step.step_id, step.kind);
        }
        shown = task.steps.len();
        if last_state != Some(task.state) {
            if task.state == TaskState::Waiting {
                eprintln!("  waiting: {}", task.wait_reason.as_deref().unwrap_or(""));
            }
            last_state = Some(task.state);
        }
        if task.state.is_terminal() {
            eprintln!("task {} {}", task.id, task.state);
            match task.state {
                TaskState::Succeeded => {
                    println!("{}", serde_json::to_string_pretty(&task.output.unwrap_or(Value::Null))?);
                    return Ok(());
                }
                _ => bail!("task {} {}: {}", task.id, task.state, task.error.unwrap_or_default()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
