//! The admin API (axum), authenticated by a bearer token.
//!
//! Every CLI subcommand is a client of this API; the fleet console will be
//! built on it too. Errors come back as `{"error": "..."}` with a fitting
//! status code.

use std::sync::Arc;

use aios_daemon::clock::SharedClock;
use aios_shared::lifecycle::approval::ApprovalState;

use crate::commands::QueueState;
use aios_shared::bundle::{Autonomy, BundleBody, BundleSpec, SignedBundle};
use aios_shared::duration::parse_duration;
use aios_shared::token::EnrollToken;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::accounts::{self, AccountError, Permission, Principal, Role, ADMIN_TOKEN_ACCOUNT};
use crate::auth::{authenticate, authorize, Auth};

use crate::pki::Pki;
use crate::server::Registry;
use crate::store::{AuditFilter, CpStore};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub store: CpStore,
    /// Keys (bundle signing, CA fingerprint for tokens).
    pub pki: Arc<Pki>,
    /// Live connections, for revocation.
    pub registry: Arc<Registry>,
    /// Where new bundles are announced to sync connections.
    pub bundles: Arc<watch::Sender<Option<(u64, SignedBundle)>>>,
    /// Bumped whenever tasks are dispatched, so sync sessions send them.
    pub dispatched: Arc<watch::Sender<u64>>,
    /// Serialises publishing so versions stay strictly increasing.
    pub publish_lock: Arc<Mutex<()>>,
    /// Credentials, sessions and login limits.
    pub auth: Arc<Auth>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::CpMetrics>,
    /// Where the API reads the time.
    pub clock: SharedClock,
}

/// An API error: a status and a message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }
}

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> ApiError {
        match err {
            AccountError::Invalid(message) => bad_request(message),
            AccountError::Db(err) => err.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<aios_daemon::db::DbError> for ApiError {
    fn from(err: aios_daemon::db::DbError) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

impl From<crate::commands::LookupError> for ApiError {
    fn from(err: crate::commands::LookupError) -> ApiError {
        match err {
            crate::commands::LookupError::Db(err) => err.into(),
            ambiguous => ApiError(StatusCode::CONFLICT, ambiguous.to_string()),
        }
    }
}

/// `?edge=ID`: which edge's item an id names, when items of several edges
/// carry it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EdgeScope {
    #[serde(default)]
    pub edge: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The router with every route: the admin API under `/v1`, the console
/// under `/console`, `/metrics`. Each group of routes names the permission
/// it needs; [`authenticate`] runs first on all but health, metrics, login
/// and the console's static files.
pub fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/edges", get(list_edges))
        .route("/v1/policy", get(current_policy))
        .route("/v1/policy/history", get(policy_history))
        .route("/v1/policy/{version}", get(policy_version))
        .route("/v1/tasks", get(list_dispatches))
        .route("/v1/tasks/{id}", get(show_dispatch))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(show_approval))
        .route("/v1/dlq", get(list_dead_letters))
        .route("/v1/commands/{id}", get(show_command))
        .route_layer(from_fn_with_state(Permission::Read, authorize));
    let audit = Router::new()
        .route("/v1/audit", get(query_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route_layer(from_fn_with_state(Permission::Audit, authorize));
    let operate = Router::new()
        .route("/v1/tasks", post(dispatch_task))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/reject", post(reject))
        .route("/v1/dlq/{key}/{action}", post(resolve_dead_letter))
        .route("/v1/tasks/{id}/compensate", post(compensate))
        .route("/v1/tasks/{id}/answer", post(answer_question))
        .route_layer(from_fn_with_state(Permission::Operate, authorize));
    let administer = Router::new()
        .route("/v1/tokens", post(create_token))
        .route("/v1/edges/{id}/revoke", post(revoke_edge))
        .route("/v1/policy", post(publish_policy))
        .route("/v1/policy/kill-switch", post(kill_switch))
        .route("/v1/pki/bundle-key/rotate", post(crate::key_rotation::rotate))
        .route("/v1/pki/ca/rotate", post(crate::key_rotation::rotate_ca))
        .route("/v1/users", get(list_users).post(add_user))
        .route("/v1/users/{name}", delete(remove_user))
        .route("/v1/users/{name}/password", post(set_password))
        .route("/v1/users/{name}/tokens", post(issue_api_token))
        .route_layer(from_fn_with_state(Permission::Administer, authorize));
    let authed = read
        .merge(audit)
        .merge(operate)
        .merge(administer)
        .merge(crate::console::pages())
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(crate::metrics::serve))
        .merge(crate::console::public())
        .merge(authed)
        .with_state(state)
}

async fn whoami(Extension(principal): Extension<Principal>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "account": principal.account, "role": principal.role }))
}

