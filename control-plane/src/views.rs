//! Read models over the ingested audit log: one row per task (state, cost,
//! escalations, approvals) and an index from task to its events, kept up to
//! date in the ingest transaction, plus the fleet metrics computed from them.
//!
//! The audit log stays the source of truth: both tables are derived from it
//! and are rebuilt from it when empty (a database from before they existed).

use aios_shared::lifecycle::task::TaskState;
use std::collections::BTreeMap;

use aios_daemon::db::DbError;
use aios_shared::audit::{kinds, AuditEvent};
use rusqlite::{params, Connection};
use serde::Serialize;
use serde_json::Value;

use crate::store::{CpStore, StoredEvent};

/// A task as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// The edge running it.
    pub edge_id: String,
    /// The task id (unique per edge).
    pub task: String,
    /// Its agent.
    pub agent: String,
    /// Where it came from (`api`, `cli`, `control-plane`, `webhook:NAME`).
    pub source: String,
    /// queued, running, waiting, succeeded, failed, dead_lettered, cancelled.
    pub state: TaskState,
    /// When it was queued.
    pub created_ms: i64,
    /// Its last event.
    pub updated_ms: i64,
    /// When it ended, if it has.
    pub finished_ms: Option<i64>,
    /// Steps checkpointed.
    pub steps: u64,
    /// Steps that went to an escalation tier.
    pub escalations: u64,
    /// Approvals asked for.
    pub approvals: u64,
    /// Whether a result is marked for human review.
    pub needs_review: bool,
    /// Money spent on model calls.
    pub cost_usd: f64,
    /// Tokens in and out.
    pub tokens: u64,
    /// Why it waits or failed.
    pub detail: Option<String>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this edge.
    pub edge_id: Option<String>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// Figures for one agent or one edge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Tasks queued.
    pub tasks: u64,
    /// Tasks that ended (any outcome).
    pub finished: u64,
    /// Latency from queued to succeeded, milliseconds.
    pub latency_p50_ms: Option<i64>,
    /// 95th percentile.
    pub latency_p95_ms: Option<i64>,
    /// 99th percentile.
    pub latency_p99_ms: Option<i64>,
    /// Mean cost per finished task.
    pub cost_per_task_usd: f64,
    /// Total cost.
    pub cost_usd: f64,
    /// Share of tasks with at least one escalated step.
    pub escalation_rate: f64,
    /// Share of tasks that asked for an approval or were marked for review.
    pub intervention_rate: f64,
    /// Share of finished tasks that failed.
    pub failure_rate: f64,
    /// Share of finished tasks that were dead-lettered.
    pub dead_letter_rate: f64,
}

/// Fleet metrics, per agent, per edge, and cost per day.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// By agent name.
    pub by_agent: BTreeMap<String, Figures>,
    /// By edge id.
    pub by_edge: BTreeMap<String, Figures>,
    /// `YYYY-MM-DD` (UTC) to cost.
    pub cost_per_day: BTreeMap<String, f64>,
    /// `YYYY-MM-DD` (UTC) to tasks queued.
    pub tasks_per_day: BTreeMap<String, u64>,
}

