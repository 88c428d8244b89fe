//! Money: reservations against the bundle's budgets before a remote call,
//! settlement with the tier's reported usage after it, and the per-agent
//! daily spend kept in the database across restarts.

use std::collections::HashSet;

use aios_shared::router::{BudgetKey, BudgetLedger, MicroUsd, Price, ReservationId, TokenCount};
use tracing::warn;

use aios_daemon::db::DbError;

use super::*;

impl ModelCalls {
    /// Closes a reservation with the call's measured tokens, and records the
    /// spending for the account's day in the database. Returns the cost.
    pub async fn settle(&self, charge: Charge, tokens: TokenCount) -> Result<MicroUsd, DbError> {
        let cost = self.settle_in_ledger(&charge, tokens);
        self.record_spend(&charge.key, cost).await?;
        Ok(cost)
    }

    /// The ledger's part of [`ModelCalls::settle`] (no waiting).
    pub(super) fn settle_in_ledger(&self, charge: &Charge, tokens: TokenCount) -> MicroUsd {
        let cost = charge.price.cost(tokens);
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        ledger.ledger.settle(charge.reservation, cost).ok();
        if charge.key.agent == GATEWAY_ACCOUNT {
            // A gateway request's own account ends with it.
            ledger.ledger.forget_task(&charge.key.task);
        }
        cost
    }

    /// The database's part of [`ModelCalls::settle`]: the account's day spending.
    pub(super) async fn record_spend(&self, key: &BudgetKey, cost: MicroUsd) -> Result<(), DbError> {
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

    /// Loads what `account` spent on `day`, as the database says, into the
    /// ledger the first time the pair is seen.
    pub(super) async fn seed_day(&self, account: &str, day: i64) -> Result<(), DbError> {
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
    pub(super) fn seed_task(&self, key: &BudgetKey, task_spent_usd: f64) {
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        if ledger.seeded_tasks.insert(key.task.clone()) && task_spent_usd > 0.0 {
            // Seeds the task only: no agent has an empty name.
            let task_only = BudgetKey { task: key.task.clone(), agent: String::new(), day: key.day };
            ledger.ledger.record_spent(&task_only, MicroUsd::from_usd(task_spent_usd).unwrap_or(MicroUsd::ZERO));
        }
    }
}

/// The budget ledger and which accounts were seeded from the database.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) ledger: BudgetLedger,
    pub(super) seeded_days: HashSet<(String, i64)>,
    pub(super) seeded_tasks: HashSet<String>,
}

/// A reservation to settle once the call's tokens are known.
#[derive(Debug)]
pub struct Charge {
    /// The ledger's reservation for this call.
    pub(super) reservation: ReservationId,
    /// The tier's price.
    pub(super) price: Price,
    /// Whose budgets it is charged to.
    pub(super) key: BudgetKey,
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
    tiers: ModelCalls,
    charge: Option<Charge>,
    estimated: TokenCount,
}

impl Settlement {
    /// Holds `charge`, to be settled at `estimated` if dropped.
    pub fn new(tiers: ModelCalls, charge: Charge, estimated: TokenCount) -> Settlement {
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
pub(super) fn usd_limit(usd: Option<f64>) -> MicroUsd {
    usd.and_then(MicroUsd::from_usd).unwrap_or(MicroUsd::UNLIMITED)
}

/// A call's expected tokens before it is made: about three characters per
/// prompt token plus the chat template's overhead, and the output limit.
pub fn estimate_tokens(prompt_chars: usize, max_output: u64) -> TokenCount {
    TokenCount { input: (prompt_chars as u64) / 3 + 32, output: max_output }
}
