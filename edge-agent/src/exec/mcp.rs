//! The `mcp` connector: the tools of an MCP server, run as a child process
//! that speaks MCP over its standard input and output (the official Rust
//! SDK, `rmcp`), are actions like any connector's, so every call passes the
//! same schema check, Cedar decision, approval, outbox, rate limit and
//! breaker before the server hears of it.
//!
//! The bundle pins each tool: its schema (what the model is told and what
//! arguments are checked against) and the SHA-256 of the schema the server
//! lists. On connecting, the server's list is compared with the pins; a
//! server that dropped a tool or changed its schema is refused (every call
//! fails permanently, saying which tool changed) until the bundle pins the
//! new one, so a server cannot widen or reshape a tool behind the operator's
//! back. The server's own descriptions never reach the model. The child runs
//! with an empty environment but for `PATH`, `HOME` and `LANG`: no
//! credential of the edge leaks into it.
//!
//! MCP has no idempotency key: a call whose reply is lost (a timeout, the
//! server exiting mid-call) is `unknown`, as for any connector that cannot
//! deduplicate, and the server is started again for the next attempt.

use std::collections::BTreeMap;

use aios_shared::exec::ConnectorSpec;
use futures_util::future::BoxFuture;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::TokioChildProcess;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::connector::{Call, Connector, ConnectorError};

/// Environment variables a server inherits from the edge.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// Most bytes of text a tool result may carry back.
const MAX_RESULT_BYTES: usize = 256 * 1024;

type Client = RunningService<RoleClient, ()>;

/// A connection to one MCP server, started on first use.
pub struct McpConnector {
    /// Program and arguments.
    command: Vec<String>,
    /// Pinned schema hash per tool.
    pins: BTreeMap<String, String>,
    /// The running server, once started and checked.
    client: Mutex<Option<Client>>,
}

impl McpConnector {
    /// A connector for `spec`; nothing is started yet.
    pub fn new(spec: &ConnectorSpec) -> Result<McpConnector, String> {
        if spec.command.is_empty() {
            return Err("an mcp connector needs `command`".into());
        }
        let pins = spec
            .actions
            .iter()
            .map(|(tool, action)| (tool.clone(), action.schema_sha256.clone().unwrap_or_default()))
            .collect();
        Ok(McpConnector { command: spec.command.clone(), pins, client: Mutex::new(None) })
    }

    /// Starts the server and checks its tools against the pins.
    async fn connect(&self) -> Result<Client, ConnectorError> {
        let (client, tools) = start(&self.command).await.map_err(ConnectorError::Retryable)?;
        let offered: BTreeMap<String, String> = tools.into_iter().map(|tool| (tool.name, tool.schema_sha256)).collect();
        for (tool, pinned) in &self.pins {
            match offered.get(tool) {
                None => {
                    return Err(ConnectorError::Permanent(format!("the MCP server no longer offers tool `{tool}`")))
                }
                Some(hash) if hash != pinned => {
                    return Err(ConnectorError::Permanent(format!(
                        "the MCP server changed tool `{tool}`: its schema hashes to {hash}, the bundle pins {pinned}"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(client)
    }

    async fn call(&self, call: Call<'_>) -> Result<Value, ConnectorError> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            *guard = Some(tokio::time::timeout(call.timeout, self.connect()).await.map_err(|_| {
                ConnectorError::Retryable(format!("MCP server `{}` did not start in time", self.command[0]))
            })??);
        }
        let client = guard.as_ref().expect("connected above");
        let mut params = CallToolRequestParams::new(call.action.to_owned());
        params.arguments = call.args.as_object().cloned();
        let result = match tokio::time::timeout(call.timeout, client.call_tool(params)).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => {
                // The server may have acted before it failed; start afresh next time.
                *guard = None;
                return Err(ConnectorError::Unknown(format!("MCP call `{}` broke off: {err}", call.action)));
            }
            Err(_) => {
                *guard = None;
                return Err(ConnectorError::Unknown(format!("MCP call `{}` timed out", call.action)));
            }
        };
        let mut text = String::new();
        for block in &result.content {
            if let Some(piece) = block.as_text() {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&piece.text);
            }
        }
        if text.len() > MAX_RESULT_BYTES {
            let mut end = MAX_RESULT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        if result.is_error == Some(true) {
            return Err(ConnectorError::Permanent(format!("MCP tool `{}` failed: {text}", call.action)));
        }
        Ok(json!({ "text": text, "structured": result.structured_content }))
    }
}

impl Connector for McpConnector {
    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, ConnectorError>> {
        Box::pin(self.call(call))
    }
}

/// A tool as a server lists it, with the hash a bundle pins.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedTool {
    /// Its name.
    pub name: String,
    /// The server's description (never shown to a model).
    pub description: String,
    /// Its input schema.
    pub schema: Value,
    /// What a bundle pins.
    pub schema_sha256: String,
}

/// Starts the server `command` and lists its tools.
async fn start(command: &[String]) -> Result<(Client, Vec<ListedTool>), String> {
    let program = command.first().ok_or("no MCP server command")?;
    let mut child = tokio::process::Command::new(program);
    child.args(&command[1..]).env_clear().kill_on_drop(true);
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            child.env(name, value);
        }
    }
    let transport =
        TokioChildProcess::new(child).map_err(|err| format!("cannot start MCP server `{program}`: {err}"))?;
    let client = ().serve(transport).await.map_err(|err| format!("MCP server `{program}` did not initialise: {err}"))?;
    let tools = client.list_all_tools().await.map_err(|err| format!("MCP server would not list its tools: {err}"))?;
    let tools = tools
        .into_iter()
        .map(|tool| {
            let schema = Value::Object((*tool.input_schema).clone());
            ListedTool {
                name: tool.name.to_string(),
                description: tool.description.as_deref().unwrap_or_default().to_owned(),
                schema_sha256: schema_sha256(&schema),
                schema,
            }
        })
        .collect();
    Ok((client, tools))
}

/// The tools of the MCP server `command`, for pinning in a bundle.
pub async fn list_tools(command: &[String]) -> Result<Vec<ListedTool>, String> {
    let (client, tools) = start(command).await?;
    let _ = client.cancel().await;
    Ok(tools)
}

/// What a bundle pins for a tool's schema: hex SHA-256 of its canonical
/// JSON (object keys sorted at every depth).
pub fn schema_sha256(schema: &Value) -> String {
    super::args_hash(schema)
}
