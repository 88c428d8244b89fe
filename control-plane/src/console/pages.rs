//! The console's pages and form actions.

use std::collections::BTreeMap;

use aios_shared::bundle::BundleBody;
use aios_shared::lifecycle::approval::ApprovalState;
use aios_shared::lifecycle::task::TaskState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use crate::commands::QueueState;

use super::{badge, charts, csrf_field, error_page, json_block, layout, when, Nav};
use crate::accounts::{Permission, Principal};
use crate::api::{self, ApiError, ApiState, Operator};
use crate::store::{AuditFilter, EdgeRecord};
use crate::views::TaskFilter;

pub(crate) type PageResult = Result<Response, PageError>;

/// An error shown inside the page frame.
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> PageError {
        PageError(err)
    }
}

impl From<aios_daemon::db::DbError> for PageError {
    fn from(err: aios_daemon::db::DbError) -> PageError {
        PageError(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        (
            self.0 .0,
            axum::response::Html(format!("<!DOCTYPE html><p>{}</p>", maud::html! { (self.0 .1) }.into_string())),
        )
            .into_response()
    }
}

pub(crate) fn page(principal: &Principal, here: Nav, title: &str, body: Markup) -> PageResult {
    Ok(layout(principal, here, title, body).into_response())
}

pub(crate) async fn current_bundle(state: &ApiState) -> Result<Option<(u64, BundleBody)>, ApiError> {
    let Some((version, signed)) = state.store.bundle(None).await? else { return Ok(None) };
    let body = signed
        .open(&state.pki.bundle_root())
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("stored bundle {version}: {err}")))?;
    Ok(Some((version, body)))
}

fn edge_names(edges: &[EdgeRecord]) -> BTreeMap<String, String> {
    edges.iter().map(|e| (e.id.clone(), e.name.clone())).collect()
}

fn edge_state(edge: &EdgeRecord) -> &'static str {
    if edge.revoked_at_ms.is_some() {
        "revoked"
    } else if edge.connected {
        "connected"
    } else {
        "offline"
    }
}

fn ago(ts_ms: Option<i64>, now_ms: i64) -> String {
    let Some(ts) = ts_ms else { return "never".into() };
    let seconds = (now_ms - ts).max(0) / 1000;
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86_399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

/// `GET /console/fleet`.
pub(crate) async fn fleet(State(state): State<ApiState>, Extension(principal): Extension<Principal>) -> PageResult {
    let edges = state.store.edges().await?;
    let depths = state.store.queue_depths().await?;
    let health = state.store.tier_health(state.clock.unix_ms() - 3_600_000).await?;
    let bundle = current_bundle(&state).await?;
    let pending = state.store.approvals(Some("pending".into()), state.clock.unix_ms()).await?.len();
    let connected = edges.iter().filter(|e| e.connected && e.revoked_at_ms.is_none()).count();
    let current_version = bundle.as_ref().map_or(0, |(v, _)| *v);
    let body = html! {
        div id="fleet" data-live="3" {
            div.cards {
                div.card { div.muted { "Edges connected" } div.value { (connected) " / " (edges.len()) } }
                div.card {
                    div.muted { "Policy bundle" }
                    div.value { "v" (current_version) }
                    @if let Some((_, body)) = &bundle { (badge(body.autonomy.as_str())) }
                }
                div.card { div.muted { "Approvals waiting" } div.value { a href="/console/approvals" { (pending) } } }
                div.card { div.muted { "Tasks in flight" } div.value { (depths.values().sum::<u64>()) } }
            }
            @if bundle.as_ref().is_some_and(|(_, b)| b.autonomy == aios_shared::bundle::Autonomy::Off) {
                div.alarm { "Kill switch engaged (effects): autonomy is off fleet-wide; every side effect is refused." }
            }
            @if bundle.as_ref().is_some_and(|(_, b)| b.autonomy == aios_shared::bundle::Autonomy::Halted) {
                div.alarm {
                    "Kill switch engaged (all): no side effect, no model call, no escalation and no gateway "
                    "anywhere in the fleet."
                }
            }
            table #edges {
                thead { tr {
                    th { "Edge" } th { "Status" } th { "Last seen" } th { "Version" } th { "Bundle" }
                    th { "Autonomy" } th { "Model tiers (last hour)" } th.num { "Queue" } th { "Labels" }
                } }
                tbody {
                    @for edge in &edges {
                        @let applied = edge.bundle_version == current_version;
                        tr data-edge=(edge.name) {
                            td { strong { (edge.name) } br; span.muted { code { (edge.id) } } }
                            td { (badge(edge_state(edge))) }
                            td { (ago(edge.last_seen_ms, state.clock.unix_ms())) }
                            td { (edge.agent_version.as_deref().unwrap_or("?")) }
                            td.bundle {
                                "v" (edge.bundle_version)
                                @if !applied { " " span class="badge waiting" { "behind v" (current_version) } }
                            }
                            td {
                                @match (&bundle, applied) {
                                    (Some((_, body)), true) => (badge(body.autonomy.as_str())),
                                    _ => span.muted { "as of v" (edge.bundle_version) },
                                }
                            }
                            td {
                                @if let Some((_, body)) = &bundle {
                                    @for (name, tier) in &body.definitions.tiers {
                                        @let (ok, failed) = health.get(&(edge.id.clone(), name.clone())).copied().unwrap_or((0, 0));
                                        div {
                                            (name) " " span.muted { "(" (format!("{:?}", tier.kind).to_lowercase()) ", " (tier.model) ")" } " "
                                            @if ok + failed == 0 { span.badge { "idle" } }
                                            @else if failed == 0 { span class="badge ok" { (ok) " ok" } }
                                            @else { span class="badge failed" { (failed) " failed / " (ok + failed) } }
                                        }
                                    }
                                }
                            }
                            td.num { (depths.get(&edge.id).copied().unwrap_or(0)) }
                            td { code { (edge.labels.to_string()) } }
                        }
                    }
                    @if edges.is_empty() { tr { td colspan="9" { "No edge has enrolled yet (aios-control-plane token create)." } } }
                }
            }
        }
    };
    page(&principal, Nav::Fleet, "Fleet", body)
}

