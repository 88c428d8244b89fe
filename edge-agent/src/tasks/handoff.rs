//! The `handoff` tool of an agent step's loop: another agent does the work
//! as a sub-task of this one, with the model's input, no more budget than
//! the caller has left and no later deadline than the caller's. The caller
//! parks until the sub-task ends (its end wakes the caller, and the caller
//! looks again every few seconds in case it ended before the caller
//! parked); the sub-task's output, or why it failed, is the call's result.
//!
//! The sub-task's idempotency key derives from the call's place in the
//! loop, so a caller resumed after a crash finds the sub-task it started
//! instead of starting another.

use aios_shared::agent::tool_loop::CallOutcome;
use serde_json::{json, Value};

use super::journal::{NewTask, SubmitError};
use super::scheduler::{Runtime, Stop};
use crate::tasks::{RunEnd, TaskRecord, TaskState};

/// Most sub-tasks nested under one task (a hands to b hands to c ...).
pub const MAX_HANDOFF_DEPTH: usize = 3;

/// How often a parked caller looks at its sub-task, at most.
const RECHECK_MS: i64 = 5_000;

/// One handoff call.
pub(super) struct Handoff<'a> {
    /// The calling task.
    pub task: &'a TaskRecord,
    /// The agent that does the work.
    pub to: &'a str,
    /// The sub-task's input, as the model wrote it.
    pub input: Value,
    /// The call's key (task, step, turn, call).
    pub key: String,
    /// What the caller may still spend; `None`: no limit.
    pub budget_left: Option<f64>,
}

impl Runtime {
    /// Starts the sub-task (once) and returns its outcome once it ended;
    /// until then the caller parks.
    pub(super) async fn handoff(&self, call: Handoff<'_>) -> Result<CallOutcome, Stop> {
        let refused = |reason: String| Ok(CallOutcome::Refused { reason });
        let mut depth = 0;
        let mut above = call.task.parent.clone();
        while let Some(parent) = above {
            depth += 1;
            if depth >= MAX_HANDOFF_DEPTH {
                return refused(format!("sub-tasks nest at most {MAX_HANDOFF_DEPTH} deep"));
            }
            above = self.inner.store.task(&parent).await?.and_then(|task| task.parent);
        }
        if call.budget_left.is_some_and(|left| left <= 0.0) {
            return refused("the task has no budget left to hand work on".to_owned());
        }
        let defs = self.definitions().await?.map(|(_, defs)| defs);
        let Some(spec) = defs.as_ref().and_then(|defs| defs.agents.get(call.to)) else {
            return Ok(CallOutcome::Failed { problem: format!("agent `{}` is not defined", call.to) });
        };
        let now = self.now();
        let new = NewTask {
            agent: call.to.to_owned(),
            agent_version: spec.version,
            kind: None,
            input: call.input,
            idempotency_key: Some(format!("handoff:{}", call.key)),
            source: format!("handoff:{}", call.task.id),
            deadline_ms: now.saturating_add(spec.deadline_ms()).min(call.task.deadline_ms),
            parent: Some(call.task.id.clone()),
            budget_usd: call.budget_left,
        };
        let (child, started) = match self.inner.store.submit_task(&self.inner.identity, new, now).await {
            Ok(submitted) => submitted,
            Err(SubmitError::Db(err)) => return Err(Stop::Db(err)),
            Err(other) => return Ok(CallOutcome::Failed { problem: other.to_string() }),
        };
        if started {
            self.wake();
        }
        let ended = |what: &str| {
            let error = child.error.clone().unwrap_or_default();
            Ok(CallOutcome::Failed { problem: format!("sub-task {} of agent `{}` {what}: {error}", child.id, call.to) })
        };
        match child.state {
            TaskState::Succeeded => Ok(CallOutcome::Done {
                result: json!({
                    "task": child.id,
                    "agent": call.to,
                    "output": child.output,
                    "cost_usd": child.cost_usd,
                    "needs_review": child.needs_review,
                }),
            }),
            TaskState::Failed => ended("failed"),
            TaskState::DeadLettered => ended("was dead-lettered"),
            TaskState::Cancelled => ended("was cancelled"),
            TaskState::Queued | TaskState::Running | TaskState::Waiting => Err(Stop::End(RunEnd::Parked {
                reason: format!("waiting for sub-task {} of agent `{}`", child.id, call.to),
                until_ms: now.saturating_add(RECHECK_MS).min(call.task.deadline_ms),
            })),
        }
    }
}
