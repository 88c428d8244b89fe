//! Model tiers as the bundle declares them, and the one place a step's model
//! call is made. Local tiers run on `aios_models` worker threads (loaded on
//! first use through the verified model store); remote tiers are
//! OpenAI-compatible endpoints reached with `crate::model_calls::cloud`. The choice
//! between them is `aios_shared::router::route`, a pure function; this module
//! keeps the state it reads (a breaker per tier, the budget ledger) and makes
//! the calls, retries and accounting.

pub mod cloud;
pub mod openai;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model_calls::cloud::{ChatCompletion, CloudClient, CloudConfig, CloudError, Credential};
use crate::model_calls::openai::{ChatCompletionRequest, WireMessage};
use aios_models::{
    ChatMessage, ChatModel, GenerateRequest, LoadOptions, ModelError, ModelStore, Prompt, SamplingParams,
};
use aios_shared::agent::{Definitions, Risk, StepKind, StepSpec, TierKind};
use aios_shared::router::{
    self, day_of, AirGap, BreakerConfig, BudgetKey, BudgetLedger, BudgetLimits, CircuitBreaker, MicroUsd, Permit,
    Price, ReservationId, RetryPolicy, RiskClass, RouteInput, RouteReason, RouteTarget, TierHealth, TierId, TokenCount,
    Validation,
};
use serde_json::{json, Value};
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

/// The budget ledger and which accounts were seeded from the database.
#[derive(Default)]
struct Ledger {
    ledger: BudgetLedger,
    seeded_days: HashSet<(String, i64)>,
    seeded_tasks: HashSet<String>,
}

