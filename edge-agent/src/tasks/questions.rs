//! Questions an agent step's model puts to a person with `ask_human`: the
//! call's key (its place in the loop) identifies the question, so a resumed
//! run asks it once; the task waits until someone answers, and the answer
//! is the call's result. Asking and answering are audit events
//! (`question.asked`, `question.answered`).

use aios_shared::audit::kinds;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::{append_event, EdgeStore};
use crate::sync::identity::Identity;
use aios_daemon::db::DbError;

/// The longest answer kept.
pub const MAX_ANSWER_BYTES: usize = 4000;

/// A question and, once given, its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// The asking call's key.
    pub key: String,
    /// The task that waits for it.
    pub task_id: String,
    /// The agent that asked.
    pub agent: String,
    /// What the model asked.
    pub question: String,
    /// The answer, once given.
    pub answer: Option<String>,
    /// Who answered.
    pub answered_by: Option<String>,
    /// When it was asked.
    pub asked_ms: i64,
    /// When it was answered.
    pub answered_ms: Option<i64>,
}

const COLUMNS: &str = "key, task_id, agent, question, answer, answered_by, asked_ms, answered_ms";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Question> {
    Ok(Question {
        key: row.get(0)?,
        task_id: row.get(1)?,
        agent: row.get(2)?,
        question: row.get(3)?,
        answer: row.get(4)?,
        answered_by: row.get(5)?,
        asked_ms: row.get(6)?,
        answered_ms: row.get(7)?,
    })
}

fn read(conn: &Connection, key: &str) -> Result<Option<Question>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM questions WHERE key = ?1");
    Ok(conn.query_row(&sql, [key], from_row).optional()?)
}

impl EdgeStore {
    /// The question asked by call `key`, if it was asked.
    pub async fn question(&self, key: &str) -> Result<Option<Question>, DbError> {
        let key = key.to_owned();
        self.db.read(move |conn| read(conn, &key)).await
    }

    /// Questions of `task_id` (every task's open ones when `None`), oldest first.
    pub async fn questions(&self, task_id: Option<&str>) -> Result<Vec<Question>, DbError> {
        let task_id = task_id.map(str::to_owned);
        self.db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM questions
                     WHERE (?1 IS NULL AND answer IS NULL) OR task_id = ?1 ORDER BY asked_ms, key"
                );
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map([task_id], from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Records that call `key` of `task_id` asks `question` (once: asking
    /// again returns the question as it stands).
    pub async fn ask(
        &self,
        identity: &Identity,
        key: &str,
        task_id: &str,
        agent: &str,
        question: &str,
        now_ms: i64,
    ) -> Result<Question, DbError> {
        let identity = identity.clone();
        let asked = Question {
            key: key.to_owned(),
            task_id: task_id.to_owned(),
            agent: agent.to_owned(),
            question: question.to_owned(),
            answer: None,
            answered_by: None,
            asked_ms: now_ms,
            answered_ms: None,
        };
        self.db
            .write(move |conn| {
                if let Some(existing) = read(conn, &asked.key)? {
                    return Ok(existing);
                }
                conn.execute(
                    "INSERT INTO questions (key, task_id, agent, question, asked_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![asked.key, asked.task_id, asked.agent, asked.question, asked.asked_ms],
                )?;
                let payload = json!({
                    "task": asked.task_id,
                    "agent": asked.agent,
                    "key": asked.key,
                    "question": asked.question,
                });
                append_event(conn, &identity, now_ms, kinds::QUESTION_ASKED, &payload.to_string())?;
                Ok(asked)
            })
            .await
    }

    /// Answers the open question of `task_id` and makes the task due; `Err`
    /// says why not (no open question, an empty or oversized answer).
    pub async fn answer(
        &self,
        identity: &Identity,
        task_id: &str,
        answer: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Result<Question, String>, DbError> {
        let identity = identity.clone();
        let (task_id, by) = (task_id.to_owned(), by.to_owned());
        let answer = match checked_answer(answer) {
            Ok(answer) => answer,
            Err(problem) => return Ok(Err(problem)),
        };
        self.db
            .write(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM questions WHERE task_id = ?1 AND answer IS NULL ORDER BY asked_ms LIMIT 1"
                );
                let Some(question) = conn.query_row(&sql, [&task_id], from_row).optional()? else {
                    return Ok(Err(format!("task {task_id} has no open question")));
                };
                Ok(Ok(record_answer(conn, &identity, question, answer, by, now_ms)?))
            })
            .await
    }
}

/// An answer as it is stored (trimmed), or why it cannot be.
pub fn checked_answer(answer: &str) -> Result<String, String> {
    let answer = answer.trim();
    if answer.is_empty() {
        return Err("the answer is empty".into());
    }
    if answer.len() > MAX_ANSWER_BYTES {
        return Err(format!("the answer is longer than {MAX_ANSWER_BYTES} bytes"));
    }
    Ok(answer.to_owned())
}

/// Answers question `key` of `task_id` inside the caller's transaction (an
/// operator's command from the control plane); `Err` says why not.
pub(crate) fn answer_in(
    conn: &Connection,
    identity: &Identity,
    (task_id, key): (&str, &str),
    answer: &str,
    by: &str,
    now_ms: i64,
) -> Result<Result<Question, String>, DbError> {
    let answer = match checked_answer(answer) {
        Ok(answer) => answer,
        Err(problem) => return Ok(Err(problem)),
    };
    let Some(question) = read(conn, key)?.filter(|q| q.task_id == task_id) else {
        return Ok(Err(format!("task {task_id} has no question {key}")));
    };
    if let Some(by) = &question.answered_by {
        return Ok(Err(format!("question {key} was already answered by {by}")));
    }
    Ok(Ok(record_answer(conn, identity, question, answer, by.to_owned(), now_ms)?))
}

/// Stores the answer with its audit event and makes the task due.
fn record_answer(
    conn: &Connection,
    identity: &Identity,
    mut question: Question,
    answer: String,
    by: String,
    now_ms: i64,
) -> Result<Question, DbError> {
    conn.execute(
        "UPDATE questions SET answer = ?2, answered_by = ?3, answered_ms = ?4 WHERE key = ?1",
        params![question.key, answer, by, now_ms],
    )?;
    conn.execute(
        "UPDATE tasks SET not_before_ms = ?2 WHERE id = ?1 AND state = 'waiting'",
        params![question.task_id, now_ms],
    )?;
    let payload = json!({ "task": question.task_id, "key": question.key, "by": by, "answer": answer });
    append_event(conn, identity, now_ms, kinds::QUESTION_ANSWERED, &payload.to_string())?;
    question.answer = Some(answer);
    question.answered_by = Some(by);
    question.answered_ms = Some(now_ms);
    Ok(question)
}
