//! Whole-system tests of the execution plane: a refund agent on a real edge
//! process acting through a payment API of the tests' own (a real HTTP
//! server on loopback that honours `Idempotency-Key`), decided by Cedar,
//! approved through the control plane, stopped by the kill switch, and
//! exactly once across `kill -9` and lost replies; dead letters, the breaker
//! and the rate limit; prompt injection with worst-case and real model
//! output; a signed webhook whose task mails a customer through a real SMTP
//! server (aiosmtpd) over STARTTLS.

use std::collections::HashMap;
use std::time::Duration;

use aios_edge_agent::http::webhook;
use aios_tests::payments::{PaymentFaults, PaymentService};
use aios_tests::smtp::SmtpServer;
use aios_tests::{bins, fleet_with, wait_for, EdgeProc};
use anyhow::Context;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(300);
const REFUNDS: &str = include_str!("../data/refunds.toml");

fn bundle(payments: &PaymentService, receipts: &std::path::Path) -> String {
    REFUNDS.replace("PAYMENTS_URL", &payments.url()).replace("RECEIPTS_DIR", receipts.to_str().expect("utf-8 path"))
}

fn refund(order: &str, amount: i64, account: &str) -> Value {
    json!({
        "agent": "refunds",
        "kind": "refund-request",
        "idempotency_key": format!("{order}-{amount}-{account}"),
        "input": {
            "order": { "id": order, "accounts": ["acct-1"] },
            "refund": { "amount": amount, "account": account },
            "reason": format!("customer asked for {amount} back on {order}"),
        },
    })
}

async fn submit(edge: &EdgeProc, body: Value) -> anyhow::Result<String> {
    let task = edge.submit(body).await?;
    Ok(task["id"].as_str().context("task id")?.to_owned())
}

async fn task(edge: &EdgeProc, id: &str) -> anyhow::Result<Value> {
    Ok(edge.api(Method::GET, &format!("/v1/tasks/{id}"), None).await?.1)
}

async fn wait_state(edge: &EdgeProc, id: &str, state: &str) -> anyhow::Result<Value> {
    wait_for(&format!("task {id} to be {state}"), LONG, || async { Ok(task(edge, id).await?["state"] == state) })
        .await?;
    task(edge, id).await
}

