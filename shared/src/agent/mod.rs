//! Agent definitions, model tiers and runtime settings as they travel in a
//! policy bundle, and the checks the control plane runs before it signs one.
//!
//! An operator writes them in the bundle's TOML:
//!
//! ```toml
//! [tiers.local]
//! kind = "local"
//! model = "smollm2-135m-instruct"
//!
//! [agents.triage]
//! version = 1
//! accepts = ["customer-message"]
//!
//! [[agents.triage.steps]]
//! id = "category"
//! kind = "classify"
//! prompt = "Customer message: {{ input.text }}\nCategory:"
//! labels = ["refund", "shipping", "other"]
//!
//! [[agents.triage.steps]]
//! id = "reply"
//! kind = "generate"
//! prompt = "Write a short reply to: {{ input.text }}"
//! when = { step = "category", in = ["refund", "shipping"] }
//! ```
//!
//! A step is one table whose `kind` picks its fields: each kind is a struct
//! of its own ([`StepAction`]), so a field that does not belong to the step's
//! kind is refused when the bundle is parsed, naming the step, the field and
//! the kind, and a typo never passes silently. The checks in
//! [`Definitions::validate`] then name the agent, the step and the problem.
//!
//! Prompts are minijinja templates over `input` (the task input, JSON) and
//! `steps` (each earlier step's output by id). They are compiled at publish
//! time, so a template error is a publish error.
//!
//! # Layout
//! - [`step`]: one step: [`StepSpec`], its kind's fields ([`StepAction`]),
//!   [`StepKind`], [`Risk`] and the [`Condition`] it runs under.
//! - [`tier`]: model tiers ([`TierSpec`]) and the runtime's settings ([`RuntimeSpec`]).
//! - [`validate`]: the publish-time checks and the [`DefinitionError`] they return.
//! - [`template`]: rendering prompt templates and running a validate step's [`Check`]s.
//! - [`tool_loop`]: the tool-using loop of an agent step as a pure function
//!   of its journal ([`tool_loop::next`]), its transcript, and where it plans.

pub mod step;
pub mod template;
pub mod tier;
pub mod tool_loop;
pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::memory::{MemoryAccess, MemorySpec};

pub use step::{
    ActStep, ClassifyExample, ClassifyStep, Condition, GenerateStep, RecordGetStep, RecordPutStep, RetrieveStep, Risk,
    StepAction, StepKind, StepSpec, ValidateStep, DEFAULT_MAX_TOKENS, DEFAULT_THRESHOLD,
};
pub(crate) use template::check_template;
pub use template::{render_template, run_checks, Check, CheckReport};
pub use tier::{RuntimeSpec, TierKind, TierSpec};
pub(crate) use validate::valid_name;
pub use validate::DefinitionError;

/// Everything a bundle says about agents, tiers and the runtime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// Agents by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, AgentSpec>,
    /// Model tiers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierSpec>,
    /// Settings of the task runtime.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Connectors by name: the only way an agent acts on the world.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connectors: BTreeMap<String, crate::exec::ConnectorSpec>,
    /// Inbound webhooks by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<String, crate::exec::WebhookSpec>,
    /// Agents the edge offers to MCP clients as tools, by tool name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mcp_tools: BTreeMap<String, crate::served::ServedToolSpec>,
    /// The Cedar schema and policies that decide every side effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::exec::PolicySpec>,
    /// Memory settings: embedding model, retention per classification.
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory: MemorySpec,
    /// What callers of the edge's OpenAI-compatible gateway may route to and spend.
    #[serde(default, skip_serializing_if = "is_default")]
    pub gateway: GatewaySpec,
}

/// `[gateway]`: the escalation tiers office applications may name as `model`
/// on an edge's OpenAI-compatible gateway, and what they may spend. A request
/// for one of these tiers goes through the same router, breakers, budgets and
/// air gap as an agent's escalated step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Tiers callers may ask for by name. A request for one falls through to
    /// the tiers listed after it when it cannot answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Most one request may cost, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request_usd: Option<f64>,
    /// Most all gateway callers together may spend per UTC day on this edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day_usd: Option<f64>,
    /// When no named tier can answer, the edge's local chat model answers and
    /// the response is marked for review; `false` refuses the request instead.
    #[serde(default = "default_true")]
    pub fallback_to_local: bool,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec { tiers: Vec::new(), per_request_usd: None, per_day_usd: None, fallback_to_local: true }
    }
}

fn default_true() -> bool {
    true
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One agent: the task kinds it accepts and its ordered steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The definition's version, recorded with every task it runs.
    pub version: u32,
    /// What the agent is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Task kinds it accepts; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepts: Vec<String>,
    /// Tasks of this agent running at once.
    #[serde(default = "default_agent_concurrency")]
    pub max_concurrent: u32,
    /// How long a task may take from submission, such as `5m` (default 10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// The tier that runs steps locally (default `local`).
    #[serde(default = "default_local_tier")]
    pub local_tier: String,
    /// Tiers to escalate to, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalate_to: Vec<String>,
    /// Spending limits for escalated calls.
    #[serde(default)]
    pub budget: BudgetSpec,
    /// Memory namespaces and classifications it may read and write.
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory: MemoryAccess,
    /// The steps, run in order.
    pub steps: Vec<StepSpec>,
}

fn default_agent_concurrency() -> u32 {
    2
}

fn default_local_tier() -> String {
    "local".into()
}

/// Default task deadline.
pub const DEFAULT_DEADLINE_MS: i64 = 10 * 60 * 1000;

impl AgentSpec {
    /// The task deadline in milliseconds.
    pub fn deadline_ms(&self) -> i64 {
        self.deadline
            .as_deref()
            .and_then(|text| parse_duration(text).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(DEFAULT_DEADLINE_MS)
    }

    /// Whether a task of `kind` may run on this agent.
    pub fn accepts(&self, kind: Option<&str>) -> bool {
        match kind {
            None => true,
            Some(kind) => self.accepts.is_empty() || self.accepts.iter().any(|k| k == kind),
        }
    }

    /// The index of the step named `id`.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// Spending limits in US dollars.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Most one task may spend on escalated calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_task_usd: Option<f64>,
    /// Most the agent may spend per UTC day on this edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day_usd: Option<f64>,
}

#[cfg(test)]
mod tests;
