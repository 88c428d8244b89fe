//! One model turn of an agent step's tool-using loop: the conversation so
//! far and the tools go to the tier the plan names, through the same router,
//! breakers, budgets and retries as any escalated step; the reply comes back
//! provider-neutral (`aios_shared::agent::tool_loop::ModelReply`).
//!
//! The local model does not plan yet: proposing tool calls needs decoding
//! constrained to the tools' schemas, which the local engine lacks. A step
//! that plans locally fails saying so, and a turn that wanted an escalation
//! tier waits while none can answer instead of falling back.

use aios_shared::agent::tool_loop::{Message, ModelReply, PlanOn, ToolDefinition};
use aios_shared::agent::{Risk, StepSpec};
use aios_shared::router::{day_of, BudgetKey, BudgetLimits, BudgetScope, RiskClass, TokenCount, Validation};
use tracing::Instrument;

use super::cloud::CloudClient;
use super::openai::ChatCompletionRequest;
use super::route::{seed_for, RouteRequest, Routed};
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
    /// What the task spent before this run (for its budget after a restart).
    pub task_spent_usd: f64,
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
}

impl ModelCalls {
    /// Runs one turn of an agent step's loop on the tier its plan names.
    pub async fn agent_turn(&self, turn: AgentTurn<'_>, call_id: &str) -> Result<TurnOutcome, TurnError> {
        let defs = self.definitions();
        let agent = defs
            .agents
            .get(turn.agent)
            .ok_or_else(|| TurnError::Call(ModelCallError::Fatal(format!("agent `{}` is not defined", turn.agent))))?;
        let why = match &turn.plan {
            PlanOn::Escalate(why) => why.clone(),
            PlanOn::Local => {
                return Err(TurnError::Call(ModelCallError::Fatal(format!(
                    "step `{}` plans on the local tier `{}`, and local models cannot propose tool calls yet \
                     (constrained decoding is not built); give the agent an escalation tier",
                    turn.step.id, agent.local_tier
                ))))
            }
        };
        let key = BudgetKey {
            task: turn.task.to_owned(),
            agent: turn.agent.to_owned(),
            day: day_of(self.inner.clock.unix_ms()),
        };
        let limits =
            BudgetLimits { task: usd_limit(agent.budget.per_task_usd), agent_day: usd_limit(agent.budget.per_day_usd) };
        self.seed_day(&key.agent, key.day).await?;
        self.seed_task(&key, turn.task_spent_usd);
        let prompt_chars: usize =
            turn.messages.iter().filter_map(|m| m.content.as_ref()).map(String::len).sum::<usize>()
                + turn.tools.iter().map(|t| t.parameters.to_string().len() + t.description.len()).sum::<usize>();
        let request = RouteRequest {
            local: agent.local_tier.clone(),
            local_available: false,
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
                    async move { client.chat(request).await }
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
            Routed::Local { reason, .. } => Err(ModelCallError::Unavailable(format!(
                "{reason}; the local model cannot plan with tools, so the turn waits for an escalation tier"
            ))
            .into()),
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
                })
            }
        }
    }
}