#[derive(Deserialize, Default)]
pub(crate) struct TaskQuery {
    #[serde(default)]
    edge: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `GET /console/tasks`.
pub(crate) async fn tasks(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<TaskQuery>,
) -> PageResult {
    let edges = state.store.edges().await?;
    let names = edge_names(&edges);
    let filter = TaskFilter {
        edge_id: non_empty(query.edge.clone()),
        agent: non_empty(query.agent.clone()),
        state: non_empty(query.state.clone()),
        limit: 200,
    };
    let rows = state.store.tasks(filter).await?;
    let states = TaskState::ALL.iter().map(|state| state.as_str());
    let body = html! {
        form.filters method="get" {
            label { "Edge" select name="edge" {
                option value="" { "any" }
                @for edge in &edges { option value=(edge.id) selected[query.edge.as_deref() == Some(&edge.id)] { (edge.name) } }
            } }
            label { "Agent" input name="agent" value=(query.agent.clone().unwrap_or_default()); }
            label { "State" select name="state" {
                option value="" { "any" }
                @for s in states { option value=(s) selected[query.state.as_deref() == Some(s)] { (s) } }
            } }
            button type="submit" { "Filter" }
        }
        div id="tasks" data-live="3" {
            table {
                thead { tr {
                    th { "Task" } th { "Agent" } th { "Edge" } th { "State" } th { "Queued" } th.num { "Latency" }
                    th.num { "Steps" } th.num { "Escalated" } th.num { "Approvals" } th.num { "Cost" } th { "Note" }
                } }
                tbody {
                    @for row in &rows {
                        tr data-task=(row.task) {
                            td { a href={ "/console/tasks/" (row.task) "?edge=" (row.edge_id) } { code { (row.task) } } }
                            td { (row.agent) }
                            td { (names.get(&row.edge_id).map_or(row.edge_id.as_str(), String::as_str)) }
                            td { (badge(row.state.as_str())) @if row.needs_review { " " span class="badge waiting" { "review" } } }
                            td { (when(row.created_ms)) }
                            td.num { @if let Some(f) = row.finished_ms { (charts::millis((f - row.created_ms) as f64)) } }
                            td.num { (row.steps) }
                            td.num { (row.escalations) }
                            td.num { (row.approvals) }
                            td.num { (charts::dollars(row.cost_usd)) }
                            td { (row.detail.clone().unwrap_or_default()) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="11" { "No tasks match." } } }
                }
            }
        }
    };
    page(&principal, Nav::Tasks, "Tasks", body)
}

/// The fields of an event worth a column in a trace, in this order.
const TRACE_FIELDS: &[&str] = &[
    "step",
    "kind",
    "tier",
    "reason",
    "confidence",
    "value",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "latency_ms",
    "decision",
    "connector",
    "action",
    "approval",
    "state",
    "by",
    "comment",
    "status",
    "error",
    "wait",
    "until_ms",
];

fn trace_summary(payload: &Value) -> Markup {
    html! {
        @for key in TRACE_FIELDS {
            @if let Some(value) = payload.get(*key).filter(|v| !v.is_null()) {
                span.field { span.muted { (key) "=" } (match value { Value::String(s) => s.clone(), other => other.to_string() }) " " }
            }
        }
        @if let Some(hits) = payload.get("items").and_then(Value::as_array) {
            div { span.muted { "sources: " }
                @for hit in hits {
                    code { (hit.get("id").map(|v| v.to_string()).unwrap_or_default()) }
                    " (" (hit["provenance"]["source"].as_str().unwrap_or("?")) ", " (hit["classification"].as_str().unwrap_or("?")) ", score "
                    (hit.get("score").and_then(Value::as_f64).map(|s| format!("{s:.3}")).unwrap_or_default()) ") "
                }
            }
        }
    }
}

/// `GET /console/tasks/{id}`: the task's trace, its agent loops as a
/// transcript, and the form that answers an open question.
pub(crate) async fn task(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<DoneQuery>,
) -> PageResult {
    let found = match state.store.task_trace(id.clone(), query.edge.clone().filter(|e| !e.is_empty())).await {
        Ok(found) => found,
        Err(crate::commands::LookupError::Ambiguous { edges, .. }) => {
            let links: Vec<String> = edges.iter().map(|edge| format!("/console/tasks/{id}?edge={edge}")).collect();
            return Ok(error_page(
                &principal,
                Nav::Tasks,
                StatusCode::CONFLICT,
                &format!("Tasks of several edges carry the id {id}; open one: {}", links.join(" ")),
            ));
        }
        Err(crate::commands::LookupError::Db(err)) => return Err(err.into()),
    };
    let Some((row, events)) = found else {
        return Ok(error_page(
            &principal,
            Nav::Tasks,
            StatusCode::NOT_FOUND,
            &format!("No task {id} has reached the control plane."),
        ));
    };
    let names = edge_names(&state.store.edges().await?);
    let contents = crate::redact::sees_contents(&principal);
    let open = match contents {
        true => state.store.open_question(id.clone(), Some(row.edge_id.clone())).await.map_err(ApiError::from)?,
        false => None,
    };
    let body = html! {
        @if let Some(done) = &query.done { div.notice { (done) } }
        (super::transcript::question_form(&principal, &row.task, open.as_ref()))
        div id="trace" data-live="3" {
            div.cards {
                div.card { div.muted { "State" } div.value #task-state { (badge(row.state.as_str())) } }
                div.card { div.muted { "Agent" } div.value { (row.agent) } }
                div.card { div.muted { "Edge" } div.value { (names.get(&row.edge_id).cloned().unwrap_or(row.edge_id.clone())) } }
                div.card { div.muted { "Cost" } div.value { (charts::dollars(row.cost_usd)) } }
                div.card { div.muted { "Tokens" } div.value { (row.tokens) } }
                div.card { div.muted { "Trace id" } div { code #trace-id { (aios_shared::trace::task_trace_hex(&row.task)) } } }
                div.card { div.muted { "Latency" } div.value {
                    @if let Some(f) = row.finished_ms { (charts::millis((f - row.created_ms) as f64)) } @else { "—" }
                } }
            }
            @if let Some(detail) = &row.detail {
                @if matches!(row.state, TaskState::Failed | TaskState::DeadLettered) { div.error #task-detail { (detail) } }
                @else { div.notice #task-detail { (detail) } }
            }
            @if row.needs_review {
                div.notice #needs-review {
                    "Needs review: a step that asked for a bigger model ran on the local one (see its reason below); "
                    "its side effects wait for a person's approval."
                }
            }
            @if contents { (super::transcript::transcript(&events)) }
            @else { p.muted #withheld { "Payloads and the agent's transcript are " (crate::redact::WITHHELD) "." } }
            h2 { "Events" }
            table #trace-events {
                thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Summary" } th { "Details" } } }
                tbody {
                    @for event in &events {
                        tr data-kind=(event.kind) {
                            td.num { (event.seq) }
                            td { (when(event.ts_ms)) }
                            td { code { (event.kind) } }
                            @if contents {
                                td { (trace_summary(&event.payload)) }
                                td { details { summary { "payload" } (json_block(&event.payload)) } }
                            } @else {
                                td.muted { "—" }
                                td.muted { "—" }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&principal, Nav::Tasks, &format!("Task {}", row.task), body)
}

#[derive(Deserialize, Default)]
pub(crate) struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
    /// Whose task, when edges' tasks share the id.
    #[serde(default)]
    edge: Option<String>,
}

/// `GET /console/approvals`: the queue with everything an approver must see.
pub(crate) async fn approvals(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<DoneQuery>,
) -> PageResult {
    let all = state.store.approvals(None, state.clock.unix_ms()).await?;
    let all: Vec<_> = all.into_iter().map(|approval| crate::redact::approval(&principal, approval)).collect();
    let names = edge_names(&state.store.edges().await?);
    let can_decide = principal.role.allows(Permission::Operate);
    let (pending, decided): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|a| a.state == QueueState::Edge(ApprovalState::Pending));
    let body = html! {
        @if let Some(done) = &query.done { div.notice { (done) } }
        div id="approvals" data-live="5" {
            h2 { "Waiting (" (pending.len()) ")" }
            @if pending.is_empty() { p.muted { "Nothing waits for a decision." } }
            @for approval in &pending {
                @let request = &approval.request;
                section.card.approval data-approval=(approval.id) {
                    div {
                        strong { (request["connector"].as_str().unwrap_or("?")) "." (request["action"].as_str().unwrap_or("?")) }
                        " on " (names.get(&approval.edge_id).cloned().unwrap_or(approval.edge_id.clone()))
                        " · task " a href={ "/console/tasks/" (request["task"].as_str().unwrap_or_default()) "?edge=" (approval.edge_id) } { code { (request["task"].as_str().unwrap_or_default()) } }
                        " · expires " (when(request["expires_ms"].as_i64().unwrap_or(0)))
                    }
                    div.notice.why {
                        strong { "Why it waits: " } (request["decision"]["reason"].as_str().unwrap_or("the policy asks for approval"))
                        @if let Some(review) = request["review"].as_array().filter(|r| !r.is_empty()) {
                            ul { @for item in review { li { (item.as_str().unwrap_or_default()) } } }
                        }
                    }
                    @if !crate::redact::sees_contents(&principal) {
                        p.muted.withheld { "Arguments, reasoning and sources are " (crate::redact::WITHHELD) "." }
                    }
                    @if let Some(args) = request.get("args") { h2 { "Exact arguments" } (json_block(args)) }
                    div.muted { "Arguments hash " code { (request["args_hash"].as_str().unwrap_or_default()) } }
                    @if let Some(reasoning) = request.get("reasoning").filter(|v| !v.is_null()) {
                        h2 { "The agent's reasoning" } (json_block(reasoning))
                    }
                    @if let Some(sources) = request.get("sources").filter(|v| !v.is_null()) {
                        h2 { "Sources" } (json_block(sources))
                    }
                    @if can_decide {
                        form.inline method="post" action={ "/console/approvals/" (approval.id) "/approve" } {
                            (csrf_field(&principal))
                            input type="hidden" name="edge" value=(approval.edge_id);
                            input name="comment" placeholder="comment (optional)";
                            button type="submit" { "Approve" }
                        }
                        form.inline method="post" action={ "/console/approvals/" (approval.id) "/reject" } {
                            (csrf_field(&principal))
                            input type="hidden" name="edge" value=(approval.edge_id);
                            input name="comment" placeholder="why (optional)";
                            button.danger type="submit" { "Reject" }
                        }
                    } @else {
                        p.muted { "Your role (" (principal.role) ") may not decide." }
                    }
                }
            }
            h2 { "Decided" }
            table {
                thead { tr { th { "Approval" } th { "Action" } th { "State" } th { "By" } th { "Comment" } } }
                tbody {
                    @for approval in decided.iter().rev().take(100) {
                        @let decision = approval.decision.clone().unwrap_or(Value::Null);
                        tr {
                            td { code { (approval.id) } }
                            td { (approval.request["connector"].as_str().unwrap_or("?")) "." (approval.request["action"].as_str().unwrap_or("?")) }
                            td { (badge(&approval.state.to_string())) }
                            td { (decision["by"].as_str().unwrap_or("")) }
                            td { (decision["comment"].as_str().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    page(&principal, Nav::Approvals, "Approvals", body)
}

#[derive(Deserialize)]
pub(crate) struct DecisionForm {
    #[serde(default)]
    comment: String,
    /// The edge whose request it is (ids are not unique across edges).
    #[serde(default)]
    edge: Option<String>,
}

/// `POST /console/approvals/{id}/approve|reject`.
pub(crate) async fn decide(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((id, decision)): Path<(String, String)>,
    Form(form): Form<DecisionForm>,
) -> PageResult {
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Ok(error_page(&principal, Nav::Approvals, StatusCode::NOT_FOUND, &format!("no decision `{other}`")))
        }
    };
    let operator = Operator { by: None, comment: form.comment }.acting_as(&principal);
    match api::decide(state, id.clone(), form.edge, approve, operator).await {
        Ok(_) => {
            let done = format!(
                "{} {id}; the edge applies it on its next sync.",
                if approve { "Approved" } else { "Rejected" }
            );
            Ok(Redirect::to(&format!("/console/approvals?done={}", urlencode(&done))).into_response())
        }
        Err(ApiError(status, message)) => Ok(error_page(&principal, Nav::Approvals, status, &message)),
    }
}

pub(crate) fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)]).map(|s| s.trim_start_matches('=').to_owned()).unwrap_or_default()
}

#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    edge: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

/// `2026-11-22` or `2026-11-22T10:30` (UTC) to milliseconds.
fn parse_when(text: &str) -> Option<i64> {
    let (date, clock) = text.split_once('T').unwrap_or((text, "00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min) = (c.next()??, c.next()??);
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let at = date.with_hms(u8::try_from(h).ok()?, u8::try_from(min).ok()?, 0).ok()?.assume_utc();
    Some(at.unix_timestamp() * 1000)
}

/// `GET /console/audit`: search, and chain verification per edge.
pub(crate) async fn audit(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<AuditQuery>,
) -> PageResult {
    let edges = state.store.edges().await?;
    let names = edge_names(&edges);
    let reports = state.store.verify(None).await?;
    let (operator_count, operator_breaks) = state.store.verify_operator_log(state.pki.bundle_keys()).await?;
    let broken: Vec<_> = reports.iter().filter(|r| !r.ok).collect();
    let since_ms = query.since.as_deref().filter(|s| !s.is_empty()).and_then(parse_when);
    let until_ms = query.until.as_deref().filter(|s| !s.is_empty()).and_then(parse_when);
    let mut events = match non_empty(query.task.clone()) {
        Some(task) => match state.store.task_trace(task, non_empty(query.edge.clone())).await {
            Ok(found) => found.map(|(_, events)| events).unwrap_or_default(),
            Err(crate::commands::LookupError::Db(err)) => return Err(err.into()),
            // Several edges' tasks carry the id: their events, all of them.
            Err(crate::commands::LookupError::Ambiguous { edges, id }) => {
                let mut all = Vec::new();
                for edge in edges {
                    if let Ok(Some((_, events))) = state.store.task_trace(id.clone(), Some(edge)).await {
                        all.extend(events);
                    }
                }
                all
            }
        },
        None => {
            let filter = AuditFilter {
                edge: non_empty(query.edge.clone()),
                kind: non_empty(query.kind.clone()),
                since_ms,
                until_ms,
                limit: Some(200),
                newest_first: Some(true),
                ..AuditFilter::default()
            };
            state.store.query_audit(filter).await?
        }
    };
    if query.task.as_deref().is_some_and(|t| !t.is_empty()) {
        events.retain(|e| {
            non_empty(query.kind.clone()).is_none_or(|k| e.kind == k)
                && since_ms.is_none_or(|s| e.ts_ms >= s)
                && until_ms.is_none_or(|u| e.ts_ms < u)
        });
    }
    let operator_events = state.store.operator_events(50).await?;
    let body = html! {
        @if !broken.is_empty() || !operator_breaks.is_empty() {
            div.alarm #chain-alarm {
                "Audit chain alarm: "
                @for report in &broken {
                    (names.get(&report.edge_id).cloned().unwrap_or(report.edge_id.clone())) ": "
                    @for line in report.breaks.iter().chain(&report.alarms) { (line) "; " }
                }
                @for line in &operator_breaks { "operator log: " (line) "; " }
            }
        }
        h2 { "Chain verification" }
        table #chains {
            thead { tr { th { "Chain" } th { "Status" } th.num { "Events" } th.num { "Acknowledged up to" } th { "Findings" } } }
            tbody {
                @for report in &reports {
                    tr data-chain=(report.edge_id) {
                        td { (names.get(&report.edge_id).cloned().unwrap_or_default()) br; code.muted { (report.edge_id) } }
                        td { @if report.ok { span class="badge ok" { "verified" } } @else { span class="badge alarm" { "broken" } } }
                        td.num { (report.events) }
                        td.num { (report.acked_seq) }
                        td { @for line in report.breaks.iter().chain(&report.alarms) { div { (line) } } }
                    }
                }
                tr data-chain="control-plane" {
                    td { "operator log" br; code.muted { "control-plane" } }
                    td { @if operator_breaks.is_empty() { span class="badge ok" { "verified" } } @else { span class="badge alarm" { "broken" } } }
                    td.num { (operator_count) }
                    td.num { (operator_count) }
                    td { @for line in &operator_breaks { div { (line) } } }
                }
            }
        }
        h2 { "Search" }
        form.filters method="get" {
            label { "Edge" select name="edge" {
                option value="" { "any" }
                @for edge in &edges { option value=(edge.id) selected[query.edge.as_deref() == Some(&edge.id)] { (edge.name) } }
            } }
            label { "Kind" input name="kind" placeholder="task.step" value=(query.kind.clone().unwrap_or_default()); }
            label { "Task" input name="task" value=(query.task.clone().unwrap_or_default()); }
            label { "Since (UTC)" input type="datetime-local" name="since" value=(query.since.clone().unwrap_or_default()); }
            label { "Until (UTC)" input type="datetime-local" name="until" value=(query.until.clone().unwrap_or_default()); }
            button type="submit" { "Search" }
        }
        table #events {
            thead { tr { th { "Edge" } th.num { "Seq" } th { "Time" } th { "Kind" } th { "Payload" } th { "Hash" } } }
            tbody {
                @for event in &events {
                    tr {
                        td { (names.get(&event.edge_id).cloned().unwrap_or(event.edge_id.clone())) }
                        td.num { (event.seq) }
                        td { (when(event.ts_ms)) }
                        td { code { (event.kind) } }
                        td { details { summary { (trace_summary(&event.payload)) } (json_block(&event.payload)) } }
                        td { code.muted { (event.hash.get(..12).unwrap_or_default()) } }
                    }
                }
                @if events.is_empty() { tr { td colspan="6" { "No events match." } } }
            }
        }
        h2 { "Operator log" }
        table #operator-log {
            thead { tr { th.num { "Seq" } th { "Time" } th { "Kind" } th { "Account" } th { "What" } } }
            tbody {
                @for event in &operator_events {
                    tr {
                        td.num { (event.seq) }
                        td { (when(event.ts_ms)) }
                        td { code { (event.kind) } }
                        td { (event.payload["account"].as_str().unwrap_or("")) }
                        td { (event.payload["method"].as_str().unwrap_or("")) " " (event.payload["path"].as_str().unwrap_or(""))
                             " " (event.payload["status"].as_u64().map(|s| s.to_string()).unwrap_or_default())
                             (event.payload["detail"].as_str().unwrap_or("")) }
                    }
                }
            }
        }
    };
    page(&principal, Nav::Audit, "Audit", body)
}

/// `GET /console/metrics`: the last 30 days.
pub(crate) async fn metrics(State(state): State<ApiState>, Extension(principal): Extension<Principal>) -> PageResult {
    let metrics = state.store.metrics(state.clock.unix_ms() - 30 * 86_400_000).await?;
    let names = edge_names(&state.store.edges().await?);
    let per_agent = |f: fn(&crate::views::Figures) -> f64| -> Vec<(String, f64)> {
        metrics.by_agent.iter().map(|(name, figures)| (name.clone(), f(figures))).collect()
    };
    // Only agents with a finished task have a latency to draw.
    let p95s: Vec<(String, f64)> = metrics
        .by_agent
        .iter()
        .filter_map(|(name, figures)| Some((name.clone(), figures.latency_p95_ms? as f64)))
        .collect();
    let cost_days: Vec<(String, f64)> = metrics.cost_per_day.iter().map(|(d, v)| (d[5..].to_owned(), *v)).collect();
    let task_days: Vec<(String, f64)> =
        metrics.tasks_per_day.iter().map(|(d, v)| (d[5..].to_owned(), *v as f64)).collect();
    let table = |title: &str, rows: Vec<(String, &crate::views::Figures)>| {
        html! {
            h2 { (title) }
            table {
                thead { tr {
                    th { "" } th.num { "Tasks" } th.num { "p50" } th.num { "p95" } th.num { "p99" }
                    th.num { "Cost / task" } th.num { "Cost" } th.num { "Escalation" } th.num { "Human" }
                    th.num { "Failed" } th.num { "Dead-lettered" }
                } }
                tbody {
                    @for (name, f) in &rows {
                        tr {
                            td { (name) }
                            td.num { (f.tasks) }
                            @for p in [f.latency_p50_ms, f.latency_p95_ms, f.latency_p99_ms] {
                                td.num { @if let Some(ms) = p { (charts::millis(ms as f64)) } @else { "—" } }
                            }
                            td.num { (charts::dollars(f.cost_per_task_usd)) }
                            td.num { (charts::dollars(f.cost_usd)) }
                            td.num { (charts::percent(f.escalation_rate)) }
                            td.num { (charts::percent(f.intervention_rate)) }
                            td.num { (charts::percent(f.failure_rate)) }
                            td.num { (charts::percent(f.dead_letter_rate)) }
                        }
                    }
                }
            }
        }
    };
    let agents: Vec<(String, &crate::views::Figures)> = metrics.by_agent.iter().map(|(k, v)| (k.clone(), v)).collect();
    let edges: Vec<(String, &crate::views::Figures)> =
        metrics.by_edge.iter().map(|(k, v)| (names.get(k).cloned().unwrap_or(k.clone()), v)).collect();
    let body = html! {
        div id="metrics" data-live="10" {
            p.muted { "Tasks queued in the last 30 days, from the audit events the edges sent. Prometheus figures are at " code { "/metrics" } "." }
            div.charts {
                figure { figcaption { "Cost per day" } (charts::columns(&cost_days, charts::dollars)) }
                figure { figcaption { "Tasks per day" } (charts::columns(&task_days, charts::count)) }
                figure { figcaption { "Latency p95 by agent" } (charts::bars(&p95s, charts::millis)) }
                figure { figcaption { "Escalation rate by agent" } (charts::bars(&per_agent(|f| f.escalation_rate), charts::percent)) }
                figure { figcaption { "Human intervention rate by agent" } (charts::bars(&per_agent(|f| f.intervention_rate), charts::percent)) }
                figure { figcaption { "Failure and dead-letter rate by agent" } (charts::bars(&per_agent(|f| f.failure_rate + f.dead_letter_rate), charts::percent)) }
            }
            (table("By agent", agents))
            (table("By edge", edges))
        }
    };
    page(&principal, Nav::Metrics, "Metrics", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_from_date_and_datetime_local() {
        assert_eq!(parse_when("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_when("1970-01-01T01:30"), Some(5_400_000));
        assert_eq!(parse_when("1970-13-01"), None);
        assert_eq!(parse_when("yesterday"), None);
    }
}
