//! The governed gateway: the edge's local models behind OpenAI's HTTP API, so
//! office applications that already speak it (and other edges, for which this
//! edge is then a remote tier) use the local model with the edge's rules.
//!
//! Served: `GET /v1/models` (and `/v1/models/{id}`), `POST /v1/chat/completions`
//! (a whole reply, or server-sent `chat.completion.chunk` events with a final
//! usage chunk when `stream_options.include_usage` is set) and
//! `POST /v1/embeddings` (one text or several; float or base64 encoding).
//! Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
//! with 400 for bad JSON and prompts longer than the context, 401 for a
//! missing or wrong bearer token, 404 for unknown models and routes.
//!
//! Every chat and embeddings request, refused or served, ends in one
//! [`GatewayObserver::on_call`] with what was asked, tokens in and out,
//! latency and outcome; a stream the client abandons is reported as
//! cancelled when its body is dropped (which also stops generation).
//!
//! A whole completion carries `Server-Timing: model;dur=<ms>`, the time
//! spent inside the model, so the gateway's own cost can be told apart.
//!
//! The local model takes `tools` (with `tool_choice`) and `response_format`
//! (`json_object`, `json_schema`): its output is generated under the
//! schema, so a call's arguments and a JSON reply always validate; calls
//! come back as `tool_calls`, whole or streamed ([`tools`]). Gateway tiers
//! refuse both with a 400 rather than drop them.
//!
//! Sampling follows the request (`temperature`, `top_p`, `max_tokens` or
//! `max_completion_tokens`, `stop`, `seed`); an absent temperature means
//! greedy decoding, not OpenAI's 1.0, so the same request gets the same
//! answer.
//!
//! Every route, the fallback included, sits behind one middleware
//! ([`require_key`]): with keys configured (the gateway's own, and on an
//! edge the local API's token) a request must carry one of them as
//! `Authorization: Bearer`, compared in constant time. With none, every
//! caller is admitted, which `daemon::start` allows only on a loopback
//! listener.
//!
//! A `model` that names one of the bundle's gateway tiers (`[gateway]
//! tiers`, see [`aios_shared::agent::GatewaySpec`]) is routed like an
//! agent's escalated step, through [`ModelCalls::route_gateway`]: the air gap,
//! the tier's breaker, retries, the fallback chain, and a budget per request
//! and per day that is reserved before the call and settled with the tier's
//! reported usage after it. The answer says where it came from in
//! `x-aios-tier` and `x-aios-route` (and `x-aios-needs-review: true` when
//! the local model answered instead of the tier asked for); a whole answer
//! also carries `x-aios-cost-usd`. A budget that stops a request is a 429
//! `insufficient_quota`; no tier able to answer is a 503 `tier_unavailable`.
//!
//! # Layout
//! - `mod.rs`: configuration, the observer, routes, errors, the call recorder, `/v1/models`.
//! - [`chat`]: chat completions, local or routed.
//! - [`stream`]: the server-sent events of a streamed completion.
//! - [`embeddings`]: the embeddings endpoint.
//! - [`tools`]: tool calls and `response_format` on the local model.

mod chat;
use chat::RouteInfo;
mod embeddings;
mod stream;
mod tools;
use tools::{format_constraint, local_tools, tool_completion, LocalTools};

use aios_daemon::clock::SharedClock;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model_calls::cloud::{ChatStream, CloudClient, Credential};
use crate::model_calls::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, Choice, ChunkChoice, Delta, EmbeddingData,
    EmbeddingInput, EmbeddingUsage, EmbeddingVector, EmbeddingsRequest, EmbeddingsResponse, ErrorBody, ErrorDetail,
    ModelList, ModelObject, ResponseMessage, Usage,
};
use aios_models::{
    ChatMessage, ChatModel, EmbeddingModel, FinishReason, GenerateRequest, Generation, GenerationStream, ModelError,
    Prompt, SamplingParams,
};
use aios_shared::router::{MicroUsd, TokenCount};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model_calls::{estimate_tokens, Charge, GatewayRefusal, GatewayRoute, ModelCalls, RefusalKind, Settlement};

