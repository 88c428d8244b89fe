//! The `mcp` connector: the tools of an MCP server, run as a child process
//! that speaks MCP over its standard input and output or reached over
//! streamable HTTP (both with the official Rust SDK, `rmcp`), are actions
//! like any connector's, so every call passes the same schema check, Cedar
//! decision (as `mcp.<server>.<tool>`), approval, outbox, rate limit and
//! breaker before the server hears of it.
//!
//! The bundle pins each tool: its schema (what the model is told and what
//! arguments are checked against) and the SHA-256 of the schema the server
//! lists. On connecting, the server's list is compared with the pins; a
//! server that dropped a tool or changed its schema is refused (every call
//! fails permanently, saying which tool changed) until the bundle pins the
//! new one, so a server cannot widen or reshape a tool behind the operator's
//! back. The server's own descriptions never reach the model. A child runs
//! with an empty environment but for `PATH`, `HOME` and `LANG`: no
//! credential of the edge leaks into it. An HTTP server gets the connector's
//! `credential` as a bearer token and nothing else; redirects to another
//! origin are refused.
//!
//! MCP has no idempotency key: a call whose reply is lost (a timeout, the
//! server exiting mid-call, a dropped connection) is `unknown`, as for any
//! connector that cannot deduplicate, and the session is started again for
//! the next attempt.

use std::collections::BTreeMap;

use aios_shared::exec::ConnectorSpec;
use futures_util::future::BoxFuture;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::connector::{load_secret, Call, Connector, ConnectorError};

/// Environment variables a server inherits from the edge.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// Most bytes of text a tool result may carry back.
const MAX_RESULT_BYTES: usize = 256 * 1024;

type Client = RunningService<RoleClient, ()>;

/// Where an MCP server is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A child process speaking MCP on stdio: program and arguments.
    Stdio(Vec<String>),
    /// A streamable HTTP endpoint, with the secret reference of its bearer
    /// token.
    Http {
        /// The endpoint's URL.
        url: String,
        /// `env:NAME` or `file:/path`.
        credential: Option<String>,
    },
}

impl Endpoint {
    /// How the server is named in errors.
    fn describe(&self) -> &str {
        match self {
            Endpoint::Stdio(command) => command.first().map_or("", String::as_str),
            Endpoint::Http { url, .. } => url,
        }
    }
}

/// Most bytes of one HTTP response or server-sent event.
const MAX_HTTP_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A connection to one MCP server, started on first use.
pub struct McpConnector {
    /// Where the server is.
    endpoint: Endpoint,
    /// Pinned schema hash per tool.
    pins: BTreeMap<String, String>,
    /// The running server, once started and checked.
    client: Mutex<Option<Client>>,
}

impl McpConnector {
    /// A connector for `spec`; nothing is started yet.
    pub fn new(spec: &ConnectorSpec) -> Result<McpConnector, String> {
        let endpoint = match (&spec.base_url, spec.command.is_empty()) {
            (Some(url), true) => Endpoint::Http { url: url.clone(), credential: spec.credential.clone() },
            (None, false) => Endpoint::Stdio(spec.command.clone()),
            _ => return Err("an mcp connector needs `command` or `base_url`".into()),
        };
        let pins = spec
            .actions
            .iter()
            .map(|(tool, action)| (tool.clone(), action.schema_sha256.clone().unwrap_or_default()))
            .collect();
        Ok(McpConnector { endpoint, pins, client: Mutex::new(None) })
    }

    /// Starts the server and checks its tools against the pins.
    async fn connect(&self) -> Result<Client, ConnectorError> {
        let (client, tools) = start(&self.endpoint).await?;
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
                ConnectorError::Retryable(format!("MCP server `{}` did not start in time", self.endpoint.describe()))
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

/// Starts a session with the server at `endpoint` and lists its tools.
async fn start(endpoint: &Endpoint) -> Result<(Client, Vec<ListedTool>), ConnectorError> {
    let name = endpoint.describe();
    let client = match endpoint {
        Endpoint::Stdio(command) => {
            let program = command.first().ok_or(ConnectorError::Permanent("no MCP server command".into()))?;
            let mut child = tokio::process::Command::new(program);
            child.args(&command[1..]).env_clear().kill_on_drop(true);
            for name in INHERITED_ENV {
                if let Some(value) = std::env::var_os(name) {
                    child.env(name, value);
                }
            }
            let transport = TokioChildProcess::new(child)
                .map_err(|err| ConnectorError::Retryable(format!("cannot start MCP server `{program}`: {err}")))?;
            ().serve(transport).await
        }
        Endpoint::Http { url, credential } => {
            // reqwest's TLS takes the process's provider: ours, ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .max_json_response_size(MAX_HTTP_MESSAGE_BYTES)
                .max_sse_event_size(MAX_HTTP_MESSAGE_BYTES)
                .max_error_response_size(64 * 1024);
            if let Some(reference) = credential {
                let secret = load_secret(reference).map_err(ConnectorError::Permanent)?;
                config = config.auth_header(secret.expose());
            }
            ().serve(StreamableHttpClientTransport::from_config(config)).await
        }
    }
    .map_err(|err| ConnectorError::Retryable(format!("MCP server `{name}` did not initialise: {err}")))?;
    let tools = client
        .list_all_tools()
        .await
        .map_err(|err| ConnectorError::Retryable(format!("MCP server `{name}` would not list its tools: {err}")))?;
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

/// The tools of the MCP server at `endpoint`, for pinning in a bundle.
pub async fn list_tools(endpoint: &Endpoint) -> Result<Vec<ListedTool>, String> {
    let (client, tools) = start(endpoint).await.map_err(|err| match err {
        ConnectorError::Retryable(why) | ConnectorError::Permanent(why) | ConnectorError::Unknown(why) => why,
    })?;
    let _ = client.cancel().await;
    Ok(tools)
}

/// What a bundle pins for a tool's schema: hex SHA-256 of its canonical
/// JSON (object keys sorted at every depth).
pub fn schema_sha256(schema: &Value) -> String {
    super::args_hash(schema)
}
