//! Model tiers as the bundle declares them, and the one place a step's model
//! call is made. Local tiers run on `aios_models` worker threads (loaded on
//! first use through the verified model store); remote tiers are
//! OpenAI-compatible endpoints reached with `crate::model_calls::cloud`. The choice
//! between them is `aios_shared::router::route`, a pure function; this module
//! keeps the state it reads (a breaker per tier, the budget ledger) and makes
//! the calls, retries and accounting.

//!
//! # Layout
//! - `mod.rs`: the tiers and their state; the outcome of a call.
//! - [`route`]: the routing loop shared by steps and gateway requests.
//! - [`budget`]: reservations, settlement and persisted spend.
//! - [`cloud`]: the client for remote tiers (OpenAI-compatible or Anthropic).
//! - `anthropic`: Anthropic's Messages API and its translation to OpenAI's shapes.
//! - `credential`: secrets loaded from the environment or a file, never printed.
//! - [`openai`]: the OpenAI HTTP API's wire types and an SSE decoder.
//! - [`tools`]: OpenAI's tool-calling wire format, streamed tool-call
//!   assembly, and translation to the agent loop's messages and replies.
//! - [`turn`]: one model turn of an agent step's tool-using loop.

mod anthropic;
mod budget;
pub mod cloud;
mod credential;
pub mod openai;
mod route;
pub mod tools;
mod turn;

pub use budget::{estimate_tokens, Charge, GatewayRefusal, GatewayRoute, RefusalKind, Settlement};
use budget::{usd_limit, Ledger};
pub use credential::constant_time_eq;
pub use turn::{AgentTurn, TurnError, TurnOutcome};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model_calls::cloud::{CloudClient, CloudConfig, Credential, Protocol};
use aios_models::{ChatModel, LoadOptions, ModelStore};
use aios_shared::agent::{Definitions, StepSpec, TierKind};
use aios_shared::router::{BreakerConfig, CircuitBreaker, RetryPolicy};
use serde_json::Value;
use tracing::{info, warn};

use crate::store::EdgeStore;
use crate::tasks::StepRecord;
use aios_daemon::clock::SharedClock;
use aios_daemon::db::DbError;

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
    /// The rendered subject of a classify step (what an escalation tier sees).
    pub subject: Option<String>,
    /// Escalate, for this reason, whatever the step says (a validation failure).
    pub force_escalation: Option<String>,
    /// What the task spent on earlier steps (for its budget after a restart).
    pub task_spent_usd: f64,
    /// The most the task may spend (its agent's budget, or what a caller
    /// handed it); `None`: no limit.
    pub task_budget_usd: Option<f64>,
    /// The most sensitive data the task has read (retrieved items): tiers
    /// not allowed to receive it are skipped.
    pub classification: Option<aios_shared::memory::Classification>,
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

/// Where an edge's model calls are made: the tiers of the bundle in force,
/// a breaker per tier, the budget ledger and the clients; cheap to clone.
/// (The routing table it consults is `aios_shared::router::Tiers`.)
#[derive(Clone)]
pub struct ModelCalls {
    inner: Arc<Inner>,
}

struct Inner {
    models: ModelStore,
    load: LoadOptions,
    store: Option<EdgeStore>,
    definitions: Mutex<Arc<Definitions>>,
    local: tokio::sync::Mutex<HashMap<String, ChatModel>>,
    /// Clients of the remote tiers, or why one cannot be built.
    remote: Mutex<HashMap<String, Result<CloudClient, String>>>,
    /// One breaker per tier name; they outlive bundle changes.
    breakers: Mutex<HashMap<String, CircuitBreaker>>,
    ledger: Mutex<Ledger>,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    remote_calls: AtomicU64,
    /// Where breakers and budget days read the time.
    clock: SharedClock,
}

