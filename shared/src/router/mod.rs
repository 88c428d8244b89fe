//! Model tiering as pure decisions: which tier answers a step, and why.
//!
//! A bundle declares tiers (the local candle model, remote OpenAI-compatible
//! endpoints, another edge's gateway). [`route`] is a pure function of the
//! step's facts ([`RouteInput`]: escalation policy of its kind, risk class,
//! local confidence and validation, token estimate, budgets, tier health and
//! the air-gap verdicts) to a [`RouteDecision`]: a tier or "wait", a
//! machine-readable [`RouteReason`] whose `Display` is the sentence for the
//! audit log, and whether the result needs human review.
//!
//! The fallback chain is encoded here and nowhere else: escalation tiers in
//! declared order, skipping those whose breaker is open, that the air gap
//! forbids or that the budgets cannot pay for; then the local model with the
//! result marked for review; then waiting, when even the local model is down.
//!
//! Nothing here does I/O or reads a clock. The stateful pieces the async
//! driver keeps beside the router are pure values too: [`CircuitBreaker`]
//! (one per tier), [`BudgetLedger`] (reserve before a call, settle after) and
//! [`RetryPolicy`] (`crate::backoff`; the driver only sleeps).
//!
//! # Layout
//! - `mod.rs`: tiers, money, [`route`].
//! - [`breaker`]: the closed / open / half-open state machine.
//! - [`budget`]: reservations against per-task and per-agent-day limits.

pub mod breaker;
pub mod budget;

use crate::memory::Classification;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::backoff::RetryPolicy;
pub use breaker::{BreakerConfig, BreakerOpen, BreakerState, CircuitBreaker, Permit};
pub use budget::{day_of, BudgetError, BudgetKey, BudgetLedger, BudgetLimits, ReservationId};

/// An amount of money in millionths of a US dollar. Integer so that
/// reservations and settlements add up exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    /// Zero dollars.
    pub const ZERO: MicroUsd = MicroUsd(0);
    /// A limit that is never reached.
    pub const UNLIMITED: MicroUsd = MicroUsd(u64::MAX);

    /// Converts dollars (as written in a bundle) to micro-dollars, rounding to
    /// the nearest; `None` for negative, NaN or absurdly large values.
    pub fn from_usd(usd: f64) -> Option<MicroUsd> {
        let micros = (usd * 1_000_000.0).round();
        (micros.is_finite() && micros >= 0.0 && micros < u64::MAX as f64).then_some(MicroUsd(micros as u64))
    }

    /// The amount in dollars (for display and metrics).
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    /// Addition that stops at [`MicroUsd::UNLIMITED`].
    pub fn saturating_add(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(other.0))
    }

    /// Subtraction that stops at zero.
    pub fn saturating_sub(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_sub(other.0))
    }
}

/// Dollars with at least four decimals, more when the amount needs them
/// (`0.0120`, `0.00015`); `unlimited` for [`MicroUsd::UNLIMITED`].
impl fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == MicroUsd::UNLIMITED {
            return f.write_str("unlimited");
        }
        let whole = self.0 / 1_000_000;
        let mut fraction = format!("{:06}", self.0 % 1_000_000);
        while fraction.len() > 4 && fraction.ends_with('0') {
            fraction.pop();
        }
        write!(f, "{whole}.{fraction}")
    }
}

/// Token counts of one call, measured or estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCount {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
}

/// What a tier charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Per 1000 prompt tokens.
    pub input_per_1k: MicroUsd,
    /// Per 1000 completion tokens.
    pub output_per_1k: MicroUsd,
}

impl Price {
    /// Free (local tiers).
    pub const FREE: Price = Price { input_per_1k: MicroUsd::ZERO, output_per_1k: MicroUsd::ZERO };

    /// The cost of `tokens`, rounded up to the next micro-dollar so that an
    /// estimate never undercounts.
    pub fn cost(&self, tokens: TokenCount) -> MicroUsd {
        let part = |count: u64, per_1k: MicroUsd| {
            let scaled = u128::from(count) * u128::from(per_1k.0);
            u64::try_from(scaled.div_ceil(1000)).unwrap_or(u64::MAX)
        };
        MicroUsd(part(tokens.input, self.input_per_1k).saturating_add(part(tokens.output, self.output_per_1k)))
    }
}

/// Where a tier runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierLocation {
    /// On this edge (candle); never subject to the air gap.
    Local,
    /// Behind the network at `host` (`name` or `name:port`, as in the endpoint URL).
    Remote {
        /// The endpoint's host, compared against the air-gap allow-list.
        host: String,
    },
}

