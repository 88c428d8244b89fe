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
//! Sampling follows the request (`temperature`, `top_p`, `max_tokens` or
//! `max_completion_tokens`, `stop`, `seed`); an absent temperature means
//! greedy decoding, not OpenAI's 1.0, so the same request gets the same
//! answer. Authentication is an optional bearer token; with none configured
//! the caller must bind the listener to loopback.
//!
//! A `model` that names one of the bundle's gateway tiers (`[gateway]
//! tiers`, see [`aios_shared::agent::GatewaySpec`]) is routed like an
//! agent's escalated step, through [`Tiers::route_gateway`]: the air gap,
//! the tier's breaker, retries, the fallback chain, and a budget per request
//! and per day that is reserved before the call and settled with the tier's
//! reported usage after it. The answer says where it came from in
//! `x-aios-tier` and `x-aios-route` (and `x-aios-needs-review: true` when
//! the local model answered instead of the tier asked for); a whole answer
//! also carries `x-aios-cost-usd`. A budget that stops a request is a 429
//! `insufficient_quota`; no tier able to answer is a 503 `tier_unavailable`.

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

use crate::model_calls::{estimate_tokens, Charge, GatewayRefusal, GatewayRoute, RefusalKind, Settlement, Tiers};

/// Most texts one embeddings request may carry (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// How the gateway presents the local models.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `model` value that selects the local chat model.
    pub chat_model: String,
    /// The `model` value that selects the local embedding model.
    pub embedding_model: String,
    /// The bearer token callers must present; `None` admits every caller, so
    /// the listener must then be bound to loopback.
    pub token: Option<Credential>,
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
    tiers: Option<Tiers>,
    /// Where latencies and `created` times are read.
    clock: SharedClock,
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
        GatewayState { config, chat, embedder, observer, started: unix_seconds(&clock), tiers: None, clock }
    }

    /// Reads the time from `clock` instead of the real one.
    pub fn with_clock(mut self, clock: SharedClock) -> GatewayState {
        self.started = unix_seconds(&clock);
        self.clock = clock;
        self
    }

    /// Routes requests for the bundle's gateway tiers through `tiers` (the
    /// same instance the task runtime uses, so breakers and budgets are shared).
    pub fn with_tiers(mut self, tiers: Tiers) -> GatewayState {
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
    pub outcome: CallOutcome,
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
pub enum CallOutcome {
    /// The client went away before the answer was complete.
    Cancelled,
    /// Answered in full.
    Completed,
    /// Refused or failed; the message is what the client was told.
    Failed(String),
}

/// The gateway's routes over `state`. Serve it with `axum::serve` on a
/// listener the caller binds (loopback unless a token is configured).
pub fn router(state: Arc<GatewayState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(retrieve_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(unknown_route)
        .with_state(state)
}

/// An error answered in OpenAI's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param,
            code: None,
            message: message.into(),
        }
    }

    fn unknown_model(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
            message: format!("the model `{model}` does not exist on this edge; GET /v1/models lists the models"),
        }
    }

    fn unauthorised(message: &str) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            message: message.to_owned(),
        }
    }

    fn refused(refusal: GatewayRefusal, model: &str) -> ApiError {
        let (status, kind, code) = match refusal.kind {
            RefusalKind::UnknownTier => return ApiError::unknown_model(model),
            RefusalKind::Budget => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota"),
            RefusalKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "tier_unavailable"),
        };
        ApiError { status, kind, param: None, code: Some(code), message: refusal.reason }
    }

    fn from_model(error: ModelError) -> ApiError {
        let (status, kind, param, code) = match &error {
            ModelError::PromptTooLong { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("messages"), Some("context_length_exceeded"))
            }
            ModelError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, None),
            ModelError::WorkerGone => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, None),
        };
        ApiError { status, kind, param, code, message: error.to_string() }
    }

    fn from_body(rejection: BytesRejection) -> ApiError {
        ApiError {
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

impl IntoResponse for ApiError {
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
                outcome: CallOutcome::Cancelled,
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

    fn report(&mut self, status: StatusCode, outcome: CallOutcome) {
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
    fn fail(&mut self, error: ApiError) -> Response {
        self.report(error.status, CallOutcome::Failed(error.message.clone()));
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

fn authorise(state: &GatewayState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.token else { return Ok(()) };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorised("this gateway needs `Authorization: Bearer <token>`"))?;
    if token.matches(presented.trim()) {
        Ok(())
    } else {
        Err(ApiError::unauthorised("the bearer token is not valid for this gateway"))
    }
}

fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(ApiError::from_body)?;
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid(None, format!("the request body is not valid: {e}")))
}

fn model_object(id: &str, created: u64) -> ModelObject {
    ModelObject { id: id.to_owned(), object: "model".to_owned(), created, owned_by: "aios-edge".to_owned() }
}

fn served_models(state: &GatewayState) -> Vec<ModelObject> {
    let chat = state.chat.as_ref().map(|_| state.config.chat_model.clone());
    let embedder = state.embedder.as_ref().map(|_| state.config.embedding_model.clone());
    let tiers = state.tiers.as_ref().map(Tiers::gateway_tiers).unwrap_or_default();
    chat.into_iter().chain(embedder).chain(tiers).map(|id| model_object(&id, state.started)).collect()
}

async fn list_models(State(state): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    if let Err(error) = authorise(&state, &headers) {
        return error.into_response();
    }
    Json(ModelList { object: "list".to_owned(), data: served_models(&state) }).into_response()
}

async fn retrieve_model(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = authorise(&state, &headers) {
        return error.into_response();
    }
    match served_models(&state).into_iter().find(|model| model.id == id) {
        Some(model) => Json(model).into_response(),
        None => ApiError::unknown_model(&id).into_response(),
    }
}

async fn unknown_route() -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
        message: "unknown URL; this gateway serves /v1/models, /v1/chat/completions and /v1/embeddings".to_owned(),
    }
    .into_response()
}

