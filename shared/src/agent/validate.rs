//! The checks the control plane runs before it signs a bundle:
//! [`Definitions::validate`] walks the tiers, the runtime, the connectors,
//! the gateway and every agent and step, and returns the first problem as a
//! [`DefinitionError`] naming the agent, the step or the tier it is in.
//!
//! A field that does not belong to a step's kind never gets this far: the
//! step's kind is its own struct ([`super::StepAction`]), and parsing refuses
//! the field.

use std::str::FromStr;

use super::step::{ActStep, StepAction, StepSpec};
use super::template::{check_template, Check};
use super::tier::{TierKind, TierSpec};
use super::{AgentSpec, Definitions};
use crate::duration::parse_duration;
use crate::memory::MemoryAccess;

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
        for (name, tool) in &self.mcp_tools {
            crate::served::validate_served_tool(name, tool, &self.agents)?;
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
                Some(spec) if !spec.kind.is_remote() => {
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
        let uses_model = agent.steps.iter().any(|s| s.kind().uses_model());
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
            if let StepAction::Act(act) = &step.action {
                self.validate_act(act).map_err(|problem| fail(at, problem))?;
            }
            if let StepAction::Agent(agent_step) = &step.action {
                super::tool_loop::tool_definitions(agent_step, &self.connectors)
                    .map_err(|problem| fail(at, problem))?;
                for tool in &agent_step.tools {
                    if let super::tool_loop::ToolRef::Handoff { agent: to, .. } = tool {
                        if to == name {
                            return Err(fail(
                                at,
                                format!("tool `{}`: an agent cannot hand work to itself", tool.name()),
                            ));
                        }
                        if !self.agents.contains_key(to) {
                            return Err(fail(at, format!("tool `{}`: agent `{to}` is not defined", tool.name())));
                        }
                    }
                }
            }
            seen.push(&step.id);
        }
        Ok(())
    }
}

impl Definitions {
    /// An act step names a declared connector action and passes it the
    /// arguments its schema requires, and no others.
    fn validate_act(&self, step: &ActStep) -> Result<(), String> {
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
            if tier.base_url.is_some() || tier.credential.is_some() || tier.stream {
                return Err(fail("a local tier takes no base_url, credential or stream".into()));
            }
        }
        TierKind::Openai | TierKind::Anthropic => {
            let url = tier.base_url.as_deref().ok_or_else(|| fail("a remote tier needs base_url".into()))?;
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

/// The templates a step renders, in the order they are checked.
fn templates(action: &StepAction) -> Vec<&String> {
    match action {
        StepAction::Classify(step) => [&step.prompt, &step.escalation_prompt].into_iter().flatten().collect(),
        StepAction::Generate(step) | StepAction::Plan(step) => {
            [&step.prompt, &step.system].into_iter().flatten().collect()
        }
        StepAction::Retrieve(step) => step.prompt.iter().chain(step.filter.values()).collect(),
        StepAction::RecordGet(step) => step.key.iter().collect(),
        StepAction::RecordPut(step) => {
            [&step.subject, &step.key, &step.value, &step.expect_version].into_iter().flatten().collect()
        }
        StepAction::Act(step) => {
            let resource = step.resource.iter().flat_map(|r| std::iter::once(&r.id).chain(r.attrs.values()));
            step.reasoning.iter().chain(step.args.values()).chain(resource).collect()
        }
        StepAction::Validate(_) => Vec::new(),
        StepAction::Agent(step) => {
            let resources = step.tools.iter().filter_map(|tool| match tool {
                super::tool_loop::ToolRef::Connector { resource: Some(r), .. } => Some(r),
                _ => None,
            });
            let resources = resources.flat_map(|r| std::iter::once(&r.id).chain(r.attrs.values()));
            [&step.goal, &step.system].into_iter().flatten().chain(resources).collect()
        }
    }
}

fn validate_step(step: &StepSpec, earlier: &[&str], access: &MemoryAccess) -> Result<(), String> {
    for template in templates(&step.action) {
        check_template(template)?;
    }
    let kind = step.kind();
    match &step.action {
        StepAction::Classify(classify) => {
            if classify.prompt.is_none() {
                return Err("a classify step needs a prompt".into());
            }
            if classify.labels.len() < 2 {
                return Err("a classify step needs at least two labels".into());
            }
            let mut labels = classify.labels.clone();
            labels.sort();
            labels.dedup();
            if labels.len() != classify.labels.len() || labels.iter().any(|l| l.trim().is_empty()) {
                return Err("labels must be distinct and non-empty".into());
            }
            if let Some(example) = classify.examples.iter().find(|e| !classify.labels.contains(&e.label)) {
                return Err(format!("example label `{}` is not one of the labels", example.label));
            }
            if let Some(t) = classify.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return Err(format!("threshold {t} is not between 0 and 1"));
                }
            }
        }
        StepAction::Generate(generate) | StepAction::Plan(generate) => {
            if generate.prompt.is_none() {
                return Err(format!("a {} step needs a prompt", kind.as_str()));
            }
            if generate.max_tokens == Some(0) {
                return Err("max_tokens must be at least 1".into());
            }
            if let Some(t) = generate.temperature {
                if !(0.0..=2.0).contains(&t) {
                    return Err(format!("temperature {t} is not between 0 and 2"));
                }
            }
        }
        StepAction::Retrieve(_) | StepAction::RecordGet(_) | StepAction::RecordPut(_) => {
            crate::memory::validate_memory_step(step, access)?;
        }
        StepAction::Act(act) => {
            if act.connector.is_none() || act.action.is_none() {
                return Err("an act step needs a connector and an action".into());
            }
        }
        StepAction::Agent(agent_step) => super::tool_loop::validate_step(agent_step, access)?,
        StepAction::Validate(validate) => {
            let target = validate.target.as_deref().ok_or("a validate step needs a target")?;
            if !earlier.contains(&target) {
                return Err(format!("target `{target}` is not an earlier step"));
            }
            if validate.checks.is_empty() {
                return Err("a validate step needs at least one check".into());
            }
            for (idx, check) in validate.checks.iter().enumerate() {
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