/// Most texts one embeddings request may carry (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// How the gateway presents the local models.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `model` value that selects the local chat model.
    pub chat_model: String,
    /// The `model` value that selects the local embedding model.
    pub embedding_model: String,
    /// The bearer tokens that admit a caller (any one of them); empty admits
    /// every caller, so the listener must then be bound to loopback.
    pub keys: Vec<Credential>,
    /// Tokens generated when a request sets no limit.
    pub default_max_tokens: usize,
}

/// What the handlers share.
pub struct GatewayState {
    /// Names, token, defaults.
    config: GatewayConfig,
    /// The local chat model, if one is loaded.
    chat: Option<ChatModel>,
    /// The local embedding model, if one is loaded.
    embedder: Option<EmbeddingModel>,
    /// Told about every call.
    observer: Arc<dyn GatewayObserver>,
    /// Unix seconds when the gateway started: the models' `created`.
    started: u64,
    /// The edge's tiers, for requests that name a gateway tier.
    tiers: Option<ModelCalls>,
    /// Where latencies and `created` times are read.
    clock: SharedClock,
    /// The edge's autonomy mode: at `halted` (the kill switch at `all`) the
    /// gateway refuses every request and ends running streams.
    autonomy: Option<tokio::sync::watch::Receiver<aios_shared::bundle::Autonomy>>,
}

impl GatewayState {
    /// State for [`router`]. A model that is `None` answers 404 like an unknown one.
    pub fn new(
        config: GatewayConfig,
        chat: Option<ChatModel>,
        embedder: Option<EmbeddingModel>,
        observer: Arc<dyn GatewayObserver>,
    ) -> GatewayState {
        let clock = SharedClock::default();
        GatewayState {
            config,
            chat,
            embedder,
            observer,
            started: unix_seconds(&clock),
            tiers: None,
            clock,
            autonomy: None,
        }
    }

    /// Obeys the kill switch: with `autonomy` at `halted`, nothing is served.
    pub fn with_kill_switch(mut self, autonomy: tokio::sync::watch::Receiver<aios_shared::bundle::Autonomy>) -> Self {
        self.autonomy = Some(autonomy);
        self
    }

    /// Whether the kill switch is at `all`.
    fn halted(&self) -> bool {
        self.autonomy.as_ref().is_some_and(|a| *a.borrow() == aios_shared::bundle::Autonomy::Halted)
    }

    /// Resolves once the kill switch is at `all` (never without a watch).
    async fn until_halted(&self) {
        match self.autonomy.clone() {
            Some(mut autonomy) => {
                if autonomy.wait_for(|a| *a == aios_shared::bundle::Autonomy::Halted).await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Reads the time from `clock` instead of the real one.
    pub fn with_clock(mut self, clock: SharedClock) -> GatewayState {
        self.started = unix_seconds(&clock);
        self.clock = clock;
        self
    }

    /// Routes requests for the bundle's gateway tiers through `tiers` (the
    /// same instance the task runtime uses, so breakers and budgets are shared).
    pub fn with_tiers(mut self, tiers: ModelCalls) -> GatewayState {
        self.tiers = Some(tiers);
        self
    }
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Receives one report per chat or embeddings request (to become an audit event).
pub trait GatewayObserver: Send + Sync + 'static {
    /// Called once when the request has been answered, refused or abandoned.
    fn on_call(&self, call: &GatewayCall);
}

/// An observer that logs each call as a `tracing` event.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingObserver;

impl GatewayObserver for TracingObserver {
    fn on_call(&self, call: &GatewayCall) {
        tracing::info!(
            endpoint = call.endpoint.path(),
            model = %call.model,
            status = call.status,
            outcome = ?call.outcome,
            delivery = ?call.delivery,
            prompt_tokens = call.prompt_tokens,
            completion_tokens = call.completion_tokens,
            tier = call.tier.as_deref().unwrap_or("-"),
            cost_usd = call.cost.as_usd(),
            latency_ms = call.latency.as_secs_f64() * 1000.0,
            "gateway call"
        );
    }
}

/// One request as the observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCall {
    /// Which API.
    pub endpoint: GatewayEndpoint,
    /// The `model` the caller asked for (empty when the body was unreadable).
    pub model: String,
    /// Whole or streamed.
    pub delivery: Delivery,
    /// The HTTP status sent (a stream that fails midway keeps its 200).
    pub status: u16,
    /// How it ended.
    pub outcome: GatewayOutcome,
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// The tier that answered, when the request was routed to a gateway tier.
    pub tier: Option<String>,
    /// The router's reason, when the request was routed.
    pub route: Option<String>,
    /// The local model answered although a tier was asked for.
    pub needs_review: bool,
    /// What the call cost (zero on the local model).
    pub cost: MicroUsd,
    /// From the request's arrival to its last byte (or abandonment).
    pub latency: Duration,
}

/// The APIs that call models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayEndpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl GatewayEndpoint {
    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            GatewayEndpoint::ChatCompletions => "/v1/chat/completions",
            GatewayEndpoint::Embeddings => "/v1/embeddings",
        }
    }
}