async fn health(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "connected_edges": state.registry.len() }))
}

#[derive(Deserialize)]
struct TokenRequest {
    /// Validity such as `1h`.
    ttl: String,
    /// `key=value` labels the enrolling edge gets.
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct TokenResponse {
    pub token: String,
    pub expires_at_ms: i64,
}

async fn create_token(State(state): State<ApiState>, Json(request): Json<TokenRequest>) -> ApiResult<TokenResponse> {
    let ttl = parse_duration(&request.ttl).map_err(bad_request)?;
    let labels = aios_shared::token::parse_labels(&request.labels).map_err(bad_request)?;
    let token = EnrollToken::new(rand::random(), &state.pki.ca_der());
    let now = state.clock.unix_ms();
    let expires_at_ms = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    state.store.create_token(token.secret_hash(), now, expires_at_ms, labels).await?;
    Ok(Json(TokenResponse { token: token.to_text(), expires_at_ms }))
}

async fn list_edges(State(state): State<ApiState>) -> ApiResult<Vec<crate::store::EdgeRecord>> {
    Ok(Json(state.store.edges().await?))
}

async fn revoke_edge(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult<serde_json::Value> {
    if !state.store.revoke(id.clone(), state.clock.unix_ms()).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no edge {id}")));
    }
    let was_connected = state.registry.cut_off(&id);
    tracing::info!(edge_id = %id, was_connected, "edge revoked");
    Ok(Json(serde_json::json!({ "revoked": id, "was_connected": was_connected })))
}

/// A bundle as the API shows it.
#[derive(Serialize, Deserialize)]
pub(crate) struct BundleView {
    pub version: u64,
    pub body: BundleBody,
    pub signed: SignedBundle,
}

async fn current_policy(State(state): State<ApiState>) -> ApiResult<Option<BundleView>> {
    view(&state, None).await
}

async fn policy_version(State(state): State<ApiState>, Path(version): Path<u64>) -> ApiResult<Option<BundleView>> {
    match view(&state, Some(version)).await? {
        Json(None) => Err(ApiError(StatusCode::NOT_FOUND, format!("no bundle version {version}"))),
        found => Ok(found),
    }
}

async fn view(state: &ApiState, version: Option<u64>) -> ApiResult<Option<BundleView>> {
    let Some((version, signed)) = state.store.bundle(version).await? else { return Ok(Json(None)) };
    let body = signed
        .open(&state.pki.bundle_root())
        .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("stored bundle {version}: {err}")))?;
    Ok(Json(Some(BundleView { version, body, signed })))
}

async fn policy_history(State(state): State<ApiState>) -> ApiResult<Vec<serde_json::Value>> {
    let history = state.store.bundle_history().await?;
    Ok(Json(
        history
            .into_iter()
            .map(|(version, published_at_ms, body)| {
                serde_json::json!({ "version": version, "published_at_ms": published_at_ms, "body": body })
            })
            .collect(),
    ))
}

/// `POST /v1/tasks`: `{agent, input, kind?, edge?, label?}`, with exactly one
/// of `edge` (an id) or `label` (`KEY=VALUE`: every non-revoked edge with it).
#[derive(Debug, serde::Deserialize)]
struct DispatchRequest {
    agent: String,
    input: serde_json::Value,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    edge: Option<String>,
    #[serde(default)]
    label: Option<String>,
}