/// Turns an OpenAI request into a generation request for `model`.
fn generate_request(
    state: &GatewayState,
    model: &ChatModel,
    request: &ChatCompletionRequest,
) -> Result<GenerateRequest, ApiError> {
    check_request(request)?;
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let text = message.text().map_err(|reason| ApiError::invalid(Some("messages"), reason))?;
        messages.push(match message.role.as_str() {
            "system" | "developer" => ChatMessage::system(text),
            "user" => ChatMessage::user(text),
            "assistant" => ChatMessage::assistant(text),
            other => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("messages with role `{other}` are not supported by the local model"),
                ))
            }
        });
    }
    let max_tokens = match request.token_limit() {
        Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
        None => state.config.default_max_tokens,
    }
    .min(model.info().context_length);
    let mut sampling = SamplingParams::greedy();
    if let Some(temperature) = request.temperature {
        sampling.temperature = temperature;
    }
    if let Some(top_p) = request.top_p {
        sampling.top_p = top_p;
    }
    if let Some(seed) = request.seed {
        // Negative seeds are valid in OpenAI's API; any fixed mapping to u64 will do.
        sampling.seed = seed as u64;
    }
    sampling.validate().map_err(ApiError::from_model)?;
    let stop = request.stop.clone().map(|stop| stop.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid(Some("stop"), "at most 4 stop sequences are supported"));
    }
    Ok(GenerateRequest { prompt: Prompt::Chat(messages), max_tokens, sampling, stop, ignore_eos: false })
}

/// The checks every chat request passes, wherever it is answered.
fn check_request(request: &ChatCompletionRequest) -> Result<(), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "`messages` must not be empty"));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(Some("n"), "only n = 1 is supported"));
    }
    if request.token_limit() == Some(0) {
        return Err(ApiError::invalid(Some("max_tokens"), "max_tokens must be at least 1"));
    }
    if let Some(temperature) = request.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::invalid(Some("temperature"), format!("temperature {temperature} must be in [0, 2]")));
    }
    Ok(())
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Cancelled | FinishReason::EndOfTurn | FinishReason::Stop => "stop",
    }
}

fn completion_id() -> String {
    format!("chatcmpl-{:016x}", rand::random::<u64>())
}

