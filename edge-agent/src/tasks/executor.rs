//! The step executor: one run of a task, step by step.
//!
//! A run replays the recorded results of completed steps into the template
//! context, then executes the remaining steps one by one, checkpointing each
//! result before the next step starts (see [`crate::tasks::journal`]). Model
//! calls go to worker threads (see `aios_models::worker`), never onto
//! tokio's workers; which tier runs a model step is decided by
//! [`crate::model_calls`]. Memory steps go to [`crate::memory::steps`], act
//! steps to the execution plane.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aios_shared::agent::{run_checks, ActStep, AgentSpec, Definitions, StepAction, StepSpec};
use serde_json::{json, Value};
use tracing::{debug, warn, Instrument};

use crate::exec::{ActOutcome, ActRequest};
use crate::memory::{self};
use crate::model_calls::{ModelCallError, StepCall};
use crate::tasks::{RunEnd, StepRecord, TaskRecord};

use super::scheduler::{Runtime, Stop, TIER_DOWN_RETRY_MS};

impl Runtime {
    pub(super) async fn run_task(&self, task: TaskRecord, defs: Arc<Definitions>, cancel: Arc<AtomicBool>) {
        let result = self.run_steps(&task, &defs, &cancel).await;
        // The run is over either way; a resumed run seeds the task's budget
        // account again from its step records.
        self.inner.tiers.forget_task(&task.id);
        let end = match result {
            Ok(output) => {
                let needs_review = output.get("needs_review").and_then(Value::as_bool).unwrap_or(false);
                RunEnd::Succeeded { output, needs_review }
            }
            Err(Stop::End(end)) => end,
            Err(Stop::Db(err)) => {
                warn!(%err, "task stopped by a database error; it resumes at the next start");
                return;
            }
        };
        debug!(?end, "task run ended");
        if let Err(err) = self.inner.store.end_run(&self.inner.identity, &task.id, end, self.now()).await {
            warn!(%err, "cannot record the end of a task run");
        }
    }

    async fn run_steps(&self, task: &TaskRecord, defs: &Definitions, cancel: &AtomicBool) -> Result<Value, Stop> {
        let agent = defs.agents.get(&task.agent).ok_or_else(|| {
            Stop::End(RunEnd::Failed(format!("agent `{}` is no longer defined in the bundle in force", task.agent)))
        })?;
        if agent.version != task.agent_version && task.next_step > 0 {
            return Err(Stop::End(RunEnd::Failed(format!(
                "agent `{}` changed from version {} to {} while the task was in flight",
                task.agent, task.agent_version, agent.version
            ))));
        }
        let mut context = TaskContext::new(task);
        for record in &task.steps {
            context.replay(agent, record);
        }
        for seq in task.next_step as usize..agent.steps.len() {
            if cancel.load(Ordering::SeqCst) || self.inner.store.cancel_requested(&task.id).await? {
                return Err(Stop::End(RunEnd::Cancelled));
            }
            if self.now() > task.deadline_ms {
                return Err(Stop::End(RunEnd::Failed(format!(
                    "deadline exceeded before step `{}`",
                    agent.steps[seq].id
                ))));
            }
            let step = &agent.steps[seq];
            let span = tracing::info_span!("step", step = %step.id, kind = step.kind().as_str(), seq);
            // The deadline holds inside a step too: a model call or a
            // connector call still running when it passes is dropped, as on
            // cancellation, and its step is not checkpointed.
            let left = Duration::from_millis(u64::try_from(task.deadline_ms.saturating_sub(self.now())).unwrap_or(0));
            let record = tokio::select! {
                record = self.run_step(task, agent, seq, &context).instrument(span) => record?,
                _ = cancelled(cancel) => return Err(Stop::End(RunEnd::Cancelled)),
                _ = tokio::time::sleep(left) => {
                    return Err(Stop::End(RunEnd::Failed(format!("deadline exceeded during step `{}`", step.id))));
                }
            };
            self.inner.store.checkpoint_step(&self.inner.identity, &task.id, record.clone()).await?;
            context.replay(agent, &record);
        }
        Ok(context.output())
    }

