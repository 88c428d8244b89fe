//! The tools an agent step declares: what each is called, what the model
//! is told about it (name, description, JSON Schema of the arguments), and
//! the checks a bundle passes at publish.
//!
//! Connector actions are governed by the Cedar policy; the memory tools
//! (`retrieve`, `remember`, `record_get`, `record_put`) by the agent's
//! memory access (`[agents.X.memory]`), checked at publish and again at
//! every call; `ask_human` parks the task on a question; `handoff` runs
//! another agent as a sub-task with what is left of the caller's budget and
//! deadline, and the caller waits for its result.

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
    /// Search semantic memory in one namespace the agent may read.
    Retrieve {
        /// The namespace.
        namespace: String,
        /// Most items a search returns (default 5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_k: Option<u32>,
        /// The name the model calls it by (default `retrieve_<namespace>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What the model is told it holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// Write an item of semantic memory, with the task as its provenance,
    /// into a namespace the agent may write.
    Remember {
        /// The namespace.
        namespace: String,
        /// The classification of what it writes (default `internal`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classification: Option<crate::memory::Classification>,
        /// The name the model calls it by (default `remember_<namespace>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What the model is told it is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// Read an authoritative record of a namespace the agent may read.
    RecordGet {
        /// The namespace.
        namespace: String,
        /// How sensitive its records are (default `internal`), for egress.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classification: Option<crate::memory::Classification>,
        /// The name the model calls it by (default `record_get_<namespace>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What the model is told the records are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// Hand work to another agent: a sub-task with the model's input, the
    /// caller's remaining budget and deadline; its result is the call's.
    Handoff {
        /// The agent that does the work.
        agent: String,
        /// The name the model calls it by (default `handoff_<agent>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What the model is told the agent does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// Write an authoritative record (compare-and-set when the model gives
    /// the version it read) of a namespace the agent may write.
    RecordPut {
        /// The namespace.
        namespace: String,
        /// The name the model calls it by (default `record_put_<namespace>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What the model is told the records are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
}

/// The name of the built-in tool that asks a person.
pub const ASK_HUMAN: &str = "ask_human";

impl ToolRef {
    /// The name the model calls the tool by.
    pub fn name(&self) -> String {
        let default = |verb: &str, namespace: &str| format!("{verb}_{}", namespace.replace('.', "_"));
        match self {
            ToolRef::Connector { name: Some(name), .. }
            | ToolRef::Retrieve { name: Some(name), .. }
            | ToolRef::Remember { name: Some(name), .. }
            | ToolRef::RecordGet { name: Some(name), .. }
            | ToolRef::RecordPut { name: Some(name), .. }
            | ToolRef::Handoff { name: Some(name), .. } => name.clone(),
            ToolRef::Connector { connector, action, .. } => format!("{connector}_{action}"),
            ToolRef::AskHuman => ASK_HUMAN.to_owned(),
            ToolRef::Retrieve { namespace, .. } => default("retrieve", namespace),
            ToolRef::Remember { namespace, .. } => default("remember", namespace),
            ToolRef::RecordGet { namespace, .. } => default("record_get", namespace),
            ToolRef::RecordPut { namespace, .. } => default("record_put", namespace),
            ToolRef::Handoff { agent, .. } => format!("handoff_{agent}"),
        }
    }

    /// The memory namespace a memory tool uses, and whether it writes.
    pub fn memory_namespace(&self) -> Option<(&str, bool)> {
        match self {
            ToolRef::Retrieve { namespace, .. } | ToolRef::RecordGet { namespace, .. } => Some((namespace, false)),
            ToolRef::Remember { namespace, .. } | ToolRef::RecordPut { namespace, .. } => Some((namespace, true)),
            ToolRef::Connector { .. } | ToolRef::AskHuman | ToolRef::Handoff { .. } => None,
        }
    }
}

/// The parameters of a `handoff` tool.
pub fn handoff_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            "input": { "type": "object", "description": "The sub-task's input, as the agent expects it." },
        },
        "required": ["input"],
        "additionalProperties": false
    })
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

/// The parameters and default description of a memory tool.
fn memory_definition(tool: &ToolRef) -> Option<(Value, String)> {
    let text = |max: u32| json!({ "type": "string", "minLength": 1, "maxLength": max });
    let object = |properties: Value, required: &[&str]| json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false });
    Some(match tool {
        ToolRef::Retrieve { namespace, .. } => (
            object(json!({ "query": text(2000) }), &["query"]),
            format!("Search the `{namespace}` memory for passages relevant to a query; returns them with scores."),
        ),
        ToolRef::Remember { namespace, .. } => (
            object(
                json!({
                    "text": text(4000),
                    "reason": text(500),
                    "subjects": { "type": "array", "items": text(200), "maxItems": 16 },
                }),
                &["text"],
            ),
            format!("Remember a fact in the `{namespace}` memory for later tasks, saying why."),
        ),
        ToolRef::RecordGet { namespace, .. } => (
            object(json!({ "key": text(256) }), &["key"]),
            format!("Read the record with this key from `{namespace}`; returns its value and version."),
        ),
        ToolRef::RecordPut { namespace, .. } => (
            object(
                json!({
                    "key": text(256),
                    "value": {},
                    "expect_version": { "type": "integer", "minimum": 0 },
                }),
                &["key", "value"],
            ),
            format!(
                "Write the record with this key in `{namespace}`; give expect_version (0: must not exist) to write \
                 only if nobody changed it since you read it."
            ),
        ),
        ToolRef::Connector { .. } | ToolRef::AskHuman | ToolRef::Handoff { .. } => return None,
    })
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
            ToolRef::Handoff { agent, description, .. } => Ok(ToolDefinition {
                name: tool.name(),
                description: description
                    .clone()
                    .unwrap_or_else(|| format!("Hand work to the `{agent}` agent and wait for its result.")),
                parameters: handoff_parameters(),
            }),
            ToolRef::Retrieve { description, .. }
            | ToolRef::Remember { description, .. }
            | ToolRef::RecordGet { description, .. }
            | ToolRef::RecordPut { description, .. } => {
                let (parameters, default) = memory_definition(tool).expect("a memory tool");
                Ok(ToolDefinition {
                    name: tool.name(),
                    description: description.clone().unwrap_or(default),
                    parameters,
                })
            }
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

/// The checks of an agent step that need nothing but the step and its
/// agent's memory access: a goal, limits of at least one, tool names every
/// model API takes, used once, memory tools on namespaces the agent may use.
pub fn validate_step(step: &AgentLoopStep, access: &crate::memory::MemoryAccess) -> Result<(), String> {
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
        if let Some((namespace, writes)) = tool.memory_namespace() {
            let allowed = if writes { access.may_write(namespace) } else { access.may_read(namespace) };
            if !allowed {
                let right = if writes { "write" } else { "read" };
                return Err(format!("tool `{name}`: the agent may not {right} memory namespace `{namespace}`"));
            }
        }
        if let ToolRef::Retrieve { top_k: Some(0), .. } = tool {
            return Err(format!("tool `{name}`: top_k must be at least 1"));
        }
        names.push(name);
    }
    Ok(())
}
