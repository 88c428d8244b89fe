//! The routing loop: the router decides, this module reserves, calls the
//! tier through its breaker with retries, passes a failed tier over, and
//! settles with the reported usage. Steps and gateway requests share it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;

use crate::model_calls::cloud::{ChatCompletion, CloudClient, CloudError};
use crate::model_calls::openai::{ChatCompletionRequest, WireMessage};
use aios_models::{ChatMessage, ChatModel, GenerateRequest, ModelError, Prompt, SamplingParams};
use aios_shared::agent::{Definitions, Risk, StepAction, StepSpec, TierKind};
use aios_shared::memory::Classification;
use aios_shared::router::{
    self, day_of, AirGap, BudgetKey, BudgetLimits, CircuitBreaker, MicroUsd, Permit, Price, RiskClass, RouteInput,
    RouteReason, RouteTarget, TierHealth, TierId, TokenCount, Validation,
};
use serde_json::{json, Value};
use tracing::warn;

use aios_daemon::db::DbError;

use super::*;

impl ModelCalls {
    /// Runs a step's model call on the tier the router picks: the local
    /// model first (unless the step escalates by default or a validation
    /// failure forces it), then escalation tiers in order when the router
    /// says so, with retries, breakers and budgets, and the local model with
    /// the result marked for review when no escalation tier can answer.
    pub async fn run(&self, call: StepCall<'_>, call_id: &str) -> Result<CallOutcome, ModelCallError> {
        self.check_not_halted()?;
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
            BudgetLimits { task: usd_limit(call.task_budget_usd), agent_day: usd_limit(agent.budget.per_day_usd) };
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
            confidence_threshold: match &call.step.action {
                StepAction::Classify(classify) => classify.threshold() as f64,
                _ => 0.0,
            },
            validation: if call.force_escalation.is_some() { Validation::Failed } else { Validation::NotChecked },
            estimated: estimate_tokens(call.prompt.len(), call.step.max_tokens() as u64),
            preface: call.force_escalation.clone(),
            classification: call.classification,
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
    pub(super) async fn route<T, F, Fut>(
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
        let mut egress = air_gap.egress_all(&table);
        let limits: Vec<Option<Classification>> = table
            .specs()
            .iter()
            .map(|spec| defs.tiers.get(&spec.name).and_then(aios_shared::agent::TierSpec::max_classification))
            .collect();
        router::limit_egress(&mut egress, &limits, request.classification);
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
                        return TierHealth::FailedThisCall;
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

    /// Routes a gateway request for tier `requested` (one of
    /// [`ModelCalls::gateway_tiers`]) through the same router, breakers, budgets
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
        if let Err(err) = self.check_not_halted() {
            return Err(GatewayRefusal { reason: err.to_string(), kind: RefusalKind::Unavailable });
        }
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
            classification: None,
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

    pub(super) fn breaker_health(&self, tier: &str) -> TierHealth {
        self.with_breaker(tier, |breaker| breaker.health(self.inner.clock.instant()))
    }

    #[tracing::instrument(name = "model.call", skip_all, fields(tier = %tier, call_id = %call_id, location = "local"))]
    pub(super) async fn run_on_local(
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
    pub(super) async fn call_remote(
        &self,
        tier: &str,
        call: &StepCall<'_>,
        messages: &[WireMessage],
        call_id: &str,
    ) -> Result<ChatCompletion, String> {
        let step = call.step;
        let (max_tokens, temperature) = match &step.action {
            StepAction::Classify(_) => (16, None),
            StepAction::Generate(generate) | StepAction::Plan(generate) => {
                (generate.max_tokens(), generate.temperature)
            }
            _ => (step.max_tokens(), None),
        };
        let request = ChatCompletionRequest {
            messages: messages.to_vec(),
            max_tokens: Some(max_tokens),
            temperature,
            seed: Some(seed_for(call.task, &step.id) as i64 & i64::MAX),
            ..ChatCompletionRequest::default()
        };
        self.remote_attempts(tier, move |client: CloudClient| {
            let request = request.clone();
            async move { client.complete(request).await }
        })
        .await
    }

    /// Runs `attempt` against remote tier `tier`, retrying retryable errors
    /// with backoff; every attempt passes through the tier's breaker.
    pub(super) async fn remote_attempts<T, F, Fut>(&self, tier: &str, mut attempt: F) -> Result<T, String>
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

    /// Runs `f` on `tier`'s breaker (a closed one if it has none yet).
    pub(super) fn with_breaker<R>(&self, tier: &str, f: impl FnOnce(&mut CircuitBreaker) -> R) -> R {
        let mut breakers = self.inner.breakers.lock().expect("tiers lock");
        f(breakers.entry(tier.to_owned()).or_insert_with(|| CircuitBreaker::new(self.inner.breaker)))
    }
}

/// A breaker permit held across a remote call; dropped still holding it
/// (the call's future was dropped), it abandons the permit.
pub(super) struct HeldPermit<'a> {
    pub(super) tiers: &'a ModelCalls,
    pub(super) tier: &'a str,
    pub(super) permit: Option<Permit>,
}

impl Drop for HeldPermit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.tiers.with_breaker(self.tier, |breaker| breaker.abandon(permit));
        }
    }
}

