//! Spending limits per task and per agent per day, as in-memory accounting.
//!
//! A call first [`reserve`](BudgetLedger::reserve)s its estimated cost
//! against both limits at once; the reservation counts as spent until it is
//! [`settle`](BudgetLedger::settle)d with the measured cost or
//! [`release`](BudgetLedger::release)d because the call never happened. So
//! concurrent calls, each checked against settled spending plus every other
//! outstanding reservation, cannot overspend together. The ledger is a plain
//! value: the driver keeps it behind a mutex and persists settled amounts
//! where it wants (restoring them with [`BudgetLedger::record_spent`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::{BudgetScope, BudgetShortfall, BudgetView, MicroUsd};

/// The UTC day number (days since the Unix epoch) of a wall-clock time.
pub fn day_of(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(86_400_000)
}

/// Whose money a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    /// The task the call belongs to.
    pub task: String,
    /// The agent running the task.
    pub agent: String,
    /// The day it counts against ([`day_of`]).
    pub day: i64,
}

/// The limits a reservation is checked against (from the agent definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Most one task may spend.
    pub task: MicroUsd,
    /// Most one agent may spend in one day.
    pub agent_day: MicroUsd,
}

impl BudgetLimits {
    /// No limits.
    pub const UNLIMITED: BudgetLimits = BudgetLimits { task: MicroUsd::UNLIMITED, agent_day: MicroUsd::UNLIMITED };
}

/// Names an outstanding reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The reservation would take a budget past its limit; nothing was reserved.
    #[error("{0}")]
    Exhausted(BudgetShortfall),
    /// The reservation was already settled or released, or never existed.
    #[error("budget reservation {0} is unknown or already closed")]
    UnknownReservation(ReservationId),
}

/// Spending against one limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Account {
    /// Measured cost of finished calls.
    settled: MicroUsd,
    /// Estimates of calls in flight.
    reserved: MicroUsd,
}

impl Account {
    fn committed(&self) -> MicroUsd {
        self.settled.saturating_add(self.reserved)
    }

    fn view(&self, limit: MicroUsd) -> BudgetView {
        BudgetView { limit, committed: self.committed() }
    }
}

/// An outstanding reservation: what to undo when it closes.
#[derive(Debug, Clone)]
struct Reservation {
    key: BudgetKey,
    amount: MicroUsd,
}

/// The accounting.
#[derive(Debug, Clone, Default)]
pub struct BudgetLedger {
    /// By task id.
    tasks: HashMap<String, Account>,
    /// By agent id, then day.
    days: HashMap<String, BTreeMap<i64, Account>>,
    /// Outstanding reservations.
    reservations: HashMap<ReservationId, Reservation>,
    /// The next reservation's number.
    next_id: u64,
}

impl BudgetLedger {
    /// An empty ledger.
    pub fn new() -> BudgetLedger {
        BudgetLedger::default()
    }

    /// Reserves `amount` against both the task's and the agent's day budget,
    /// or refuses (reserving nothing) if either would pass its limit.
    pub fn reserve(
        &mut self,
        key: &BudgetKey,
        limits: BudgetLimits,
        amount: MicroUsd,
    ) -> Result<ReservationId, BudgetError> {
        let task = self.task_view(&key.task, limits.task);
        let day = self.day_view(&key.agent, key.day, limits.agent_day);
        for (scope, view) in [(BudgetScope::Task, task), (BudgetScope::AgentDay, day)] {
            let would_reach = view.committed.saturating_add(amount);
            if would_reach > view.limit {
                return Err(BudgetError::Exhausted(BudgetShortfall { scope, would_reach, limit: view.limit }));
            }
        }
        let id = ReservationId(self.next_id);
        self.next_id += 1;
        self.apply(key, |account| account.reserved = account.reserved.saturating_add(amount));
        self.reservations.insert(id, Reservation { key: key.clone(), amount });
        Ok(id)
    }

