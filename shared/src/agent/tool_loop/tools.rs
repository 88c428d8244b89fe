//! The tools an agent step declares: what each is called, what the model
//! is told about it (name, description, JSON Schema of the arguments), and
//! the checks a bundle passes at publish.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AgentLoopStep, MAX_TOOL_NAME};

/// One tool an agent step may call, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolRef {
    /// A connector action: its JSON Schema is the tool's parameters, and
    /// every call is an intent decided by the Cedar policy.
    Connector {
        /// The connector.
        connector: String,
        /// Its action.
        action: String,
        /// The name the model calls it by (default `connector_action`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What the model is told the tool does (default the action's description).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// What a call touches, for the policy (default the connector). Its
        /// templates see the task's `input` and the call's `args`; the
        /// arguments are the model's, so attributes a policy trusts come
        /// from `input`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<crate::exec::ResourceSpec>,
    },
    /// Ask a person: the task parks with the question until someone answers.
    AskHuman,
}

/// The name of the built-in tool that asks a person.
pub const ASK_HUMAN: &str = "ask_human";

impl ToolRef {
    /// The name the model calls the tool by.
    pub fn name(&self) -> String {
        match self {
            ToolRef::Connector { name: Some(name), .. } => name.clone(),
            ToolRef::Connector { connector, action, .. } => format!("{connector}_{action}"),
            ToolRef::AskHuman => ASK_HUMAN.to_owned(),
        }
    }
}

/// Whether `name` is a tool name every model API takes (`[A-Za-z0-9_-]`,
/// 1 to 64 characters).
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A tool as the model is told about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The name it calls the tool by.
    pub name: String,
    /// What the tool does.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// The parameters of [`ASK_HUMAN`].
pub fn ask_human_definition() -> ToolDefinition {
    ToolDefinition {
        name: ASK_HUMAN.to_owned(),
        description: "Ask a person a question when you cannot go on without their answer; the task waits for it."
            .to_owned(),
        parameters: json!({
            "type": "object",
            "properties": { "question": { "type": "string", "minLength": 1, "maxLength": 2000 } },
            "required": ["question"],
            "additionalProperties": false
        }),
    }
}

/// The tools of `step` as the model is told about them, in the step's
/// order: a connector action's schema is its parameters (an action without
/// one takes an empty object), its description the tool's unless the step
/// writes its own. Fails naming a connector or action the bundle lacks.
pub fn tool_definitions(
    step: &AgentLoopStep,
    connectors: &BTreeMap<String, crate::exec::ConnectorSpec>,
) -> Result<Vec<ToolDefinition>, String> {
    step.tools
        .iter()
        .map(|tool| match tool {
            ToolRef::AskHuman => Ok(ask_human_definition()),
            ToolRef::Connector { connector, action, description, .. } => {
                let spec = connectors.get(connector).and_then(|c| c.actions.get(action)).ok_or_else(|| {
                    format!("tool `{}`: connector `{connector}` has no action `{action}`", tool.name())
                })?;
                let parameters = spec
                    .schema
                    .clone()
                    .unwrap_or_else(|| json!({ "type": "object", "properties": {}, "additionalProperties": false }));
                let description = description.clone().unwrap_or_else(|| spec.description.clone());
                let description = if description.is_empty() { format!("{connector}: {action}") } else { description };
                Ok(ToolDefinition { name: tool.name(), description, parameters })
            }
        })
        .collect()
}

/// The parameters of each tool by name, as [`next`] takes them.
pub fn schemas(tools: &[ToolDefinition]) -> BTreeMap<String, Value> {
    tools.iter().map(|tool| (tool.name.clone(), tool.parameters.clone())).collect()
}

/// The checks of an agent step that need nothing but the step: a goal,
/// limits of at least one, tool names every model API takes, used once.
pub fn validate_step(step: &AgentLoopStep) -> Result<(), String> {
    if step.goal.as_deref().is_none_or(|goal| goal.trim().is_empty()) {
        return Err("an agent step needs a goal".into());
    }
    for (name, value) in [
        ("max_iterations", step.max_iterations),
        ("max_tool_calls", step.max_tool_calls),
        ("max_tokens", step.max_tokens),
    ] {
        if value == Some(0) {
            return Err(format!("{name} must be at least 1"));
        }
    }
    let mut names: Vec<String> = Vec::new();
    for tool in &step.tools {
        let name = tool.name();
        if !valid_tool_name(&name) {
            return Err(format!(
                "tool name `{name}` is not 1 to {MAX_TOOL_NAME} letters, digits, `_` or `-` (set `name`)"
            ));
        }
        if names.contains(&name) {
            return Err(format!("tool `{name}` is declared twice"));
        }
        if let ToolRef::Connector { resource: Some(resource), .. } = tool {
            if resource.entity_type.parse::<cedar_policy::EntityTypeName>().is_err() {
                return Err(format!(
                    "tool `{name}`: resource type `{}` is not a Cedar entity type name",
                    resource.entity_type
                ));
            }
        }
        names.push(name);
    }
    Ok(())
}