/// What [`ModelCalls::route`] needs to know about one call.
pub(super) struct RouteRequest<'a> {
    /// The local fallback tier's name.
    pub(super) local: String,
    /// Whether the local fallback can answer.
    pub(super) local_available: bool,
    /// Escalation tiers in order.
    pub(super) chain: &'a [String],
    /// The budget accounts charged.
    pub(super) key: BudgetKey,
    /// Their limits.
    pub(super) limits: BudgetLimits,
    /// Escalate whatever the local result.
    pub(super) kind_escalates: bool,
    /// A caller asked for an escalation tier by name.
    pub(super) requested: bool,
    /// How much harm a wrong answer does.
    pub(super) risk: RiskClass,
    /// The local model's confidence, when it was scored.
    pub(super) local_confidence: Option<f64>,
    /// Confidence below this escalates.
    pub(super) confidence_threshold: f64,
    /// What checking the local output said.
    pub(super) validation: Validation,
    /// Expected tokens of an escalated call.
    pub(super) estimated: TokenCount,
    /// Put before the router's reason (why escalation was forced).
    pub(super) preface: Option<String>,
    /// The most sensitive data the call carries: tiers not allowed to
    /// receive it are skipped.
    pub(super) classification: Option<Classification>,
}

/// Where [`ModelCalls::route`] ended.
pub(super) enum Routed<T> {
    /// The local model answers; `needs_review` when escalation was wanted.
    Local { reason: String, needs_review: bool },
    /// An escalation tier answered; its reservation awaits [`ModelCalls::settle`].
    Remote { tier: String, reason: String, value: T, charge: Charge },
    /// No tier can answer now.
    Wait { reason: String, decision: RouteReason },
}

/// The router's table: `local` as the fallback, then `chain` as the bundle declares it.
pub(super) fn tier_table(defs: &Definitions, local: &str, chain: &[String]) -> Result<router::Tiers, ModelCallError> {
    let mut specs = vec![router::Tier::local(local.to_owned())];
    for name in chain {
        let spec =
            defs.tiers.get(name).ok_or_else(|| ModelCallError::Fatal(format!("tier `{name}` is not declared")))?;
        specs.push(match spec.kind {
            TierKind::Local => router::Tier::local(name.clone()),
            TierKind::Openai | TierKind::Anthropic => router::Tier::remote(
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
pub(super) fn remote_messages(call: &StepCall<'_>) -> Vec<WireMessage> {
    let step = call.step;
    let mut messages = Vec::new();
    match &step.action {
        StepAction::Classify(classify) => {
            let labels = classify.labels.join(", ");
            messages.push(WireMessage::new(
                "system",
                format!("You sort messages. Answer with exactly one of these labels and nothing else: {labels}."),
            ));
            for example in &classify.examples {
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
pub(super) fn remote_outcome(
    step: &StepSpec,
    completion: ChatCompletion,
    call_id: &str,
) -> Result<CallOutcome, String> {
    let tokens = completion.tokens().unwrap_or(TokenCount { input: 0, output: 0 });
    let text = completion.text.trim().to_owned();
    let (output, value, confidence) = match &step.action {
        StepAction::Classify(classify) => {
            let answer = text.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            let label = classify
                .labels
                .iter()
                .find(|l| l.to_lowercase() == answer)
                .or_else(|| {
                    let named: Vec<&String> =
                        classify.labels.iter().filter(|l| answer.contains(&l.to_lowercase())).collect();
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

pub(super) fn model_error(err: ModelError) -> ModelCallError {
    match err {
        ModelError::PromptTooLong { .. } | ModelError::InvalidRequest(_) | ModelError::Template(_) => {
            ModelCallError::Fatal(err.to_string())
        }
        other => ModelCallError::Unavailable(format!("local model failed: {other}")),
    }
}

/// A seed derived from the call, so sampled output is reproducible.
pub(super) fn seed_for(task: &str, step: &str) -> u64 {
    task.bytes().chain(step.bytes()).fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

pub(super) async fn run_local(
    model: &ChatModel,
    call: &StepCall<'_>,
    call_id: &str,
) -> Result<CallOutcome, ModelCallError> {
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
    match &step.action {
        StepAction::Classify(classify) => {
            let candidates = classify.labels.iter().map(|l| format!(" {l}")).collect();
            let scored = model.score(Prompt::Text(call.prompt.clone()), candidates).await.map_err(model_error)?;
            let best = &classify.labels[scored.best];
            let confidence = scored.best().confidence;
            let scores: serde_json::Map<String, Value> = classify
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
        StepAction::Generate(generate) | StepAction::Plan(generate) => {
            let mut messages = Vec::new();
            if let Some(system) = &call.system {
                messages.push(ChatMessage::system(system.clone()));
            }
            messages.push(ChatMessage::user(call.prompt.clone()));
            let mut request = GenerateRequest::chat(messages, generate.max_tokens() as usize);
            if let Some(temperature) = generate.temperature.filter(|t| *t > 0.0) {
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
        other => return Err(ModelCallError::Fatal(format!("a {} step calls no model", other.kind().as_str()))),
    }
    Ok(outcome)
}