/// Updates the views for one newly ingested event (in the ingest
/// transaction). Payloads that are not JSON or name no task are skipped.
pub(crate) fn project(c: &Connection, edge_id: &str, event: &AuditEvent) -> Result<(), DbError> {
    let Ok(payload) = serde_json::from_str::<Value>(&event.payload) else { return Ok(()) };
    let Some(task) = payload.get("task").and_then(Value::as_str) else { return Ok(()) };
    c.prepare_cached("INSERT OR IGNORE INTO task_events VALUES (?1, ?2, ?3)")?.execute(params![
        task,
        edge_id,
        event.seq as i64
    ])?;
    let text = |key: &str| payload.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let ts = event.ts_ms;
    let set_state = |state: TaskState, finished: bool, detail: Option<String>| -> Result<(), DbError> {
        c.prepare_cached(
            "UPDATE task_view SET state = ?3, updated_ms = ?4,
                finished_ms = CASE WHEN ?5 THEN ?4 ELSE NULL END, detail = ?6
             WHERE edge_id = ?1 AND task = ?2",
        )?
        .execute(params![edge_id, task, state.as_str(), ts, finished, detail])?;
        Ok(())
    };
    match event.kind.as_str() {
        kinds::TASK_QUEUED => {
            c.prepare_cached(
                "INSERT OR IGNORE INTO task_view (edge_id, task, agent, source, state, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?6, ?5, ?5)",
            )?
            .execute(params![
                edge_id,
                task,
                text("agent"),
                text("source"),
                ts,
                TaskState::Queued.as_str()
            ])?;
        }
        kinds::TASK_RUNNING => set_state(TaskState::Running, false, None)?,
        kinds::TASK_WAITING => set_state(TaskState::Waiting, false, Some(text("reason")))?,
        kinds::TASK_SUCCEEDED => {
            set_state(TaskState::Succeeded, true, None)?;
            if payload.get("needs_review").and_then(Value::as_bool) == Some(true) {
                c.execute("UPDATE task_view SET needs_review = 1 WHERE edge_id = ?1 AND task = ?2", [edge_id, task])?;
            }
        }
        kinds::TASK_FAILED => set_state(TaskState::Failed, true, Some(text("error")))?,
        kinds::TASK_DEAD_LETTERED => set_state(TaskState::DeadLettered, true, Some(text("error")))?,
        kinds::TASK_CANCELLED => set_state(TaskState::Cancelled, true, None)?,
        kinds::TASK_STEP => {
            let escalated = text("reason").starts_with("escalated");
            let number = |key: &str| payload.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            let tokens = (number("tokens_in") + number("tokens_out")) as i64;
            let review = payload.get("needs_review").and_then(Value::as_bool) == Some(true);
            c.prepare_cached(
                "UPDATE task_view SET steps = steps + 1, escalations = escalations + ?3, cost_usd = cost_usd + ?4,
                    tokens = tokens + ?5, needs_review = needs_review OR ?6, updated_ms = ?7
                 WHERE edge_id = ?1 AND task = ?2",
            )?
            .execute(params![edge_id, task, escalated as i64, number("cost_usd"), tokens, review, ts])?;
        }
        kinds::APPROVAL_REQUESTED => {
            c.prepare_cached(
                "UPDATE task_view SET approvals = approvals + 1, updated_ms = ?3 WHERE edge_id = ?1 AND task = ?2",
            )?
            .execute(params![edge_id, task, ts])?;
        }
        _ => {}
    }
    Ok(())
}

/// Rebuilds both views from the audit log when they are empty but the log
/// is not (a database written before the views existed).
pub(crate) fn rebuild_if_empty(c: &Connection) -> Result<(), DbError> {
    let empty: bool = c.query_row("SELECT NOT EXISTS (SELECT 1 FROM task_events)", [], |r| r.get(0))?;
    let has_tasks: bool =
        c.query_row("SELECT EXISTS (SELECT 1 FROM audit_events WHERE kind = 'task.queued')", [], |r| r.get(0))?;
    if !(empty && has_tasks) {
        return Ok(());
    }
    let mut stmt = c.prepare("SELECT edge_id, seq, ts_ms, kind, payload FROM audit_events ORDER BY edge_id, seq")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let edge_id: String = r.get(0)?;
        let event = AuditEvent {
            seq: r.get::<_, i64>(1)? as u64,
            ts_ms: r.get(2)?,
            kind: r.get(3)?,
            payload: r.get(4)?,
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        project(c, &edge_id, &event)?;
    }
    Ok(())
}

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        edge_id: r.get(0)?,
        task: r.get(1)?,
        agent: r.get(2)?,
        source: r.get(3)?,
        state: {
            let text: String = r.get(4)?;
            text.parse().map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(err))
            })?
        },
        created_ms: r.get(5)?,
        updated_ms: r.get(6)?,
        finished_ms: r.get(7)?,
        steps: r.get::<_, i64>(8)? as u64,
        escalations: r.get::<_, i64>(9)? as u64,
        approvals: r.get::<_, i64>(10)? as u64,
        needs_review: r.get(11)?,
        cost_usd: r.get(12)?,
        tokens: r.get::<_, i64>(13)? as u64,
        detail: r.get(14)?,
    })
}

