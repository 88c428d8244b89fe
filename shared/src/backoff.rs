//! Exponential backoff with jitter, as pure values: the caller supplies the
//! randomness and does the sleeping. One formula for every retry in aios:
//! the delay cap doubles from a base up to a maximum, and each delay is
//! drawn uniformly from the upper half of the cap ([`jitter`]), so retries
//! spread out (a fleet that lost its control plane does not return in
//! lockstep) but never become a tight loop.
//!
//! [`Backoff`] counts failures itself (reconnects, connector retries);
//! [`RetryPolicy`] is told how many attempts failed and also bounds them and
//! honours a server's `Retry-After` (model calls).

use std::time::Duration;

/// The delay cap before retry number `retry` (1 for the first retry):
/// `base * 2^(retry - 1)`, never more than `max`.
pub fn cap(base: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// A delay drawn from `[cap / 2, cap]`; `unit` is a uniform random number in
/// `[0, 1)`.
pub fn jitter(cap: Duration, unit: f64) -> Duration {
    cap.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Delays that double from `base` up to `max`, with [`jitter`].
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay cap for the first retry.
    base: Duration,
    /// Largest delay ever returned.
    max: Duration,
    /// Failures since the last success.
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, attempt: 0 }
    }

    /// The delay before the next attempt; `unit` is a uniform random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        jitter(cap(self.base, self.max, self.attempt), unit)
    }

    /// Jumps straight to the largest delay (for refusals retrying cannot fix).
    pub fn saturate(&mut self) {
        self.attempt = 32;
    }

    /// Resets after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Attempts and exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 means never retry).
    pub max_attempts: u32,
    /// Delay cap before the first retry; doubles each retry.
    pub base_delay: Duration,
    /// The longest delay ever waited; a server asking for more (`Retry-After`)
    /// is not retried but passed over to the next tier.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, 200 ms then 400 ms (jittered), never more than 5 s.
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after `failed_attempts` attempts have
    /// failed with a retryable error, or `None` to give up. `unit` is a
    /// uniform random number in `[0, 1)`; `retry_after` is the server's
    /// `Retry-After`, honoured when it is within `max_delay`.
    pub fn delay_after(&self, failed_attempts: u32, unit: f64, retry_after: Option<Duration>) -> Option<Duration> {
        if failed_attempts == 0 || failed_attempts >= self.max_attempts {
            return None;
        }
        let jittered = jitter(cap(self.base_delay, self.max_delay, failed_attempts), unit);
        match retry_after {
            Some(asked) if asked > self.max_delay => None,
            Some(asked) => Some(asked.max(jittered)),
            None => Some(jittered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay(0.999_999)).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays[9] <= Duration::from_secs(10) && delays[9] > Duration::from_secs(9));
        assert!(backoff.next_delay(0.0) >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay(0.999) <= Duration::from_millis(100));
        backoff.saturate();
        assert!(backoff.next_delay(0.0) >= Duration::from_secs(1));
    }

    #[test]
    fn delays_double_within_jitter_and_stop_after_max_attempts() {
        let policy =
            RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        assert_eq!(policy.delay_after(1, 0.0, None), Some(Duration::from_millis(50)));
        assert_eq!(policy.delay_after(1, 1.0, None), Some(Duration::from_millis(100)));
        assert_eq!(policy.delay_after(2, 1.0, None), Some(Duration::from_millis(200)));
        assert_eq!(policy.delay_after(3, 1.0, None), Some(Duration::from_millis(400)));
        assert_eq!(policy.delay_after(4, 1.0, None), None);
        let capped = RetryPolicy { max_attempts: 40, ..policy };
        assert_eq!(capped.delay_after(39, 1.0, None), Some(Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1, 0.0, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        assert_eq!(policy.delay_after(1, 0.0, Some(Duration::from_secs(60))), None);
        assert_eq!(RetryPolicy { max_attempts: 1, ..policy }.delay_after(1, 0.5, None), None);
    }
}