async fn dispatch_task(
    State(state): State<ApiState>,
    body: Result<Json<DispatchRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let Json(request) = body.map_err(|err| bad_request(err.body_text()))?;
    let edges = state.store.edges().await?;
    let targets: Vec<String> = match (&request.edge, &request.label) {
        (Some(id), None) => match edges.iter().find(|e| &e.id == id) {
            Some(edge) if edge.revoked_at_ms.is_none() => vec![edge.id.clone()],
            Some(_) => return Err(bad_request(format!("edge {id} is revoked"))),
            None => return Err(ApiError(StatusCode::NOT_FOUND, format!("no edge {id}"))),
        },
        (None, Some(label)) => {
            let (key, value) =
                label.split_once('=').ok_or_else(|| bad_request(format!("label `{label}` is not KEY=VALUE")))?;
            let matching: Vec<String> = edges
                .iter()
                .filter(|e| e.revoked_at_ms.is_none() && e.labels.get(key).and_then(|v| v.as_str()) == Some(value))
                .map(|e| e.id.clone())
                .collect();
            if matching.is_empty() {
                return Err(ApiError(StatusCode::NOT_FOUND, format!("no edge has the label {label}")));
            }
            matching
        }
        _ => return Err(bad_request("name exactly one of `edge` or `label`")),
    };
    let ids = state
        .store
        .dispatch_tasks(targets.clone(), request.agent, request.kind, request.input, state.clock.unix_ms())
        .await?;
    state.dispatched.send_modify(|n| *n += 1);
    let dispatched: Vec<serde_json::Value> =
        ids.iter().zip(&targets).map(|(id, edge)| serde_json::json!({ "id": id, "edge_id": edge })).collect();
    Ok(Json(serde_json::json!({ "dispatched": dispatched })))
}

#[derive(Debug, serde::Deserialize)]
struct DispatchQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_dispatches(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<DispatchQuery>,
) -> ApiResult<serde_json::Value> {
    let records = state.store.dispatches(None, query.limit.unwrap_or(100).min(1000)).await?;
    let records: Vec<_> = records.into_iter().map(|r| crate::redact::dispatch(&principal, r)).collect();
    Ok(Json(serde_json::json!({ "tasks": records })))
}

async fn show_dispatch(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let record = state.store.dispatches(Some(id.clone()), 1).await?.into_iter().next();
    let record = record.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no dispatched task {id}")))?;
    let record = crate::redact::dispatch(&principal, record);
    Ok(Json(serde_json::to_value(record).expect("a dispatch encodes")))
}

async fn publish_policy(State(state): State<ApiState>, text: String) -> ApiResult<serde_json::Value> {
    let spec = BundleSpec::from_toml(&text).map_err(|err| bad_request(err.to_string()))?;
    let version = publish(&state, spec).await?;
    Ok(Json(serde_json::json!({ "version": version })))
}

/// How far the kill switch goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KillLevel {
    /// Every side effect is denied (autonomy `off`).
    #[default]
    Effects,
    /// And no model is called: no local generation, no escalation, no
    /// gateway (autonomy `halted`).
    All,
}

