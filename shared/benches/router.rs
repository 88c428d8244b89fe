//! Router decision time: `route` over a three-tier table for the common
//! cases (local accepted, escalated, every tier skipped). Prints nanoseconds
//! per decision; run with `cargo bench -p aios-shared --bench router`.

use std::hint::black_box;
use std::time::Instant;

use aios_shared::router::{
    route, BudgetView, Egress, MicroUsd, Price, RiskClass, RouteInput, Tier, TierHealth, Tiers, TokenCount, Validation,
};

fn main() {
    let tiers = Tiers::new(vec![
        Tier::local("local"),
        Tier::remote("gpu-edge", "10.0.0.7:8088", Price::FREE),
        Tier::remote(
            "large",
            "api.openai.com",
            Price { input_per_1k: MicroUsd(2_500), output_per_1k: MicroUsd(10_000) },
        ),
    ])
    .expect("valid tiers");
    let all_up = [TierHealth::Available; 3];
    let breaker_open = [TierHealth::Available, TierHealth::Unavailable, TierHealth::Available];
    let egress = [Egress::Allowed; 3];
    let base = RouteInput {
        kind_escalates: false,
        requested: false,
        risk: RiskClass::Medium,
        local_confidence: Some(0.93),
        confidence_threshold: 0.8,
        validation: Validation::Passed,
        estimated_tokens: TokenCount { input: 1_200, output: 300 },
        task_budget: BudgetView { limit: MicroUsd(50_000), committed: MicroUsd(1_000) },
        day_budget: BudgetView { limit: MicroUsd(1_000_000), committed: MicroUsd(20_000) },
        health: &all_up,
        egress: &egress,
    };
    let cases = [
        ("local accepted", base),
        ("escalated, first tier", RouteInput { local_confidence: Some(0.4), ..base }),
        ("escalated, one tier skipped", RouteInput { local_confidence: Some(0.4), health: &breaker_open, ..base }),
        (
            "fallback to local, all skipped",
            RouteInput {
                local_confidence: Some(0.4),
                health: &breaker_open,
                task_budget: BudgetView { limit: MicroUsd(5_000), committed: MicroUsd(4_000) },
                ..base
            },
        ),
    ];
    const ITERATIONS: u32 = 2_000_000;
    println!("router decision time ({ITERATIONS} decisions per case)");
    for (name, input) in cases {
        // Warm up, then time.
        for _ in 0..10_000 {
            black_box(route(black_box(&tiers), black_box(&input)));
        }
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            black_box(route(black_box(&tiers), black_box(&input)));
        }
        let per_decision = start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
        println!("  {name:<32} {per_decision:>8.1} ns/decision");
    }
}
