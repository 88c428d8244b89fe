//! Durable tasks in the edge's SQLite database: the journal the runtime
//! resumes from.
//!
//! A task is inserted, with its `task.queued` audit event, in one transaction
//! before the submitter hears back. Each step's result is inserted in the
//! same transaction that advances the task's cursor and appends the
//! `task.step` event, so after a crash a task resumes at the first step
//! without a recorded result and reuses the recorded results of the others
//! (the journal of Temporal's activities). Every state transition is an
//! audit event written in the transaction that makes it.
//!
//! States: `queued` → `running` → `succeeded` | `failed`, with `waiting`
//! (a tier is down, or an approval is pending) between runs, `cancelled` at
//! any point, and `dead_lettered` for a task started `max_attempts` times
//! without finishing (a crash loop, a poison input).

use aios_shared::audit::kinds;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::store::{append_event, EdgeStore};
use crate::sync::identity::Identity;
use aios_daemon::db::DbError;

pub use aios_shared::lifecycle::task::{TaskEvent, TaskState};

/// A stored task state.
fn parse_state(text: &str) -> Result<TaskState, DbError> {
    text.parse().map_err(|err: aios_shared::lifecycle::UnknownState| DbError::Corrupt(err.to_string()))
}

/// The state after `event` from `from`, for a change made to every task in
/// one state at once.
pub(crate) fn next(from: TaskState, event: TaskEvent) -> Result<TaskState, DbError> {
    from.transition(event).map_err(|err| DbError::Corrupt(err.to_string()))
}

/// The state `task` goes to on `event`; an event the lifecycle does not
/// allow from its state rolls the transaction back.
fn next_state(task: &TaskRecord, event: TaskEvent) -> Result<TaskState, DbError> {
    task.state.transition(event).map_err(|err| DbError::Corrupt(format!("task {}: {err}", task.id)))
}

/// A submission.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The agent to run.
    pub agent: String,
    /// The agent's version when submitted.
    pub agent_version: u32,
    /// The task kind, if the submitter named one.
    pub kind: Option<String>,
    /// The input, a JSON document.
    pub input: serde_json::Value,
    /// Repeating a submission with the same key returns the same task.
    pub idempotency_key: Option<String>,
    /// Who submitted it: `api`, `cli`, `control-plane`.
    pub source: String,
    /// When it must be finished (ms since the epoch).
    pub deadline_ms: i64,
    /// The task that handed this one its work, if one did.
    pub parent: Option<String>,
    /// The most it may spend, when less than its agent's budget allows.
    pub budget_usd: Option<f64>,
}

/// One step's recorded result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the agent's steps.
    pub seq: u32,
    /// The step's id.
    pub step_id: String,
    /// The step's kind.
    pub kind: String,
    /// `done` or `skipped`.
    pub status: String,
    /// What the step produced.
    pub output: serde_json::Value,
    /// The value later conditions compare (a label, a text, passed/failed).
    pub value: Option<String>,
    /// The tier that ran it.
    pub tier: Option<String>,
    /// Why that tier.
    pub reason: Option<String>,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// US dollars.
    pub cost_usd: f64,
    /// Wall time of the step.
    pub latency_ms: u64,
    /// The model's confidence (classify).
    pub confidence: Option<f64>,
    /// Whether a human should review the result (a fallback was used).
    pub needs_review: bool,
    /// Identifies the model call that produced the result.
    pub call_id: Option<String>,
    /// When it was recorded.
    pub created_ms: i64,
}

/// A task as stored, with its steps when asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// The agent's version.
    pub agent_version: u32,
    /// The task kind.
    pub kind: Option<String>,
    /// The input.
    pub input: serde_json::Value,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// Who submitted it.
    pub source: String,
    /// Where it is.
    pub state: TaskState,
    /// The first step without a recorded result.
    pub next_step: u32,
    /// How many times a runner has started it.
    pub starts: u32,
    /// Submission time.
    pub created_ms: i64,
    /// Last transition.
    pub updated_ms: i64,
    /// When it must be finished.
    pub deadline_ms: i64,
    /// Why it waits.
    pub wait_reason: Option<String>,
    /// The result of a succeeded task.
    pub output: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether a human should review the result.
    pub needs_review: bool,
    /// Whether a cancellation was asked for.
    pub cancel_requested: bool,
    /// Dollars spent on escalated calls.
    pub cost_usd: f64,
    /// The task that handed this one its work, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The most it may spend, when less than its agent's budget allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The recorded steps, in order (empty in listings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

