//! Model tiers as the bundle declares them, and the one place a step's model
//! call is made: local tiers run on `aios_models` worker threads (loaded on
//! first use through the verified model store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aios_models::{
    ChatMessage, ChatModel, GenerateRequest, LoadOptions, ModelError, ModelStore, Prompt, SamplingParams,
};
use aios_shared::agent::{Definitions, StepKind, StepSpec, TierKind};
use serde_json::{json, Value};
use tracing::info;

use crate::db::DbError;
use crate::tasks::StepRecord;

/// One model call a step asks for.
#[derive(Debug)]
pub struct StepCall<'a> {
    /// The agent running the step.
    pub agent: &'a str,
    /// The task.
    pub task: &'a str,
    /// The step definition.
    pub step: &'a StepSpec,
    /// The rendered prompt.
    pub prompt: String,
    /// The rendered system message.
    pub system: Option<String>,
    /// Escalate, for this reason, whatever the step says (a validation failure).
    pub force_escalation: Option<String>,
}

/// What a model call produced and what it cost.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The tier that answered.
    pub tier: Option<String>,
    /// Why that tier.
    pub reason: String,
    /// The step's output document.
    pub output: Value,
    /// The value conditions compare (label or text).
    pub value: Option<String>,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// US dollars.
    pub cost_usd: f64,
    /// Confidence of a scored choice.
    pub confidence: Option<f64>,
    /// A fallback answered; a human should look.
    pub needs_review: bool,
    /// The call's id.
    pub call_id: String,
}

impl CallOutcome {
    /// Copies the outcome into a step record.
    pub fn fill(&self, record: &mut StepRecord) {
        record.tier = self.tier.clone();
        record.reason = Some(self.reason.clone());
        record.output = self.output.clone();
        record.value = self.value.clone();
        record.tokens_in = self.tokens_in;
        record.tokens_out = self.tokens_out;
        record.cost_usd = self.cost_usd;
        record.confidence = self.confidence;
        record.needs_review = self.needs_review;
        record.call_id = Some(self.call_id.clone());
    }
}