    /// Closes a reservation with the call's measured cost. The cost is
    /// recorded even when it exceeds the estimate (the money is spent); later
    /// reservations then see less room.
    pub fn settle(&mut self, id: ReservationId, actual: MicroUsd) -> Result<(), BudgetError> {
        let reservation = self.reservations.remove(&id).ok_or(BudgetError::UnknownReservation(id))?;
        self.apply(&reservation.key, |account| {
            account.reserved = account.reserved.saturating_sub(reservation.amount);
            account.settled = account.settled.saturating_add(actual);
        });
        Ok(())
    }

    /// Closes a reservation whose call was never made (or cost nothing).
    pub fn release(&mut self, id: ReservationId) -> Result<(), BudgetError> {
        self.settle(id, MicroUsd::ZERO)
    }

    /// Records spending that had no reservation: restoring settled totals
    /// after a restart, or a call whose cost was only known afterwards.
    pub fn record_spent(&mut self, key: &BudgetKey, amount: MicroUsd) {
        self.apply(key, |account| account.settled = account.settled.saturating_add(amount));
    }

    /// The task's budget as the router sees it.
    pub fn task_view(&self, task: &str, limit: MicroUsd) -> BudgetView {
        self.tasks.get(task).copied().unwrap_or_default().view(limit)
    }

    /// The agent's budget for `day` as the router sees it.
    pub fn day_view(&self, agent: &str, day: i64, limit: MicroUsd) -> BudgetView {
        let account = self.days.get(agent).and_then(|days| days.get(&day)).copied().unwrap_or_default();
        account.view(limit)
    }

    /// Number of reservations not yet settled or released.
    pub fn outstanding(&self) -> usize {
        self.reservations.len()
    }

    /// Number of tasks with an account.
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Drops a finished task's account (its day spending stays).
    pub fn forget_task(&mut self, task: &str) {
        self.tasks.remove(task);
    }

    /// Drops day accounts older than `day`.
    pub fn forget_days_before(&mut self, day: i64) {
        self.days.retain(|_, days| {
            days.retain(|&account_day, _| account_day >= day);
            !days.is_empty()
        });
    }

    fn apply(&mut self, key: &BudgetKey, change: impl Fn(&mut Account)) {
        change(self.tasks.entry(key.task.clone()).or_default());
        change(self.days.entry(key.agent.clone()).or_default().entry(key.day).or_default());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(task: &str, agent: &str) -> BudgetKey {
        BudgetKey { task: task.to_owned(), agent: agent.to_owned(), day: day_of(1_700_000_000_000) }
    }

    const LIMITS: BudgetLimits = BudgetLimits { task: MicroUsd(10_000), agent_day: MicroUsd(25_000) };

    #[test]
    fn outstanding_reservations_count_against_the_limit() {
        let mut ledger = BudgetLedger::new();
        let first = ledger.reserve(&key("t1", "a"), LIMITS, MicroUsd(6_000)).unwrap();
        let refused = ledger.reserve(&key("t1", "a"), LIMITS, MicroUsd(6_000)).unwrap_err();
        assert_eq!(refused.to_string(), "budget exhausted: task 0.0120 of 0.0100 USD");
        ledger.release(first).unwrap();
        let second = ledger.reserve(&key("t1", "a"), LIMITS, MicroUsd(6_000)).unwrap();
        ledger.settle(second, MicroUsd(3_000)).unwrap();
        assert_eq!(ledger.task_view("t1", LIMITS.task).committed, MicroUsd(3_000));
        assert_eq!(ledger.task_view("t1", LIMITS.task).left(), MicroUsd(7_000));
        assert_eq!(ledger.settle(second, MicroUsd(1)), Err(BudgetError::UnknownReservation(second)));
        assert_eq!(ledger.outstanding(), 0);
    }

    #[test]
    fn the_agent_day_limit_spans_tasks_and_days_are_separate() {
        let mut ledger = BudgetLedger::new();
        for task in ["t1", "t2"] {
            let id = ledger.reserve(&key(task, "a"), LIMITS, MicroUsd(10_000)).unwrap();
            ledger.settle(id, MicroUsd(10_000)).unwrap();
        }
        let refused = ledger.reserve(&key("t3", "a"), LIMITS, MicroUsd(6_000)).unwrap_err();
        assert_eq!(refused.to_string(), "budget exhausted: agent day 0.0260 of 0.0250 USD");
        ledger.reserve(&key("t3", "b"), LIMITS, MicroUsd(6_000)).expect("another agent has its own day");
        let tomorrow = BudgetKey { day: key("t4", "a").day + 1, ..key("t4", "a") };
        ledger.reserve(&tomorrow, LIMITS, MicroUsd(6_000)).expect("a new day starts afresh");
        ledger.forget_days_before(tomorrow.day);
        assert_eq!(ledger.day_view("a", tomorrow.day - 1, LIMITS.agent_day).committed, MicroUsd::ZERO);
        assert_eq!(ledger.day_view("a", tomorrow.day, LIMITS.agent_day).committed, MicroUsd(6_000));
    }

    #[test]
    fn overruns_are_recorded_and_restored_spending_counts() {
        let mut ledger = BudgetLedger::new();
        ledger.record_spent(&key("t1", "a"), MicroUsd(4_000));
        let id = ledger.reserve(&key("t1", "a"), LIMITS, MicroUsd(1_000)).unwrap();
        ledger.settle(id, MicroUsd(7_000)).unwrap();
        assert_eq!(ledger.task_view("t1", LIMITS.task).committed, MicroUsd(11_000));
        assert_eq!(ledger.task_view("t1", LIMITS.task).left(), MicroUsd::ZERO);
        assert!(ledger.reserve(&key("t1", "a"), LIMITS, MicroUsd(0)).is_err());
        assert_eq!(day_of(-1), -1, "days before the epoch round down");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { task: usize, agent: usize, amount: u64 },
        Settle { pick: usize, fraction: u8 },
        Release { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize, 0..2usize, 0..8_000u64).prop_map(|(task, agent, amount)| Op::Reserve { task, agent, amount }),
            1 => (any::<usize>(), 0..=100u8).prop_map(|(pick, fraction)| Op::Settle { pick, fraction }),
            1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        ]
    }