/// One declared tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// The bundle's name for it (`local`, `large`, ...).
    pub name: String,
    /// Where it runs.
    pub location: TierLocation,
    /// What it charges; [`Price::FREE`] for local tiers.
    pub price: Price,
}

impl Tier {
    /// A free tier on this edge.
    pub fn local(name: impl Into<String>) -> Tier {
        Tier { name: name.into(), location: TierLocation::Local, price: Price::FREE }
    }

    /// A tier behind the network.
    pub fn remote(name: impl Into<String>, host: impl Into<String>, price: Price) -> Tier {
        Tier { name: name.into(), location: TierLocation::Remote { host: host.into() }, price }
    }
}

/// Index of a tier in its [`Tiers`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TierId(pub usize);

/// A validated tier table: names are unique and one tier is the local
/// fallback (the first local tier declared). Every other tier is an
/// escalation tier, tried in declared order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    /// In declared order.
    specs: Vec<Tier>,
    /// The first local tier: where results fall back to for review.
    fallback: TierId,
}

/// Why a tier table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    /// Two tiers share a name.
    #[error("tier `{0}` is declared twice; tier names must be unique")]
    DuplicateName(String),
    /// No tier runs locally, so there is nothing to fall back to.
    #[error("no local tier is declared; the fallback chain needs one (location = \"local\")")]
    NoLocalTier,
}

impl Tiers {
    /// Validates a declared table.
    pub fn new(specs: Vec<Tier>) -> Result<Tiers, TierError> {
        for (index, spec) in specs.iter().enumerate() {
            if specs[..index].iter().any(|earlier| earlier.name == spec.name) {
                return Err(TierError::DuplicateName(spec.name.clone()));
            }
        }
        let fallback =
            specs.iter().position(|spec| spec.location == TierLocation::Local).ok_or(TierError::NoLocalTier)?;
        Ok(Tiers { specs, fallback: TierId(fallback) })
    }

    /// All tiers in declared order.
    pub fn specs(&self) -> &[Tier] {
        &self.specs
    }

    /// One tier.
    pub fn spec(&self, id: TierId) -> &Tier {
        &self.specs[id.0]
    }

    /// The local fallback tier.
    pub fn fallback(&self) -> TierId {
        self.fallback
    }

    /// The tier with this name.
    pub fn find(&self, name: &str) -> Option<TierId> {
        self.specs.iter().position(|spec| spec.name == name).map(TierId)
    }

    /// Number of tiers.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Always false: a valid table has a local tier.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// The bundle's air-gap setting: when on, only tiers on this edge and remote
/// tiers whose host is on the allow-list may be called.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AirGap {
    /// Whether the air gap is in force.
    pub enabled: bool,
    /// Hosts that may still be called (`name` matches any port, `name:port` one).
    pub allowed_hosts: Vec<String>,
}

impl AirGap {
    /// Whether `tier` may be called under this setting.
    pub fn egress(&self, tier: &Tier) -> Egress {
        let TierLocation::Remote { host } = &tier.location else { return Egress::Allowed };
        if !self.enabled {
            return Egress::Allowed;
        }
        let hostname = host_without_port(host);
        // An entry with a port allows exactly that port; one without allows any.
        let allowed = self.allowed_hosts.iter().any(|entry| {
            entry.eq_ignore_ascii_case(host)
                || (host_without_port(entry) == entry && entry.eq_ignore_ascii_case(hostname))
        });
        if allowed {
            Egress::Allowed
        } else {
            Egress::Blocked
        }
    }

    /// [`AirGap::egress`] for every tier, indexed by [`TierId`].
    pub fn egress_all(&self, tiers: &Tiers) -> Vec<Egress> {
        tiers.specs().iter().map(|spec| self.egress(spec)).collect()
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
fn host_without_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => name,
        _ => host,
    }
}

/// Whether a call's data may leave for one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// The tier may be called.
    Allowed,
    /// The air gap forbids calling it.
    Blocked,
    /// The call's data is more sensitive than the tier may receive.
    AboveClassification {
        /// The most sensitive data in the call.
        data: Classification,
        /// The most the tier may receive.
        limit: Classification,
    },
}

/// `egress` with every tier whose limit (`limits`, by [`TierId`]; `None`:
/// no limit) is below `data` turned into [`Egress::AboveClassification`].
pub fn limit_egress(egress: &mut [Egress], limits: &[Option<Classification>], data: Option<Classification>) {
    let Some(data) = data else { return };
    for (verdict, limit) in egress.iter_mut().zip(limits) {
        if let (Egress::Allowed, Some(limit)) = (*verdict, *limit) {
            if data > limit {
                *verdict = Egress::AboveClassification { data, limit };
            }
        }
    }
}

