//! The driver of an agent step's tool-using loop (`kind = "agent"`).
//!
//! Each round reads the step's loop journal ([`super::loop_journal`]), asks
//! the pure `aios_shared::agent::tool_loop::next` what to do, does it, and
//! journals the result before the next round: a model turn goes to
//! [`crate::model_calls::ModelCalls::agent_turn`], a valid call to a
//! connector becomes an intent of the execution plane exactly as an `act`
//! step's does (schema, Cedar with the model's arguments, approval bound to
//! them, outbox, breaker, rate limit, dead letters), keyed by the call's
//! place in the loop so a resumed run never repeats it; an invalid call is
//! journaled with the reason the model is told. An approval parks the task;
//! the run that resumes it starts from the journal. Memory tools go to
//! `crate::memory::tools` under the agent's memory access; `ask_human`
//! parks the task on a question; `handoff` runs another agent as a
//! sub-task ([`super::handoff`]).

use aios_shared::agent::tool_loop::{
    self, call_key, plan_on, CallOutcome, Complexity, Limit, Limits, LoopEnd, LoopEntry, Next, PlanOn, Strategy,
    ToolRef, DEFAULT_SYSTEM,
};
use aios_shared::agent::{AgentSpec, StepSpec};
use aios_shared::memory::Classification;
use serde_json::{json, Value};

use crate::exec::{ActArgs, ActOutcome, ActRequest};
use crate::memory::tools::{run_memory_tool, MemoryCall, ToolError};

use super::handoff::Handoff;
use crate::model_calls::{AgentTurn, ModelCallError, TurnError};
use crate::tasks::{RunEnd, StepRecord, TaskRecord};

use super::executor::TaskContext;
use super::scheduler::{Runtime, Stop, TIER_DOWN_RETRY_MS};

