//! Whole-system tests of the task runtime: real `aios-edge` and
//! `aios-control-plane` processes, the real local model (fetched through the
//! model store on first use), tasks through the edge's HTTP API and CLI.

use std::time::Duration;

use aios_tests::{bins, fleet_with, wait_for, EdgeProc};
use anyhow::Context;
use reqwest::Method;
use serde_json::json;

const LONG: Duration = Duration::from_secs(300);
const TRIAGE: &str = include_str!("../data/triage.toml");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../up/data/policies.jsonl");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_agent_runs_end_to_end_and_the_control_plane_audits_every_step() -> anyhow::Result<()> {
    let (tmp, cp, edge) = fleet_with(&bins!(), TRIAGE).await?;
    // The policy passages the reply is grounded in, imported while the daemon runs.
    let imported = edge.edge_cli(&["memory", "import", POLICIES])?;
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert!(String::from_utf8_lossy(&imported.stdout).contains("imported 50 item(s)"));

    let submission = json!({
        "agent": "triage",
        "kind": "customer-message",
        "input": { "text": "I want my money back for this broken kettle." },
        "idempotency_key": "message-1",
    });
    let (status, task) = edge.api(Method::POST, "/v1/tasks", Some(submission.clone())).await?;
    assert_eq!(status, 201, "{task}");
    let (status, again) = edge.api(Method::POST, "/v1/tasks", Some(submission)).await?;
    assert_eq!(status, 200, "a repeated key returns the existing task: {again}");
    assert_eq!(again["id"], task["id"]);
    let id = task["id"].as_str().context("task id")?.to_owned();

    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let steps = done["steps"].as_array().context("steps")?;
    assert_eq!(steps.len(), 4, "{done:#}");
    assert_eq!(steps[0]["value"], "refund", "classified: {:#}", steps[0]);
    assert!(steps[0]["confidence"].as_f64().unwrap_or(0.0) > 0.4, "{:#}", steps[0]);
    // Retrieval: refund policy passages, with scores and provenance.
    let items = steps[1]["output"]["items"].as_array().context("retrieved items")?.clone();
    assert!(!items.is_empty() && items.len() <= 2, "{:#}", steps[1]);
    assert!(items.iter().all(|i| i["id"].as_str().unwrap_or_default().starts_with("policy-")), "{items:#?}");
    assert!(items.iter().any(|i| i["id"].as_str().unwrap_or_default().starts_with("policy-refund")), "{items:#?}");
    assert!(items.iter().all(|i| i["provenance"]["source"] == "customer-handbook-v3"), "{items:#?}");
    // The reply's working context holds them, within its budget, and says what it left out.
    assert_eq!(steps[2]["tier"], "local");
    let context = &steps[2]["output"]["context"];
    assert!(context["tokens"].as_u64().unwrap_or(999) <= 256, "{context:#}");
    let included: Vec<&str> =
        context["included"].as_array().into_iter().flatten().filter_map(|p| p["source"].as_str()).collect();
    let first_id = items[0]["id"].as_str().unwrap_or_default();
    assert!(included.contains(&"input") && included.contains(&format!("memory:{first_id}").as_str()), "{context:#}");
    assert!(context["left_out"].is_array(), "{context:#}");
    assert!(steps[2]["tokens_out"].as_u64().unwrap_or(0) > 0, "{:#}", steps[2]);
    assert!(!steps[2]["value"].as_str().unwrap_or_default().is_empty(), "{:#}", steps[2]);
    assert_eq!(steps[3]["value"], "passed", "{:#}", steps[3]);
    assert_eq!(done["output"]["steps"]["category"]["label"], "refund");

    // The control plane sees every transition and every step of the task.
    let edge_id = edge.edge_id.clone();
    let (cp, items) = (&cp, &items);
    wait_for("the task's audit events at the control plane", LONG, || {
        let (edge_id, id) = (edge_id.clone(), id.clone());
        async move {
            let events = cp.events(&edge_id).await?;
            let of_task: Vec<(String, serde_json::Value)> = events
                .iter()
                .filter(|e| e["payload"]["task"] == id.as_str())
                .map(|e| (e["kind"].as_str().unwrap_or_default().to_owned(), e["payload"].clone()))
                .collect();
            let kinds: Vec<&str> = of_task.iter().map(|(k, _)| k.as_str()).collect();
            let expected = [
                "task.queued",
                "task.running",
                "task.step",
                "memory.retrieved",
                "task.step",
                "task.step",
                "task.step",
                "task.succeeded",
            ];
            if kinds != expected {
                return Ok(false);
            }
            // The auditor sees which passages the reply was grounded in, with scores and provenance.
            let retrieved = &of_task[3].1;
            assert_eq!(retrieved["step"], "policy");
            let audited: Vec<&str> =
                retrieved["items"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()).collect();
            let used: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
            assert_eq!(audited, used, "{retrieved}");
            assert!(retrieved["items"][0]["score"].as_f64().is_some(), "{retrieved}");
            assert_eq!(retrieved["items"][0]["provenance"]["added_by"], "ops:policy-team", "{retrieved}");
            let first_step = &of_task[2].1;
            assert_eq!(first_step["step"], "category");
            assert_eq!(first_step["tier"], "local");
            assert!(first_step["reason"].as_str().is_some_and(|r| !r.is_empty()), "{first_step}");
            assert!(first_step["tokens_in"].as_u64().unwrap_or(0) > 50, "{first_step}");
            assert!(first_step["confidence"].as_f64().is_some(), "{first_step}");
            assert!(first_step["latency_ms"].as_u64().is_some(), "{first_step}");
            Ok(true)
        }
    })
    .await?;

    // The CLI submits from a file and follows the steps.
    let input = tmp.path().join("message.txt");
    std::fs::write(&input, "My parcel never arrived.\n")?;
    let api = edge.api_addr();
    let input_arg = input.to_str().context("utf-8 temp path")?;
    let args = ["task", "submit", "triage", "--kind", "customer-message", "--input", input_arg, "--api", &api];
    let output = edge.edge_cli(&args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("[1] category (classify): local"), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let label = result["steps"]["category"]["label"].as_str().unwrap_or_default();
    assert!(["refund", "shipping", "other"].contains(&label), "{result:#}");
    let listed = edge.edge_cli(&["task", "list", "--state", "succeeded", "--api", &api])?;
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 3, "a header and two tasks");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_get_clear_errors() -> anyhow::Result<()> {
    let (_tmp, _cp, edge) = fleet_with(&bins!(), TRIAGE).await?;
    let cases = [
        (json!({ "agent": "nobody", "input": {} }), 404, "agent `nobody` is not defined"),
        (json!({ "agent": "triage", "kind": "invoice", "input": {} }), 422, "does not accept tasks of kind `invoice`"),
        (json!({ "input": {} }), 400, "agent"),
    ];
    for (body, status, message) in cases {
        let (got, reply) = edge.api(Method::POST, "/v1/tasks", Some(body)).await?;
        assert_eq!(got, status, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap_or_default().contains(message), "{reply}");
    }
    let (got, reply) = edge.api(Method::GET, "/v1/tasks/t-none", None).await?;
    assert_eq!(got, 404, "{reply}");
    // A key reused for another input is refused, and the first task is untouched.
    let first = edge.submit(json!({ "agent": "triage", "input": { "text": "a" }, "idempotency_key": "k" })).await?;
    let (got, reply) = edge
        .api(
            Method::POST,
            "/v1/tasks",
            Some(json!({ "agent": "triage", "input": { "text": "b" }, "idempotency_key": "k" })),
        )
        .await?;
    assert_eq!(got, 409, "{reply}");
    let (_, kept) =
        edge.api(Method::GET, &format!("/v1/tasks/{}", first["id"].as_str().unwrap_or_default()), None).await?;
    assert_eq!(kept["input"]["text"], "a");
    // A task that names an undefined template variable fails with the reason.
    let broken = TRIAGE.replace("{{ input.text }}\nTopic:", "{{ input.txet }}\nTopic:");
    let (_tmp2, _cp2, edge2) = fleet_with(&bins!(), &broken).await?;
    let task = edge2.submit(json!({ "agent": "triage", "input": { "text": "hello" } })).await?;
    let done = edge2.finished_task(task["id"].as_str().unwrap_or_default(), LONG).await?;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert!(done["error"].as_str().unwrap_or_default().contains("step `category`"), "{done:#}");
    Ok(())
}

