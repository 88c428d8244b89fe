//! A circuit breaker per tier as a pure state machine: closed until
//! `failure_threshold` consecutive failures, then open for `cool_down`, then
//! half-open with exactly one probe call whose outcome closes or reopens it.
//! The caller passes `now` and reports each call's outcome with the
//! [`Permit`] it was given, so results of calls started before the breaker
//! opened cannot close it by accident.

use std::time::{Duration, Instant};

use super::TierHealth;

/// When a breaker trips and how long it rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// How long it stays open before a probe; also how long a probe may take
    /// before it is presumed lost and another is allowed.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    /// Five failures, thirty seconds.
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, cool_down: Duration::from_secs(30) }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed {
        /// Failures since the last success.
        consecutive_failures: u32,
    },
    /// One probe call is in flight; everything else is refused.
    HalfOpen {
        /// When the probe was let through.
        probe_since: Instant,
    },
    /// Calls are refused until the cool-down ends.
    Open {
        /// When it opened.
        since: Instant,
    },
}

/// Permission to make one call; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A call while closed.
    Normal,
    /// The single trial call of the half-open state.
    Probe,
}

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open; next probe in {} ms", retry_in.as_millis())]
pub struct BreakerOpen {
    /// How long until a call may be tried again.
    pub retry_in: Duration,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// Thresholds.
    config: BreakerConfig,
    /// Current state.
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        let config = BreakerConfig { failure_threshold: config.failure_threshold.max(1), ..config };
        CircuitBreaker { config, state: BreakerState::Closed { consecutive_failures: 0 } }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether [`CircuitBreaker::try_acquire`] would succeed at `now` (what
    /// the router needs; it does not change the state).
    pub fn health(&self, now: Instant) -> TierHealth {
        match self.wait_until(now) {
            None => TierHealth::Available,
            Some(_) => TierHealth::Unavailable,
        }
    }

    /// Asks to make a call at `now`. A breaker whose cool-down is over lets
    /// exactly one probe through.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, BreakerOpen> {
        if let Some(until) = self.wait_until(now) {
            return Err(BreakerOpen { retry_in: until.saturating_duration_since(now) });
        }
        match self.state {
            BreakerState::Closed { .. } => Ok(Permit::Normal),
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { probe_since: now };
                Ok(Permit::Probe)
            }
        }
    }

    /// Reports that the call made with `permit` succeeded.
    pub fn record_success(&mut self, permit: Permit) {
        match (self.state, permit) {
            (BreakerState::Closed { .. }, _) | (BreakerState::HalfOpen { .. }, Permit::Probe) => {
                self.state = BreakerState::Closed { consecutive_failures: 0 };
            }
            // A call let through before the breaker opened proves nothing now.
            (BreakerState::HalfOpen { .. } | BreakerState::Open { .. }, _) => {}
        }
    }

    /// Reports that the call made with `permit` failed at `now`. Report only
    /// failures that say something about the tier (5xx, timeouts, refused
    /// connections), not the caller's own bad requests.
    pub fn record_failure(&mut self, permit: Permit, now: Instant) {
        match (self.state, permit) {
            (BreakerState::Closed { consecutive_failures }, _) => {
                let consecutive_failures = consecutive_failures.saturating_add(1);
                self.state = if consecutive_failures >= self.config.failure_threshold {
                    BreakerState::Open { since: now }
                } else {
                    BreakerState::Closed { consecutive_failures }
                };
            }
            (BreakerState::HalfOpen { .. }, Permit::Probe) => self.state = BreakerState::Open { since: now },
            (BreakerState::HalfOpen { .. } | BreakerState::Open { .. }, _) => {}
        }
    }

    /// Reports that the call made with `permit` ended without an outcome
    /// (its caller dropped it: a deadline, a cancellation). A probe's turn
    /// passes at once to the next call instead of after a cool-down; a
    /// normal call changes nothing.
    pub fn abandon(&mut self, permit: Permit) {
        if let (BreakerState::HalfOpen { probe_since }, Permit::Probe) = (self.state, permit) {
            // The probe started at least a cool-down after the breaker
            // opened, so this instant exists; open with the cool-down over.
            let since = probe_since.checked_sub(self.config.cool_down).unwrap_or(probe_since);
            self.state = BreakerState::Open { since };
        }
    }

    /// When the breaker next changes what it allows by itself (the end of a
    /// cool-down or of a presumed-lost probe), for a driver that wants to
    /// re-route waiting steps then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Closed { .. } => None,
            BreakerState::HalfOpen { probe_since: since } | BreakerState::Open { since } => {
                Some(since + self.config.cool_down)
            }
        }
    }

    /// `Some(instant)` when calls are refused at `now` until `instant`.
    fn wait_until(&self, now: Instant) -> Option<Instant> {
        self.poll_timeout().filter(|until| now < *until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(10);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig { failure_threshold: 3, cool_down: COOL_DOWN })
    }

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        breaker.record_failure(Permit::Normal, t0);
        breaker.record_failure(Permit::Normal, t0);
        breaker.record_success(Permit::Normal);
        breaker.record_failure(Permit::Normal, t0);
        breaker.record_failure(Permit::Normal, t0);
        assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 2 });
        assert_eq!(breaker.try_acquire(t0), Ok(Permit::Normal));
        breaker.record_failure(Permit::Normal, t0);
        assert_eq!(breaker.state(), BreakerState::Open { since: t0 });
        assert_eq!(breaker.health(t0), TierHealth::Unavailable);
        let refused = breaker.try_acquire(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_secs(6));
        assert_eq!(refused.to_string(), "circuit breaker open; next probe in 6000 ms");
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_success_closes() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        for _ in 0..3 {
            breaker.record_failure(Permit::Normal, t0);
        }
        let t1 = t0 + COOL_DOWN;
        assert_eq!(breaker.health(t1), TierHealth::Available);
        assert_eq!(breaker.try_acquire(t1), Ok(Permit::Probe));
        assert_eq!(breaker.state(), BreakerState::HalfOpen { probe_since: t1 });
        assert_eq!(breaker.health(t1), TierHealth::Unavailable);
        assert!(breaker.try_acquire(t1 + Duration::from_secs(1)).is_err(), "a second probe is refused");
        // A straggler from before the breaker opened changes nothing.
        breaker.record_success(Permit::Normal);
        breaker.record_failure(Permit::Normal, t1);
        assert_eq!(breaker.state(), BreakerState::HalfOpen { probe_since: t1 });
        breaker.record_success(Permit::Probe);
        assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 0 });
        assert_eq!(breaker.poll_timeout(), None);
    }

    #[test]
    fn failed_probe_reopens_and_lost_probe_is_replaced() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 1, cool_down: COOL_DOWN });
        breaker.record_failure(Permit::Normal, t0);
        let t1 = t0 + COOL_DOWN;
        assert_eq!(breaker.try_acquire(t1), Ok(Permit::Probe));
        breaker.record_failure(Permit::Probe, t1);
        assert_eq!(breaker.state(), BreakerState::Open { since: t1 });
        assert_eq!(breaker.poll_timeout(), Some(t1 + COOL_DOWN));
        let t2 = t1 + COOL_DOWN;
        assert_eq!(breaker.try_acquire(t2), Ok(Permit::Probe));
        // The probe never reports back; after another cool-down a new one goes.
        let t3 = t2 + COOL_DOWN;
        assert_eq!(breaker.try_acquire(t3), Ok(Permit::Probe));
        assert_eq!(breaker.state(), BreakerState::HalfOpen { probe_since: t3 });
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe_at_once() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 1, cool_down: COOL_DOWN });
        assert_eq!(breaker.try_acquire(t0), Ok(Permit::Normal));
        breaker.abandon(Permit::Normal);
        assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 0 }, "a normal call changes nothing");
        breaker.record_failure(Permit::Normal, t0);
        let t1 = t0 + COOL_DOWN;
        assert_eq!(breaker.try_acquire(t1), Ok(Permit::Probe));
        // A straggler's abandonment during the probe changes nothing either.
        breaker.abandon(Permit::Normal);
        assert_eq!(breaker.health(t1), TierHealth::Unavailable);
        breaker.abandon(Permit::Probe);
        let t2 = t1 + Duration::from_millis(1);
        assert_eq!(breaker.health(t2), TierHealth::Available);
        assert_eq!(breaker.try_acquire(t2), Ok(Permit::Probe), "no second cool-down");
        breaker.record_success(Permit::Probe);
        assert_eq!(breaker.state(), BreakerState::Closed { consecutive_failures: 0 });
    }

    #[test]
    fn zero_threshold_is_treated_as_one() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 0, cool_down: COOL_DOWN });
        assert_eq!(breaker.try_acquire(t0), Ok(Permit::Normal));
        breaker.record_failure(Permit::Normal, t0);
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
    }
}