impl Runtime {
    /// Runs the loop of agent step `seq` until it ends, filling `record`; a
    /// loop that ends without an answer is checkpointed and fails the task.
    pub(super) async fn run_agent_step(
        &self,
        task: &TaskRecord,
        agent: &AgentSpec,
        seq: usize,
        context: &TaskContext,
        record: &mut StepRecord,
    ) -> Result<(), Stop> {
        let step = &agent.steps[seq];
        let aios_shared::agent::StepAction::Agent(spec) = &step.action else {
            unreachable!("run_agent_step runs agent steps")
        };
        let fatal = |problem: String| Stop::End(RunEnd::Failed(format!("step `{}`: {problem}", step.id)));
        let (version, defs) = self.definitions().await?.ok_or_else(|| fatal("no bundle in force".into()))?;
        let tools = tool_loop::tool_definitions(spec, &defs.connectors).map_err(fatal)?;
        let schemas = tool_loop::schemas(&tools);
        let goal = context.render(spec.goal.as_deref().unwrap_or_default()).map_err(fatal)?;
        let mut system = match &spec.system {
            Some(system) => context.render(system).map_err(fatal)?,
            None => DEFAULT_SYSTEM.to_owned(),
        };
        if spec.strategy == Strategy::Plan {
            system = tool_loop::plan::planner_system(&system);
        }
        let seq32 = seq as u32;
        // Read once; every entry appended below is pushed here after it commits.
        let mut journal = self.inner.store.loop_journal(&task.id, seq32).await?;
        loop {
            let spent_in_loop: f64 = journal.iter().map(|entry| entry_cost(spec, entry)).sum();
            let budget = super::executor::task_budget(agent, task);
            let limits = Limits {
                now_ms: self.now(),
                deadline_ms: task.deadline_ms,
                spent_usd: context.spent_usd + spent_in_loop,
                budget_usd: budget,
            };
            let entry = match tool_loop::next(spec, &schemas, &journal, limits) {
                Next::Finish(end) => return self.finish_loop(task, step, &journal, end, record).await,
                Next::CallModel { iteration } => {
                    let invalid_calls = journal
                        .iter()
                        .filter(|e| matches!(e, LoopEntry::Call { outcome: CallOutcome::Invalid { .. }, .. }))
                        .count();
                    let complexity = Complexity { tools: tools.len(), goal_bytes: goal.len(), invalid_calls };
                    let plan = plan_on(spec.planning, !agent.escalate_to.is_empty(), complexity);
                    let turn = AgentTurn {
                        agent: &task.agent,
                        task: &task.id,
                        step,
                        iteration,
                        messages: tool_loop::transcript(&system, &goal, &journal),
                        tools: &tools,
                        plan,
                        max_tokens: spec.max_tokens(),
                        require_call: false,
                        task_spent_usd: context.spent_usd + spent_in_loop,
                        task_budget_usd: budget,
                        classification: context.classification().max(results_classification(spec, &defs, &journal)),
                    };
                    let started = self.inner.options.clock.instant();
                    let call_id = format!("{}:{seq}:{iteration}", task.id);
                    let outcome = match self.inner.tiers.agent_turn(turn, &call_id).await {
                        Ok(outcome) => outcome,
                        Err(TurnError::OverBudget(reason)) => {
                            let detail = format!("turn {iteration}: {reason}");
                            let end = LoopEnd::Limit { limit: Limit::Budget, detail };
                            return self.finish_loop(task, step, &journal, end, record).await;
                        }
                        Err(TurnError::Call(err)) => return Err(self.call_failed(step, err)),
                    };
                    LoopEntry::Model {
                        iteration,
                        tier: outcome.tier,
                        reply: outcome.reply,
                        tokens_in: outcome.tokens_in,
                        tokens_out: outcome.tokens_out,
                        cost_usd: outcome.cost_usd,
                        latency_ms: self.inner.options.clock.instant().saturating_duration_since(started).as_millis()
                            as u64,
                        reason: outcome.reason,
                        needs_review: outcome.needs_review,
                    }
                }
                Next::Reject { iteration, index, name, arguments, problem } => {
                    LoopEntry::Call { iteration, index, name, arguments, outcome: CallOutcome::Invalid { problem } }
                }
                Next::Skip { iteration, index, name, reason } => {
                    let outcome = CallOutcome::Skipped { reason };
                    LoopEntry::Call { iteration, index, name, arguments: Value::Null, outcome }
                }
                Next::Decide { iteration, index, tool, instruction } => {
                    let name = tool.name();
                    let Some(definition) = tools.iter().find(|t| t.name == name) else {
                        return Err(fatal(format!("tool `{name}` has no definition in force")));
                    };
                    let turn = AgentTurn {
                        agent: &task.agent,
                        task: &task.id,
                        step,
                        iteration,
                        messages: tool_loop::plan::conversation(&goal, &journal, &name, &instruction),
                        tools: std::slice::from_ref(definition),
                        plan: PlanOn::Local,
                        max_tokens: spec.max_tokens(),
                        require_call: true,
                        task_spent_usd: context.spent_usd + spent_in_loop,
                        task_budget_usd: budget,
                        classification: None,
                    };
                    let started = self.inner.options.clock.instant();
                    let call_id = format!("{}:{seq}:{iteration}.{index}", task.id);
                    let outcome = match self.inner.tiers.agent_turn(turn, &call_id).await {
                        Ok(outcome) => outcome,
                        Err(TurnError::OverBudget(reason)) => return Err(fatal(reason)),
                        Err(TurnError::Call(err)) => return Err(self.call_failed(step, err)),
                    };
                    // Constrained to the tool's schema, so it parses; a reply
                    // without a call becomes arguments the check refuses.
                    let arguments = outcome
                        .reply
                        .calls
                        .first()
                        .and_then(|call| serde_json::from_str(&call.arguments).ok())
                        .unwrap_or(Value::Null);
                    LoopEntry::Decided {
                        iteration,
                        index,
                        tier: outcome.tier,
                        arguments,
                        tokens_in: outcome.tokens_in,
                        tokens_out: outcome.tokens_out,
                        latency_ms: self.inner.options.clock.instant().saturating_duration_since(started).as_millis()
                            as u64,
                    }
                }
                Next::RunCall { iteration, index, tool: ToolRef::AskHuman, arguments, call_id: _ } => {
                    let key = call_key(&task.id, seq32, iteration, index);
                    let question = arguments["question"].as_str().unwrap_or_default();
                    let asked = self
                        .inner
                        .store
                        .ask(&self.inner.identity, &key, &task.id, &task.agent, question, self.now())
                        .await?;
                    let (Some(answer), by) = (asked.answer, asked.answered_by) else {
                        return Err(Stop::End(RunEnd::Parked {
                            reason: format!("waiting for an answer to: {}", asked.question),
                            until_ms: task.deadline_ms,
                        }));
                    };
                    let outcome = CallOutcome::Done { result: json!({ "answer": answer, "answered_by": by }) };
                    LoopEntry::Call { iteration, index, name: tool_loop::ASK_HUMAN.to_owned(), arguments, outcome }
                }
                Next::RunCall { iteration, index, tool: ToolRef::Handoff { agent: to, .. }, arguments, call_id: _ } => {
                    let handoff = Handoff {
                        task,
                        to: &to,
                        input: arguments["input"].clone(),
                        key: call_key(&task.id, seq32, iteration, index),
                        budget_left: budget.map(|limit| limit - context.spent_usd - spent_in_loop),
                    };
                    let outcome = self.handoff(handoff).await?;
                    let name = spec.tools.iter().find(|t| matches!(t, ToolRef::Handoff { agent, .. } if *agent == to));
                    let name = name.map(ToolRef::name).unwrap_or_default();
                    LoopEntry::Call { iteration, index, name, arguments, outcome }
                }
                Next::RunCall { iteration, index, tool, arguments, call_id: _ }
                    if tool.memory_namespace().is_some() =>
                {
                    let key = call_key(&task.id, seq32, iteration, index);
                    let step_id = format!("{}#{iteration}.{index}", step.id);
                    let call = MemoryCall {
                        task_id: &task.id,
                        agent_name: &task.agent,
                        agent,
                        step_id: &step_id,
                        key: &key,
                        tool: &tool,
                        arguments: &arguments,
                        seen: context.classification().max(results_classification(spec, &defs, &journal)),
                    };
                    let outcome = match run_memory_tool(&self.inner.memory, &call, self.now()).await {
                        Ok(result) => CallOutcome::Done { result },
                        Err(ToolError::Refused(reason)) => CallOutcome::Refused { reason },
                        Err(ToolError::Failed(problem)) => CallOutcome::Failed { problem },
                        Err(ToolError::Db(err)) => return Err(Stop::Db(err)),
                    };
                    LoopEntry::Call { iteration, index, name: tool.name(), arguments, outcome }
                }
                Next::RunCall { iteration, index, tool, arguments, call_id: _ } => {
                    let name = tool.name();
                    let request =
                        call_request(task, step, seq32, context, &journal, (iteration, index), &tool, &arguments)
                            .map_err(fatal)?;
                    let outcome = match self.inner.exec.act(version, &defs, request).await? {
                        ActOutcome::Done(output) => CallOutcome::Done { result: output["result"].clone() },
                        ActOutcome::Refused(reason) => CallOutcome::Refused { reason },
                        ActOutcome::Failed(problem) => CallOutcome::Failed { problem },
                        ActOutcome::Park { reason, until_ms } => {
                            return Err(Stop::End(RunEnd::Parked { reason, until_ms }))
                        }
                        ActOutcome::DeadLettered(problem) => {
                            return Err(Stop::End(RunEnd::DeadLettered(format!(
                                "step `{}`, call {name} of turn {iteration}: {problem}",
                                step.id
                            ))))
                        }
                    };
                    LoopEntry::Call { iteration, index, name, arguments, outcome }
                }
            };
            self.inner
                .store
                .append_loop_entry(&self.inner.identity, &task.id, seq32, entry.clone(), self.now())
                .await?;
            journal.push(entry);
        }
    }

