//! The outbox's guarantees on their own: approvals bound to exact
//! arguments, single-use and lapsing; commands applied once; dead letters
//! retried under the same key.

use aios_shared::command::{Command, CommandBody};
use serde_json::json;

use super::*;
use crate::store::test_store;

const T0: i64 = 1_000_000;
const TTL: i64 = 60_000;

fn intent(key: &str, args: Value) -> Intent {
    Intent {
        key: key.into(),
        task_id: format!("task-{key}"),
        step_seq: 0,
        step_id: "refund".into(),
        agent: "refunds".into(),
        connector: "shop".into(),
        connector_version: 1,
        action: "refund".into(),
        args_hash: crate::exec::args_hash(&args),
        args,
        resource: json!({}),
        state: IntentState::AwaitingApproval,
        decision: json!({ "decision": "require_approval" }),
        approval_id: Some(format!("ap-{key}")),
        attempts: 0,
        errors: Vec::new(),
        result: None,
        compensates: None,
        created_ms: T0,
        updated_ms: T0,
    }
}

async fn declare_awaiting(store: &EdgeStore, identity: &Identity, key: &str, amount: i64) -> Intent {
    let intent = intent(key, json!({ "order_id": "o-1", "amount": amount }));
    let approval = ApprovalRequest { id: format!("ap-{key}"), request: json!({ "key": key }), expires_ms: T0 + TTL };
    let new = NewIntent { intent, approval: Some(approval), decision_event: json!({ "key": key }) };
    store.declare_intent(identity, new).await.expect("declared")
}

fn decide(id: &str, approval: &str, args_hash: &str, approve: bool) -> CommandBody {
    CommandBody {
        id: id.into(),
        edge_id: "edge-test".into(),
        by: "alice".into(),
        comment: String::new(),
        issued_ms: T0,
        command: Command::Decide {
            approval: approval.into(),
            args_hash: args_hash.into(),
            approve,
            expires_ms: T0 + 2 * TTL,
        },
    }
}

async fn count(store: &EdgeStore, kind: &'static str) -> usize {
    store.load_audit(0, 10_000).await.expect("audit").iter().filter(|e| e.kind == kind).count()
}

#[tokio::test]
async fn an_approval_is_bound_to_its_arguments_and_used_once() {
    let (_dir, store, identity) = test_store().await;
    let declared = declare_awaiting(&store, &identity, "k1", 120).await;
    let approval = declared.approval_id.clone().expect("an approval");

    // Decided for other arguments: refused, still pending.
    let other = crate::exec::args_hash(&json!({ "order_id": "o-1", "amount": 999 }));
    let refused = store.apply_command(&identity, decide("c1", &approval, &other, true), T0 + 1).await.unwrap();
    assert!(matches!(&refused, Applied::Refused(r) if r.contains("other arguments")), "{refused:?}");
    assert_eq!(store.approval(&approval).await.unwrap().unwrap().state, ApprovalState::Pending);

    // Approved for these arguments; the same command again changes nothing.
    let ok = decide("c2", &approval, &declared.args_hash, true);
    assert_eq!(store.apply_command(&identity, ok.clone(), T0 + 2).await.unwrap(), Applied::Done);
    assert_eq!(store.apply_command(&identity, ok, T0 + 3).await.unwrap(), Applied::Done);
    assert_eq!(count(&store, kinds::APPROVAL_DECIDED).await, 1, "a replayed command is applied once");
    let late = store.apply_command(&identity, decide("c3", &approval, &declared.args_hash, false), T0 + 4).await;
    assert!(matches!(late.unwrap(), Applied::Refused(r) if r.contains("already approved")));

    // An intent whose arguments changed cannot use it.
    let mut changed = declared.clone();
    changed.args = json!({ "order_id": "o-1", "amount": 500 });
    changed.args_hash = crate::exec::args_hash(&changed.args);
    let refusal = store.use_approval(&identity, &approval, &changed, T0 + 5).await.unwrap();
    assert_eq!(refusal, Err("the approval was for other arguments".to_owned()));

    // Used once by the intent it was for; a second use is refused.
    assert_eq!(store.use_approval(&identity, &approval, &declared, T0 + 6).await.unwrap(), Ok(()));
    assert_eq!(store.intent("k1").await.unwrap().unwrap().state, IntentState::Pending);
    let again = store.use_approval(&identity, &approval, &declared, T0 + 7).await.unwrap();
    assert_eq!(again, Err(format!("approval {approval} is used")));
    assert_eq!(count(&store, kinds::APPROVAL_USED).await, 1);
}

#[tokio::test]
async fn lapsed_requests_and_stale_approvals_execute_nothing() {
    let (_dir, store, identity) = test_store().await;
    let declared = declare_awaiting(&store, &identity, "k1", 120).await;
    let approval = declared.approval_id.clone().expect("an approval");
    let late = decide("c1", &approval, &declared.args_hash, true);
    let refused = store.apply_command(&identity, late, T0 + TTL + 1).await.unwrap();
    assert!(matches!(&refused, Applied::Refused(r) if r.contains("lapsed")), "{refused:?}");
    assert_eq!(store.approval(&approval).await.unwrap().unwrap().state, ApprovalState::Expired);
    assert_eq!(store.intent("k1").await.unwrap().unwrap().state, IntentState::AwaitingApproval);
    assert_eq!(count(&store, kinds::APPROVAL_DECIDED).await, 1, "the lapse is on record");

    // Approved in time but used after its use-by time.
    let declared = declare_awaiting(&store, &identity, "k2", 80).await;
    let approval = declared.approval_id.clone().expect("an approval");
    let ok = decide("c2", &approval, &declared.args_hash, true);
    assert_eq!(store.apply_command(&identity, ok, T0 + 10).await.unwrap(), Applied::Done);
    let used = store.use_approval(&identity, &approval, &declared, T0 + 2 * TTL + 1).await.unwrap();
    assert_eq!(used, Err("the approval expired before it was used".to_owned()));
    assert_eq!(store.intent("k2").await.unwrap().unwrap().state, IntentState::AwaitingApproval);
}