impl Tiers {
    /// Tiers that load local models from `models` and, with a store, keep
    /// each agent's daily spending across restarts.
    pub fn new(models: ModelStore, load: LoadOptions, store: Option<EdgeStore>, clock: SharedClock) -> Tiers {
        Tiers {
            inner: Arc::new(TiersInner {
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
            if spec.kind != TierKind::Openai {
                continue;
            }
            let client = match spec.credential.as_deref().map(Credential::load).transpose() {
                Err(err) => Err(format!("tier `{name}`: {err}")),
                Ok(credential) => CloudClient::new(CloudConfig {
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

    /// Runs a step's model call on the tier the router picks: the local
    /// model first (unless the step escalates by default or a validation
    /// failure forces it), then escalation tiers in order when the router
    /// says so, with retries, breakers and budgets, and the local model with
    /// the result marked for review when no escalation tier can answer.
    pub async fn run(&self, call: StepCall<'_>, call_id: &str) -> Result<CallOutcome, ModelCallError> {
        let defs = self.definitions();
        let agent = defs
            .agents
            .get(call.agent)
            .ok_or_else(|| ModelCallError::Fatal(format!("agent `{}` is not defined", call.agent)))?;
        let key = BudgetKey {
            task: call.task.to_owned(),
            agent: call.agent.to_owned(),
            day: day_of(self.inner.clock.unix_ms()),
        };
        let limits =
            BudgetLimits { task: usd_limit(agent.budget.per_task_usd), agent_day: usd_limit(agent.budget.per_day_usd) };
        self.seed_day(&key.agent, key.day).await?;
        self.seed_task(&key, call.task_spent_usd);

        let kind_escalates = call.step.escalates_by_default() || call.force_escalation.is_some();
        let mut local: Option<CallOutcome> = None;
        let mut local_down: Option<String> = None;
        if !kind_escalates {
            match self.run_on_local(&agent.local_tier, &call, call_id).await {
                Ok(outcome) => local = Some(outcome),
                Err(ModelCallError::Unavailable(why)) => local_down = Some(why),
                Err(other) => return Err(other),
            }
        }
        let request = RouteRequest {
            local: agent.local_tier.clone(),
            local_available: local_down.is_none(),
            chain: &agent.escalate_to,
            key,
            limits,
            kind_escalates,
            requested: false,
            risk: match call.step.risk {
                Risk::Low => RiskClass::Low,
                Risk::Medium => RiskClass::Medium,
                Risk::High => RiskClass::High,
            },
            local_confidence: local.as_ref().and_then(|o| o.confidence),
            confidence_threshold: if call.step.kind == StepKind::Classify { call.step.threshold() as f64 } else { 0.0 },
            validation: if call.force_escalation.is_some() { Validation::Failed } else { Validation::NotChecked },
            estimated: estimate_tokens(call.prompt.len(), call.step.max_tokens() as u64),
            preface: call.force_escalation.clone(),
        };
        let request_messages = remote_messages(&call);
        let (step_call, messages) = (&call, &request_messages);
        let routed = self
            .route(&defs, request, |tier: String| async move {
                let completion = self.call_remote(&tier, step_call, messages, call_id).await?;
                remote_outcome(step_call.step, completion, call_id)
            })
            .await?;
        match routed {
            Routed::Wait { reason, .. } => Err(ModelCallError::Unavailable(match &local_down {
                Some(why) => format!("{reason}; {why}"),
                None => reason,
            })),
            Routed::Local { reason, needs_review } => {
                let mut outcome = match local.take() {
                    Some(outcome) => outcome,
                    None => self.run_on_local(&agent.local_tier, &call, call_id).await?,
                };
                outcome.tier = Some(agent.local_tier.clone());
                outcome.reason = reason;
                outcome.needs_review = needs_review;
                Ok(outcome)
            }
            Routed::Remote { tier, reason, value: mut outcome, charge } => {
                let cost =
                    self.settle(charge, TokenCount { input: outcome.tokens_in, output: outcome.tokens_out }).await?;
                outcome.tier = Some(tier);
                outcome.reason = reason;
                outcome.cost_usd = cost.as_usd();
                Ok(outcome)
            }
        }
    }

    /// The routing loop steps and gateway calls share: asks the router, and
    /// when it picks an escalation tier, reserves its estimated cost and runs
    /// `call` on it; a tier that fails is passed over on the next round (the
    /// reservation released), so the fallback chain applies. The local model
    /// is never run here: [`Routed::Local`] tells the caller to.
    async fn route<T, F, Fut>(
        &self,
        defs: &Definitions,
        request: RouteRequest<'_>,
        mut call: F,
    ) -> Result<Routed<T>, ModelCallError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let table = tier_table(defs, &request.local, request.chain)?;
        let air_gap = AirGap { enabled: defs.runtime.air_gapped, allowed_hosts: defs.runtime.allowed_hosts.clone() };
        let egress = air_gap.egress_all(&table);
        let (key, limits) = (&request.key, request.limits);
        // Tiers that failed during this call are passed over on the next round.
        let mut failed: HashSet<usize> = HashSet::new();
        let mut failures: Vec<String> = Vec::new();
        loop {
            let health: Vec<TierHealth> = (0..table.len())
                .map(|idx| {
                    if idx == table.fallback().0 {
                        return if request.local_available { TierHealth::Available } else { TierHealth::Unavailable };
                    }
                    if failed.contains(&idx) {
                        return TierHealth::Unavailable;
                    }
                    self.breaker_health(&table.spec(TierId(idx)).name)
                })
                .collect();
            let (task_budget, day_budget) = {
                let ledger = self.inner.ledger.lock().expect("ledger lock");
                (
                    ledger.ledger.task_view(&key.task, limits.task),
                    ledger.ledger.day_view(&key.agent, key.day, limits.agent_day),
                )
            };
            let input = RouteInput {
                kind_escalates: request.kind_escalates,
                requested: request.requested,
                risk: request.risk,
                local_confidence: request.local_confidence,
                confidence_threshold: request.confidence_threshold,
                validation: request.validation,
                estimated_tokens: request.estimated,
                task_budget,
                day_budget,
                health: &health,
                egress: &egress,
            };
            let decision = router::route(&table, &input);
            let mut reason = decision.reason.to_string();
            if let Some(why) = &request.preface {
                reason = format!("{why}; {reason}");
            }
            if !failures.is_empty() {
                reason = format!("{reason} (after: {})", failures.join("; "));
            }
            match decision.target {
                RouteTarget::Wait => return Ok(Routed::Wait { reason, decision: decision.reason }),
                RouteTarget::Tier(id) if id == table.fallback() => {
                    return Ok(Routed::Local { reason, needs_review: decision.needs_review })
                }
                RouteTarget::Tier(id) => {
                    let spec = table.spec(id).clone();
                    let estimate = spec.price.cost(request.estimated);
                    let reservation = {
                        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
                        ledger.ledger.reserve(key, limits, estimate)
                    };
                    let reservation = match reservation {
                        Ok(id) => id,
                        // Another call took the room since the views were read: route again.
                        Err(_) => continue,
                    };
                    // Held while the call runs: if this future is dropped
                    // (a deadline, a cancelled task), the reservation is
                    // settled at the estimate rather than left open.
                    let charge = Charge { reservation, price: spec.price, key: key.clone() };
                    let held = Settlement::new(self.clone(), charge, request.estimated);
                    match call(spec.name.clone()).await {
                        Ok(value) => {
                            let charge = held.into_charge();
                            return Ok(Routed::Remote { tier: spec.name, reason, value, charge });
                        }
                        Err(problem) => {
                            held.release();
                            warn!(tier = %spec.name, %problem, "escalation tier failed; trying the next in the chain");
                            failures.push(format!("tier `{}` failed: {problem}", spec.name));
                            failed.insert(id.0);
                        }
                    }
                }
            }
        }
    }

    /// Closes a reservation with the call's measured tokens, and records the
    /// spending for the account's day in the database. Returns the cost.
    pub async fn settle(&self, charge: Charge, tokens: TokenCount) -> Result<MicroUsd, DbError> {
        let cost = self.settle_in_ledger(&charge, tokens);
        self.record_spend(&charge.key, cost).await?;
        Ok(cost)
    }

    /// The ledger's part of [`Tiers::settle`] (no waiting).
    fn settle_in_ledger(&self, charge: &Charge, tokens: TokenCount) -> MicroUsd {
        let cost = charge.price.cost(tokens);
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        ledger.ledger.settle(charge.reservation, cost).ok();
        if charge.key.agent == GATEWAY_ACCOUNT {
            // A gateway request's own account ends with it.
            ledger.ledger.forget_task(&charge.key.task);
        }
        cost
    }

    /// The database's part of [`Tiers::settle`]: the account's day spending.
    async fn record_spend(&self, key: &BudgetKey, cost: MicroUsd) -> Result<(), DbError> {
        if let Some(store) = &self.inner.store {
            store.add_agent_spend(&key.agent, key.day, cost.as_usd()).await?;
        }
        Ok(())
    }

    /// Drops a task's account from the budget ledger once its run has
    /// ended (its agent's day spending stays). A later run of the same task
    /// (a resumption) seeds it again from the spending in its step records.
    pub fn forget_task(&self, task: &str) {
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        ledger.ledger.forget_task(task);
        ledger.seeded_tasks.remove(task);
    }

    /// Tasks the budget ledger holds an account for, and its reservations
    /// not yet settled or released.
    pub fn ledger_size(&self) -> (usize, usize) {
        let ledger = self.inner.ledger.lock().expect("ledger lock");
        (ledger.ledger.tasks(), ledger.ledger.outstanding())
    }

    /// The tiers the bundle lets gateway callers name as `model`.
    pub fn gateway_tiers(&self) -> Vec<String> {
        self.definitions().gateway.tiers.clone()
    }

    /// Routes a gateway request for tier `requested` (one of
    /// [`Tiers::gateway_tiers`]) through the same router, breakers, budgets
    /// and air gap as an escalated step: `call` runs on the tier chosen
    /// (the requested one, then the tiers listed after it), with retries.
    /// `local` names the gateway's local chat model when it has one.
    pub async fn route_gateway<T, F, Fut>(
        &self,
        requested: &str,
        local: Option<&str>,
        request_id: &str,
        estimated: TokenCount,
        call: F,
    ) -> Result<GatewayRoute<T>, GatewayRefusal>
    where
        F: FnMut(CloudClient) -> Fut + Clone,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let defs = self.definitions();
        let gateway = &defs.gateway;
        let position = gateway.tiers.iter().position(|tier| tier == requested).ok_or_else(|| GatewayRefusal {
            reason: format!("`{requested}` is not a tier this gateway routes to"),
            kind: RefusalKind::UnknownTier,
        })?;
        let day = day_of(self.inner.clock.unix_ms());
        let refused = |err: DbError| GatewayRefusal { reason: err.to_string(), kind: RefusalKind::Unavailable };
        self.seed_day(GATEWAY_ACCOUNT, day).await.map_err(refused)?;
        let request = RouteRequest {
            local: local.unwrap_or("local").to_owned(),
            local_available: local.is_some() && gateway.fallback_to_local,
            chain: &gateway.tiers[position..],
            key: BudgetKey { task: request_id.to_owned(), agent: GATEWAY_ACCOUNT.to_owned(), day },
            limits: BudgetLimits {
                task: usd_limit(gateway.per_request_usd),
                agent_day: usd_limit(gateway.per_day_usd),
            },
            kind_escalates: false,
            requested: true,
            risk: RiskClass::Low,
            local_confidence: None,
            confidence_threshold: 0.0,
            validation: Validation::NotChecked,
            estimated,
            preface: None,
        };
        let routed = self
            .route(&defs, request, |tier: String| {
                let attempt = call.clone();
                async move { self.remote_attempts(&tier, attempt).await }
            })
            .await
            .map_err(|err| GatewayRefusal { reason: err.to_string(), kind: RefusalKind::Unavailable })?;
        match routed {
            Routed::Local { reason, needs_review } => Ok(GatewayRoute::Local { reason, needs_review }),
            Routed::Remote { tier, reason, value, charge } => Ok(GatewayRoute::Remote { tier, reason, value, charge }),
            Routed::Wait { decision, .. } => {
                let budget = decision.budget_shortfall().is_some();
                let skipped: Vec<String> = match &decision {
                    RouteReason::Wait { skipped, .. } => {
                        skipped.iter().map(|skip| format!("`{}`: {}", skip.name, skip.cause)).collect()
                    }
                    _ => Vec::new(),
                };
                let mut reason = format!("no tier can answer for `{requested}`");
                if !skipped.is_empty() {
                    reason = format!("{reason}: {}", skipped.join("; "));
                }
                if local.is_some() && !gateway.fallback_to_local {
                    reason.push_str(" (the bundle's gateway settings do not fall back to the local model)");
                }
                Err(GatewayRefusal {
                    reason,
                    kind: if budget { RefusalKind::Budget } else { RefusalKind::Unavailable },
                })
            }
        }
    }

    fn breaker_health(&self, tier: &str) -> TierHealth {
        self.with_breaker(tier, |breaker| breaker.health(self.inner.clock.instant()))
    }

    /// Loads what `account` spent on `day`, as the database says, into the
    /// ledger the first time the pair is seen.
    async fn seed_day(&self, account: &str, day: i64) -> Result<(), DbError> {
        let known = self.inner.ledger.lock().expect("ledger lock").seeded_days.contains(&(account.to_owned(), day));
        let Some(store) = self.inner.store.as_ref().filter(|_| !known) else { return Ok(()) };
        let usd = store.agent_spend(account, day).await?;
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        if ledger.seeded_days.insert((account.to_owned(), day)) {
            // Seeds the day only: the task part of this key is a name no task has.
            let day_only = BudgetKey { task: String::new(), agent: account.to_owned(), day };
            ledger.ledger.record_spent(&day_only, MicroUsd::from_usd(usd).unwrap_or(MicroUsd::ZERO));
        }
        Ok(())
    }

    /// Loads what the task spent before this process into the ledger the
    /// first time the task is seen.
    fn seed_task(&self, key: &BudgetKey, task_spent_usd: f64) {
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        if ledger.seeded_tasks.insert(key.task.clone()) && task_spent_usd > 0.0 {
            // Seeds the task only: no agent has an empty name.
            let task_only = BudgetKey { task: key.task.clone(), agent: String::new(), day: key.day };
            ledger.ledger.record_spent(&task_only, MicroUsd::from_usd(task_spent_usd).unwrap_or(MicroUsd::ZERO));
        }
    }

    #[tracing::instrument(name = "model.call", skip_all, fields(tier = %tier, call_id = %call_id, location = "local"))]
    async fn run_on_local(
        &self,
        tier: &str,
        call: &StepCall<'_>,
        call_id: &str,
    ) -> Result<CallOutcome, ModelCallError> {
        let model = self.local_model(tier).await?;
        let mut outcome = run_local(&model, call, call_id).await?;
        outcome.tier = Some(tier.to_owned());
        Ok(outcome)
    }

    /// One escalated step call with retries.
    #[tracing::instrument(name = "model.call", skip_all, fields(tier = %tier, call_id = %call_id, location = "remote"))]
    async fn call_remote(
        &self,
        tier: &str,
        call: &StepCall<'_>,
        messages: &[WireMessage],
        call_id: &str,
    ) -> Result<ChatCompletion, String> {
        let step = call.step;
        let request = ChatCompletionRequest {
            messages: messages.to_vec(),
            max_tokens: Some(if step.kind == StepKind::Classify { 16 } else { step.max_tokens() }),
            temperature: step.temperature,
            seed: Some(seed_for(call.task, &step.id) as i64 & i64::MAX),
            ..ChatCompletionRequest::default()
        };
        self.remote_attempts(tier, move |client: CloudClient| {
            let request = request.clone();
            async move { client.chat(request).await }
        })
        .await
    }

    /// Runs `attempt` against remote tier `tier`, retrying retryable errors
    /// with backoff; every attempt passes through the tier's breaker.
    async fn remote_attempts<T, F, Fut>(&self, tier: &str, mut attempt: F) -> Result<T, String>
    where
        F: FnMut(CloudClient) -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let client = self.inner.remote.lock().expect("tiers lock").get(tier).cloned();
        let client = match client {
            Some(Ok(client)) => client,
            Some(Err(problem)) => return Err(problem),
            None => return Err(format!("tier `{tier}` is not a remote tier")),
        };
        let mut attempts = 0;
        loop {
            let permit = self
                .with_breaker(tier, |breaker| breaker.try_acquire(self.inner.clock.instant()))
                .map_err(|open| format!("breaker open for {:?}", open.retry_in))?;
            // Dropped with the call (a deadline, a cancellation), the guard
            // hands a probe's turn back rather than leave the tier shut for
            // a cool-down.
            let mut held = HeldPermit { tiers: self, tier, permit: Some(permit) };
            attempts += 1;
            self.inner.remote_calls.fetch_add(1, Ordering::Relaxed);
            let result = attempt(client.clone()).await;
            let permit = held.permit.take().unwrap_or(permit);
            self.with_breaker(tier, |breaker| match &result {
                Err(err) if err.counts_against_breaker() => breaker.record_failure(permit, self.inner.clock.instant()),
                _ => breaker.record_success(permit),
            });
            match result {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let delay = match err.is_retryable() {
                        true => self.inner.retry.delay_after(attempts, rand::random::<f64>(), err.retry_after()),
                        false => None,
                    };
                    match delay {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(format!("{err} (after {attempts} attempt(s))")),
                    }
                }
            }
        }
    }
}

impl Tiers {
    /// Runs `f` on `tier`'s breaker (a closed one if it has none yet).
    fn with_breaker<R>(&self, tier: &str, f: impl FnOnce(&mut CircuitBreaker) -> R) -> R {
        let mut breakers = self.inner.breakers.lock().expect("tiers lock");
        f(breakers.entry(tier.to_owned()).or_insert_with(|| CircuitBreaker::new(self.inner.breaker)))
    }
}

/// A breaker permit held across a remote call; dropped still holding it
/// (the call's future was dropped), it abandons the permit.
struct HeldPermit<'a> {
    tiers: &'a Tiers,
    tier: &'a str,
    permit: Option<Permit>,
}

impl Drop for HeldPermit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.tiers.with_breaker(self.tier, |breaker| breaker.abandon(permit));
        }
    }
}