    /// How a failed model call stops the run: a fatal error fails the task,
    /// a tier that is down (or the kill switch at `all`) makes it wait.
    fn call_failed(&self, step: &StepSpec, err: ModelCallError) -> Stop {
        match err {
            ModelCallError::Fatal(problem) => Stop::End(RunEnd::Failed(format!("step `{}`: {problem}", step.id))),
            ModelCallError::Unavailable(reason) => {
                Stop::End(RunEnd::Waiting { reason, until_ms: self.now() + TIER_DOWN_RETRY_MS })
            }
            ModelCallError::Db(err) => Stop::Db(err),
        }
    }

    /// Fills the step's record from its journal; a loop that ended without
    /// an answer is checkpointed, then fails the task with how it ended.
    async fn finish_loop(
        &self,
        task: &TaskRecord,
        step: &StepSpec,
        journal: &[LoopEntry],
        end: LoopEnd,
        record: &mut StepRecord,
    ) -> Result<(), Stop> {
        let mut turns = 0;
        let mut calls = 0;
        for entry in journal {
            match entry {
                LoopEntry::Model { tier, tokens_in, tokens_out, cost_usd, reason, needs_review, .. } => {
                    turns += 1;
                    record.tier = Some(tier.clone());
                    record.reason = Some(reason.clone());
                    record.tokens_in += tokens_in;
                    record.tokens_out += tokens_out;
                    record.cost_usd += cost_usd;
                    record.needs_review |= needs_review;
                }
                LoopEntry::Call { outcome: CallOutcome::Skipped { .. }, .. } => {}
                LoopEntry::Call { .. } => calls += 1,
                LoopEntry::Decided { tokens_in, tokens_out, .. } => {
                    record.tokens_in += tokens_in;
                    record.tokens_out += tokens_out;
                }
            }
        }
        let answer = match &end {
            LoopEnd::Answer { text } => Some(text.trim().to_owned()),
            _ => None,
        };
        record.output = json!({ "end": end, "answer": answer, "turns": turns, "calls": calls });
        record.value = answer.clone();
        if answer.is_some() {
            return Ok(());
        }
        let detail = match &end {
            LoopEnd::Answer { .. } => unreachable!("handled above"),
            LoopEnd::Refusal { reason } => format!("the model refused: {reason}"),
            LoopEnd::Limit { detail, .. } => detail.clone(),
            LoopEnd::Invalid { problem } => problem.clone(),
        };
        record.status = "failed".into();
        record.created_ms = self.now();
        self.inner.store.checkpoint_step(&self.inner.identity, &task.id, record.clone()).await?;
        Err(Stop::End(RunEnd::Failed(format!("step `{}`: {detail}", step.id))))
    }
}

