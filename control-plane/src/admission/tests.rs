//! Tests of the admission decisions and the counts behind them.

use super::*;

fn source(text: &str) -> Source {
    Source::of(text.parse().expect("an address"))
}

#[test]
fn the_per_source_limit_comes_before_the_total() {
    let limits = AdmissionLimits { unauthenticated: 4, unauthenticated_per_source: 2, ..Default::default() };
    let a = source("192.0.2.1");
    assert_eq!(admit(&limits, a, 0, 0), Ok(()));
    assert_eq!(admit(&limits, a, 3, 1), Ok(()));
    assert_eq!(admit(&limits, a, 3, 2), Err(Refusal::SourceFull { from: a, limit: 2 }));
    assert_eq!(admit(&limits, a, 4, 0), Err(Refusal::Full { limit: 4 }));
    assert_eq!(admit(&limits, a, 4, 2), Err(Refusal::SourceFull { from: a, limit: 2 }));
}

#[test]
fn places_are_counted_per_source_and_given_back() {
    let limits = AdmissionLimits { unauthenticated: 3, unauthenticated_per_source: 2, ..Default::default() };
    let mut admission = Admission::new(limits);
    let (a, b, c) = (source("192.0.2.1"), source("192.0.2.2"), source("192.0.2.3"));
    assert_eq!(admission.try_admit(a), Ok(()));
    assert_eq!(admission.try_admit(a), Ok(()));
    assert_eq!(admission.try_admit(a), Err(Refusal::SourceFull { from: a, limit: 2 }));
    assert_eq!(admission.try_admit(b), Ok(()));
    assert_eq!(admission.try_admit(c), Err(Refusal::Full { limit: 3 }));
    admission.release(a);
    assert_eq!(admission.try_admit(c), Ok(()));
    assert_eq!(admission.unauthenticated(), 3);
    for s in [a, b, c] {
        admission.release(s);
    }
    // A release without a place (never admitted) changes nothing.
    admission.release(c);
    assert_eq!(admission.unauthenticated(), 0);
    assert!(admission.pending.is_empty(), "no entry is kept for a source with nothing open");
}

#[test]
fn an_ipv6_prefix_is_one_source_and_mapped_ipv4_is_ipv4() {
    assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
    assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
    assert_eq!(source("::ffff:192.0.2.7"), source("192.0.2.7"));
    assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
}

#[test]
fn failed_enrolments_are_allowed_in_a_burst_then_one_per_interval() {
    let limits = AdmissionLimits {
        enrol_failures_burst: 3,
        enrol_failure_interval: Duration::from_secs(6),
        ..Default::default()
    };
    let mut admission = Admission::new(limits);
    let (a, b) = (source("192.0.2.1"), source("192.0.2.2"));
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(admission.may_enrol(a, t0), Ok(()));
        admission.enrol_failed(a, t0);
    }
    assert_eq!(admission.may_enrol(a, t0), Err(Duration::from_secs(6)));
    assert_eq!(admission.may_enrol(a, t0 + Duration::from_secs(5)), Err(Duration::from_secs(1)));
    assert_eq!(admission.may_enrol(b, t0), Ok(()), "another source is not slowed down");
    let later = t0 + Duration::from_secs(6);
    assert_eq!(admission.may_enrol(a, later), Ok(()));
    admission.enrol_failed(a, later);
    assert_eq!(admission.may_enrol(a, later), Err(Duration::from_secs(6)));
    // Quiet for the whole burst's worth of intervals: a full burst again.
    let rested = later + Duration::from_secs(18);
    for _ in 0..3 {
        assert_eq!(admission.may_enrol(a, rested), Ok(()));
        admission.enrol_failed(a, rested);
    }
    assert!(admission.may_enrol(a, rested).is_err());
}

#[test]
fn remembered_sources_are_bounded() {
    let limits = AdmissionLimits { tracked_sources: 4, enrol_failures_burst: 1, ..Default::default() };
    let mut admission = Admission::new(limits);
    let t0 = Instant::now();
    for n in 0..4u8 {
        admission.enrol_failed(Source::of(IpAddr::from([192, 0, 2, n])), t0 + Duration::from_secs(n.into()));
    }
    // Full of live entries: the one due soonest makes room.
    let fresh = Source::of(IpAddr::from([198, 51, 100, 1]));
    admission.enrol_failed(fresh, t0 + Duration::from_secs(4));
    assert_eq!(admission.failures.len(), 4);
    assert!(!admission.failures.contains_key(&Source::of(IpAddr::from([192, 0, 2, 0]))));
    assert!(admission.may_enrol(fresh, t0 + Duration::from_secs(4)).is_err());
    // Entries whose due time passed are pruned first.
    let much_later = t0 + Duration::from_secs(3600);
    admission.enrol_failed(Source::of(IpAddr::from([198, 51, 100, 2])), much_later);
    assert_eq!(admission.failures.len(), 1);
}