impl KillLevel {
    /// The autonomy mode the level publishes.
    pub fn autonomy(self) -> Autonomy {
        match self {
            KillLevel::Effects => Autonomy::Off,
            KillLevel::All => Autonomy::Halted,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct KillSwitchRequest {
    #[serde(default)]
    level: KillLevel,
}

async fn kill_switch(
    State(state): State<ApiState>,
    body: Option<Json<KillSwitchRequest>>,
) -> ApiResult<serde_json::Value> {
    let level = body.map(|b| b.0).unwrap_or_default().level;
    let version = engage_kill_switch(&state, level).await?;
    Ok(Json(serde_json::json!({ "version": version, "autonomy": level.autonomy() })))
}

/// Publishes the current bundle with autonomy `off` (level `effects`) or
/// `halted` (level `all`); returns its version.
pub(crate) async fn engage_kill_switch(state: &ApiState, level: KillLevel) -> Result<u64, ApiError> {
    // Keep everything else the current bundle says; only autonomy changes.
    let mut spec = match state.store.bundle(None).await? {
        Some((_, signed)) => BundleSpec::from_body(
            signed
                .open(&state.pki.bundle_root())
                .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?,
        ),
        None => BundleSpec::new(level.autonomy()),
    };
    spec.autonomy = level.autonomy();
    let version = publish(state, spec).await?;
    tracing::warn!(version, autonomy = %level.autonomy(), "kill switch engaged fleet-wide");
    Ok(version)
}

/// Validates, signs, stores and announces a bundle; returns its version.
pub async fn publish(state: &ApiState, spec: BundleSpec) -> Result<u64, ApiError> {
    spec.validate().map_err(|err| bad_request(err.to_string()))?;
    let _guard = state.publish_lock.lock().await;
    let current = state.store.bundle(None).await?.map_or(0, |(version, _)| version);
    let body = spec
        .into_body(current, state.clock.unix_ms())
        .map_err(|err| ApiError(StatusCode::CONFLICT, err.to_string()))?;
    let mut body = body;
    body.key_endorsements = state.pki.endorsements();
    let signed = body.sign(&state.pki.bundle_key());
    if !state.store.insert_bundle(body.version, signed.clone(), state.clock.unix_ms()).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("version {} is not above the current one", body.version)));
    }
    state.bundles.send_replace(Some((body.version, signed)));
    tracing::info!(version = body.version, autonomy = %body.autonomy, "bundle published");
    Ok(body.version)
}

async fn query_audit(
    State(state): State<ApiState>,
    Query(filter): Query<AuditFilter>,
) -> ApiResult<Vec<crate::store::StoredEvent>> {
    Ok(Json(state.store.query_audit(filter).await?))
}

#[derive(Deserialize)]
struct VerifyQuery {
    edge: Option<String>,
}

async fn verify_audit(
    State(state): State<ApiState>,
    Query(query): Query<VerifyQuery>,
) -> ApiResult<Vec<crate::store::EdgeVerification>> {
    let reports = state.store.verify(query.edge.clone()).await?;
    if let (Some(edge), true) = (&query.edge, reports.is_empty()) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no edge {edge}")));
    }
    Ok(Json(reports))
}

/// Who acts and why, for commands. `by` is only honoured for the shared
/// admin token (the CLI's `--by`); an account always acts as itself.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Operator {
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub comment: String,
}

impl Operator {
    /// The operator as the authenticated caller may claim to be.
    pub fn acting_as(mut self, principal: &Principal) -> Operator {
        if principal.account != ADMIN_TOKEN_ACCOUNT || self.by.is_none() {
            self.by =
                Some(if principal.account == ADMIN_TOKEN_ACCOUNT { "admin".into() } else { principal.account.clone() });
        }
        self
    }

    fn by(&self) -> String {
        self.by.clone().unwrap_or_else(|| "admin".into())
    }
}

#[derive(Debug, Deserialize)]
struct ApprovalQuery {
    #[serde(default)]
    state: Option<String>,
}

async fn list_approvals(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ApprovalQuery>,
) -> ApiResult<Vec<crate::commands::ApprovalView>> {
    let approvals = state.store.approvals(query.state, state.clock.unix_ms()).await?;
    Ok(Json(approvals.into_iter().map(|a| crate::redact::approval(&principal, a)).collect()))
}

async fn show_approval(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(scope): Query<EdgeScope>,
) -> ApiResult<crate::commands::ApprovalView> {
    let approval = state.store.approval(id.clone(), scope.edge, state.clock.unix_ms()).await?;
    let approval = approval.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no approval request {id}")))?;
    Ok(Json(crate::redact::approval(&principal, approval)))
}

async fn approve(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(scope): Query<EdgeScope>,
    body: Option<Json<Operator>>,
) -> ApiResult<serde_json::Value> {
    decide(state, id, scope.edge, true, body.map(|b| b.0).unwrap_or_default().acting_as(&principal)).await
}

