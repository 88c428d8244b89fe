//! The outbox: intents, approvals and applied commands in the edge's SQLite
//! database. Every state change of an intent is written in the transaction
//! that appends its audit event.
//!
//! The states and every change between them are
//! `aios_shared::lifecycle::{intent, approval}`: each write here asks the
//! lifecycle for the next state in the transaction that records it.

use aios_shared::audit::kinds;
use aios_shared::command::{Command, CommandBody};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{json, Value};

use crate::store::{append_event, EdgeStore};
use crate::sync::identity::Identity;
use crate::tasks::{TaskEvent, TaskState};
use aios_daemon::db::DbError;
pub use aios_shared::lifecycle::approval::{ApprovalEvent, ApprovalState};
pub use aios_shared::lifecycle::intent::{IntentEvent, IntentState, Verdict};

/// An intended side effect as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intent {
    /// Idempotency key: derived from task, step and arguments.
    pub key: String,
    /// The task that declared it.
    pub task_id: String,
    /// The act step's position.
    pub step_seq: u32,
    /// The act step's id.
    pub step_id: String,
    /// The agent.
    pub agent: String,
    /// The connector.
    pub connector: String,
    /// The connector definition's version.
    pub connector_version: u32,
    /// The action.
    pub action: String,
    /// The typed arguments.
    pub args: Value,
    /// SHA-256 of the canonical arguments; approvals are bound to it.
    pub args_hash: String,
    /// What it touches, as the policy saw it.
    pub resource: Value,
    /// Where it is.
    pub state: IntentState,
    /// The policy decision that admitted or stopped it.
    pub decision: Value,
    /// The approval request, when one was needed.
    pub approval_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Every failed attempt: `{attempt, error, at_ms}`.
    pub errors: Vec<Value>,
    /// The connector's mapped result, once done.
    pub result: Option<Value>,
    /// The intent this one undoes.
    pub compensates: Option<String>,
    /// When it was declared.
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
}

/// An intent about to be declared.
#[derive(Debug, Clone)]
pub struct NewIntent {
    /// See [`Intent`].
    pub intent: Intent,
    /// The approval request to open with it, when the policy asks for one.
    pub approval: Option<ApprovalRequest>,
    /// The audit payload of the policy decision.
    pub decision_event: Value,
}

/// An approval request as the operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRequest {
    /// Its id.
    pub id: String,
    /// Everything the approver needs: what, why, the exact arguments, the
    /// agent's reasoning and sources.
    pub request: Value,
    /// When it lapses unanswered.
    pub expires_ms: i64,
}

/// An approval as the edge holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    /// Its id.
    pub id: String,
    /// The intent it is for.
    pub intent_key: String,
    /// The task.
    pub task_id: String,
    /// The arguments it is bound to.
    pub args_hash: String,
    /// What was asked.
    pub request: Value,
    /// Where it is.
    pub state: ApprovalState,
    /// When it was asked.
    pub requested_ms: i64,
    /// When the request lapses.
    pub expires_ms: i64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Their comment.
    pub comment: Option<String>,
    /// When an approval must be used by.
    pub use_by_ms: Option<i64>,
}

/// How an attempt ended, to record.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// It took effect.
    Done(Value),
    /// It failed; retry (or dead-letter when `dead`). `unknown` marks a lost
    /// outcome.
    Failed {
        /// What went wrong.
        error: String,
        /// Whether the outcome is unknown rather than a clean failure.
        unknown: bool,
        /// Whether this was the last attempt.
        dead: bool,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Applied now (or already, for a repeat): nothing more to do.
    Done,
    /// Run this compensation.
    Compensate {
        /// The task.
        task: String,
        /// The act step's id.
        step: String,
        /// Who asked.
        by: String,
    },
    /// Refused, with the reason (also in the audit log).
    Refused(String),
}

const INTENT_COLUMNS: &str = "key, task_id, step_seq, step_id, agent, connector, connector_version, action, args,
    args_hash, resource, state, decision, approval_id, attempts, errors, result, compensates, created_ms, updated_ms";

