//! The fleet console: server-rendered pages (maud) on the admin HTTP port.
//!
//! Every page is plain HTML that works without JavaScript; `console.js`
//! (served from here, like the stylesheet: nothing comes from the internet)
//! only refreshes regions marked `data-live` in place. Every form that
//! changes something posts the session's CSRF token, and every action route
//! sits behind the same permission checks as the admin API, so a page that
//! hides a button is a convenience, not the protection.
//!
//! # Layout
//! - `mod.rs`: routes, the page frame, login and logout, shared widgets.
//! - [`pages`]: fleet, tasks and traces, approvals, audit, metrics.
//! - [`policies`]: policy history, versions, diffs, publishing, the kill switch.
//! - [`transcript`]: an agent loop as a transcript; answering its questions.
//! - [`charts`]: SVG charts drawn on the server.

mod charts;
mod pages;
mod policies;
mod transcript;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::accounts::{Permission, Principal};
use crate::api::ApiState;
use crate::auth::{self, authorize, LoginOutcome};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Routes that need no session: login, static assets.
pub fn public() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console/login",
            get(login_page).post(login).layer(DefaultBodyLimit::max(aios_shared::login::MAX_FORM_BYTES)),
        )
        .route("/console/static/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }))
        .route("/console/static/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }))
}

/// The pages, each behind its permission (authentication is added by the
/// caller, around the admin API and these together).
pub fn pages() -> Router<ApiState> {
    let read = Router::new()
        .route("/console", get(|| async { Redirect::to("/console/fleet") }))
        .route("/console/fleet", get(pages::fleet))
        .route("/console/tasks", get(pages::tasks))
        .route("/console/tasks/{id}", get(pages::task))
        .route("/console/approvals", get(pages::approvals))
        .route("/console/policies", get(policies::policies))
        .route("/console/policies/diff", get(policies::policy_diff))
        .route("/console/policies/{version}", get(policies::policy_version))
        .route("/console/metrics", get(pages::metrics))
        .route("/console/logout", post(logout))
        .route_layer(from_fn_with_state(Permission::Read, authorize));
    let audit = Router::new()
        .route("/console/audit", get(pages::audit))
        .route_layer(from_fn_with_state(Permission::Audit, authorize));
    let operate = Router::new()
        .route("/console/approvals/{id}/{decision}", post(pages::decide))
        .route("/console/tasks/{id}/answer", post(transcript::answer))
        .route_layer(from_fn_with_state(Permission::Operate, authorize));
    let administer = Router::new()
        .route("/console/policies", post(policies::publish))
        .route("/console/kill-switch", get(policies::kill_switch_confirm).post(policies::kill_switch))
        .route_layer(from_fn_with_state(Permission::Administer, authorize));
    read.merge(audit).merge(operate).merge(administer)
}

/// Which page of the navigation is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Fleet,
    Tasks,
    Approvals,
    Audit,
    Policies,
    Metrics,
}

/// The frame around every page.
pub(crate) fn layout(principal: &Principal, here: Nav, title: &str, body: Markup) -> Html<String> {
    let links = [
        (Nav::Fleet, "/console/fleet", "Fleet", Permission::Read),
        (Nav::Tasks, "/console/tasks", "Tasks", Permission::Read),
        (Nav::Approvals, "/console/approvals", "Approvals", Permission::Read),
        (Nav::Audit, "/console/audit", "Audit", Permission::Audit),
        (Nav::Policies, "/console/policies", "Policies", Permission::Read),
        (Nav::Metrics, "/console/metrics", "Metrics", Permission::Read),
    ];
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · aios" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    span.brand { "aios" }
                    nav {
                        @for (nav, href, label, permission) in links {
                            @if principal.role.allows(permission) {
                                a class=(if nav == here { "here" } else { "" }) href=(href) { (label) }
                            }
                        }
                    }
                    div.who {
                        span #account { (principal.account) " (" (principal.role) ")" }
                        form method="post" action="/console/logout" {
                            (csrf_field(principal))
                            button.quiet type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    Html(page.into_string())
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf_field(principal: &Principal) -> Markup {
    html! { input type="hidden" name="csrf" value=(principal.csrf.as_deref().unwrap_or_default()); }
}

/// A state as a coloured badge.
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class={ "badge " (state) } { (state.replace('_', " ")) } }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn when(ts_ms: i64) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp(ts_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A JSON value, pretty.
pub(crate) fn json_block(value: &serde_json::Value) -> Markup {
    html! { pre { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

fn login_frame(message: Option<(&str, &str)>, status: StatusCode) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · aios" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                form.login method="post" action="/console/login" {
                    h1 { "aios fleet console" }
                    @if let Some((class, text)) = message { div class=(class) { (text) } }
                    label { "Account" input name="name" autocomplete="username" autofocus required; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            }
        }
    };
    (status, Html(page.into_string())).into_response()
}

async fn login_page() -> Response {
    login_frame(None, StatusCode::OK)
}

async fn login(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    // Decoded by the fuzzed decoder (`aios_shared::login`), not a generic
    // form extractor.
    let form = match aios_shared::login::decode_form(&body) {
        Ok(form) => form,
        Err(err) => return login_frame(Some(("error", &err.to_string())), StatusCode::BAD_REQUEST),
    };
    match auth::login(&state, peer, form).await {
        LoginOutcome::Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/console/fleet")).into_response(),
        LoginOutcome::Refused => {
            login_frame(Some(("error", "Wrong account name or password.")), StatusCode::UNAUTHORIZED)
        }
        LoginOutcome::Limited(wait) => {
            let text = format!("Too many attempts. Try again in {} s.", wait.as_secs().max(1));
            let mut response = login_frame(Some(("error", &text)), StatusCode::TOO_MANY_REQUESTS);
            if let Ok(value) = wait.as_secs().max(1).to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

async fn logout(State(state): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    let cookie = auth::logout(&state, &headers).await;
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console/login")).into_response()
}

/// A page-level error in the frame.
pub(crate) fn error_page(principal: &Principal, here: Nav, status: StatusCode, message: &str) -> Response {
    (status, layout(principal, here, "Error", html! { div.error { (message) } })).into_response()
}