/// Why a model call produced no outcome.
#[derive(Debug, thiserror::Error)]
pub enum ModelCallError {
    /// The step cannot succeed (a prompt longer than the context, a bad request).
    #[error("{0}")]
    Fatal(String),
    /// No tier can serve it now; the task waits and tries again.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The tiers of the bundle in force; cheap to clone.
#[derive(Clone)]
pub struct Tiers {
    inner: Arc<TiersInner>,
}

struct TiersInner {
    models: ModelStore,
    load: LoadOptions,
    definitions: Mutex<Arc<Definitions>>,
    local: tokio::sync::Mutex<HashMap<String, ChatModel>>,
}

impl Tiers {
    /// Tiers that load local models from `models`.
    pub fn new(models: ModelStore, load: LoadOptions) -> Tiers {
        Tiers {
            inner: Arc::new(TiersInner {
                models,
                load,
                definitions: Mutex::new(Arc::new(Definitions::default())),
                local: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes the tiers of a newly applied bundle.
    pub fn configure(&self, definitions: &Arc<Definitions>) {
        *self.inner.definitions.lock().expect("tiers lock") = definitions.clone();
    }

    fn definitions(&self) -> Arc<Definitions> {
        self.inner.definitions.lock().expect("tiers lock").clone()
    }

    /// The chat model of local tier `tier`, loaded on first use.
    pub async fn local_model(&self, tier: &str) -> Result<ChatModel, ModelCallError> {
        let defs = self.definitions();
        let spec =
            defs.tiers.get(tier).ok_or_else(|| ModelCallError::Fatal(format!("tier `{tier}` is not declared")))?;
        if spec.kind != TierKind::Local {
            return Err(ModelCallError::Fatal(format!("tier `{tier}` is not local")));
        }
        let mut loaded = self.inner.local.lock().await;
        if let Some(model) = loaded.get(&spec.model) {
            return Ok(model.clone());
        }
        info!(tier, model = %spec.model, "loading the local model");
        let model = ChatModel::load(&self.inner.models, &spec.model, &self.inner.load)
            .await
            .map_err(|err| ModelCallError::Unavailable(format!("local tier `{tier}` cannot load: {err}")))?;
        loaded.insert(spec.model.clone(), model.clone());
        Ok(model)
    }

    /// Runs a step's model call on the tier the routing picks.
    pub async fn run(&self, call: StepCall<'_>, call_id: &str) -> Result<CallOutcome, ModelCallError> {
        let defs = self.definitions();
        let agent = defs
            .agents
            .get(call.agent)
            .ok_or_else(|| ModelCallError::Fatal(format!("agent `{}` is not defined", call.agent)))?;
        let tier = agent.local_tier.clone();
        let model = self.local_model(&tier).await?;
        let mut outcome = run_local(&model, &call, call_id).await?;
        outcome.tier = Some(tier);
        let wanted = call
            .force_escalation
            .clone()
            .or_else(|| call.step.escalates_by_default().then(|| format!("{} steps escalate", call.step.kind.as_str())))
            .or_else(|| {
                outcome
                    .confidence
                    .filter(|c| (*c as f32) < call.step.threshold())
                    .map(|c| format!("confidence {c:.2} below threshold {:.2}", call.step.threshold()))
            });
        outcome.reason = match wanted {
            None => "local model (low risk, confident)".into(),
            Some(why) => {
                outcome.needs_review = true;
                format!("{why}; no escalation tier: local result marked for review")
            }
        };
        Ok(outcome)
    }
}

fn model_error(err: ModelError) -> ModelCallError {
    match err {
        ModelError::PromptTooLong { .. } | ModelError::InvalidRequest(_) | ModelError::Template(_) => {
            ModelCallError::Fatal(err.to_string())
        }
        other => ModelCallError::Unavailable(format!("local model failed: {other}")),
    }
}

/// A seed derived from the call, so sampled output is reproducible.
fn seed_for(task: &str, step: &str) -> u64 {
    task.bytes().chain(step.bytes()).fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

async fn run_local(model: &ChatModel, call: &StepCall<'_>, call_id: &str) -> Result<CallOutcome, ModelCallError> {
    let step = call.step;
    let mut outcome = CallOutcome {
        tier: None,
        reason: String::new(),
        output: Value::Null,
        value: None,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
        confidence: None,
        needs_review: false,
        call_id: call_id.to_owned(),
    };
    match step.kind {
        StepKind::Classify => {
            let candidates = step.labels.iter().map(|l| format!(" {l}")).collect();
            let scored = model.score(Prompt::Text(call.prompt.clone()), candidates).await.map_err(model_error)?;
            let best = &step.labels[scored.best];
            let confidence = scored.best().confidence;
            let scores: serde_json::Map<String, Value> = step
                .labels
                .iter()
                .zip(&scored.candidates)
                .map(|(label, c)| (label.clone(), json!({ "confidence": c.confidence, "log_prob": c.log_prob })))
                .collect();
            outcome.output = json!({ "label": best, "confidence": confidence, "scores": scores });
            outcome.value = Some(best.clone());
            outcome.confidence = Some(confidence);
            outcome.tokens_in = scored.prompt_tokens as u64;
        }
        _ => {
            let mut messages = Vec::new();
            if let Some(system) = &call.system {
                messages.push(ChatMessage::system(system.clone()));
            }
            messages.push(ChatMessage::user(call.prompt.clone()));
            let mut request = GenerateRequest::chat(messages, step.max_tokens() as usize);
            if let Some(temperature) = step.temperature.filter(|t| *t > 0.0) {
                request.sampling =
                    SamplingParams { temperature, seed: seed_for(call.task, &step.id), ..SamplingParams::default() };
            }
            let generation = model.generate(request).await.map_err(model_error)?;
            let text = generation.text.trim().to_owned();
            outcome.output = json!({ "text": text, "finish_reason": generation.finish_reason });
            outcome.value = Some(text);
            outcome.tokens_in = generation.prompt_tokens as u64;
            outcome.tokens_out = generation.completion_tokens as u64;
        }
    }
    Ok(outcome)
}
