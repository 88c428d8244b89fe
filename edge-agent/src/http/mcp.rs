//! `/mcp`: the bundle's `[mcp_tools]` served to office applications over
//! MCP (streamable HTTP, the official Rust SDK `rmcp`) on the local API.
//!
//! Each tool is an agent ([`aios_shared::served`]): a call's arguments are
//! checked against the tool's input schema, then become the input of a new
//! task of that agent (source `mcp:<tool>`), and the call returns when the
//! task ends, with its output, or with its error as a tool error. So an
//! application's call is governed like any task: Cedar decides each side
//! effect, one needing approval parks the task and the call waits for the
//! decision, effects go through the outbox, and all of it is audited. The
//! client never sees a connector, a credential or a policy.
//!
//! The endpoint needs the API token on every request, even on loopback
//! (the configured one or the one the edge made, [`crate::http::guard`]),
//! and checks `Host` against loopback names unless the API listens beyond
//! loopback, so a web page on the machine cannot reach it through DNS
//! rebinding. A client that goes away mid-call leaves the task running: its
//! result stays on the edge's task list and console.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};

use crate::tasks::{Runtime, Submission, TaskState};

/// How often a call looks at its task while waiting for it to end.
const POLL: Duration = Duration::from_millis(200);

/// Most bytes of one MCP request body.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The MCP server: the agents a bundle offers as tools.
#[derive(Clone)]
pub struct EdgeTools {
    runtime: Runtime,
}

/// The `/mcp` service, for the API router (which puts its token check in
/// front). `beyond_loopback`: the API listens on other addresses, where
/// the `Host` may be any name the machine has.
pub fn service(runtime: Runtime, beyond_loopback: bool) -> StreamableHttpService<EdgeTools, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default().with_max_request_body_bytes(MAX_REQUEST_BYTES);
    if beyond_loopback {
        config = config.disable_allowed_hosts();
    }
    StreamableHttpService::new(move || Ok(EdgeTools { runtime: runtime.clone() }), Default::default(), config)
}

impl EdgeTools {
    async fn tools(&self) -> Result<Arc<aios_shared::agent::Definitions>, ErrorData> {
        match self.runtime.definitions().await {
            Ok(Some((_, defs))) => Ok(defs),
            Ok(None) => Err(ErrorData::internal_error("no policy bundle is in force yet, so no tool is served", None)),
            Err(err) => Err(ErrorData::internal_error(err.to_string(), None)),
        }
    }

    /// Waits for task `id` to end; its final record.
    async fn outcome(&self, id: &str) -> Result<crate::tasks::TaskRecord, ErrorData> {
        loop {
            match self.runtime.store().task(id).await {
                Ok(Some(task)) if task.state.is_terminal() => return Ok(task),
                Ok(Some(_)) => tokio::time::sleep(POLL).await,
                Ok(None) => return Err(ErrorData::internal_error(format!("task {id} disappeared"), None)),
                Err(err) => return Err(ErrorData::internal_error(err.to_string(), None)),
            }
        }
    }
}

impl ServerHandler for EdgeTools {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("aios-edge", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "Each tool runs one of this office's agents under its policies; \
             a call may wait for a person's approval."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let defs = self.tools().await?;
        let tools = defs
            .mcp_tools
            .iter()
            .map(|(name, spec)| {
                let schema = spec.input_schema.as_object().cloned().unwrap_or_default();
                Tool::new(name.clone(), spec.description.clone(), Arc::new(schema))
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let defs = self.tools().await?;
        let name = request.name.to_string();
        let Some(spec) = defs.mcp_tools.get(&name) else {
            return Err(ErrorData::invalid_params(format!("no tool `{name}` is served here"), None));
        };
        let args = Value::Object(request.arguments.unwrap_or_default());
        if let Err(problem) = aios_shared::exec::check_args(&spec.input_schema, &args) {
            let text = problem.replace("the action's schema", "the tool's input schema");
            return Ok(CallToolResult::error(vec![ContentBlock::text(text)]).into());
        }
        let submission =
            Submission { agent: spec.agent.clone(), input: args, kind: spec.kind.clone(), idempotency_key: None };
        let (task, _) = self
            .runtime
            .submit(submission, &format!("mcp:{name}"))
            .await
            .map_err(|err| ErrorData::internal_error(err.to_string(), None))?;
        let done = self.outcome(&task.id).await?;
        let result = match done.state {
            TaskState::Succeeded => CallToolResult::structured(json!({
                "task": done.id,
                "output": done.output,
                "needs_review": done.needs_review,
            })),
            state => CallToolResult::structured_error(json!({
                "task": done.id,
                "state": state,
                "error": done.error,
            })),
        };
        Ok(result.into())
    }
}