impl ModelCalls {
    /// Model calls that load local models from `models` and, with a store, keep
    /// each agent's daily spending across restarts.
    pub fn new(models: ModelStore, load: LoadOptions, store: Option<EdgeStore>, clock: SharedClock) -> ModelCalls {
        ModelCalls {
            inner: Arc::new(Inner {
                models,
                load,
                store,
                definitions: Mutex::new(Arc::new(Definitions::default())),
                local: tokio::sync::Mutex::new(HashMap::new()),
                remote: Mutex::new(HashMap::new()),
                breakers: Mutex::new(HashMap::new()),
                ledger: Mutex::new(Ledger::default()),
                retry: RetryPolicy::default(),
                breaker: BreakerConfig { failure_threshold: 3, cool_down: Duration::from_secs(30) },
                remote_calls: AtomicU64::new(0),
                clock,
            }),
        }
    }

    /// Takes the tiers of a newly applied bundle: remote clients are built
    /// now (a missing credential is reported when the tier is routed to).
    pub fn configure(&self, definitions: &Arc<Definitions>) {
        let mut remote = HashMap::new();
        for (name, spec) in &definitions.tiers {
            let protocol = match spec.kind {
                TierKind::Local => continue,
                TierKind::Openai => Protocol::OpenAi,
                TierKind::Anthropic => Protocol::Anthropic,
            };
            let client = match spec.credential.as_deref().map(Credential::load).transpose() {
                Err(err) => Err(format!("tier `{name}`: {err}")),
                Ok(credential) => CloudClient::new(CloudConfig {
                    protocol,
                    stream: spec.stream,
                    base_url: spec.base_url.clone().unwrap_or_default(),
                    model: spec.model.clone(),
                    timeout: Duration::from_millis(spec.timeout_ms()),
                    credential,
                })
                .map_err(|err| format!("tier `{name}`: {err}")),
            };
            if let Err(problem) = &client {
                warn!(%problem, "remote tier unusable");
            }
            remote.insert(name.clone(), client);
        }
        *self.inner.remote.lock().expect("tiers lock") = remote;
        *self.inner.definitions.lock().expect("tiers lock") = definitions.clone();
    }

    fn definitions(&self) -> Arc<Definitions> {
        self.inner.definitions.lock().expect("tiers lock").clone()
    }

    /// Where local models come from and how they load (the memory plane's
    /// embedder uses the same).
    pub fn model_source(&self) -> (ModelStore, LoadOptions) {
        (self.inner.models.clone(), self.inner.load.clone())
    }

    /// Calls made to remote tiers by this process (attempts included).
    pub fn remote_calls(&self) -> u64 {
        self.inner.remote_calls.load(Ordering::Relaxed)
    }

    /// Each tier's breaker state, by name.
    pub fn breaker_states(&self) -> Vec<(String, String)> {
        let breakers = self.inner.breakers.lock().expect("tiers lock");
        let mut states: Vec<(String, String)> =
            breakers.iter().map(|(name, b)| (name.clone(), format!("{:?}", b.state()))).collect();
        states.sort();
        states
    }

    /// Refuses every model call while the kill switch is at `all`: a task's
    /// step waits (as for a tier that is down) until an operator lifts it.
    pub fn check_not_halted(&self) -> Result<(), ModelCallError> {
        match &self.inner.store {
            Some(store) if store.halted() => Err(ModelCallError::Unavailable(
                "the kill switch is at `all`: no model is called until an operator lifts it".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The chat model of local tier `tier`, loaded on first use.
    pub async fn local_model(&self, tier: &str) -> Result<ChatModel, ModelCallError> {
        self.check_not_halted()?;
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

    /// The tiers the bundle lets gateway callers name as `model`.
    pub fn gateway_tiers(&self) -> Vec<String> {
        self.definitions().gateway.tiers.clone()
    }
}

/// The account gateway requests are charged to; no agent can have this name.
pub const GATEWAY_ACCOUNT: &str = "@gateway";

#[cfg(test)]
mod tests;