/// A two-model-step agent that runs quickly, for the crash test.
const QUICK: &str = r#"
autonomy = "supervised"
valid_for = "1d"

[runtime]
max_concurrent_tasks = 2
max_attempts = 100

[tiers.local]
kind = "local"
model = "smollm2-135m-instruct"

[agents.quick]
version = 1
max_concurrent = 2

[[agents.quick.steps]]
id = "category"
kind = "classify"
labels = ["refund", "shipping", "other"]
threshold = 0.0
prompt = "Message: {{ input.text }}\nTopic:"

[[agents.quick.steps]]
id = "reply"
kind = "generate"
max_tokens = 6
prompt = "Say thanks for message {{ input.n }}."
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_twenty_times_during_a_batch_loses_nothing_and_repeats_no_recorded_step() -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    println!("kill timing seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (_tmp, cp, mut edge) = fleet_with(&bins!(), QUICK).await?;
    let call_log = edge.dir.join("calls.log");
    edge.env.push(("AIOS_DEBUG_CALL_LOG".into(), call_log.to_string_lossy().into_owned()));
    edge.start()?;
    let submission = |n: usize| json!({ "agent": "quick", "input": { "text": format!("message {n} about my order"), "n": n }, "idempotency_key": format!("batch-{n}") });
    api_up(&edge).await?;
    let mut ids = std::collections::BTreeSet::new();
    for n in 0..50 {
        ids.insert(edge.submit(submission(n)).await?["id"].as_str().context("id")?.to_owned());
    }
    for kill in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        edge.kill9();
        edge.start()?;
        api_up(&edge).await?;
        // Submitting again after a crash returns the same tasks.
        let n = kill * 2 % 50;
        ids.insert(edge.submit(submission(n)).await?["id"].as_str().context("id")?.to_owned());
    }
    assert_eq!(ids.len(), 50, "repeated submissions made new tasks");
    for id in &ids {
        let task = edge.finished_task(id, LONG).await?;
        assert_eq!(task["state"], "succeeded", "{task:#}");
        let seqs: Vec<u64> =
            task["steps"].as_array().context("steps")?.iter().filter_map(|s| s["seq"].as_u64()).collect();
        assert_eq!(seqs, [0, 1], "{task:#}");
    }
    let (_, listed) = edge.api(Method::GET, "/v1/tasks?limit=1000", None).await?;
    assert_eq!(listed["tasks"].as_array().map(Vec::len), Some(50), "no task twice");

    // Model calls: every call is logged before it is made; the last call for
    // each step must be the one whose result was recorded, so no step with a
    // recorded result ever ran again.
    let log = std::fs::read_to_string(&call_log)?;
    let mut last_call: std::collections::HashMap<(String, u64), String> = std::collections::HashMap::new();
    let mut calls = 0;
    for line in log.lines() {
        let mut parts = line.split(' ');
        let (Some(task), Some(seq), Some(call)) = (parts.next(), parts.next(), parts.next()) else {
            continue; // a line cut by the kill
        };
        calls += 1;
        last_call.insert((task.to_owned(), seq.parse()?), call.to_owned());
    }
    let conn = rusqlite::Connection::open(edge.dir.join("edge.db"))?;
    let mut stmt = conn.prepare("SELECT task_id, seq, call_id FROM task_steps ORDER BY task_id, seq")?;
    let recorded: Vec<(String, u64, String)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)))?.collect::<Result<_, _>>()?;
    assert_eq!(recorded.len(), 100);
    for (task, seq, call) in &recorded {
        assert_eq!(
            last_call.get(&(task.clone(), *seq)),
            Some(call),
            "task {task} step {seq} ran after its result was recorded"
        );
    }
    println!("{calls} model calls for 100 recorded steps across 20 kills");

    // Every task finished exactly once in the audit log, and the chain
    // reached the control plane intact.
    let succeeded: i64 =
        conn.query_row("SELECT COUNT(*) FROM audit_log WHERE kind = 'task.succeeded'", [], |r| r.get(0))?;
    let step_events: i64 =
        conn.query_row("SELECT COUNT(*) FROM audit_log WHERE kind = 'task.step'", [], |r| r.get(0))?;
    assert_eq!((succeeded, step_events), (50, 100));
    aios_tests::wait_synced(&cp, &edge, LONG).await?;
    let verified = cp.cli_ok(&["audit", "verify", "--edge", &edge.edge_id])?;
    assert!(verified.lines().all(|line| !line.starts_with("BROKEN")), "{verified}");
    Ok(())
}