/// Whether a tier can take a call now, as its breaker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierHealth {
    /// Closed, or half-open with the probe slot free.
    Available,
    /// Open (cooling down) or half-open with a probe in flight.
    Unavailable,
    /// It failed earlier in this same call (its breaker may still be
    /// closed): passed over until the call ends.
    FailedThisCall,
}

/// How much harm a wrong answer to the step can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    /// Drafts, summaries for the agent itself.
    Low,
    /// Routine actions visible to people.
    Medium,
    /// Money, contracts, anything hard to undo. Unscored local output is not
    /// trusted unless validation passed.
    High,
}

/// What checking the local output said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validation {
    /// The output failed its schema or check: escalate.
    Failed,
    /// The output was not checked (or not produced yet).
    NotChecked,
    /// The output passed.
    Passed,
}

/// Spending so far against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetView {
    /// The limit.
    pub limit: MicroUsd,
    /// Settled spending plus outstanding reservations.
    pub committed: MicroUsd,
}

impl BudgetView {
    /// A budget that never runs out.
    pub const UNLIMITED: BudgetView = BudgetView { limit: MicroUsd::UNLIMITED, committed: MicroUsd::ZERO };

    /// What can still be spent.
    pub fn left(&self) -> MicroUsd {
        self.limit.saturating_sub(self.committed)
    }
}

/// Everything [`route`] looks at for one step.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// The step's kind asks for an escalation tier regardless of the local
    /// result (the local model is then not run first).
    pub kind_escalates: bool,
    /// A caller asked for an escalation tier by name (a gateway request):
    /// the local model is not run first.
    pub requested: bool,
    /// How much harm a wrong answer does.
    pub risk: RiskClass,
    /// The local model's confidence in its answer, when it was scored.
    pub local_confidence: Option<f64>,
    /// Confidence below this escalates.
    pub confidence_threshold: f64,
    /// What checking the local output said.
    pub validation: Validation,
    /// Expected tokens of the escalated call, priced per tier.
    pub estimated_tokens: TokenCount,
    /// The task's budget.
    pub task_budget: BudgetView,
    /// The agent's budget for today.
    pub day_budget: BudgetView,
    /// Per tier, by [`TierId`]; a missing entry reads as unavailable.
    pub health: &'a [TierHealth],
    /// Per tier, by [`TierId`]; a missing entry reads as blocked.
    pub egress: &'a [Egress],
}

/// Where the step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTarget {
    /// Call this tier.
    Tier(TierId),
    /// No tier can take it now; retry when health or budgets change.
    Wait,
}

/// The outcome of [`route`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDecision {
    /// Where the step goes.
    pub target: RouteTarget,
    /// Why, for the audit log.
    pub reason: RouteReason,
    /// The result comes from the local model although escalation was wanted:
    /// a person should review it before it takes effect.
    pub needs_review: bool,
}

/// Why the step goes where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RouteReason {
    /// Escalation was wanted and this tier takes it; `skipped` lists the
    /// earlier tiers passed over.
    Escalated {
        /// Why escalation was wanted.
        trigger: Trigger,
        /// Earlier escalation tiers that could not be used.
        skipped: Vec<SkippedTier>,
    },
    /// Escalation was wanted but no tier could take it: the local model
    /// answers and the result is marked for review.
    FallbackToLocal {
        /// Why escalation was wanted.
        trigger: Trigger,
        /// Every escalation tier, with why it could not be used.
        skipped: Vec<SkippedTier>,
    },
    /// The local output stands.
    LocalAccepted(Acceptance),
    /// Nothing can take the step now.
    Wait {
        /// Why escalation was wanted.
        trigger: Trigger,
        /// Every escalation tier, with why it could not be used.
        skipped: Vec<SkippedTier>,
    },
}

impl RouteReason {
    /// A stable short code for metrics and filters (`escalated`, `fallback_to_local`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            RouteReason::Escalated { .. } => "escalated",
            RouteReason::FallbackToLocal { .. } => "fallback_to_local",
            RouteReason::LocalAccepted(_) => "local_accepted",
            RouteReason::Wait { .. } => "wait",
        }
    }

    /// The first budget shortfall among the skipped tiers, if any.
    pub fn budget_shortfall(&self) -> Option<&BudgetShortfall> {
        let skipped = match self {
            RouteReason::Escalated { skipped, .. }
            | RouteReason::FallbackToLocal { skipped, .. }
            | RouteReason::Wait { skipped, .. } => skipped,
            RouteReason::LocalAccepted(_) => return None,
        };
        skipped.iter().find_map(|skip| match &skip.cause {
            SkipCause::BudgetExhausted(shortfall) => Some(shortfall),
            _ => None,
        })
    }
}