async fn chat_completions(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut recorder = CallRecorder::new(&state, GatewayEndpoint::ChatCompletions, state.clock.instant());
    if let Err(error) = authorise(&state, &headers) {
        return recorder.fail(error);
    }
    let request: ChatCompletionRequest = match parse(body) {
        Ok(request) => request,
        Err(error) => return recorder.fail(error),
    };
    recorder.call.model.clone_from(&request.model);
    recorder.call.delivery = if request.stream { Delivery::Stream } else { Delivery::Whole };
    if request.model == state.config.chat_model {
        return match state.chat.clone() {
            Some(model) => serve_locally(recorder, &state, model, request, None).await,
            None => recorder.fail(ApiError::unknown_model(&request.model)),
        };
    }
    match state.tiers.clone() {
        Some(tiers) => routed_completion(recorder, &state, tiers, request).await,
        None => recorder.fail(ApiError::unknown_model(&request.model)),
    }
}

/// Where a routed request was answered, as the response headers tell it.
#[derive(Debug, Clone)]
struct RouteInfo {
    tier: String,
    reason: String,
    needs_review: bool,
}

impl RouteInfo {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let printable = |text: &str| -> String {
            let text: String = text.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect();
            text.chars().take(1024).collect()
        };
        for (name, value) in [
            ("x-aios-tier", printable(&self.tier)),
            ("x-aios-route", printable(&self.reason)),
            ("x-aios-needs-review", self.needs_review.to_string()),
        ] {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), value);
            }
        }
        headers
    }
}

/// Answers with the gateway's local chat model; `route` says why when a
/// tier was asked for.
async fn serve_locally(
    mut recorder: CallRecorder,
    state: &GatewayState,
    model: ChatModel,
    request: ChatCompletionRequest,
    route: Option<RouteInfo>,
) -> Response {
    if let Some(route) = &route {
        recorder.routed(route);
    }
    let generate = match generate_request(state, &model, &request) {
        Ok(generate) => generate,
        Err(error) => return recorder.fail(error),
    };
    let headers = route.as_ref().map(RouteInfo::headers).unwrap_or_default();
    let response = if request.stream {
        stream_completion(recorder, model, generate, request).await
    } else {
        whole_completion(recorder, model, generate, request).await
    };
    (headers, response).into_response()
}

/// Answers a request for a gateway tier on the tier the router picks.
async fn routed_completion(
    mut recorder: CallRecorder,
    state: &GatewayState,
    tiers: Tiers,
    request: ChatCompletionRequest,
) -> Response {
    if let Err(error) = check_request(&request) {
        return recorder.fail(error);
    }
    let mut prompt_chars = 0;
    for message in &request.messages {
        match message.text() {
            Ok(text) => prompt_chars += text.len(),
            Err(reason) => return recorder.fail(ApiError::invalid(Some("messages"), reason)),
        }
    }
    // The tier's own model, and a bounded output so the reservation bounds the cost.
    let mut upstream = request.clone();
    upstream.model = String::new();
    if upstream.token_limit().is_none() {
        upstream.max_tokens = Some(u32::try_from(state.config.default_max_tokens).unwrap_or(u32::MAX));
    }
    let estimated = estimate_tokens(prompt_chars, upstream.token_limit().map(u64::from).unwrap_or_default());
    let request_id = completion_id();
    if request.stream {
        let call = move |client: CloudClient| {
            let upstream = upstream.clone();
            async move { client.chat_stream(upstream).await }
        };
        match route_to_tier(recorder, state, &tiers, &request, &request_id, estimated, call).await {
            Err(answered) => answered,
            Ok((recorder, route, stream, charge)) => {
                let settlement = Settlement::new(tiers, charge, estimated);
                let source = Source::Remote { stream: Box::new(stream), settlement };
                let response = respond_with_stream(recorder, Some(source), request, StreamPhase::Next, None);
                (route.headers(), response).into_response()
            }
        }
    } else {
        let call = move |client: CloudClient| {
            let upstream = upstream.clone();
            async move { client.chat(upstream).await }
        };
        match route_to_tier(recorder, state, &tiers, &request, &request_id, estimated, call).await {
            Err(answered) => answered,
            Ok((mut recorder, route, completion, charge)) => {
                let tokens = completion.tokens().unwrap_or(estimated);
                let mut settlement = Settlement::new(tiers, charge, estimated);
                recorder.call.cost = settlement.settle(tokens).await;
                recorder.tokens(tokens.input, tokens.output);
                let response = ChatCompletionResponse {
                    id: request_id,
                    object: "chat.completion".to_owned(),
                    created: unix_seconds(&state.clock),
                    model: request.model,
                    choices: vec![Choice {
                        index: 0,
                        message: ResponseMessage { role: "assistant".to_owned(), content: Some(completion.text) },
                        finish_reason: completion.finish_reason,
                    }],
                    usage: Some(Usage::new(tokens.input, tokens.output)),
                };
                recorder.report(StatusCode::OK, CallOutcome::Completed);
                let mut headers = route.headers();
                if let Ok(cost) = header::HeaderValue::from_str(&recorder.call.cost.to_string()) {
                    headers.insert(header::HeaderName::from_static("x-aios-cost-usd"), cost);
                }
                (headers, Json(response)).into_response()
            }
        }
    }
}