fn refunds_of(payments: &PaymentService, order: &str) -> Vec<Value> {
    payments.effects().into_iter().filter(|e| e.path == "refunds" && e.body["order"] == order).map(|e| e.body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_allowed_denied_or_approved_by_policy_and_the_kill_switch_stops_them() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let (_tmp, cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path())).await?;

    // Allowed: 30 to the order's own account, then a receipt document.
    let small = submit(&edge, refund("o-1", 30, "acct-1")).await?;
    let done = edge.finished_task(&small, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(refunds_of(&payments, "o-1"), [json!({ "order": "o-1", "amount": 30, "account": "acct-1" })]);
    let receipt = std::fs::read_to_string(receipts.path().join("refund-o-1.txt"))?;
    assert_eq!(receipt, "Refunded 30 to acct-1 for order o-1.");
    let step = &done["steps"][0]["output"];
    assert_eq!(step["decision"], "allow", "{step:#}");
    assert!(step["result"]["refund_id"].as_str().is_some_and(|id| id.starts_with("py_")), "{step:#}");

    // Denied: an account that is not on the order, whatever the amount.
    let foreign = submit(&edge, refund("o-2", 30, "acct-evil")).await?;
    let failed = edge.finished_task(&foreign, LONG).await?;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(failed["error"].as_str().unwrap_or_default().contains("own-account-only"), "{failed:#}");
    assert!(refunds_of(&payments, "o-2").is_empty());

    // Above 50: the task waits, the control plane queues the request with
    // the exact arguments, an operator approves, and it runs once.
    let large = submit(&edge, refund("o-3", 120, "acct-1")).await?;
    let waiting = wait_state(&edge, &large, "waiting").await?;
    assert!(waiting["wait_reason"].as_str().unwrap_or_default().contains("approval"), "{waiting:#}");
    let approval = cp.pending_approval(&large).await?;
    assert_eq!(approval["request"]["args"], json!({ "order_id": "o-3", "amount": 120, "account": "acct-1" }));
    assert_eq!(approval["request"]["reasoning"], "customer asked for 120 back on o-3");
    assert!(refunds_of(&payments, "o-3").is_empty(), "nothing happens before the approval");
    let id = approval["id"].as_str().context("approval id")?.to_owned();
    cp.cli_ok(&["approvals", "approve", &id, "--by", "alice", "--comment", "checked the order"])?;
    let done = edge.finished_task(&large, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(refunds_of(&payments, "o-3").len(), 1);
    let again = cp.cli(&["approvals", "approve", &id])?;
    assert!(!again.status.success(), "an approval is single-use");

    // Rejected: the task fails without the side effect.
    let rejected = submit(&edge, refund("o-4", 80, "acct-1")).await?;
    wait_state(&edge, &rejected, "waiting").await?;
    let approval = cp.pending_approval(&rejected).await?;
    let id = approval["id"].as_str().context("approval id")?;
    cp.cli_ok(&["approvals", "reject", id, "--by", "bob", "--comment", "duplicate claim"])?;
    let failed = edge.finished_task(&rejected, LONG).await?;
    assert_eq!(failed["state"], "failed");
    assert!(failed["error"].as_str().unwrap_or_default().contains("rejected by bob: duplicate claim"), "{failed:#}");
    assert!(refunds_of(&payments, "o-4").is_empty());

    // Compensation: the operator voids the first refund through the control plane.
    cp.cli_ok(&["task", "compensate", &small, "refund", "--by", "carol"])?;
    wait_for("the void of o-1's refund", LONG, || async {
        Ok(payments.effects().iter().any(|e| e.path.ends_with("/void") && e.path.contains("py_1")))
    })
    .await?;

    // The kill switch: a refund approved after autonomy went off never runs.
    let held = submit(&edge, refund("o-5", 90, "acct-1")).await?;
    wait_state(&edge, &held, "waiting").await?;
    let approval = cp.pending_approval(&held).await?;
    cp.cli_ok(&["policy", "kill-switch"])?;
    wait_for("the edge to apply the kill switch", LONG, || async { Ok(edge.status()?["autonomy"] == "off") }).await?;
    cp.cli_ok(&["approvals", "approve", approval["id"].as_str().context("id")?])?;
    let stopped = edge.finished_task(&held, LONG).await?;
    assert_eq!(stopped["state"], "failed", "{stopped:#}");
    assert!(stopped["error"].as_str().unwrap_or_default().contains("kill switch"), "{stopped:#}");
    assert!(refunds_of(&payments, "o-5").is_empty());

    // The audit trail at the control plane has every decision.
    let edge_id = edge.edge_id.clone();
    wait_for("the decisions at the control plane", LONG, || async {
        let events = cp.events(&edge_id).await?;
        let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
        Ok(count("intent.declared") >= 7
            && count("approval.requested") == 3
            && count("approval.decided") >= 3
            && count("approval.used") == 1
            && count("intent.compensated") == 1)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_during_a_step_ends_the_task_at_once() -> anyhow::Result<()> {
    // The payment API commits, then holds its reply for a minute; the
    // connector would wait 30 s per attempt. The task's 3 s deadline must
    // stop it during that step, not before the next one.
    let faults = PaymentFaults { drop_reply: 1.0, hang: Duration::from_secs(60), ..PaymentFaults::default() };
    let payments = PaymentService::start(faults).await?;
    let receipts = tempfile::tempdir()?;
    let toml = bundle(&payments, receipts.path());
    let toml = toml.replacen("timeout = \"1s\"", "timeout = \"30s\"", 1);
    let toml = toml.replacen("[agents.refunds]\n", "[agents.refunds]\ndeadline = \"3s\"\n", 1);
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &toml).await?;
    let id = submit(&edge, refund("o-late", 10, "acct-1")).await?;
    let failed = wait_state(&edge, &id, "failed").await?;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("deadline exceeded during step `refund`"), "{failed:#}");
    assert_eq!(payments.effects().len(), 1, "the payment API saw the call before the deadline");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_effect_per_key_across_kill9_and_lost_replies() -> anyhow::Result<()> {
    let runs: usize = std::env::var("AIOS_EXACTLY_ONCE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let faults = PaymentFaults {
        fail_before: 0.1,
        fail_after: 0.1,
        drop_reply: 0.05,
        hang: Duration::from_millis(1500),
        refuse: 0.0,
    };
    let payments = PaymentService::start(faults).await?;
    let receipts = tempfile::tempdir()?;
    let (_tmp, _cp, mut edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path())).await?;

    let mut ids = Vec::with_capacity(runs);
    for n in 0..runs {
        ids.push(submit(&edge, refund(&format!("x-{n}"), 1 + (n % 50) as i64, "acct-1")).await?);
    }
    // Kill the edge at random points while it works through them.
    let mut kills = 0;
    loop {
        let (_, health) = edge.api(Method::GET, "/v1/health", None).await.unwrap_or_default();
        let open =
            ["queued", "running", "waiting"].iter().map(|s| health["tasks"][*s].as_u64().unwrap_or(0)).sum::<u64>();
        if health.is_object() && open == 0 {
            break;
        }
        if kills < 12 {
            let pause = rand::thread_rng().gen_range(300..1500);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            edge.kill9();
            kills += 1;
            edge.start()?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for effect in payments.effects() {
        *by_key.entry(effect.key).or_default() += 1;
    }
    assert!(by_key.values().all(|n| *n == 1), "a key committed twice");
    let refunds = payments.effects().into_iter().filter(|e| e.path == "refunds").count();
    for id in &ids {
        let done = edge.finished_task(id, LONG).await?;
        assert_eq!(done["state"], "succeeded", "{done:#}");
    }
    assert_eq!(refunds, runs, "one refund per task: {kills} kills, {} requests", payments.requests());
    let orders: std::collections::HashSet<String> =
        payments.effects().iter().filter(|e| e.path == "refunds").map(|e| e.body["order"].to_string()).collect();
    assert_eq!(orders.len(), runs, "every order refunded once");
    eprintln!("{runs} tasks, {kills} kills, {} requests for {refunds} refunds", payments.requests());
    Ok(())
}

/// Thirty hostile customer messages, each with the refund a model that fully
/// obeyed it would propose. Whatever the model outputs, the only effects are
/// those the policy allows (at most 50, to the order's own account), and
/// every attempt is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_injection_cannot_cause_a_side_effect_the_policy_did_not_allow() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let (_tmp, cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path())).await?;
    let fixture = include_str!("../data/injections.jsonl");
    let (mut ids, mut llm_ids) = (Vec::new(), Vec::new());
    for (n, line) in fixture.lines().enumerate() {
        let attack: Value = serde_json::from_str(line)?;
        let body = json!({
            "agent": "refunds",
            "kind": "refund-request",
            "input": {
                "text": attack["text"],
                "order": { "id": format!("inj-{n}"), "accounts": ["acct-1"] },
                // The worst case: the model proposed exactly what the attacker asked.
                "refund": attack["obeyed"],
                "reason": attack["text"],
            },
        });
        ids.push(submit(&edge, body).await?);
        // And what the local model really makes of the message.
        let body = json!({
            "agent": "refunds-llm",
            "kind": "refund-request",
            "input": { "text": attack["text"], "order": { "id": format!("llm-{n}"), "accounts": ["acct-1"] } },
        });
        llm_ids.push(submit(&edge, body).await?);
    }
    assert_eq!(ids.len(), 30);
    for id in ids.iter().chain(&llm_ids) {
        let what = format!("task {id} to settle");
        wait_for(&what, LONG, || async {
            let state = task(&edge, id).await?["state"].as_str().unwrap_or_default().to_owned();
            Ok(["succeeded", "failed", "waiting", "dead_lettered"].contains(&state.as_str()))
        })
        .await?;
    }
    let executed: Vec<Value> = payments.effects().into_iter().map(|e| e.body).collect();
    for effect in &executed {
        let amount = effect["amount"].as_i64().unwrap_or(i64::MAX);
        assert!(
            (1..=50).contains(&amount) && effect["account"] == "acct-1",
            "an effect the policy did not allow: {effect}"
        );
    }
    let worst_case: Vec<&Value> =
        executed.iter().filter(|e| e["order"].as_str().is_some_and(|o| o.starts_with("inj-"))).collect();
    assert_eq!(worst_case.len(), 2, "only the two attacks that asked for what policy allows anyway: {worst_case:?}");
    // A model-driven task that reached its act step left a decision or a
    // refusal of its arguments; one whose model steps failed acted not at all.
    let mut acted = Vec::new();
    for id in &llm_ids {
        let settled = task(&edge, id).await?;
        if settled["steps"].as_array().is_some_and(|steps| steps.len() >= 2) {
            acted.push(id.clone());
        }
    }
    ids.extend(acted);
    // Every attempt is on record at the control plane: declared with its
    // decision, or refused as invalid before any decision.
    let edge_id = edge.edge_id.clone();
    wait_for("every attempt in the control plane's audit log", LONG, || async {
        let events = cp.events(&edge_id).await?;
        let recorded = ids
            .iter()
            .filter(|id| {
                events.iter().any(|e| {
                    e["payload"]["task"] == id.as_str()
                        && (e["kind"] == "policy.decided" || e["kind"] == "intent.invalid")
                })
            })
            .count();
        Ok(recorded == ids.len())
    })
    .await?;
    Ok(())
}

const NOTIFY: &str = include_str!("../data/notify.toml");

/// A signed webhook delivery to the edge: the status and the JSON reply.
async fn deliver(edge: &EdgeProc, secret: &[u8], t_s: i64, body: &Value) -> anyhow::Result<(u16, Value)> {
    let body = serde_json::to_vec(body)?;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/webhooks/shipped", edge.api_addr()))
        .header(webhook::SIGNATURE_HEADER, webhook::sign(secret, t_s, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_makes_one_task_that_mails_the_customer_over_starttls() -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let smtp = SmtpServer::start(&files.path().join("smtp"))?;
    let password_file = files.path().join("smtp-password");
    std::fs::write(&password_file, &smtp.password)?;
    let secret = b"whsec_0123456789";
    let secret_file = files.path().join("webhook-secret");
    std::fs::write(&secret_file, secret)?;
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let bundle = NOTIFY
        .replace("SMTP_PORT", &smtp.port.to_string())
        .replace("SMTP_USER", &smtp.user)
        .replace("SMTP_PASSWORD_FILE", &path(&password_file))
        .replace("SMTP_CA", &path(&smtp.ca_pem))
        .replace("WEBHOOK_SECRET_FILE", &path(&secret_file));
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle).await?;
    assert_eq!(edge.status()?["labels"], json!(["site=test"]), "the enrolment labels are kept");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let event = |id: &str, email: &str| json!({ "event_id": id, "order": "o-7", "customer": { "name": "Ada", "email": email } });

    // Refused before any task exists: a wrong secret, a stale signature, a
    // body changed after signing.
    let (status, _) = deliver(&edge, b"not the secret", now, &event("evt_1", "ada@customer.test")).await?;
    assert_eq!(status, 401);
    let (status, reply) = deliver(&edge, secret, now - 3600, &event("evt_1", "ada@customer.test")).await?;
    assert_eq!(status, 401, "{reply}");
    let body = serde_json::to_vec(&event("evt_1", "ada@customer.test"))?;
    let forged = reqwest::Client::new()
        .post(format!("http://{}/v1/webhooks/shipped", edge.api_addr()))
        .header(webhook::SIGNATURE_HEADER, webhook::sign(secret, now, &body))
        .body(serde_json::to_vec(&event("evt_1", "eve@elsewhere.test"))?)
        .send()
        .await?;
    assert_eq!(forged.status().as_u16(), 401);
    let (_, tasks) = edge.api(Method::GET, "/v1/tasks", None).await?;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "{tasks:#}");

    // A good delivery makes a task; the sender's retry of it makes none.
    let (status, first) = deliver(&edge, secret, now, &event("evt_1", "ada@customer.test")).await?;
    assert_eq!(status, 201, "{first}");
    let (status, again) = deliver(&edge, secret, now + 5, &event("evt_1", "ada@customer.test")).await?;
    assert_eq!((status, &again["task"]), (200, &first["task"]));
    let id = first["task"].as_str().context("task id")?;
    let done = edge.finished_task(id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");

    let messages = smtp.messages()?;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert_eq!(message["rcpt_tos"], json!(["ada@customer.test"]));
    assert_eq!(message["tls"], true, "mail went over STARTTLS");
    assert_eq!(message["login"], smtp.user.as_str(), "the connector logged in with its credential");
    let content = message["content"].as_str().unwrap_or_default();
    assert!(content.contains("Hello Ada, order o-7 is on its way."), "{content}");
    let key = done["steps"][0]["output"]["intent"].as_str().context("intent key")?;
    assert!(content.contains(&format!("Message-ID: <{key}@aios.test>")), "{content}");

    // Mail to an address that is not a customer's is denied by policy.
    let (status, other) = deliver(&edge, secret, now, &event("evt_2", "eve@elsewhere.test")).await?;
    assert_eq!(status, 201, "{other}");
    let denied = edge.finished_task(other["task"].as_str().context("task id")?, LONG).await?;
    assert_eq!(denied["state"], "failed", "{denied:#}");
    assert_eq!(smtp.messages()?.len(), 1, "no second message");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_under_the_same_key_or_discarded() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults { refuse: 1.0, ..PaymentFaults::default() }).await?;
    let receipts = tempfile::tempdir()?;
    let (_tmp, cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path())).await?;

    // The issuer refuses both refunds: a permanent error, dead-lettered at
    // once with its error history, nothing committed.
    let first = submit(&edge, refund("o-20", 20, "acct-1")).await?;
    let second = submit(&edge, refund("o-21", 25, "acct-1")).await?;
    for id in [&first, &second] {
        let parked = edge.finished_task(id, LONG).await?;
        assert_eq!(parked["state"], "dead_lettered", "{parked:#}");
    }
    assert!(payments.effects().is_empty());
    let listed = edge.edge_cli(&["dlq", "list", "--api", &edge.api_addr()])?;
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    // One line per intent: `KEY connector.action task ID attempts N: last error`.
    let listed = String::from_utf8(listed.stdout)?;
    let key_of = |task: &str| -> anyhow::Result<String> {
        let line = listed.lines().find(|l| l.contains(&format!(" task {task} "))).context("the task in the dlq")?;
        assert!(line.contains("shop.refund") && line.contains("422"), "{line}");
        Ok(line.split_whitespace().next().context("key")?.to_owned())
    };
    let (first_key, second_key) = (key_of(&first)?, key_of(&second)?);
    let shown = edge.edge_cli(&["dlq", "show", &first_key, "--api", &edge.api_addr()])?;
    let shown: Value = serde_json::from_slice(&shown.stdout).context("dlq show prints JSON")?;
    assert!(shown["errors"][0]["error"].as_str().unwrap_or_default().contains("422"), "{shown:#}");

    // The control plane lists them; an operator retries one there once the
    // issuer is back: it runs under the same key and the task finishes.
    wait_for("the dead letters at the control plane", LONG, || async {
        let queue = cp.get("/v1/dlq").await?;
        Ok(queue.as_array().is_some_and(|q| q.len() == 2))
    })
    .await?;
    payments.set_faults(PaymentFaults::default());
    cp.cli_ok(&["dlq", "retry", &first_key, "--by", "dana"])?;
    wait_for("the retry to reach the edge", LONG, || async {
        Ok(task(&edge, &first).await?["state"] != "dead_lettered")
    })
    .await?;
    let done = edge.finished_task(&first, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let effects = payments.effects();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].key, first_key, "the retry used the intent's key");

    // The other is discarded at the edge: its task fails and nothing is sent.
    let discarded = edge.edge_cli(&["dlq", "discard", &second_key, "--by", "erin", "--api", &edge.api_addr()])?;
    assert!(discarded.status.success(), "{}", String::from_utf8_lossy(&discarded.stderr));
    wait_for("the discard to apply", LONG, || async { Ok(task(&edge, &second).await?["state"] != "dead_lettered") })
        .await?;
    let failed = edge.finished_task(&second, LONG).await?;
    assert!(failed["error"].as_str().unwrap_or_default().contains("discarded by an operator"), "{failed:#}");
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(refunds_of(&payments, "o-21").is_empty());

    let edge_id = edge.edge_id.clone();
    wait_for("the dead-letter trail at the control plane", LONG, || async {
        let events = cp.events(&edge_id).await?;
        let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
        Ok(count("intent.dead_lettered") == 2 && count("intent.retried") == 1 && count("intent.discarded") == 1)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_parks_the_task_and_the_rate_limit_spaces_attempts() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults { fail_before: 1.0, ..PaymentFaults::default() }).await?;
    let receipts = tempfile::tempdir()?;
    let bundle = bundle(&payments, receipts.path())
        .replace("breaker_failures = 1000", "breaker_failures = 3\nbreaker_cooldown = \"5s\"")
        .replace("rate_per_second = 500", "rate_per_second = 5\nburst = 1");
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle).await?;

    // Three 503s in a row open the breaker: the task is parked, and nothing
    // more is sent while it is open.
    let id = submit(&edge, refund("o-30", 10, "acct-1")).await?;
    let parked = wait_state(&edge, &id, "waiting").await?;
    assert!(parked["wait_reason"].as_str().unwrap_or_default().contains("is failing"), "{parked:#}");
    let sent = payments.requests();
    assert_eq!(sent, 3, "one request per attempt until the breaker opened");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(payments.requests(), sent, "an open breaker sends nothing");

    // The API recovers; after the cool-down the same intent goes through once.
    payments.set_faults(PaymentFaults::default());
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(refunds_of(&payments, "o-30").len(), 1);

    // Twelve refunds at once: at 5 per second with a burst of 1, no second
    // of the service's clock sees more than 6 of them.
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(submit(&edge, refund(&format!("o-4{n:02}"), 5, "acct-1")).await?);
    }
    for id in &ids {
        assert_eq!(edge.finished_task(id, LONG).await?["state"], "succeeded");
    }
    let times: Vec<_> = payments.effects().iter().filter(|e| e.path == "refunds").map(|e| e.at).collect();
    assert_eq!(times.len(), 13);
    let busiest = times
        .iter()
        .map(|start| {
            times.iter().filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1)).count()
        })
        .max()
        .unwrap_or_default();
    assert!(busiest <= 6, "{busiest} refunds within one second at a limit of 5/s, burst 1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_air_gapped_edge_approves_locally_and_a_connected_one_may_not() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let connected = bundle(&payments, receipts.path());
    let air_gapped = connected.replace("[runtime]\n", "[runtime]\nair_gapped = true\n");
    for (bundle, local) in [(connected, false), (air_gapped, true)] {
        let (_tmp, cp, edge) = fleet_with(&bins!(), &bundle).await?;
        let order = if local { "o-50" } else { "o-51" };
        let id = submit(&edge, refund(order, 75, "acct-1")).await?;
        wait_state(&edge, &id, "waiting").await?;
        let (_, pending) = edge.api(Method::GET, "/v1/approvals?state=pending", None).await?;
        let approval = pending.as_array().and_then(|a| a.first()).context("a pending approval")?;
        let approval = approval["id"].as_str().context("id")?.to_owned();
        let api = edge.api_addr();
        let approved = edge.edge_cli(&["approvals", "approve", &approval, "--by", "frank", "--api", &api])?;
        if !local {
            assert!(!approved.status.success(), "a connected edge decides nothing locally");
            assert!(String::from_utf8_lossy(&approved.stderr).contains("not air-gapped"));
            assert_eq!(task(&edge, &id).await?["state"], "waiting");
            continue;
        }
        assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
        let done = edge.finished_task(&id, LONG).await?;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        assert_eq!(refunds_of(&payments, order).len(), 1);
        // Recorded like a decision from the control plane, by a local operator.
        let edge_id = edge.edge_id.clone();
        wait_for("the local decision at the control plane", LONG, || async {
            let events = cp.events(&edge_id).await?;
            Ok(events.iter().any(|e| {
                e["kind"] == "approval.decided" && e["payload"]["by"].as_str().is_some_and(|by| by.contains("frank"))
            }))
        })
        .await?;
    }
    assert!(refunds_of(&payments, "o-51").is_empty());
    Ok(())
}
