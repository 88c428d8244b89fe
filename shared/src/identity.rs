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
//!
//! The fleet CA rotates with an overlap. The control plane announces the
//! CAs to trust on every sync connection ([`announcement`]): the issuing one
//! first, then the one being retired with the time it stops being trusted.
//! Edges take an announcement only if it keeps a CA they trust now
//! ([`check_anchors`]), so a connection cannot swap their trust wholesale.
//! During the overlap both sides trust both CAs, and a certificate issued
//! by the retiring CA is renewed at once, whatever its age
//! ([`renewal_wanted`], [`renewal_granted`]). When the overlap ends the old
//! CA opens nothing, on either side, without any further message.

use crate::wire::TrustedCa;

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
/// One from the CA that issues now replacing one from a retiring CA need
/// not expire later (a rotation may follow enrolment within the second).
pub fn check_grant(
    current: Validity,
    current_from_issuing_ca: bool,
    granted: Validity,
    same_key: bool,
    now_ms: i64,
) -> Result<(), GrantProblem> {
    if !same_key {
        return Err(GrantProblem::OtherKey);
    }
    if !granted.contains(now_ms) {
        return Err(GrantProblem::NotCurrent);
    }
    if current_from_issuing_ca && granted.not_after_ms <= current.not_after_ms {
        return Err(GrantProblem::NotLater);
    }
    Ok(())
}

/// Whether an edge asks for a new certificate now: it is two thirds
/// through its life, or its issuer is not the CA that issues now.
pub fn renewal_wanted(validity: Validity, from_issuing_ca: bool, now_ms: i64) -> bool {
    !from_issuing_ca || validity.renewal_due(now_ms)
}

/// Whether the control plane renews a certificate the edge presented: from
/// half its life on, or at once when a CA being retired issued it.
pub fn renewal_granted(validity: Validity, from_issuing_ca: bool, now_ms: i64) -> bool {
    !from_issuing_ca || validity.renewal_grantable(now_ms)
}

/// The most CAs an announcement may name.
pub const MAX_TRUST_ANCHORS: usize = 4;

/// The largest CA certificate an edge stores, in bytes.
pub const MAX_CA_LEN: usize = 16 * 1024;

/// Why an edge does not take an announced set of CAs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorProblem {
    /// It names no CA, or more than [`MAX_TRUST_ANCHORS`].
    #[error("an announcement names 1 to {MAX_TRUST_ANCHORS} CAs, this one {0}")]
    Count(usize),
    /// A certificate is larger than [`MAX_CA_LEN`].
    #[error("a CA certificate of {0} bytes is larger than {MAX_CA_LEN}")]
    TooLarge(usize),
    /// The first CA retires, or a later one does not.
    #[error("the issuing CA comes first and only retiring CAs carry a retirement time")]
    Shape,
    /// It keeps none of the CAs the edge trusts now.
    #[error("the announcement keeps none of the CAs this edge trusts")]
    NoContinuity,
}

/// The CAs of `anchors` still trusted at `now_ms`.
pub fn trusted_at(anchors: &[TrustedCa], now_ms: i64) -> impl Iterator<Item = &TrustedCa> {
    anchors.iter().filter(move |ca| ca.retires_at_ms.is_none_or(|at| now_ms < at))
}

/// Whether an edge that trusts `current` takes `announced` in its place.
pub fn check_anchors(current: &[TrustedCa], announced: &[TrustedCa], now_ms: i64) -> Result<(), AnchorProblem> {
    if announced.is_empty() || announced.len() > MAX_TRUST_ANCHORS {
        return Err(AnchorProblem::Count(announced.len()));
    }
    if let Some(large) = announced.iter().find(|ca| ca.der.len() > MAX_CA_LEN) {
        return Err(AnchorProblem::TooLarge(large.der.len()));
    }
    if announced[0].retires_at_ms.is_some() || announced[1..].iter().any(|ca| ca.retires_at_ms.is_none()) {
        return Err(AnchorProblem::Shape);
    }
    let continuous = announced.iter().any(|new| trusted_at(current, now_ms).any(|old| old.der == new.der));
    if !continuous {
        return Err(AnchorProblem::NoContinuity);
    }
    Ok(())
}

