//! One model turn of an agent step's tool-using loop: the conversation so
//! far and the tools go to the tier the plan names, through the same router,
//! breakers, budgets and retries as any escalated step; the reply comes back
//! provider-neutral (`aios_shared::agent::tool_loop::ModelReply`).
//!
//! A local turn describes the tools in the system message and generates
//! under a JSON Schema that admits one call of a declared tool with valid
//! arguments, or an answer (`aios_shared::agent::tool_loop::local`); the
//! engine masks sampling to it, so the reply always parses. A turn that
//! wanted an escalation tier falls back to it when no tier can answer (down,
//! over the day's budget, air-gapped), marked for review.

use aios_models::{ChatMessage, GenerateRequest, OutputConstraint};
use aios_shared::agent::tool_loop::{local, Message, ModelReply, PlanOn, Role, ToolDefinition};
use aios_shared::agent::{Risk, StepSpec};
use aios_shared::router::{day_of, BudgetKey, BudgetLimits, BudgetScope, RiskClass, TokenCount, Validation};
use tracing::Instrument;

use super::cloud::CloudClient;
use super::openai::ChatCompletionRequest;
use super::route::{model_error, seed_for, RouteRequest, Routed};
use super::tools::{wire_messages, WireTool};
use super::{estimate_tokens, usd_limit, ModelCallError, ModelCalls};

/// One model turn an agent step asks for.
#[derive(Debug)]
pub struct AgentTurn<'a> {
    /// The agent running the step.
    pub agent: &'a str,
    /// The task.
    pub task: &'a str,
    /// The step definition.
    pub step: &'a StepSpec,
    /// The turn, from 0.
    pub iteration: u32,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// The tools the model may call.
    pub tools: &'a [ToolDefinition],
    /// Where it plans.
    pub plan: PlanOn,
    /// Most tokens of the reply.
    pub max_tokens: u32,
    /// The reply must be a call of one of `tools`, not an answer (a local
    /// model deciding the arguments a plan left to it).
    pub require_call: bool,
    /// What the task spent before this run (for its budget after a restart).
    pub task_spent_usd: f64,
    /// The most the task may spend; `None`: no limit.
    pub task_budget_usd: Option<f64>,
    /// The most sensitive data in the conversation (retrieved items, tool
    /// results): tiers not allowed to receive it are skipped.
    pub classification: Option<aios_shared::memory::Classification>,
}

/// Why a turn produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// As for any model call: fatal, unavailable for now, or the database.
    #[error(transparent)]
    Call(#[from] ModelCallError),
    /// The turn would take the task past its budget: the loop ends there.
    #[error("{0}")]
    OverBudget(String),
}

impl From<aios_daemon::db::DbError> for TurnError {
    fn from(err: aios_daemon::db::DbError) -> TurnError {
        TurnError::Call(ModelCallError::Db(err))
    }
}

/// What a turn produced and what it cost.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    /// The tier that answered.
    pub tier: String,
    /// Why that tier.
    pub reason: String,
    /// The reply.
    pub reply: ModelReply,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// US dollars.
    pub cost_usd: f64,
    /// The local model planned where a bigger one was wanted: the effects
    /// it proposes wait for a person.
    pub needs_review: bool,
}