fn intent_from_row(row: &Row<'_>) -> rusqlite::Result<Intent> {
    let json = |idx: usize| -> rusqlite::Result<Value> {
        let text: String = row.get(idx)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    Ok(Intent {
        key: row.get(0)?,
        task_id: row.get(1)?,
        step_seq: row.get(2)?,
        step_id: row.get(3)?,
        agent: row.get(4)?,
        connector: row.get(5)?,
        connector_version: row.get(6)?,
        action: row.get(7)?,
        args: json(8)?,
        args_hash: row.get(9)?,
        resource: json(10)?,
        state: parse_state(row, 11)?,
        decision: json(12)?,
        approval_id: row.get(13)?,
        attempts: row.get(14)?,
        errors: serde_json::from_str(&row.get::<_, String>(15)?).unwrap_or_default(),
        result: row.get::<_, Option<String>>(16)?.and_then(|t| serde_json::from_str(&t).ok()),
        compensates: row.get(17)?,
        created_ms: row.get(18)?,
        updated_ms: row.get(19)?,
    })
}

fn read_intent(conn: &Connection, key: &str) -> Result<Option<Intent>, DbError> {
    let sql = format!("SELECT {INTENT_COLUMNS} FROM intents WHERE key = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([key], intent_from_row).optional()?)
}

const APPROVAL_COLUMNS: &str =
    "id, intent_key, task_id, args_hash, request, state, requested_ms, expires_ms, decided_by, comment, use_by_ms";

fn approval_from_row(row: &Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        id: row.get(0)?,
        intent_key: row.get(1)?,
        task_id: row.get(2)?,
        args_hash: row.get(3)?,
        request: serde_json::from_str(&row.get::<_, String>(4)?).unwrap_or(Value::Null),
        state: parse_state(row, 5)?,
        requested_ms: row.get(6)?,
        expires_ms: row.get(7)?,
        decided_by: row.get(8)?,
        comment: row.get(9)?,
        use_by_ms: row.get(10)?,
    })
}

fn read_approval(conn: &Connection, id: &str) -> Result<Option<Approval>, DbError> {
    let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], approval_from_row).optional()?)
}

/// A state column, parsed.
fn parse_state<T>(row: &Row<'_>, column: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = aios_shared::lifecycle::UnknownState>,
{
    let text: String = row.get(column)?;
    text.parse()
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(err)))
}

fn lifecycle_error(err: aios_shared::lifecycle::TransitionError) -> DbError {
    DbError::Corrupt(err.to_string())
}

/// Moves intent `key` on `event`, as its lifecycle says; returns the new state.
fn advance_intent(conn: &Connection, key: &str, event: IntentEvent, now_ms: i64) -> Result<IntentState, DbError> {
    let from: IntentState = conn
        .query_row("SELECT state FROM intents WHERE key = ?1", [key], |r| parse_state(r, 0))
        .optional()?
        .ok_or_else(|| DbError::Corrupt(format!("no intent {key}")))?;
    let to = from.transition(event).map_err(lifecycle_error)?;
    conn.execute("UPDATE intents SET state = ?2, updated_ms = ?3 WHERE key = ?1", params![key, to.as_str(), now_ms])?;
    Ok(to)
}

/// Moves `approval` on `event`, as its lifecycle says; returns the new state.
fn advance_approval(conn: &Connection, approval: &Approval, event: ApprovalEvent) -> Result<ApprovalState, DbError> {
    let to = approval.state.transition(event).map_err(lifecycle_error)?;
    conn.execute("UPDATE approvals SET state = ?2 WHERE id = ?1", params![approval.id, to.as_str()])?;
    Ok(to)
}

/// Makes a waiting task due now, so the dispatcher picks it up.
fn wake_task(conn: &Connection, task_id: &str, now_ms: i64) -> Result<(), DbError> {
    conn.execute("UPDATE tasks SET not_before_ms = ?2 WHERE id = ?1 AND state = 'waiting'", params![task_id, now_ms])?;
    Ok(())
}

