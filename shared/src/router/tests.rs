use super::*;

/// `local`, then two escalation tiers: another edge on the LAN and a cloud endpoint.
fn tiers() -> Tiers {
    let price = |input, output| Price { input_per_1k: MicroUsd(input), output_per_1k: MicroUsd(output) };
    Tiers::new(vec![
        Tier::local("local"),
        Tier::remote("gpu-edge", "10.0.0.7:8088", Price::FREE),
        Tier::remote("large", "api.openai.com", price(2_500, 10_000)),
    ])
    .unwrap()
}

const ALL_UP: [TierHealth; 3] = [TierHealth::Available; 3];
const ALL_ALLOWED: [Egress; 3] = [Egress::Allowed; 3];

fn input() -> RouteInput<'static> {
    RouteInput {
        kind_escalates: false,
        requested: false,
        risk: RiskClass::Medium,
        local_confidence: Some(0.9),
        confidence_threshold: 0.8,
        validation: Validation::NotChecked,
        estimated_tokens: TokenCount { input: 1_000, output: 500 },
        task_budget: BudgetView { limit: MicroUsd(10_000), committed: MicroUsd::ZERO },
        day_budget: BudgetView::UNLIMITED,
        health: &ALL_UP,
        egress: &ALL_ALLOWED,
    }
}

/// The decision as one line: target, review flag, reason.
fn check(input: RouteInput<'_>, expected: &str) {
    let tiers = tiers();
    let decision = route(&tiers, &input);
    let target = match decision.target {
        RouteTarget::Tier(id) => tiers.spec(id).name.clone(),
        RouteTarget::Wait => "WAIT".to_owned(),
    };
    let actual = format!("{target}{}: {}", if decision.needs_review { " [review]" } else { "" }, decision.reason);
    assert_eq!(actual, expected);
}

#[test]
fn confident_local_output_stands() {
    check(input(), "local: local output accepted: confidence 0.90 reaches threshold 0.80");
    check(
        RouteInput { local_confidence: None, ..input() },
        "local: local output accepted: not scored, and the step is not high-risk",
    );
    check(
        RouteInput { local_confidence: None, risk: RiskClass::High, validation: Validation::Passed, ..input() },
        "local: local output accepted: validation passed",
    );
}

#[test]
fn each_trigger_escalates_to_the_first_declared_tier() {
    check(RouteInput { kind_escalates: true, ..input() }, "gpu-edge: escalated (the step kind escalates)");
    check(
        RouteInput { requested: true, local_confidence: Some(0.99), ..input() },
        "gpu-edge: escalated (the caller asked for an escalation tier)",
    );
    check(
        RouteInput { local_confidence: Some(0.41), ..input() },
        "gpu-edge: escalated (local confidence 0.41 is below threshold 0.80)",
    );
    check(
        RouteInput { local_confidence: Some(f64::NAN), ..input() },
        "gpu-edge: escalated (local confidence NaN is below threshold 0.80)",
    );
    check(
        RouteInput { validation: Validation::Failed, ..input() },
        "gpu-edge: escalated (the local output failed validation)",
    );
    check(
        RouteInput { local_confidence: None, risk: RiskClass::High, ..input() },
        "gpu-edge: escalated (high-risk step with an unscored, unvalidated local output)",
    );
    check(
        RouteInput { health: &[TierHealth::Unavailable, TierHealth::Available, TierHealth::Available], ..input() },
        "gpu-edge: escalated (the local model is unavailable)",
    );
}