/// The account gateway requests are charged to; no agent can have this name.
pub const GATEWAY_ACCOUNT: &str = "@gateway";

/// What [`Tiers::route`] needs to know about one call.
struct RouteRequest<'a> {
    /// The local fallback tier's name.
    local: String,
    /// Whether the local fallback can answer.
    local_available: bool,
    /// Escalation tiers in order.
    chain: &'a [String],
    /// The budget accounts charged.
    key: BudgetKey,
    /// Their limits.
    limits: BudgetLimits,
    /// Escalate whatever the local result.
    kind_escalates: bool,
    /// A caller asked for an escalation tier by name.
    requested: bool,
    /// How much harm a wrong answer does.
    risk: RiskClass,
    /// The local model's confidence, when it was scored.
    local_confidence: Option<f64>,
    /// Confidence below this escalates.
    confidence_threshold: f64,
    /// What checking the local output said.
    validation: Validation,
    /// Expected tokens of an escalated call.
    estimated: TokenCount,
    /// Put before the router's reason (why escalation was forced).
    preface: Option<String>,
}

/// Where [`Tiers::route`] ended.
enum Routed<T> {
    /// The local model answers; `needs_review` when escalation was wanted.
    Local { reason: String, needs_review: bool },
    /// An escalation tier answered; its reservation awaits [`Tiers::settle`].
    Remote { tier: String, reason: String, value: T, charge: Charge },
    /// No tier can answer now.
    Wait { reason: String, decision: RouteReason },
}

