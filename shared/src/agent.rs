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
//! Steps are a flat table whose meaningful fields depend on `kind`; the
//! checks in [`Definitions::validate`] refuse a field that does not belong to
//! the step's kind, so a typo never passes silently. Every error names the
//! agent, the step and the problem.
//!
//! Prompts are minijinja templates over `input` (the task input, JSON) and
//! `steps` (each earlier step's output by id). They are compiled at publish
//! time, so a template error is a publish error.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::memory::{MemoryAccess, MemorySpec};

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

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Scored choice over labels with the local model.
    Classify,
    /// Draft text.
    Generate,
    /// A complex step that escalates by default.
    Plan,
    /// Semantic memory lookup: filtered, ranked, recorded.
    Retrieve,
    /// Read an authoritative record (key-value, versioned).
    #[serde(rename = "record_get")]
    RecordGet,
    /// Write an authoritative record, optionally compare-and-set on its version.
    #[serde(rename = "record_put")]
    RecordPut,
    /// A side effect through the execution plane.
    Act,
    /// Deterministic checks of an earlier step's output.
    Validate,
}

impl StepKind {
    /// The lower-case name used in files and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Classify => "classify",
            StepKind::Generate => "generate",
            StepKind::Plan => "plan",
            StepKind::Retrieve => "retrieve",
            StepKind::RecordGet => "record_get",
            StepKind::RecordPut => "record_put",
            StepKind::Act => "act",
            StepKind::Validate => "validate",
        }
    }

    /// Whether the step calls a model.
    pub fn uses_model(self) -> bool {
        matches!(self, StepKind::Classify | StepKind::Generate | StepKind::Plan)
    }
}

/// How much harm a wrong answer from this step can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Fine for the local model.
    #[default]
    Low,
    /// Local first, escalate on doubt.
    Medium,
    /// Escalate whenever a tier is available.
    High,
}

/// One step, as written. Which fields apply depends on `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the agent; later steps refer to its output by it.
    pub id: String,
    /// What the step does.
    pub kind: StepKind,
    /// Run the step only when this holds; otherwise it is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Risk class, for the router.
    #[serde(default)]
    pub risk: Risk,
    /// Force (true) or forbid (false) escalation; default: `plan` escalates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<bool>,
    /// Prompt template (classify, generate, plan) or query (retrieve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// System message for generate and plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Candidate answers (classify).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Worked examples (classify): shown to an escalation tier as earlier
    /// turns of the conversation, which small chat models follow far better
    /// than instructions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<ClassifyExample>,
    /// What an escalation tier is asked to classify (classify; a template,
    /// default: the prompt); the data subject a record is about, which
    /// `memory forget --subject` erases with it (record_put; a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Escalate when the local confidence is below this (classify; default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Most tokens to generate (generate, plan; default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (generate, plan; default 0, greedy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Memory namespace (retrieve, record_get, record_put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Most items returned (retrieve; default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Items scoring below this are dropped (retrieve; default 0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Metadata that returned items must carry, each value a template (retrieve).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// Weight of the FTS5 keyword score in a hybrid ranking, 0 to 1 (retrieve; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword_weight: Option<f32>,
    /// Record key, a template (record_get, record_put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value to store, a template; JSON text is stored as JSON (record_put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Write only if the record is at this version (`0`: absent), a template (record_put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<String>,
    /// Build a working context of at most this many tokens, offered to the
    /// templates as `context` (classify, generate, plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
    /// Connector (act).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// Connector action (act).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Arguments, each value a template (act).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// What the side effect touches, for the policy (act; default the connector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<crate::exec::ResourceSpec>,
    /// The agent's reasoning shown to an approver (act; a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The step whose output is checked (validate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The checks (validate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

impl StepSpec {
    /// The tokens a generate or plan step may produce.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(128)
    }

    /// The confidence under which a classify step escalates.
    pub fn threshold(&self) -> f32 {
        self.threshold.unwrap_or(0.5)
    }

    /// Whether the step escalates before trying the local model.
    pub fn escalates_by_default(&self) -> bool {
        self.escalate.unwrap_or(self.kind == StepKind::Plan)
    }
}