#[tokio::test]
async fn a_dead_letter_is_retried_under_its_key_or_discarded() {
    let (_dir, store, identity) = test_store().await;
    for key in ["k1", "k2"] {
        let mut allowed = intent(key, json!({ "amount": 10 }));
        allowed.state = IntentState::Pending;
        allowed.approval_id = None;
        let new = NewIntent { intent: allowed, approval: None, decision_event: json!({}) };
        store.declare_intent(&identity, new).await.unwrap();
    }
    let retry = |id: &str, key: &str| CommandBody {
        id: id.into(),
        edge_id: "edge-test".into(),
        by: "bob".into(),
        comment: String::new(),
        issued_ms: T0,
        command: Command::RetryIntent { key: key.into() },
    };
    let refused = store.apply_command(&identity, retry("c0", "k1"), T0).await.unwrap();
    assert!(matches!(&refused, Applied::Refused(r) if r.contains("not dead-lettered")), "{refused:?}");

    for key in ["k1", "k2"] {
        assert_eq!(store.begin_attempt(&identity, key, T0).await.unwrap(), 1);
        let failed = Attempt::Failed { error: "422 refused".into(), unknown: false, dead: true };
        store.end_attempt(&identity, key, failed, T0 + 1).await.unwrap();
        assert_eq!(store.intent(key).await.unwrap().unwrap().state, IntentState::DeadLettered);
    }
    assert_eq!(store.intents(Some(IntentState::DeadLettered), 10).await.unwrap().len(), 2);

    assert_eq!(store.apply_command(&identity, retry("c1", "k1"), T0 + 2).await.unwrap(), Applied::Done);
    let retried = store.intent("k1").await.unwrap().unwrap();
    assert_eq!((retried.state, retried.attempts), (IntentState::Pending, 0));
    assert_eq!(retried.errors.len(), 1, "the error history stays");

    let discard = CommandBody { command: Command::DiscardIntent { key: "k2".into() }, ..retry("c2", "k2") };
    assert_eq!(store.apply_command(&identity, discard, T0 + 3).await.unwrap(), Applied::Done);
    assert_eq!(store.intent("k2").await.unwrap().unwrap().state, IntentState::Discarded);
    let again = store.apply_command(&identity, retry("c3", "k2"), T0 + 4).await.unwrap();
    assert!(matches!(again, Applied::Refused(_)), "a discarded intent is not retried");
    assert_eq!(count(&store, kinds::COMMAND_REFUSED).await, 2);
}

#[test]
fn the_policy_sees_the_most_sensitive_source() {
    let sources = [json!({ "classification": "internal" }), json!({ "classification": "confidential" }), json!({})];
    assert_eq!(crate::exec::highest_classification(&sources).as_deref(), Some("confidential"));
    assert_eq!(crate::exec::highest_classification(&[]), None);
}

#[tokio::test]
async fn an_answer_command_answers_its_question_once() {
    let (_dir, store, identity) = test_store().await;
    let asked = store.ask(&identity, "t1:0:0.0", "t1", "desk", "Which account?", T0).await.unwrap();
    assert_eq!(asked.answer, None);
    let answer = |id: &str, question: &str, text: &str| CommandBody {
        id: id.into(),
        edge_id: "edge-test".into(),
        by: "dave".into(),
        comment: String::new(),
        issued_ms: T0,
        command: Command::Answer { task: "t1".into(), question: question.into(), answer: text.into() },
    };
    let refused = store.apply_command(&identity, answer("c0", "t1:0:9.9", "acct-1"), T0).await.unwrap();
    assert_eq!(refused, Applied::Refused("task t1 has no question t1:0:9.9".into()));
    let empty = store.apply_command(&identity, answer("c1", "t1:0:0.0", "  "), T0).await.unwrap();
    assert_eq!(empty, Applied::Refused("the answer is empty".into()));
    assert_eq!(
        store.apply_command(&identity, answer("c2", "t1:0:0.0", " acct-1 "), T0 + 1).await.unwrap(),
        Applied::Done
    );
    let question = store.question("t1:0:0.0").await.unwrap().unwrap();
    assert_eq!((question.answer.as_deref(), question.answered_by.as_deref()), (Some("acct-1"), Some("dave")));
    let again = store.apply_command(&identity, answer("c3", "t1:0:0.0", "acct-9"), T0 + 2).await.unwrap();
    assert_eq!(again, Applied::Refused("question t1:0:0.0 was already answered by dave".into()));
    assert_eq!(
        store.apply_command(&identity, answer("c2", "t1:0:0.0", "acct-9"), T0 + 3).await.unwrap(),
        Applied::Done
    );
    assert_eq!(
        store.question("t1:0:0.0").await.unwrap().unwrap().answer.as_deref(),
        Some("acct-1"),
        "a replay does nothing"
    );
}
