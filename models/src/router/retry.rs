//! How often and how long to wait before retrying a retryable failure
//! (5xx, timeout, refused connection, 429), as a pure value: the caller
//! supplies the random number and does the sleeping.

use std::time::Duration;

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
        let factor = 1u32.checked_shl(failed_attempts - 1).unwrap_or(u32::MAX);
        let cap = self.base_delay.saturating_mul(factor).min(self.max_delay);
        // Half fixed, half random: retries spread out but never become a tight loop.
        let jittered = cap.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
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
