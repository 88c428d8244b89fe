//! The agent loop's own cost per iteration, printed as figures (`cargo
//! bench -p aios-tests --bench agent_loop`): one edge process runs an agent
//! step whose model (the tests' scripted planner on loopback, tier `big`)
//! calls a connector action (`shop.note`, an HTTP POST to the tests'
//! payment service) on every turn. An iteration's overhead is the time from
//! the planner having its reply ready to the next request arriving: the
//! reply's transit, journaling the turn, the call's intent (schema, Cedar,
//! outbox), the connector's POST and its result, journaling the outcome,
//! the next transcript and the next request's transit. Model time is what
//! the planner itself takes, and is left out. `AIOS_BENCH_LOOP_TASKS` tasks
//! (default 3) of `AIOS_BENCH_LOOP_TURNS` turns (default 100) run one after
//! another.

use std::sync::Arc;
use std::time::Duration;

use aios_tests::payments::{PaymentFaults, PaymentService};
use aios_tests::planner::{self, calls, text, Planner};
use aios_tests::{bins, fleet_with};
use serde_json::{json, Value};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (tasks, turns) = (env("AIOS_BENCH_LOOP_TASKS", 3), env("AIOS_BENCH_LOOP_TURNS", 100));
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let script = move |request: &Value| {
        let turn = planner::turn(request);
        if turn < turns {
            calls(turn, &[("shop_note", json!({ "order_id": "bench", "text": format!("turn {turn}") }))])
        } else {
            text("done")
        }
    };
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let bundle = include_str!("../data/agent_loop.toml")
        .replace("PAYMENTS_URL", &payments.url())
        .replace("RECEIPTS_DIR", receipts.path().to_str().expect("utf-8"))
        .replace("MODEL_URL", &planner.url())
        .replace("max_iterations = 8", &format!("max_iterations = {}\nmax_tool_calls = {}", turns + 1, turns));
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle).await?;
    let mut overheads: Vec<f64> = Vec::new();
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for n in 0..tasks {
        let before = planner.requests().len();
        let task = edge
            .submit(json!({ "agent": "desk", "input": {
                "case": "bench", "order": { "id": format!("bench-{n}"), "accounts": ["acct-1"] }, "text": "bench" } }))
            .await?;
        let done = edge.finished_task(task["id"].as_str().unwrap_or_default(), Duration::from_secs(600)).await?;
        anyhow::ensure!(done["state"] == "succeeded", "the bench task did not succeed: {done:#}");
        let requests = planner.requests()[before..].to_vec();
        for (turn, pair) in requests.windows(2).enumerate() {
            let answered = pair[0].answered.expect("answered");
            let ms = pair[1].at.saturating_duration_since(answered).as_secs_f64() * 1e3;
            overheads.push(ms);
            if turn < 10 {
                early.push(ms);
            } else if turn + 10 >= turns {
                late.push(ms);
            }
        }
    }
    overheads.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let at = |q: f64| overheads[((overheads.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "agent loop: {} iterations (one model turn and one http connector call each), overhead per iteration \
         excluding model time: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        overheads.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    println!(
        "agent loop: mean overhead of the first 10 iterations {:.2} ms, of the last 10 {:.2} ms (the conversation grows)",
        mean(&early),
        mean(&late)
    );
    Ok(())
}
