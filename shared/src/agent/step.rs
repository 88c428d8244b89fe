//! One step of an agent: [`StepSpec`] holds what every step has (its id, its
//! condition, its risk) and a [`StepAction`], tagged by `kind`, holding only
//! the fields of that kind. A field that does not belong to the step's kind
//! is refused when the bundle is parsed, with the step and the kind named.
//!
//! The files keep the flat shape they always had: `kind` sits beside the
//! kind's own fields in the step's table, and the names of the fields are the
//! names bundles have always used, so bundles signed before the split still
//! decode to the same steps.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::template::Check;

/// The tokens a generate or plan step may produce when it does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 128;

/// The confidence under which a classify step escalates when it does not say.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

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
    /// A tool-using loop: the model chooses calls, the edge runs them under policy.
    Agent,
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
            StepKind::Agent => "agent",
        }
    }

    /// Whether the step calls a model.
    pub fn uses_model(self) -> bool {
        matches!(self, StepKind::Classify | StepKind::Generate | StepKind::Plan | StepKind::Agent)
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

/// One step, as written: what every step has, and what its kind does.
/// It serializes flat (`kind` beside the kind's fields) and reads the same
/// way, by the [`Deserialize`] impl below that names the step in errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSpec {
    /// Unique within the agent; later steps refer to its output by it.
    pub id: String,
    /// What the step does (`kind`) and that kind's fields.
    #[serde(flatten)]
    pub action: StepAction,
    /// Run the step only when this holds; otherwise it is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Risk class, for the router (default low).
    pub risk: Risk,
}

/// What a step does, tagged by `kind`, with only that kind's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepAction {
    /// Scored choice over labels with the local model.
    Classify(ClassifyStep),
    /// Draft text.
    Generate(GenerateStep),
    /// A complex step that escalates by default.
    Plan(GenerateStep),
    /// Semantic memory lookup: filtered, ranked, recorded.
    Retrieve(RetrieveStep),
    /// Read an authoritative record (key-value, versioned).
    RecordGet(RecordGetStep),
    /// Write an authoritative record, optionally compare-and-set on its version.
    RecordPut(RecordPutStep),
    /// A side effect through the execution plane.
    Act(ActStep),
    /// Deterministic checks of an earlier step's output.
    Validate(ValidateStep),
    /// A tool-using loop (see [`super::tool_loop`]).
    Agent(super::tool_loop::AgentLoopStep),
}

/// `kind = "classify"`: a scored choice over labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyStep {
    /// Force (true) or forbid (false) escalation; default: try the local model first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<bool>,
    /// Prompt template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Candidate answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Worked examples: shown to an escalation tier as earlier turns of the
    /// conversation, which small chat models follow far better than
    /// instructions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<ClassifyExample>,
    /// What an escalation tier is asked to classify (a template; default:
    /// the prompt). Written `subject` in files.
    #[serde(default, rename = "subject", skip_serializing_if = "Option::is_none")]
    pub escalation_prompt: Option<String>,
    /// Escalate when the local confidence is below this (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Build a working context of at most this many tokens, offered to the
    /// templates as `context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

impl ClassifyStep {
    /// The confidence under which the step escalates.
    pub fn threshold(&self) -> f32 {
        self.threshold.unwrap_or(DEFAULT_THRESHOLD)
    }
}

/// `kind = "generate"` or `kind = "plan"`: draft text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateStep {
    /// Force (true) or forbid (false) escalation; default: `plan` escalates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<bool>,
    /// Prompt template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// System message template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Most tokens to generate (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (default 0, greedy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Build a working context of at most this many tokens, offered to the
    /// templates as `context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

impl GenerateStep {
    /// The tokens the step may produce.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }
}

/// `kind = "retrieve"`: a semantic memory lookup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveStep {
    /// The query, a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Memory namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Most items returned (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Items scoring below this are dropped (default 0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Metadata that returned items must carry, each value a template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// Weight of the FTS5 keyword score in a hybrid ranking, 0 to 1 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword_weight: Option<f32>,
}