/// How the answer was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Server-sent events.
    Stream,
    /// One JSON body.
    Whole,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayOutcome {
    /// The client went away before the answer was complete.
    Cancelled,
    /// Answered in full.
    Completed,
    /// Refused or failed; the message is what the client was told.
    Failed(String),
}

/// The gateway's routes over `state`, all behind [`require_key`]. Serve it
/// with `axum::serve` on a listener the caller binds (loopback unless keys
/// are configured).
pub fn router(state: Arc<GatewayState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(retrieve_model))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_key))
        .with_state(state)
}

/// Middleware: refuses a request without one of the configured keys with
/// OpenAI's 401 before any handler runs. A refused chat or embeddings
/// request is still reported to the observer, like every other.
async fn require_key(
    State(state): State<Arc<GatewayState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let checked = authorise(&state, request.headers()).and_then(|()| match state.halted() {
        true => Err(OpenAiError::halted()),
        false => Ok(()),
    });
    let Err(error) = checked else {
        return next.run(request).await;
    };
    let endpoint = [GatewayEndpoint::ChatCompletions, GatewayEndpoint::Embeddings]
        .into_iter()
        .find(|endpoint| endpoint.path() == request.uri().path());
    match endpoint {
        Some(endpoint) => CallRecorder::new(&state, endpoint, state.clock.instant()).fail(error),
        None => error.into_response(),
    }
}

/// An error answered in OpenAI's shape.
#[derive(Debug)]
struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    message: String,
}

