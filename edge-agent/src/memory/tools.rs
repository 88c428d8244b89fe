//! The memory tools of an agent step's loop (`retrieve`, `remember`,
//! `record_get`, `record_put`): the model's arguments, already checked
//! against the tool's schema, become a search, an item with the task as its
//! provenance, or a record read or written.
//!
//! Each call is re-checked against the agent's memory access in force (a
//! refusal goes back to the model), and each is safe to run again after a
//! crash between doing it and journaling it: reads are reads, a remembered
//! item's id derives from the call's place in the loop (a second run finds
//! it), and a record write that this call already made is recognised by its
//! writer.

use aios_shared::agent::tool_loop::ToolRef;
use aios_shared::agent::AgentSpec;
use aios_shared::memory::Classification;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::steps::{DEFAULT_MIN_SCORE, DEFAULT_TOP_K};
use super::{Memory, MemoryError, NewItem, Provenance, SearchRequest};
use aios_daemon::db::DbError;

/// One memory tool call.
pub struct MemoryCall<'a> {
    /// The task.
    pub task_id: &'a str,
    /// The agent's name.
    pub agent_name: &'a str,
    /// Its definition (its memory access).
    pub agent: &'a AgentSpec,
    /// The call's step id (`step#turn.call`), for provenance and retrievals.
    pub step_id: &'a str,
    /// The call's key (task, step, turn, call).
    pub key: &'a str,
    /// The tool.
    pub tool: &'a ToolRef,
    /// The model's arguments, valid against the tool's schema.
    pub arguments: &'a Value,
    /// The most sensitive data the loop has seen so far; what it remembers
    /// is classified at least this high.
    pub seen: Option<Classification>,
}

/// Why a memory call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The agent may not do this (told to the model).
    #[error("{0}")]
    Refused(String),
    /// It could not be done (told to the model).
    #[error("{0}")]
    Failed(String),
    /// The database failed; the task resumes at this call later.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<MemoryError> for ToolError {
    fn from(err: MemoryError) -> Self {
        match err {
            MemoryError::Db(err) => ToolError::Db(err),
            other => ToolError::Failed(other.to_string()),
        }
    }
}

/// The id of the item call `key` remembers.
pub fn remembered_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("agent-{hex}")
}

fn text<'v>(arguments: &'v Value, name: &str) -> &'v str {
    arguments[name].as_str().unwrap_or_default()
}

/// Runs one memory tool call; the result is what the model observes.
pub async fn run_memory_tool(memory: &Memory, call: &MemoryCall<'_>, now_ms: i64) -> Result<Value, ToolError> {
    let Some((namespace, writes)) = call.tool.memory_namespace() else {
        return Err(ToolError::Failed(format!("tool `{}` is not a memory tool", call.tool.name())));
    };
    let access = &call.agent.memory;
    if !(if writes { access.may_write(namespace) } else { access.may_read(namespace) }) {
        let right = if writes { "write" } else { "read" };
        return Err(ToolError::Refused(format!("the agent may not {right} memory namespace `{namespace}`")));
    }
    let arguments = call.arguments;
    match call.tool {
        ToolRef::Retrieve { top_k, .. } => {
            let request = SearchRequest {
                query: text(arguments, "query").to_owned(),
                namespaces: vec![namespace.to_owned()],
                classifications: access.classifications.clone(),
                filter: Default::default(),
                top_k: top_k.unwrap_or(DEFAULT_TOP_K) as usize,
                min_score: DEFAULT_MIN_SCORE,
                keyword_weight: 0.0,
            };
            let hits = memory.search(&request, now_ms).await?;
            memory.record_retrieval(call.task_id, call.step_id, &request, &hits, now_ms).await?;
            let items: Vec<Value> = hits
                .iter()
                .map(|hit| {
                    json!({
                        "id": hit.id, "text": hit.text, "score": hit.score,
                        "classification": hit.classification, "source": hit.provenance.source,
                    })
                })
                .collect();
            Ok(json!({ "namespace": namespace, "items": items }))
        }
        ToolRef::Remember { classification, .. } => {
            let id = remembered_id(call.key);
            if let Some(item) = memory.show(&id).await? {
                return Ok(json!({ "remembered": item.id, "namespace": item.namespace, "version": item.version }));
            }
            let own = classification.unwrap_or(Classification::Internal);
            let classification = call.seen.map_or(own, |seen| own.max(seen));
            let subjects = arguments["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            let item = NewItem {
                id: Some(id),
                namespace: namespace.to_owned(),
                text: text(arguments, "text").to_owned(),
                metadata: json!({ "task": call.task_id, "agent": call.agent_name }),
                classification,
                subjects,
                provenance: Provenance {
                    added_by: format!("agent:{}", call.agent_name),
                    source: format!("task:{}/{}", call.task_id, call.step_id),
                    task_id: Some(call.task_id.to_owned()),
                    reason: arguments["reason"].as_str().map(str::to_owned),
                    created_ms: now_ms,
                },
                expires_ms: None,
            };
            let added = memory.add(vec![item], now_ms).await?;
            let added = added.first().ok_or_else(|| ToolError::Failed("nothing was remembered".into()))?;
            Ok(json!({ "remembered": added.id, "namespace": namespace, "version": added.version,
                       "classification": classification }))
        }
        ToolRef::RecordGet { .. } => {
            let key = text(arguments, "key");
            Ok(match memory.record(namespace, key).await? {
                Some(r) => json!({ "key": key, "found": true, "value": r.value, "version": r.version }),
                None => json!({ "key": key, "found": false, "value": null, "version": 0 }),
            })
        }
        ToolRef::RecordPut { .. } => {
            let key = text(arguments, "key");
            let writer = format!("task:{}:{}", call.task_id, call.step_id);
            if let Some(done) = memory.record(namespace, key).await?.filter(|r| r.updated_by == writer) {
                return Ok(json!({ "key": key, "written": true, "version": done.version }));
            }
            let expect = arguments["expect_version"].as_u64();
            let value = arguments["value"].clone();
            let written = memory.put_record(namespace, key, value, expect, &writer, None, now_ms).await?;
            Ok(json!({ "key": key, "written": true, "version": written.version }))
        }
        ToolRef::Connector { .. } | ToolRef::AskHuman | ToolRef::Handoff { .. } => {
            unreachable!("memory_namespace is None for these")
        }
    }
}