    async fn run_step(
        &self,
        task: &TaskRecord,
        agent: &AgentSpec,
        seq: usize,
        context: &TaskContext,
    ) -> Result<StepRecord, Stop> {
        let step = &agent.steps[seq];
        let started = self.inner.options.clock.instant();
        let mut record = StepRecord {
            seq: seq as u32,
            step_id: step.id.clone(),
            kind: step.kind().as_str().to_owned(),
            status: "done".into(),
            output: Value::Null,
            value: None,
            tier: None,
            reason: None,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            latency_ms: 0,
            confidence: None,
            needs_review: false,
            call_id: None,
            created_ms: 0,
        };
        if let Some(condition) = &step.when {
            if !condition.holds(context.value(&condition.step)) {
                record.status = "skipped".into();
                record.output = json!({ "skipped": format!("condition on `{}` does not hold", condition.step) });
                record.created_ms = self.now();
                return Ok(record);
            }
        }
        let fatal = |problem: String| Stop::End(RunEnd::Failed(format!("step `{}`: {problem}", step.id)));
        match &step.action {
            StepAction::Classify(_) | StepAction::Generate(_) | StepAction::Plan(_) => {
                let working = self.working_context(agent, seq, context).await?;
                let text = working.as_ref().map(|w| w.text.as_str());
                let render = |template: &str| context.render_with(template, text);
                let (prompt, system, subject) = match &step.action {
                    StepAction::Classify(classify) => (&classify.prompt, None, classify.escalation_prompt.as_deref()),
                    StepAction::Generate(generate) | StepAction::Plan(generate) => {
                        (&generate.prompt, generate.system.as_deref(), None)
                    }
                    _ => unreachable!("a model step"),
                };
                let prompt = render(prompt.as_deref().unwrap_or_default()).map_err(fatal)?;
                let system = system.map(render).transpose().map_err(fatal)?;
                let subject = subject.map(render).transpose().map_err(fatal)?;
                let call = StepCall {
                    agent: &task.agent,
                    task: &task.id,
                    step,
                    prompt,
                    system,
                    subject,
                    force_escalation: None,
                    task_spent_usd: context.spent_usd,
                    task_budget_usd: task_budget(agent, task),
                    classification: context.classification(),
                };
                let outcome = self.call_model(task, seq, call).await?;
                outcome.fill(&mut record);
                if let (Some(working), Some(output)) = (working, record.output.as_object_mut()) {
                    output.insert(
                        "context".into(),
                        json!({
                            "tokens": working.tokens,
                            "budget": working.budget,
                            "included": working.included,
                            "left_out": working.left_out,
                        }),
                    );
                }
            }
            StepAction::Validate(validate) => {
                let target = validate.target.as_deref().unwrap_or_default();
                let value = context.value(target).unwrap_or_default().to_owned();
                let report = run_checks(&validate.checks, &value);
                if report.passed {
                    record.output = json!({ "passed": true, "failures": [] });
                } else {
                    self.repair(task, agent, step, context, report.failures, &mut record).await?;
                }
                record.value = Some(if record.output["passed"] == json!(true) { "passed" } else { "failed" }.into());
                if record.output["passed"] != json!(true) {
                    let failures = record.output["failures"].clone();
                    let detail = format!("validation of `{target}` failed: {failures}");
                    // The failure is recorded with the step, then the task fails.
                    record.latency_ms =
                        self.inner.options.clock.instant().saturating_duration_since(started).as_millis() as u64;
                    record.created_ms = self.now();
                    self.inner.store.checkpoint_step(&self.inner.identity, &task.id, record).await?;
                    return Err(fatal(detail));
                }
            }
            StepAction::Retrieve(_) | StepAction::RecordGet(_) | StepAction::RecordPut(_) => {
                let render = |template: &str| context.render(template);
                let memory = &self.inner.memory;
                match memory::steps::run_memory_step(memory, &task.id, agent, step, seq, &render, self.now()).await {
                    Ok(result) => {
                        record.output = result.output;
                        record.value = result.value;
                    }
                    Err(memory::steps::StepError::Failed(problem)) => return Err(fatal(problem)),
                    Err(memory::steps::StepError::Db(err)) => return Err(Stop::Db(err)),
                }
            }
            StepAction::Agent(_) => self.run_agent_step(task, agent, seq, context, &mut record).await?,
            StepAction::Act(act) => {
                let request = context.act_request(task, seq, step, act).map_err(fatal)?;
                let (version, defs) = self.definitions().await?.ok_or_else(|| fatal("no bundle in force".into()))?;
                match self.inner.exec.act(version, &defs, request).await? {
                    ActOutcome::Done(output) => {
                        record.output = output;
                        record.value = Some("done".into());
                    }
                    ActOutcome::Park { reason, until_ms } => {
                        return Err(Stop::End(RunEnd::Parked { reason, until_ms }))
                    }
                    ActOutcome::Failed(problem) | ActOutcome::Refused(problem) => return Err(fatal(problem)),
                    ActOutcome::DeadLettered(problem) => {
                        return Err(Stop::End(RunEnd::DeadLettered(format!("step `{}`: {problem}", step.id))))
                    }
                }
            }
        }
        record.latency_ms = self.inner.options.clock.instant().saturating_duration_since(started).as_millis() as u64;
        record.created_ms = self.now();
        Ok(record)
    }