    proptest! {
        /// Whatever the interleaving of reservations and settlements (each
        /// settling at most its estimate), committed spending never exceeds
        /// a limit, and a refusal happens only when the amount would.
        #[test]
        fn interleaved_reservations_never_exceed_the_limits(ops in prop::collection::vec(op(), 1..200)) {
            let mut ledger = BudgetLedger::new();
            let mut open: Vec<(ReservationId, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve { task, agent, amount } => {
                        let key = key(&format!("t{task}"), &format!("a{agent}"));
                        let task_before = ledger.task_view(&key.task, LIMITS.task);
                        let day_before = ledger.day_view(&key.agent, key.day, LIMITS.agent_day);
                        match ledger.reserve(&key, LIMITS, MicroUsd(amount)) {
                            Ok(id) => open.push((id, amount)),
                            Err(_) => prop_assert!(
                                task_before.left().0 < amount || day_before.left().0 < amount,
                                "refused although {amount} fits"
                            ),
                        }
                    }
                    Op::Settle { pick, fraction } if !open.is_empty() => {
                        let (id, amount) = open.swap_remove(pick % open.len());
                        ledger.settle(id, MicroUsd(amount * u64::from(fraction) / 100)).unwrap();
                    }
                    Op::Release { pick } if !open.is_empty() => {
                        let (id, _) = open.swap_remove(pick % open.len());
                        ledger.release(id).unwrap();
                    }
                    Op::Settle { .. } | Op::Release { .. } => {}
                }
                for task in ["t0", "t1", "t2"] {
                    let committed = ledger.task_view(task, LIMITS.task).committed;
                    prop_assert!(committed <= LIMITS.task, "task {} committed {}", task, committed);
                }
                for agent in ["a0", "a1"] {
                    let committed = ledger.day_view(agent, key("t", "a").day, LIMITS.agent_day).committed;
                    prop_assert!(committed <= LIMITS.agent_day, "agent {} committed {}", agent, committed);
                }
            }
            prop_assert_eq!(ledger.outstanding(), open.len());
        }
    }
}
