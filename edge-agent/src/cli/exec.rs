//! `aios-edge approvals ...` and `aios-edge dlq ...`: clients of the running
//! daemon's local API. Local approval is for air-gapped single machines; a
//! connected edge's approvals are decided at the control plane.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::task::{ApiArgs, Client};

/// Who decides, and why.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The operator's name, recorded with the decision.
    #[arg(long, env = "USER", default_value = "operator")]
    pub by: String,
    /// A comment recorded with the decision.
    #[arg(long, default_value = "")]
    pub comment: String,
}

impl OperatorArgs {
    fn body(&self) -> Value {
        json!({ "by": self.by, "comment": self.comment })
    }
}

/// `approvals` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// List approval requests.
    List {
        /// Only those in this state (`pending`, `approved`, `rejected`, `used`, `expired`).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Approve one (air-gapped edges only).
    Approve {
        /// The approval id.
        id: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reject one (air-gapped edges only).
    Reject {
        /// The approval id.
        id: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead-lettered intents.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One intent with its full error history.
    Show {
        /// The intent's key.
        key: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send it again with the same idempotency key.
    Retry {
        /// The intent's key.
        key: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Give up on it.
    Discard {
        /// The intent's key.
        key: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs an approvals subcommand.
pub async fn approvals(command: ApprovalCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    match command {
        ApprovalCommand::List { state, api } => {
            let path = state.map_or("/v1/approvals".to_owned(), |s| format!("/v1/approvals?state={s}"));
            for approval in
                Client::new(&api, data_dir).call(Method::GET, &path, None).await?.as_array().into_iter().flatten()
            {
                let request = &approval["request"];
                println!(
                    "{:<24} {:<10} {}.{} {}",
                    approval["id"].as_str().unwrap_or_default(),
                    approval["state"].as_str().unwrap_or_default(),
                    request["connector"].as_str().unwrap_or("?"),
                    request["action"].as_str().unwrap_or("?"),
                    request["args"]
                );
            }
            Ok(())
        }
        ApprovalCommand::Approve { id, operator, api } => {
            Client::new(&api, data_dir)
                .call(Method::POST, &format!("/v1/approvals/{id}/approve"), Some(operator.body()))
                .await?;
            println!("approved {id}");
            Ok(())
        }
        ApprovalCommand::Reject { id, operator, api } => {
            Client::new(&api, data_dir)
                .call(Method::POST, &format!("/v1/approvals/{id}/reject"), Some(operator.body()))
                .await?;
            println!("rejected {id}");
            Ok(())
        }
    }
}

/// Runs a dlq subcommand.
pub async fn dlq(command: DlqCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { api } => {
            let listed = Client::new(&api, data_dir).call(Method::GET, "/v1/intents?state=dead_lettered", None).await?;
            for intent in listed.as_array().into_iter().flatten() {
                let last = intent["errors"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
                println!(
                    "{} {}.{} task {} attempts {}: {}",
                    intent["key"].as_str().unwrap_or_default(),
                    intent["connector"].as_str().unwrap_or_default(),
                    intent["action"].as_str().unwrap_or_default(),
                    intent["task_id"].as_str().unwrap_or_default(),
                    intent["attempts"],
                    last["error"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        DlqCommand::Show { key, api } => {
            let intent = Client::new(&api, data_dir).call(Method::GET, &format!("/v1/intents/{key}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&intent)?);
            Ok(())
        }
        DlqCommand::Retry { key, operator, api } => {
            Client::new(&api, data_dir)
                .call(Method::POST, &format!("/v1/dlq/{key}/retry"), Some(operator.body()))
                .await?;
            println!("intent {key} queued again with the same key");
            Ok(())
        }
        DlqCommand::Discard { key, operator, api } => {
            Client::new(&api, data_dir)
                .call(Method::POST, &format!("/v1/dlq/{key}/discard"), Some(operator.body()))
                .await?;
            println!("intent {key} discarded");
            Ok(())
        }
    }
}
