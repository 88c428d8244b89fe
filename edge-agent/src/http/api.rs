//! The edge's local HTTP API (loopback by default): tasks in and out.
//!
//! - `POST /v1/tasks`: submit `{agent, input, kind?, idempotency_key?}`
//!   (the key may also come as an `Idempotency-Key` header). `201` with the
//!   task when it is new, `200` with the existing task when the key was seen.
//! - `GET /v1/tasks?state=&agent=&limit=`: newest first.
//! - `GET /v1/tasks/{id}`: the task with its step trace, and each agent
//!   step's loop (`loops`, by step position: model turns and call outcomes).
//! - `POST /v1/tasks/{id}/cancel`: cancel in any state.
//! - `POST /v1/tasks/{id}/compensate`: `{step, by?, comment?}` undoes a done act step.
//! - `POST /v1/tasks/{id}/answer`: `{answer, by?}` answers the question the
//!   task's agent asked (`ask_human`) and wakes it; `GET /v1/questions`:
//!   every open question.
//! - `GET /v1/approvals?state=`, `GET /v1/approvals/{id}`, and on an
//!   air-gapped edge `POST /v1/approvals/{id}/approve|reject`.
//! - `GET /v1/intents?state=` (`state=dead_lettered` is the dead-letter
//!   queue), `GET /v1/intents/{key}`, `POST /v1/dlq/{key}/retry|discard`.
//! - `GET /v1/health`: edge id, bundle version, running tasks, counts by state.
//! - `/mcp`: the bundle's `[mcp_tools]` over MCP ([`crate::http::mcp`]).
//!
//! - `POST /v1/webhooks/{name}`: an inbound webhook ([`crate::http::webhook`]).
//!
//! Every mutating request and every `/mcp` request must carry the token as
//! `Authorization: Bearer` (a configured one, or the one made at first
//! start); reads too when it was configured ([`crate::http::guard`]). A
//! webhook is signed instead.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::tasks::{Runtime, RuntimeError, Submission};
use crate::tasks::{SubmitError, TaskFilter};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The task runtime.
    pub runtime: Runtime,
    /// The bearer token: configured, or made at first start
    /// ([`crate::http::guard`]).
    pub token: Arc<str>,
    /// Reads need the token too (it was configured, not made).
    pub reads_need_token: bool,
    /// Request counts and durations for `/metrics`.
    pub http_metrics: Arc<aios_daemon::metrics::HttpMetrics>,
    /// The sync link's state, for `/metrics`.
    pub link: tokio::sync::watch::Receiver<crate::sync::uplink::LinkStatus>,
    /// Whether the API listens beyond loopback (then `/mcp` accepts any
    /// `Host`; on loopback only loopback names, against DNS rebinding).
    pub beyond_loopback: bool,
}

/// An error as JSON: `{"error": {"message": ..}}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": { "message": self.1 } }))).into_response()
    }
}

impl From<aios_daemon::db::DbError> for ApiError {
    fn from(err: aios_daemon::db::DbError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        let status = match &err {
            RuntimeError::NoBundle => StatusCode::SERVICE_UNAVAILABLE,
            RuntimeError::UnknownAgent { .. } => StatusCode::NOT_FOUND,
            RuntimeError::KindRefused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RuntimeError::Submit(SubmitError::KeyReused { .. }) => StatusCode::CONFLICT,
            RuntimeError::Submit(SubmitError::Db(_)) | RuntimeError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, err.to_string())
    }
}

/// The task routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(show))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/compensate", post(compensate))
        .route("/v1/tasks/{id}/answer", post(answer))
        .route("/v1/questions", get(list_questions))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(show_approval))
        .route("/v1/approvals/{id}/{decision}", post(decide))
        .route("/v1/intents", get(list_intents))
        .route("/v1/intents/{key}", get(show_intent))
        .route("/v1/dlq/{key}/{action}", post(resolve_dead_letter))
        .route("/metrics", get(metrics))
        .merge(mcp_router(&state))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        // Signed by the sender, not by the API token.
        .route("/v1/webhooks/{name}", post(crate::http::webhook::receive))
        .layer(axum::middleware::from_fn_with_state(state.http_metrics.clone(), aios_daemon::metrics::track))
        .with_state(state)
}