impl OpenAiError {
    fn invalid(param: Option<&'static str>, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param,
            code: None,
            message: message.into(),
        }
    }

    fn unknown_model(model: &str) -> OpenAiError {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
            message: format!("the model `{model}` does not exist on this edge; GET /v1/models lists the models"),
        }
    }

    /// The kill switch is at `all`.
    fn halted() -> OpenAiError {
        OpenAiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            param: None,
            code: Some("kill_switch"),
            message: "the kill switch is at `all`: this edge calls no model until an operator lifts it".to_owned(),
        }
    }

    fn unauthorised(message: &str) -> OpenAiError {
        OpenAiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            message: message.to_owned(),
        }
    }

    fn refused(refusal: GatewayRefusal, model: &str) -> OpenAiError {
        let (status, kind, code) = match refusal.kind {
            RefusalKind::UnknownTier => return OpenAiError::unknown_model(model),
            RefusalKind::Budget => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota"),
            RefusalKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "tier_unavailable"),
        };
        OpenAiError { status, kind, param: None, code: Some(code), message: refusal.reason }
    }

    fn from_model(error: ModelError) -> OpenAiError {
        let (status, kind, param, code) = match &error {
            ModelError::PromptTooLong { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("messages"), Some("context_length_exceeded"))
            }
            ModelError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, None),
            ModelError::WorkerGone => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, None),
        };
        OpenAiError { status, kind, param, code, message: error.to_string() }
    }

    fn from_body(rejection: BytesRejection) -> OpenAiError {
        OpenAiError {
            status: rejection.status(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            message: rejection.body_text(),
        }
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.map(str::to_owned),
                code: self.code.map(str::to_owned),
            },
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Reports a call to the observer exactly once: explicitly when it ends, or
/// as cancelled when dropped first (the client went away).
struct CallRecorder {
    state: Arc<GatewayState>,
    call: GatewayCall,
    started: Instant,
    reported: bool,
}

impl CallRecorder {
    fn new(state: &Arc<GatewayState>, endpoint: GatewayEndpoint, started: Instant) -> CallRecorder {
        CallRecorder {
            state: state.clone(),
            call: GatewayCall {
                endpoint,
                model: String::new(),
                delivery: Delivery::Whole,
                status: 499,
                outcome: GatewayOutcome::Cancelled,
                prompt_tokens: 0,
                completion_tokens: 0,
                tier: None,
                route: None,
                needs_review: false,
                cost: MicroUsd::ZERO,
                latency: Duration::ZERO,
            },
            started,
            reported: false,
        }
    }

    fn tokens(&mut self, prompt: u64, completion: u64) {
        self.call.prompt_tokens = prompt;
        self.call.completion_tokens = completion;
    }

    fn routed(&mut self, route: &RouteInfo) {
        self.call.tier = Some(route.tier.clone());
        self.call.route = Some(route.reason.clone());
        self.call.needs_review = route.needs_review;
    }

    fn report(&mut self, status: StatusCode, outcome: GatewayOutcome) {
        if self.reported {
            return;
        }
        self.reported = true;
        self.call.status = status.as_u16();
        self.call.outcome = outcome;
        self.call.latency = self.state.clock.instant().saturating_duration_since(self.started);
        self.state.observer.on_call(&self.call);
    }

    /// Reports `error` and turns it into the response.
    fn fail(&mut self, error: OpenAiError) -> Response {
        self.report(error.status, GatewayOutcome::Failed(error.message.clone()));
        error.into_response()
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        if !self.reported {
            self.reported = true;
            self.call.latency = self.state.clock.instant().saturating_duration_since(self.started);
            self.state.observer.on_call(&self.call);
        }
    }
}

fn unix_seconds(clock: &SharedClock) -> u64 {
    u64::try_from(clock.unix_ms() / 1000).unwrap_or_default()
}

fn authorise(state: &GatewayState, headers: &HeaderMap) -> Result<(), OpenAiError> {
    if state.config.keys.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| OpenAiError::unauthorised("this gateway needs `Authorization: Bearer <token>`"))?;
    // Every key is compared, so the time taken does not say which one was close.
    let matched = state.config.keys.iter().fold(false, |matched, key| key.matches(presented.trim()) | matched);
    if matched {
        Ok(())
    } else {
        Err(OpenAiError::unauthorised("the bearer token is not valid for this gateway"))
    }
}

fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, OpenAiError> {
    let body = body.map_err(OpenAiError::from_body)?;
    serde_json::from_slice(&body).map_err(|e| OpenAiError::invalid(None, format!("the request body is not valid: {e}")))
}

fn model_object(id: &str, created: u64) -> ModelObject {
    ModelObject { id: id.to_owned(), object: "model".to_owned(), created, owned_by: "aios-edge".to_owned() }
}

fn served_models(state: &GatewayState) -> Vec<ModelObject> {
    let chat = state.chat.as_ref().map(|_| state.config.chat_model.clone());
    let embedder = state.embedder.as_ref().map(|_| state.config.embedding_model.clone());
    let tiers = state.tiers.as_ref().map(ModelCalls::gateway_tiers).unwrap_or_default();
    chat.into_iter().chain(embedder).chain(tiers).map(|id| model_object(&id, state.started)).collect()
}

async fn list_models(State(state): State<Arc<GatewayState>>) -> Response {
    Json(ModelList { object: "list".to_owned(), data: served_models(&state) }).into_response()
}

async fn retrieve_model(State(state): State<Arc<GatewayState>>, Path(id): Path<String>) -> Response {
    match served_models(&state).into_iter().find(|model| model.id == id) {
        Some(model) => Json(model).into_response(),
        None => OpenAiError::unknown_model(&id).into_response(),
    }
}

async fn unknown_route() -> Response {
    OpenAiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
        message: "unknown URL; this gateway serves /v1/models, /v1/chat/completions and /v1/embeddings".to_owned(),
    }
    .into_response()
}