/// A reservation to settle once the call's tokens are known.
#[derive(Debug)]
pub struct Charge {
    reservation: ReservationId,
    price: Price,
    key: BudgetKey,
}

impl Charge {
    /// What the call costs with these tokens.
    pub fn cost(&self, tokens: TokenCount) -> MicroUsd {
        self.price.cost(tokens)
    }
}

/// An escalated call's reservation until it is settled. Released when the
/// call failed; dropped unsettled (the client left mid-stream, the tier
/// broke off, the task's deadline dropped the call), it is settled at the
/// estimate, since the tier may bill what it produced.
pub struct Settlement {
    tiers: Tiers,
    charge: Option<Charge>,
    estimated: TokenCount,
}

impl Settlement {
    /// Holds `charge`, to be settled at `estimated` if dropped.
    pub fn new(tiers: Tiers, charge: Charge, estimated: TokenCount) -> Settlement {
        Settlement { tiers, charge: Some(charge), estimated }
    }

    /// Settles with the measured tokens; returns the cost.
    pub async fn settle(&mut self, tokens: TokenCount) -> MicroUsd {
        let Some(charge) = self.charge.take() else { return MicroUsd::ZERO };
        let cost = charge.cost(tokens);
        if let Err(err) = self.tiers.settle(charge, tokens).await {
            warn!(%err, "cannot record escalation spending");
        }
        cost
    }