/// One worked example of a classify step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyExample {
    /// The text.
    pub text: String,
    /// Its label (one of the step's labels).
    pub label: String,
}

/// A condition on an earlier step's output value (a classify step's label,
/// a generate step's text, a validate step's `passed` / `failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The earlier step.
    pub step: String,
    /// The value must be this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The value must be one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    /// The value must be none of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<String>>,
}

impl Condition {
    /// Whether `value` (the step's output value; `None` when it was skipped) satisfies the condition.
    pub fn holds(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        self.equals.as_deref().is_none_or(|e| e == value)
            && self.one_of.as_ref().is_none_or(|set| set.iter().any(|v| v == value))
            && self.not_in.as_ref().is_none_or(|set| !set.iter().any(|v| v == value))
    }
}

/// One deterministic check of a validate step. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// The text must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The text must not match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_regex: Option<String>,
    /// The text must parse as JSON valid against this JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// The value must be one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// At least this many characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// At most this many characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl Check {
    fn fields_set(&self) -> usize {
        [
            self.regex.is_some(),
            self.not_regex.is_some(),
            self.json_schema.is_some(),
            self.allowed.is_some(),
            self.min_length.is_some(),
            self.max_length.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
    }
}

/// Where a tier runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// A model from the edge's local catalogue, run with candle.
    Local,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
}

/// A model tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Where it runs.
    pub kind: TierKind,
    /// Catalogue id (local) or the endpoint's model name (openai).
    pub model: String,
    /// The endpoint, such as `https://api.example.com/v1` (openai).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// US dollars per 1000 prompt tokens.
    #[serde(default)]
    pub price_in_per_1k: f64,
    /// US dollars per 1000 completion tokens.
    #[serde(default)]
    pub price_out_per_1k: f64,
    /// Per-call timeout, such as `30s` (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Where the edge finds the API key: `env:NAME` or `file:/path`.
    /// The key itself never travels in a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl TierSpec {
    /// The per-call timeout in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .unwrap_or(60_000)
    }

    /// The host of a remote tier's endpoint.
    pub fn host(&self) -> Option<&str> {
        let url = self.base_url.as_deref()?;
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or(rest);
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else {
            authority.split(':').next().unwrap_or(authority)
        };
        (!host.is_empty()).then_some(host)
    }
}

/// Settings of the task runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Never call a tier whose host is not in `allowed_hosts`.
    #[serde(default)]
    pub air_gapped: bool,
    /// Hosts an air-gapped edge may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Tasks running at once on an edge, all agents together.
    #[serde(default = "default_global_concurrency")]
    pub max_concurrent_tasks: u32,
    /// Starts of one task (crash loops included) before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_global_concurrency() -> u32 {
    4
}

fn default_max_attempts() -> u32 {
    5
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            air_gapped: false,
            allowed_hosts: Vec::new(),
            max_concurrent_tasks: default_global_concurrency(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl RuntimeSpec {
    /// Whether a tier at `host` may be called.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        match host {
            None => true,
            Some(host) => !self.air_gapped || self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
        }
    }
}

/// A definition problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// A problem in an agent, possibly in one of its steps.
    #[error("agent `{agent}`{}: {problem}", step.as_ref().map(|s| format!(", step `{s}`")).unwrap_or_default())]
    Agent {
        /// The agent's name.
        agent: String,
        /// The step's id, when the problem is in a step.
        step: Option<String>,
        /// What is wrong.
        problem: String,
    },
    /// A problem in a tier.
    #[error("tier `{tier}`: {problem}")]
    Tier {
        /// The tier's name.
        tier: String,
        /// What is wrong.
        problem: String,
    },
    /// A problem in the runtime settings.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A problem in a connector, a webhook or the policy.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecSpecError),
    /// A problem in the memory settings.
    #[error("memory: {0}")]
    Memory(String),
    /// A problem in the gateway settings.
    #[error("gateway: {0}")]
    Gateway(String),
}