/// Routes `request` for a gateway tier with `call` as the tier call. A
/// refusal, or the local model answering in the tier's place, is answered
/// here (`Err` holds that response); a tier's result comes back with the
/// recorder, the route and the reservation to settle.
async fn route_to_tier<T, F, Fut>(
    mut recorder: CallRecorder,
    state: &GatewayState,
    tiers: &Tiers,
    request: &ChatCompletionRequest,
    request_id: &str,
    estimated: TokenCount,
    call: F,
) -> Result<(CallRecorder, RouteInfo, T, Charge), Response>
where
    F: FnMut(CloudClient) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<T, crate::model_calls::cloud::CloudError>>,
{
    let local = state.chat.as_ref().map(|_| state.config.chat_model.as_str());
    match tiers.route_gateway(&request.model, local, request_id, estimated, call).await {
        Err(refusal) => Err(recorder.fail(ApiError::refused(refusal, &request.model))),
        Ok(GatewayRoute::Local { reason, needs_review }) => {
            let route = RouteInfo { tier: state.config.chat_model.clone(), reason, needs_review };
            let model = state.chat.clone().expect("the router falls back only to a loaded local model");
            Err(serve_locally(recorder, state, model, request.clone(), Some(route)).await)
        }
        Ok(GatewayRoute::Remote { tier, reason, value, charge }) => {
            let route = RouteInfo { tier, reason, needs_review: false };
            recorder.routed(&route);
            Ok((recorder, route, value, charge))
        }
    }
}

async fn whole_completion(
    mut recorder: CallRecorder,
    model: ChatModel,
    generate: GenerateRequest,
    request: ChatCompletionRequest,
) -> Response {
    let generation = match model.generate(generate).await {
        Ok(generation) => generation,
        Err(error) => return recorder.fail(ApiError::from_model(error)),
    };
    recorder.tokens(generation.prompt_tokens as u64, generation.completion_tokens as u64);
    let usage = Usage::new(generation.prompt_tokens as u64, generation.completion_tokens as u64);
    let response = ChatCompletionResponse {
        id: completion_id(),
        object: "chat.completion".to_owned(),
        created: unix_seconds(&recorder.state.clock),
        model: request.model,
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage { role: "assistant".to_owned(), content: Some(generation.text) },
            finish_reason: Some(finish_reason(generation.finish_reason).to_owned()),
        }],
        usage: Some(usage),
    };
    recorder.report(StatusCode::OK, CallOutcome::Completed);
    // Time inside the model, so callers (and the benchmark) can tell the
    // gateway's own cost from the model's.
    let model_ms = (generation.time_to_first_token + generation.decode_time).as_secs_f64() * 1000.0;
    ([(header::HeaderName::from_static("server-timing"), format!("model;dur={model_ms:.3}"))], Json(response))
        .into_response()
}

/// Streams a completion. Generation starts before the response does, so a
/// request that fails at once (a prompt longer than the context) still gets
/// its proper status instead of a 200 with an error event.
async fn stream_completion(
    mut recorder: CallRecorder,
    model: ChatModel,
    generate: GenerateRequest,
    request: ChatCompletionRequest,
) -> Response {
    let mut generation = model.generate_stream(generate);
    match generation.next_piece().await {
        Some(piece) => {
            respond_with_stream(recorder, Some(Source::Local(generation)), request, StreamPhase::Piece(piece), None)
        }
        None => match generation.finish().await {
            // Nothing was streamed: send the text (if any) as one piece.
            Ok(finished) if !finished.text.is_empty() => {
                let text = finished.text.clone();
                respond_with_stream(recorder, None, request, StreamPhase::Piece(text), Some(finished))
            }
            Ok(finished) => respond_with_stream(recorder, None, request, StreamPhase::Finished(finished), None),
            Err(error) => recorder.fail(ApiError::from_model(error)),
        },
    }
}

