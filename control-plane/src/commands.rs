//! Operator commands for one edge (approval decisions, dead-letter retries
//! and discards, compensations) and the approval queue.
//!
//! The queue needs no table of its own: an edge's `approval.requested`
//! events arrive through the audit sync, verified, and each carries what the
//! approver must see (the exact arguments and their hash, the reasoning, the
//! sources, the expiry). A decision is a command: stored first, signed with
//! the bundle key, then sent on the edge's sync connection until the edge's
//! receipt says it applied it (or why it refused). The edge's own
//! `approval.decided` and `approval.used` events close the loop.

use aios_shared::command::{Command, CommandBody, SignedCommand};
use aios_shared::lifecycle::approval::ApprovalState;
use aios_shared::wire::CommandReceipt;
use ed25519_dalek::SigningKey;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use crate::resend::ResendQueue;
use crate::store::CpStore;
use aios_daemon::db::DbError;

/// Commands wait here for their edge's receipt.
const COMMANDS: ResendQueue = ResendQueue::new("commands");

/// An approval request as the queue shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalView {
    /// The approval id.
    pub id: String,
    /// The edge that asked.
    pub edge_id: String,
    /// Where it stands (`pending`, `approved (sending)`, `used`, ...).
    pub state: QueueState,
    /// The request: what, why, arguments, hash, reasoning, sources, expiry.
    pub request: Value,
    /// The decision command, when one was made.
    pub decision: Option<Value>,
}

/// Where an approval request stands, as the control plane can tell: what
/// the edge last reported through its verified audit log, or a decision on
/// its way there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// The edge reported a decision this build cannot read.
    Decided,
    /// As the edge reported it (or `pending` / `expired` when it has not
    /// reported anything yet).
    Edge(ApprovalState),
    /// An operator decided; the edge has not reported applying it yet.
    Sending {
        /// Approved rather than rejected.
        approve: bool,
    },
}

/// What the edge last recorded about an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeReport {
    /// `approval.decided`, with the decision it names.
    Decided(String),
    /// `approval.used`.
    Used,
}

impl QueueState {
    /// The state of a request from what the edge reported, the decision the
    /// control plane is still sending (`Some(approve)`), the request's
    /// expiry and `now_ms`.
    pub fn of(report: Option<&EdgeReport>, sending: Option<bool>, expires_ms: i64, now_ms: i64) -> QueueState {
        match (report, sending) {
            (Some(EdgeReport::Used), _) => QueueState::Edge(ApprovalState::Used),
            (Some(EdgeReport::Decided(decision)), _) => {
                decision.parse().map(QueueState::Edge).unwrap_or(QueueState::Decided)
            }
            (None, Some(approve)) => QueueState::Sending { approve },
            (None, None) if now_ms > expires_ms => QueueState::Edge(ApprovalState::Expired),
            (None, None) => QueueState::Edge(ApprovalState::Pending),
        }
    }
}

impl std::fmt::Display for QueueState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueState::Decided => f.write_str("decided"),
            QueueState::Edge(state) => f.write_str(state.as_str()),
            QueueState::Sending { approve: true } => f.write_str("approved (sending)"),
            QueueState::Sending { approve: false } => f.write_str("rejected (sending)"),
        }
    }
}

impl Serialize for QueueState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A question an agent asked (`ask_human`) that is not answered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenQuestion {
    /// The edge the task runs on.
    pub edge_id: String,
    /// The task.
    pub task: String,
    /// The question's key.
    pub key: String,
    /// What the agent asks.
    pub question: String,
    /// When it asked.
    pub asked_ms: i64,
    /// Whether an answer is on its way to the edge.
    pub answering: bool,
}

/// A command as stored.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    /// Its id.
    pub id: String,
    /// The edge.
    pub edge_id: String,
    /// The command's body.
    pub body: Value,
    /// When it was issued.
    pub created_ms: i64,
    /// When the edge acknowledged it.
    pub received_ms: Option<i64>,
    /// Why the edge refused it.
    pub refused: Option<String>,
}