impl Definitions {
    /// Checks everything the runtime relies on; the first problem found is returned.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        for (name, tier) in &self.tiers {
            validate_tier(name, tier)?;
        }
        if self.runtime.max_concurrent_tasks == 0 {
            return Err(DefinitionError::Runtime("max_concurrent_tasks must be at least 1".into()));
        }
        if self.runtime.max_attempts == 0 {
            return Err(DefinitionError::Runtime("max_attempts must be at least 1".into()));
        }
        for (name, connector) in &self.connectors {
            crate::exec::validate_connector(name, connector)?;
        }
        for (name, webhook) in &self.webhooks {
            crate::exec::validate_webhook(name, webhook, &self.agents)?;
        }
        if let Some(policy) = &self.policy {
            crate::exec::validate_policy(policy, &self.connectors)?;
        }
        self.memory.validate().map_err(DefinitionError::Memory)?;
        self.validate_gateway().map_err(DefinitionError::Gateway)?;
        for (name, agent) in &self.agents {
            self.validate_agent(name, agent)?;
        }
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), String> {
        for (index, tier) in self.gateway.tiers.iter().enumerate() {
            match self.tiers.get(tier) {
                None => return Err(format!("tiers names `{tier}`, which is not declared under [tiers]")),
                Some(spec) if spec.kind != TierKind::Openai => {
                    return Err(format!(
                    "tier `{tier}` is local; callers reach the local model by its catalogue id, list only remote tiers"
                ))
                }
                Some(_) if self.gateway.tiers[..index].contains(tier) => {
                    return Err(format!("tiers names `{tier}` twice"))
                }
                Some(_) => {}
            }
        }
        for limit in [self.gateway.per_request_usd, self.gateway.per_day_usd].into_iter().flatten() {
            if !(limit.is_finite() && limit >= 0.0) {
                return Err(format!("budget {limit} must be a non-negative number of dollars"));
            }
        }
        Ok(())
    }

    fn validate_agent(&self, name: &str, agent: &AgentSpec) -> Result<(), DefinitionError> {
        let fail = |step: Option<&str>, problem: String| DefinitionError::Agent {
            agent: name.to_owned(),
            step: step.map(str::to_owned),
            problem,
        };
        if !valid_name(name) {
            return Err(fail(None, "names use letters, digits, `-` and `_` only".into()));
        }
        if agent.steps.is_empty() {
            return Err(fail(None, "has no steps".into()));
        }
        if agent.max_concurrent == 0 {
            return Err(fail(None, "max_concurrent must be at least 1".into()));
        }
        agent.memory.validate().map_err(|problem| fail(None, problem))?;
        if let Some(deadline) = &agent.deadline {
            parse_duration(deadline).map_err(|err| fail(None, format!("deadline: {err}")))?;
        }
        for limit in [agent.budget.per_task_usd, agent.budget.per_day_usd].into_iter().flatten() {
            if !(limit.is_finite() && limit >= 0.0) {
                return Err(fail(None, format!("budget {limit} must be a non-negative number of dollars")));
            }
        }
        let uses_model = agent.steps.iter().any(|s| s.kind.uses_model());
        match self.tiers.get(&agent.local_tier) {
            Some(tier) if tier.kind == TierKind::Local => {}
            Some(_) => return Err(fail(None, format!("local_tier `{}` is not a local tier", agent.local_tier))),
            None if uses_model => {
                return Err(fail(None, format!("local_tier `{}` is not declared under [tiers]", agent.local_tier)))
            }
            None => {}
        }
        for tier in &agent.escalate_to {
            if !self.tiers.contains_key(tier) {
                return Err(fail(None, format!("escalate_to names `{tier}`, which is not declared under [tiers]")));
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for step in &agent.steps {
            let at = Some(step.id.as_str());
            if !valid_name(&step.id) {
                return Err(fail(at, "step ids use letters, digits, `-` and `_` only".into()));
            }
            if seen.contains(&step.id.as_str()) {
                return Err(fail(at, "the id is used twice".into()));
            }
            if let Some(condition) = &step.when {
                if !seen.contains(&condition.step.as_str()) {
                    return Err(fail(
                        at,
                        format!("`when` refers to `{}`, which is not an earlier step", condition.step),
                    ));
                }
                if condition.equals.is_none() && condition.one_of.is_none() && condition.not_in.is_none() {
                    return Err(fail(at, "`when` needs `equals`, `in` or `not_in`".into()));
                }
            }
            validate_step(step, &seen, &agent.memory).map_err(|problem| fail(at, problem))?;
            if step.kind == StepKind::Act {
                self.validate_act(step).map_err(|problem| fail(at, problem))?;
            }
            seen.push(&step.id);
        }
        Ok(())
    }
}

impl Definitions {
    /// An act step names a declared connector action and passes it the
    /// arguments its schema requires, and no others.
    fn validate_act(&self, step: &StepSpec) -> Result<(), String> {
        let (Some(name), Some(action_name)) = (&step.connector, &step.action) else {
            return Err("an act step needs `connector` and `action`".into());
        };
        let connector = self.connectors.get(name).ok_or_else(|| format!("connector `{name}` is not declared"))?;
        let action = connector
            .actions
            .get(action_name)
            .ok_or_else(|| format!("connector `{name}` has no action `{action_name}`"))?;
        if let Some(schema) = &action.schema {
            if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
                if let Some(extra) = step.args.keys().find(|arg| !properties.contains_key(arg.as_str())) {
                    return Err(format!("argument `{extra}` is not in the schema of `{name}.{action_name}`"));
                }
            }
            for required in schema.get("required").and_then(|r| r.as_array()).into_iter().flatten() {
                let required = required.as_str().unwrap_or_default();
                if !step.args.contains_key(required) {
                    return Err(format!("argument `{required}` of `{name}.{action_name}` is required"));
                }
            }
        }
        if let Some(resource) = &step.resource {
            if cedar_policy::EntityTypeName::from_str(&resource.entity_type).is_err() {
                return Err(format!("resource type `{}` is not a Cedar entity type name", resource.entity_type));
            }
        }
        Ok(())
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn validate_tier(name: &str, tier: &TierSpec) -> Result<(), DefinitionError> {
    let fail = |problem: String| DefinitionError::Tier { tier: name.to_owned(), problem };
    if tier.model.is_empty() {
        return Err(fail("model is empty".into()));
    }
    if let Some(timeout) = &tier.timeout {
        parse_duration(timeout).map_err(|err| fail(format!("timeout: {err}")))?;
    }
    for price in [tier.price_in_per_1k, tier.price_out_per_1k] {
        if !(price.is_finite() && price >= 0.0) {
            return Err(fail(format!("price {price} must be a non-negative number")));
        }
    }
    match tier.kind {
        TierKind::Local => {
            if tier.base_url.is_some() || tier.credential.is_some() {
                return Err(fail("a local tier takes no base_url or credential".into()));
            }
        }
        TierKind::Openai => {
            let url = tier.base_url.as_deref().ok_or_else(|| fail("an openai tier needs base_url".into()))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) || tier.host().is_none() {
                return Err(fail(format!("base_url `{url}` is not an http(s) URL")));
            }
            if let Some(credential) = &tier.credential {
                let ok = credential.strip_prefix("env:").or_else(|| credential.strip_prefix("file:"));
                if ok.is_none_or(str::is_empty) {
                    return Err(fail("credential must be `env:NAME` or `file:/path`".into()));
                }
            }
        }
    }
    Ok(())
}

/// Which fields each kind takes, besides id, kind, when and risk.
fn allowed_fields(kind: StepKind) -> &'static [&'static str] {
    match kind {
        StepKind::Classify => &["prompt", "labels", "threshold", "escalate", "examples", "subject", "context_tokens"],
        StepKind::Generate | StepKind::Plan => {
            &["prompt", "system", "max_tokens", "temperature", "escalate", "context_tokens"]
        }
        StepKind::Retrieve => &["prompt", "namespace", "top_k", "min_score", "filter", "keyword_weight"],
        StepKind::RecordGet => &["namespace", "key"],
        StepKind::RecordPut => &["namespace", "key", "value", "expect_version", "subject"],
        StepKind::Act => &["connector", "action", "args", "resource", "reasoning"],
        StepKind::Validate => &["target", "checks"],
    }
}

