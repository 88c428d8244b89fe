//! The journal of an agent step's tool-using loop: each model turn, each
//! call's outcome and each argument decision of the local model, appended in order with its audit event in one
//! transaction, before the loop's next action starts. A run that resumes
//! reads it back and asks `aios_shared::agent::tool_loop::next` what comes
//! after it, so a journaled model turn is never requested again.

use aios_shared::agent::tool_loop::LoopEntry;
use aios_shared::audit::kinds;
use rusqlite::{params, OptionalExtension};
use serde_json::json;

use crate::store::{append_event, EdgeStore};
use crate::sync::identity::Identity;
use aios_daemon::db::DbError;

/// The place of an entry in its loop, as the `iteration` and `call`
/// columns hold it: a turn (`call` -1), a call of a turn (its index), or
/// the local model's decision of a call's arguments (-2 - its index).
fn slot(entry: &LoopEntry) -> (u32, i64) {
    match entry {
        LoopEntry::Model { iteration, .. } => (*iteration, -1),
        LoopEntry::Call { iteration, index, .. } => (*iteration, i64::from(*index)),
        LoopEntry::Decided { iteration, index, .. } => (*iteration, -2 - i64::from(*index)),
    }
}

fn decode(text: &str) -> Result<LoopEntry, DbError> {
    serde_json::from_str(text).map_err(|err| DbError::Corrupt(format!("agent loop entry: {err}")))
}

impl EdgeStore {
    /// The loop journal of step `seq` of `task_id`, oldest first.
    pub async fn loop_journal(&self, task_id: &str, seq: u32) -> Result<Vec<LoopEntry>, DbError> {
        let task_id = task_id.to_owned();
        self.db
            .read(move |conn| {
                let mut statement =
                    conn.prepare("SELECT entry FROM agent_loop WHERE task_id = ?1 AND seq = ?2 ORDER BY n")?;
                let rows = statement.query_map(params![task_id, seq], |row| row.get::<_, String>(0))?;
                rows.map(|text| decode(&text?)).collect()
            })
            .await
    }

    /// Every loop journal of `task_id`, by step, for the task's view.
    pub async fn task_loops(&self, task_id: &str) -> Result<Vec<(u32, LoopEntry)>, DbError> {
        let task_id = task_id.to_owned();
        self.db
            .read(move |conn| {
                let mut statement =
                    conn.prepare("SELECT seq, entry FROM agent_loop WHERE task_id = ?1 ORDER BY seq, n")?;
                let rows =
                    statement.query_map([task_id], |row| Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?)))?;
                rows.map(|row| {
                    let (seq, text) = row?;
                    Ok((seq, decode(&text)?))
                })
                .collect()
            })
            .await
    }

    /// Appends `entry` to the loop of step `seq` of `task_id` with its audit
    /// event. Refused (and nothing written) unless the task is running at
    /// that step and the entry's turn or call has no entry yet.
    pub async fn append_loop_entry(
        &self,
        identity: &Identity,
        task_id: &str,
        seq: u32,
        entry: LoopEntry,
        now_ms: i64,
    ) -> Result<(), DbError> {
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
                if state != "running" || next != seq {
                    return Err(DbError::Corrupt(format!(
                        "task {task_id} is {state} at step {next}; refusing a loop entry for step {seq}"
                    )));
                }
                let (iteration, call) = slot(&entry);
                let taken: bool = conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM agent_loop WHERE task_id = ?1 AND seq = ?2 AND iteration = ?3 AND call = ?4)",
                    params![task_id, seq, iteration, call],
                    |row| row.get(0),
                )?;
                if taken {
                    return Err(DbError::Corrupt(format!(
                        "task {task_id} step {seq} already has a loop entry for turn {iteration}, call {call}"
                    )));
                }
                let n: i64 = conn.query_row(
                    "SELECT COALESCE(MAX(n) + 1, 0) FROM agent_loop WHERE task_id = ?1 AND seq = ?2",
                    params![task_id, seq],
                    |row| row.get(0),
                )?;
                let text = serde_json::to_string(&entry).map_err(|err| DbError::Corrupt(err.to_string()))?;
                conn.execute(
                    "INSERT INTO agent_loop (task_id, seq, n, iteration, call, entry, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![task_id, seq, n, iteration, call, text, now_ms],
                )?;
                let (kind, payload) = match &entry {
                    LoopEntry::Model {
                        iteration,
                        tier,
                        reply,
                        tokens_in,
                        tokens_out,
                        cost_usd,
                        latency_ms,
                        reason,
                        needs_review,
                    } => (
                        kinds::AGENT_TURN,
                        json!({
                            "task": task_id,
                            "seq": seq,
                            "iteration": iteration,
                            "tier": tier,
                            "reason": reason,
                            "needs_review": needs_review,
                            "tokens_in": tokens_in,
                            "tokens_out": tokens_out,
                            "cost_usd": cost_usd,
                            "latency_ms": latency_ms,
                            "text": reply.text,
                            "refusal": reply.refusal,
                            "calls": reply.calls,
                        }),
                    ),
                    LoopEntry::Call { iteration, index, name, arguments, outcome } => (
                        kinds::AGENT_CALL,
                        json!({
                            "task": task_id,
                            "seq": seq,
                            "iteration": iteration,
                            "index": index,
                            "name": name,
                            "arguments": arguments,
                            "outcome": outcome,
                        }),
                    ),
                    LoopEntry::Decided { iteration, index, tier, arguments, tokens_in, tokens_out, latency_ms } => (
                        kinds::AGENT_DECIDED,
                        json!({
                            "task": task_id,
                            "seq": seq,
                            "iteration": iteration,
                            "index": index,
                            "tier": tier,
                            "arguments": arguments,
                            "tokens_in": tokens_in,
                            "tokens_out": tokens_out,
                            "latency_ms": latency_ms,
                        }),
                    ),
                };
                append_event(conn, &identity, now_ms, kind, &payload.to_string())?;
                Ok(())
            })
            .await
    }
}
