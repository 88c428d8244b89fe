//! The memory steps of an agent (`retrieve`, `record_get`, `record_put`) and
//! the input of a model step's working context, as the runtime calls them.
//! Templates are rendered by the runtime's closure, so this module sees only
//! rendered text.

use std::collections::{BTreeMap, HashMap};

use aios_shared::agent::{AgentSpec, StepAction, StepSpec};
use serde_json::{json, Map, Value};

use super::{ContextInput, Memory, MemoryError, SearchRequest};
use aios_daemon::db::DbError;

/// Default number of items a retrieve step returns.
pub const DEFAULT_TOP_K: u32 = 5;
/// Default minimum score of a retrieve step.
pub const DEFAULT_MIN_SCORE: f32 = 0.25;

/// What a memory step produced.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// The step's output document.
    pub output: Value,
    /// The value later conditions compare.
    pub value: Option<String>,
}

/// Why a memory step produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The step cannot succeed (a refused namespace, a version conflict, a bad template).
    #[error("{0}")]
    Failed(String),
    /// The database failed; the task resumes at this step later.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<MemoryError> for StepError {
    fn from(err: MemoryError) -> Self {
        match err {
            MemoryError::Db(err) => StepError::Db(err),
            other => StepError::Failed(other.to_string()),
        }
    }
}

/// Runs a retrieve, record_get or record_put step of `agent` for task
/// `task_id`. The agent's memory access is checked again here, against the
/// bundle in force, whatever was checked at publish.
pub async fn run_memory_step(
    memory: &Memory,
    task_id: &str,
    agent: &AgentSpec,
    step: &StepSpec,
    seq: usize,
    render: &(dyn Fn(&str) -> Result<String, String> + Sync),
    now_ms: i64,
) -> Result<StepResult, StepError> {
    let (namespace, writes) = match &step.action {
        StepAction::Retrieve(retrieve) => (&retrieve.namespace, false),
        StepAction::RecordGet(get) => (&get.namespace, false),
        StepAction::RecordPut(put) => (&put.namespace, true),
        other => return Err(StepError::Failed(format!("a {} step is not a memory step", other.kind().as_str()))),
    };
    let namespace = namespace.clone().unwrap_or_default();
    let access = &agent.memory;
    let allowed = if writes { access.may_write(&namespace) } else { access.may_read(&namespace) };
    if !allowed {
        return Err(StepError::Failed(format!("the agent may not use memory namespace `{namespace}`")));
    }
    match &step.action {
        StepAction::Retrieve(retrieve) => {
            let query = render(retrieve.prompt.as_deref().unwrap_or_default()).map_err(StepError::Failed)?;
            let mut filter = BTreeMap::new();
            for (key, template) in &retrieve.filter {
                filter.insert(key.clone(), render(template).map_err(StepError::Failed)?);
            }
            let request = SearchRequest {
                query,
                namespaces: vec![namespace.clone()],
                classifications: access.classifications.clone(),
                filter,
                top_k: retrieve.top_k.unwrap_or(DEFAULT_TOP_K) as usize,
                min_score: retrieve.min_score.unwrap_or(DEFAULT_MIN_SCORE),
                keyword_weight: retrieve.keyword_weight.unwrap_or(0.0),
            };
            let hits = memory.search(&request, now_ms).await?;
            memory.record_retrieval(task_id, &step.id, &request, &hits, now_ms).await?;
            let items: Vec<Value> = hits
                .iter()
                .map(|h| {
                    json!({
                        "id": h.id,
                        "version": h.version,
                        "text": h.text,
                        "score": h.score,
                        "similarity": h.similarity,
                        "keyword": h.keyword,
                        "classification": h.classification,
                        "metadata": h.metadata,
                        "provenance": h.provenance,
                    })
                })
                .collect();
            Ok(StepResult {
                value: Some(items.len().to_string()),
                output: json!({ "query": request.query, "namespace": namespace, "model": memory.model_id(), "items": items }),
            })
        }
        StepAction::RecordGet(get) => {
            let key = render(get.key.as_deref().unwrap_or_default()).map_err(StepError::Failed)?;
            let record = memory.record(&namespace, &key).await?;
            let value = record.as_ref().map(|r| value_text(&r.value));
            let output = match record {
                Some(r) => json!({
                    "namespace": namespace, "key": key, "found": true, "value": r.value, "version": r.version,
                    "updated_ms": r.updated_ms, "updated_by": r.updated_by,
                }),
                None => json!({ "namespace": namespace, "key": key, "found": false, "value": null, "version": 0 }),
            };
            Ok(StepResult { output, value })
        }
        StepAction::RecordPut(put) => {
            let key = render(put.key.as_deref().unwrap_or_default()).map_err(StepError::Failed)?;
            let text = render(put.value.as_deref().unwrap_or_default()).map_err(StepError::Failed)?;
            let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            let expect = match &put.expect_version {
                None => None,
                Some(template) => {
                    let rendered = render(template).map_err(StepError::Failed)?;
                    let rendered = rendered.trim();
                    if rendered.is_empty() {
                        None
                    } else {
                        Some(rendered.parse::<u64>().map_err(|_| {
                            StepError::Failed(format!("expect_version rendered as `{rendered}`, not a version number"))
                        })?)
                    }
                }
            };
            let subject = match &put.subject {
                Some(template) => Some(render(template).map_err(StepError::Failed)?).filter(|s| !s.trim().is_empty()),
                None => None,
            };
            let writer = format!("task:{task_id}:{seq}");
            let record =
                memory.put_record(&namespace, &key, value, expect, &writer, subject.as_deref(), now_ms).await?;
            Ok(StepResult {
                value: Some("written".into()),
                output: json!({
                    "namespace": namespace, "key": key, "value": record.value, "version": record.version,
                    "expected": expect,
                }),
            })
        }
        other => Err(StepError::Failed(format!("a {} step is not a memory step", other.kind().as_str()))),
    }
}

/// The material of step `seq`'s working context: the task input, the
/// results of the earlier steps that ran (their values, or their outputs),
/// and the items earlier retrieve steps returned.
pub fn context_input(
    agent: &AgentSpec,
    seq: usize,
    input: &Value,
    outputs: &Map<String, Value>,
    values: &HashMap<String, String>,
) -> ContextInput {
    let input_text = match input.get("text").and_then(Value::as_str) {
        Some(text) if input.as_object().is_some_and(|o| o.len() == 1) => text.to_owned(),
        _ => input.to_string(),
    };
    let mut results = Vec::new();
    let mut retrieved: Vec<(String, String, f32)> = Vec::new();
    for step in agent.steps.iter().take(seq) {
        let Some(output) = outputs.get(&step.id) else { continue };
        if output.get("skipped").is_some() {
            continue;
        }
        if matches!(step.action, StepAction::Retrieve(_)) {
            for item in output["items"].as_array().into_iter().flatten() {
                let id = item["id"].as_str().unwrap_or_default().to_owned();
                if !retrieved.iter().any(|r| r.0 == id) {
                    let text = item["text"].as_str().unwrap_or_default().to_owned();
                    retrieved.push((id, text, item["score"].as_f64().unwrap_or(0.0) as f32));
                }
            }
            continue;
        }
        let text = values.get(&step.id).cloned().unwrap_or_else(|| output.to_string());
        results.push((step.id.clone(), text));
    }
    retrieved.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    ContextInput { input: input_text, results, retrieved }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