#[test]
fn unusable_tiers_are_skipped_in_order_with_their_causes() {
    let breaker_open = [TierHealth::Available, TierHealth::Unavailable, TierHealth::Available];
    check(
        RouteInput { kind_escalates: true, health: &breaker_open, ..input() },
        "large: escalated (the step kind escalates); skipped `gpu-edge`: circuit breaker open",
    );
    // A tier that failed earlier in the same call is not said to have an open breaker.
    let failed = [TierHealth::Available, TierHealth::FailedThisCall, TierHealth::Available];
    check(
        RouteInput { kind_escalates: true, health: &failed, ..input() },
        "large: escalated (the step kind escalates); skipped `gpu-edge`: failed on this call",
    );
    // 1000 in at 0.0025 + 500 out at 0.0100 per 1k = 0.0075; 0.0045 already spent.
    check(
        RouteInput {
            kind_escalates: true,
            health: &breaker_open,
            task_budget: BudgetView { limit: MicroUsd(10_000), committed: MicroUsd(4_500) },
            ..input()
        },
        "local [review]: no escalation tier usable, falling back to the local model (the step kind escalates); \
         skipped `gpu-edge`: circuit breaker open; skipped `large`: budget exhausted: task 0.0120 of 0.0100 USD",
    );
    check(
        RouteInput {
            kind_escalates: true,
            egress: &[Egress::Allowed, Egress::Allowed, Egress::Blocked],
            health: &breaker_open,
            ..input()
        },
        "local [review]: no escalation tier usable, falling back to the local model (the step kind escalates); \
         skipped `gpu-edge`: circuit breaker open; skipped `large`: air-gapped: host not on the allow-list",
    );
    check(
        RouteInput {
            validation: Validation::Failed,
            day_budget: BudgetView { limit: MicroUsd(20_000), committed: MicroUsd(19_000) },
            health: &breaker_open,
            ..input()
        },
        "local [review]: no escalation tier usable, falling back to the local model (the local output failed \
         validation); skipped `gpu-edge`: circuit breaker open; skipped `large`: budget exhausted: agent day \
         0.0265 of 0.0200 USD",
    );
}

#[test]
fn nothing_usable_means_wait() {
    check(
        RouteInput { health: &[TierHealth::Unavailable; 3], ..input() },
        "WAIT: waiting: neither an escalation tier nor the local model is usable (the local model is unavailable); \
         skipped `gpu-edge`: circuit breaker open; skipped `large`: circuit breaker open",
    );
    // Missing per-tier facts fail closed.
    check(
        RouteInput { kind_escalates: true, health: &[TierHealth::Available], egress: &[], ..input() },
        "local [review]: no escalation tier usable, falling back to the local model (the step kind escalates); \
         skipped `gpu-edge`: air-gapped: host not on the allow-list; skipped `large`: air-gapped: host not on the \
         allow-list",
    );
}

#[test]
fn budget_shortfall_is_machine_readable() {
    let input = RouteInput {
        kind_escalates: true,
        egress: &[Egress::Allowed, Egress::Blocked, Egress::Allowed],
        task_budget: BudgetView { limit: MicroUsd(10_000), committed: MicroUsd(4_500) },
        ..input()
    };
    let decision = route(&tiers(), &input);
    assert_eq!(decision.reason.code(), "fallback_to_local");
    assert_eq!(
        decision.reason.budget_shortfall(),
        Some(&BudgetShortfall { scope: BudgetScope::Task, would_reach: MicroUsd(12_000), limit: MicroUsd(10_000) })
    );
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["reason"]["kind"], "fallback_to_local");
    assert_eq!(json["reason"]["skipped"][1]["cause"]["kind"], "budget_exhausted");
    assert_eq!(json["needs_review"], true);
}