    /// The call never happened or failed: nothing was spent.
    pub fn release(mut self) {
        if let Some(charge) = self.charge.take() {
            self.tiers.inner.ledger.lock().expect("ledger lock").ledger.release(charge.reservation).ok();
        }
    }

    /// The tokens the reservation was made for.
    pub fn estimated(&self) -> TokenCount {
        self.estimated
    }

    /// What settling at the estimate would cost, while unsettled.
    pub fn estimated_cost(&self) -> Option<MicroUsd> {
        self.charge.as_ref().map(|charge| charge.cost(self.estimated))
    }

    /// Hands the reservation on to be settled elsewhere.
    pub fn into_charge(mut self) -> Charge {
        self.charge.take().expect("a settlement holds its charge until it is taken")
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some(charge) = self.charge.take() else { return };
        // The ledger at once, so nothing sees the reservation still open;
        // the database write when a runtime can run it.
        let cost = self.tiers.settle_in_ledger(&charge, self.estimated);
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let tiers = self.tiers.clone();
        handle.spawn(async move {
            if let Err(err) = tiers.record_spend(&charge.key, cost).await {
                warn!(%err, "cannot record escalation spending");
            }
        });
    }
}

/// Where a gateway request goes.
#[derive(Debug)]
pub enum GatewayRoute<T> {
    /// The gateway's local model answers; `needs_review` when a tier was
    /// asked for and none could answer.
    Local {
        /// The router's reason.
        reason: String,
        /// The answer did not come from the tier asked for.
        needs_review: bool,
    },
    /// Tier `tier` answered with `value`; settle `charge` when its tokens are known.
    Remote {
        /// The tier that answered.
        tier: String,
        /// The router's reason.
        reason: String,
        /// What the call returned.
        value: T,
        /// The reservation to settle.
        charge: Charge,
    },
}