/// Why the local output was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Acceptance {
    /// Its confidence reached the threshold.
    Confident {
        /// The local confidence.
        confidence: f64,
        /// The step's threshold.
        threshold: f64,
    },
    /// It was not scored and the step is not high-risk.
    NotScored,
    /// It was not scored but passed validation.
    ValidationPassed,
}

/// Why escalation was wanted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trigger {
    /// The step's kind always escalates.
    KindEscalates,
    /// A caller asked for an escalation tier by name.
    Requested,
    /// The local model is unavailable.
    LocalUnavailable,
    /// The local confidence is below the threshold.
    LowConfidence {
        /// The local confidence.
        confidence: f64,
        /// The step's threshold.
        threshold: f64,
    },
    /// A high-risk step whose local output was neither scored nor validated.
    UnscoredHighRisk,
    /// The local output failed validation.
    ValidationFailed,
}

/// An escalation tier that was passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedTier {
    /// Which tier.
    pub tier: TierId,
    /// Its name, for the message.
    pub name: String,
    /// Why it was passed over.
    pub cause: SkipCause,
}

/// Why an escalation tier was passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SkipCause {
    /// The air gap forbids its host.
    AirGapped,
    /// Its breaker is open (or its half-open probe is in flight).
    BreakerOpen,
    /// It already failed during this call.
    FailedThisCall,
    /// The call would overspend a budget.
    BudgetExhausted(BudgetShortfall),
    /// The call's data is more sensitive than the tier may receive.
    AboveClassification {
        /// The most sensitive data in the call.
        data: Classification,
        /// The most the tier may receive.
        limit: Classification,
    },
}

/// Which budget a shortfall is against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// The agent's spending today.
    AgentDay,
    /// The task's spending.
    Task,
}

/// A call that would take a budget past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetShortfall {
    /// Which budget.
    pub scope: BudgetScope,
    /// Committed spending plus this call's estimate.
    pub would_reach: MicroUsd,
    /// The limit.
    pub limit: MicroUsd,
}

/// Picks the tier for a step; see the module documentation for the chain.
pub fn route(tiers: &Tiers, input: &RouteInput<'_>) -> RouteDecision {
    let local = tiers.fallback();
    let local_healthy = input.health.get(local.0) == Some(&TierHealth::Available);
    let trigger = match escalation_trigger(input) {
        Ok(acceptance) if local_healthy => {
            return RouteDecision {
                target: RouteTarget::Tier(local),
                reason: RouteReason::LocalAccepted(acceptance),
                needs_review: false,
            };
        }
        Ok(_) => Trigger::LocalUnavailable,
        Err(trigger) => trigger,
    };
    let mut skipped = Vec::new();
    for (index, spec) in tiers.specs().iter().enumerate() {
        if index == local.0 {
            continue;
        }
        match skip_cause(spec, index, input) {
            None => {
                return RouteDecision {
                    target: RouteTarget::Tier(TierId(index)),
                    reason: RouteReason::Escalated { trigger, skipped },
                    needs_review: false,
                };
            }
            Some(cause) => skipped.push(SkippedTier { tier: TierId(index), name: spec.name.clone(), cause }),
        }
    }
    if local_healthy {
        RouteDecision {
            target: RouteTarget::Tier(local),
            reason: RouteReason::FallbackToLocal { trigger, skipped },
            needs_review: true,
        }
    } else {
        RouteDecision { target: RouteTarget::Wait, reason: RouteReason::Wait { trigger, skipped }, needs_review: false }
    }
}

/// `Ok` when the local output may stand, `Err` with the reason to escalate.
fn escalation_trigger(input: &RouteInput<'_>) -> Result<Acceptance, Trigger> {
    if input.requested {
        return Err(Trigger::Requested);
    }
    if input.kind_escalates {
        return Err(Trigger::KindEscalates);
    }
    if input.validation == Validation::Failed {
        return Err(Trigger::ValidationFailed);
    }
    match input.local_confidence {
        // NaN compares false, so a broken score escalates.
        Some(confidence) if confidence >= input.confidence_threshold => {
            Ok(Acceptance::Confident { confidence, threshold: input.confidence_threshold })
        }
        Some(confidence) => Err(Trigger::LowConfidence { confidence, threshold: input.confidence_threshold }),
        None if input.validation == Validation::Passed => Ok(Acceptance::ValidationPassed),
        None if input.risk == RiskClass::High => Err(Trigger::UnscoredHighRisk),
        None => Ok(Acceptance::NotScored),
    }
}