fn validate_step(step: &StepSpec, earlier: &[&str], access: &MemoryAccess) -> Result<(), String> {
    let present = [
        ("prompt", step.prompt.is_some()),
        ("system", step.system.is_some()),
        ("labels", !step.labels.is_empty()),
        ("threshold", step.threshold.is_some()),
        ("examples", !step.examples.is_empty()),
        ("subject", step.subject.is_some()),
        ("max_tokens", step.max_tokens.is_some()),
        ("temperature", step.temperature.is_some()),
        ("escalate", step.escalate.is_some()),
        ("namespace", step.namespace.is_some()),
        ("top_k", step.top_k.is_some()),
        ("min_score", step.min_score.is_some()),
        ("filter", !step.filter.is_empty()),
        ("keyword_weight", step.keyword_weight.is_some()),
        ("key", step.key.is_some()),
        ("value", step.value.is_some()),
        ("expect_version", step.expect_version.is_some()),
        ("context_tokens", step.context_tokens.is_some()),
        ("connector", step.connector.is_some()),
        ("action", step.action.is_some()),
        ("args", !step.args.is_empty()),
        ("resource", step.resource.is_some()),
        ("reasoning", step.reasoning.is_some()),
        ("target", step.target.is_some()),
        ("checks", !step.checks.is_empty()),
    ];
    let allowed = allowed_fields(step.kind);
    if let Some((field, _)) = present.iter().find(|(field, set)| *set && !allowed.contains(field)) {
        return Err(format!("`{field}` does not apply to a {} step", step.kind.as_str()));
    }
    let resource_templates = step.resource.iter().flat_map(|r| std::iter::once(&r.id).chain(r.attrs.values()));
    let templates =
        [&step.prompt, &step.system, &step.subject, &step.key, &step.value, &step.expect_version, &step.reasoning];
    for template in
        templates.into_iter().flatten().chain(step.args.values()).chain(step.filter.values()).chain(resource_templates)
    {
        check_template(template)?;
    }
    match step.kind {
        StepKind::Classify => {
            if step.prompt.is_none() {
                return Err("a classify step needs a prompt".into());
            }
            if step.labels.len() < 2 {
                return Err("a classify step needs at least two labels".into());
            }
            let mut labels = step.labels.clone();
            labels.sort();
            labels.dedup();
            if labels.len() != step.labels.len() || labels.iter().any(|l| l.trim().is_empty()) {
                return Err("labels must be distinct and non-empty".into());
            }
            if let Some(example) = step.examples.iter().find(|e| !step.labels.contains(&e.label)) {
                return Err(format!("example label `{}` is not one of the labels", example.label));
            }
            if let Some(t) = step.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return Err(format!("threshold {t} is not between 0 and 1"));
                }
            }
        }
        StepKind::Generate | StepKind::Plan => {
            if step.prompt.is_none() {
                return Err(format!("a {} step needs a prompt", step.kind.as_str()));
            }
            if step.max_tokens == Some(0) {
                return Err("max_tokens must be at least 1".into());
            }
            if let Some(t) = step.temperature {
                if !(0.0..=2.0).contains(&t) {
                    return Err(format!("temperature {t} is not between 0 and 2"));
                }
            }
        }
        StepKind::Retrieve | StepKind::RecordGet | StepKind::RecordPut => {
            crate::memory::validate_memory_step(step, access)?;
        }
        StepKind::Act => {
            if step.connector.is_none() || step.action.is_none() {
                return Err("an act step needs a connector and an action".into());
            }
        }
        StepKind::Validate => {
            let target = step.target.as_deref().ok_or("a validate step needs a target")?;
            if !earlier.contains(&target) {
                return Err(format!("target `{target}` is not an earlier step"));
            }
            if step.checks.is_empty() {
                return Err("a validate step needs at least one check".into());
            }
            for (idx, check) in step.checks.iter().enumerate() {
                validate_check(check).map_err(|problem| format!("check {}: {problem}", idx + 1))?;
            }
        }
    }
    Ok(())
}