/// Starts the SSE response at `phase`; after the pieces, `source` is
/// read, or `finished` is what the local model already produced.
fn respond_with_stream(
    recorder: CallRecorder,
    source: Option<Source>,
    request: ChatCompletionRequest,
    phase: StreamPhase,
    finished: Option<Generation>,
) -> Response {
    let stream = CompletionStream {
        id: completion_id(),
        created: unix_seconds(&recorder.state.clock),
        model: request.model.clone(),
        include_usage: request.include_usage(),
        source,
        finished,
        phase: Some(StreamPhase::Role(Box::new(phase))),
        recorder,
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next_event().await?;
        Some((Ok::<_, std::convert::Infallible>(event), stream))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}

/// What a completion stream sends next.
enum StreamPhase {
    /// The chunk that announces the assistant's role, then the inner phase.
    Role(Box<StreamPhase>),
    /// A piece of text already read.
    Piece(String),
    /// Read the next piece from the model.
    Next,
    /// Generation ended: the chunk with the finish reason.
    Finished(Generation),
    /// The usage chunk.
    Usage(Usage),
    /// `[DONE]`.
    Done,
}

/// The state of one streamed completion; dropping it (the client left)
/// cancels generation and reports the call as cancelled.
struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The model's output, while it is being read.
    source: Option<Source>,
    /// The generation, when it ended before the response started.
    finished: Option<Generation>,
    /// `None` once everything has been sent.
    phase: Option<StreamPhase>,
    recorder: CallRecorder,
}

impl CompletionStream {
    /// The next SSE event, or `None` at the end of the body.
    async fn next_event(&mut self) -> Option<Bytes> {
        let phase = self.phase.take()?;
        let event = match phase {
            StreamPhase::Role(inner) => {
                self.phase = Some(*inner);
                let delta = Delta { role: Some("assistant".to_owned()), content: Some(String::new()) };
                self.chunk(delta, None)
            }
            StreamPhase::Piece(piece) => {
                self.phase = Some(StreamPhase::Next);
                self.chunk(Delta { role: None, content: Some(piece) }, None)
            }
            StreamPhase::Next => return self.next_from_model().await,
            StreamPhase::Finished(generation) => self.local_finished(generation),
            StreamPhase::Usage(usage) => {
                self.phase = Some(StreamPhase::Done);
                sse_event(&ChatCompletionChunk {
                    id: self.id.clone(),
                    object: "chat.completion.chunk".to_owned(),
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage: Some(usage),
                })
            }
            StreamPhase::Done => {
                self.recorder.report(StatusCode::OK, CallOutcome::Completed);
                Bytes::from_static(b"data: [DONE]\n\n")
            }
        };
        Some(event)
    }

    async fn next_from_model(&mut self) -> Option<Bytes> {
        let piece = match self.source.as_mut() {
            None => {
                let finished = self.finished.take()?;
                return Some(self.local_finished(finished));
            }
            Some(Source::Local(generation)) => generation.next_piece().await,
            Some(Source::Remote { stream, .. }) => match stream.next_delta().await {
                Ok(piece) => piece,
                Err(error) => return Some(self.failed(error.to_string())),
            },
        };
        if let Some(piece) = piece {
            self.phase = Some(StreamPhase::Next);
            return Some(self.chunk(Delta { role: None, content: Some(piece) }, None));
        }
        match self.source.take()? {
            Source::Local(generation) => match generation.finish().await {
                Ok(finished) => Some(self.local_finished(finished)),
                Err(error) => Some(self.failed(ApiError::from_model(error).message)),
            },
            Source::Remote { stream, mut settlement } => match stream.finish().await {
                Ok(completion) => {
                    let tokens = completion.tokens().unwrap_or(settlement.estimated());
                    self.recorder.call.cost = settlement.settle(tokens).await;
                    let reason = completion.finish_reason.unwrap_or_else(|| "stop".to_owned());
                    Some(self.finished_event(&reason, tokens))
                }
                Err(error) => Some(self.failed(error.to_string())),
            },
        }
    }