/// `/mcp`: the bundle's tools for MCP clients (the token is always required).
fn mcp_router(state: &ApiState) -> Router<ApiState> {
    let service = crate::http::mcp::service(state.runtime.clone(), state.beyond_loopback);
    Router::new().route_service("/mcp", service)
}

/// `GET /metrics`: Prometheus figures read from the database now.
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let figures = state.runtime.store().db.read(crate::http::metrics::edge_figures).await?;
    let mut scrape = aios_daemon::metrics::Scrape::new(&state.http_metrics);
    figures.write(&mut scrape, *state.link.borrow() == crate::sync::uplink::LinkStatus::Connected);
    Ok(scrape.into_response())
}

async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if crate::http::guard::needs_token(request.method(), request.uri().path(), state.reads_need_token) {
        let token = &state.token;
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches = presented
            .is_some_and(|presented| crate::model_calls::constant_time_eq(presented.as_bytes(), token.as_bytes()));
        if !matches {
            return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = state.runtime.store();
    let identity = store.identity().await?;
    let bundle = store.bundle().await?.and_then(|b| b.peek_version());
    let counts: serde_json::Map<String, serde_json::Value> =
        store.task_counts().await?.into_iter().map(|(state, n)| (state, n.into())).collect();
    Ok(Json(json!({
        "edge_id": identity.map(|i| i.edge_id),
        "bundle_version": bundle,
        "autonomy": store.autonomy().await?,
        "labels": store.labels().await?,
        "running": state.runtime.running(),
        "tasks": counts,
    })))
}

async fn submit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Submission>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(mut submission) = body.map_err(|err| ApiError(StatusCode::BAD_REQUEST, err.body_text()))?;
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        submission.idempotency_key.get_or_insert_with(|| key.to_owned());
    }
    let (task, created) = state.runtime.submit(submission, "api").await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(serde_json::to_value(task).expect("a task encodes"))))
}

async fn list(
    State(state): State<ApiState>,
    filter: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(filter) = filter.map_err(|err| ApiError(StatusCode::BAD_REQUEST, err.body_text()))?;
    let tasks = state.runtime.store().list_tasks(filter).await?;
    Ok(Json(json!({ "tasks": tasks })))
}

/// `GET /v1/tasks/{id}`: the task, its steps, and for each agent step its
/// loop as a transcript (`loops`: each model turn and each call's outcome).
async fn show(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(task) = state.runtime.store().task(&id).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no task {id}")));
    };
    let mut view = serde_json::to_value(task).expect("a task encodes");
    let mut loops = serde_json::Map::new();
    for (seq, entry) in state.runtime.store().task_loops(&id).await? {
        let transcript = loops.entry(seq.to_string()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let Some(list) = transcript.as_array_mut() {
            list.push(serde_json::to_value(entry).expect("an entry encodes"));
        }
    }
    if !loops.is_empty() {
        view["loops"] = serde_json::Value::Object(loops);
        let questions = state.runtime.store().questions(Some(&id)).await?;
        view["questions"] = serde_json::to_value(questions).expect("questions encode");
    }
    Ok(Json(view))
}

#[derive(Debug, serde::Deserialize)]
struct AnswerBody {
    answer: String,
    #[serde(default)]
    by: Option<String>,
}

/// `POST /v1/tasks/{id}/answer`: answers the task's open question.
async fn answer(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<AnswerBody>,
) -> Result<Json<crate::tasks::questions::Question>, ApiError> {
    let by = body.by.filter(|by| !by.trim().is_empty()).unwrap_or_else(|| "local-api".into());
    if by.len() > 200 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "`by` is longer than 200 bytes".into()));
    }
    let runtime = &state.runtime;
    match runtime.store().answer(runtime.identity(), &id, &body.answer, &by, runtime.now()).await? {
        Ok(question) => {
            runtime.wake();
            Ok(Json(question))
        }
        Err(problem) => Err(ApiError(StatusCode::CONFLICT, problem)),
    }
}

/// `GET /v1/questions`: every open question, oldest first.
async fn list_questions(
    State(state): State<ApiState>,
) -> Result<Json<Vec<crate::tasks::questions::Question>>, ApiError> {
    Ok(Json(state.runtime.store().questions(None).await?))
}