fn command_kind(command: &Command) -> (&'static str, String) {
    match command {
        Command::Decide { approval, .. } => ("decide", approval.clone()),
        Command::RetryIntent { key } => ("retry_intent", key.clone()),
        Command::DiscardIntent { key } => ("discard_intent", key.clone()),
        Command::Compensate { task, step } => ("compensate", format!("{task}/{step}")),
        Command::Answer { task, question, .. } => ("answer", format!("{task}/{question}")),
    }
}

/// Why an id could not be resolved to one item.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Items of more than one edge carry the id (an edge may write any id
    /// into its own audit log): the caller must name the edge.
    #[error("`{id}` names items of several edges ({}); name the edge with `?edge=`", .edges.join(", "))]
    Ambiguous {
        /// The id.
        id: String,
        /// The edges whose items carry it.
        edges: Vec<String>,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The one edge among `edges` (distinct, as found), or why there is none.
fn one_edge(id: &str, edges: Vec<String>) -> Result<Option<String>, LookupError> {
    match edges.len() {
        0 => Ok(None),
        1 => Ok(edges.into_iter().next()),
        _ => Err(LookupError::Ambiguous { id: id.to_owned(), edges }),
    }
}

/// The distinct edges with an event of `kind` whose payload has `value` at
/// `path`, limited to `edge` when given (two at most: enough to tell).
fn edges_with(
    conn: &Connection,
    kind: &str,
    path: &str,
    value: &str,
    edge: Option<&str>,
) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT edge_id FROM audit_events
         WHERE kind = ?1 AND json_extract(payload, ?2) = ?3 AND (?4 IS NULL OR edge_id = ?4) LIMIT 2",
    )?;
    let rows = stmt.query_map(params![kind, path, value, edge], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn read_approval(
    conn: &Connection,
    id: &str,
    edge: Option<&str>,
    now_ms: i64,
) -> Result<Option<ApprovalView>, LookupError> {
    let edges = edges_with(conn, "approval.requested", "$.approval", id, edge)?;
    let Some(edge_id) = one_edge(id, edges)? else { return Ok(None) };
    let payload: String = conn
        .query_row(
            "SELECT payload FROM audit_events
         WHERE kind = 'approval.requested' AND json_extract(payload, '$.approval') = ?1 AND edge_id = ?2
         ORDER BY seq LIMIT 1",
            params![id, edge_id],
            |r| r.get(0),
        )
        .map_err(DbError::from)?;
    Ok(Some(view(conn, id.to_owned(), edge_id, serde_json::from_str(&payload).unwrap_or_default(), now_ms)?))
}

fn view(conn: &Connection, id: String, edge_id: String, request: Value, now_ms: i64) -> Result<ApprovalView, DbError> {
    // What the edge last said about it.
    let edge_state: Option<(String, String)> = conn
        .query_row(
            "SELECT kind, payload FROM audit_events
             WHERE edge_id = ?1 AND kind IN ('approval.decided', 'approval.used')
               AND json_extract(payload, '$.approval') = ?2
             ORDER BY seq DESC LIMIT 1",
            params![edge_id, id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let decision: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT body, refused FROM commands WHERE kind = 'decide' AND subject = ?1 AND edge_id = ?2 AND
                (refused IS NULL) ORDER BY created_ms DESC LIMIT 1",
            params![id, edge_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let decision_body: Option<Value> = decision.as_ref().and_then(|(body, _)| serde_json::from_str(body).ok());
    let expires_ms = request["expires_ms"].as_i64().unwrap_or(i64::MAX);
    let report = edge_state.map(|(kind, payload)| match kind.as_str() {
        "approval.used" => EdgeReport::Used,
        _ => EdgeReport::Decided(
            serde_json::from_str::<Value>(&payload)
                .ok()
                .and_then(|p| p["decision"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
    });
    let sending = decision_body.as_ref().map(|body| body["approve"] == Value::Bool(true));
    let state = QueueState::of(report.as_ref(), sending, expires_ms, now_ms);
    Ok(ApprovalView { id, edge_id, state, request, decision: decision_body })
}

impl CpStore {
    /// Signs and stores a command for `edge_id`; returns it.
    pub async fn issue_command(
        &self,
        key: &SigningKey,
        edge_id: String,
        by: String,
        comment: String,
        command: Command,
        now_ms: i64,
    ) -> Result<CommandBody, DbError> {
        let body = CommandBody {
            id: format!("c{:011x}{:08x}", now_ms.max(0), rand::random::<u32>()),
            edge_id,
            by,
            comment,
            issued_ms: now_ms,
            command,
        };
        let signed = body.sign(key);
        let (kind, subject) = command_kind(&body.command);
        let stored = body.clone();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO commands (id, edge_id, kind, subject, body, signature, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![stored.id, stored.edge_id, kind, subject, signed.body, signed.signature, now_ms],
                )?;
                Ok(())
            })
            .await?;
        Ok(body)
    }

    /// Commands the edge has not acknowledged, oldest first.
    pub async fn pending_commands(&self, edge_id: String) -> Result<Vec<SignedCommand>, DbError> {
        self.db
            .read(move |conn| {
                COMMANDS.pending(conn, &edge_id, "id, body, signature", |r| {
                    Ok(SignedCommand { id: r.get(0)?, body: r.get(1)?, signature: r.get(2)? })
                })
            })
            .await
    }

    /// Records the edge's receipts (only for commands sent to that edge).
    pub async fn record_command_receipts(
        &self,
        edge_id: String,
        receipts: Vec<CommandReceipt>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.db
            .write(move |conn| {
                for receipt in receipts {
                    COMMANDS.acknowledge(conn, &edge_id, &receipt.id, now_ms, &[("refused", &receipt.refused)])?;
                }
                Ok(())
            })
            .await
    }

    /// A command by id.
    pub async fn command(&self, id: String) -> Result<Option<CommandRecord>, DbError> {
        self.db
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT id, edge_id, body, created_ms, received_ms, refused FROM commands WHERE id = ?1",
                        [id],
                        |r| {
                            Ok(CommandRecord {
                                id: r.get(0)?,
                                edge_id: r.get(1)?,
                                body: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                                created_ms: r.get(3)?,
                                received_ms: r.get(4)?,
                                refused: r.get(5)?,
                            })
                        },
                    )
                    .optional()?)
            })
            .await
    }

    /// The approval queue at `now_ms`, oldest request first; `state` filters
    /// by the start of the state's name (`pending`, `approved`, ...).
    pub async fn approvals(&self, state: Option<String>, now_ms: i64) -> Result<Vec<ApprovalView>, DbError> {
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT edge_id, payload FROM audit_events WHERE kind = 'approval.requested' ORDER BY ts_ms, seq",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                let mut out = Vec::new();
                for row in rows {
                    let (edge_id, payload) = row?;
                    let request: Value = serde_json::from_str(&payload).unwrap_or_default();
                    let id = request["approval"].as_str().unwrap_or_default().to_owned();
                    let approval = view(conn, id, edge_id, request, now_ms)?;
                    if state.as_deref().is_none_or(|s| approval.state.to_string().starts_with(s)) {
                        out.push(approval);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// One approval request of `edge` (any edge when `None`, if only one
    /// carries the id), as it stands at `now_ms`.
    pub async fn approval(
        &self,
        id: String,
        edge: Option<String>,
        now_ms: i64,
    ) -> Result<Option<ApprovalView>, LookupError> {
        self.db
            .read(move |conn| Ok(read_approval(conn, &id, edge.as_deref(), now_ms)))
            .await
            .map_err(LookupError::Db)?
    }

    /// Dead-lettered intents of every edge that no operator resolved yet.
    pub async fn dead_letters(&self) -> Result<Vec<Value>, DbError> {
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT d.edge_id, d.payload FROM audit_events d
                     WHERE d.kind = 'intent.dead_lettered' AND NOT EXISTS (
                        SELECT 1 FROM audit_events later
                        WHERE later.edge_id = d.edge_id AND later.seq > d.seq
                          AND later.kind IN ('intent.retried', 'intent.discarded', 'intent.executed')
                          AND json_extract(later.payload, '$.key') = json_extract(d.payload, '$.key'))
                     ORDER BY d.ts_ms",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                let mut out = Vec::new();
                for row in rows {
                    let (edge_id, payload) = row?;
                    let mut value: Value = serde_json::from_str(&payload).unwrap_or_default();
                    value["edge_id"] = Value::String(edge_id);
                    out.push(value);
                }
                Ok(out)
            })
            .await
    }

    /// The first question an agent of `task` on `edge` (any edge when
    /// `None`, if only one ran it) asked that no answer has reached the
    /// control plane for.
    pub async fn open_question(&self, task: String, edge: Option<String>) -> Result<Option<OpenQuestion>, LookupError> {
        self.db.read(move |conn| Ok(read_open_question(conn, task, edge))).await.map_err(LookupError::Db)?
    }

    /// The edge a task ran on, from its audit events.
    pub async fn edge_of_task(&self, task: String, edge: Option<String>) -> Result<Option<String>, LookupError> {
        self.edge_of_event("task.queued", "$.task", task, edge).await
    }

    /// The edge a dead-lettered intent belongs to.
    pub async fn edge_of_intent(&self, key: String, edge: Option<String>) -> Result<Option<String>, LookupError> {
        self.edge_of_event("intent.declared", "$.key", key, edge).await
    }

    /// The one edge with an event of `kind` whose payload has `value` at `path`.
    async fn edge_of_event(
        &self,
        kind: &'static str,
        path: &'static str,
        value: String,
        edge: Option<String>,
    ) -> Result<Option<String>, LookupError> {
        self.db
            .read(move |conn| Ok(edges_with(conn, kind, path, &value, edge.as_deref()).map(|e| one_edge(&value, e))))
            .await
            .map_err(LookupError::Db)?
            .map_err(LookupError::Db)?
    }
}

fn read_open_question(
    conn: &Connection,
    task: String,
    edge: Option<String>,
) -> Result<Option<OpenQuestion>, LookupError> {
    let edges = edges_with(conn, "question.asked", "$.task", &task, edge.as_deref())?;
    let Some(edge_id) = one_edge(&task, edges)? else { return Ok(None) };
    let row: Option<(String, i64)> = conn
        .query_row(
            "SELECT q.payload, q.ts_ms FROM audit_events q
             WHERE q.kind = 'question.asked' AND json_extract(q.payload, '$.task') = ?1 AND q.edge_id = ?2
               AND NOT EXISTS (
                 SELECT 1 FROM audit_events a
                 WHERE a.edge_id = q.edge_id AND a.kind = 'question.answered'
                   AND json_extract(a.payload, '$.key') = json_extract(q.payload, '$.key'))
             ORDER BY q.seq LIMIT 1",
            params![task, edge_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(DbError::from)?;
    let Some((payload, asked_ms)) = row else { return Ok(None) };
    let payload: Value = serde_json::from_str(&payload).unwrap_or_default();
    let key = payload["key"].as_str().unwrap_or_default().to_owned();
    let answering: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM commands
             WHERE kind = 'answer' AND subject = ?1 AND edge_id = ?2 AND refused IS NULL)",
            params![format!("{task}/{key}"), edge_id],
            |r| r.get(0),
        )
        .map_err(DbError::from)?;
    Ok(Some(OpenQuestion {
        edge_id,
        task,
        key,
        question: payload["question"].as_str().unwrap_or_default().to_owned(),
        asked_ms,
        answering,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_report_wins_then_a_decision_on_its_way_then_the_clock() {
        let decided = EdgeReport::Decided("rejected".into());
        let cases = [
            (Some(&EdgeReport::Used), Some(true), 0, ApprovalState::Used.as_str()),
            (Some(&decided), Some(true), 0, "rejected"),
            (Some(&EdgeReport::Decided("fancy".into())), None, 0, "decided"),
            (None, Some(true), 2_000, "approved (sending)"),
            (None, Some(false), 2_000, "rejected (sending)"),
            (None, None, 2_000, "expired"),
            (None, None, 500, "pending"),
        ];
        for (report, sending, now_ms, expected) in cases {
            assert_eq!(QueueState::of(report, sending, 1_000, now_ms).to_string(), expected, "{report:?} {sending:?}");
        }
    }
}
