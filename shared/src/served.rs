//! Tools the edge serves to office applications over MCP.
//!
//! A bundle's `[mcp_tools.NAME]` offers an agent as a tool: an MCP client
//! that calls `NAME` with arguments submits a task for that agent with the
//! arguments as its input, and gets the task's output once it ends. So a
//! call from an application runs under the same governance as any task of
//! the fleet: the agent's Cedar policies, approvals, outbox, budgets and
//! audit. The tool's input schema is checked before any task is made.
//!
//! ```toml
//! [mcp_tools.refund]
//! agent = "refunds"
//! description = "Refund an order, up to its total."
//! input_schema = { type = "object", required = ["order", "amount"], properties = { order = { type = "string" }, amount = { type = "number" } } }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::AgentSpec;
use crate::exec::ExecSpecError;

/// `[mcp_tools.NAME]`: an agent offered to MCP clients as a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedToolSpec {
    /// The agent a call runs as a task of.
    pub agent: String,
    /// What the tool does, as clients (and their models) are told.
    pub description: String,
    /// JSON Schema of the arguments (an object); they become the task's input.
    pub input_schema: serde_json::Value,
    /// The task kind (checked against the agent's `accepts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Checks a served tool against the agents it may start.
pub fn validate_served_tool(
    name: &str,
    spec: &ServedToolSpec,
    agents: &BTreeMap<String, AgentSpec>,
) -> Result<(), ExecSpecError> {
    let fail = |problem: String| ExecSpecError::ServedTool { tool: name.to_owned(), problem };
    crate::exec::check_task_source(name, &spec.agent, spec.kind.as_deref(), agents).map_err(fail)?;
    if spec.description.trim().is_empty() {
        return Err(fail("a description is required: it is all a client's model knows of the tool".into()));
    }
    if spec.input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        return Err(fail("input_schema must be a JSON Schema of `type = \"object\"`".into()));
    }
    jsonschema::validator_for(&spec.input_schema)
        .map_err(|err| fail(format!("input_schema is not a valid JSON Schema: {err}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> BTreeMap<String, AgentSpec> {
        let agent: AgentSpec = toml::from_str("version = 1\naccepts = [\"refund\"]\nsteps = []").unwrap();
        BTreeMap::from([("refunds".to_owned(), agent)])
    }

    fn tool(text: &str) -> ServedToolSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_served_tool_names_an_agent_and_an_object_schema() {
        let good = tool(
            "agent = \"refunds\"\ndescription = \"Refund an order.\"\nkind = \"refund\"\n\
             input_schema = { type = \"object\", properties = { amount = { type = \"number\" } } }",
        );
        validate_served_tool("refund", &good, &agents()).unwrap();
        let cases = [
            ("letters, digits", "refund!", good.clone()),
            ("not defined", "refund", ServedToolSpec { agent: "nobody".into(), ..good.clone() }),
            ("does not accept", "refund", ServedToolSpec { kind: Some("mail".into()), ..good.clone() }),
            ("description", "refund", ServedToolSpec { description: " ".into(), ..good.clone() }),
            ("type = \"object\"", "refund", ServedToolSpec { input_schema: serde_json::json!({}), ..good.clone() }),
            (
                "not a valid JSON Schema",
                "refund",
                ServedToolSpec { input_schema: serde_json::json!({ "type": "object", "minProperties": -1 }), ..good },
            ),
        ];
        for (expected, name, spec) in cases {
            let err = validate_served_tool(name, &spec, &agents()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should say {expected}");
        }
    }
}
