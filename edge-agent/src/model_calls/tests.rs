use aios_models::catalog::Catalog;
use aios_shared::bundle::BundleSpec;

use aios_shared::router::{day_of, BudgetKey, MicroUsd, Permit, TierHealth, TokenCount};

use super::cloud::CloudError;
use super::*;

const BUNDLE: &str = r#"
autonomy = "supervised"

[gateway]
tiers = ["large"]
per_day_usd = 10.0

[tiers.large]
kind = "openai"
model = "any"
base_url = "http://127.0.0.1:9/v1"
price_in_per_1k = 0.5
price_out_per_1k = 1.5
"#;

fn tiers() -> (tempfile::TempDir, ModelCalls) {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = ModelStore::new(Catalog::builtin(), dir.path().to_owned());
    let tiers = ModelCalls::new(models, LoadOptions::default(), None, SharedClock::default());
    let spec = BundleSpec::from_toml(BUNDLE).expect("bundle parses");
    tiers.configure(&Arc::new(spec.definitions()));
    (dir, tiers)
}

/// A call dropped while the tier is still answering (a task's deadline,
/// a client that left) leaves no reservation open: the day is charged
/// the estimate, since the tier may bill what it produced.
#[tokio::test]
async fn a_dropped_escalation_is_settled_at_its_estimate() {
    let (_dir, tiers) = tiers();
    let estimated = TokenCount { input: 1000, output: 1000 };
    let call = tiers.route_gateway("large", None, "request-1", estimated, |_client| {
        std::future::pending::<Result<(), CloudError>>()
    });
    let dropped = tokio::time::timeout(Duration::from_millis(50), call).await;
    assert!(dropped.is_err(), "the call never answers, so the timeout drops it");
    assert_eq!(tiers.ledger_size(), (0, 0), "no account or reservation is left open");
    let ledger = tiers.inner.ledger.lock().expect("ledger lock");
    let day = ledger.ledger.day_view(GATEWAY_ACCOUNT, day_of(tiers.inner.clock.unix_ms()), MicroUsd::UNLIMITED);
    assert_eq!(day.committed, MicroUsd::from_usd(2.0).expect("usd"), "1000 tokens each way at 0.5 and 1.5 per 1k");
}

/// A half-open tier's probe dropped mid-call (a deadline) hands its turn
/// to the next call at once, instead of shutting the tier for a
/// cool-down as if it had been lost.
#[tokio::test]
async fn a_dropped_probe_passes_its_turn_on() {
    let (_dir, tiers) = tiers();
    let opened =
        tiers.inner.clock.instant().checked_sub(tiers.inner.breaker.cool_down).expect("up longer than a cool-down");
    tiers.with_breaker("large", |breaker| {
        (0..3).for_each(|_| breaker.record_failure(Permit::Normal, opened));
    });
    assert_eq!(tiers.breaker_health("large"), TierHealth::Available, "the cool-down is over: a probe may go");
    let estimated = TokenCount { input: 10, output: 10 };
    let call = tiers.route_gateway("large", None, "request-1", estimated, |_client| {
        std::future::pending::<Result<(), CloudError>>()
    });
    assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err(), "dropped mid-call");
    assert_eq!(tiers.breaker_health("large"), TierHealth::Available, "the next call may probe");
}

/// A finished task's account leaves the ledger; the task's next run
/// seeds it again from what its step records say it spent.
#[test]
fn finished_tasks_leave_the_ledger_and_resumptions_reseed() {
    let (_dir, tiers) = tiers();
    let key = BudgetKey { task: "task-1".into(), agent: "sorter".into(), day: 20_000 };
    tiers.seed_task(&key, 0.25);
    tiers.seed_task(&key, 0.25);
    let committed = |tiers: &ModelCalls| {
        let ledger = tiers.inner.ledger.lock().expect("ledger lock");
        ledger.ledger.task_view("task-1", MicroUsd::UNLIMITED).committed
    };
    assert_eq!(committed(&tiers), MicroUsd::from_usd(0.25).expect("usd"), "seeded once");
    assert_eq!(tiers.ledger_size(), (1, 0));
    tiers.forget_task("task-1");
    assert_eq!(tiers.ledger_size(), (0, 0));
    tiers.seed_task(&key, 0.5);
    assert_eq!(committed(&tiers), MicroUsd::from_usd(0.5).expect("usd"), "a resumed run reseeds");
}