async fn api_up(edge: &EdgeProc) -> anyhow::Result<Duration> {
    wait_for("the edge API", LONG, || async { Ok(edge.api(Method::GET, "/v1/health", None).await.is_ok()) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_dispatches_tasks_and_sees_their_results() -> anyhow::Result<()> {
    let (tmp, cp, mut edge) = fleet_with(&bins!(), TRIAGE).await?;
    let input = tmp.path().join("message.json");
    std::fs::write(&input, r#"{"text": "Please refund the charge for the order I cancelled."}"#)?;
    let input = input.to_str().context("utf-8 temp path")?;

    // Dispatched while the edge is down: it arrives when the edge reconnects.
    edge.kill9();
    let args = ["task", "submit", "triage", "--kind", "customer-message", "--input", input, "--edge", &edge.edge_id];
    let offline_id = cp.cli_ok(&args)?.trim().to_owned();
    assert_eq!(cp.get(&format!("/v1/tasks/{offline_id}")).await?["state"], "pending");
    edge.start()?;

    // By label, waiting for the result.
    let output = cp.cli(&["task", "submit", "triage", "--input", input, "--label", "site=test", "--wait"])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_str(stdout.lines().next().context("a result line")?)?;
    assert_eq!(result["state"], "succeeded", "{result:#}");
    assert_eq!(result["last_event"]["output"]["steps"]["category"]["label"], "refund", "{result:#}");

    wait_for("the offline dispatch to finish", LONG, || async {
        Ok(cp.get(&format!("/v1/tasks/{offline_id}")).await?["state"] == "succeeded")
    })
    .await?;

    // An edge that cannot run a dispatched task refuses it with the reason.
    let refused =
        cp.cli_ok(&["task", "submit", "nobody", "--input", input, "--edge", &edge.edge_id])?.trim().to_owned();
    wait_for("the refusal", LONG, || async {
        Ok(cp.get(&format!("/v1/tasks/{refused}")).await?["state"] == "refused")
    })
    .await?;
    let record = cp.get(&format!("/v1/tasks/{refused}")).await?;
    assert!(record["refused"].as_str().unwrap_or_default().contains("agent `nobody` is not defined"), "{record:#}");

    // The edge made exactly one task per dispatch it accepted, marked as from the control plane.
    let (_, listed) = edge.api(Method::GET, "/v1/tasks", None).await?;
    let tasks = listed["tasks"].as_array().context("tasks")?;
    assert_eq!(tasks.len(), 2, "{listed:#}");
    assert!(tasks.iter().all(|t| t["source"] == "control-plane"), "{listed:#}");
    let errors = cp.cli(&["task", "submit", "triage", "--input", input, "--label", "site=nowhere"])?;
    assert!(String::from_utf8_lossy(&errors.stderr).contains("no edge has the label site=nowhere"));
    Ok(())
}