/// What the control plane announces at `now_ms`: the issuing CA, then each
/// retiring CA (DER, end of its overlap) still in its overlap.
pub fn announcement(issuing: &[u8], retiring: &[(Vec<u8>, i64)], now_ms: i64) -> Vec<TrustedCa> {
    let issuing = TrustedCa { der: issuing.to_vec(), retires_at_ms: None };
    let retiring = retiring
        .iter()
        .filter(|(_, until)| now_ms < *until)
        .map(|(der, until)| TrustedCa { der: der.clone(), retires_at_ms: Some(*until) });
    std::iter::once(issuing).chain(retiring).collect()
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
        assert_eq!(check_grant(current, true, granted, true, now), Ok(()));
        assert_eq!(check_grant(current, true, granted, false, now), Err(GrantProblem::OtherKey));
        assert_eq!(check_grant(current, true, year_from(now + DAY), true, now), Err(GrantProblem::NotCurrent));
        assert_eq!(check_grant(current, true, current, true, now), Err(GrantProblem::NotLater));
        // Moving to a new CA need not extend the life.
        assert_eq!(check_grant(granted, false, granted, true, now), Ok(()));
    }

    fn ca(der: u8, retires_at_ms: Option<i64>) -> TrustedCa {
        TrustedCa { der: vec![der], retires_at_ms }
    }

    #[test]
    fn a_certificate_from_a_retiring_ca_is_renewed_at_any_age() {
        let fresh = year_from(0);
        assert!(!renewal_wanted(fresh, true, DAY));
        assert!(renewal_wanted(fresh, false, DAY));
        assert!(!renewal_granted(fresh, true, DAY));
        assert!(renewal_granted(fresh, false, DAY));
        assert!(renewal_wanted(fresh, true, 300 * DAY) && renewal_granted(fresh, true, 300 * DAY));
    }

    #[test]
    fn the_control_plane_announces_a_retiring_ca_only_during_its_overlap() {
        let set = announcement(&[2], &[(vec![1], 30 * DAY)], DAY);
        assert_eq!(set, vec![ca(2, None), ca(1, Some(30 * DAY))]);
        assert_eq!(announcement(&[2], &[(vec![1], 30 * DAY)], 30 * DAY), vec![ca(2, None)]);
        assert_eq!(trusted_at(&set, 30 * DAY - 1).count(), 2);
        assert_eq!(trusted_at(&set, 30 * DAY).map(|ca| ca.der[0]).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn an_edge_takes_an_announcement_only_if_it_keeps_a_ca_trusted_now() {
        let old = vec![ca(1, None)];
        let overlap = vec![ca(2, None), ca(1, Some(30 * DAY))];
        assert_eq!(check_anchors(&old, &overlap, DAY), Ok(()));
        assert_eq!(check_anchors(&overlap, &[ca(2, None)], 31 * DAY), Ok(()));
        // An edge that slept through the whole overlap trusts nothing new.
        assert_eq!(check_anchors(&old, &[ca(2, None)], 31 * DAY), Err(AnchorProblem::NoContinuity));
        assert_eq!(check_anchors(&overlap, &[ca(3, None)], DAY), Err(AnchorProblem::NoContinuity));
        // Once the overlap ended, the retired CA no longer carries trust.
        assert_eq!(
            check_anchors(&overlap, &[ca(3, None), ca(1, Some(90 * DAY))], 31 * DAY),
            Err(AnchorProblem::NoContinuity)
        );
        assert_eq!(check_anchors(&old, &[], DAY), Err(AnchorProblem::Count(0)));
        assert_eq!(check_anchors(&old, &vec![ca(1, None); 5], DAY), Err(AnchorProblem::Count(5)));
        assert_eq!(check_anchors(&old, &[ca(1, Some(DAY))], 0), Err(AnchorProblem::Shape));
        assert_eq!(check_anchors(&old, &[ca(1, None), ca(2, None)], 0), Err(AnchorProblem::Shape));
        let large = TrustedCa { der: vec![1; MAX_CA_LEN + 1], retires_at_ms: None };
        assert_eq!(check_anchors(&old, &[large], 0), Err(AnchorProblem::TooLarge(MAX_CA_LEN + 1)));
    }
}
