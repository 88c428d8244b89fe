//! An agent step's loop on the task page, as a transcript: each model turn
//! (tier, tokens, cost, latency, why it ran there, what it said and which
//! calls it proposed), each call's outcome (the policy's refusal, the
//! result, why it was invalid), the questions asked and their answers; and
//! the form that answers an open question (sent to the edge as a signed
//! command, like an approval decision).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::pages::{urlencode, PageResult};
use super::{badge, charts, csrf_field, error_page, json_block, Nav};
use crate::accounts::{Permission, Principal};
use crate::api::{self, ApiError, ApiState, Operator};
use crate::commands::OpenQuestion;
use crate::store::StoredEvent;

/// The event kinds the transcript shows.
const KINDS: [&str; 5] = ["agent.turn", "agent.decided", "agent.call", "question.asked", "question.answered"];

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The transcript of the task's agent loops; empty when it has none.
pub(crate) fn transcript(events: &[StoredEvent]) -> Markup {
    let entries: Vec<&StoredEvent> = events.iter().filter(|e| KINDS.contains(&e.kind.as_str())).collect();
    if entries.is_empty() {
        return html! {};
    }
    html! {
        h2 { "Agent loop" }
        ol #transcript {
            @for event in entries {
                @let p = &event.payload;
                @match event.kind.as_str() {
                    "agent.turn" => li.turn data-iteration=(text(&p["iteration"])) {
                        strong { "Turn " (text(&p["iteration"])) } " on " code { (text(&p["tier"])) }
                        span.muted {
                            " · " (text(&p["tokens_in"])) " in, " (text(&p["tokens_out"])) " out"
                            " · " (charts::dollars(p["cost_usd"].as_f64().unwrap_or(0.0)))
                            " · " (charts::millis(p["latency_ms"].as_f64().unwrap_or(0.0)))
                        }
                        @if p["needs_review"] == Value::Bool(true) { " " (badge("needs review")) }
                        div.muted { (text(&p["reason"])) }
                        @if let Some(said) = p["text"].as_str().filter(|t| !t.trim().is_empty()) { blockquote { (said) } }
                        @if let Some(refusal) = p["refusal"].as_str() { div.error { "Refused: " (refusal) } }
                        @for call in p["calls"].as_array().into_iter().flatten() {
                            div { "proposes " code { (text(&call["name"])) } " " code.args { (text(&call["arguments"])) } }
                        }
                    },
                    "agent.call" => li.call data-outcome=(text(&p["outcome"]["outcome"])) {
                        strong { "Call " (text(&p["iteration"])) "." (text(&p["index"])) } " " code { (text(&p["name"])) }
                        " " (badge(p["outcome"]["outcome"].as_str().unwrap_or("?")))
                        div { span.muted { "arguments " } code.args { (text(&p["arguments"])) } }
                        @for field in ["reason", "problem"] {
                            @if let Some(why) = p["outcome"][field].as_str() { div.notice { (why) } }
                        }
                        @if let Some(result) = p["outcome"].get("result").filter(|r| !r.is_null()) {
                            details { summary { "result (data, never instructions)" } (json_block(result)) }
                        }
                    },
                    "agent.decided" => li.decided {
                        strong { "Call " (text(&p["iteration"])) "." (text(&p["index"])) } " arguments written by "
                        code { (text(&p["tier"])) } " (the plan left them to the local model) "
                        code.args { (text(&p["arguments"])) }
                    },
                    "question.asked" => li.question { strong { "Asks a person: " } (text(&p["question"])) },
                    _ => li.answer { strong { "Answered by " (text(&p["by"])) ": " } (text(&p["answer"])) },
                }
            }
        }
    }
}

/// The open question and, for an operator, the form that answers it.
pub(crate) fn question_form(principal: &Principal, task: &str, open: Option<&OpenQuestion>) -> Markup {
    let Some(open) = open else { return html! {} };
    html! {
        section.card #open-question {
            div { strong { "The agent asks: " } (open.question) }
            @if open.answering {
                div.notice { "An answer is on its way to the edge." }
            } @else if principal.role.allows(Permission::Operate) {
                form method="post" action={ "/console/tasks/" (task) "/answer" } {
                    (csrf_field(principal))
                    input type="hidden" name="edge" value=(open.edge_id);
                    textarea name="answer" rows="3" required maxlength="4000" {}
                    button type="submit" { "Answer" }
                }
            } @else {
                p.muted { "Your role (" (principal.role) ") may not answer." }
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct AnswerForm {
    answer: String,
    /// The edge the task runs on (ids are not unique across edges).
    #[serde(default)]
    edge: Option<String>,
}

/// `POST /console/tasks/{id}/answer`.
pub(crate) async fn answer(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Form(form): Form<AnswerForm>,
) -> PageResult {
    let operator = Operator { by: None, comment: String::new() }.acting_as(&principal);
    let edge = form.edge.clone().unwrap_or_default();
    match api::answer(state, id.clone(), form.edge, form.answer, operator).await {
        Ok(_) => {
            let done = "Answered; the edge resumes the task on its next sync.";
            let to = format!("/console/tasks/{}?edge={}&done={}", urlencode(&id), urlencode(&edge), urlencode(done));
            Ok(Redirect::to(&to).into_response())
        }
        Err(ApiError(status, message)) => Ok(error_page(&principal, Nav::Tasks, status, &message)),
    }
}
