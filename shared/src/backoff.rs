//! Exponential backoff with full jitter, as a pure value: the caller supplies
//! the randomness and does the sleeping.

use std::time::Duration;

/// Reconnect delays that double from `base` up to `max`, each drawn uniformly
/// from `[0, cap]` so a fleet that lost its control plane does not return in
/// lockstep.
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
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        // Never less than a tenth of the cap, so retries cannot become a tight loop.
        cap.mul_f64(0.1 + 0.9 * unit.clamp(0.0, 1.0))
    }

    /// Jumps straight to the largest delay (for refusals retrying cannot fix).
    pub fn saturate(&mut self) {
        self.attempt = 32;
    }

    /// Resets after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
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
}