/// Why escalation tier `index` cannot take the call, or `None` if it can.
fn skip_cause(spec: &Tier, index: usize, input: &RouteInput<'_>) -> Option<SkipCause> {
    match input.egress.get(index) {
        Some(Egress::Allowed) => {}
        Some(Egress::AboveClassification { data, limit }) => {
            return Some(SkipCause::AboveClassification { data: *data, limit: *limit })
        }
        Some(Egress::Blocked) | None => return Some(SkipCause::AirGapped),
    }
    match input.health.get(index) {
        Some(TierHealth::Available) => {}
        Some(TierHealth::FailedThisCall) => return Some(SkipCause::FailedThisCall),
        Some(TierHealth::Unavailable) | None => return Some(SkipCause::BreakerOpen),
    }
    let cost = spec.price.cost(input.estimated_tokens);
    for (scope, budget) in [(BudgetScope::Task, input.task_budget), (BudgetScope::AgentDay, input.day_budget)] {
        let would_reach = budget.committed.saturating_add(cost);
        if would_reach > budget.limit {
            return Some(SkipCause::BudgetExhausted(BudgetShortfall { scope, would_reach, limit: budget.limit }));
        }
    }
    None
}

impl fmt::Display for RouteDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reason, f)?;
        if self.needs_review {
            f.write_str(" (result needs human review)")?;
        }
        Ok(())
    }
}

impl fmt::Display for RouteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lead, trigger, skipped) = match self {
            RouteReason::LocalAccepted(acceptance) => return write!(f, "local output accepted: {acceptance}"),
            RouteReason::Escalated { trigger, skipped } => ("escalated", trigger, skipped),
            RouteReason::FallbackToLocal { trigger, skipped } if skipped.is_empty() => {
                ("no escalation tier is configured, falling back to the local model", trigger, skipped)
            }
            RouteReason::FallbackToLocal { trigger, skipped } => {
                ("no escalation tier usable, falling back to the local model", trigger, skipped)
            }
            RouteReason::Wait { trigger, skipped } => {
                ("waiting: neither an escalation tier nor the local model is usable", trigger, skipped)
            }
        };
        write!(f, "{lead} ({trigger})")?;
        for skip in skipped {
            write!(f, "; skipped `{}`: {}", skip.name, skip.cause)?;
        }
        Ok(())
    }
}

impl fmt::Display for Acceptance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Acceptance::Confident { confidence, threshold } => {
                write!(f, "confidence {confidence:.2} reaches threshold {threshold:.2}")
            }
            Acceptance::NotScored => f.write_str("not scored, and the step is not high-risk"),
            Acceptance::ValidationPassed => f.write_str("validation passed"),
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::KindEscalates => f.write_str("the step kind escalates"),
            Trigger::Requested => f.write_str("the caller asked for an escalation tier"),
            Trigger::LocalUnavailable => f.write_str("the local model is unavailable"),
            Trigger::LowConfidence { confidence, threshold } => {
                write!(f, "local confidence {confidence:.2} is below threshold {threshold:.2}")
            }
            Trigger::UnscoredHighRisk => f.write_str("high-risk step with an unscored, unvalidated local output"),
            Trigger::ValidationFailed => f.write_str("the local output failed validation"),
        }
    }
}

impl fmt::Display for SkipCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipCause::AirGapped => f.write_str("air-gapped: host not on the allow-list"),
            SkipCause::BreakerOpen => f.write_str("circuit breaker open"),
            SkipCause::FailedThisCall => f.write_str("failed on this call"),
            SkipCause::BudgetExhausted(shortfall) => fmt::Display::fmt(shortfall, f),
            SkipCause::AboveClassification { data, limit } => {
                write!(f, "the data is {}, above the {} this tier may receive", data.as_str(), limit.as_str())
            }
        }
    }
}

impl fmt::Display for BudgetShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            BudgetScope::AgentDay => "agent day",
            BudgetScope::Task => "task",
        };
        write!(f, "budget exhausted: {scope} {} of {} USD", self.would_reach, self.limit)
    }
}

#[cfg(test)]
mod tests;