    /// The working context of a model step with `context_tokens`, counted
    /// with the tokenizer of the agent's local model.
    async fn working_context(
        &self,
        agent: &AgentSpec,
        seq: usize,
        context: &TaskContext,
    ) -> Result<Option<memory::WorkingContext>, Stop> {
        let step = &agent.steps[seq];
        let budget = match &step.action {
            StepAction::Classify(classify) => classify.context_tokens,
            StepAction::Generate(generate) | StepAction::Plan(generate) => generate.context_tokens,
            _ => None,
        };
        let Some(budget) = budget else { return Ok(None) };
        let fatal = |problem: String| Stop::End(RunEnd::Failed(format!("step `{}`: {problem}", step.id)));
        let model = match self.inner.tiers.local_model(&agent.local_tier).await {
            Ok(model) => model,
            Err(ModelCallError::Db(err)) => return Err(Stop::Db(err)),
            Err(err) => return Err(fatal(format!("no tokenizer for the working context: {err}"))),
        };
        let input = memory::steps::context_input(agent, seq, &context.input, &context.steps, &context.values);
        let count = |text: String| {
            let model = model.clone();
            async move {
                let (_, ids) = model.tokenize(aios_models::Prompt::Text(text)).await.map_err(|e| e.to_string())?;
                Ok(ids.len())
            }
        };
        memory::build_context(&input, budget as usize, count).await.map(Some).map_err(fatal)
    }