/// `kind = "record_get"`: read an authoritative record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordGetStep {
    /// Memory namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Record key, a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `kind = "record_put"`: write an authoritative record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordPutStep {
    /// Memory namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Record key, a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value to store, a template; JSON text is stored as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Write only if the record is at this version (`0`: absent), a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<String>,
    /// The data subject the record is about, which `memory forget --subject`
    /// erases with it (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// `kind = "act"`: a side effect through the execution plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActStep {
    /// Connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// Connector action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Arguments, each value a template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// What the side effect touches, for the policy (default the connector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<crate::exec::ResourceSpec>,
    /// The agent's reasoning shown to an approver (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// `kind = "validate"`: deterministic checks of an earlier step's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateStep {
    /// The step whose output is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

impl StepAction {
    /// What the step does.
    pub fn kind(&self) -> StepKind {
        match self {
            StepAction::Classify(_) => StepKind::Classify,
            StepAction::Generate(_) => StepKind::Generate,
            StepAction::Plan(_) => StepKind::Plan,
            StepAction::Retrieve(_) => StepKind::Retrieve,
            StepAction::RecordGet(_) => StepKind::RecordGet,
            StepAction::RecordPut(_) => StepKind::RecordPut,
            StepAction::Act(_) => StepKind::Act,
            StepAction::Validate(_) => StepKind::Validate,
            StepAction::Agent(_) => StepKind::Agent,
        }
    }
}

impl StepSpec {
    /// What the step does.
    pub fn kind(&self) -> StepKind {
        self.action.kind()
    }

    /// The tokens a generate or plan step may produce (the default for any other step).
    pub fn max_tokens(&self) -> u32 {
        match &self.action {
            StepAction::Generate(step) | StepAction::Plan(step) => step.max_tokens(),
            StepAction::Agent(step) => step.max_tokens(),
            _ => DEFAULT_MAX_TOKENS,
        }
    }

    /// The confidence under which a classify step escalates (the default for any other step).
    pub fn threshold(&self) -> f32 {
        match &self.action {
            StepAction::Classify(step) => step.threshold(),
            _ => DEFAULT_THRESHOLD,
        }
    }

    /// Whether the step escalates before trying the local model: as its
    /// `escalate` says, or by default a plan step only.
    pub fn escalates_by_default(&self) -> bool {
        match &self.action {
            StepAction::Classify(step) => step.escalate.unwrap_or(false),
            StepAction::Generate(step) => step.escalate.unwrap_or(false),
            StepAction::Plan(step) => step.escalate.unwrap_or(true),
            _ => false,
        }
    }
}

/// Reads a step and names it in every error: a field that does not belong
/// to the step's kind reads "step `ID`: `FIELD` does not apply to a KIND step".
impl<'de> Deserialize<'de> for StepSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The step as read, with the action's error kept until the id is known.
        #[derive(Deserialize)]
        struct Read {
            id: String,
            #[serde(default)]
            when: Option<Condition>,
            #[serde(default)]
            risk: Risk,
            #[serde(flatten)]
            action: Caught,
            #[serde(flatten)]
            kind: KindOnly,
        }
        /// The action, or the message of the error that reading it gave.
        struct Caught(Result<StepAction, String>);
        impl<'de> Deserialize<'de> for Caught {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Ok(Caught(StepAction::deserialize(deserializer).map_err(|err| err.to_string())))
            }
        }
        /// The step's `kind` as written, if it is text, for the message.
        #[derive(Deserialize)]
        struct KindOnly {
            #[serde(default)]
            kind: KindName,
        }
        #[derive(Default)]
        struct KindName(Option<String>);
        impl<'de> Deserialize<'de> for KindName {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Ok(KindName(String::deserialize(deserializer).ok()))
            }
        }

        let read = Read::deserialize(deserializer)?;
        let kind = read.kind.kind.0;
        let action = read.action.0.map_err(|message| D::Error::custom(step_error(&read.id, kind, &message)))?;
        Ok(StepSpec { id: read.id, action, when: read.when, risk: read.risk })
    }
}

/// The message of a step that does not read, naming the step, and for a
/// field its kind does not take, the field and the kind.
fn step_error(id: &str, kind: Option<String>, message: &str) -> String {
    let field = message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')).map(|(field, _)| field);
    match (field, kind) {
        (Some(field), Some(kind)) => format!("step `{id}`: `{field}` does not apply to a {kind} step"),
        _ => format!("step `{id}`: {message}"),
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
