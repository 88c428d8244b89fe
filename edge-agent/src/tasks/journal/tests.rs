use super::*;

async fn store() -> (tempfile::TempDir, EdgeStore, Identity) {
    crate::store::test_store().await
}

fn new_task(key: Option<&str>, text: &str) -> NewTask {
    NewTask {
        agent: "triage".into(),
        agent_version: 1,
        kind: None,
        input: serde_json::json!({ "text": text }),
        idempotency_key: key.map(str::to_owned),
        source: "api".into(),
        deadline_ms: 1_000_000,
        parent: None,
        budget_usd: None,
    }
}

fn step(seq: u32) -> StepRecord {
    StepRecord {
        seq,
        step_id: format!("s{seq}"),
        kind: "generate".into(),
        status: "done".into(),
        output: serde_json::json!({ "text": format!("out {seq}") }),
        value: Some(format!("out {seq}")),
        tier: Some("local".into()),
        reason: Some("local by default".into()),
        tokens_in: 10,
        tokens_out: 5,
        cost_usd: 0.001,
        latency_ms: 3,
        confidence: None,
        needs_review: false,
        call_id: None,
        created_ms: 10,
    }
}

async fn kinds_logged(store: &EdgeStore) -> Vec<String> {
    store.load_audit(1, 1000).await.unwrap().into_iter().map(|e| e.kind).filter(|k| k.starts_with("task.")).collect()
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_task_and_refuses_other_input() {
    let (_dir, store, identity) = store().await;
    let (first, created) = store.submit_task(&identity, new_task(Some("k1"), "hello"), 1).await.unwrap();
    assert!(created);
    let (again, created) = store.submit_task(&identity, new_task(Some("k1"), "hello"), 2).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    let err = store.submit_task(&identity, new_task(Some("k1"), "other"), 3).await.unwrap_err();
    assert!(matches!(err, SubmitError::KeyReused { .. }), "{err}");
    let (other, created) = store.submit_task(&identity, new_task(None, "hello"), 4).await.unwrap();
    assert!(created && other.id != first.id);
    assert_eq!(kinds_logged(&store).await, ["task.queued", "task.queued"]);
}

#[tokio::test]
async fn a_resumed_task_keeps_its_checkpoints_and_refuses_a_second_result() {
    let (_dir, store, identity) = store().await;
    let (task, _) = store.submit_task(&identity, new_task(None, "x"), 1).await.unwrap();
    let claimed = store.claim_task(&identity, &task.id, 5, 2).await.unwrap().unwrap();
    assert_eq!((claimed.state, claimed.starts, claimed.next_step), (TaskState::Running, 1, 0));
    store.checkpoint_step(&identity, &task.id, step(0)).await.unwrap();
    // A second result for the same step, or one out of order, is refused.
    assert!(store.checkpoint_step(&identity, &task.id, step(0)).await.is_err());
    assert!(store.checkpoint_step(&identity, &task.id, step(2)).await.is_err());
    // The process dies here; the next one puts the task back and resumes at step 1.
    assert_eq!(store.requeue_interrupted(3).await.unwrap(), 1);
    let resumed = store.claim_task(&identity, &task.id, 5, 4).await.unwrap().unwrap();
    assert_eq!((resumed.starts, resumed.next_step), (2, 1));
    assert_eq!(resumed.steps, vec![step(0)]);
    store.checkpoint_step(&identity, &task.id, step(1)).await.unwrap();
    let output = serde_json::json!({ "done": true });
    store
        .end_run(&identity, &task.id, RunEnd::Succeeded { output: output.clone(), needs_review: false }, 5)
        .await
        .unwrap();
    let done = store.task(&task.id).await.unwrap().unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.output, Some(output));
    assert_eq!(done.steps.len(), 2);
    assert!((done.cost_usd - 0.002).abs() < 1e-12);
    assert_eq!(
        kinds_logged(&store).await,
        ["task.queued", "task.running", "task.step", "task.running", "task.step", "task.succeeded"]
    );
}

#[tokio::test]
async fn cancellation_works_in_every_state() {
    let (_dir, store, identity) = store().await;
    let (queued, _) = store.submit_task(&identity, new_task(None, "a"), 1).await.unwrap();
    let cancelled = store.cancel_task(&identity, &queued.id, 2).await.unwrap().unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert!(store.claim_task(&identity, &queued.id, 5, 3).await.unwrap().is_none());

    let (running, _) = store.submit_task(&identity, new_task(None, "b"), 1).await.unwrap();
    store.claim_task(&identity, &running.id, 5, 2).await.unwrap().unwrap();
    let asked = store.cancel_task(&identity, &running.id, 3).await.unwrap().unwrap();
    assert_eq!(asked.state, TaskState::Running, "a running task stops at its next step boundary");
    assert!(store.cancel_requested(&running.id).await.unwrap());
    store.end_run(&identity, &running.id, RunEnd::Cancelled, 4).await.unwrap();
    assert_eq!(store.task(&running.id).await.unwrap().unwrap().state, TaskState::Cancelled);

    let (waiting, _) = store.submit_task(&identity, new_task(None, "c"), 1).await.unwrap();
    store.claim_task(&identity, &waiting.id, 5, 2).await.unwrap().unwrap();
    let wait = RunEnd::Waiting { reason: "tier down".into(), until_ms: 100 };
    store.end_run(&identity, &waiting.id, wait, 3).await.unwrap();
    assert!(store.due_tasks(50, 10).await.unwrap().is_empty(), "not due before its time");
    assert_eq!(store.due_tasks(100, 10).await.unwrap().len(), 1);
    assert_eq!(store.cancel_task(&identity, &waiting.id, 4).await.unwrap().unwrap().state, TaskState::Cancelled);
    assert!(store.cancel_task(&identity, "nope", 4).await.unwrap().is_none());
}

#[tokio::test]
async fn crash_loops_are_dead_lettered_and_late_tasks_fail() {
    let (_dir, store, identity) = store().await;
    let (task, _) = store.submit_task(&identity, new_task(None, "poison"), 1).await.unwrap();
    for start in 0..3 {
        assert!(store.claim_task(&identity, &task.id, 3, 2 + start).await.unwrap().is_some());
        store.requeue_interrupted(2 + start).await.unwrap();
    }
    assert!(store.claim_task(&identity, &task.id, 3, 10).await.unwrap().is_none());
    let dead = store.task(&task.id).await.unwrap().unwrap();
    assert_eq!(dead.state, TaskState::DeadLettered);
    assert!(dead.error.unwrap().contains("started 3 times"));

    let (late, _) = store.submit_task(&identity, new_task(None, "late"), 1).await.unwrap();
    assert!(store.claim_task(&identity, &late.id, 3, 2_000_000).await.unwrap().is_none());
    assert_eq!(store.task(&late.id).await.unwrap().unwrap().state, TaskState::Failed);
    let listed = store.list_tasks(TaskFilter { state: Some(TaskState::Failed), ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [late.id.as_str()]);
}
