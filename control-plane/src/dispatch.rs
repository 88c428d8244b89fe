//! Tasks the operator dispatches to edges, and their results.
//!
//! A dispatch is stored first, then sent on the edge's sync connection (now,
//! or whenever it next connects) until the edge's receipt says it persisted
//! the task under the dispatch id as idempotency key. Results come back the
//! way everything else does: the edge's `task.*` audit events, verified and
//! stored by the audit sync, carry the task's state and its output.

use aios_shared::wire::{DispatchedTask, TaskReceipt};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::resend::ResendQueue;
use crate::store::CpStore;
use aios_daemon::db::DbError;

/// Dispatches wait here for their edge's receipt.
const DISPATCHES: ResendQueue = ResendQueue::new("dispatches");

/// A dispatch with what is known of its task.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchRecord {
    /// The dispatch id (the task's idempotency key at the edge).
    pub id: String,
    /// The edge.
    pub edge_id: String,
    /// The agent.
    pub agent: String,
    /// The task kind.
    pub kind: Option<String>,
    /// The input.
    pub input: serde_json::Value,
    /// When it was dispatched.
    pub created_ms: i64,
    /// `pending` (not yet at the edge), `refused`, or the task's state as
    /// its latest audit event says.
    pub state: String,
    /// The edge's task id.
    pub task_id: Option<String>,
    /// The edge's reason for refusing it.
    pub refused: Option<String>,
    /// The latest `task.*` event of the task (its result when it succeeded).
    pub last_event: Option<serde_json::Value>,
}

impl CpStore {
    /// Stores one dispatch per edge; returns their ids.
    pub async fn dispatch_tasks(
        &self,
        edge_ids: Vec<String>,
        agent: String,
        kind: Option<String>,
        input: serde_json::Value,
        now_ms: i64,
    ) -> Result<Vec<String>, DbError> {
        self.db
            .write(move |conn| {
                let mut ids = Vec::new();
                for edge_id in edge_ids {
                    let id = format!("d{:011x}{:08x}", now_ms.max(0), rand::random::<u32>());
                    conn.execute(
                        "INSERT INTO dispatches (id, edge_id, agent, kind, input, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, edge_id, agent, kind, input.to_string(), now_ms],
                    )?;
                    ids.push(id);
                }
                Ok(ids)
            })
            .await
    }

    /// Dispatches the edge has not acknowledged, oldest first.
    pub async fn pending_dispatches(&self, edge_id: String) -> Result<Vec<DispatchedTask>, DbError> {
        self.db
            .read(move |conn| {
                DISPATCHES.pending(conn, &edge_id, "id, agent, kind, input", |r| {
                    Ok(DispatchedTask { id: r.get(0)?, agent: r.get(1)?, kind: r.get(2)?, input: r.get(3)? })
                })
            })
            .await
    }

    /// Records the edge's receipts (only for dispatches made to that edge).
    pub async fn record_receipts(
        &self,
        edge_id: String,
        receipts: Vec<TaskReceipt>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.db
            .write(move |conn| {
                for receipt in receipts {
                    let result: [(&str, &dyn rusqlite::ToSql); 2] =
                        [("task_id", &receipt.task_id), ("refused", &receipt.refused)];
                    DISPATCHES.acknowledge(conn, &edge_id, &receipt.id, now_ms, &result)?;
                }
                Ok(())
            })
            .await
    }

    /// Dispatches, newest first, with their tasks' latest state.
    pub async fn dispatches(&self, id: Option<String>, limit: usize) -> Result<Vec<DispatchRecord>, DbError> {
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, edge_id, agent, kind, input, created_ms, received_ms, task_id, refused FROM dispatches
                     WHERE ?1 IS NULL OR id = ?1 ORDER BY created_ms DESC, id DESC LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![id, limit as i64], |r| {
                    Ok((
                        DispatchRecord {
                            id: r.get(0)?,
                            edge_id: r.get(1)?,
                            agent: r.get(2)?,
                            kind: r.get(3)?,
                            input: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                            created_ms: r.get(5)?,
                            state: String::new(),
                            task_id: r.get(7)?,
                            refused: r.get(8)?,
                            last_event: None,
                        },
                        r.get::<_, Option<i64>>(6)?,
                    ))
                })?;
                let mut records = Vec::new();
                for row in rows {
                    let (mut record, received) = row?;
                    record.state = match (&record.refused, received, &record.task_id) {
                        (Some(_), _, _) => "refused".into(),
                        (None, None, _) | (None, Some(_), None) => "pending".into(),
                        (None, Some(_), Some(task_id)) => {
                            let latest: Option<(String, String)> = conn
                                .prepare_cached(
                                    "SELECT kind, payload FROM audit_events
                                     WHERE edge_id = ?1 AND kind LIKE 'task.%' AND kind != 'task.step'
                                       AND json_extract(payload, '$.task') = ?2
                                     ORDER BY seq DESC LIMIT 1",
                                )?
                                .query_row(params![record.edge_id, task_id], |r| Ok((r.get(0)?, r.get(1)?)))
                                .optional()?;
                            match latest {
                                None => "accepted".into(),
                                Some((kind, payload)) => {
                                    record.last_event = serde_json::from_str(&payload).ok();
                                    kind.trim_start_matches("task.").to_owned()
                                }
                            }
                        }
                    };
                    records.push(record);
                }
                Ok(records)
            })
            .await
    }
}
