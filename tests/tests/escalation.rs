//! Escalation against a real OpenAI-compatible server over HTTP: a second
//! `aios-edge` process serving its gateway is the first edge's `large` tier.
//! Low confidence escalates; budget exhaustion and the air gap keep the step
//! local and say why; a killed large tier opens the breaker and the fallback
//! chain applies.

use std::time::Duration;

use aios_tests::{bins, wait_for, ControlPlaneProc, EdgeProc};
use anyhow::Context;
use reqwest::Method;
use serde_json::json;

const LONG: Duration = Duration::from_secs(300);

fn bundle(large_port: u16, air_gapped: bool) -> String {
    format!(
        r#"
autonomy = "supervised"
valid_for = "1d"

[runtime]
max_concurrent_tasks = 1
air_gapped = {air_gapped}
allowed_hosts = ["10.1.2.3"]

[tiers.local]
kind = "local"
model = "smollm2-135m-instruct"

[tiers.large]
kind = "openai"
model = "smollm2-135m-instruct"
base_url = "http://127.0.0.1:{large_port}/v1"
price_in_per_1k = 0.5
price_out_per_1k = 1.5
timeout = "60s"

[agents.sorter]
version = 1
escalate_to = ["large"]

[[agents.sorter.steps]]
id = "category"
kind = "classify"
labels = ["refund", "shipping", "other"]
threshold = 0.99
subject = "{{{{ input.text }}}}"
examples = [
    {{ text = "I was charged twice, please give me my money back.", label = "refund" }},
    {{ text = "Where is my parcel?", label = "shipping" }},
    {{ text = "Do you sell gift cards?", label = "other" }},
]
prompt = "Message: I was charged twice, please give me my money back.\nTopic: refund\n\nMessage: Where is my parcel?\nTopic: shipping\n\nMessage: {{{{ input.text }}}}\nTopic:"

[agents.frugal]
version = 1
escalate_to = ["large"]
budget = {{ per_task_usd = 0.000001 }}

[[agents.frugal.steps]]
id = "category"
kind = "classify"
labels = ["refund", "shipping", "other"]
threshold = 0.99
subject = "{{{{ input.text }}}}"
examples = [
    {{ text = "I was charged twice, please give me my money back.", label = "refund" }},
    {{ text = "Where is my parcel?", label = "shipping" }},
    {{ text = "Do you sell gift cards?", label = "other" }},
]
prompt = "Message: I was charged twice, please give me my money back.\nTopic: refund\n\nMessage: Where is my parcel?\nTopic: shipping\n\nMessage: {{{{ input.text }}}}\nTopic:"
"#
    )
}

/// Gateway calls the large edge has recorded in its audit log.
fn gateway_calls(edge: &EdgeProc) -> anyhow::Result<i64> {
    let conn = rusqlite::Connection::open(edge.dir.join("edge.db"))?;
    Ok(conn.query_row("SELECT COUNT(*) FROM audit_log WHERE kind = 'gateway.call'", [], |r| r.get(0))?)
}

async fn first_step(edge: &EdgeProc, agent: &str) -> anyhow::Result<serde_json::Value> {
    let text = "I want a refund for my broken kettle, give me my money back.";
    let task = edge.submit(json!({ "agent": agent, "input": { "text": text } })).await?;
    let done = edge.finished_task(task["id"].as_str().context("id")?, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    Ok(done["steps"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_breaker_budget_and_air_gap_against_a_second_edge() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut large = EdgeProc::enroll(&bins, &tmp.path().join("large"), &cp.sync_addr(), &cp.token("10m")?)?;
    large.run_args = vec!["--gateway".into()];
    large.start()?;
    let mut small = EdgeProc::enroll(&bins, &tmp.path().join("small"), &cp.sync_addr(), &cp.token("10m")?)?;
    small.start()?;
    wait_for("the large edge's gateway", LONG, || async {
        Ok(large.api(Method::GET, "/v1/models", None).await.is_ok_and(|(status, _)| status == 200))
    })
    .await?;
    let publish_and_wait = |toml: String| {
        let (cp, small) = (&cp, &small);
        async move {
            let version = cp.publish(&toml)?;
            wait_for("the small edge to apply the bundle", LONG, || async {
                Ok(small.api(Method::GET, "/v1/health", None).await?.1["bundle_version"].as_u64() == Some(version))
            })
            .await
        }
    };
    publish_and_wait(bundle(large.api_port, false)).await?;

    // Low confidence escalates to the large tier, which is billed.
    let step = first_step(&small, "sorter").await?;
    assert_eq!(step["tier"], "large", "{step:#}");
    let reason = step["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("escalated") && reason.contains("below threshold 0.99"), "{reason}");
    assert!(step["cost_usd"].as_f64().unwrap_or(0.0) > 0.0, "{step:#}");
    assert!(step["tokens_in"].as_u64().unwrap_or(0) > 0, "{step:#}");
    assert_eq!(step["needs_review"], false);
    let calls_after_escalation = gateway_calls(&large)?;
    assert!(calls_after_escalation >= 1, "the large edge recorded no gateway call");

    // A budget too small for the call keeps it local, marked for review, and says why.
    let step = first_step(&small, "frugal").await?;
    assert_eq!(step["tier"], "local", "{step:#}");
    assert_eq!(step["needs_review"], true, "{step:#}");
    let reason = step["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("budget exhausted: task"), "{reason}");

    // Air-gapped: the large tier's host is not allowed, so it is never called.
    publish_and_wait(bundle(large.api_port, true)).await?;
    let step = first_step(&small, "sorter").await?;
    assert_eq!(step["tier"], "local", "{step:#}");
    assert!(step["reason"].as_str().unwrap_or_default().contains("air-gapped"), "{step:#}");
    assert_eq!(gateway_calls(&large)?, calls_after_escalation, "an air-gapped edge called the large tier");

    // The large tier goes down: the call fails (after retries), the task
    // falls back to the local model for review, and the breaker opens so the
    // next task does not even try.
    publish_and_wait(bundle(large.api_port, false)).await?;
    large.kill9();
    let step = first_step(&small, "sorter").await?;
    assert_eq!(step["tier"], "local", "{step:#}");
    assert_eq!(step["needs_review"], true);
    let reason = step["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("falling back to the local model") && reason.contains("tier `large` failed"), "{reason}");
    let step = first_step(&small, "sorter").await?;
    let reason = step["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("circuit breaker open"), "{reason}");
    assert!(!reason.contains("tier `large` failed"), "the open breaker should stop the call: {reason}");
    Ok(())
}
