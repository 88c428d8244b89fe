//! The policy pages: history, one version, a diff, publishing, and the
//! kill switch behind a confirmation page.

use aios_shared::bundle::{BundleBody, BundleSpec};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;

use super::{badge, csrf_field, error_page, layout, when, Nav};
use crate::accounts::{Permission, Principal};
use crate::api::{self, ApiError, ApiState};

use super::pages::{current_bundle, page, PageResult};

fn spec_text(body: &BundleBody) -> String {
    let spec = BundleSpec::from_body(body.clone());
    toml::to_string_pretty(&spec).unwrap_or_else(|_| serde_json::to_string_pretty(&spec).unwrap_or_default())
}

#[derive(Deserialize, Default)]
pub(crate) struct PolicyQuery {
    #[serde(default)]
    published: Option<u64>,
}

/// `GET /console/policies`.
pub(crate) async fn policies(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<PolicyQuery>,
) -> PageResult {
    policies_page(&state, &principal, query.published, None).await
}

async fn policies_page(
    state: &ApiState,
    principal: &Principal,
    published: Option<u64>,
    failed: Option<(String, String)>,
) -> PageResult {
    let bundle = current_bundle(state).await?;
    let history = state.store.bundle_history().await?;
    let edges = state.store.edges().await?;
    let admin = principal.role.allows(Permission::Administer);
    let current = bundle.as_ref().map_or(0, |(v, _)| *v);
    let draft = match &failed {
        Some((text, _)) => text.clone(),
        None => bundle.as_ref().map(|(_, b)| spec_text(b)).unwrap_or_default(),
    };
    let body = html! {
        @if let Some(version) = published { div.notice #published { "Published v" (version) "; edges apply it on their next sync." } }
        @if let Some((_, error)) = &failed { div.error #publish-error { "Not published: " (error) } }
        div.cards {
            div.card { div.muted { "Current bundle" } div.value { "v" (current) } }
            div.card { div.muted { "Autonomy" } div.value { @if let Some((_, b)) = &bundle { (badge(b.autonomy.as_str())) } } }
            @if let Some((_, b)) = &bundle {
                div.card { div.muted { "Agents" } div.value { (b.definitions.agents.len()) } }
                div.card { div.muted { "Expires" } div { (when(b.expires_at_ms)) } }
            }
        }
        @if admin {
            p { a href="/console/kill-switch" { button.danger type="button" { "Kill switch…" } } }
        }
        h2 { "Applied by each edge" }
        div id="applied" data-live="3" {
            table #applied-table {
                thead { tr { th { "Edge" } th { "Applied" } th { "Status" } } }
                tbody {
                    @for edge in edges.iter().filter(|e| e.revoked_at_ms.is_none()) {
                        tr data-edge=(edge.name) {
                            td { (edge.name) }
                            td.applied { "v" (edge.bundle_version) }
                            td { @if edge.bundle_version == current { span class="badge ok" { "current" } } @else { span class="badge waiting" { "pending" } } }
                        }
                    }
                }
            }
        }
        h2 { "History" }
        table {
            thead { tr { th.num { "Version" } th { "Published" } th { "Autonomy" } th { "Agents" } th { "" } } }
            tbody {
                @for (version, published_at, body) in &history {
                    tr {
                        td.num { a href={ "/console/policies/" (version) } { "v" (version) } }
                        td { (when(*published_at)) }
                        td { (badge(body.autonomy.as_str())) }
                        td { (body.definitions.agents.keys().cloned().collect::<Vec<_>>().join(", ")) }
                        td { @if *version > 1 { a href={ "/console/policies/diff?from=" (version - 1) "&to=" (version) } { "diff with v" (version - 1) } } }
                    }
                }
            }
        }
        @if admin {
            h2 { "Publish a new version" }
            p.muted { "The bundle is validated (agents, steps, tiers, connectors, Cedar policies) before it is signed." }
            form method="post" action="/console/policies" #publish {
                (csrf_field(principal))
                textarea name="toml" spellcheck="false" { (draft) }
                p { button type="submit" { "Validate, sign and publish" } }
            }
        }
    };
    let status = if failed.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, layout(principal, Nav::Policies, "Policies", body)).into_response())
}