/// Why a gateway request was not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefusal {
    /// The sentence the caller gets.
    pub reason: String,
    /// What kind of refusal.
    pub kind: RefusalKind,
}

/// The kinds of [`GatewayRefusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The model asked for is not a gateway tier.
    UnknownTier,
    /// A budget stopped it.
    Budget,
    /// No tier could answer (breakers, failures, the air gap).
    Unavailable,
}

/// A dollar limit from a bundle; none (or a nonsensical one) is unlimited.
fn usd_limit(usd: Option<f64>) -> MicroUsd {
    usd.and_then(MicroUsd::from_usd).unwrap_or(MicroUsd::UNLIMITED)
}

/// A call's expected tokens before it is made: about three characters per
/// prompt token plus the chat template's overhead, and the output limit.
pub fn estimate_tokens(prompt_chars: usize, max_output: u64) -> TokenCount {
    TokenCount { input: (prompt_chars as u64) / 3 + 32, output: max_output }
}

/// The router's table: `local` as the fallback, then `chain` as the bundle declares it.
fn tier_table(defs: &Definitions, local: &str, chain: &[String]) -> Result<router::Tiers, ModelCallError> {
    let mut specs = vec![router::TierSpec::local(local.to_owned())];
    for name in chain {
        let spec =
            defs.tiers.get(name).ok_or_else(|| ModelCallError::Fatal(format!("tier `{name}` is not declared")))?;
        specs.push(match spec.kind {
            TierKind::Local => router::TierSpec::local(name.clone()),
            TierKind::Openai => router::TierSpec::remote(
                name.clone(),
                spec.host().unwrap_or_default().to_owned(),
                Price {
                    input_per_1k: MicroUsd::from_usd(spec.price_in_per_1k).unwrap_or(MicroUsd::UNLIMITED),
                    output_per_1k: MicroUsd::from_usd(spec.price_out_per_1k).unwrap_or(MicroUsd::UNLIMITED),
                },
            ),
        });
    }
    router::Tiers::new(specs).map_err(|err| ModelCallError::Fatal(err.to_string()))
}

