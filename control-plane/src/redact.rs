//! What a role without [`Permission::Contents`] (the viewer) sees: where
//! work stands, never what agents handled. Approval requests keep what was
//! asked and why it waits but lose the arguments, resource, reasoning,
//! sources and review notes; dispatched tasks lose their input and result;
//! dead letters keep which intent and where, not its arguments or error;
//! commands keep their kind and delivery, not what they carry.
//! The console hides audit payloads and agent transcripts the same way.

use serde_json::{Map, Value};

use crate::accounts::{Permission, Principal};
use crate::commands::{ApprovalView, CommandRecord};
use crate::dispatch::DispatchRecord;

/// What a viewer is told in place of contents.
pub const WITHHELD: &str = "withheld: your role does not see what agents handle";

/// The fields of an approval request anyone who may read the queue sees.
const APPROVAL_FIELDS: [&str; 12] = [
    "approval",
    "edge",
    "task",
    "agent",
    "step",
    "key",
    "connector",
    "connector_version",
    "action",
    "args_hash",
    "decision",
    "expires_ms",
];

/// The fields of a dead letter anyone who may read the queue sees.
const DEAD_LETTER_FIELDS: [&str; 7] = ["key", "task", "agent", "connector", "action", "attempts", "edge_id"];

/// Whether `principal` sees contents.
pub fn sees_contents(principal: &Principal) -> bool {
    principal.role.allows(Permission::Contents)
}

/// `value` with only the object keys in `fields`.
fn keep(value: &Value, fields: &[&str]) -> Value {
    let kept: Map<String, Value> =
        fields.iter().filter_map(|field| value.get(*field).map(|v| ((*field).to_owned(), v.clone()))).collect();
    Value::Object(kept)
}

/// An approval as `principal` may see it.
pub fn approval(principal: &Principal, mut view: ApprovalView) -> ApprovalView {
    if !sees_contents(principal) {
        view.request = keep(&view.request, &APPROVAL_FIELDS);
        view.decision = view.decision.map(|decision| keep(&decision, &["approve", "by", "at_ms", "state"]));
    }
    view
}

/// A dispatched task as `principal` may see it.
pub fn dispatch(principal: &Principal, mut record: DispatchRecord) -> DispatchRecord {
    if !sees_contents(principal) {
        record.input = Value::String(WITHHELD.into());
        record.refused = record.refused.map(|_| WITHHELD.into());
        record.last_event = record.last_event.map(|event| keep(&event, &["kind", "state", "ts_ms"]));
    }
    record
}

/// A command as `principal` may see it: its kind and delivery, not what it
/// carries (an answer, a comment).
pub fn command(principal: &Principal, mut record: CommandRecord) -> CommandRecord {
    if !sees_contents(principal) {
        let body = &record.body;
        let kind = body["command"]["command"].as_str().or(body["command"].as_str()).map(str::to_owned);
        record.body = serde_json::json!({ "kind": kind, "contents": WITHHELD });
        record.refused = record.refused.map(|_| WITHHELD.into());
    }
    record
}

/// A dead letter as `principal` may see it.
pub fn dead_letter(principal: &Principal, value: Value) -> Value {
    if sees_contents(principal) {
        value
    } else {
        keep(&value, &DEAD_LETTER_FIELDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Role;
    use serde_json::json;

    fn principal(role: Role) -> Principal {
        Principal { account: "someone".into(), role, csrf: None }
    }

    #[test]
    fn a_viewer_sees_what_waits_not_what_it_carries() {
        let request = json!({
            "approval": "ap-1", "task": "t-1", "connector": "shop", "action": "refund",
            "args": { "amount": 240, "account": "acct-1002" }, "args_hash": "ab12",
            "reasoning": "Customer wrote: my card number is ...", "sources": [{ "text": "policy" }],
            "resource": { "id": "A-1002" }, "review": ["turn 0 ran locally"], "expires_ms": 5,
        });
        let view = ApprovalView {
            id: "ap-1".into(),
            edge_id: "e-1".into(),
            state: crate::commands::QueueState::Sending { approve: true },
            request,
            decision: None,
        };
        let seen = approval(&principal(Role::Viewer), view.clone());
        let text = seen.request.to_string();
        for secret in ["240", "acct-1002", "card number", "policy", "A-1002", "locally"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(seen.request["action"], "refund");
        assert_eq!(seen.request["args_hash"], "ab12");
        for role in [Role::Admin, Role::Operator, Role::Auditor] {
            assert_eq!(approval(&principal(role), view.clone()).request, view.request, "{role}");
        }
        let letter = json!({ "key": "k", "task": "t", "args": { "to": "a@b.test" }, "error": "550 a@b.test" });
        assert_eq!(dead_letter(&principal(Role::Viewer), letter), json!({ "key": "k", "task": "t" }));
    }
}