#[test]
fn air_gap_allows_only_listed_hosts() {
    let tiers = tiers();
    let gap = AirGap { enabled: true, allowed_hosts: vec!["10.0.0.7".to_owned()] };
    assert_eq!(gap.egress_all(&tiers), vec![Egress::Allowed, Egress::Allowed, Egress::Blocked]);
    let port_pinned =
        AirGap { enabled: true, allowed_hosts: vec!["10.0.0.7:9999".to_owned(), "API.openai.com".into()] };
    assert_eq!(port_pinned.egress_all(&tiers), vec![Egress::Allowed, Egress::Blocked, Egress::Allowed]);
    let off = AirGap { enabled: false, allowed_hosts: Vec::new() };
    assert_eq!(off.egress_all(&tiers), vec![Egress::Allowed; 3]);
    let ipv6 = Tier::remote("v6", "[::1]:8080", Price::FREE);
    assert_eq!(AirGap { enabled: true, allowed_hosts: vec!["[::1]".into()] }.egress(&ipv6), Egress::Allowed);
    assert_eq!(AirGap { enabled: true, allowed_hosts: vec!["::1".into()] }.egress(&ipv6), Egress::Blocked);
}

#[test]
fn tier_tables_need_unique_names_and_a_local_tier() {
    let remote = Tier::remote("large", "api.openai.com", Price::FREE);
    assert_eq!(Tiers::new(vec![remote.clone()]), Err(TierError::NoLocalTier));
    assert_eq!(Tiers::new(vec![Tier::local("a"), Tier::local("a")]), Err(TierError::DuplicateName("a".to_owned())));
    let tiers = Tiers::new(vec![remote, Tier::local("local")]).unwrap();
    assert_eq!(tiers.fallback(), TierId(1));
    assert_eq!(tiers.find("large"), Some(TierId(0)));
}

#[test]
fn prices_round_up_and_money_prints_in_dollars() {
    let price = Price { input_per_1k: MicroUsd(150), output_per_1k: MicroUsd(600) };
    assert_eq!(price.cost(TokenCount { input: 1, output: 0 }), MicroUsd(1));
    assert_eq!(price.cost(TokenCount { input: 2_000, output: 1_000 }), MicroUsd(900));
    assert_eq!(MicroUsd(12_000).to_string(), "0.0120");
    assert_eq!(MicroUsd(150).to_string(), "0.00015");
    assert_eq!(MicroUsd(3_000_001).to_string(), "3.000001");
    assert_eq!(MicroUsd::UNLIMITED.to_string(), "unlimited");
    assert_eq!(MicroUsd::from_usd(0.0025), Some(MicroUsd(2_500)));
    assert_eq!(MicroUsd::from_usd(-1.0), None);
    assert_eq!(MicroUsd::from_usd(f64::NAN), None);
}

#[test]
fn data_above_a_tiers_classification_stays_on_the_edge() {
    use crate::memory::Classification::{Confidential, Internal, Restricted};
    let mut egress = vec![Egress::Allowed, Egress::Allowed, Egress::Blocked];
    let limits = [None, Some(Internal), Some(Internal)];
    limit_egress(&mut egress, &limits, None);
    assert_eq!(egress, [Egress::Allowed, Egress::Allowed, Egress::Blocked], "no data, no limit");
    limit_egress(&mut egress, &limits, Some(Internal));
    assert_eq!(egress[1], Egress::Allowed, "internal data may go to an internal tier");
    limit_egress(&mut egress, &limits, Some(Confidential));
    assert_eq!(egress[0], Egress::Allowed, "the local tier has no limit");
    assert_eq!(egress[1], Egress::AboveClassification { data: Confidential, limit: Internal });
    assert_eq!(egress[2], Egress::Blocked, "the air gap's verdict stands");
    let input = RouteInput { kind_escalates: true, egress: &egress, ..input() };
    let decision = route(&tiers(), &input);
    let text = decision.reason.to_string();
    assert!(text.contains("the data is confidential, above the internal this tier may receive"), "{text}");
    assert_eq!(decision.target, RouteTarget::Tier(TierId(0)), "it stays local: {text}");
    assert!(decision.needs_review);
    let mut egress = vec![Egress::Allowed; 3];
    limit_egress(&mut egress, &[None, Some(Restricted), Some(Internal)], Some(Confidential));
    assert_eq!(egress[1], Egress::Allowed, "a tier cleared for restricted data takes confidential data");
}