fn validate_check(check: &Check) -> Result<(), String> {
    if check.fields_set() != 1 {
        return Err(
            "set exactly one of regex, not_regex, json_schema, allowed, min_length, max_length per check".into()
        );
    }
    for pattern in [&check.regex, &check.not_regex].into_iter().flatten() {
        regex::Regex::new(pattern).map_err(|err| format!("regex does not compile: {err}"))?;
    }
    if let Some(schema) = &check.json_schema {
        jsonschema::validator_for(schema).map_err(|err| format!("json_schema is not a valid schema: {err}"))?;
    }
    Ok(())
}

pub(crate) fn check_template(template: &str) -> Result<(), String> {
    let env = template_environment();
    env.template_from_str(template).map(|_| ()).map_err(|err| format!("template does not compile: {err}"))
}

fn template_environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Renders a step's template over `context` (`{"input": .., "steps": {..}}`).
/// Undefined variables are errors, so a misspelt field never renders as "".
pub fn render_template(template: &str, context: &serde_json::Value) -> Result<String, String> {
    let env = template_environment();
    let compiled = env.template_from_str(template).map_err(|err| format!("template does not compile: {err}"))?;
    compiled.render(context).map_err(|err| format!("template does not render: {err}"))
}

/// The outcome of running a validate step's checks over a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Whether every check passed.
    pub passed: bool,
    /// One line per failed check.
    pub failures: Vec<String>,
}