/// Filters for listing tasks.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only this agent's tasks.
    pub agent: Option<String>,
    /// Most tasks returned, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The key was used for a different submission.
    #[error("idempotency key {key:?} was already used for task {existing} with a different agent or input")]
    KeyReused {
        /// The key.
        key: String,
        /// The task it belongs to.
        existing: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How a run of a task ends.
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// Every step ran.
    Succeeded {
        /// The task's result.
        output: serde_json::Value,
        /// Whether a step fell back and needs a human look.
        needs_review: bool,
    },
    /// It cannot succeed.
    Failed(String),
    /// It must wait and run again at `until_ms`.
    Waiting {
        /// Why.
        reason: String,
        /// When to try again.
        until_ms: i64,
    },
    /// It waits for something outside (an approval, a connector's breaker)
    /// until `until_ms` or an earlier wake-up; unlike `Waiting`, the run does
    /// not count as an attempt, since nothing went wrong.
    Parked {
        /// Why.
        reason: String,
        /// When to look again at the latest.
        until_ms: i64,
    },
    /// A side effect landed in the dead-letter queue; an operator decides.
    DeadLettered(String),
    /// A cancellation was honoured.
    Cancelled,
    /// Stop without a transition (shutdown): the task is queued again.
    Released,
}

/// A new task id: time-ordered, unique.
pub fn new_task_id(now_ms: i64) -> String {
    format!("t{:011x}{:08x}", now_ms.max(0), rand::random::<u32>())
}

/// The UTC day number of `ms`.
pub fn utc_day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