const TASK_COLUMNS: &str = "edge_id, task, agent, source, state, created_ms, updated_ms, finished_ms, steps,
    escalations, approvals, needs_review, cost_usd, tokens, detail";

impl CpStore {
    /// Tasks, newest first.
    pub async fn tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, DbError> {
        self.db
            .read(move |c| {
                let sql = format!(
                    "SELECT {TASK_COLUMNS} FROM task_view
                     WHERE (?1 IS NULL OR edge_id = ?1) AND (?2 IS NULL OR agent = ?2) AND (?3 IS NULL OR state = ?3)
                     ORDER BY created_ms DESC LIMIT ?4"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let limit = filter.limit.max(1) as i64;
                let rows = stmt.query_map(params![filter.edge_id, filter.agent, filter.state, limit], task_row)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// One task and every audit event that names it, in order. Task ids
    /// are the edges' own, so two edges' tasks may share one (an enrolled
    /// edge can write any id): then `edge` must say whose.
    pub async fn task_trace(
        &self,
        task: String,
        edge: Option<String>,
    ) -> Result<Option<(TaskRow, Vec<StoredEvent>)>, crate::commands::LookupError> {
        let task_id = task.clone();
        self.db
            .read(move |c| {
                let sql = format!(
                    "SELECT {TASK_COLUMNS} FROM task_view WHERE task = ?1 AND (?2 IS NULL OR edge_id = ?2)
                     ORDER BY edge_id"
                );
                let rows: Vec<TaskRow> =
                    c.prepare_cached(&sql)?.query_map(params![task, edge], task_row)?.collect::<Result<_, _>>()?;
                if rows.len() > 1 {
                    return Ok(Err(rows.into_iter().map(|row| row.edge_id).collect::<Vec<_>>()));
                }
                let Some(row) = rows.into_iter().next() else { return Ok(Ok(None)) };
                let mut stmt = c.prepare_cached(
                    "SELECT e.edge_id, e.seq, e.ts_ms, e.kind, e.payload, e.hash FROM task_events t
                     JOIN audit_events e ON e.edge_id = t.edge_id AND e.seq = t.seq
                     WHERE t.task = ?1 AND t.edge_id = ?2 ORDER BY e.seq",
                )?;
                let events = stmt
                    .query_map([&task, &row.edge_id], |r| {
                        Ok(StoredEvent {
                            edge_id: r.get(0)?,
                            seq: r.get::<_, i64>(1)? as u64,
                            ts_ms: r.get(2)?,
                            kind: r.get(3)?,
                            payload: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or(Value::Null),
                            hash: hex::encode(r.get::<_, Vec<u8>>(5)?),
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(Ok(Some((row, events))))
            })
            .await?
            .map_err(|edges| crate::commands::LookupError::Ambiguous { id: task_id, edges })
    }

    /// Queued, running and waiting tasks per edge.
    pub async fn queue_depths(&self) -> Result<BTreeMap<String, u64>, DbError> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT edge_id, COUNT(*) FROM task_view WHERE state IN ('queued', 'running', 'waiting')
                     GROUP BY edge_id",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Per edge and tier: steps in the window that succeeded and that did
    /// not, from `task.step` events (the tier's health as the fleet saw it).
    pub async fn tier_health(&self, since_ms: i64) -> Result<BTreeMap<(String, String), (u64, u64)>, DbError> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT edge_id, payload FROM audit_events WHERE kind = 'task.step' AND ts_ms >= ?1",
                )?;
                let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
                let rows = stmt.query_map([since_ms], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    let (edge, payload) = row?;
                    let Ok(payload) = serde_json::from_str::<Value>(&payload) else { continue };
                    let Some(tier) = payload.get("tier").and_then(Value::as_str) else { continue };
                    let entry = out.entry((edge, tier.to_owned())).or_default();
                    // A step is `done` or `skipped`; anything else is a failure.
                    let status = payload.get("status").and_then(Value::as_str).unwrap_or("done");
                    if matches!(status, "done" | "skipped") {
                        entry.0 += 1;
                    } else {
                        entry.1 += 1;
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Metrics over tasks queued since `since_ms`.
    pub async fn metrics(&self, since_ms: i64) -> Result<Metrics, DbError> {
        self.db
            .read(move |c| {
                let sql = format!("SELECT {TASK_COLUMNS} FROM task_view WHERE created_ms >= ?1");
                let mut stmt = c.prepare_cached(&sql)?;
                let rows: Vec<TaskRow> = stmt.query_map([since_ms], task_row)?.collect::<Result<_, _>>()?;
                Ok(metrics_of(&rows))
            })
            .await
    }
}

/// Computes the figures for a set of tasks (pure, for tests).
pub fn metrics_of(rows: &[TaskRow]) -> Metrics {
    let mut by_agent: BTreeMap<String, Vec<&TaskRow>> = BTreeMap::new();
    let mut by_edge: BTreeMap<String, Vec<&TaskRow>> = BTreeMap::new();
    let mut metrics = Metrics::default();
    for row in rows {
        by_agent.entry(row.agent.clone()).or_default().push(row);
        by_edge.entry(row.edge_id.clone()).or_default().push(row);
        let day = day_of(row.created_ms);
        *metrics.cost_per_day.entry(day.clone()).or_default() += row.cost_usd;
        *metrics.tasks_per_day.entry(day).or_default() += 1;
    }
    metrics.by_agent = by_agent.into_iter().map(|(k, v)| (k, figures(&v))).collect();
    metrics.by_edge = by_edge.into_iter().map(|(k, v)| (k, figures(&v))).collect();
    metrics
}

fn figures(rows: &[&TaskRow]) -> Figures {
    let tasks = rows.len() as u64;
    let finished: Vec<&&TaskRow> = rows.iter().filter(|r| r.finished_ms.is_some()).collect();
    let mut latencies: Vec<i64> = rows
        .iter()
        .filter(|r| r.state == TaskState::Succeeded)
        .filter_map(|r| r.finished_ms.map(|f| f - r.created_ms))
        .collect();
    latencies.sort_unstable();
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let cost_usd: f64 = rows.iter().map(|r| r.cost_usd).sum();
    Figures {
        tasks,
        finished: finished.len() as u64,
        latency_p50_ms: percentile(&latencies, 0.50),
        latency_p95_ms: percentile(&latencies, 0.95),
        latency_p99_ms: percentile(&latencies, 0.99),
        cost_per_task_usd: if finished.is_empty() {
            0.0
        } else {
            finished.iter().map(|r| r.cost_usd).sum::<f64>() / finished.len() as f64
        },
        cost_usd,
        escalation_rate: share(rows.iter().filter(|r| r.escalations > 0).count(), rows.len()),
        intervention_rate: share(rows.iter().filter(|r| r.approvals > 0 || r.needs_review).count(), rows.len()),
        failure_rate: share(finished.iter().filter(|r| r.state == TaskState::Failed).count(), finished.len()),
        dead_letter_rate: share(finished.iter().filter(|r| r.state == TaskState::DeadLettered).count(), finished.len()),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// `YYYY-MM-DD` in UTC.
pub fn day_of(ts_ms: i64) -> String {
    let date =
        time::OffsetDateTime::from_unix_timestamp(ts_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(agent: &str, state: &str, latency: i64, cost: f64, escalations: u64, approvals: u64) -> TaskRow {
        TaskRow {
            edge_id: "e1".into(),
            task: format!("{agent}-{latency}"),
            agent: agent.into(),
            source: "api".into(),
            state: state.parse().expect("a task state"),
            created_ms: 86_400_000,
            updated_ms: 86_400_000 + latency,
            finished_ms: (state != "running").then_some(86_400_000 + latency),
            steps: 3,
            escalations,
            approvals,
            needs_review: false,
            cost_usd: cost,
            tokens: 10,
            detail: None,
        }
    }

    #[test]
    fn figures_count_rates_and_percentiles() {
        let mut rows: Vec<TaskRow> = (1..=100).map(|n| row("triage", "succeeded", n * 10, 0.01, 0, 0)).collect();
        rows.push(row("triage", "failed", 5, 0.0, 1, 0));
        rows.push(row("triage", "dead_lettered", 5, 0.0, 0, 1));
        rows.push(row("triage", "running", 5, 0.0, 0, 0));
        rows.push(row("content", "succeeded", 50, 0.5, 1, 1));
        let metrics = metrics_of(&rows);
        let triage = &metrics.by_agent["triage"];
        assert_eq!((triage.tasks, triage.finished), (103, 102));
        assert_eq!(triage.latency_p50_ms, Some(500));
        assert_eq!(triage.latency_p95_ms, Some(950));
        assert_eq!(triage.latency_p99_ms, Some(990));
        assert!((triage.failure_rate - 1.0 / 102.0).abs() < 1e-12);
        assert!((triage.dead_letter_rate - 1.0 / 102.0).abs() < 1e-12);
        assert!((triage.escalation_rate - 1.0 / 103.0).abs() < 1e-12);
        assert!((triage.intervention_rate - 1.0 / 103.0).abs() < 1e-12);
        assert!((triage.cost_per_task_usd - 1.0 / 102.0).abs() < 1e-12);
        let content = &metrics.by_agent["content"];
        assert_eq!((content.escalation_rate, content.intervention_rate), (1.0, 1.0));
        assert_eq!(metrics.by_edge["e1"].tasks, 104);
        assert_eq!(metrics.tasks_per_day["1970-01-02"], 104);
        assert!((metrics.cost_per_day["1970-01-02"] - 1.5).abs() < 1e-9);
    }

    #[tokio::test]
    async fn ingested_events_build_the_task_row_trace_and_tier_health() {
        let dir = tempfile::tempdir().unwrap();
        let store = CpStore::open(dir.path()).unwrap();
        let events = [
            ("task.queued", r#"{"task":"t1","agent":"triage","source":"control-plane"}"#),
            ("task.running", r#"{"task":"t1","agent":"triage","start":1}"#),
            (
                "task.step",
                r#"{"task":"t1","tier":"local","reason":"local output accepted","status":"done","tokens_in":10,"tokens_out":5,"cost_usd":0.0}"#,
            ),
            (
                "task.step",
                r#"{"task":"t1","tier":"large","reason":"escalated (low confidence)","status":"done","tokens_in":100,"tokens_out":50,"cost_usd":0.25}"#,
            ),
            ("task.step", r#"{"task":"t1","tier":"large","reason":"escalated","status":"failed","cost_usd":0.0}"#),
            ("approval.requested", r#"{"task":"t1","approval":"ap-1"}"#),
            ("memory.added", "not json at all"),
            ("task.succeeded", r#"{"task":"t1","agent":"triage","needs_review":true}"#),
        ];
        store
            .db
            .write(move |c| {
                for (seq, (kind, payload)) in events.iter().enumerate() {
                    let seq = seq as i64 + 1;
                    c.execute(
                        "INSERT INTO audit_events VALUES ('e1', ?1, ?2, ?3, ?4, x'00', x'00', 0)",
                        rusqlite::params![seq, 1000 + seq * 100, kind, payload],
                    )?;
                    let event = AuditEvent {
                        seq: seq as u64,
                        ts_ms: 1000 + seq * 100,
                        kind: (*kind).into(),
                        payload: (*payload).into(),
                        prev_hash: [0; 32],
                        hash: [0; 32],
                    };
                    project(c, "e1", &event)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let rows = store.tasks(TaskFilter { limit: 10, ..TaskFilter::default() }).await.unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.state.as_str(), row.steps, row.escalations, row.approvals), ("succeeded", 3, 2, 1));
        assert_eq!((row.tokens, row.needs_review, row.finished_ms), (165, true, Some(1800)));
        assert!((row.cost_usd - 0.25).abs() < 1e-9);
        let (_, trace) = store.task_trace("t1".into(), None).await.unwrap().unwrap();
        assert_eq!(trace.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 8]);
        let health = store.tier_health(0).await.unwrap();
        assert_eq!(health[&("e1".to_owned(), "local".to_owned())], (1, 0));
        assert_eq!(health[&("e1".to_owned(), "large".to_owned())], (1, 1));
        assert!(store.task_trace("nope".into(), None).await.unwrap().is_none());
    }

    #[test]
    fn percentiles_of_nothing_are_none() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.99), Some(7));
    }
}
