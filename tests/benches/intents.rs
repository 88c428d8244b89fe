//! Intents executed per second through the `http` connector, printed as
//! figures (`cargo bench -p aios-tests --bench intents`): a control plane
//! and one edge process, the refund agent of `tests/data/refunds.toml` with
//! only its `shop.refund` step, against the tests' payment service on
//! loopback without faults. `AIOS_BENCH_INTENTS` tasks (default 500) are
//! submitted at once; the clock runs from the first submission until the
//! last task has succeeded. Each intent is declared, decided by Cedar,
//! written to the outbox, sent, and its result recorded, with its audit
//! events, as in production.

use std::time::{Duration, Instant};

use aios_tests::payments::{PaymentFaults, PaymentService};
use aios_tests::{bins, fleet_with, wait_for};
use reqwest::Method;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("AIOS_BENCH_INTENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let full = include_str!("../data/refunds.toml");
    let cut = full.find("[[agents.refunds.steps]]\nid = \"receipt\"").expect("the receipt step");
    let bundle = full[..cut]
        .replace("PAYMENTS_URL", &payments.url())
        .replace("RECEIPTS_DIR", receipts.path().to_str().expect("utf-8"));
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle).await?;
    let start = Instant::now();
    for i in 0..n {
        edge.submit(json!({
            "agent": "refunds",
            "input": {
                "order": { "id": format!("b-{i}"), "accounts": ["acct-1"] },
                "refund": { "amount": 1 + (i % 50), "account": "acct-1" },
                "reason": "bench",
            },
        }))
        .await?;
    }
    let submitted = start.elapsed();
    wait_for("every intent to run", Duration::from_secs(600), || async {
        let (_, health) = edge.api(Method::GET, "/v1/health", None).await?;
        Ok(health["tasks"]["succeeded"].as_u64() == Some(n as u64))
    })
    .await?;
    let elapsed = start.elapsed();
    assert_eq!(payments.effects().len(), n, "one effect per intent");
    println!(
        "http connector: {n} intents in {:.2} s = {:.1} intents/s end to end (submission took {:.2} s; \
         each intent: schema check, Cedar decision, outbox write, POST with Idempotency-Key, result, 4 audit events)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        submitted.as_secs_f64()
    );
    Ok(())
}