    /// A validate step failed on a local result: run the target step again
    /// on an escalation tier, once, and check that result instead.
    async fn repair(
        &self,
        task: &TaskRecord,
        agent: &AgentSpec,
        step: &StepSpec,
        context: &TaskContext,
        failures: Vec<String>,
        record: &mut StepRecord,
    ) -> Result<(), Stop> {
        record.output = json!({ "passed": false, "failures": failures });
        let StepAction::Validate(validate) = &step.action else { return Ok(()) };
        let target_id = validate.target.as_deref().unwrap_or_default();
        let target = &agent.steps[agent.step_index(target_id).expect("validated at publish")];
        let was_local = context.tier(target_id).is_some_and(|t| t == agent.local_tier);
        let (prompt, system) = match &target.action {
            StepAction::Classify(classify) => (&classify.prompt, None),
            StepAction::Generate(generate) | StepAction::Plan(generate) => {
                (&generate.prompt, generate.system.as_deref())
            }
            _ => return Ok(()),
        };
        if !was_local || agent.escalate_to.is_empty() {
            return Ok(());
        }
        let fatal = |problem: String| Stop::End(RunEnd::Failed(format!("step `{}`: {problem}", step.id)));
        let prompt = context.render(prompt.as_deref().unwrap_or_default()).map_err(fatal)?;
        let system = system.map(|s| context.render(s)).transpose().map_err(fatal)?;
        let reason = format!("local output of `{target_id}` failed validation: {}", failures.join("; "));
        let call = StepCall {
            agent: &task.agent,
            task: &task.id,
            step: target,
            prompt,
            system,
            subject: None,
            force_escalation: Some(reason),
            task_spent_usd: context.spent_usd,
            task_budget_usd: task_budget(agent, task),
            classification: context.classification(),
        };
        let outcome = self.call_model(task, record.seq as usize, call).await?;
        if outcome.tier.as_deref() == Some(agent.local_tier.as_str()) {
            // No tier could take it: the local result stands as failed.
            return Ok(());
        }
        let mut repaired = StepRecord { ..record.clone() };
        outcome.fill(&mut repaired);
        let text = repaired.value.clone().unwrap_or_default();
        let report = run_checks(&validate.checks, &text);
        record.tier = repaired.tier;
        record.reason = repaired.reason;
        record.tokens_in = repaired.tokens_in;
        record.tokens_out = repaired.tokens_out;
        record.cost_usd = repaired.cost_usd;
        record.call_id = repaired.call_id;
        record.output = json!({
            "passed": report.passed,
            "failures": report.failures,
            "local_failures": failures,
            "repaired": { "step": target_id, "output": repaired.output },
        });
        Ok(())
    }

    async fn call_model(
        &self,
        task: &TaskRecord,
        seq: usize,
        call: StepCall<'_>,
    ) -> Result<crate::model_calls::CallOutcome, Stop> {
        let call_id = format!("{}:{seq}:{:08x}", task.id, rand::random::<u32>());
        if let Some(path) = &self.inner.options.call_log {
            log_call(path, &task.id, seq, &call_id);
        }
        match self.inner.tiers.run(call, &call_id).await {
            Ok(outcome) => Ok(outcome),
            Err(ModelCallError::Fatal(problem)) => Err(Stop::End(RunEnd::Failed(problem))),
            Err(ModelCallError::Unavailable(reason)) => {
                Err(Stop::End(RunEnd::Waiting { reason, until_ms: self.now() + TIER_DOWN_RETRY_MS }))
            }
            Err(ModelCallError::Db(err)) => Err(Stop::Db(err)),
        }
    }
}

/// Resolves once `flag` is set.
async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_call(path: &std::path::Path, task: &str, seq: usize, call_id: &str) {
    let line = format!("{task} {seq} {call_id}\n");
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(err) = written {
        warn!(%err, path = %path.display(), "cannot write the call log");
    }
}

/// What templates see, rebuilt from the recorded steps.
pub(super) struct TaskContext {
    input: Value,
    steps: serde_json::Map<String, Value>,
    values: HashMap<String, String>,
    tiers: HashMap<String, String>,
    needs_review: bool,
    /// Why, per step that fell back: "step `x` ran on `local`: reason".
    review: Vec<String>,
    pub(super) spent_usd: f64,
}

impl TaskContext {
    /// The task's input.
    pub(super) fn input(&self) -> &Value {
        &self.input
    }

    /// Why earlier results need a person's review.
    pub(super) fn review(&self) -> &[String] {
        &self.review
    }

    /// The most sensitive classification among what the task retrieved.
    pub(super) fn classification(&self) -> Option<aios_shared::memory::Classification> {
        crate::exec::highest_classification(&self.sources()).and_then(|c| c.parse().ok())
    }

    /// What the agent relied on: every item an earlier retrieve step returned.
    pub(super) fn sources(&self) -> Vec<Value> {
        self.steps
            .values()
            .filter_map(|output| output.get("items").and_then(Value::as_array))
            .flatten()
            .cloned()
            .collect()
    }

    fn new(task: &TaskRecord) -> Self {
        Self {
            input: task.input.clone(),
            steps: serde_json::Map::new(),
            values: HashMap::new(),
            tiers: HashMap::new(),
            needs_review: false,
            review: Vec::new(),
            spent_usd: 0.0,
        }
    }