/// `GET /console/policies/{version}`.
pub(crate) async fn policy_version(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(version): Path<u64>,
) -> PageResult {
    let history = state.store.bundle_history().await?;
    let Some((_, published_at, body)) = history.into_iter().find(|(v, _, _)| *v == version) else {
        return Ok(error_page(
            &principal,
            Nav::Policies,
            StatusCode::NOT_FOUND,
            &format!("no bundle version {version}"),
        ));
    };
    let markup = html! {
        p { "Published " (when(published_at)) ", autonomy " (badge(body.autonomy.as_str())) }
        pre { (spec_text(&body)) }
    };
    page(&principal, Nav::Policies, &format!("Policy bundle v{version}"), markup)
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    from: u64,
    to: u64,
}

/// `GET /console/policies/diff?from=&to=`: a line diff of two versions.
pub(crate) async fn policy_diff(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<DiffQuery>,
) -> PageResult {
    let history = state.store.bundle_history().await?;
    let find = |v: u64| history.iter().find(|(version, _, _)| *version == v).map(|(_, _, body)| spec_text(body));
    let (Some(old), Some(new)) = (find(query.from), find(query.to)) else {
        return Ok(error_page(&principal, Nav::Policies, StatusCode::NOT_FOUND, "no such versions"));
    };
    let diff = similar::TextDiff::from_lines(&old, &new);
    let markup = html! {
        div.diff {
            pre {
                @for change in diff.iter_all_changes() {
                    @match change.tag() {
                        similar::ChangeTag::Delete => span.del { "- " (change) },
                        similar::ChangeTag::Insert => span.add { "+ " (change) },
                        similar::ChangeTag::Equal => span { "  " (change) },
                    }
                }
            }
        }
    };
    page(&principal, Nav::Policies, &format!("Diff v{} → v{}", query.from, query.to), markup)
}

#[derive(Deserialize)]
pub(crate) struct PublishForm {
    toml: String,
}

/// `POST /console/policies`: validate, sign, publish.
pub(crate) async fn publish(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Form(form): Form<PublishForm>,
) -> PageResult {
    let published = match BundleSpec::from_toml(&form.toml) {
        Ok(spec) => api::publish(&state, spec).await.map_err(|ApiError(_, message)| message),
        Err(err) => Err(err.to_string()),
    };
    match published {
        Ok(version) => Ok(Redirect::to(&format!("/console/policies?published={version}")).into_response()),
        Err(message) => policies_page(&state, &principal, None, Some((form.toml, message))).await,
    }
}

/// `GET /console/kill-switch`: the confirmation.
pub(crate) async fn kill_switch_confirm(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> PageResult {
    let edges = state.store.edges().await?.into_iter().filter(|e| e.revoked_at_ms.is_none()).count();
    let body = html! {
        div.alarm {
            "This publishes a new bundle that stops the fleet. Every one of the " (edges)
            " edges obeys from the moment it applies it, including actions already approved. "
            "Publishing a bundle with autonomy on undoes it."
        }
        form method="post" action="/console/kill-switch" #kill-switch {
            (csrf_field(&principal))
            fieldset {
                label { input type="radio" name="level" value="effects" checked;
                    " Side effects only: tasks keep running their model steps; their actions wait." }
                br;
                label { input type="radio" name="level" value="all";
                    " Everything: no side effect, no model call, no escalation, no gateway; running gateway streams stop." }
            }
            label { input type="checkbox" name="confirm" value="yes" required; " I understand: stop every agent's side effects now." }
            p { button.danger type="submit" { "Engage the kill switch" } " " a href="/console/policies" { "Cancel" } }
        }
    };
    page(&principal, Nav::Policies, "Kill switch", body)
}

#[derive(Deserialize)]
pub(crate) struct ConfirmForm {
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    level: api::KillLevel,
}

/// `POST /console/kill-switch`: only with the confirmation ticked.
pub(crate) async fn kill_switch(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Form(form): Form<ConfirmForm>,
) -> PageResult {
    if form.confirm.as_deref() != Some("yes") {
        return Ok(error_page(
            &principal,
            Nav::Policies,
            StatusCode::BAD_REQUEST,
            "the kill switch needs its confirmation",
        ));
    }
    match api::engage_kill_switch(&state, form.level).await {
        Ok(version) => Ok(Redirect::to(&format!("/console/policies?published={version}")).into_response()),
        Err(ApiError(status, message)) => Ok(error_page(&principal, Nav::Policies, status, &message)),
    }
}