/// Runs `checks` over `value` (the target step's output value).
pub fn run_checks(checks: &[Check], value: &str) -> CheckReport {
    let mut failures = Vec::new();
    let chars = value.chars().count();
    for (idx, check) in checks.iter().enumerate() {
        let n = idx + 1;
        if let Some(pattern) = &check.regex {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(value) => {}
                Ok(_) => failures.push(format!("check {n}: does not match /{pattern}/")),
                Err(err) => failures.push(format!("check {n}: bad regex: {err}")),
            }
        }
        if let Some(pattern) = &check.not_regex {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(value) => {}
                Ok(_) => failures.push(format!("check {n}: matches the forbidden /{pattern}/")),
                Err(err) => failures.push(format!("check {n}: bad regex: {err}")),
            }
        }
        if let Some(schema) = &check.json_schema {
            match (jsonschema::validator_for(schema), serde_json::from_str::<serde_json::Value>(value)) {
                (Err(err), _) => failures.push(format!("check {n}: bad schema: {err}")),
                (_, Err(err)) => failures.push(format!("check {n}: not JSON: {err}")),
                (Ok(validator), Ok(json)) => {
                    if let Some(err) = validator.iter_errors(&json).next() {
                        failures.push(format!("check {n}: schema violation at `{}`: {err}", err.instance_path()));
                    }
                }
            }
        }
        if let Some(allowed) = &check.allowed {
            if !allowed.iter().any(|a| a == value) {
                failures.push(format!("check {n}: `{value}` is not one of {allowed:?}"));
            }
        }
        if let Some(min) = check.min_length {
            if chars < min {
                failures.push(format!("check {n}: {chars} characters, fewer than {min}"));
            }
        }
        if let Some(max) = check.max_length {
            if chars > max {
                failures.push(format!("check {n}: {chars} characters, more than {max}"));
            }
        }
    }
    CheckReport { passed: failures.is_empty(), failures }
}

#[cfg(test)]
mod tests;