/// The most sensitive classification among the results the loop's calls
/// returned: as their actions declare it, as retrieved items carry it, as a
/// record tool declares it (default `internal`).
fn results_classification(
    spec: &tool_loop::AgentLoopStep,
    defs: &aios_shared::agent::Definitions,
    journal: &[LoopEntry],
) -> Option<Classification> {
    journal
        .iter()
        .filter_map(|entry| match entry {
            LoopEntry::Call { name, outcome: CallOutcome::Done { result }, .. } => match spec.tool(name)? {
                ToolRef::Connector { connector, action, .. } => {
                    defs.connectors.get(connector)?.actions.get(action)?.classification
                }
                ToolRef::Retrieve { .. } => result["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|item| serde_json::from_value::<Classification>(item["classification"].clone()).ok())
                    .max(),
                ToolRef::RecordGet { classification, .. } => Some(classification.unwrap_or(Classification::Internal)),
                ToolRef::AskHuman | ToolRef::Remember { .. } | ToolRef::RecordPut { .. } | ToolRef::Handoff { .. } => {
                    None
                }
            },
            _ => None,
        })
        .max()
}

/// What a turn cost, or a sub-task a handoff ran.
fn entry_cost(spec: &tool_loop::AgentLoopStep, entry: &LoopEntry) -> f64 {
    match entry {
        LoopEntry::Model { cost_usd, .. } => *cost_usd,
        LoopEntry::Call { name, outcome: CallOutcome::Done { result }, .. }
            if matches!(spec.tool(name), Some(ToolRef::Handoff { .. })) =>
        {
            result["cost_usd"].as_f64().unwrap_or(0.0)
        }
        LoopEntry::Call { .. } | LoopEntry::Decided { .. } => 0.0,
    }
}

/// The act request of call `index` of turn `iteration`: the model's
/// arguments as they are, the resource rendered over the task's input and
/// those arguments, the turn's text as the reasoning an approver sees.
#[allow(clippy::too_many_arguments)]
fn call_request(
    task: &TaskRecord,
    step: &StepSpec,
    seq: u32,
    context: &TaskContext,
    journal: &[LoopEntry],
    (iteration, index): (u32, u32),
    tool: &ToolRef,
    arguments: &Value,
) -> Result<ActRequest, String> {
    let ToolRef::Connector { connector, action, resource, .. } = tool else {
        return Err(format!("tool `{}` is not a connector action", tool.name()));
    };
    let scope = json!({ "input": context.input(), "args": arguments });
    let render = |template: &str| aios_shared::agent::render_template(template, &scope);
    let resource = match resource {
        Some(resource) => {
            let mut attrs = serde_json::Map::new();
            for (name, template) in &resource.attrs {
                let text = render(template)?;
                attrs.insert(name.clone(), serde_json::from_str(&text).unwrap_or(Value::String(text)));
            }
            (resource.entity_type.clone(), render(&resource.id)?, Value::Object(attrs))
        }
        None => ("Connector".to_owned(), connector.clone(), json!({})),
    };
    let (tier, said) = journal
        .iter()
        .find_map(|entry| match entry {
            LoopEntry::Model { iteration: i, tier, reply, .. } if *i == iteration => {
                Some((tier.clone(), reply.text.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .unwrap_or_default();
    let mut review = context.review().to_vec();
    for entry in journal {
        if let LoopEntry::Model { iteration, tier, reason, needs_review: true, .. } = entry {
            review.push(format!("turn {iteration} of step `{}` ran on `{tier}`: {reason}", step.id));
        }
    }
    let sources = context.sources();
    let classification = crate::exec::highest_classification(&sources);
    Ok(ActRequest {
        task_id: task.id.clone(),
        agent: task.agent.clone(),
        seq,
        step_id: format!("{}#{iteration}.{index}", step.id),
        connector: connector.clone(),
        action: action.clone(),
        args: ActArgs::Json(arguments.clone()),
        call: Some(call_key(&task.id, seq, iteration, index)),
        resource,
        reasoning: Some(format!(
            "proposed by the model on `{tier}` as call {index} of turn {iteration}{}",
            if said.trim().is_empty() { String::new() } else { format!(": {}", said.trim()) }
        )),
        sources,
        classification,
        review,
    })
}