impl EdgeStore {
    /// Writes a new intent with its `intent.declared` and `policy.decided`
    /// events (and the approval request, when there is one) in one
    /// transaction. An intent already declared under the key is returned
    /// as it stands, so a replayed step declares nothing new.
    pub async fn declare_intent(&self, identity: &Identity, new: NewIntent) -> Result<Intent, DbError> {
        let identity = identity.clone();
        self.db
            .write(move |conn| {
                let intent = &new.intent;
                if let Some(existing) = read_intent(conn, &intent.key)? {
                    return Ok(existing);
                }
                conn.execute(
                    &format!(
                        "INSERT INTO intents ({INTENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                        ?11, ?12, ?13, ?14, 0, '[]', NULL, ?15, ?16, ?16)"
                    ),
                    params![
                        intent.key,
                        intent.task_id,
                        intent.step_seq,
                        intent.step_id,
                        intent.agent,
                        intent.connector,
                        intent.connector_version,
                        intent.action,
                        intent.args.to_string(),
                        intent.args_hash,
                        intent.resource.to_string(),
                        intent.state.as_str(),
                        intent.decision.to_string(),
                        intent.approval_id,
                        intent.compensates,
                        intent.created_ms,
                    ],
                )?;
                let now = intent.created_ms;
                let declared = json!({
                    "key": intent.key,
                    "task": intent.task_id,
                    "step": intent.step_id,
                    "agent": intent.agent,
                    "connector": intent.connector,
                    "connector_version": intent.connector_version,
                    "action": intent.action,
                    "args": intent.args,
                    "args_hash": intent.args_hash,
                    "resource": intent.resource,
                    "compensates": intent.compensates,
                });
                append_event(conn, &identity, now, kinds::INTENT_DECLARED, &declared.to_string())?;
                append_event(conn, &identity, now, kinds::POLICY_DECIDED, &new.decision_event.to_string())?;
                if let Some(approval) = &new.approval {
                    conn.execute(
                        "INSERT INTO approvals (id, intent_key, task_id, args_hash, request, state, requested_ms,
                            expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, ?7)",
                        params![
                            approval.id,
                            intent.key,
                            intent.task_id,
                            intent.args_hash,
                            approval.request.to_string(),
                            now,
                            approval.expires_ms,
                            ApprovalState::Pending.as_str(),
                        ],
                    )?;
                    append_event(conn, &identity, now, kinds::APPROVAL_REQUESTED, &approval.request.to_string())?;
                }
                read_intent(conn, &intent.key)?.ok_or_else(|| DbError::Corrupt("intent vanished".into()))
            })
            .await
    }

    /// The intent under `key`.
    pub async fn intent(&self, key: &str) -> Result<Option<Intent>, DbError> {
        let key = key.to_owned();
        self.db.read(move |conn| read_intent(conn, &key)).await
    }

    /// The intent a task's step declared (not a compensation).
    pub async fn intent_for_step(&self, task_id: &str, step_id: &str) -> Result<Option<Intent>, DbError> {
        let (task_id, step_id) = (task_id.to_owned(), step_id.to_owned());
        self.db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {INTENT_COLUMNS} FROM intents WHERE task_id = ?1 AND step_id = ?2 AND compensates IS NULL"
                );
                Ok(conn.prepare_cached(&sql)?.query_row([task_id, step_id], intent_from_row).optional()?)
            })
            .await
    }

    /// Intents in `state` (all when `None`), newest first.
    pub async fn intents(&self, state: Option<IntentState>, limit: usize) -> Result<Vec<Intent>, DbError> {
        let state = state.map(IntentState::as_str);
        self.db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {INTENT_COLUMNS} FROM intents WHERE ?1 IS NULL OR state = ?1
                     ORDER BY updated_ms DESC LIMIT ?2"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(params![state, limit as i64], intent_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Moves an intent on `event` with an audit event of `kind`.
    pub async fn settle_intent(
        &self,
        identity: &Identity,
        key: &str,
        event: IntentEvent,
        kind: &str,
        details: Value,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let (identity, key, kind) = (identity.clone(), key.to_owned(), kind.to_owned());
        self.db
            .write(move |conn| {
                let state = advance_intent(conn, &key, event, now_ms)?;
                let mut payload = details;
                payload["key"] = json!(key);
                payload["state"] = json!(state);
                append_event(conn, &identity, now_ms, &kind, &payload.to_string())?;
                Ok(())
            })
            .await
    }

    /// Starts an attempt: `in_flight`, one more attempt, `intent.executing`.
    /// Returns the attempt's number.
    pub async fn begin_attempt(&self, identity: &Identity, key: &str, now_ms: i64) -> Result<u32, DbError> {
        let (identity, key) = (identity.clone(), key.to_owned());
        self.db
            .write(move |conn| {
                advance_intent(conn, &key, IntentEvent::Send, now_ms)?;
                conn.execute("UPDATE intents SET attempts = attempts + 1 WHERE key = ?1", [&key])?;
                let attempt: u32 =
                    conn.query_row("SELECT attempts FROM intents WHERE key = ?1", [&key], |r| r.get(0))?;
                let payload = json!({ "key": key, "attempt": attempt });
                append_event(conn, &identity, now_ms, kinds::INTENT_EXECUTING, &payload.to_string())?;
                Ok(attempt)
            })
            .await
    }

    /// Records how an attempt ended.
    pub async fn end_attempt(
        &self,
        identity: &Identity,
        key: &str,
        attempt: Attempt,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let (identity, key) = (identity.clone(), key.to_owned());
        self.db
            .write(move |conn| {
                let intent = read_intent(conn, &key)?.ok_or_else(|| DbError::Corrupt(format!("no intent {key}")))?;
                match attempt {
                    Attempt::Done(result) => {
                        advance_intent(conn, &key, IntentEvent::Succeed, now_ms)?;
                        conn.execute(
                            "UPDATE intents SET result = ?2 WHERE key = ?1",
                            params![key, result.to_string()],
                        )?;
                        let kind = if intent.compensates.is_some() {
                            kinds::INTENT_COMPENSATED
                        } else {
                            kinds::INTENT_EXECUTED
                        };
                        let payload = json!({
                            "key": key,
                            "task": intent.task_id,
                            "step": intent.step_id,
                            "connector": intent.connector,
                            "action": intent.action,
                            "attempt": intent.attempts,
                            "result": result,
                            "compensates": intent.compensates,
                        });
                        append_event(conn, &identity, now_ms, kind, &payload.to_string())?;
                    }
                    Attempt::Failed { error, unknown, dead } => {
                        let mut errors = intent.errors.clone();
                        errors.push(
                            json!({ "attempt": intent.attempts, "error": error, "unknown": unknown, "at_ms": now_ms }),
                        );
                        advance_intent(conn, &key, IntentEvent::Fail { lost: unknown, last: dead }, now_ms)?;
                        conn.execute(
                            "UPDATE intents SET errors = ?2 WHERE key = ?1",
                            params![key, serde_json::to_string(&errors).expect("a JSON array serialises")],
                        )?;
                        let kind = if dead { kinds::INTENT_DEAD_LETTERED } else { kinds::INTENT_RETRYING };
                        let mut payload = json!({
                            "key": key,
                            "task": intent.task_id,
                            "attempt": intent.attempts,
                            "error": error,
                            "outcome_unknown": unknown,
                        });
                        if dead {
                            payload["errors"] = json!(errors);
                        }
                        append_event(conn, &identity, now_ms, kind, &payload.to_string())?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// The approval under `id`.
    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, DbError> {
        let id = id.to_owned();
        self.db.read(move |conn| read_approval(conn, &id)).await
    }

    /// Approvals in `state` (all when `None`), oldest first.
    pub async fn approvals(&self, state: Option<ApprovalState>) -> Result<Vec<Approval>, DbError> {
        let state = state.map(ApprovalState::as_str);
        self.db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE ?1 IS NULL OR state = ?1 ORDER BY requested_ms"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map([state], approval_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Consumes an approval for its intent: only an `approved` approval, bound
    /// to the intent's exact arguments and not past its use-by time, moves
    /// the intent to `pending`; the approval becomes `used` in the same
    /// transaction, so it can never allow a second execution. Returns why
    /// not when it cannot be used.
    pub async fn use_approval(
        &self,
        identity: &Identity,
        approval_id: &str,
        intent: &Intent,
        now_ms: i64,
    ) -> Result<Result<(), String>, DbError> {
        let (identity, approval_id, key, args_hash) =
            (identity.clone(), approval_id.to_owned(), intent.key.clone(), intent.args_hash.clone());
        self.db
            .write(move |conn| {
                let Some(approval) = read_approval(conn, &approval_id)? else {
                    return Ok(Err(format!("no approval {approval_id}")));
                };
                let refusal = if approval.state != ApprovalState::Approved {
                    Some(format!("approval {approval_id} is {}", approval.state))
                } else if approval.args_hash != args_hash || approval.intent_key != key {
                    Some("the approval was for other arguments".to_owned())
                } else if approval.use_by_ms.is_none_or(|by| now_ms > by) {
                    Some("the approval expired before it was used".to_owned())
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    return Ok(Err(reason));
                }
                advance_approval(conn, &approval, ApprovalEvent::Use)?;
                advance_intent(conn, &key, IntentEvent::Approve, now_ms)?;
                let payload = json!({ "approval": approval_id, "key": key, "args_hash": args_hash });
                append_event(conn, &identity, now_ms, kinds::APPROVAL_USED, &payload.to_string())?;
                Ok(Ok(()))
            })
            .await
    }

    /// Marks an unanswered approval request as lapsed.
    pub async fn expire_approval(&self, identity: &Identity, approval_id: &str, now_ms: i64) -> Result<(), DbError> {
        let (identity, approval_id) = (identity.clone(), approval_id.to_owned());
        self.db
            .write(move |conn| {
                let Some(approval) = read_approval(conn, &approval_id)? else { return Ok(()) };
                if approval.state.transition(ApprovalEvent::Lapse).is_ok() {
                    advance_approval(conn, &approval, ApprovalEvent::Lapse)?;
                    let payload = json!({ "approval": approval_id, "decision": "expired", "by": "edge" });
                    append_event(conn, &identity, now_ms, kinds::APPROVAL_DECIDED, &payload.to_string())?;
                }
                Ok(())
            })
            .await
    }

    /// Applies an operator command once: a repeated id changes nothing. The
    /// outcome (and a refusal's reason) is recorded with the id.
    pub async fn apply_command(&self, identity: &Identity, body: CommandBody, now_ms: i64) -> Result<Applied, DbError> {
        let identity = identity.clone();
        self.db
            .write(move |conn| {
                let seen: Option<String> = conn
                    .query_row("SELECT outcome FROM commands WHERE id = ?1", [&body.id], |r| r.get(0))
                    .optional()?;
                if seen.is_some() {
                    return Ok(Applied::Done);
                }
                let applied = apply(conn, &identity, &body, now_ms)?;
                let outcome = match &applied {
                    Applied::Refused(reason) => {
                        let payload = json!({ "command": body.id, "by": body.by, "reason": reason });
                        append_event(conn, &identity, now_ms, kinds::COMMAND_REFUSED, &payload.to_string())?;
                        format!("refused: {reason}")
                    }
                    _ => "applied".to_owned(),
                };
                conn.execute(
                    "INSERT INTO commands (id, body, outcome, applied_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![body.id, serde_json::to_string(&body).expect("json"), outcome, now_ms],
                )?;
                Ok(applied)
            })
            .await
    }
}

fn apply(conn: &Connection, identity: &Identity, body: &CommandBody, now_ms: i64) -> Result<Applied, DbError> {
    match &body.command {
        Command::Decide { approval, args_hash, approve, expires_ms } => {
            let Some(current) = read_approval(conn, approval)? else {
                return Ok(Applied::Refused(format!("no approval request {approval} on this edge")));
            };
            if current.state != ApprovalState::Pending {
                return Ok(Applied::Refused(format!("approval {approval} is already {}", current.state)));
            }
            if &current.args_hash != args_hash {
                return Ok(Applied::Refused(format!("approval {approval} was decided for other arguments")));
            }
            if now_ms > current.expires_ms {
                advance_approval(conn, &current, ApprovalEvent::Lapse)?;
                let payload = json!({ "approval": approval, "decision": "expired", "by": "edge" });
                append_event(conn, identity, now_ms, kinds::APPROVAL_DECIDED, &payload.to_string())?;
                return Ok(Applied::Refused(format!("approval request {approval} had lapsed")));
            }
            let state = advance_approval(
                conn,
                &current,
                if *approve { ApprovalEvent::Approve } else { ApprovalEvent::Reject },
            )?;
            conn.execute(
                "UPDATE approvals SET decided_by = ?2, comment = ?3, decided_ms = ?4, use_by_ms = ?5 WHERE id = ?1",
                params![approval, body.by, body.comment, now_ms, expires_ms],
            )?;
            if !approve {
                advance_intent(conn, &current.intent_key, IntentEvent::Reject, now_ms)?;
            }
            let payload = json!({
                "approval": approval,
                "key": current.intent_key,
                "task": current.task_id,
                "decision": state,
                "by": body.by,
                "comment": body.comment,
                "command": body.id,
                "args_hash": args_hash,
            });
            append_event(conn, identity, now_ms, kinds::APPROVAL_DECIDED, &payload.to_string())?;
            wake_task(conn, &current.task_id, now_ms)?;
            Ok(Applied::Done)
        }
        Command::RetryIntent { key } => {
            let Some(intent) = read_intent(conn, key)? else {
                return Ok(Applied::Refused(format!("no intent {key}")));
            };
            if intent.state != IntentState::DeadLettered {
                return Ok(Applied::Refused(format!("intent {key} is {}, not dead-lettered", intent.state)));
            }
            // Same key, a fresh allowance of attempts; the error history stays.
            advance_intent(conn, key, IntentEvent::Retry, now_ms)?;
            conn.execute("UPDATE intents SET attempts = 0 WHERE key = ?1", [key])?;
            let payload = json!({ "key": key, "task": intent.task_id, "by": body.by, "comment": body.comment });
            append_event(conn, identity, now_ms, kinds::INTENT_RETRIED, &payload.to_string())?;
            requeue_task(conn, identity, &intent.task_id, "dead-letter retry", &body.by, now_ms)?;
            Ok(Applied::Done)
        }
        Command::DiscardIntent { key } => {
            let Some(intent) = read_intent(conn, key)? else {
                return Ok(Applied::Refused(format!("no intent {key}")));
            };
            if intent.state != IntentState::DeadLettered {
                return Ok(Applied::Refused(format!("intent {key} is {}, not dead-lettered", intent.state)));
            }
            advance_intent(conn, key, IntentEvent::Discard, now_ms)?;
            let payload = json!({ "key": key, "task": intent.task_id, "by": body.by, "comment": body.comment });
            append_event(conn, identity, now_ms, kinds::INTENT_DISCARDED, &payload.to_string())?;
            // The task runs again to its act step, which now fails with the reason.
            requeue_task(conn, identity, &intent.task_id, "dead letter discarded", &body.by, now_ms)?;
            Ok(Applied::Done)
        }
        Command::Compensate { task, step } => {
            Ok(Applied::Compensate { task: task.clone(), step: step.clone(), by: body.by.clone() })
        }
        Command::Answer { task, question, answer } => {
            match crate::tasks::answer_in(conn, identity, (task, question), answer, &body.by, now_ms)? {
                Ok(_) => Ok(Applied::Done),
                Err(problem) => Ok(Applied::Refused(problem)),
            }
        }
    }
}

/// Queues a dead-lettered task again, with a fresh allowance of starts.
fn requeue_task(
    conn: &Connection,
    identity: &Identity,
    task_id: &str,
    reason: &str,
    by: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    let (from, to) = (TaskState::DeadLettered, crate::tasks::next(TaskState::DeadLettered, TaskEvent::Retry)?);
    let requeued = conn.execute(
        "UPDATE tasks SET state = ?3, starts = 0, error = NULL, not_before_ms = 0, updated_ms = ?2
         WHERE id = ?1 AND state = ?4",
        params![task_id, now_ms, to.as_str(), from.as_str()],
    )?;
    if requeued > 0 {
        let payload = json!({ "task": task_id, "reason": reason, "by": by });
        append_event(conn, identity, now_ms, kinds::TASK_QUEUED, &payload.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
