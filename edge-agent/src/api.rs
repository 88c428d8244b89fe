//! The edge's local HTTP API (loopback by default): tasks in and out.
//!
//! - `POST /v1/tasks`: submit `{agent, input, kind?, idempotency_key?}`
//!   (the key may also come as an `Idempotency-Key` header). `201` with the
//!   task when it is new, `200` with the existing task when the key was seen.
//! - `GET /v1/tasks?state=&agent=&limit=`: newest first.
//! - `GET /v1/tasks/{id}`: the task with its step trace.
//! - `POST /v1/tasks/{id}/cancel`: cancel in any state.
//! - `GET /v1/health`: edge id, bundle version, running tasks, counts by state.
//!
//! With a token configured every request must carry `Authorization: Bearer`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::runtime::{Runtime, RuntimeError, Submission};
use crate::tasks::{SubmitError, TaskFilter};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The task runtime.
    pub runtime: Runtime,
    /// The bearer token every request must carry, if any.
    pub token: Option<Arc<str>>,
}

/// An error as JSON: `{"error": {"message": ..}}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": { "message": self.1 } }))).into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> Self {
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token) {
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

async fn show(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.runtime.store().task(&id).await? {
        Some(task) => Ok(Json(serde_json::to_value(task).expect("a task encodes"))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no task {id}"))),
    }
}

async fn cancel(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.runtime.cancel(&id).await? {
        Some(task) => Ok(Json(serde_json::to_value(task).expect("a task encodes"))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no task {id}"))),
    }
}