    /// The error event that ends a stream which broke off.
    fn failed(&mut self, message: String) -> Bytes {
        let error = ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            param: None,
            code: None,
            message,
        };
        let event = sse_event(&error.body());
        self.abandon_source();
        self.recorder.report(StatusCode::OK, CallOutcome::Failed(error.message));
        event
    }

    /// Drops what is being read; an escalated call's reservation is then
    /// settled at its estimate, and the call reports that cost.
    fn abandon_source(&mut self) {
        if let Some(Source::Remote { settlement, .. }) = &self.source {
            if let Some(cost) = settlement.estimated_cost() {
                self.recorder.call.cost = cost;
            }
        }
        self.source = None;
    }

    fn local_finished(&mut self, generation: Generation) -> Bytes {
        let tokens = TokenCount { input: generation.prompt_tokens as u64, output: generation.completion_tokens as u64 };
        self.finished_event(finish_reason(generation.finish_reason), tokens)
    }

    /// The chunk with the finish reason; the usage chunk and `[DONE]` follow.
    fn finished_event(&mut self, finish_reason: &str, tokens: TokenCount) -> Bytes {
        self.recorder.tokens(tokens.input, tokens.output);
        let usage = Usage::new(tokens.input, tokens.output);
        self.phase = Some(if self.include_usage { StreamPhase::Usage(usage) } else { StreamPhase::Done });
        self.chunk(Delta::default(), Some(finish_reason))
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> Bytes {
        sse_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish_reason.map(str::to_owned) }],
            usage: None,
        })
    }
}

impl Drop for CompletionStream {
    fn drop(&mut self) {
        self.abandon_source();
    }
}

/// Where a stream's pieces come from.
enum Source {
    /// The local model.
    Local(GenerationStream),
    /// An escalation tier; its reservation is settled when the stream ends.
    Remote { stream: Box<ChatStream>, settlement: Settlement },
}

fn sse_event(value: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(value).expect("wire types serialise to JSON without failure");
    Bytes::from(format!("data: {json}\n\n"))
}

async fn embeddings(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut recorder = CallRecorder::new(&state, GatewayEndpoint::Embeddings, state.clock.instant());
    if let Err(error) = authorise(&state, &headers) {
        return recorder.fail(error);
    }
    let request: EmbeddingsRequest = match parse(body) {
        Ok(request) => request,
        Err(error) => return recorder.fail(error),
    };
    recorder.call.model.clone_from(&request.model);
    let embedder = match &state.embedder {
        Some(embedder) if request.model == state.config.embedding_model => embedder.clone(),
        _ => return recorder.fail(ApiError::unknown_model(&request.model)),
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let message = format!("encoding_format `{other}` is not supported (use `float` or `base64`)");
            return recorder.fail(ApiError::invalid(Some("encoding_format"), message));
        }
    };
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) if texts.is_empty() => {
            return recorder.fail(ApiError::invalid(Some("input"), "`input` must not be empty"));
        }
        EmbeddingInput::Many(texts) if texts.len() > MAX_EMBEDDING_INPUTS => {
            let message = format!("at most {MAX_EMBEDDING_INPUTS} inputs per request");
            return recorder.fail(ApiError::invalid(Some("input"), message));
        }
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) => {
            let message = "`input` must be a string or an array of strings; token arrays are not supported";
            return recorder.fail(ApiError::invalid(Some("input"), message));
        }
    };
    let embedded = match embedder.embed_counted(texts).await {
        Ok(embedded) => embedded,
        Err(error) => return recorder.fail(ApiError::from_model(error)),
    };
    recorder.call.prompt_tokens = embedded.tokens;
    let usage = EmbeddingUsage { prompt_tokens: embedded.tokens, total_tokens: embedded.tokens };
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingData {
            object: "embedding".to_owned(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            embedding: if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(vector)
            },
        })
        .collect();
    recorder.report(StatusCode::OK, CallOutcome::Completed);
    Json(EmbeddingsResponse { object: "list".to_owned(), data, model: request.model, usage }).into_response()
}
