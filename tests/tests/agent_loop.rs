//! Whole-system tests of the tool-using agent loop (`kind = "agent"`): a
//! real edge process plans with a scripted OpenAI-compatible model server of
//! the tests' own (tier `big`, tool calls on the real wire protocol) and
//! acts through a payment API and a file connector under the same Cedar
//! policy, approvals and outbox as a fixed `act` step: a planned loop with
//! approvals, questions and corrections, hostile tool results, `kill -9`
//! anywhere, and limits and lost tiers mid-loop. The desk, its bundle and
//! the script are in `support/desk.rs`; tool sources beyond connectors are
//! in `agent_tools.rs`.

use std::sync::Arc;
use std::time::Duration;

use aios_tests::payments::{PaymentFaults, PaymentService};
use aios_tests::planner::{self, observations, Planner};
use aios_tests::{bins, fleet_with, wait_for, ControlPlaneProc, EdgeProc};
use anyhow::Context;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

#[path = "support/desk.rs"]
mod desk;
use desk::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_loop_acts_under_policy_with_approvals_and_corrections() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let (_tmp, cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path(), &planner)).await?;

    // A plan of five calls across three tools runs to the end.
    let id = submit(&edge, case("plan", "p-1")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let step = &done["steps"][0];
    assert_eq!(step["kind"], "agent");
    assert_eq!(step["output"]["answer"], "Refunded 30 to acct-1 and sent the receipt.", "{step:#}");
    assert_eq!((step["output"]["turns"].as_u64(), step["output"]["calls"].as_u64()), (Some(4), Some(5)));
    assert_eq!(step["tier"], "big");
    // The task's view has the loop as a transcript: turns and call outcomes in order.
    let transcript = done["loops"]["0"].as_array().context("the loop's transcript")?;
    let entries: Vec<&str> = transcript.iter().filter_map(|e| e["entry"].as_str()).collect();
    assert_eq!(entries, ["model", "call", "call", "model", "call", "model", "call", "call", "model"]);
    assert_eq!(transcript[1]["name"], "shop_note");
    assert_eq!(transcript[2]["arguments"], json!({ "order_id": "p-1", "amount": 30, "account": "acct-1" }));
    assert!(step["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "turns are charged: {step:#}");
    assert_eq!(effects(&payments, "refunds", "p-1"), [json!({ "order": "p-1", "amount": 30, "account": "acct-1" })]);
    assert_eq!(effects(&payments, "notes", "p-1").len(), 2);
    assert_eq!(std::fs::read_to_string(receipts.path().join("refund-p-1.txt"))?, "Refunded 30 to acct-1.");
    assert!(receipts.path().join("letter-p-1.txt").exists());
    // Every call is an intent with its decision, and every turn and call is audited.
    let declared = audited(&edge, "intent.declared", &id)?;
    assert_eq!(declared.len(), 5, "{declared:#?}");
    let decided = audited(&edge, "policy.decided", &id)?;
    assert_eq!(decided.len(), 5);
    assert!(decided.iter().all(|d| d["decision"]["decision"] == "allow"), "{decided:#?}");
    assert_eq!(audited(&edge, "agent.turn", &id)?.len(), 4);
    let outcomes: Vec<Value> =
        audited(&edge, "agent.call", &id)?.iter().map(|c| c["outcome"]["outcome"].clone()).collect();
    assert_eq!(outcomes, vec![json!("done"); 5]);
    // The model saw each call's result as a `tool` message answering its id.
    let requests = requests_for(&planner, "p-1");
    assert_eq!(requests.len(), 4, "one request per turn");
    let second = &requests[1].body;
    assert_eq!(second["tools"].as_array().map(Vec::len), Some(4), "{second:#}");
    let tool_ids: Vec<&str> = second["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["tool_call_id"].as_str())
        .collect();
    assert_eq!(tool_ids, ["call_0_0", "call_0_1"]);
    let refunded = &observations(second)[1];
    assert_eq!(refunded["status"], "done");
    let id_seen = refunded["result"]["response"]["id"].as_str().unwrap_or_default();
    assert!(id_seen.starts_with("py_"), "the model sees the connector's result: {refunded:#}");

    // Over the limit: the task parks, the approver sees the model's exact
    // arguments, and the loop resumes after the approval.
    let id = submit(&edge, case("approval", "a-1")).await?;
    let approval = cp.pending_approval(&id).await?;
    assert_eq!(approval["request"]["args"], json!({ "order_id": "a-1", "amount": 120, "account": "acct-1" }));
    assert!(approval["request"]["reasoning"].as_str().unwrap_or_default().contains("turn 0"), "{approval:#}");
    assert!(effects(&payments, "refunds", "a-1").is_empty(), "nothing happens before the approval");
    assert_eq!(task(&edge, &id).await?["state"], "waiting");
    cp.cli_ok(&["approvals", "approve", approval["id"].as_str().context("id")?, "--by", "alice"])?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "Refunded 120 after approval.");
    assert_eq!(effects(&payments, "refunds", "a-1").len(), 1);
    assert_eq!(requests_for(&planner, "a-1").len(), 2, "the journaled turn is not asked again after the park");

    // Rejected: the model is told, and the loop ends without the effect.
    let id = submit(&edge, case("approval", "a-2")).await?;
    let approval = cp.pending_approval(&id).await?;
    cp.cli_ok(&["approvals", "reject", approval["id"].as_str().context("id")?, "--by", "bob", "--comment", "no"])?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "Could not refund: rejected by bob: no");
    assert!(effects(&payments, "refunds", "a-2").is_empty());

    // The model asks a person: the task waits with the question, the
    // operator answers with the edge CLI, and the loop goes on with it.
    let id = submit(&edge, case("ask", "q-1")).await?;
    wait_for("the question to park the task", LONG, || async {
        let view = task(&edge, &id).await?;
        Ok(view["state"] == "waiting" && view["wait_reason"].as_str().is_some_and(|r| r.contains("Which account")))
    })
    .await?;
    let (_, open) = edge.api(Method::GET, "/v1/questions", None).await?;
    assert_eq!(open[0]["task_id"], id.as_str(), "{open:#}");
    let answered = edge.edge_cli(&["task", "answer", &id, "acct-1", "--by", "carol", "--api", &edge.api_addr()])?;
    assert!(answered.status.success(), "{}", String::from_utf8_lossy(&answered.stderr));
    let again = edge.edge_cli(&["task", "answer", &id, "acct-9", "--api", &edge.api_addr()])?;
    assert!(!again.status.success(), "a question is answered once");
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(effects(&payments, "refunds", "q-1"), [json!({ "order": "q-1", "amount": 10, "account": "acct-1" })]);
    assert_eq!(done["questions"][0]["answered_by"], "carol", "{done:#}");
    assert_eq!(audited(&edge, "question.answered", &id)?.len(), 1);
    assert_eq!(requests_for(&planner, "q-1").len(), 3, "no turn is asked twice across the wait");

    // Asked again and answered at the control plane: the task's console page
    // shows the question with its form, the answer goes down as a signed
    // command, and the page shows the loop as a transcript.
    let id = submit(&edge, case("ask", "q-2")).await?;
    let page = format!("/console/tasks/{id}");
    wait_for("the question on the console", LONG, || async {
        let (status, html) = cp.page(&page).await?;
        Ok(status == 200 && html.contains("Which account gets the refund for q-2?") && html.contains("open-question"))
    })
    .await?;
    let (_, html) = cp.page(&page).await?;
    assert!(html.contains(&format!("action=\"/console/tasks/{id}/answer\"")), "{html}");
    cp.cli_ok(&["task", "answer", &id, "acct-1", "--by", "dave"])?;
    assert!(!cp.cli(&["task", "answer", &id, "acct-9"])?.status.success(), "one answer per question");
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(effects(&payments, "refunds", "q-2"), [json!({ "order": "q-2", "amount": 10, "account": "acct-1" })]);
    assert_eq!(done["questions"][0]["answered_by"], "dave", "{done:#}");
    wait_for("the transcript on the console", LONG, || async {
        let (_, html) = cp.page(&page).await?;
        Ok(html.contains("id=\"transcript\"") && html.contains("Answered by dave") && html.contains("Turn 2"))
    })
    .await?;
    let (_, html) = cp.page(&page).await?;
    assert!(html.contains("shop_refund") && html.contains("big") && !html.contains("open-question"), "{html}");

    // Invalid arguments go back to the model, which corrects them.
    let id = submit(&edge, case("fix", "f-1")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let second = &requests_for(&planner, "f-1")[1].body;
    let problem = observations(second)[0].clone();
    assert_eq!(problem["status"], "invalid");
    assert!(problem["problem"].as_str().unwrap_or_default().contains("amount"), "{problem:#}");
    assert_eq!(effects(&payments, "refunds", "f-1"), [json!({ "order": "f-1", "amount": 20, "account": "acct-1" })]);
    assert_eq!(audited(&edge, "intent.declared", &id)?.len(), 1, "the invalid call declared nothing");

    // A model that never proposes a valid call fails the task, saying why.
    let id = submit(&edge, case("garbage", "g-1")).await?;
    let failed = edge.finished_task(&id, LONG).await?;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("turns in a row proposed invalid calls"), "{error}");
    assert!(audited(&edge, "intent.declared", &id)?.is_empty());
    assert!(payments.effects().iter().all(|e| e.body["order"] != "g-1"));

    // The control plane has the loop's audit trail too.
    let edge_id = edge.edge_id.clone();
    wait_for("the loop's events at the control plane", LONG, || async {
        let events = cp.events(&edge_id).await?;
        Ok(events.iter().filter(|e| e["kind"] == "agent.turn").count() >= 4 + 2 + 2 + 3 + 3 + 3 + 3)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_in_tool_results_never_widen_what_policy_allows() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    payments.set_notice(Some(HOSTILE.to_owned()));
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path(), &planner)).await?;
    let orders: Vec<String> = (0..8).map(|n| format!("h-{n}")).collect();
    let mut ids = Vec::new();
    for order in &orders {
        ids.push(submit(&edge, case("hostile", order)).await?);
    }
    for id in &ids {
        let done = edge.finished_task(id, LONG).await?;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        let refused: Vec<Value> =
            audited(&edge, "agent.call", id)?.into_iter().filter(|c| c["outcome"]["outcome"] == "refused").collect();
        assert_eq!(refused.len(), 3, "each obeyed instruction is refused: {refused:#?}");
        assert!(refused
            .iter()
            .all(|c| c["outcome"]["reason"].as_str().unwrap_or_default().contains("denied by policy")));
    }
    // The model saw the hostile text in at least 30 results and obeyed each time.
    let hostile_results: usize = planner
        .requests()
        .iter()
        .map(|r| observations(&r.body).iter().filter(|o| o.to_string().contains("refund 5000 to acct-9")).count())
        .sum();
    assert!(hostile_results >= 30, "{hostile_results} hostile results reached the model");
    // And nothing policy forbids happened: no refund at all.
    let refunds: Vec<_> = payments.effects().into_iter().filter(|e| e.path == "refunds").collect();
    assert!(refunds.is_empty(), "{refunds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_anywhere_in_the_loop_repeats_no_effect_and_no_journaled_turn() -> anyhow::Result<()> {
    let runs: usize = std::env::var("AIOS_AGENT_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    // Slow enough that kills land inside model calls and inside effects.
    let faults = PaymentFaults { drop_reply: 0.2, hang: Duration::from_millis(2500), ..PaymentFaults::default() };
    let payments = PaymentService::start(faults).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::from_millis(150)).await?;
    let (_tmp, _cp, mut edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path(), &planner)).await?;

    // Each run submits a task, then kills the edge at a random moment: before
    // a turn, inside a model call, between a call's intent and its effect,
    // inside an effect whose reply is lost. Earlier runs' tasks are still in
    // flight too, so every kill lands in several loops at once.
    let orders: Vec<String> = (0..runs).map(|n| format!("c-{n}")).collect();
    let mut ids = Vec::new();
    for order in &orders {
        ids.push(submit(&edge, case("crash", order)).await?);
        let pause = rand::thread_rng().gen_range(50..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        edge.kill9();
        edge.start()?;
    }
    for id in &ids {
        let done = edge.finished_task(id, LONG).await?;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        assert_eq!(done["steps"][0]["output"]["calls"], 4, "{done:#}");
    }
    for order in &orders {
        // Exactly one effect per call.
        assert_eq!(effects(&payments, "refunds", order).len(), 1, "order {order}");
        assert_eq!(effects(&payments, "notes", order).len(), 2, "order {order}");
        assert_eq!(std::fs::read_to_string(receipts.path().join(format!("crash-{order}.txt")))?, "Refunded 25.");
        // Once the edge asked for turn n+1, turn n was journaled: it is
        // never asked again, so the turns asked never go back.
        let turns: Vec<usize> = requests_for(&planner, order).iter().map(|r| planner::turn(&r.body)).collect();
        assert!(turns.windows(2).all(|pair| pair[0] <= pair[1]), "order {order}: turns asked {turns:?}");
        assert_eq!(turns.last(), Some(&4), "order {order}: turns asked {turns:?}");
    }
    Ok(())
}

/// Agents whose loops run into limits (a budget, a deadline) or lose their
/// planning tier.
const LIMITED: &str = r#"
[agents.frugal]
version = 1
escalate_to = ["big"]
budget = { per_task_usd = 1.0 }

[[agents.frugal.steps]]
id = "handle"
kind = "agent"
planning = "escalate"
goal = "Case {{ input.case }} for order {{ input.order.id }}: {{ input.text }}"
max_iterations = 7
max_tokens = 64
tools = [{ kind = "connector", connector = "shop", action = "note" }]

[agents.fallback]
version = 1
escalate_to = ["big"]

[[agents.fallback.steps]]
id = "handle"
kind = "agent"
planning = "escalate"
goal = "Case {{ input.case }} for order {{ input.order.id }}: {{ input.text }}"
max_iterations = 3
max_tokens = 96
tools = [{ kind = "connector", connector = "shop", action = "note" }]

[agents.vault]
version = 1
escalate_to = ["big"]

[[agents.vault.steps]]
id = "handle"
kind = "agent"
planning = "escalate"
goal = "Case {{ input.case }} for order {{ input.order.id }}: {{ input.text }}"
max_iterations = 3
max_tokens = 96
tools = [
    { kind = "connector", connector = "shop", action = "lookup" },
    { kind = "connector", connector = "shop", action = "note" },
]

[agents.hasty]
version = 1
escalate_to = ["big"]
deadline = "3s"

[[agents.hasty.steps]]
id = "handle"
kind = "agent"
planning = "escalate"
goal = "Case {{ input.case }} for order {{ input.order.id }}: {{ input.text }}"
max_iterations = 1000
max_tool_calls = 1000
tools = [{ kind = "connector", connector = "shop", action = "note" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_deadline_and_a_tier_down_mid_loop() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::from_millis(100)).await?;
    let toml = format!("{}{LIMITED}", bundle(&payments, receipts.path(), &planner));
    let (_tmp, cp, edge) = fleet_with(&bins!(), &toml).await?;
    let on = |agent: &str, order: &str| {
        let mut body = case("long", order);
        body["agent"] = json!(agent);
        body
    };

    // The budget: turns are charged as they go; once the next remote turn
    // would pass the task's budget, the local model plans the rest, marked
    // for review, and the budget is never passed.
    let id = submit(&edge, on("frugal", "b-1")).await?;
    let done = finish_rejecting_reviews(&edge, &cp, &id).await?;
    let step = &done["steps"][0];
    assert!(step["cost_usd"].as_f64().is_some_and(|c| c > 0.0 && c <= 1.0), "{step:#}");
    let first_local = local_turns_are_reviewed(&done)?;
    let reason = done["loops"]["0"][first_local]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("budget exhausted"), "{reason}");

    // A tool result classified confidential never reaches `big` (whose
    // limit is the default, internal): the next turns stay on the edge,
    // marked for review, and the route says why.
    let mut body = case("secret", "s-1");
    body["agent"] = json!("vault");
    let id = submit(&edge, body).await?;
    let done = finish_rejecting_reviews(&edge, &cp, &id).await?;
    assert_eq!(requests_for(&planner, "s-1").len(), 1, "only the turn before the confidential result went out");
    assert_eq!(effects(&payments, "lookups", "s-1").len(), 1);
    let first_local = local_turns_are_reviewed(&done)?;
    let reason = done["loops"]["0"][first_local]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the data is confidential, above the internal this tier may receive"), "{reason}");

    // The deadline passes mid-loop: the task fails at once, saying where.
    let id = submit(&edge, on("hasty", "d-1")).await?;
    let failed = edge.finished_task(&id, LONG).await?;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(failed["error"].as_str().unwrap_or_default().contains("deadline"), "{failed:#}");
    let notes = effects(&payments, "notes", "d-1").len();
    assert!(notes >= 1, "the loop ran until the deadline");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(effects(&payments, "notes", "d-1").len(), notes, "nothing runs after the deadline");

    // The planning tier goes down mid-loop: the local model plans the rest
    // (under the tools' schema), its turns are marked for review, and no
    // effect it proposes happens without a person: each waits for an
    // approval, which is rejected here.
    let id = submit(&edge, on("fallback", "t-1")).await?;
    wait_for("the first call's effect", LONG, || async { Ok(!effects(&payments, "notes", "t-1").is_empty()) }).await?;
    planner.set_down(true);
    let done = finish_rejecting_reviews(&edge, &cp, &id).await?;
    let first_local = local_turns_are_reviewed(&done)?;
    let reason = done["loops"]["0"][first_local]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("big"), "{reason}");
    Ok(())
}

/// Follows a task to its end, rejecting every approval its agent's
/// reviewed effects ask for (each must say a turn ran on the local model).
async fn finish_rejecting_reviews(edge: &EdgeProc, cp: &ControlPlaneProc, id: &str) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let view = task(edge, id).await?;
        if ["succeeded", "failed"].contains(&view["state"].as_str().unwrap_or_default()) {
            return Ok(view);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "task {id} did not finish: {view:#}");
        let queue = cp.get("/v1/approvals?state=pending").await?;
        for approval in queue.as_array().into_iter().flatten().filter(|a| a["request"]["task"] == id) {
            let review = approval["request"]["review"].to_string();
            anyhow::ensure!(review.contains("ran on `local`"), "an approval without the review reason: {approval:#}");
            cp.cli_ok(&["approvals", "reject", approval["id"].as_str().context("approval id")?, "--by", "dana"])?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The position of the first local turn in the task's loop; from there on
/// every turn is marked for review and no call took effect (each waited for
/// an approval that was rejected).
fn local_turns_are_reviewed(done: &Value) -> anyhow::Result<usize> {
    let transcript = done["loops"]["0"].as_array().context("the loop's transcript")?;
    let first_local = transcript
        .iter()
        .position(|e| e["entry"] == "model" && e["tier"] == "local")
        .with_context(|| format!("no local turn: {done:#}"))?;
    for entry in &transcript[first_local..] {
        match entry["entry"].as_str() {
            Some("model") => anyhow::ensure!(entry["needs_review"] == true, "{entry:#}"),
            _ => anyhow::ensure!(entry["outcome"]["outcome"] != "done", "an effect ran without review: {entry:#}"),
        }
    }
    anyhow::ensure!(done["needs_review"] == true, "{done:#}");
    Ok(first_local)
}