    fn replay(&mut self, agent: &AgentSpec, record: &StepRecord) {
        self.needs_review |= record.needs_review;
        if record.needs_review {
            let tier = record.tier.as_deref().unwrap_or("local");
            let reason = record.reason.as_deref().unwrap_or("a fallback was used");
            self.review.push(format!("step `{}` ran on `{tier}`: {reason}", record.step_id));
        }
        self.spent_usd += record.cost_usd;
        if let Some(tier) = &record.tier {
            self.tiers.insert(record.step_id.clone(), tier.clone());
        }
        if let Some(value) = &record.value {
            self.values.insert(record.step_id.clone(), value.clone());
        }
        // A validate step that repaired its target replaces the target's output.
        if let Some(repaired) = record.output.get("repaired") {
            if let (Some(target), Some(output)) = (repaired["step"].as_str(), repaired.get("output")) {
                if agent.step_index(target).is_some() {
                    self.steps.insert(target.to_owned(), output.clone());
                    if let Some(text) = output.get("text").or_else(|| output.get("label")).and_then(Value::as_str) {
                        self.values.insert(target.to_owned(), text.to_owned());
                    }
                }
            }
        }
        self.steps.insert(record.step_id.clone(), record.output.clone());
    }

    fn value(&self, step: &str) -> Option<&str> {
        self.values.get(step).map(String::as_str)
    }

    fn tier(&self, step: &str) -> Option<&str> {
        self.tiers.get(step).map(String::as_str)
    }

    pub(super) fn render(&self, template: &str) -> Result<String, String> {
        self.render_with(template, None)
    }

    /// Renders with the step's working context as `context`, when it has one.
    fn render_with(&self, template: &str, working: Option<&str>) -> Result<String, String> {
        let mut scope = json!({ "input": self.input, "steps": self.steps });
        if let Some(text) = working {
            scope["context"] = Value::String(text.to_owned());
        }
        aios_shared::agent::render_template(template, &scope)
    }

    /// The rendered request of an act step.
    fn act_request(&self, task: &TaskRecord, seq: usize, step: &StepSpec, act: &ActStep) -> Result<ActRequest, String> {
        let mut args = std::collections::BTreeMap::new();
        for (name, template) in &act.args {
            args.insert(name.clone(), self.render(template)?);
        }
        let connector = act.connector.clone().unwrap_or_default();
        let resource = match &act.resource {
            Some(resource) => {
                let mut attrs = serde_json::Map::new();
                for (name, template) in &resource.attrs {
                    let text = self.render(template)?;
                    attrs.insert(name.clone(), serde_json::from_str(&text).unwrap_or(Value::String(text)));
                }
                (resource.entity_type.clone(), self.render(&resource.id)?, Value::Object(attrs))
            }
            None => ("Connector".to_owned(), connector.clone(), json!({})),
        };
        let sources = self.sources();
        let classification = crate::exec::highest_classification(&sources);
        Ok(ActRequest {
            task_id: task.id.clone(),
            agent: task.agent.clone(),
            seq: seq as u32,
            step_id: step.id.clone(),
            connector,
            action: act.action.clone().unwrap_or_default(),
            args: crate::exec::ActArgs::Rendered(args),
            call: None,
            resource,
            reasoning: act.reasoning.as_deref().map(|r| self.render(r)).transpose()?,
            sources,
            classification,
            review: self.review.clone(),
        })
    }

    fn output(self) -> Value {
        json!({ "steps": self.steps, "needs_review": self.needs_review })
    }
}

/// The most `task` may spend: its agent's per-task budget, or less when a
/// caller handed it the rest of its own.
pub(super) fn task_budget(agent: &AgentSpec, task: &TaskRecord) -> Option<f64> {
    match (agent.budget.per_task_usd, task.budget_usd) {
        (Some(own), Some(handed)) => Some(own.min(handed)),
        (own, handed) => own.or(handed),
    }
}
