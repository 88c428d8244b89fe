//! Escalation against a real OpenAI-compatible server over HTTP: a second
//! `aios-edge` process serving its gateway is the first edge's `large` tier.
//! Low confidence escalates; budget exhaustion and the air gap keep the step
//! local and say why; a killed large tier opens the breaker and the fallback
//! chain applies.
//!
//! The same edge also serves its own gateway with `large` as a gateway tier:
//! office applications that ask it for `large` get the same routing, billing,
//! budgets, air gap and fallback chain as the agents.

use std::time::Duration;

use aios_tests::{bins, wait_for, ControlPlaneProc, EdgeProc};
use anyhow::Context;
use reqwest::Method;
use serde_json::json;

const LONG: Duration = Duration::from_secs(300);

/// The gateway settings the tests start with: `large` may be asked for.
const GATEWAY: &str = "tiers = [\"large\"]\nper_request_usd = 0.5";

fn bundle(large_port: u16, air_gapped: bool, gateway: &str) -> String {
    format!(
        r#"
autonomy = "supervised"
valid_for = "1d"

[gateway]
{gateway}

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

/// A chat completion through `edge`'s gateway: status, headers and body.
async fn gateway_chat(
    edge: &EdgeProc,
    model: &str,
    stream: bool,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, String)> {
    let body = json!({
        "model": model,
        "messages": [{ "role": "user", "content": "Say hello to the accounts team." }],
        "max_tokens": 8,
        "stream": stream,
        "stream_options": if stream { json!({ "include_usage": true }) } else { json!(null) },
    });
    let url = format!("http://{}/v1/chat/completions", edge.api_addr());
    let response = reqwest::Client::new().post(url).json(&body).send().await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    Ok((status, headers, response.text().await?))
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

/// The gateway calls `edge` has audited, oldest first.
fn audited_gateway_calls(edge: &EdgeProc) -> anyhow::Result<Vec<serde_json::Value>> {
    let conn = rusqlite::Connection::open(edge.dir.join("edge.db"))?;
    let mut statement = conn.prepare("SELECT payload FROM audit_log WHERE kind = 'gateway.call' ORDER BY seq")?;
    let payloads = statement.query_map([], |row| row.get::<_, String>(0))?;
    payloads.map(|payload| Ok(serde_json::from_str(&payload?)?)).collect()
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
    small.run_args = vec!["--gateway".into()];
    small.start()?;
    for edge in [&large, &small] {
        wait_for("the edges' gateways", LONG, || async {
            Ok(edge.api(Method::GET, "/v1/models", None).await.is_ok_and(|(status, _)| status == 200))
        })
        .await?;
    }
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
    publish_and_wait(bundle(large.api_port, false, GATEWAY)).await?;

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

    // The small edge's gateway offers `large` to office applications, and
    // a request for it is answered by the large edge and billed.
    let (_, models) = small.api(Method::GET, "/v1/models", None).await?;
    let ids: Vec<&str> = models["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"large") && ids.contains(&"smollm2-135m-instruct"), "{models}");
    let (status, headers, body) = gateway_chat(&small, "large", false).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-aios-tier"), "large", "{headers:?}");
    assert_eq!(header(&headers, "x-aios-needs-review"), "false");
    assert!(header(&headers, "x-aios-cost-usd").parse::<f64>()? > 0.0, "{headers:?}");
    let reply: serde_json::Value = serde_json::from_str(&body)?;
    assert!(reply["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0, "{reply}");
    // The large edge audits its call just after answering.
    let large_audited = |count: i64| {
        let large = &large;
        async move {
            wait_for("the large edge to audit its calls", LONG, || async { Ok(gateway_calls(large)? == count) }).await
        }
    };
    large_audited(calls_after_escalation + 1).await?;
    let (status, headers, body) = gateway_chat(&small, "large", true).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-aios-tier"), "large", "{headers:?}");
    assert!(body.contains("\"usage\"") && body.trim_end().ends_with("data: [DONE]"), "{body}");
    let calls_after_gateway = calls_after_escalation + 2;
    large_audited(calls_after_gateway).await?;
    wait_for("the small edge to audit both billed calls", LONG, || async {
        Ok(audited_gateway_calls(&small)?.iter().filter(|call| call["tier"] == "large").count() == 2)
    })
    .await?;
    for call in audited_gateway_calls(&small)?.iter().filter(|call| call["tier"] == "large") {
        assert!(call["cost_usd"].as_f64().unwrap_or(0.0) > 0.0, "{call}");
        assert!(call["route"].as_str().unwrap_or_default().contains("escalated"), "{call}");
    }

    // A per-request budget too small for the call: refused with OpenAI's
    // quota error when the bundle says not to fall back, answered by the
    // local model and marked for review when it may; `large` is not called.
    let tiny = "tiers = [\"large\"]\nper_request_usd = 0.000001";
    publish_and_wait(bundle(large.api_port, false, &format!("{tiny}\nfallback_to_local = false"))).await?;
    let (status, _, body) = gateway_chat(&small, "large", false).await?;
    assert_eq!(status, 429, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(error["error"]["code"], "insufficient_quota", "{error}");
    assert!(error["error"]["message"].as_str().unwrap_or_default().contains("budget exhausted"), "{error}");
    publish_and_wait(bundle(large.api_port, false, tiny)).await?;
    let (status, headers, body) = gateway_chat(&small, "large", false).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-aios-tier"), "smollm2-135m-instruct", "{headers:?}");
    assert_eq!(header(&headers, "x-aios-needs-review"), "true");
    assert!(header(&headers, "x-aios-route").contains("budget exhausted"), "{headers:?}");
    assert_eq!(gateway_calls(&large)?, calls_after_gateway, "a request over budget reached the large tier");

    // Air-gapped: the large tier's host is not allowed, so it is never
    // called, by an agent or through the gateway.
    publish_and_wait(bundle(large.api_port, true, GATEWAY)).await?;
    let step = first_step(&small, "sorter").await?;
    assert_eq!(step["tier"], "local", "{step:#}");
    assert!(step["reason"].as_str().unwrap_or_default().contains("air-gapped"), "{step:#}");
    let (status, headers, body) = gateway_chat(&small, "large", true).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-aios-tier"), "smollm2-135m-instruct", "{headers:?}");
    assert!(header(&headers, "x-aios-route").contains("air-gapped"), "{headers:?}");
    assert_eq!(gateway_calls(&large)?, calls_after_gateway, "an air-gapped edge called the large tier");

    // The large tier goes down: the call fails (after retries), the task
    // falls back to the local model for review, and the breaker opens so the
    // next task does not even try.
    publish_and_wait(bundle(large.api_port, false, GATEWAY)).await?;
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
    // The gateway shares the breaker: its request for `large` is not even tried.
    let (status, headers, body) = gateway_chat(&small, "large", false).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-aios-tier"), "smollm2-135m-instruct", "{headers:?}");
    assert!(header(&headers, "x-aios-route").contains("circuit breaker open"), "{headers:?}");
    Ok(())
}