impl ModelCalls {
    /// Runs one turn of an agent step's loop on the tier its plan names.
    pub async fn agent_turn(&self, turn: AgentTurn<'_>, call_id: &str) -> Result<TurnOutcome, TurnError> {
        self.check_not_halted()?;
        let defs = self.definitions();
        let agent = defs
            .agents
            .get(turn.agent)
            .ok_or_else(|| TurnError::Call(ModelCallError::Fatal(format!("agent `{}` is not defined", turn.agent))))?;
        let why = match &turn.plan {
            PlanOn::Escalate(why) => why.clone(),
            PlanOn::Local => {
                let reason = "the step plans on the local model".to_owned();
                return self.local_turn(&agent.local_tier, &turn, reason, false, call_id).await;
            }
        };
        let key = BudgetKey {
            task: turn.task.to_owned(),
            agent: turn.agent.to_owned(),
            day: day_of(self.inner.clock.unix_ms()),
        };
        let limits =
            BudgetLimits { task: usd_limit(turn.task_budget_usd), agent_day: usd_limit(agent.budget.per_day_usd) };
        self.seed_day(&key.agent, key.day).await?;
        self.seed_task(&key, turn.task_spent_usd);
        let prompt_chars: usize =
            turn.messages.iter().filter_map(|m| m.content.as_ref()).map(String::len).sum::<usize>()
                + turn.tools.iter().map(|t| t.parameters.to_string().len() + t.description.len()).sum::<usize>();
        let request = RouteRequest {
            local: agent.local_tier.clone(),
            local_available: true,
            chain: &agent.escalate_to,
            key,
            limits,
            kind_escalates: true,
            requested: false,
            risk: match turn.step.risk {
                Risk::Low => RiskClass::Low,
                Risk::Medium => RiskClass::Medium,
                Risk::High => RiskClass::High,
            },
            local_confidence: None,
            confidence_threshold: 0.0,
            validation: Validation::NotChecked,
            estimated: estimate_tokens(prompt_chars, turn.max_tokens as u64),
            preface: Some(why),
            classification: turn.classification,
        };
        let wire = ChatCompletionRequest {
            messages: wire_messages(&turn.messages),
            max_tokens: Some(turn.max_tokens),
            seed: Some(seed_for(turn.task, &format!("{}#{}", turn.step.id, turn.iteration)) as i64 & i64::MAX),
            tools: turn.tools.iter().map(WireTool::from).collect(),
            tool_choice: (!turn.tools.is_empty()).then(|| serde_json::Value::String("auto".into())),
            ..ChatCompletionRequest::default()
        };
        let wire = &wire;
        let routed = self
            .route(&defs, request, |tier: String| async move {
                let span = tracing::info_span!("model.call", tier = %tier, call_id = %call_id, location = "remote");
                self.remote_attempts(&tier, move |client: CloudClient| {
                    let request = wire.clone();
                    async move { client.complete(request).await }
                })
                .instrument(span)
                .await
            })
            .await
            .map_err(TurnError::Call)?;
        match routed {
            Routed::Wait { reason, decision } => match decision.budget_shortfall() {
                Some(shortfall) if shortfall.scope == BudgetScope::Task => Err(TurnError::OverBudget(reason)),
                _ => Err(ModelCallError::Unavailable(reason).into()),
            },
            Routed::Local { reason, needs_review } => {
                self.local_turn(&agent.local_tier, &turn, reason, needs_review, call_id).await
            }
            Routed::Remote { tier, reason, value: completion, charge } => {
                let tokens = completion.tokens().unwrap_or(TokenCount { input: 0, output: 0 });
                let cost = self.settle(charge, tokens).await?;
                Ok(TurnOutcome {
                    tier,
                    reason,
                    reply: completion.reply(),
                    tokens_in: tokens.input,
                    tokens_out: tokens.output,
                    cost_usd: cost.as_usd(),
                    needs_review: false,
                })
            }
        }
    }

    /// One turn on local tier `tier`: the tools in the system message, the
    /// reply generated under the schema of one call or an answer.
    #[tracing::instrument(name = "model.call", skip_all, fields(tier = %tier, call_id = %call_id, location = "local"))]
    async fn local_turn(
        &self,
        tier: &str,
        turn: &AgentTurn<'_>,
        reason: String,
        needs_review: bool,
        call_id: &str,
    ) -> Result<TurnOutcome, TurnError> {
        let model = self.local_model(tier).await?;
        let messages = local::conversation(&turn.messages, turn.tools)
            .into_iter()
            .map(|message| match message.role {
                Role::System => ChatMessage::system(message.text),
                Role::Assistant => ChatMessage::assistant(message.text),
                Role::User | Role::Tool => ChatMessage::user(message.text),
            })
            .collect();
        let mut request = GenerateRequest::chat(messages, turn.max_tokens as usize);
        request.constraint = Some(OutputConstraint::JsonSchema(local::call_schema(turn.tools, !turn.require_call)));
        let generation = model.generate(request).await.map_err(model_error)?;
        Ok(TurnOutcome {
            tier: tier.to_owned(),
            reason,
            reply: local::parse_reply(&generation.text, turn.iteration),
            tokens_in: generation.prompt_tokens as u64,
            tokens_out: generation.completion_tokens as u64,
            cost_usd: 0.0,
            needs_review,
        })
    }
}