async fn reject(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(scope): Query<EdgeScope>,
    body: Option<Json<Operator>>,
) -> ApiResult<serde_json::Value> {
    decide(state, id, scope.edge, false, body.map(|b| b.0).unwrap_or_default().acting_as(&principal)).await
}

/// Signs a decision bound to the request's argument hash and expiry.
pub(crate) async fn decide(
    state: ApiState,
    id: String,
    edge: Option<String>,
    approve: bool,
    operator: Operator,
) -> ApiResult<serde_json::Value> {
    let approval = state.store.approval(id.clone(), edge, state.clock.unix_ms()).await?;
    let approval = approval.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no approval request {id}")))?;
    if approval.state != QueueState::Edge(ApprovalState::Pending) {
        return Err(ApiError(StatusCode::CONFLICT, format!("approval {id} is {}", approval.state)));
    }
    let args_hash = approval.request["args_hash"].as_str().unwrap_or_default().to_owned();
    let expires_ms = approval.request["expires_ms"].as_i64().unwrap_or(0);
    let command = aios_shared::command::Command::Decide { approval: id, args_hash, approve, expires_ms };
    issue(&state, approval.edge_id, operator, command).await
}

async fn issue(
    state: &ApiState,
    edge_id: String,
    operator: Operator,
    command: aios_shared::command::Command,
) -> ApiResult<serde_json::Value> {
    let body = state
        .store
        .issue_command(
            &state.pki.bundle_key(),
            edge_id,
            operator.by(),
            operator.comment.clone(),
            command,
            state.clock.unix_ms(),
        )
        .await?;
    state.dispatched.send_modify(|n| *n += 1);
    Ok(Json(serde_json::to_value(body).expect("a command encodes")))
}

async fn list_dead_letters(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Vec<serde_json::Value>> {
    let letters = state.store.dead_letters().await?;
    Ok(Json(letters.into_iter().map(|letter| crate::redact::dead_letter(&principal, letter)).collect()))
}

/// `action` is `retry` (again, same key) or `discard`.
async fn resolve_dead_letter(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((key, action)): Path<(String, String)>,
    Query(scope): Query<EdgeScope>,
    body: Option<Json<Operator>>,
) -> ApiResult<serde_json::Value> {
    let command = match action.as_str() {
        "retry" => aios_shared::command::Command::RetryIntent { key: key.clone() },
        "discard" => aios_shared::command::Command::DiscardIntent { key: key.clone() },
        other => return Err(ApiError(StatusCode::NOT_FOUND, format!("no action `{other}`: retry or discard"))),
    };
    let edge = state.store.edge_of_intent(key.clone(), scope.edge).await?;
    let edge = edge.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no intent {key}")))?;
    issue(&state, edge, body.map(|b| b.0).unwrap_or_default().acting_as(&principal), command).await
}

#[derive(Debug, Deserialize)]
struct CompensateRequest {
    step: String,
    #[serde(flatten)]
    operator: Operator,
}

/// `id` is the edge's task id (the one `task show` prints) or a dispatch id.
async fn compensate(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(scope): Query<EdgeScope>,
    body: Result<Json<CompensateRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let Json(request) = body.map_err(|err| bad_request(err.body_text()))?;
    let task = match state.store.dispatches(Some(id.clone()), 1).await?.into_iter().next() {
        Some(dispatch) => dispatch.task_id.ok_or_else(|| bad_request(format!("dispatch {id} has no task yet")))?,
        None => id,
    };
    let edge = state.store.edge_of_task(task.clone(), scope.edge).await?;
    let edge = edge.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no task {task}")))?;
    let command = aios_shared::command::Command::Compensate { task, step: request.step };
    issue(&state, edge, request.operator.acting_as(&principal), command).await
}

#[derive(Debug, Deserialize)]
struct AnswerRequest {
    answer: String,
    #[serde(flatten)]
    operator: Operator,
}

/// `POST /v1/tasks/{id}/answer`: answers the question the task's agent asked.
async fn answer_question(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(scope): Query<EdgeScope>,
    body: Result<Json<AnswerRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let Json(request) = body.map_err(|err| bad_request(err.body_text()))?;
    answer(state, id, scope.edge, request.answer, request.operator.acting_as(&principal)).await
}

/// Most bytes of an answer (as the edge takes it).
const MAX_ANSWER_BYTES: usize = 4000;

/// Sends the answer to the open question of task `id` to its edge.
pub(crate) async fn answer(
    state: ApiState,
    id: String,
    edge: Option<String>,
    answer: String,
    operator: Operator,
) -> ApiResult<serde_json::Value> {
    let answer = answer.trim().to_owned();
    if answer.is_empty() || answer.len() > MAX_ANSWER_BYTES {
        return Err(bad_request(format!("an answer is 1 to {MAX_ANSWER_BYTES} bytes")));
    }
    let question = state.store.open_question(id.clone(), edge).await?;
    let question =
        question.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("task {id} has no open question")))?;
    if question.answering {
        return Err(ApiError(StatusCode::CONFLICT, format!("an answer to task {id}'s question is on its way")));
    }
    let command = aios_shared::command::Command::Answer { task: id, question: question.key, answer };
    issue(&state, question.edge_id, operator, command).await
}