/// The messages an escalation tier gets for a step: a classify step becomes
/// an instruction to answer with one label, after its examples.
fn remote_messages(call: &StepCall<'_>) -> Vec<WireMessage> {
    let step = call.step;
    let mut messages = Vec::new();
    match step.kind {
        StepKind::Classify => {
            let labels = step.labels.join(", ");
            messages.push(WireMessage::new(
                "system",
                format!("You sort messages. Answer with exactly one of these labels and nothing else: {labels}."),
            ));
            for example in &step.examples {
                messages.push(WireMessage::new("user", example.text.clone()));
                messages.push(WireMessage::new("assistant", example.label.clone()));
            }
        }
        _ => {
            if let Some(system) = &call.system {
                messages.push(WireMessage::new("system", system.clone()));
            }
        }
    }
    messages.push(WireMessage::new("user", call.subject.clone().unwrap_or_else(|| call.prompt.clone())));
    messages
}

/// A remote reply as a step outcome; a classify reply must name a label.
fn remote_outcome(step: &StepSpec, completion: ChatCompletion, call_id: &str) -> Result<CallOutcome, String> {
    let tokens = completion.tokens().unwrap_or(TokenCount { input: 0, output: 0 });
    let text = completion.text.trim().to_owned();
    let (output, value, confidence) = match step.kind {
        StepKind::Classify => {
            let answer = text.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            let label = step
                .labels
                .iter()
                .find(|l| l.to_lowercase() == answer)
                .or_else(|| {
                    let named: Vec<&String> =
                        step.labels.iter().filter(|l| answer.contains(&l.to_lowercase())).collect();
                    (named.len() == 1).then(|| named[0])
                })
                .ok_or_else(|| format!("the reply {text:?} names none of the labels"))?;
            (json!({ "label": label, "reply": text, "model": completion.model }), label.clone(), None)
        }
        _ => {
            (json!({ "text": text, "finish_reason": completion.finish_reason, "model": completion.model }), text, None)
        }
    };
    Ok(CallOutcome {
        tier: None,
        reason: String::new(),
        output,
        value: Some(value),
        tokens_in: tokens.input,
        tokens_out: tokens.output,
        cost_usd: 0.0,
        confidence,
        needs_review: false,
        call_id: call_id.to_owned(),
    })
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

#[cfg(test)]
mod tests {
    use aios_models::catalog::Catalog;
    use aios_shared::bundle::BundleSpec;

    use super::*;

    const BUNDLE: &str = r#"
autonomy = "supervised"

[gateway]
tiers = ["large"]
per_day_usd = 10.0

[tiers.large]
kind = "openai"
model = "any"
base_url = "http://127.0.0.1:9/v1"
price_in_per_1k = 0.5
price_out_per_1k = 1.5
"#;

    fn tiers() -> (tempfile::TempDir, Tiers) {
        let dir = tempfile::tempdir().expect("temp dir");
        let models = ModelStore::new(Catalog::builtin(), dir.path().to_owned());
        let tiers = Tiers::new(models, LoadOptions::default(), None, SharedClock::default());
        let spec = BundleSpec::from_toml(BUNDLE).expect("bundle parses");
        tiers.configure(&Arc::new(spec.definitions()));
        (dir, tiers)
    }

    /// A call dropped while the tier is still answering (a task's deadline,
    /// a client that left) leaves no reservation open: the day is charged
    /// the estimate, since the tier may bill what it produced.
    #[tokio::test]
    async fn a_dropped_escalation_is_settled_at_its_estimate() {
        let (_dir, tiers) = tiers();
        let estimated = TokenCount { input: 1000, output: 1000 };
        let call = tiers.route_gateway("large", None, "request-1", estimated, |_client| {
            std::future::pending::<Result<(), CloudError>>()
        });
        let dropped = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(dropped.is_err(), "the call never answers, so the timeout drops it");
        assert_eq!(tiers.ledger_size(), (0, 0), "no account or reservation is left open");
        let ledger = tiers.inner.ledger.lock().expect("ledger lock");
        let day = ledger.ledger.day_view(GATEWAY_ACCOUNT, day_of(tiers.inner.clock.unix_ms()), MicroUsd::UNLIMITED);
        assert_eq!(day.committed, MicroUsd::from_usd(2.0).expect("usd"), "1000 tokens each way at 0.5 and 1.5 per 1k");
    }

    /// A half-open tier's probe dropped mid-call (a deadline) hands its turn
    /// to the next call at once, instead of shutting the tier for a
    /// cool-down as if it had been lost.
    #[tokio::test]
    async fn a_dropped_probe_passes_its_turn_on() {
        let (_dir, tiers) = tiers();
        let opened =
            tiers.inner.clock.instant().checked_sub(tiers.inner.breaker.cool_down).expect("up longer than a cool-down");
        tiers.with_breaker("large", |breaker| {
            (0..3).for_each(|_| breaker.record_failure(Permit::Normal, opened));
        });
        assert_eq!(tiers.breaker_health("large"), TierHealth::Available, "the cool-down is over: a probe may go");
        let estimated = TokenCount { input: 10, output: 10 };
        let call = tiers.route_gateway("large", None, "request-1", estimated, |_client| {
            std::future::pending::<Result<(), CloudError>>()
        });
        assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err(), "dropped mid-call");
        assert_eq!(tiers.breaker_health("large"), TierHealth::Available, "the next call may probe");
    }

    /// A finished task's account leaves the ledger; the task's next run
    /// seeds it again from what its step records say it spent.
    #[test]
    fn finished_tasks_leave_the_ledger_and_resumptions_reseed() {
        let (_dir, tiers) = tiers();
        let key = BudgetKey { task: "task-1".into(), agent: "sorter".into(), day: 20_000 };
        tiers.seed_task(&key, 0.25);
        tiers.seed_task(&key, 0.25);
        let committed = |tiers: &Tiers| {
            let ledger = tiers.inner.ledger.lock().expect("ledger lock");
            ledger.ledger.task_view("task-1", MicroUsd::UNLIMITED).committed
        };
        assert_eq!(committed(&tiers), MicroUsd::from_usd(0.25).expect("usd"), "seeded once");
        assert_eq!(tiers.ledger_size(), (1, 0));
        tiers.forget_task("task-1");
        assert_eq!(tiers.ledger_size(), (0, 0));
        tiers.seed_task(&key, 0.5);
        assert_eq!(committed(&tiers), MicroUsd::from_usd(0.5).expect("usd"), "a resumed run reseeds");
    }
}