async fn cancel(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.runtime.cancel(&id).await? {
        Some(task) => Ok(Json(serde_json::to_value(task).expect("a task encodes"))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no task {id}"))),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct Operator {
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    step: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct StateQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

impl StateQuery {
    /// The state asked for, refused with 400 when it is not one.
    fn parsed<T>(&self) -> Result<Option<T>, ApiError>
    where
        T: std::str::FromStr<Err = aios_shared::lifecycle::UnknownState>,
    {
        self.state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|err: aios_shared::lifecycle::UnknownState| ApiError(StatusCode::BAD_REQUEST, err.to_string()))
    }
}

/// Applies a command made on this machine, recorded like one from the
/// control plane but with a `local:` operator.
async fn local_command(
    state: &ApiState,
    operator: Operator,
    command: aios_shared::command::Command,
) -> Result<Json<serde_json::Value>, ApiError> {
    let edge_id = state.runtime.identity().edge_id.clone();
    let body = aios_shared::command::CommandBody {
        id: format!("local-{:016x}", rand::random::<u64>()),
        edge_id,
        by: format!("local:{}", operator.by.unwrap_or_else(|| "operator".into())),
        comment: operator.comment,
        issued_ms: state.runtime.now(),
        command,
    };
    match state.runtime.apply_command(body.clone()).await? {
        crate::exec::Applied::Refused(reason) => Err(ApiError(StatusCode::CONFLICT, reason)),
        _ => Ok(Json(serde_json::to_value(body).expect("a command encodes"))),
    }
}

async fn list_approvals(
    State(state): State<ApiState>,
    Query(query): Query<StateQuery>,
) -> Result<Json<Vec<crate::exec::Approval>>, ApiError> {
    Ok(Json(state.runtime.store().approvals(query.parsed()?).await?))
}

async fn show_approval(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<crate::exec::Approval>, ApiError> {
    let approval = state.runtime.store().approval(&id).await?;
    Ok(Json(approval.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no approval {id}")))?))
}

async fn decide(
    State(state): State<ApiState>,
    Path((id, decision)): Path<(String, String)>,
    body: Option<Json<Operator>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => return Err(ApiError(StatusCode::NOT_FOUND, format!("no decision `{other}`: approve or reject"))),
    };
    let air_gapped = state.runtime.definitions().await?.is_some_and(|(_, defs)| defs.runtime.air_gapped);
    if !air_gapped {
        let message = "this edge is not air-gapped: approvals are decided at the control plane \
                       (aios-control-plane approvals approve|reject)";
        return Err(ApiError(StatusCode::FORBIDDEN, message.into()));
    }
    let approval = state.runtime.store().approval(&id).await?;
    let approval = approval.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no approval {id}")))?;
    let command = aios_shared::command::Command::Decide {
        approval: id,
        args_hash: approval.args_hash,
        approve,
        expires_ms: approval.expires_ms,
    };
    local_command(&state, body.map(|b| b.0).unwrap_or_default(), command).await
}

async fn list_intents(
    State(state): State<ApiState>,
    Query(query): Query<StateQuery>,
) -> Result<Json<Vec<crate::exec::outbox::Intent>>, ApiError> {
    let limit = query.limit.unwrap_or(100).min(1000);
    Ok(Json(state.runtime.store().intents(query.parsed()?, limit).await?))
}

async fn show_intent(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<crate::exec::outbox::Intent>, ApiError> {
    let intent = state.runtime.store().intent(&key).await?;
    Ok(Json(intent.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no intent {key}")))?))
}

async fn resolve_dead_letter(
    State(state): State<ApiState>,
    Path((key, action)): Path<(String, String)>,
    body: Option<Json<Operator>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let command = match action.as_str() {
        "retry" => aios_shared::command::Command::RetryIntent { key },
        "discard" => aios_shared::command::Command::DiscardIntent { key },
        other => return Err(ApiError(StatusCode::NOT_FOUND, format!("no action `{other}`: retry or discard"))),
    };
    local_command(&state, body.map(|b| b.0).unwrap_or_default(), command).await
}

async fn compensate(
    State(state): State<ApiState>,
    Path(task): Path<String>,
    body: Option<Json<Operator>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut operator = body.map(|b| b.0).unwrap_or_default();
    let step = operator.step.take().ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "name the act `step`".into()))?;
    local_command(&state, operator, aios_shared::command::Command::Compensate { task, step }).await
}