async fn show_command(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<crate::commands::CommandRecord> {
    let command = state.store.command(id.clone()).await?;
    let command = command.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no command {id}")))?;
    Ok(Json(crate::redact::command(&principal, command)))
}

async fn list_users(State(state): State<ApiState>) -> ApiResult<Vec<accounts::AccountView>> {
    Ok(Json(state.store.accounts(state.clock.unix_ms()).await?))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: String,
    /// Generated (and returned once) when absent.
    #[serde(default)]
    password: Option<String>,
}

/// Hashes off the async workers; returns the hash and the password when
/// it was generated here.
async fn hash_or_generate(password: Option<String>) -> Result<(String, Option<String>), ApiError> {
    let generated = password.is_none();
    let password = password.unwrap_or_else(accounts::generate_password);
    let hash = tokio::task::spawn_blocking({
        let password = password.clone();
        move || accounts::hash_password(&password)
    })
    .await
    .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))??;
    Ok((hash, generated.then_some(password)))
}

async fn add_user(State(state): State<ApiState>, Json(user): Json<NewUser>) -> ApiResult<serde_json::Value> {
    let role: Role = user.role.parse()?;
    accounts::check_name(&user.name)?;
    let (hash, generated) = hash_or_generate(user.password).await?;
    state.store.add_account(user.name.clone(), role, hash, state.clock.unix_ms()).await?;
    Ok(Json(serde_json::json!({ "name": user.name, "role": role, "password": generated })))
}

async fn remove_user(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult<serde_json::Value> {
    if !state.store.remove_account(name.clone()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no account {name}")));
    }
    Ok(Json(serde_json::json!({ "removed": name })))
}

#[derive(Deserialize, Default)]
struct NewPassword {
    #[serde(default)]
    password: Option<String>,
}

async fn set_password(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Option<Json<NewPassword>>,
) -> ApiResult<serde_json::Value> {
    let (hash, generated) = hash_or_generate(body.unwrap_or_default().0.password).await?;
    if !state.store.set_password(name.clone(), hash, state.clock.unix_ms()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no account {name}")));
    }
    Ok(Json(serde_json::json!({ "name": name, "password": generated })))
}

#[derive(Deserialize)]
struct NewToken {
    /// Validity such as `30d`.
    ttl: String,
    #[serde(default)]
    label: String,
}

async fn issue_api_token(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(request): Json<NewToken>,
) -> ApiResult<serde_json::Value> {
    let ttl = parse_duration(&request.ttl).map_err(bad_request)?;
    let token = accounts::new_secret("aios_");
    let now = state.clock.unix_ms();
    let expires_ms = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    if !state.store.add_api_token(name.clone(), accounts::secret_hash(&token), request.label, now, expires_ms).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no account {name}")));
    }
    Ok(Json(serde_json::json!({ "account": name, "token": token, "expires_ms": expires_ms })))
}
