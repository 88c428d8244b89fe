//! When certificates are renewed: the edge's and the control plane's rules
//! over a certificate's validity period, as pure functions of `now`.
//!
//! An edge asks for a new certificate once two thirds of its current one's
//! life has passed ([`Validity::renewal_due`]), on the authenticated sync
//! connection, for the same key. The control plane grants one only from
//! half-life on ([`Validity::renewal_grantable`]), so an edge cannot make it
//! sign certificates in a loop. The edge keeps the certificate it has until
//! the new one checks out ([`check_grant`]); the control plane accepts the
//! old one until the edge connects with the new one. With a year of
//! validity, an edge has four months in which any connection renews it.

/// A certificate's validity period, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before_ms: i64,
    /// Not valid after.
    pub not_after_ms: i64,
}

/// Why a granted certificate is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantProblem {
    /// It is for another key than the edge's.
    #[error("the certificate is for another key")]
    OtherKey,
    /// It is not valid now.
    #[error("the certificate is not valid now")]
    NotCurrent,
    /// It expires no later than the one the edge has.
    #[error("the certificate expires no later than the current one")]
    NotLater,
}

impl Validity {
    fn elapsed_at_least(&self, now_ms: i64, numerator: i64, denominator: i64) -> bool {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms).max(0);
        let threshold = self.not_before_ms.saturating_add(life / denominator * numerator);
        now_ms >= threshold
    }

    /// Whether the edge should ask for a new certificate: two thirds of the
    /// life has passed (an expired one is due too, though no longer usable).
    pub fn renewal_due(&self, now_ms: i64) -> bool {
        self.elapsed_at_least(now_ms, 2, 3)
    }

    /// Whether the control plane issues a new certificate to an edge that
    /// presents this one: from half its life on.
    pub fn renewal_grantable(&self, now_ms: i64) -> bool {
        self.elapsed_at_least(now_ms, 1, 2)
    }

    /// Whether `now_ms` is inside the period.
    pub fn contains(&self, now_ms: i64) -> bool {
        self.not_before_ms <= now_ms && now_ms <= self.not_after_ms
    }
}

/// Whether the edge takes a granted certificate in place of `current`.
pub fn check_grant(current: Validity, granted: Validity, same_key: bool, now_ms: i64) -> Result<(), GrantProblem> {
    if !same_key {
        return Err(GrantProblem::OtherKey);
    }
    if !granted.contains(now_ms) {
        return Err(GrantProblem::NotCurrent);
    }
    if granted.not_after_ms <= current.not_after_ms {
        return Err(GrantProblem::NotLater);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn year_from(start: i64) -> Validity {
        Validity { not_before_ms: start, not_after_ms: start + 365 * DAY }
    }

    #[test]
    fn an_edge_renews_from_two_thirds_of_the_life_and_the_control_plane_grants_from_half() {
        let cert = year_from(0);
        assert!(!cert.renewal_due(243 * DAY));
        assert!(cert.renewal_due(244 * DAY));
        assert!(cert.renewal_due(400 * DAY), "an expired certificate is due too");
        assert!(!cert.renewal_grantable(182 * DAY));
        assert!(cert.renewal_grantable(183 * DAY));
        // Whatever the edge asks for when due, the control plane grants.
        for day in 0..400 {
            assert!(!cert.renewal_due(day * DAY) || cert.renewal_grantable(day * DAY), "day {day}");
        }
    }

    #[test]
    fn a_degenerate_period_is_always_due() {
        let cert = Validity { not_before_ms: 10, not_after_ms: 5 };
        assert!(cert.renewal_due(10));
        assert!(!cert.contains(10));
    }

    #[test]
    fn a_grant_must_be_for_the_same_key_current_and_later() {
        let current = year_from(0);
        let now = 250 * DAY;
        let granted = year_from(now - DAY / 24);
        assert_eq!(check_grant(current, granted, true, now), Ok(()));
        assert_eq!(check_grant(current, granted, false, now), Err(GrantProblem::OtherKey));
        assert_eq!(check_grant(current, year_from(now + DAY), true, now), Err(GrantProblem::NotCurrent));
        assert_eq!(check_grant(current, current, true, now), Err(GrantProblem::NotLater));
    }
}