impl EdgeStore {
    /// Persists a task and its `task.queued` event; with an idempotency key
    /// already used for the same agent and input, returns that task instead.
    /// The bool says whether the task is new.
    pub async fn submit_task(
        &self,
        identity: &Identity,
        task: NewTask,
        now_ms: i64,
    ) -> Result<(TaskRecord, bool), SubmitError> {
        let identity = identity.clone();
        let outcome = self
            .db
            .write(move |conn| {
                if let Some(key) = &task.idempotency_key {
                    let existing: Option<String> = conn
                        .query_row("SELECT id FROM tasks WHERE idempotency_key = ?1", [key], |r| r.get(0))
                        .optional()?;
                    if let Some(id) = existing {
                        let record = read_task(conn, &id, false)?.expect("row just found");
                        if record.agent != task.agent || record.input != task.input {
                            return Ok(Err(SubmitError::KeyReused { key: key.clone(), existing: id }));
                        }
                        return Ok(Ok((record, false)));
                    }
                }
                let id = new_task_id(now_ms);
                conn.execute(
                    "INSERT INTO tasks (id, agent, agent_version, kind, input, idempotency_key, source, state,
                        created_ms, updated_ms, deadline_ms, parent_task, budget_usd)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8, ?9, ?10, ?11)",
                    params![
                        id,
                        task.agent,
                        task.agent_version,
                        task.kind,
                        task.input.to_string(),
                        task.idempotency_key,
                        task.source,
                        now_ms,
                        task.deadline_ms,
                        task.parent,
                        task.budget_usd
                    ],
                )?;
                let payload = serde_json::json!({
                    "task": id,
                    "agent": task.agent,
                    "agent_version": task.agent_version,
                    "kind": task.kind,
                    "source": task.source,
                    "idempotency_key": task.idempotency_key,
                    "deadline_ms": task.deadline_ms,
                    "parent": task.parent,
                    "budget_usd": task.budget_usd,
                });
                append_event(conn, &identity, now_ms, kinds::TASK_QUEUED, &payload.to_string())?;
                Ok(Ok((read_task(conn, &id, false)?.expect("row just inserted"), true)))
            })
            .await?;
        outcome
    }

    /// Puts back tasks a previous process left running (it crashed or was
    /// killed); they resume from their last checkpoint. Returns how many.
    pub async fn requeue_interrupted(&self, now_ms: i64) -> Result<usize, DbError> {
        self.db
            .write(move |conn| {
                let (from, to) = (TaskState::Running, next(TaskState::Running, TaskEvent::Requeue)?);
                Ok(conn.execute(
                    "UPDATE tasks SET state = ?2, updated_ms = ?1 WHERE state = ?3",
                    params![now_ms, to.as_str(), from.as_str()],
                )?)
            })
            .await
    }

    /// Tasks ready to run at `now_ms`, oldest first: `(id, agent)`.
    pub async fn due_tasks(&self, now_ms: i64, limit: usize) -> Result<Vec<(String, String)>, DbError> {
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, agent FROM tasks WHERE state IN ('queued', 'waiting') AND not_before_ms <= ?1
                     ORDER BY created_ms, id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// The earliest time a waiting task becomes due, if any.
    pub async fn next_wake_ms(&self) -> Result<Option<i64>, DbError> {
        self.db
            .read(|conn| {
                Ok(conn.query_row(
                    "SELECT MIN(not_before_ms) FROM tasks WHERE state IN ('queued', 'waiting')",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// Takes a due task for a runner: `running`, one more start, and the
    /// `task.running` event. A task past its deadline fails instead, and one
    /// started `max_attempts` times is dead-lettered; both return `None`, as
    /// does a task someone else took or cancelled.
    pub async fn claim_task(
        &self,
        identity: &Identity,
        id: &str,
        max_attempts: u32,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, DbError> {
        let identity = identity.clone();
        let id = id.to_owned();
        self.db
            .write(move |conn| {
                let Some(task) = read_task(conn, &id, true)? else { return Ok(None) };
                if !matches!(task.state, TaskState::Queued | TaskState::Waiting) || task.not_before(conn)? > now_ms {
                    return Ok(None);
                }
                if task.cancel_requested {
                    transition(conn, &identity, &task, TaskEvent::Cancel, now_ms, serde_json::json!({}))?;
                    return Ok(None);
                }
                if now_ms > task.deadline_ms {
                    let error = "deadline exceeded before the task could run".to_owned();
                    fail(conn, &identity, &task, TaskEvent::Fail, &error, now_ms)?;
                    return Ok(None);
                }
                if task.starts >= max_attempts {
                    let error = format!("started {} times without finishing; set aside for an operator", task.starts);
                    fail(conn, &identity, &task, TaskEvent::GiveUp, &error, now_ms)?;
                    return Ok(None);
                }
                let running = next_state(&task, TaskEvent::Claim)?;
                conn.execute(
                    "UPDATE tasks SET state = ?3, starts = starts + 1, wait_reason = NULL, updated_ms = ?2
                     WHERE id = ?1",
                    params![id, now_ms, running.as_str()],
                )?;
                let payload = serde_json::json!({
                    "task": id,
                    "agent": task.agent,
                    "start": task.starts + 1,
                    "resume_at_step": task.next_step,
                });
                append_event(conn, &identity, now_ms, kinds::TASK_RUNNING, &payload.to_string())?;
                read_task(conn, &id, true)
            })
            .await
    }

    /// Records a step's result and advances the task past it, with the
    /// `task.step` event, in one transaction. Refuses a result for any step
    /// but the task's next one, so a result is never recorded twice.
    pub async fn checkpoint_step(&self, identity: &Identity, task_id: &str, step: StepRecord) -> Result<(), DbError> {
        let identity = identity.clone();
        let task_id = task_id.to_owned();
        self.db
            .write(move |conn| {
                let (state, next): (String, u32) = conn
                    .query_row("SELECT state, next_step FROM tasks WHERE id = ?1", [&task_id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?
                    .ok_or_else(|| DbError::Corrupt(format!("no task {task_id}")))?;
                if state != "running" || next != step.seq {
                    return Err(DbError::Corrupt(format!(
                        "task {task_id} is {state} at step {next}; refusing a result for step {}",
                        step.seq
                    )));
                }
                conn.execute(
                    "INSERT INTO task_steps (task_id, seq, step_id, kind, status, output, value, tier, reason,
                        tokens_in, tokens_out, cost_usd, latency_ms, confidence, needs_review, call_id, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                    params![
                        task_id,
                        step.seq,
                        step.step_id,
                        step.kind,
                        step.status,
                        step.output.to_string(),
                        step.value,
                        step.tier,
                        step.reason,
                        step.tokens_in as i64,
                        step.tokens_out as i64,
                        step.cost_usd,
                        step.latency_ms as i64,
                        step.confidence,
                        step.needs_review,
                        step.call_id,
                        step.created_ms
                    ],
                )?;
                conn.execute(
                    "UPDATE tasks SET next_step = ?2, cost_usd = cost_usd + ?3, updated_ms = ?4,
                        needs_review = needs_review OR ?5 WHERE id = ?1",
                    params![task_id, step.seq + 1, step.cost_usd, step.created_ms, step.needs_review],
                )?;
                let payload = serde_json::json!({
                    "task": task_id,
                    "step": step.step_id,
                    "seq": step.seq,
                    "kind": step.kind,
                    "status": step.status,
                    "tier": step.tier,
                    "reason": step.reason,
                    "tokens_in": step.tokens_in,
                    "tokens_out": step.tokens_out,
                    "cost_usd": step.cost_usd,
                    "latency_ms": step.latency_ms,
                    "confidence": step.confidence,
                    "value": step.value,
                    "validation": step.output.get("failures").map(|_| &step.output),
                    "needs_review": step.needs_review,
                });
                append_event(conn, &identity, step.created_ms, kinds::TASK_STEP, &payload.to_string())?;
                Ok(())
            })
            .await
    }

    /// Ends a run of a task as `end` says, with its audit event.
    pub async fn end_run(&self, identity: &Identity, task_id: &str, end: RunEnd, now_ms: i64) -> Result<(), DbError> {
        let identity = identity.clone();
        let task_id = task_id.to_owned();
        self.db
            .write(move |conn| {
                let Some(task) = read_task(conn, &task_id, false)? else {
                    return Err(DbError::Corrupt(format!("no task {task_id}")));
                };
                if task.state != TaskState::Running {
                    return Ok(());
                }
                let parked = matches!(end, RunEnd::Parked { .. });
                match end {
                    RunEnd::Succeeded { output, needs_review } => {
                        let succeeded = next_state(&task, TaskEvent::Finish)?;
                        conn.execute(
                            "UPDATE tasks SET state = ?5, output = ?2, updated_ms = ?3,
                                needs_review = needs_review OR ?4 WHERE id = ?1",
                            params![task_id, output.to_string(), now_ms, needs_review, succeeded.as_str()],
                        )?;
                        let payload = serde_json::json!({
                            "task": task_id,
                            "agent": task.agent,
                            "cost_usd": task.cost_usd,
                            "needs_review": needs_review || task.needs_review,
                            "latency_ms": now_ms - task.created_ms,
                            "output": output,
                        });
                        append_event(conn, &identity, now_ms, kinds::TASK_SUCCEEDED, &payload.to_string())?;
                    }
                    RunEnd::Failed(error) => fail(conn, &identity, &task, TaskEvent::Fail, &error, now_ms)?,
                    RunEnd::DeadLettered(error) => fail(conn, &identity, &task, TaskEvent::GiveUp, &error, now_ms)?,
                    RunEnd::Waiting { reason, until_ms } | RunEnd::Parked { reason, until_ms } => {
                        let waiting = next_state(&task, TaskEvent::Park)?;
                        conn.execute(
                            "UPDATE tasks SET state = ?6, wait_reason = ?2, not_before_ms = ?3, updated_ms = ?4,
                                starts = CASE WHEN ?5 THEN MAX(starts - 1, 0) ELSE starts END
                             WHERE id = ?1",
                            params![task_id, reason, until_ms, now_ms, parked, waiting.as_str()],
                        )?;
                        let payload = serde_json::json!({ "task": task_id, "reason": reason, "until_ms": until_ms });
                        append_event(conn, &identity, now_ms, kinds::TASK_WAITING, &payload.to_string())?;
                    }
                    RunEnd::Cancelled => {
                        transition(conn, &identity, &task, TaskEvent::Cancel, now_ms, serde_json::json!({}))?
                    }
                    RunEnd::Released => {
                        let queued = next_state(&task, TaskEvent::Requeue)?;
                        conn.execute(
                            "UPDATE tasks SET state = ?3, updated_ms = ?2 WHERE id = ?1",
                            params![task_id, now_ms, queued.as_str()],
                        )?;
                    }
                }
                wake_parent(conn, &task_id, now_ms)?;
                Ok(())
            })
            .await
    }

    /// Cancels a task: at once when it is not running, at its next step
    /// boundary when it is. Returns the task as it stands, or `None`.
    pub async fn cancel_task(&self, identity: &Identity, id: &str, now_ms: i64) -> Result<Option<TaskRecord>, DbError> {
        let identity = identity.clone();
        let id = id.to_owned();
        self.db
            .write(move |conn| {
                let Some(task) = read_task(conn, &id, false)? else { return Ok(None) };
                match task.state {
                    TaskState::Queued | TaskState::Waiting => {
                        let reason = serde_json::json!({ "requested_in_state": task.state });
                        transition(conn, &identity, &task, TaskEvent::Cancel, now_ms, reason)?;
                        wake_parent(conn, &id, now_ms)?;
                    }
                    TaskState::Running => {
                        conn.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?1", [&id])?;
                    }
                    _ => {}
                }
                read_task(conn, &id, true)
            })
            .await
    }

    /// Whether a cancellation was asked for.
    pub async fn cancel_requested(&self, id: &str) -> Result<bool, DbError> {
        let id = id.to_owned();
        self.db
            .read(move |conn| {
                Ok(conn
                    .query_row("SELECT cancel_requested FROM tasks WHERE id = ?1", [&id], |r| r.get(0))
                    .optional()?
                    .unwrap_or(false))
            })
            .await
    }

    /// One task with its steps.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        let id = id.to_owned();
        self.db.read(move |conn| read_task(conn, &id, true)).await
    }

    /// Tasks matching `filter`, newest first, without steps.
    pub async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRecord>, DbError> {
        self.db
            .read(move |conn| {
                let limit = filter.limit.unwrap_or(100).min(1000) as i64;
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR agent = ?2)
                     ORDER BY created_ms DESC, id DESC LIMIT ?3"
                ))?;
                let rows =
                    stmt.query_map(params![filter.state.map(TaskState::as_str), filter.agent, limit], task_from_row)?;
                rows.map(|row| row?).collect()
            })
            .await
    }

    /// Counts of tasks by state.
    pub async fn task_counts(&self) -> Result<Vec<(String, u64)>, DbError> {
        self.db
            .read(|conn| {
                let mut stmt =
                    conn.prepare_cached("SELECT state, COUNT(*) FROM tasks GROUP BY state ORDER BY state")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// What `agent` has spent on `day` (see [`utc_day`]).
    pub async fn agent_spend(&self, agent: &str, day: i64) -> Result<f64, DbError> {
        let agent = agent.to_owned();
        self.db
            .read(move |conn| {
                Ok(conn
                    .query_row("SELECT usd FROM agent_spend WHERE agent = ?1 AND day = ?2", params![agent, day], |r| {
                        r.get(0)
                    })
                    .optional()?
                    .unwrap_or(0.0))
            })
            .await
    }

    /// Adds to what `agent` spent on `day`.
    pub async fn add_agent_spend(&self, agent: &str, day: i64, usd: f64) -> Result<(), DbError> {
        let agent = agent.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO agent_spend VALUES (?1, ?2, ?3)
                     ON CONFLICT (agent, day) DO UPDATE SET usd = usd + excluded.usd",
                    params![agent, day, usd],
                )?;
                Ok(())
            })
            .await
    }
}

const TASK_COLUMNS: &str = "id, agent, agent_version, kind, input, idempotency_key, source, state, next_step, starts,
    created_ms, updated_ms, deadline_ms, wait_reason, output, error, needs_review, cancel_requested, cost_usd,
    parent_task, budget_usd";

/// Makes the task that handed `task_id` its work due, if it waits: a
/// sub-task that ended (or parked) is news for its caller.
fn wake_parent(conn: &Connection, task_id: &str, now_ms: i64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE tasks SET not_before_ms = ?2
         WHERE id = (SELECT parent_task FROM tasks WHERE id = ?1) AND state = 'waiting'",
        params![task_id, now_ms],
    )?;
    Ok(())
}

impl TaskRecord {
    fn not_before(&self, conn: &Connection) -> Result<i64, DbError> {
        Ok(conn.query_row("SELECT not_before_ms FROM tasks WHERE id = ?1", [&self.id], |r| r.get(0))?)
    }
}

fn json_column(text: &str, what: &str) -> Result<serde_json::Value, DbError> {
    serde_json::from_str(text).map_err(|err| DbError::Corrupt(format!("{what} is not JSON: {err}")))
}

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<Result<TaskRecord, DbError>> {
    let input: String = r.get(4)?;
    let state: String = r.get(7)?;
    let output: Option<String> = r.get(14)?;
    let build = || -> Result<TaskRecord, DbError> {
        Ok(TaskRecord {
            id: r.get(0)?,
            agent: r.get(1)?,
            agent_version: r.get(2)?,
            kind: r.get(3)?,
            input: json_column(&input, "task input")?,
            idempotency_key: r.get(5)?,
            source: r.get(6)?,
            state: parse_state(&state)?,
            next_step: r.get(8)?,
            starts: r.get(9)?,
            created_ms: r.get(10)?,
            updated_ms: r.get(11)?,
            deadline_ms: r.get(12)?,
            wait_reason: r.get(13)?,
            output: output.as_deref().map(|o| json_column(o, "task output")).transpose()?,
            error: r.get(15)?,
            needs_review: r.get(16)?,
            cancel_requested: r.get(17)?,
            cost_usd: r.get(18)?,
            parent: r.get(19)?,
            budget_usd: r.get(20)?,
            steps: Vec::new(),
        })
    };
    Ok(build())
}

fn read_task(conn: &Connection, id: &str, with_steps: bool) -> Result<Option<TaskRecord>, DbError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let Some(task) = stmt.query_row([id], task_from_row).optional()? else { return Ok(None) };
    let mut task = task?;
    if with_steps {
        task.steps = read_steps(conn, id)?;
    }
    Ok(Some(task))
}

fn read_steps(conn: &Connection, id: &str) -> Result<Vec<StepRecord>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, step_id, kind, status, output, value, tier, reason, tokens_in, tokens_out, cost_usd, latency_ms,
            confidence, needs_review, call_id, created_ms FROM task_steps WHERE task_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([id], |r| {
        let output: String = r.get(4)?;
        Ok((
            output,
            StepRecord {
                seq: r.get(0)?,
                step_id: r.get(1)?,
                kind: r.get(2)?,
                status: r.get(3)?,
                output: serde_json::Value::Null,
                value: r.get(5)?,
                tier: r.get(6)?,
                reason: r.get(7)?,
                tokens_in: r.get::<_, i64>(8)? as u64,
                tokens_out: r.get::<_, i64>(9)? as u64,
                cost_usd: r.get(10)?,
                latency_ms: r.get::<_, i64>(11)? as u64,
                confidence: r.get(12)?,
                needs_review: r.get(13)?,
                call_id: r.get(14)?,
                created_ms: r.get(15)?,
            },
        ))
    })?;
    let mut steps = Vec::new();
    for row in rows {
        let (output, mut step) = row?;
        step.output = json_column(&output, "step output")?;
        steps.push(step);
    }
    Ok(steps)
}

fn transition(
    conn: &Connection,
    identity: &Identity,
    task: &TaskRecord,
    event: TaskEvent,
    now_ms: i64,
    mut details: serde_json::Value,
) -> Result<(), DbError> {
    let to = next_state(task, event)?;
    conn.execute("UPDATE tasks SET state = ?2, updated_ms = ?3 WHERE id = ?1", params![task.id, to.as_str(), now_ms])?;
    let kind = match to {
        TaskState::Cancelled => kinds::TASK_CANCELLED,
        TaskState::Failed => kinds::TASK_FAILED,
        TaskState::DeadLettered => kinds::TASK_DEAD_LETTERED,
        other => return Err(DbError::Corrupt(format!("no event for a transition to {other}"))),
    };
    if let Some(object) = details.as_object_mut() {
        object.insert("task".into(), task.id.clone().into());
        object.insert("agent".into(), task.agent.clone().into());
        object.insert("from".into(), task.state.as_str().into());
    }
    append_event(conn, identity, now_ms, kind, &details.to_string())?;
    Ok(())
}

fn fail(
    conn: &Connection,
    identity: &Identity,
    task: &TaskRecord,
    event: TaskEvent,
    error: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    conn.execute("UPDATE tasks SET error = ?2 WHERE id = ?1", params![task.id, error])?;
    transition(conn, identity, task, event, now_ms, serde_json::json!({ "error": error }))
}

#[cfg(test)]
mod tests;
